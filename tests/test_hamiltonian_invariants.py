"""Physics invariants of the leapfrog rollout that need no reference backend.

Separable H = K(p) + V(q): the step is Stormer-Verlet under either scheme, so it is
time-reversible and its energy error stays bounded (no drift) and scales as dt^2. General
H(q, p): the default scheme "order2" converges at second order and the official HGAN step at
first order, both checked against a tight adaptive ODE solution (scipy DOP853) with a
p-dependent, non-unit-mass H (a random MLP on [q; p]), whose gradient the oracle takes by
plain autograd, not by the code under test.
"""
import os

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from hgan.kernels import HamiltonianMLP, cyclic_loss
from hgan.kernels.leapfrog.reference import mlp_energy

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _separable(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return HamiltonianMLP(3, hidden=32, separable=True).to(dtype)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_separable_rollout_is_time_reversible(backend):
    m = _separable(0)
    q0, p0 = torch.randn(8, 3), torch.randn(8, 3)
    with torch.no_grad():
        q, p, _ = m.rollout(q0, p0, frames=201, dt=0.05, backend=backend)
        qb, pb, _ = m.rollout(q[:, -1], p[:, -1], frames=201, dt=-0.05, backend=backend)
    # 200 steps forward then 200 back: exact in real arithmetic, float32 rounding only.
    assert (qb[:, -1] - q0).abs().max() < 1e-5 and (pb[:, -1] - p0).abs().max() < 1e-5
    # And the backward run retraces the forward trajectory frame by frame.
    assert (qb.flip(1) - q).abs().max() < 1e-5


def _energy_error(m, dt, steps, q0, p0):
    with torch.no_grad():
        q, p, _ = m.rollout(q0, p0, frames=steps + 1, dt=dt, backend="analytic")
        h = m(q.reshape(-1, 3), p.reshape(-1, 3)).reshape(q.shape[0], -1)
    return (h - h[:, :1]).abs()                                      # [B, steps + 1]


def test_separable_energy_error_is_bounded_and_second_order():
    m = _separable(1, D)
    with torch.no_grad():  # stiffer K and V: many oscillations within the 512 steps
        m.kinetic[-1].weight *= 20
        m.potential[-1].weight *= 20
    gen = torch.Generator().manual_seed(1)
    q0, p0 = torch.randn(16, 3, dtype=D, generator=gen), torch.randn(16, 3, dtype=D, generator=gen)
    err = _energy_error(m, 0.05, 512, q0, p0)
    scale = m(q0, p0).abs().mean()
    assert err.max() < 1e-4 * scale
    # No secular drift: the second half of the run stays within the first half's band (a
    # drifting error would grow with time; measured ratio <= 1.9 for this seed).
    first, second = err[:, 1:257].amax(1), err[:, 257:].amax(1)
    assert (second <= 2.5 * first).all()
    # Halving dt divides the bounded error by ~4 (same physical time span).
    err_half = _energy_error(m, 0.025, 1024, q0, p0)
    ratio = err.max(1).values / err_half.max(1).values
    assert ((ratio > 3.9) & (ratio < 4.1)).all(), ratio


def _convergence_orders(separable, scheme="order2", backend="analytic"):
    torch.manual_seed(2)
    m = HamiltonianMLP(2, hidden=16, separable=separable).double()
    w, b = (list(x.detach() for x in xs) for xs in m.weights_and_biases())
    q0 = torch.tensor([[0.3, -0.2]], dtype=D)
    p0 = torch.tensor([[0.5, 0.1]], dtype=D)
    x0 = torch.cat([q0, p0], 1)
    # The oracle's H is p-dependent beyond p^2/2: its momentum Hessian is far from identity,
    # so an integrator that used p as the velocity would not converge at all.
    hess = torch.autograd.functional.hessian(
        lambda x: mlp_energy(x[None], w, b, "softplus").sum(), x0[0])
    assert (hess[2:, 2:] - torch.eye(2, dtype=D)).abs().max() > 0.5

    def rhs(_, y):
        x = torch.tensor(y, dtype=D)[None].requires_grad_(True)
        (g,) = torch.autograd.grad(mlp_energy(x, w, b, "softplus").sum(), x)
        return np.concatenate([g[0, 2:].numpy(), -g[0, :2].numpy()])   # dq = H_p, dp = -H_q

    t_end = 2.0
    exact = solve_ivp(rhs, (0, t_end), x0[0].numpy(), method="DOP853", rtol=1e-12,
                      atol=1e-12).y[:, -1]
    errs = []
    for n in (20, 40, 80):
        with torch.no_grad():
            q, p, _ = m.rollout(q0, p0, frames=n + 1, dt=t_end / n, backend=backend,
                                scheme=scheme)
        errs.append(np.abs(np.concatenate([q[0, -1].numpy(), p[0, -1].numpy()]) - exact).max())
    return np.log2(np.array(errs[:-1]) / np.array(errs[1:])), errs


@pytest.mark.parametrize("scheme", ["order2", "official"])
def test_separable_form_converges_at_second_order(scheme):
    orders, errs = _convergence_orders(separable=True, scheme=scheme)
    assert ((orders > 1.9) & (orders < 2.1)).all(), (errs, orders)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_general_form_converges_at_second_order(backend):
    # The default scheme: halving dt divides the error by ~4 for a general H(q, p).
    orders, errs = _convergence_orders(separable=False, scheme="order2", backend=backend)
    assert ((orders > 1.9) & (orders < 2.1)).all(), (errs, orders)


def test_official_step_is_first_order_for_a_general_h():
    # The official HGAN step (integrator.md's three lines) is only FIRST order for a
    # non-separable H (measured 1.000). Taylor-expanding one step,
    #   step:  q' = q + dt H_p - dt^2/2 H_pp H_q + O(dt^3)
    #   flow:  q' = q + dt H_p + dt^2/2 (H_pq H_p - H_pp H_q) + O(dt^3)
    # so the local error carries dt^2/2 H_pq H_p, which vanishes only when H_pq = 0. This pins
    # why "order2" is the default; a change to either scheme must update this test knowingly.
    orders, errs = _convergence_orders(separable=False, scheme="official")
    assert ((orders > 0.9) & (orders < 1.1)).all(), (errs, orders)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_schemes_agree_exactly_for_a_separable_h(backend):
    # q_mid and p_pred only move the points along directions the separable H ignores (its
    # block-diagonal weights multiply them by exact zeros), so the two steps are the same.
    m = _separable(5, dtype=D)
    q0, p0 = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    with torch.no_grad():
        a = m.rollout(q0, p0, frames=30, backend=backend, scheme="order2")
        b = m.rollout(q0, p0, frames=30, backend=backend, scheme="official")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)
    # ... while for a general H they are different integrators.
    torch.manual_seed(5)
    g = HamiltonianMLP(3, hidden=32).double()
    with torch.no_grad():
        qa, _, _ = g.rollout(q0, p0, frames=30, backend=backend, scheme="order2")
        qb, _, _ = g.rollout(q0, p0, frames=30, backend=backend, scheme="official")
    assert (qa - qb).abs().max() > 1e-7   # measured ~6e-6 here, far above the 1e-13 above


