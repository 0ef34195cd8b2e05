"""Renderer against a float64 transcription of the spec's formula."""
import numpy as np
import pytest

from hgan.data import get_system
from hgan.data.generate import render_states
from hgan.data.render import palette, render

BG = np.array([0.321, 0.349, 0.368])


def _oracle(pos, radius, colors, lo, hi, res, row, col):
    """float64 value of one pixel: soft masks composited front to back."""
    size = hi - lo
    centre = np.array([col, row]) / (res - 1)  # pixel centres linspace(0, 1, res); row = y
    out, trans = np.zeros(3), 1.0
    for p, r, c in zip(pos, radius, colors):
        d = np.linalg.norm(centre - (np.asarray(p) - lo) / size)
        m = 1.0 / (1.0 + np.exp((d - r / size) * 80.0))
        out += trans * m * np.asarray(c)
        trans *= 1 - m
    return out + trans * BG


def test_particle_at_known_pixel_and_background():
    # Canvas [0, 31] at 32 px: pixel centres fall on integer world coordinates.
    res, lo, hi = 32, 0.0, 31.0
    pos = np.array([[[[10.0, 20.0]]]])  # x = 10 -> col 10, y = 20 -> row 20
    radius = np.array([[1.5]])
    img = render(pos, radius, np.array([[0]]), 6, (lo, hi), res)[0, 0]
    want = _oracle([[10, 20]], [1.5], [(1, 0, 0)], lo, hi, res, 20, 10) * 255
    assert np.all(np.abs(want - np.round(want)) > 1e-3)  # no truncation tie at this pixel
    np.testing.assert_array_equal(img[20, 10], np.floor(want).astype(np.uint8))
    np.testing.assert_array_equal(img[0, 31], [81, 88, 93])  # exact background far away
    for row, col in [(20, 12), (21, 11), (18, 10)]:  # the soft edge, within truncation
        want = np.floor(_oracle([[10, 20]], [1.5], [(1, 0, 0)], lo, hi, res, row, col) * 255)
        assert np.abs(img[row, col].astype(int) - want).max() <= 1


