"""Reference and analytic leapfrog backends: the hand-written VJP against autograd in float64,
gradcheck of the whole analytic rollout, and float32 backends against the float64 reference.

Tolerances: float64 vs float64 (same math, different operation order) 1e-10; float32 vs
float64 1e-4 relative (the spec's bound; float32 rounding over <= 64 steps stays ~1e-6).
"""
import pytest
import torch

from hgan.kernels import HamiltonianMLP, leapfrog
from hgan.kernels.leapfrog.analytic import mlp_input_grad, mlp_input_grad_vjp
from hgan.kernels.leapfrog.check import compare_to_reference, random_mlp
from hgan.kernels.leapfrog.reference import mlp_energy

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("activation", ["softplus", "tanh", "relu"])
@pytest.mark.parametrize("widths", [(7,), (16, 9), (5, 6, 4)])
def test_input_grad_and_vjp_match_autograd_double_backward(activation, widths):
    gen = torch.Generator().manual_seed(len(widths))
    w, b = random_mlp(3, widths, dtype=D, generator=gen)
    x = torch.randn(11, 6, dtype=D, generator=gen)
    v = torch.randn(11, 6, dtype=D, generator=gen)
    leaves = [t.clone().requires_grad_(True) for t in [x, *w, *b]]
    n = len(w)
    energy = mlp_energy(leaves[0], leaves[1:1 + n], leaves[1 + n:], activation)
    (f_auto,) = torch.autograd.grad(energy.sum(), leaves[0], create_graph=True)
    vjp_auto = torch.autograd.grad((f_auto * v).sum(), leaves, allow_unused=True)
    vjp_auto = [torch.zeros_like(l) if g is None else g for g, l in zip(vjp_auto, leaves)]
    f = mlp_input_grad(x, w, b, activation)
    dx, dws, dbs = mlp_input_grad_vjp(x, v, w, b, activation)
    torch.testing.assert_close(f, f_auto, rtol=1e-10, atol=1e-12)
    for got, want in zip([dx, *dws, *dbs], vjp_auto):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation,separable,dt,scheme", [
    ("softplus", False, 0.1, "order2"), ("tanh", False, -0.07, "official"),
    ("tanh", True, -0.07, "order2")])
def test_analytic_gradcheck_float64(activation, separable, dt, scheme):
    torch.manual_seed(0)
    m = HamiltonianMLP(2, hidden=6, activation=activation, separable=separable).double()
    w, b = m.weights_and_biases()
    leaves = [t.detach().clone().requires_grad_(True)
              for t in [torch.randn(3, 2, dtype=D), torch.randn(3, 2, dtype=D), *w, *b]]

    def fn(q0, p0, *params):
        return leapfrog(q0, p0, params[:3], params[3:], dt=dt, frames=4,
                        activation=activation, backend="analytic", scheme=scheme)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


# (B, k, width, depth, activation, separable, frames, dt, scheme), float32 vs float64
# reference. The general-form cases carry both schemes (they differ only when H_pq != 0).
CASES = [
    (7, 1, 16, 2, "softplus", False, 2, 0.05, "order2"),
    (13, 3, 32, 2, "tanh", True, 16, -0.05, "order2"),
    (37, 10, 100, 2, "softplus", True, 64, 0.05, "official"),
    (33, 16, 128, 2, "tanh", False, 16, 0.1, "order2"),
    (33, 16, 128, 2, "tanh", False, 16, 0.1, "official"),
    (5, 10, 100, 2, "softplus", False, 64, -0.1, "order2"),
    (5, 10, 100, 2, "softplus", False, 64, -0.1, "official"),
    (6, 3, 24, 1, "softplus", False, 16, 0.05, "order2"),
    (6, 3, 24, 3, "tanh", True, 16, 0.05, "official"),
    (6, 3, 24, 3, "tanh", False, 16, 0.05, "order2"),
    (6, 3, 20, 2, "relu", False, 16, 0.05, "official"),
    (6, 3, 20, 2, "relu", False, 16, 0.05, "order2"),
]


