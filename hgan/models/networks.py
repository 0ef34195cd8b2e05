"""DCGAN-style image generator G_I, image discriminator D_I and 3-D video discriminator D_V.

All discriminators return logits (no sigmoid): the losses use BCE-with-logits, which is
safe under autocast where sigmoid + BCELoss is not.
"""
from itertools import islice

import torch
from torch import nn

from hgan.models.config import resolution_plan


def fp32_logits(layer, h):
    """A discriminator's last layer in fp32 under autocast (a [N, features] -> [N, 1]
    product: no cost). Logits rounded to bf16's 8 bits make BCE's gradient, sigmoid(l) - y,
    noisy where it nearly cancels over real and fake: D_V's head bias gradient came out up to
    2x the distance between two batches' gradients, against 0.04x in fp32 (the other
    parameters' under 0.2x either way; bench/bf16_gradients.py, docs/training.md)."""
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.to(layer.weight.dtype))


class ImageGenerator(nn.Module):
    """G_I: latent [N, nz] -> image [N, C, H, W] in [-1, 1]."""

    def __init__(self, nz: int, resolution: int = 32, ngf: int = 32, channels: int = 3):
        super().__init__()
        base, n = resolution_plan(resolution)
        width = ngf * 2 ** (n - 1)
        # nz x 1 x 1 -> width x base x base; each later layer doubles H, W and halves width.
        layers = [nn.ConvTranspose2d(nz, width, base, 1, 0, bias=False),
                  nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z):
        return self.main(z.reshape(z.shape[0], self.nz, 1, 1))


class ImageDiscriminator(nn.Module):
    """D_I: image [N, C, H, W] -> logit [N]."""

    def __init__(self, resolution: int = 32, ndf: int = 32, channels: int = 3):
        super().__init__()
        base, n = resolution_plan(resolution)
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for _ in range(n - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, base, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        for layer in islice(self.main, len(self.main) - 1):
            x = layer(x)
        return fp32_logits(self.main[-1], x).reshape(-1)


def _temporal_step(t: int):
    """(kernel, stride, padding) along time: halve while >= 4 frames remain, else keep."""
    return (4, 2, 1) if t >= 4 else (3, 1, 1)


class VideoDiscriminator(nn.Module):
    """D_V: clip [N, T, C, H, W] (T = clip_frames) -> logit [N].

    Space is halved per layer exactly as in D_I; time is halved only while it has at least
    4 frames (16 -> 8 -> 4 -> 2 at 32 px), so short training clips also work.
    """

    def __init__(self, resolution: int = 32, ndf: int = 32, channels: int = 3, frames: int = 16):
        super().__init__()
        base, n = resolution_plan(resolution)
        layers, width, c_in, t = [], ndf, channels, frames
        for i in range(n):
            kt, st, pt = _temporal_step(t)
            layers.append(nn.Conv3d(c_in, width, (kt, 4, 4), (st, 2, 2), (pt, 1, 1), bias=False))
            if i > 0:
                layers.append(nn.BatchNorm3d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            t = (t + 2 * pt - kt) // st + 1
            c_in, width = width, width * 2
        self.main = nn.Sequential(*layers)
        self.frames = frames
        self.head = nn.Linear(c_in * t * base * base, 1)

    def forward(self, clip):
        if clip.dim() != 5 or clip.shape[1] != self.frames:
            raise ValueError(f"video discriminator expects [N, {self.frames}, C, H, W] clips, "
                             f"got {tuple(clip.shape)}")
        h = self.main(clip.transpose(1, 2))  # [N, C, T, H, W] for Conv3d
        return fp32_logits(self.head, h.flatten(1)).reshape(-1)
