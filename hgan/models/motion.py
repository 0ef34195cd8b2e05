"""Motion modules: noise -> per-frame motion latents y [n, T, D].

* `HamiltonianMotion` (hgan, hnn_gan): y0 = f(eps_m) (hgan) or eps_m (hnn_gan), then a
  leapfrog rollout of the learned Hamiltonian through the `hgan.kernels` integrator.
* `GRUMotion` (mocogan): a GRUCell. By default as in the MoCoGAN code the paper used
  (Kitagawa and Kakiuchi's): one noise vector is the first input, each output is the next
  input, and every frame's outputs are normalised over the batch (no affine; in eval mode by
  running statistics kept per frame); `gru_input="noise"` feeds fresh noise at every frame
  instead, as the MoCoGAN paper writes it.

`compile()` (what `train.py --compile` calls) compiles the noise-free part of each module in
place, state-dict keys unchanged: the configuration map f of `HamiltonianMotion`, the whole
recurrence of `GRUMotion`. The noise is always drawn eagerly: Dynamo cannot trace
`torch.randn(generator=...)` (a graph break), and drawing it outside keeps the random stream,
and with it exact resume, identical to an eager run.
"""
import torch
import torch.nn.functional as F
from torch import nn

from hgan.kernels import HamiltonianMLP
from hgan.models.gru_unroll import gru_unroll, reference_unroll
from hgan.model_kinds import model_kind


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """The official code's two-hidden-layer ReLU MLP with Xavier-uniform weights."""
    layers = [nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
              nn.Linear(hidden, n_out)]
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
    return nn.Sequential(*layers)


