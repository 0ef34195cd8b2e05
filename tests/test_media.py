"""hgan.train.media: the pixels, layout, frame order and timing of the PNG strips and GIFs
that training, hgan.sample and TensorBoard show, against values worked out by hand."""
import numpy as np
import pytest
import torch
from PIL import Image

from hgan.train.media import frame_grid, save_gif, save_png_strip, save_samples, strip, to_uint8

N, T, H, W = 3, 4, 2, 5   # H != W: a swapped height and width cannot pass


def pixel(i, j, y, x):
    """RGB of video i (< 10), frame j, pixel (y, x): distinct for every (i, j, y, x). Red
    names the video and the pixel, green the frame and the pixel, blue is constant."""
    return [1 + 20 * i + 5 * y + x, 1 + 40 * j + 5 * y + x, 7]


def videos(n=N, t=T):
    """Float videos in [-1, 1] whose uint8 image is `pixel` exactly (u / 127.5 - 1)."""
    v = torch.zeros(n, t, 3, H, W)
    for i in range(n):
        for j in range(t):
            for y in range(H):
                for x in range(W):
                    v[i, j, :, y, x] = torch.tensor(pixel(i, j, y, x), dtype=torch.float32)
    return v / 127.5 - 1


def test_to_uint8_clamps_scales_and_rounds():
    # (x + 1) * 127.5, rounded half to even, outside [-1, 1] clamped:
    # -2 -> 0, -1 -> 0, -0.5 -> 63.75 -> 64, 0 -> 127.5 -> 128, 0.5 -> 191.25 -> 191, 1 -> 255
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    u = to_uint8(x.view(1, 7, 1, 1, 1).expand(1, 7, 3, 1, 1))
    assert u.dtype == np.uint8 and u.shape == (1, 7, 1, 1, 3)
    assert u[0, :, 0, 0, 0].tolist() == [0, 0, 64, 128, 191, 255, 255]
    # 1/127.5 steps round to the nearest level, not down: 0.2 of a level above 100 stays 100
    y = torch.tensor([100.2, 100.8]) / 127.5 - 1
    assert to_uint8(y.view(1, 2, 1, 1, 1).expand(1, 2, 3, 1, 1))[0, :, 0, 0, 0].tolist() == [100, 101]


def test_to_uint8_puts_channels_last_and_keeps_height_and_width():
    u = to_uint8(videos())
    assert u.shape == (N, T, H, W, 3)
    assert u[2, 1, 1, 4].tolist() == pixel(2, 1, 1, 4) == [1 + 40 + 5 + 4, 1 + 40 + 5 + 4, 7]
    assert u[1, 3, 0, 2].tolist() == [1 + 20 + 2, 1 + 120 + 2, 7]


def test_strip_is_one_row_per_video_one_column_per_frame():
    s = strip(videos())
    assert s.shape == (N * H, T * W, 3)
    for i in range(N):
        for j in range(T):
            for y in range(H):
                for x in range(W):
                    assert s[i * H + y, j * W + x].tolist() == pixel(i, j, y, x), (i, j, y, x)
    # by hand: the top-left pixel is video 0's first frame, the bottom-right video 2's last
    assert s[0, 0].tolist() == [1, 1, 7] and s[-1, -1].tolist() == [1 + 40 + 9, 1 + 120 + 9, 7]


def test_png_strip_file_holds_the_strip(tmp_path):
    path = save_png_strip(videos(), str(tmp_path / "new" / "dir" / "s.png"))
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape == (N * H, T * W, 3)
    assert np.array_equal(png, strip(videos()))
    assert png[H, 0].tolist() == [21, 1, 7]   # the second row of tiles is the second video


# 8 (the default sample count) was a 3 x 3 grid with a black tile, read as a collapsed video
@pytest.mark.parametrize("n,rows,cols", [(1, 1, 1), (3, 1, 3), (4, 2, 2), (5, 1, 5), (8, 2, 4),
                                         (10, 2, 5), (7, 3, 3), (13, 4, 4)])
