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


def test_videos_of_another_shape_are_refused():
    v = _videos()
    for bad in (v[0], np.concatenate([v, v[..., :1]], -1)):   # one video; 4 channels
        with pytest.raises(ValueError, match=r"uint8 \[N, T, H, W, 3\]"):
            figures.grid_image(bad)


def test_default_grids_are_twice_the_size_eight_videos_a_row_and_loop(tmp_path):
    n, t, h, w = 9, 2, 4, 5
    v = _videos(n, t, h, w)
    figures.save_sample_grid(v, tmp_path / "s.png", tmp_path / "s.gif")
    assert Image.open(tmp_path / "s.png").size == (2 * (t * (w + 1) - 1), 2 * (n * (h + 1) - 1))
    gif = Image.open(tmp_path / "s.gif")
    # 9 videos, 8 a row: 2 rows of tiles, at the PNG's scale; played over and over
    assert gif.size == (2 * (8 * (w + 1) - 1), 2 * (2 * (h + 1) - 1))
    assert gif.info["loop"] == 0


def test_tsne_perplexity_method_and_seed_follow_the_sample_count(monkeypatch):
    import sklearn.manifold
    seen = []

    class Recorder:
        def __init__(self, n_components, perplexity, init, random_state, method, max_iter):
            seen.append({"perplexity": perplexity, "method": method, "seed": random_state})

        def fit_transform(self, x):
            seen[-1]["dtype"] = x.dtype
            return np.zeros((len(x), 2))
    monkeypatch.setattr(sklearn.manifold, "TSNE", Recorder)
    for n in (4, 10, 200, 201):
        figures.tsne_embedding(np.zeros((n, 3), np.float32), seed=7, iterations=250)
    # perplexity: under a third of the other points, at least 2, at most 30
    assert [s["perplexity"] for s in seen] == [2.0, 3.0, 30.0, 30.0]
    # exact gradients up to 200 points
    assert [s["method"] for s in seen] == ["exact", "exact", "exact", "barnes_hut"]
    assert all(s["seed"] == 7 and s["dtype"] == np.float64 for s in seen)


def test_plots_draw_their_data_threshold_and_title(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    import matplotlib.pyplot as plt
    got = {}

    def recorder(name):
        original = getattr(matplotlib.axes.Axes, name)

        def rec(self, *a, **k):
            got.setdefault(name, []).append([np.asarray(x).tolist() if not isinstance(x, str)
                                             else x for x in a])
            return original(self, *a, **k)
        monkeypatch.setattr(matplotlib.axes.Axes, name, rec)
    for name in ("scatter", "set_title", "axhline", "fill_between", "plot"):
        recorder(name)
    before = plt.get_fignums()
    emb = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    figures.plot_tsne(emb, tmp_path / "t.png", title="tsne title")
    assert got["scatter"] == [[[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]]
    figures.plot_active_momenta([0.3, 0.1], 0.15, tmp_path / "m.png", title="m")
    assert got["axhline"] == [[0.15]]
    # 11 rollouts whose change is 0, 1, ..., 10 at every step: 10-90% band 1..9, median 5
    rel = np.repeat(np.arange(11.0)[:, None], 3, 1)
    figures.plot_energy_rollout(np.arange(3), rel, -rel, tmp_path / "e.png", title="e")
    assert got["fill_between"] == [[[0, 1, 2], [1.0] * 3, [9.0] * 3],
                                   [[0, -1, -2], [-9.0] * 3, [-1.0] * 3]]
    assert got["plot"] == [[[0, 1, 2], [5.0] * 3], [[0, -1, -2], [-5.0] * 3]]
    assert got["set_title"] == [["tsne title"], ["m"], ["e"]]
    assert plt.get_fignums() == before       # each figure closed once saved