@pytest.mark.parametrize("backend", ["reference", "analytic"])
@pytest.mark.parametrize("B,k,width,depth,activation,separable,frames,dt,scheme", CASES)
def test_float32_backend_matches_float64_reference(backend, B, k, width, depth, activation,
                                                   separable, frames, dt, scheme):
    torch.manual_seed(B * k)
    m = HamiltonianMLP(k, hidden=width, depth=depth, activation=activation, separable=separable)
    w, b = m.weights_and_biases()
    q0, p0 = torch.randn(B, k), torch.randn(B, k)
    errs = compare_to_reference(q0, p0, [x.detach() for x in w], [x.detach() for x in b], dt,
                                frames, activation, backend, scheme=scheme)
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"{backend} float32 vs float64 reference, rel err > 1e-4: {bad}"


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_second_order_terms_are_live(activation):
    # dp_T/dq0 of a separable H = K(p) + V(q) flows only through V's Hessian, i.e. through
    # s''. With softplus it must be nonzero (and equal in both backends); ReLU (s'' = 0) kills
    # every second-derivative term except the one through the kinks, which autograd also omits.
    torch.manual_seed(1)
    m = HamiltonianMLP(3, hidden=16, activation=activation, separable=True).double()
    grads = {}
    for backend in ("reference", "analytic"):
        q0 = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(2))
        q0.requires_grad_(True)
        p0 = torch.zeros(5, 3, dtype=D)
        _, p, _ = m.rollout(q0, p0, frames=2, backend=backend)
        (grads[backend],) = torch.autograd.grad(p[:, -1].sum(), q0)
    torch.testing.assert_close(grads["analytic"], grads["reference"], rtol=1e-10, atol=1e-12)
    if activation == "softplus":
        assert grads["analytic"].abs().max() > 1e-3
    else:
        assert grads["analytic"].abs().max() == 0


def test_analytic_double_backward_raises():
    torch.manual_seed(0)
    m = HamiltonianMLP(2, hidden=8)
    q0 = torch.randn(3, 2, requires_grad=True)
    q, _, _ = m.rollout(q0, torch.randn(3, 2), frames=3, backend="analytic")
    with pytest.raises(RuntimeError, match="first-order"):
        torch.autograd.grad(q.sum(), q0, create_graph=True)


def test_reference_supports_double_backward():
    torch.manual_seed(0)
    m = HamiltonianMLP(2, hidden=8).double()
    q0 = torch.randn(3, 2, dtype=D, requires_grad=True)
    q, _, _ = m.rollout(q0, torch.randn(3, 2, dtype=D), frames=3, backend="reference")
    (g,) = torch.autograd.grad(q.sum(), q0, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), q0)
    assert torch.isfinite(gg).all() and gg.abs().max() > 0


@pytest.mark.parametrize("activation,scheme", [("softplus", "order2"), ("tanh", "official"),
                                               ("relu", "order2")])
@pytest.mark.parametrize("save_bytes", [None, 0])  # None: keep activations; 0: recompute them
def test_analytic_large_batch_and_recompute_paths(monkeypatch, activation, scheme, save_bytes):
    # A large, odd batch; SAVE_BYTES = 0 forces the backward to recompute the forward's
    # activations instead of reading them.
    from hgan.kernels.leapfrog import analytic
    if save_bytes is not None:
        monkeypatch.setattr(analytic, "SAVE_BYTES", save_bytes)
    B = 549
    torch.manual_seed(7)
    m = HamiltonianMLP(3, hidden=24, depth=2, activation=activation)
    w, b = m.weights_and_biases()
    q0, p0 = torch.randn(B, 3), torch.randn(B, 3)
    errs = compare_to_reference(q0, p0, [x.detach() for x in w], [x.detach() for x in b], 0.05,
                                5, activation, "analytic", scheme=scheme)
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"analytic (B={B}, SAVE_BYTES={save_bytes}) rel err > 1e-4: {bad}"


@pytest.mark.parametrize("activation", ["softplus", "tanh", "relu"])
def test_act_d1_is_the_derivative_of_act_value(activation):
    # common.act_d1 is s'(a) of common.act_value's s(a): checked against autograd in float64
    # (away from relu's kink at 0).
    from hgan.kernels.leapfrog.common import act_d1, act_value
    a = torch.linspace(-3, 3, 25, dtype=D)[torch.arange(25) != 12].requires_grad_(True)
    (want,) = torch.autograd.grad(act_value(a, activation).sum(), a)
    torch.testing.assert_close(act_d1(a.detach(), activation), want, rtol=1e-12, atol=1e-12)


