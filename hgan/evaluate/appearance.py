"""Appearance consistency: do the objects keep their look along a video?

A Toy Physics frame is the background with soft discs of known palette colours composited
over it, so every pixel is close to ``background + w * (colour_k - background)`` for one
colour k and a weight w in [0, 1]. Unmixing each pixel that way gives, per frame, the
foreground pixel mass of every palette colour (the sum of w over the pixels of that colour).
A rigid object keeps its mass along a real video (only occlusion and the canvas edge change
it); an object that fades, splits into dimmer blobs, or appears mid-video does not.

Per video, the score is the sum over colours of std_t(mass_k), divided by the typical mass
of one real object (so absent colours count zero and a fading object counts its full
swing): real videos score near zero (measured 0.002-0.013 on the five Table-1 systems),
a ball faded out linearly along a 16-frame video about 0.3 per object.
It is reported for held-out real videos beside generated ones, with the fraction of videos
above ``flag_threshold`` (what a viewer would call "the ball faded out"), the fraction of
blank videos (no object drawn: a variation of zero, which no flag catches), and the ratio of
total foreground mass (generated / real; a blank or smeared generator shows here).

Object motion: the same unmixing gives each colour's centroid per frame; a video's speed is
the mean distance in pixels its colours' centroids move from one frame to the next. The
ratio of the generated median to the real one (`motion_ratio`) shows a still generator,
whose low energy drift and appearance variation would otherwise read as good physics (an
H200 grid, 2026-12-04: HGAN's mass_spring, two_body and three_body drew one frozen frame
per video after 5,000 iterations and "won" those checks).
"""
import warnings

import numpy as np

from hgan.data.render import BACKGROUND, palette

# Pixels closer than this to the background (in [0, 1] RGB, Euclidean) are background: it
# ignores the uint8 truncation of the real background (<= 1/255 per channel) and a
# generator's faint background noise, which summed over 1024 pixels would swamp one disc.
MIN_CONTRAST = 0.1
# A pixel is a palette colour's only when that colour's line from the background explains
# all but this share of its squared offset from the background (within ~35 degrees of the
# colour's direction). A real pixel is on such a line up to uint8 rounding; a grey, black or
# white frame is not, and without this check a blank generator had the mass of 0.03-30 real
# objects (measured on the nine Toy Physics sets' palettes). A generated object washed out
# towards grey or white beyond that angle (red at (0.8, 0.5, 0.5), say) weighs nothing
# either: it is not drawn in any palette colour.
MAX_RESIDUAL_SHARE = 1 / 3
# A video is flagged when its variation exceeds both this floor (10% of an object's mass,
# std over time) and twice the 99th percentile of held-out real videos.
FLAG_FLOOR = 0.1
FLAG_REAL_FACTOR = 2.0
# A video is blank when its mean foreground mass is under this share of one real object's:
# nothing drawn, which its variation (zero) cannot show.
BLANK_SHARE = 0.1
# A colour counts as present in a real video when its mean mass reaches this many pixels.
PRESENT_PIXELS = 1.0


def color_moments(videos, num_colors, *, min_contrast=MIN_CONTRAST,
                  max_residual_share=MAX_RESIDUAL_SHARE, batch=64):
    """Foreground pixel mass and centroid per palette colour of uint8 [N, T, H, W, 3]:
    mass float64 [N, T, K], centroid float64 [N, T, K, 2] in pixels (row, column; NaN where
    the colour has no mass)."""
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    bg = np.asarray(BACKGROUND, np.float32)
    dirs = palette(num_colors).astype(np.float32) - bg  # [K, 3]
    norm2 = (dirs ** 2).sum(1)
    n, t, h, w_ = videos.shape[:4]
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w_, dtype=np.float64)
    out = np.empty((n, t, num_colors), np.float64)
    cen = np.full((n, t, num_colors, 2), np.nan)
    for i in range(0, n, batch):
        d = videos[i:i + batch].astype(np.float32) / 255.0 - bg  # [b, T, H, W, 3]
        proj = d @ dirs.T
        w = np.clip(proj / norm2, 0.0, 1.0)  # [b, T, H, W, K] weight along each colour
        off2 = (d ** 2).sum(-1)
        # Squared residual of each single-colour explanation; the best one owns the pixel.
        resid = off2[..., None] - 2 * w * proj + w ** 2 * norm2
        best = resid.argmin(-1)
        fg = (off2 > min_contrast ** 2) & (resid.min(-1) <= max_residual_share * off2)
        owned = np.take_along_axis(w, best[..., None], -1)[..., 0] * fg  # [b, T, H, W]
        for k in range(num_colors):
            mk = np.where(best == k, owned, 0.0).astype(np.float64)  # [b, T, H, W]
            total = mk.sum(axis=(2, 3))
            out[i:i + batch, :, k] = total
            with np.errstate(invalid="ignore", divide="ignore"):
                cen[i:i + batch, :, k, 0] = (mk.sum(3) @ rows) / total
                cen[i:i + batch, :, k, 1] = (mk.sum(2) @ cols) / total
    return out, cen


