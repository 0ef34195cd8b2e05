"""Sample videos as PNG strips, animated GIFs and TensorBoard image grids."""
import os

import numpy as np
import torch
from PIL import Image


def to_uint8(videos):
    """[n, T, C, H, W] in [-1, 1] -> uint8 numpy [n, T, H, W, C]."""
    v = ((videos.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 1, 3, 4, 2).numpy()


def strip(videos) -> np.ndarray:
    """One row per video, one column per frame: uint8 [n*H, T*W, C]."""
    v = to_uint8(videos)
    n, t, h, w, c = v.shape
    return v.transpose(0, 2, 1, 3, 4).reshape(n * h, t * w, c)


def frame_grid(videos, cols=None) -> np.ndarray:
    """Per frame, the n videos tiled in a grid: uint8 [T, rows*H, cols*W, C]."""
    v = to_uint8(videos)
    n, t, h, w, c = v.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    pad = np.zeros((rows * cols - n, t, h, w, c), np.uint8)
    v = np.concatenate([v, pad]).reshape(rows, cols, t, h, w, c)
    return v.transpose(2, 0, 3, 1, 4, 5).reshape(t, rows * h, cols * w, c)


def save_png_strip(videos, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(strip(videos)).save(path)
    return path


def save_gif(videos, path, fps=10):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames = [Image.fromarray(f) for f in frame_grid(videos)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def save_samples(videos, stem):
    """Write <stem>.png (strip) and <stem>.gif; returns both paths."""
    return save_png_strip(videos, stem + ".png"), save_gif(videos, stem + ".gif")
