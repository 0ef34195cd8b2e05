"""Helpers that compare a backend against the float64 reference (used by tests and benches).

The oracle is the reference backend run in float64 on copies of the same inputs; the loss
is a fixed random linear functional of (q, p, dHdq), so its gradient checks every cotangent
path (trajectory, momenta and the L_cyc gradients) at once.
"""
import torch

from .dispatch import leapfrog


def random_mlp(k, widths, dtype=torch.float32, device="cpu", generator=None, scale=1.0):
    """nn.Linear-layout weights and biases of an MLP [2k] -> widths -> [1], fan-in scaled."""
    dims = [2 * k] + list(widths) + [1]
    weights, biases = [], []
    for a, b in zip(dims[:-1], dims[1:]):
        w = torch.randn(b, a, generator=generator, dtype=torch.float64)
        weights.append(scale * w / a ** 0.5)
        biases.append(0.1 * torch.randn(b, generator=generator, dtype=torch.float64))
    return ([w.to(dtype=dtype, device=device) for w in weights],
            [b.to(dtype=dtype, device=device) for b in biases])


def rel_err(x, ref):
    """Norm-wise relative error ||x - ref|| / ||ref|| in float64 (absolute if ref is zero)."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    den = ref.norm()
    return float((x - ref).norm() / den) if den > 0 else float((x - ref).norm())


def rollout_and_grads(q0, p0, weights, biases, dt, frames, activation, backend, cotangents,
                      scheme="order2", precision="ieee"):
    """(q, p, dHdq) and the gradients of sum(c * out) w.r.t. q0, p0, weights, biases."""
    leaves = [t.detach().clone().requires_grad_(True) for t in [q0, p0, *weights, *biases]]
    n = len(weights)
    q0, p0, ws, bs = leaves[0], leaves[1], leaves[2:2 + n], leaves[2 + n:]
    outs = leapfrog(q0, p0, ws, bs, dt=dt, frames=frames, activation=activation, backend=backend,
                    scheme=scheme, precision=precision)
    loss = sum((o * c.to(o)).sum() for o, c in zip(outs, cotangents))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
    return [o.detach() for o in outs], grads


def compare_to_reference(q0, p0, weights, biases, dt, frames, activation, backend, seed=0,
                         scheme="order2", precision="ieee"):
    """Relative errors of ``backend`` vs the float64 reference: a dict name -> error."""
    gen = torch.Generator().manual_seed(seed)
    B, k = q0.shape
    cot = [torch.randn(B, frames, k, generator=gen, dtype=torch.float64),
           torch.randn(B, frames, k, generator=gen, dtype=torch.float64),
           torch.randn(B, frames - 1, k, generator=gen, dtype=torch.float64)]
    outs, grads = rollout_and_grads(q0, p0, weights, biases, dt, frames, activation, backend,
                                    [c.to(q0.device) for c in cot], scheme, precision)
    d64 = [t.detach().double().cpu() for t in [q0, p0, *weights, *biases]]
    n = len(weights)
    ref_outs, ref_grads = rollout_and_grads(d64[0], d64[1], d64[2:2 + n], d64[2 + n:], dt,
                                            frames, activation, "reference", cot, scheme)
    names = ["q", "p", "dHdq"]
    errs = {nm: rel_err(o, r) for nm, o, r in zip(names, outs, ref_outs)}
    gnames = ["d_q0", "d_p0"] + [f"d_W{l}" for l in range(n)] + [f"d_b{l}" for l in range(n)]
    errs.update({nm: rel_err(g, r) for nm, g, r in zip(gnames, grads, ref_grads)})
    return errs