class HamiltonianMotion(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.k, self.noise_dim, self.dt = cfg.k, cfg.motion_dim, cfg.dt
        self.backend, self.scheme, self.precision = cfg.integrator, cfg.scheme, cfg.fused_precision
        # hnn_gan ablates the configuration-space map: the noise itself is (q0, p0).
        self.config_map = (_mlp(cfg.motion_dim, cfg.hidden, 2 * cfg.k)
                           if model_kind(cfg.model).config_map else None)
        self.hamiltonian = HamiltonianMLP(cfg.k, hidden=cfg.hidden, depth=cfg.depth,
                                          activation=cfg.activation,
                                          separable=cfg.hamiltonian == "separable")
        # Xavier weights, as the official code initialises its whole motion module: PyTorch's
        # default leaves dH/dx about 4x smaller at initialisation (biases keep the default).
        for m in self.hamiltonian.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        self._compiled_initial_state = None

    def compile(self, *args, **kwargs):
        """torch.compile `initial_state`, the configuration map f (hgan; hnn_gan has none).

        The method, not `config_map.compile()`: Dynamo skips frames that start inside torch.nn
        (a bare nn.Sequential compiled on its own finds no frame to compile under fullgraph).

        The integrator stays eager whatever the backend: hgan.kernels.leapfrog breaks any
        compiled graph around itself (why: docs/integrator.md, "torch.compile").
        """
        if self.config_map is not None:
            self._compiled_initial_state = torch.compile(self.initial_state, *args, **kwargs)

    def initial_state(self, eps):
        y0 = self.config_map(eps) if self.config_map is not None else eps
        return y0[:, :self.k], y0[:, self.k:]

    def forward(self, n, frames, *, dt=None, generator=None, device=None):
        dev = device if device is not None else next(self.parameters()).device
        eps = torch.randn(n, self.noise_dim, generator=generator, device=dev)
        initial_state = self._compiled_initial_state or self.initial_state
        q0, p0 = initial_state(eps)
        step = self.dt if dt is None else float(dt)
        # The rollout stays in fp32 under autocast: bf16 dH/dq steps would swamp dt/2 * dH/dq.
        with torch.autocast(dev.type, enabled=False):
            q, p, dhdq = self.hamiltonian.rollout(q0.float(), p0.float(), frames, dt=step,
                                                  backend=self.backend, scheme=self.scheme,
                                                  precision=self.precision)
        return {"y": torch.cat([q, p], dim=-1), "q": q, "p": p, "dHdq": dhdq}


class GRUMotion(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.noise_dim = cfg.motion_dim
        self.feedback = cfg.gru_input == "feedback"
        self.cell = nn.GRUCell(cfg.motion_dim, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.motion_dim)
        if self.feedback:
            # The reference code's initialisation as it runs: Xavier weights, biases 0 (its
            # initWeight means update-gate biases of 1, but the names it looks for,
            # "gru.bias_ih_l...", are nn.GRU's, never a GRUCell's).
            for name, w in self.named_parameters():
                (nn.init.xavier_uniform_ if "weight" in name else nn.init.zeros_)(w)
            # Running statistics per frame index (the last row also serves every later frame),
            # so that sampling in eval mode is one video's own, whatever the batch: normalised
            # with the batch's own statistics, two videos come out as mirror images. A row per
            # frame of the rollout; the trainer reserves more when --frames is longer.
            rows = max(cfg.rollout_frames, cfg.clip_frames, 1)
            self.register_buffer("frame_mean", torch.zeros(rows, cfg.motion_dim))
            self.register_buffer("frame_var", torch.ones(rows, cfg.motion_dim))
        self._compiled_unroll = None
        # How the rollout runs (--gru-backend): "auto" (hgan.models.gru_unroll: one node, its
        # loops in Triton kernels on CUDA), "cells" (the node's frame-by-frame loops) or
        # "autograd" (the modules frame by frame, the twin both are tested against). An
        # attribute, not a buffer: the same weights train and sample either way.
        self.gru_backend = cfg.gru_backend

    def reserve_frames(self, frames):
        """Running statistics for at least `frames` frames (the trainer rolls out
        max(rollout_frames, --frames)); new rows start as a fresh BatchNorm's."""
        if self.feedback and frames > self.frame_mean.shape[0]:
            self._resize_rows(frames)

    def _resize_rows(self, rows):
        for buf, fresh in ((self.frame_mean, 0.0), (self.frame_var, 1.0)):
            keep = buf[:rows].clone()
            buf.resize_(rows, buf.shape[1])   # in place: a DDP wrapper keeps its reference
            buf.fill_(fresh)[:len(keep)] = keep

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint has a row per frame its run rolled out, which its config alone (what
        # sampling and evaluation build from) may not say: take the checkpoint's count.
        saved = state_dict.get(prefix + "frame_mean")
        if self.feedback and saved is not None and saved.dim() == 2 \
                and saved.shape[0] != self.frame_mean.shape[0]:
            self._resize_rows(saved.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def batch_refusal(cfg, videos):
        """Why `videos` videos per training batch cannot train this module (None: they can):
        one video has no batch statistics to normalise by (hgan.models.config.batch_refusal)."""
        if cfg.gru_input == "feedback" and videos < 2:
            return (f"mocogan's GRU normalises its motion codes over the batch (--gru-input "
                    f"feedback), which needs >= 2 videos per batch, got {videos}")
        return None

    def compile(self, *args, **kwargs):
        """torch.compile the recurrence (`unroll`) in place; the noise stays eager."""
        self._compiled_unroll = torch.compile(self.unroll, *args, **kwargs)

    def _normalise(self, y, t):
        """Frame t's outputs over the batch in training (and its running statistics updated,
        momentum 0.1 as nn.BatchNorm), by those running statistics in eval mode."""
        row = min(t, self.frame_mean.shape[0] - 1)
        # In fp32 whatever autocast made y, as autocast runs nn.BatchNorm (the buffers are
        # fp32: mocogan --amp failed at its first step on a bf16 mean). torch's batch norm,
        # not its formula in elementwise ops: in a captured step each op is a kernel of a few
        # microseconds. The formula took about ten ops forward (statistics, running updates,
        # normalisation) per frame; _normalise_frames does all frames in one
        # (tests/test_models_shapes.py counts it): a mocogan training step went from 2,717
        # ATen ops to 1,969 (CPU, batch 16, 30 frames).
        return F.batch_norm(y.float(), self.frame_mean[row], self.frame_var[row],
                            training=self.training, momentum=0.1, eps=1e-5)

    def unroll(self, noise):
        """Frame latents [n, T, D] from noise: [T, n, D] fed frame by frame (gru_input "noise"),
        or [T, n, D] whose first frame is the one input (feedback; the rest only sets T). The
        raw outputs feed back; only what leaves is normalised. One autograd node for the whole
        rollout (hgan.models.gru_unroll: on CUDA two Triton kernels for all its frames)."""
        frames = noise.shape[0]
        inp = noise[0] if self.feedback else noise
        if self.gru_backend == "autograd":
            y = reference_unroll(inp, self.cell, self.out, frames, self.feedback)
        else:
            y = gru_unroll(inp, self.cell, self.out, frames, self.feedback, self.gru_backend)
        return self._normalise_frames(y) if self.feedback else y

    def _normalise_frames(self, y):
        """Each frame normalised on its own over the batch, as the reference code does: one
        batch norm over [n, T * D] (a channel per frame and dimension, the running statistics
        the buffers' first T rows) instead of one per frame, since nothing normalised feeds
        back. Frames past the buffers' rows share the last row, updated frame after frame:
        then frame by frame."""
        n, frames, dim = y.shape
        if frames > self.frame_mean.shape[0]:
            return torch.stack([self._normalise(y[:, t], t) for t in range(frames)], dim=1)
        flat = F.batch_norm(y.float().reshape(n, frames * dim),
                            self.frame_mean[:frames].view(-1), self.frame_var[:frames].view(-1),
                            training=self.training, momentum=0.1, eps=1e-5)
        return flat.view(n, frames, dim)

    def forward(self, n, frames, *, dt=None, generator=None, device=None):
        if dt is not None:
            raise ValueError("the mocogan GRU motion is discrete and has no time step: "
                             "dt applies to hgan and hnn_gan only")
        dev = device if device is not None else next(self.parameters()).device
        if self.feedback:
            if n < 2 and self.training:
                raise ValueError("the mocogan GRU normalises each frame's motion codes over "
                                 "the batch in training (as the MoCoGAN code the paper used "
                                 "does), which needs at least 2 videos; got 1 (eval mode "
                                 "draws any number)")
            eps = torch.randn(n, self.noise_dim, generator=generator, device=dev)
            noise = eps.expand(frames, n, self.noise_dim)
        else:
            noise = torch.randn(frames, n, self.noise_dim, generator=generator, device=dev)
        unroll = self._compiled_unroll or self.unroll
        return {"y": unroll(noise)}
