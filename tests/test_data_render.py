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
