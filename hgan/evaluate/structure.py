"""What a trained motion module learned: motion manifold, active momenta, energy conservation.

- Motion manifold (the paper's Figure 7): 1024 motion samples, one step through the motion
  module, embedded by t-SNE.
- Active configuration coordinates: per latent momentum dimension, mean |dp_i/dt| over
  rollouts, with dp/dt = -dH/dq as the integrator used it. A dimension is active when it
  exceeds ``ACTIVE_FRACTION`` of the largest one (pendulum: the paper claims one) and an
  absolute floor: over the rollout it must move its momentum by ``ACTIVE_FLOOR`` of the
  momenta's spread (a relative test alone calls one dimension of a flat, dead H active).
- Energy conservation: the learned H along long rollouts forward (+dt) and backward (-dt)
  from the same initial states, as relative change (H_t - H_0)/|H_0|.

GRU motion (MoCoGAN) has no Hamiltonian; those analyses return None for it.
"""
import numpy as np
import torch

ACTIVE_FRACTION = 0.1
ACTIVE_FLOOR = 0.01


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
    """[n, D] one-step outputs of the motion module (the paper's Figure 7): for the HNN
    models the configuration q one leapfrog step after y0 = (q0, p0), as the official code
    embeds it ([n, k]); for the GRU its first output ([n, motion_dim])."""
    gen = _noise(generator, seed)
    if not has_hamiltonian(generator):
        y = generator.motion(n, 1, generator=gen)["y"]
        return y[:, 0].detach().double().cpu().numpy()
    with torch.enable_grad():  # the HNN step differentiates H
        q = generator.motion(n, 2, generator=gen)["q"]
    return q[:, 1].detach().double().cpu().numpy()


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
    p_spread = float(out["p"].detach().double().std())
    return {"mean_abs_dpdt": mean_abs.tolist(), "k": int(len(mean_abs)),
            **count_active(mean_abs, p_spread, (frames - 1) * _dt(generator))}


def active_text(am):
    """'1 of 3', or why no count was made."""
    if am.get("active_dims") is None:
        return f"not counted ({am.get('note', 'no count')})"
    return f"{am['active_dims']} of {am['k']}"


def count_active(mean_abs, p_spread, duration):
    """{"threshold", "floor", "active_dims"} for per-dimension mean |dp_i/dt| `mean_abs`: above
    ACTIVE_FRACTION of the largest and above ACTIVE_FLOOR * p_spread / duration (the rate that
    moves a momentum by that fraction of the momenta's spread over the rollout). Non-finite
    rates or spread: active_dims None, with a note (NaN would count as inactive)."""
    mean_abs = np.asarray(mean_abs, dtype=np.float64)
    if not (np.isfinite(mean_abs).all() and np.isfinite(p_spread)):
        return {"threshold": None, "floor": None, "active_dims": None,
                "note": "non-finite dp/dt or momenta"}
    floor = ACTIVE_FLOOR * p_spread / abs(duration)
    threshold = max(ACTIVE_FRACTION * float(mean_abs.max()), floor)
    return {"threshold": threshold, "floor": floor, "active_dims": int((mean_abs > threshold).sum())}


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
