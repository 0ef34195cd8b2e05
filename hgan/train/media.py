"""Sample videos as PNG strips, animated GIFs and TensorBoard image grids."""
import os

import numpy as np
import torch
from PIL import Image

from hgan.data.simulate import REAL_TIME_FPS


def to_uint8(videos):
    """[n, T, C, H, W] in [-1, 1] -> uint8 numpy [n, T, H, W, C]."""
    v = ((videos.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 1, 3, 4, 2).numpy()


def strip(videos) -> np.ndarray:
    """One row per video, one column per frame: uint8 [n*H, T*W, C]."""
    v = to_uint8(videos)
    n, t, h, w, c = v.shape
    return v.transpose(0, 2, 1, 3, 4).reshape(n * h, t * w, c)


# Tiles without a video: white, as the evaluation's gaps; a black tile looked like a video
# whose generator had collapsed.
EMPTY_TILE = 255


def grid_columns(n: int) -> int:
    """Columns of a near-square grid of n tiles that leaves no tile empty where one exists
    (8 -> 4 x 2, not 3 x 3 with a hole); n with no divisor near its square root (7, 13) gets
    ceil(sqrt(n)) columns and a few empty tiles."""
    square = int(np.ceil(np.sqrt(n)))
    full = next(d for d in range(square, n + 1) if n % d == 0)
    return full if full <= square + 2 else square


def frame_grid(videos, cols=None) -> np.ndarray:
    """Per frame, the n videos tiled in a grid: uint8 [T, rows*H, cols*W, C]."""
    v = to_uint8(videos)
    n, t, h, w, c = v.shape
    cols = cols or grid_columns(n)
    rows = int(np.ceil(n / cols))
    pad = np.full((rows * cols - n, t, h, w, c), EMPTY_TILE, np.uint8)
    v = np.concatenate([v, pad]).reshape(rows, cols, t, h, w, c)
    return v.transpose(2, 0, 3, 1, 4, 5).reshape(t, rows * h, cols * w, c)


def save_png_strip(videos, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(strip(videos)).save(path)
    return path


def save_gif(videos, path, fps=REAL_TIME_FPS):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames = [Image.fromarray(f) for f in frame_grid(videos)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def save_samples(videos, stem):
    """Write <stem>.png (strip) and <stem>.gif; returns both paths."""
    return save_png_strip(videos, stem + ".png"), save_gif(videos, stem + ".gif")
