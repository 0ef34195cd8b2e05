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


def test_grid_gaps_are_white():
    v = np.zeros((2, 2, 5, 6, 3), np.uint8)  # black frames: any white pixel is a gap
    img = np.asarray(figures.grid_image(v, scale=1, gap=1))
    assert (img[5] == 255).all() and (img[:, 6] == 255).all()
    assert (img[:5, :6] == 0).all()


def test_plots_label_what_they_draw(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    lines, bars = {}, []
    plot, bar = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.bar

    def rec_plot(self, x, y, *a, label=None, **k):
        lines[label] = (np.asarray(x).tolist(), np.asarray(y).tolist())
        return plot(self, x, y, *a, label=label, **k)

    def rec_bar(self, x, h, *a, color=None, **k):
        bars.append(list(color))
        return bar(self, x, h, *a, color=color, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", rec_plot)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", rec_bar)
    # active means above the threshold (as structure counts it): equal is not active
    figures.plot_active_momenta([0.3, 0.1, 0.05], 0.1, tmp_path / "m.png", title="m")
    assert bars == [["tab:red", "tab:gray", "tab:gray"]]
    # forward rollouts at +steps, backward ones at -steps, each under its own label
    figures.plot_energy_rollout(np.arange(3), np.full((4, 3), 0.01), np.full((4, 3), -0.02),
                                tmp_path / "e.png", title="e")
    assert lines == {"forward (+dt)": ([0, 1, 2], [0.01] * 3),
                     "backward (-dt)": ([0, -1, -2], [-0.02] * 3)}


def test_png_is_the_grid_and_gif_frame_k_tiles_every_videos_frame_k_row_by_row(tmp_path):
    # Solid frames of few colours, so that the GIF palette holds them exactly: video i's
    # frame k is colour (40 i, 60 k, 0). 5 videos in 2 columns: tile (r, c) is video 2 r + c.
    from hgan.data.simulate import REAL_TIME_FPS
    n, t, h, w = 5, 3, 4, 5
    v = np.zeros((n, t, h, w, 3), np.uint8)
    for i in range(n):
        for k in range(t):
            v[i, k] = (40 * i, 60 * k, 0)
    figures.save_sample_grid(v, tmp_path / "s.png", tmp_path / "s.gif", scale=1, columns=2)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "s.png").convert("RGB")),
                                  np.asarray(figures.grid_image(v, scale=1)))
    gif = Image.open(tmp_path / "s.gif")
    assert gif.info["duration"] == int(1000 / REAL_TIME_FPS)
    for k in range(t):
        gif.seek(k)
        img = np.asarray(gif.convert("RGB"))
        for i in range(n):
            r, c = divmod(i, 2)
            tile = img[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w]
            assert (tile == (40 * i, 60 * k, 0)).all(), (k, i)
