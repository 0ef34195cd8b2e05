"""Vectorised renderer, pixel-faithful to the suite: soft circles composited front to back.

Per particle k, in unit-square coordinates u = (pos - min) / (max - min):
    mask_k = 1 / (1 + exp((|grid - u_k| - r_k) * 80)),  r_k = sqrt(m/pi) / (max - min)
    image  = sum_k c_k mask_k prod_{j<k} (1 - mask_j) + background prod_j (1 - mask_j)
Pixel centres are linspace(0, 1, R) on both axes; image[row, col] has row = y (row 0 is the
canvas y-min), col = x. uint8 by truncation of image * 255.

The suite renders in float64 (its generator enables JAX's x64), in this order of operations:
unit coordinates first, then d - r, then the temperature; each layer adds (c * mask) * colour
and then c *= 1 - mask. Truncation to uint8 turns any rounding difference at an integer
boundary into a whole level: float32 alone differs on about 5 values in 10^6. So the frames
are rendered in float32 and every pixel whose float32 value lies within REFINE_BAND of an
integer is recomputed in float64: the result equals the suite's frames bit for bit
(docs/data-variants.md gives the check and the cost).
"""
import numpy as np

BACKGROUND = (0.321, 0.349, 0.368)
TEMPERATURE = 80.0


def palette(num_colors):
    """RGB [num_colors, 3] of hues linspace(0, 1, n, endpoint=False) at S = V = 1."""
    h6 = np.linspace(0.0, 1.0, num_colors, endpoint=False) * 6.0
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    one, zero = np.ones_like(f), np.zeros_like(f)
    table = np.stack([
        np.stack([one, f, zero], -1), np.stack([1 - f, one, zero], -1),
        np.stack([zero, one, f], -1), np.stack([zero, 1 - f, one], -1),
        np.stack([f, zero, one], -1), np.stack([one, zero, 1 - f], -1)], 0)
    rgb = table[i, np.arange(num_colors)]
    # 2/3 * 6 is 3.9999999999999996 in float64: snap such round-off to the exact corners.
    return np.round(rgb, 9)


BLOCK_FRAMES = 256  # frames rendered together: ~1 MB float32 planes stay in cache
# float32 values of image * 255 within REFINE_BAND of an integer are recomputed in float64:
# float32 is off by at most 3.0e-4 there (measured over 4e7 values of five systems), so a
# value outside the band truncates as the float64 one does. 1.3-2.9% of the pixels fall in.
REFINE_BAND = 4e-3


def render(positions, radius, color_index, num_colors, canvas, resolution=32,
           dtype=np.float64):
    """uint8 frames [n, T, R, R, 3].

    positions: world [n, T, B, 2] (offset already applied); radius: world [n, B];
    color_index: [n, B] ints < num_colors; canvas: (min, max) of the square canvas.
    dtype: float64 gives the suite's frames bit for bit (a float32 pass, then the pixels
    near a truncation boundary again in float64); float32 only measures what it would change.
    """
    lo, hi = float(canvas[0]), float(canvas[1])
    size = hi - lo
    positions = np.asarray(positions, np.float64)
    n, t, b = positions.shape[:3]
    u = (positions.reshape(n * t, b, 2) - lo) / size  # [F, B, 2]
    r = np.repeat(np.asarray(radius, np.float64) / size, t, axis=0)  # [F, B]
    colors = np.repeat(palette(num_colors)[np.asarray(color_index)], t, axis=0)  # [F, B, 3]
    grid = np.linspace(0.0, 1.0, resolution)
    f32 = [a.astype(np.float32) for a in (u, r, colors, grid)]
    out = np.empty((n * t, resolution, resolution, 3), np.uint8)
    exact = np.dtype(dtype) == np.float64
    for f0 in range(0, n * t, BLOCK_FRAMES):
        sl = slice(f0, min(n * t, f0 + BLOCK_FRAMES))
        planes = _render_block(*(a[sl] for a in f32[:3]), f32[3])  # [3, F, R, R] = img * 255
        block = out[sl]
        for c in range(3):
            block[..., c] = planes[c]  # float -> uint8 truncates; round-off never passes 256
        if exact:
            planes -= np.rint(planes)
            near = (np.abs(planes) < REFINE_BAND).any(0)
            fi, row, col = np.nonzero(near)
            block[fi, row, col] = _render_pixels(u[sl][fi], r[sl][fi], colors[sl][fi],
                                                 grid[col], grid[row]).T
    return out.reshape(n, t, resolution, resolution, 3)


def _render_block(u, r, colors, grid):
    """image * 255 as float planes [3, F, R, R], in the suite's order of operations."""
    f, b = u.shape[:2]
    res, dtype = grid.shape[0], grid.dtype
    planes = np.zeros((3, f, res, res), dtype)
    trans = np.ones((f, res, res), dtype)  # c: prod_{j<k} (1 - mask_j)
    d = np.empty((f, res, res), dtype)
    w = np.empty((f, res, res), dtype)
    temperature = dtype.type(TEMPERATURE)
    for k in range(b):
        dx2 = (u[:, k, 0, None] - grid) ** 2  # [F, W]
        dy2 = (u[:, k, 1, None] - grid) ** 2  # [F, H]
        np.add(dx2[:, None, :], dy2[:, :, None], out=d)
        np.sqrt(d, out=d)
        d -= r[:, k, None, None]
        d *= temperature
        with np.errstate(over="ignore"):  # exp overflows to inf far away: mask exactly 0
            np.exp(d, out=d)
        d += 1.0
        np.reciprocal(d, out=d)  # the mask
        np.multiply(trans, d, out=w)  # weight of particle k: c * mask
        for c in range(3):
            col = colors[:, k, c]
            if not col.any():
                continue  # most channels of the saturated palette are exactly 0 or 1
            if (col == 1.0).all():
                planes[c] += w
            else:
                planes[c] += w * col[:, None, None]
        np.subtract(1.0, d, out=d)
        trans *= d
    for c in range(3):
        planes[c] += trans * dtype.type(BACKGROUND[c])
        planes[c] *= 255.0
    return planes


def _render_pixels(u, r, colors, gx, gy):
    """image * 255 [3, K] of K single pixels (frame data u [K, B, 2], r [K, B], colors
    [K, B, 3]; pixel centres gx, gy [K]), float64, the same operations as _render_block (a
    skipped 0 colour or a 1 colour there is exact)."""
    planes = np.zeros((3, len(gx)))
    trans = np.ones(len(gx))
    for k in range(u.shape[1]):
        d = np.sqrt((u[:, k, 0] - gx) ** 2 + (u[:, k, 1] - gy) ** 2)
        d -= r[:, k]
        d *= TEMPERATURE
        with np.errstate(over="ignore"):
            mask = np.reciprocal(np.exp(d) + 1.0)
        w = trans * mask
        planes += w * colors[:, k].T
        trans *= 1.0 - mask
    planes += trans * np.array(BACKGROUND)[:, None]
    return planes * 255.0