def _fused_runnable():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


FUSED_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend, layout", [("analytic", None), ("fused", "latency"),
                                             ("fused", "streamed")])
def test_batch_split_invariance(backend, layout, monkeypatch):
    # A row's rollout does not depend on the rows beside it: in the latency layout a program
    # walks several rows (4 programs here under the interpreter), in the tile layouts the
    # 4/17 split crosses the 16-row blocks.
    if backend == "fused" and not _fused_runnable():
        pytest.skip("fused needs triton and CUDA or the Triton interpreter")
    dev = FUSED_DEVICE if backend == "fused" else "cpu"
    ran = []
    if backend == "fused":
        from hgan.kernels.leapfrog import fused
        if layout != "latency":
            monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
        real = fused._kernels
        monkeypatch.setattr(fused, "_kernels", lambda lay: (ran.append(lay), real(lay))[1])
    m = _separable(3).to(dev)
    q0, p0 = torch.randn(21, 3, device=dev), torch.randn(21, 3, device=dev)
    with torch.no_grad():
        whole = m.rollout(q0, p0, frames=5, backend=backend)
        parts = [m.rollout(q0[s], p0[s], frames=5, backend=backend)
                 for s in (slice(0, 4), slice(4, 21))]
    for i, x in enumerate(whole):
        torch.testing.assert_close(x, torch.cat([pt[i] for pt in parts]), rtol=1e-6, atol=1e-6)
    if backend == "fused":
        assert set(ran) == ({"latency"} if layout == "latency" else {16}), ran


