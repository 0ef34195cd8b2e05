"""Reference leapfrog backend: plain autograd, the oracle every other backend is tested against.

Each half-step takes dH/dq or dH/dp with torch.autograd.grad(create_graph=True), exactly as
the official HGAN code does, so gradients of the rollout (and gradients of those) come from
autograd's double backward. It is also the baseline of every benchmark.

One step of size dt, in the form every backend shares (see common.py, SCHEMES):

    p_half = p_t    - dt/2 * dH/dq(q_t,   p_t)
    q_t+1  = q_t    + dt   * dH/dp(q_mid, p_half)
    p_t+1  = p_half - dt/2 * dH/dq(q_t+1, p_pred)

scheme="order2":   q_mid = q_t + dt/2 * dH/dp(q_t, p_t),  p_pred = p_t - dt * dH/dq(q_t, p_t)
scheme="official": q_mid = q_t,                         p_pred = p_half
For a separable H = K(p) + V(q) both are Stormer-Verlet (dH/dp ignores q, dH/dq ignores p).
"""
import torch

from .common import act_value, forward_ad_tangents, functorch_active, scheme_points


def mlp_energy(x, weights, biases, activation):
    """H(x) of the MLP for rows x [B, 2k] -> [B]."""
    h = x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = act_value(torch.nn.functional.linear(h, w, b), activation)
    return torch.nn.functional.linear(h, weights[-1], biases[-1]).squeeze(-1)


def _grad_h(q, p, weights, biases, activation, create_graph):
    """(dH/dq, dH/dp) at rows (q, p), each [B, k]."""
    x = torch.cat([q, p], dim=1)
    if not x.requires_grad:
        # Nothing upstream needs a gradient, but autograd.grad needs a graph to differentiate.
        x = x.detach().requires_grad_(True)
    energy = mlp_energy(x, weights, biases, activation)
    (g,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
    k = q.shape[1]
    return g[:, :k], g[:, k:]


def leapfrog_reference(q0, p0, weights, biases, dt, frames, activation, scheme="order2"):
    """Autograd rollout: q, p [B, frames, k] and dHdq [B, frames-1, k]."""
    if functorch_active() or forward_ad_tangents(q0, p0, *weights, *biases):
        # Under torch.func (grad, vjp, jacrev, jacfwd, vmap) autograd.grad on a detached
        # leaf is refused; torch.func.grad of H composes with the caller's transforms. Dual
        # tensors of torch.autograd.forward_ad need it too: below, a state or weight that
        # needs no gradient is differentiated at a detached leaf and the results are
        # detached, which drops their tangents without an error.
        return _rollout_explicit(_func_grad_h, q0, p0, weights, biases, dt, frames,
                                 activation, scheme)
    if torch.is_inference_mode_enabled() and frames > 1:
        # enable_grad cannot undo inference mode, and autograd.grad would fail with "element 0
        # of tensors does not require grad": say which backend needs what instead.
        raise RuntimeError("backend='reference' differentiates H with autograd, which "
                           "torch.inference_mode() disables; use torch.no_grad() or "
                           "backend='analytic'")
    # A graph only where a gradient can flow: with inputs that need none the results need
    # none either (they came back requiring grad, and kept every step's graph alive).
    create_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q0, p0, *weights, *biases))
    qs, ps, dhdqs = [q0], [p0], []
    q, p = q0, p0
    with torch.enable_grad():
        for _ in range(frames - 1):
            dq, dp = _grad_h(q, p, weights, biases, activation, create_graph)
            p_half, q_mid, p_pred = scheme_points(q, p, dq, dp, dt, scheme)
            _, dp = _grad_h(q_mid, p_half, weights, biases, activation, create_graph)
            q = q + dt * dp
            dq_next, _ = _grad_h(q, p_pred, weights, biases, activation, create_graph)
            p = p_half - 0.5 * dt * dq_next
            qs.append(q)
            ps.append(p)
            dhdqs.append(dq)
    q_traj, p_traj = torch.stack(qs, 1), torch.stack(ps, 1)  # [B, T, k]
    if dhdqs:
        dhdq = torch.stack(dhdqs, 1)  # [B, T-1, k]
    else:
        dhdq = q0.new_zeros(q0.shape[0], 0, q0.shape[1])
    if not create_graph:
        q_traj, p_traj, dhdq = q_traj.detach(), p_traj.detach(), dhdq.detach()
    return q_traj, p_traj, dhdq


def _func_grad_h(x, weights, biases, activation):
    """dH/dx by torch.func.grad: the gradient becomes an explicit graph of ordinary ops."""
    return torch.func.grad(lambda y: mlp_energy(y, weights, biases, activation).sum())(x)


_compiled_grad_h = {}


def leapfrog_reference_compiled(q0, p0, weights, biases, dt, frames, activation,
                                scheme="order2"):
    """The reference rollout with each half-step gradient under torch.compile (a baseline for
    benchmarks, not a dispatcher backend).

    Compiling the create_graph reference itself does not work: a compiled half-step raises
    "torch.compile with aot_autograd does not currently support double backward" in the
    backward, and compiling the whole rollout fails while tracing autograd.grad. Written with
    torch.func.grad, the half-step gradient is an ordinary forward graph to aot_autograd, so
    training differentiates it once, which compile supports.
    """
    if activation not in _compiled_grad_h:
        _compiled_grad_h[activation] = torch.compile(_func_grad_h)
    return _rollout_explicit(_compiled_grad_h[activation], q0, p0, weights, biases, dt,
                             frames, activation, scheme)


def _rollout_explicit(grad_h, q0, p0, weights, biases, dt, frames, activation, scheme):
    """The rollout with dH/dx = grad_h(x, weights, biases, activation) as ordinary ops."""
    k = q0.shape[1]
    qs, ps, dhdqs = [q0], [p0], []
    q, p = q0, p0
    for _ in range(frames - 1):
        g = grad_h(torch.cat([q, p], 1), weights, biases, activation)
        dq = g[:, :k]
        p_half, q_mid, p_pred = scheme_points(q, p, dq, g[:, k:], dt, scheme)
        q = q + dt * grad_h(torch.cat([q_mid, p_half], 1), weights, biases, activation)[:, k:]
        p = p_half - 0.5 * dt * grad_h(torch.cat([q, p_pred], 1), weights, biases,
                                       activation)[:, :k]
        qs.append(q)
        ps.append(p)
        dhdqs.append(dq)
    dhdq = (torch.stack(dhdqs, 1) if dhdqs
            else q0.new_zeros(q0.shape[0], 0, q0.shape[1]))
    return torch.stack(qs, 1), torch.stack(ps, 1), dhdq