def _centroid(img):
    w = np.clip(img[..., 0].astype(float) - img[..., 2], 0, None)  # red excess over background
    rows, cols = np.indices(w.shape)
    return (w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()


def test_orientation_pendulum_hangs_at_low_rows():
    # q = 0: bob at (0, -l), below the pivot; row 0 is the canvas y-min.
    system = get_system("pendulum")
    pr = {"m": np.array([0.5]), "g": np.array([3.0]), "l": np.array([1.0])}
    img = render_states(system, np.zeros((1, 1, 2)), pr, np.zeros((1, 1), int),
                        np.zeros((1, 2)), 32)[0, 0]
    row, col = _centroid(img)
    assert abs(row - 0.1426 * 31) < 0.05 and abs(col - 15.5) < 0.05  # y = -1 -> u = 0.1426
    # q = pi/2: bob at (+l, 0): to the right (high columns), middle rows.
    img = render_states(system, np.array([[[np.pi / 2, 0.0]]]), pr, np.zeros((1, 1), int),
                        np.zeros((1, 2)), 32)[0, 0]
    row, col = _centroid(img)
    assert abs(col - 0.8574 * 31) < 0.05 and abs(row - 15.5) < 0.05


def test_palette_hsv():
    np.testing.assert_array_equal(palette(1), [[1, 0, 0]])
    np.testing.assert_array_equal(palette(2), [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(palette(3), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(palette(6), [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1],
                                               [0, 0, 1], [1, 0, 1]])


def test_front_to_back_compositing():
    res, lo, hi = 32, 0.0, 31.0
    pos = np.array([[[[10.0, 10.0], [11.0, 10.0]]]])
    radius = np.array([[2.0, 2.0]])
    img = render(pos, radius, np.array([[2, 4]]), 6, (lo, hi), res)[0, 0]  # green over blue
    cols = palette(6)[[2, 4]]
    for row, col in [(10, 10), (10, 11), (10, 12), (12, 11)]:
        want = _oracle(pos[0, 0], radius[0], cols, lo, hi, res, row, col) * 255
        assert np.abs(img[row, col].astype(int) - np.floor(want)).max() <= 1
    assert img[10, 10, 1] > 250 and img[10, 11, 1] > img[10, 11, 2]  # particle 0 on top


@pytest.mark.parametrize("res", [64, 96])
def test_higher_resolutions(res):
    lo, hi = -1.0, 1.0
    pos = np.array([[[[0.0, 0.0]]]])
    img = render(pos, np.array([[0.2]]), np.array([[0]]), 1, (lo, hi), res)
    assert img.shape == (1, 1, res, res, 3) and img.dtype == np.uint8
    c = res // 2
    assert img[0, 0, c, c, 0] >= 250 and img[0, 0, c, c, 1] < 5
    np.testing.assert_array_equal(img[0, 0, 0, 0], [81, 88, 93])
    # The disc covers the same fraction of the canvas at every resolution (radius 0.1 unit).
    frac = (img[0, 0, ..., 0].astype(int) - img[0, 0, ..., 2] > 80).mean()
    assert abs(frac - np.pi * 0.1 ** 2) < 0.01


def _float64_frames(pos, radius, colors, lo, hi, res):
    """The suite's renderer transcribed in float64, whole frames at once: uint8 [F, R, R, 3]."""
    size = hi - lo
    u = (pos - lo) / size  # [F, B, 2]
    gx, gy = np.meshgrid(np.linspace(0.0, 1.0, res), np.linspace(0.0, 1.0, res))
    img, c = np.zeros(pos.shape[:1] + (res, res, 3)), np.ones(pos.shape[:1] + (res, res, 1))
    for k in range(pos.shape[1]):
        d = np.sqrt((u[:, k, 0, None, None] - gx) ** 2 + (u[:, k, 1, None, None] - gy) ** 2)
        with np.errstate(over="ignore"):
            m = (1.0 / (1.0 + np.exp((d - (radius[:, k] / size)[:, None, None]) * 80.0)))[..., None]
        img = img + c * m * colors[:, k, None, None, :]
        c = c * (1 - m)
    return ((img + c * BG) * 255.0).astype(np.uint8)


@pytest.mark.parametrize("name", ["double_pendulum_colors", "two_body_colors", "three_body"])
def test_frames_equal_a_float64_render_and_float32_does_not_always(name):
    # 96 frames of random positions around the canvas, sizes and colours as the system's.
    system = get_system(name)
    rng = np.random.default_rng(0)
    lo, hi = system.full_canvas
    f, b = 96, system.n_bodies
    pos = rng.uniform(lo, hi, (1, f, b, 2))
    radius = rng.uniform(0.3, 0.7, (1, b))
    ci = rng.permutation(system.num_colors)[None, :b]
    img = render(pos, radius, ci, system.num_colors, (lo, hi), 32)[0]
    want = _float64_frames(pos[0], np.repeat(radius, f, 0), palette(system.num_colors)[ci][[0] * f],
                           lo, hi, 32)
    np.testing.assert_array_equal(img, want)
    single = render(pos, radius, ci, system.num_colors, (lo, hi), 32, dtype=np.float32)[0]
    assert np.abs(single.astype(int) - want).max() <= 1


def test_each_trajectorys_frames_take_its_own_radius_and_colours():
    # 3 trajectories x 5 frames, each with its own radii and colour indices: every frame is
    # rendered with its trajectory's (one trajectory of many frames, or many of one frame,
    # cannot tell a repeat of the per-trajectory rows from a tile of them).
    rng = np.random.default_rng(2)
    n, t, b = 3, 5, 2
    pos = rng.uniform(-2, 2, (n, t, b, 2))
    radius = np.array([[0.3, 0.5], [0.6, 0.35], [0.45, 0.7]])
    ci = np.array([[0, 1], [2, 3], [4, 5]])
    img = render(pos, radius, ci, 6, (-2.5, 2.5), 32)
    for i in range(n):
        want = _float64_frames(pos[i], np.repeat(radius[i:i + 1], t, 0),
                               palette(6)[ci[[i] * t]], -2.5, 2.5, 32)
        np.testing.assert_array_equal(img[i], want, err_msg=f"trajectory {i}")


def test_values_float32_truncates_wrongly_are_refined_in_float64():
    # 2000 one-frame trajectories on the unit canvas: ~1.8e7 values, of which float32 alone
    # truncates about a hundred to the wrong level (5 in 10^6); the refined frames have none.
    from hgan.data.render import REFINE_BAND, _render_block
    rng = np.random.default_rng(5)
    n = 2000
    pos = rng.uniform(0, 1, (n, 1, 2, 2))
    radius = rng.uniform(0.02, 0.1, (n, 2))
    ci = rng.integers(0, 6, (n, 2))
    want = _float64_frames(pos[:, 0], radius, palette(6)[ci], 0.0, 1.0, 32)
    single = render(pos, radius, ci, 6, (0.0, 1.0), 32, dtype=np.float32)[:, 0]
    assert (single != want).sum() > 20, "the sample must contain float32 truncation errors"
    np.testing.assert_array_equal(render(pos, radius, ci, 6, (0.0, 1.0), 32)[:, 0], want)
    # The band holds float32's error with a 4x margin on this sample.
    f32 = [a.astype(np.float32) for a in (pos[:, 0], radius, palette(6)[ci])]
    p32 = _render_block(*f32, np.linspace(0.0, 1.0, 32, dtype=np.float32))
    p64 = _render_block(pos[:, 0], radius, palette(6)[ci], np.linspace(0.0, 1.0, 32))
    assert np.abs(p32 - p64).max() < REFINE_BAND / 4


def test_mass_spring_moves_vertically_on_the_canvas():
    # The spec's position (x_offset, q): the spring is vertical. q = 0.7 puts the particle at
    # world (0, 0.7): the middle column, and row (0.7 + c) / (2 c) * 31 (row 0 = y-min).
    system = get_system("mass_spring")
    pr = {"k": np.array([2.0]), "m": np.array([0.5])}
    states = np.array([[[0.7, 0.0]]])
    np.testing.assert_array_equal(system.positions(states, pr)[0, 0, 0], [0.0, 0.7])
    img = render_states(system, states, pr, np.zeros((1, 1), int), np.zeros((1, 2)), 32)[0, 0]
    c = 1.0 + np.sqrt(0.5 / np.pi)
    row, col = _centroid(img)
    assert abs(col - 15.5) < 0.05 and abs(row - (0.7 + c) / (2 * c) * 31) < 0.05


def test_colors_frames_are_drawn_on_the_widened_canvas():
    # pendulum_colors: bounds +-(l_max + sqrt(m_max / pi)) = +-(1 + sqrt(1.5 / pi)), widened
    # by the offset's 0.4 of that. A bob shifted by the offset is drawn where the spec's
    # float64 pixel formula puts it on that canvas.
    system = get_system("pendulum_colors")
    half = 1.4 * (1.0 + np.sqrt(1.5 / np.pi))
    pr = {"m": np.array([1.2]), "g": np.array([3.5]), "l": np.array([0.8])}
    offset = np.array([[0.5, -0.3]])
    img = render_states(system, np.zeros((1, 1, 2)), pr, np.array([[3]]), offset, 32)[0, 0]
    bob = (0.5, -0.3 - 0.8)   # (0, -l) + offset
    radius = [np.sqrt(1.2 / np.pi)]
    for row in range(0, 32, 3):
        for col in range(0, 32, 3):
            want = np.floor(_oracle([bob], radius, palette(6)[[3]], -half, half, 32, row, col)
                            * 255)
            assert np.abs(img[row, col].astype(int) - want).max() <= 1, (row, col)
    assert img[9, 19, 0] < 5 and min(img[9, 19, 1:]) > 240   # cyan centre