def test_relu_at_its_kink_has_autograds_zero_derivative():
    # relu'(0) is 0 in autograd (the reference backend's derivative), so act_d1 must say 0
    # there too, or analytic integrates another H wherever a pre-activation is exactly 0. A
    # state at the origin of a network without biases has every pre-activation 0: dH/dx = 0
    # there, so the origin is a fixed point (q, p and dHdq all exactly zero) in both backends.
    from hgan.kernels.leapfrog.common import act_d1
    a = torch.zeros(4, dtype=D, requires_grad=True)
    (want,) = torch.autograd.grad(torch.relu(a).sum(), a)
    assert torch.equal(act_d1(a.detach(), "relu"), want) and not want.any()
    w, b = random_mlp(2, (8, 8), dtype=D, generator=torch.Generator().manual_seed(4))
    b = [torch.zeros_like(x) for x in b]
    zero = torch.zeros(3, 2, dtype=D)
    for backend in ("reference", "analytic"):
        out = leapfrog(zero, zero, w, b, frames=3, activation="relu", backend=backend)
        assert all(not x.any() for x in out), backend


def test_the_float64_oracle_sees_a_wrong_trajectory(monkeypatch):
    # compare_to_reference must compare each output with the float64 reference's (not with
    # itself): a backend whose q is 1% off, gradients aside, shows rel_err(1.01 q, q) = 0.01
    # in "q" and nothing in "p" and "dHdq".
    from hgan.kernels.leapfrog import check
    real = check.leapfrog

    def leapfrog_with_a_scaled_q(*args, backend, **kw):
        if backend != "scaled":
            return real(*args, backend=backend, **kw)
        q, p, d = real(*args, backend="analytic", **kw)
        return 1.01 * q, p, d
    monkeypatch.setattr(check, "leapfrog", leapfrog_with_a_scaled_q)
    gen = torch.Generator().manual_seed(3)
    w, b = random_mlp(2, (8, 8), generator=gen)
    q0, p0 = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    errs = compare_to_reference(q0, p0, w, b, 0.1, 4, "softplus", "scaled")
    assert errs["q"] == pytest.approx(0.01, rel=1e-3), errs
    assert max(errs["p"], errs["dHdq"]) <= 1e-5, errs


def test_the_float64_oracle_sees_a_wrong_gradient(monkeypatch):
    # compare_to_reference is what every backend test asserts on, so it must be able to fail:
    # rel_err is ||x - ref|| / ||ref|| (absolute where ref is zero), and a backend right in
    # every output but 5% off in the gradient flowing back through dHdq (L_cyc's path) alone
    # must show an error in every gradient that path reaches.
    from hgan.kernels.leapfrog import check
    assert check.rel_err(torch.tensor([3.0, 4.5]), torch.tensor([3.0, 4.0])) == \
        pytest.approx(0.1, rel=1e-12)
    assert check.rel_err(torch.tensor([0.0, 2.0]), torch.zeros(2)) == pytest.approx(2.0)

    class SkewedBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.05 * g

    real = check.leapfrog

    def leapfrog_with_a_skewed_dhdq(*args, backend, **kw):
        if backend != "skewed":
            return real(*args, backend=backend, **kw)
        q, p, d = real(*args, backend="analytic", **kw)
        return q, p, SkewedBackward.apply(d)
    monkeypatch.setattr(check, "leapfrog", leapfrog_with_a_skewed_dhdq)
    gen = torch.Generator().manual_seed(3)
    w, b = random_mlp(2, (8, 8), generator=gen)
    q0, p0 = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    errs = compare_to_reference(q0, p0, w, b, 0.1, 4, "softplus", "skewed")
    assert max(errs[n] for n in ("q", "p", "dHdq")) <= 1e-5, errs
    grads = {"d_q0", "d_p0", "d_W0", "d_W1", "d_W2", "d_b0", "d_b1", "d_b2"}
    assert set(errs) == {"q", "p", "dHdq"} | grads, errs
    # the output bias moves nothing (its gradient is zero in both); every other one is off
    missed = {n: errs[n] for n in grads - {"d_b2"} if not errs[n] > 1e-4}
    assert not missed and errs["d_b2"] == 0, errs
    # and the unskewed backend passes the same check
    errs = compare_to_reference(q0, p0, w, b, 0.1, 4, "softplus", "analytic")
    assert max(errs.values()) <= 1e-5, errs