def _train_losses(backend, device="cpu", steps=3):
    torch.manual_seed(4)
    m = HamiltonianMLP(2, hidden=16).to(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    t = torch.arange(8) * 0.05
    # Target: unit harmonic oscillator q = cos t, p = -sin t, two phases.
    phase = torch.tensor([0.0, 1.0])[:, None]
    target_q = torch.stack([torch.cos(t + phase), torch.sin(t + phase)], -1).to(device)
    losses = []
    for _ in range(steps):
        q, p, d = m.rollout(target_q[:, 0], torch.zeros(2, 2, device=device), frames=8,
                            backend=backend)
        loss = (q - target_q).pow(2).mean() + cyclic_loss(d)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def test_training_losses_agree_across_backends():
    # A tiny model trained from one seed: the fast backends must give the reference's losses.
    ref = _train_losses("reference")
    assert ref[-1] < ref[0]                     # the loop does learn something
    np.testing.assert_allclose(_train_losses("analytic"), ref, rtol=1e-4)
    if _fused_runnable():
        np.testing.assert_allclose(_train_losses("fused", FUSED_DEVICE), ref, rtol=1e-4)


def _official_by_hand(q, p, weights, biases, dt, steps):
    """integrator.md's three lines, each gradient by autograd of an H written out here."""
    def grad_h(q, p):
        x = torch.cat([q, p], 1).requires_grad_(True)
        h = torch.nn.functional.softplus(x @ weights[0].T + biases[0])
        h = torch.nn.functional.softplus(h @ weights[1].T + biases[1])
        (g,) = torch.autograd.grad((h @ weights[2].T + biases[2]).sum(), x)
        return g[:, :q.shape[1]], g[:, q.shape[1]:]
    qs = [q]
    for _ in range(steps):
        p_half = p - dt / 2 * grad_h(q, p)[0]
        q_next = q + dt * grad_h(q, p_half)[1]
        p = p_half - dt / 2 * grad_h(q_next, p_half)[0]
        q = q_next
        qs.append(q)
    return torch.stack(qs, 1)


@pytest.mark.parametrize("backend", ["reference", "analytic", "fused"])
def test_official_scheme_is_the_specs_three_lines(backend):
    # The first-order test above cannot tell one first-order step from another: here each
    # backend's official step is checked against the spec's own lines, with an H strong
    # enough that the order2 step lands far away (so the check can fail).
    from hgan.kernels import leapfrog
    from hgan.kernels.leapfrog.check import random_mlp
    from hgan.kernels.leapfrog.dispatch import fused_unsupported_reason
    gen = torch.Generator().manual_seed(5)
    w, b = random_mlp(3, (16, 24), dtype=D, generator=gen, scale=3.0)
    q0, p0 = torch.randn(4, 3, generator=gen, dtype=D), torch.randn(4, 3, generator=gen, dtype=D)
    want = _official_by_hand(q0, p0, w, b, 0.1, 3)
    moved = want - want[:, :1]

    def run(scheme, dtype=D, device="cpu"):
        args = [t.to(dtype=dtype, device=device) for t in (q0, p0)]
        ws, bs = [[t.to(dtype=dtype, device=device) for t in ts] for ts in (w, b)]
        with torch.no_grad():
            q, _, _ = leapfrog(*args, ws, bs, dt=0.1, frames=4, backend=backend, scheme=scheme)
        q = q.to(D).cpu()
        return float((q - q[:, :1] - moved).norm() / moved.norm())

    if backend == "fused":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if fused_unsupported_reason(q0.float().to(device), [t.float().to(device) for t in w],
                                    "softplus"):
            pytest.skip("no fused kernels here (neither CUDA nor the Triton interpreter)")
        assert run("official", torch.float32, device) <= 1e-4
        assert run("order2", torch.float32, device) > 1e-2
    else:
        assert run("official") <= 1e-10
        assert run("order2") > 1e-2