def color_mass(videos, num_colors, **kwargs):
    """Foreground pixel mass per palette colour: uint8 [N, T, H, W, 3] -> float64 [N, T, K]."""
    return color_moments(videos, num_colors, **kwargs)[0]


def object_mass(real_mass):
    """Typical mass of one real object: median over (video, colour) pairs present."""
    mean = np.asarray(real_mass).mean(axis=1)  # [N, K]
    present = mean[mean >= PRESENT_PIXELS]
    if present.size == 0:
        raise ValueError("no object of any palette colour found in the real videos")
    return float(np.median(present))


def variation(mass, reference):
    """Per video: sum_k std_t(mass_k) / reference. mass [N, T, K] -> [N]."""
    return np.asarray(mass).std(axis=1).sum(-1) / reference


def speed(mass, centroid):
    """Per video: the mean distance (pixels) a colour's centroid moves between consecutive
    frames, over the (frame pair, colour) pairs where the colour is present in both frames
    (at least PRESENT_PIXELS of mass); 0 for a video with no such pair (nothing drawn, so
    nothing moves). mass [N, T, K], centroid [N, T, K, 2] -> [N]."""
    mass, centroid = np.asarray(mass), np.asarray(centroid)
    present = (mass[:, 1:] >= PRESENT_PIXELS) & (mass[:, :-1] >= PRESENT_PIXELS)  # [N, T-1, K]
    step = np.linalg.norm(np.nan_to_num(centroid[:, 1:] - centroid[:, :-1]), axis=-1)
    count = present.sum(axis=(1, 2))
    return np.where(present, step, 0.0).sum(axis=(1, 2)) / np.maximum(count, 1)


def spread(centroid, max_videos=256):
    """How different the videos are: the median over pairs of videos of the mean distance
    (pixels) between their colours' centroids, frame by frame, over the (frame, colour)
    pairs present in both; NaN with fewer than two videos or no such pair. A generator that
    draws one video whatever its noise (mode collapse) scores about 0. centroid
    [N, T, K, 2] -> float."""
    c = np.asarray(centroid)[:max_videos]
    n = len(c)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, 1)
    d = np.linalg.norm(c[i] - c[j], axis=-1)            # [pairs, T, K], NaN where absent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # pairs with nothing in common
        per_pair = np.nanmean(d.reshape(len(d), -1), axis=1)
    return float(np.nanmedian(per_pair)) if np.isfinite(per_pair).any() else float("nan")


def appearance_consistency(real_videos, gen_videos, num_colors):
    """Scores of held-out real and of generated uint8 videos [N, T, H, W, 3] (same system)."""
    real_m, real_c = color_moments(real_videos, num_colors)
    gen_m, gen_c = color_moments(gen_videos, num_colors)
    real_s, gen_s = speed(real_m, real_c), speed(gen_m, gen_c)
    real_spread, gen_spread = spread(real_c), spread(gen_c)
    ref = object_mass(real_m)
    real_v, gen_v = variation(real_m, ref), variation(gen_m, ref)
    threshold = max(FLAG_FLOOR, FLAG_REAL_FACTOR * float(np.percentile(real_v, 99)))
    real_each, gen_each = real_m.mean(axis=1).sum(-1), gen_m.mean(axis=1).sum(-1)
    real_total = float(np.median(real_each))
    return {
        "object_mass_pixels": ref,
        "real": _summary(real_v),
        "generated": _summary(gen_v),
        "flag_threshold": threshold,
        "real_flagged": float((real_v > threshold).mean()),
        "generated_flagged": float((gen_v > threshold).mean()),
        "real_blank": float((real_each < BLANK_SHARE * ref).mean()),
        "generated_blank": float((gen_each < BLANK_SHARE * ref).mean()),
        "mass_ratio": float(np.median(gen_each)) / max(real_total, 1e-9),
        # object speed in pixels per frame; its ratio is 0 for a generator that draws one
        # frozen frame per video (or nothing), 1 for real motion
        "motion": {"real": _summary(real_s), "generated": _summary(gen_s)},
        "motion_ratio": float(np.median(gen_s)) / max(float(np.median(real_s)), 1e-9),
        # how different the videos are from each other (pixels); its ratio is about 0 for a
        # generator that draws one video whatever its noise
        "spread": {"real": _finite(real_spread), "generated": _finite(gen_spread)},
        "spread_ratio": _finite(_ratio(gen_spread, real_spread)),
        "num_real": int(len(real_v)), "num_generated": int(len(gen_v)),
    }


def _finite(x):
    """x, or None where it is not a number (results.json is strict JSON)."""
    return x if np.isfinite(x) else None


def _ratio(a, b):
    return a / b if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")


def _summary(v):
    return {"median": float(np.median(v)), "mean": float(np.mean(v)),
            "p90": float(np.percentile(v, 90))}
