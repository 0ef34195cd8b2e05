"""The video generator: content noise + a motion module + the image generator G_I."""
import torch
from torch import nn

from hgan.model_kinds import model_kind
from hgan.models.networks import ImageGenerator


class VideoGenerator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.motion_module = model_kind(cfg.model).motion_class()(cfg)
        self.image_generator = ImageGenerator(cfg.latent_dim, cfg.resolution, cfg.ngf, cfg.channels)

    @property
    def device(self):
        return next(self.parameters()).device

    def motion(self, n, frames, *, dt=None, generator=None):
        """Per-frame motion latents: {"y": [n, T, D]} (+ "q", "p" [n, T, k], "dHdq" [n, T-1, k])."""
        if int(n) < 1 or int(frames) < 1:
            raise ValueError(f"need n >= 1 and frames >= 1, got n={n}, frames={frames}")
        return self.motion_module(int(n), int(frames), dt=dt, generator=generator, device=self.device)

    def render(self, z_content, y):
        """Frames for latents (z_c [n, Dc], y [n, T, D]) -> videos [n, T, C, H, W] in [-1, 1]."""
        n, t, _ = y.shape
        w = torch.cat([z_content[:, None, :].expand(n, t, z_content.shape[-1]), y.to(z_content.dtype)], -1)
        # No memory-format step here: a [N, C, 1, 1] latent has the same strides in both formats,
        # and G_I's channels-last weights (build_models) make every frame channels-last.
        img = self.image_generator(w.reshape(n * t, -1))
        return img.reshape(n, t, *img.shape[1:])

    def content(self, n, *, generator=None):
        return torch.randn(int(n), self.config.content_dim, generator=generator, device=self.device)

    def forward(self, n, frames, *, dt=None, generator=None, window=None):
        """Training path: (videos [n, T, C, H, W], motion dict) with the graph kept.

        window: (starts [n] long, length) renders only frames starts..starts+length-1 of each
        video's rollout (videos [n, length, ...]; the motion dict keeps the whole rollout)."""
        with torch.profiler.record_function("motion"):
            z_c = self.content(n, generator=generator)
            mot = self.motion(n, frames, dt=dt, generator=generator)
            y = mot["y"]
            if window is not None:
                starts, length = window
                y = y[torch.arange(y.shape[0], device=y.device)[:, None],
                      starts[:, None] + torch.arange(length, device=y.device)]
        with torch.profiler.record_function("generator"):
            return self.render(z_c, y), mot

    @torch.no_grad()
    def sample(self, n, frames, *, dt=None, generator=None):
        """Videos float [n, T, C, H, W] in [-1, 1] (no graph)."""
        videos, _ = self.forward(n, frames, dt=dt, generator=generator)
        return videos.float()
