"""Figures: sample grids place every frame exactly; plots render to non-empty PNGs."""
import numpy as np
import pytest
from PIL import Image

from hgan.evaluate import figures


def _videos(n=3, t=4, h=5, w=6):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, t, h, w, 3), dtype=np.uint8)


def test_grid_places_frame_i_j_at_its_offset():
    v = _videos()
    img = np.asarray(figures.grid_image(v, scale=1, gap=1))
    assert img.shape == (3 * 6 - 1, 4 * 7 - 1, 3)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(img[i * 6:i * 6 + 5, j * 7:j * 7 + 6], v[i, j])
    big = np.asarray(figures.grid_image(v, scale=2, gap=1))
    np.testing.assert_array_equal(big[::2, ::2], img)


def test_png_and_gif(tmp_path):
    v = _videos(n=5, t=4)
    figures.save_sample_grid(v, tmp_path / "s.png", tmp_path / "s.gif", scale=1, columns=2)
    gif = Image.open(tmp_path / "s.gif")
    assert gif.n_frames == 4
    gif.seek(2)
    # 5 videos in 2 columns -> 3 rows of tiles (GIF palettes quantise colours: shape only).
    assert np.asarray(gif.convert("RGB")).shape == (3 * 6 - 1, 2 * 7 - 1, 3)
    # the empty sixth tile is the background, not a black video
    last = np.asarray(gif.convert("RGB"))[2 * 6:, 7:]
    assert (last == 255).all()
    # fewer videos than columns: that many columns (3 real clips showed 5 black tiles)
    figures.save_sample_grid(v[:3], tmp_path / "t.png", tmp_path / "t.gif", scale=1, columns=8)
    assert np.asarray(Image.open(tmp_path / "t.gif").convert("RGB")).shape == (5, 3 * 7 - 1, 3)
    with pytest.raises(ValueError, match="uint8"):
        figures.save_sample_grid(v.astype(np.float32), tmp_path / "x.png")


def test_plots_render(tmp_path):
    pytest.importorskip("matplotlib")
    emb = figures.tsne_embedding(np.random.default_rng(0).standard_normal((30, 4)), iterations=250)
    assert emb.shape == (30, 2) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="at least 250"):  # not clamped silently
        figures.tsne_embedding(np.zeros((30, 4)), iterations=100)
    paths = [figures.plot_tsne(emb, tmp_path / "t.png", title="t"),
             figures.plot_active_momenta([1.0, 0.01, 0.5], 0.1, tmp_path / "m.png", title="m"),
             figures.plot_energy_rollout(np.arange(5), np.zeros((3, 5)), np.ones((3, 5)) * 1e-3,
                                         tmp_path / "e.png", title="e")]
    for p in paths:
        assert Image.open(p).size[0] > 100
