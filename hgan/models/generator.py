"""The video generator: content noise + a motion module + the image generator G_I."""
import torch
from torch import nn

from hgan.model_kinds import hamiltonian_models, model_kind
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
        if dt is not None and not model_kind(self.config.model).hamiltonian:
            # Said here from the table, not left to each module: a new kind's module that takes
            # dt=None and ignores it made `hgan.sample --dt -0.05` write forward-running videos
            # as if they ran backwards.
            raise ValueError(f"model {self.config.model!r} has no time step (its ModelKind is "
                             f"not hamiltonian): dt applies to "
                             f"{', '.join(hamiltonian_models())} only")
        out = self.motion_module(int(n), int(frames), dt=dt, generator=generator, device=self.device)
        self._check_motion(out, int(n), int(frames))
        return out

    def _check_motion(self, out, n, frames):
        """One error naming the module and the contract when `out` breaks it: a new kind's
        slip (a bare tensor, another key, [T, n, D], D + 1 wide, a frame short, no "dHdq")
        otherwise surfaced as a TypeError, KeyError, IndexError or reshape error inside
        G_I's input, the window slicing or the cyclic loss. Shapes only: no sync, no copy."""
        cfg = self.config
        kind = model_kind(cfg.model)
        width = cfg.latent_dim - cfg.content_dim
        want = {"y": (n, frames, width)}
        if kind.hamiltonian:
            want.update(q=(n, frames, cfg.k), p=(n, frames, cfg.k), dHdq=(n, frames - 1, cfg.k))
        if not isinstance(out, dict):
            problem = f"a {type(out).__name__}, not a dict"
        else:
            problem = None
            for key, shape in want.items():
                value = out.get(key)
                if value is None:
                    problem = f"a dict without {key!r} (its keys: {', '.join(map(repr, out))})"
                elif not isinstance(value, torch.Tensor):
                    problem = f"{key!r} as a {type(value).__name__}, not a tensor"
                elif tuple(value.shape) != shape:
                    problem = f"{key!r} of shape {tuple(value.shape)}, expected {shape}"
                if problem:
                    break
        if problem:
            spec = ", ".join(f"{k!r} {list(v)}" for k, v in want.items())
            raise ValueError(
                f"model {cfg.model!r}: its motion module {type(self.motion_module).__name__} "
                f"returned {problem} for n={n}, frames={frames}; it must return a dict with "
                f"{spec} (docs/training.md, 'Adding an option or a model': y is "
                + ("2*k wide and a Hamiltonian kind adds q, p and dHdq)" if kind.hamiltonian
                   else "--motion-dim wide)"))

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
