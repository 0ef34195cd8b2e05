"""Motion modules: noise -> per-frame motion latents y [n, T, D].

* `HamiltonianMotion` (hgan, hnn_gan): y0 = f(eps_m) (hgan) or eps_m (hnn_gan), then a
  leapfrog rollout of the learned Hamiltonian through the `hgan.kernels` integrator.
* `GRUMotion` (mocogan): a GRUCell fed fresh noise at every frame, as in MoCoGAN.

`compile()` (what `train.py --compile` calls) compiles the noise-free part of each module in
place, state-dict keys unchanged: the configuration map f of `HamiltonianMotion`, the whole
recurrence of `GRUMotion`. The noise is always drawn eagerly: Dynamo cannot trace
`torch.randn(generator=...)` (a graph break), and drawing it outside keeps the random stream,
and with it exact resume, identical to an eager run.
"""
import torch
from torch import nn

from hgan.kernels import HamiltonianMLP


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
        self.config_map = _mlp(cfg.motion_dim, cfg.hidden, 2 * cfg.k) if cfg.model == "hgan" else None
        self.hamiltonian = HamiltonianMLP(cfg.k, hidden=cfg.hidden, depth=cfg.depth,
                                          activation=cfg.activation,
                                          separable=cfg.hamiltonian == "separable")
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
        self.cell = nn.GRUCell(cfg.motion_dim, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.motion_dim)
        self._compiled_unroll = None

    def compile(self, *args, **kwargs):
        """torch.compile the recurrence (`unroll`) in place; the noise stays eager."""
        self._compiled_unroll = torch.compile(self.unroll, *args, **kwargs)

    def unroll(self, noise):
        """Frame latents [n, T, D] from per-frame noise [T, n, D]."""
        h = noise.new_zeros(noise.shape[1], self.cell.hidden_size)
        ys = []
        for x in noise.unbind(0):
            h = self.cell(x, h)
            ys.append(self.out(h))
        return torch.stack(ys, dim=1)

    def forward(self, n, frames, *, dt=None, generator=None, device=None):
        if dt is not None:
            raise ValueError("the mocogan GRU motion is discrete and has no time step: "
                             "dt applies to hgan and hnn_gan only")
        dev = device if device is not None else next(self.parameters()).device
        noise = torch.randn(frames, n, self.noise_dim, generator=generator, device=dev)
        unroll = self._compiled_unroll or self.unroll
        return {"y": unroll(noise)}