def test_frame_grid_tiles_videos_row_major_in_a_near_square_grid(n, rows, cols):
    g = frame_grid(videos(n=n))
    assert g.shape == (T, rows * H, cols * W, 3)
    for t in range(T):
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                tile = g[t, r * H:(r + 1) * H, c * W:(c + 1) * W]
                if i < n:
                    want = [[pixel(i, t, y, x) for x in range(W)] for y in range(H)]
                    assert tile.tolist() == want, (t, r, c)
                else:
                    assert (tile == 255).all(), "tiles without a video are white"


def gif_frames(path):
    im = Image.open(path)
    frames, durations = [], []
    for k in range(im.n_frames):
        im.seek(k)
        frames.append(np.asarray(im.convert("RGB")))
        durations.append(im.info["duration"])
    return np.stack(frames), durations, im.info


def test_gif_frames_are_the_grids_in_time_order_at_fps_and_loop(tmp_path):
    path = save_gif(videos(), str(tmp_path / "g.gif"), fps=4)
    frames, durations, info = gif_frames(path)
    assert frames.shape == (T, H, 3 * W, 3)          # 3 videos: one row of 3
    assert np.array_equal(frames, frame_grid(videos()))   # few colours: the palette is exact
    assert [f[0, 0, 1] for f in frames] == [1, 41, 81, 121]   # video 0's frames, in order
    assert durations == [250] * T                     # 4 frames per second
    assert info.get("loop") == 0                      # loops forever


def test_save_samples_writes_the_stem_png_and_gif(tmp_path):
    stem = str(tmp_path / "samples" / "iter_0000001")
    png, gif = save_samples(videos(), stem)
    assert (png, gif) == (stem + ".png", stem + ".gif")
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), strip(videos()))
    frames, durations, _ = gif_frames(gif)
    assert frames.shape[0] == T
    assert durations == [50] * T     # real time: 20 frames/s (docs/training.md, samples/)


def test_a_divisor_far_from_the_square_root_does_not_set_the_columns():
    # 27 tiles: ceil(sqrt(27)) = 6 and 6, 7, 8 do not divide 27; 9 does, but 9 columns by 3
    # rows is no near-square grid: 6 columns, 5 rows, 3 empty (white) tiles. 24 = 6 x 4 fills.
    g = frame_grid(torch.zeros(27, 1, 3, H, W))
    assert g.shape == (1, 5 * H, 6 * W, 3)
    assert (g[0, 4 * H:, 3 * W:] == 255).all() and (g[0, 4 * H:, :3 * W] == 128).all()
    assert frame_grid(torch.zeros(24, 1, 3, H, W)).shape == (1, 4 * H, 6 * W, 3)


def test_frame_grid_takes_the_columns_it_is_given():
    # 3 videos in one column: 3 rows, video i's tile in row i
    g = frame_grid(videos(), cols=1)
    assert g.shape == (T, 3 * H, W, 3)
    for i in range(N):
        assert g[2, i * H:(i + 1) * H].tolist() == [[pixel(i, 2, y, x) for x in range(W)]
                                                    for y in range(H)]


def test_every_gif_plays_in_real_time_by_default(tmp_path):
    # Training, sampling and evaluation GIFs played at 10 fps while `hgan.data show` plays the
    # data at one frame per dt = 0.05 s: generated motion looked half as fast as real motion.
    from hgan.data.simulate import DT
    from hgan.evaluate import figures
    assert gif_frames(save_gif(videos(), str(tmp_path / "t.gif")))[1] == [round(DT * 1000)] * T
    figures.save_sample_grid(to_uint8(videos()), tmp_path / "e.png", tmp_path / "e.gif")
    assert gif_frames(str(tmp_path / "e.gif"))[1] == [round(DT * 1000)] * T
