"""What a trained motion module learned: motion manifold, active momenta, energy conservation.

- Motion manifold (the paper's Figure 7): 1024 motion samples, one step through the motion
  module, embedded by t-SNE.
- Active configuration coordinates: per latent momentum dimension, mean |dp_i/dt| over
  rollouts, with dp/dt = -dH/dq as the integrator used it. A dimension is active when it
  exceeds ``ACTIVE_FRACTION`` of the largest one (pendulum: the paper claims one).
- Energy conservation: the learned H along long rollouts forward (+dt) and backward (-dt)
  from the same initial states, as relative change (H_t - H_0)/|H_0|.

GRU motion (MoCoGAN) has no Hamiltonian; those analyses return None for it.
"""
import numpy as np
import torch

ACTIVE_FRACTION = 0.1


def _dt(generator, dt=None):
    if dt is not None:
        return float(dt)
    cfg = getattr(generator, "config", None)
    return float(getattr(cfg, "dt", 0.05))


def _noise(generator, seed):
    """A seeded generator on the model's device (torch.randn refuses a CPU one for CUDA)."""
    return torch.Generator(device=generator.device).manual_seed(seed)


def has_hamiltonian(generator):
    return getattr(getattr(generator, "motion_module", None), "hamiltonian", None) is not None


def motion_points(generator, n=1024, seed=0):
    """[n, D] motion latents after one step (frames=2, the second latent)."""
    gen = _noise(generator, seed)
    with torch.enable_grad():  # the HNN step differentiates H
        y = generator.motion(n, 2, generator=gen)["y"]
    return y[:, 1].detach().double().cpu().numpy()


def active_momenta(generator, n=256, frames=16, seed=0):
    """Mean |dp_i/dt| per latent momentum dimension, and which dimensions are active."""
    if not has_hamiltonian(generator):
        return None
    gen = _noise(generator, seed)
    with torch.enable_grad():
        out = generator.motion(n, frames, generator=gen)
    if "dHdq" in out:
        dpdt = -out["dHdq"].detach()
    else:
        dpdt = torch.diff(out["p"].detach(), dim=1) / _dt(generator)
    mean_abs = dpdt.abs().double().mean(dim=(0, 1)).cpu().numpy()
    threshold = ACTIVE_FRACTION * float(mean_abs.max())
    return {"mean_abs_dpdt": mean_abs.tolist(), "threshold": threshold,
            "active_dims": int((mean_abs > threshold).sum()), "k": int(len(mean_abs))}


def _learned_energy(generator, n, steps, dt, seed):
    gen = _noise(generator, seed)
    with torch.enable_grad():
        out = generator.motion(n, steps + 1, dt=dt, generator=gen)
        q, p = out["q"].detach(), out["p"].detach()
        h = generator.motion_module.hamiltonian(q.flatten(0, 1), p.flatten(0, 1))
    h = h.detach().double().view(n, steps + 1).cpu().numpy()
    return (h - h[:, :1]) / np.maximum(np.abs(h[:, :1]), 1e-12)


def energy_rollouts(generator, n=64, steps=512, seed=0, dt=None):
    """Relative learned-energy change along rollouts of `steps` leapfrog steps, both ways.

    The same seed gives the same initial (q0, p0), so the two curves start from one state.
    """
    if not has_hamiltonian(generator):
        return None
    dt = _dt(generator, dt)
    fwd = _learned_energy(generator, n, steps, dt, seed)
    bwd = _learned_energy(generator, n, steps, -dt, seed)
    return {"steps": np.arange(steps + 1), "forward": fwd, "backward": bwd,
            "summary": {"dt": dt, "steps": steps, "n": n,
                        "forward_max_abs_rel_drift": float(np.median(np.abs(fwd).max(axis=1))),
                        "backward_max_abs_rel_drift": float(np.median(np.abs(bwd).max(axis=1))),
                        "forward_final_rel_drift": float(np.median(fwd[:, -1])),
                        "backward_final_rel_drift": float(np.median(bwd[:, -1]))}}
