"""The public contract of hgan.kernels: shapes, errors, dispatch, the module and L_cyc."""
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from hgan.kernels import (DERIVATIVE_ORDERS, FUSED_CONTRACT, HamiltonianMLP, cyclic_loss,
                          leapfrog, leapfrog_flops)
from hgan.kernels.leapfrog import dispatch
from hgan.kernels.leapfrog.check import random_mlp


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mlp():
    return random_mlp(3, (16, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["reference", "analytic"])
@pytest.mark.parametrize("frames", [1, 2, 5])
def test_shapes_and_initial_frame(mlp, backend, frames):
    q0, p0 = torch.randn(4, 3), torch.randn(4, 3)
    q, p, d = leapfrog(q0, p0, *mlp, frames=frames, backend=backend)
    assert q.shape == p.shape == (4, frames, 3) and d.shape == (4, frames - 1, 3)
    assert torch.equal(q[:, 0], q0) and torch.equal(p[:, 0], p0)


def test_dhdq_is_the_first_half_step_gradient(mlp):
    # Independent oracle: dH/dq at (q_t, p_t) by autograd on the module's energy.
    q0, p0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    w, b = [x.double() for x in mlp[0]], [x.double() for x in mlp[1]]
    q, p, d = leapfrog(q0, p0, w, b, frames=4, backend="analytic")
    from hgan.kernels.leapfrog.reference import mlp_energy
    qt = q[:, :-1].reshape(-1, 3).clone().requires_grad_(True)
    energy = mlp_energy(torch.cat([qt, p[:, :-1].reshape(-1, 3)], 1), w, b, "softplus")
    (g,) = torch.autograd.grad(energy.sum(), qt)
    torch.testing.assert_close(d.reshape(-1, 3), g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_non_contiguous_inputs(mlp, backend):
    base = torch.randn(3, 8)
    q0, p0 = base[:, ::2][:, :3], base.t().contiguous().t()[:, 4:7]   # strided views
    w = [mlp[0][0].t().contiguous().t(), mlp[0][1], mlp[0][2]]
    assert not q0.is_contiguous() and not w[0].is_contiguous()
    got = leapfrog(q0, p0, w, mlp[1], frames=4, backend=backend)
    want = leapfrog(q0.contiguous(), p0.contiguous(), mlp[0], mlp[1], frames=4,
                    backend=backend)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_clear_errors(mlp):
    w, b = mlp
    q0 = torch.randn(4, 3)
    cases = [
        (dict(q0=q0, p0=torch.randn(4, 2)), ValueError, "same shape"),
        (dict(q0=q0[0], p0=q0[0]), ValueError, r"\[B, k\]"),
        (dict(q0=q0, p0=q0.double()), TypeError, "dtype"),
        (dict(weights=[w[0][:, :5], w[1], w[2]]), ValueError, r"weights\[0\]"),
        (dict(biases=[b[0], b[1][:3], b[2]]), ValueError, r"biases\[1\]"),
        (dict(weights=w[:2], biases=b[:2]), ValueError, "one output"),
        (dict(weights=[w[0], w[1], w[2].double()]), TypeError, "dtype"),
        (dict(frames=0), ValueError, "frames"),
        (dict(frames=3.0), ValueError, "frames"),
        (dict(frames=True), ValueError, "frames"),
        (dict(dt=float("nan")), ValueError, "dt"),
        (dict(activation="gelu"), ValueError, "activation"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(scheme="yoshida"), ValueError, "scheme"),
        (dict(precision="fp8"), ValueError, "precision must be one of"),
        (dict(precision="tf32", backend="analytic"), ValueError, "option of the fused kernels"),
        (dict(precision="tf32x3", backend="reference"), ValueError,
         "has none: it computes in the inputs. dtype"),
        (dict(q0=q0.int(), p0=q0.int()), TypeError, "floating"),
        # a library user's inputs: layers without a bias, modules, arrays, transposed weights,
        # empty states and layers (each an AttributeError or a silent result before)
        (dict(biases=[b[0], None, b[2]]), TypeError,
         r"biases\[1\] must be a torch.Tensor, got NoneType \(a layer without a bias takes "
         r"torch.zeros\(out\)"),
        (dict(weights=[torch.nn.Linear(6, 16), w[1], w[2]]), TypeError,
         r"weights\[0\] must be a torch.Tensor, got Linear \(pass a layer's .weight"),
        (dict(weights=[w[0].numpy(), w[1], w[2]]), TypeError, r"got ndarray$"),
        (dict(weights=[w[0].t(), w[1].t(), w[2].t()]), ValueError,
         r"weights\[0\] has shape \(6, 16\): that is \[in, out\].*transpose them"),
        # weights[0] alone transposed: weights[1] takes its 16 outputs (blamed the state before)
        (dict(weights=[w[0].t(), w[1], w[2]]), ValueError,
         r"weights\[0\] has shape \(6, 16\): that is \[in, out\].*transpose weights\[0\]"),
        # ... but a network in nn.Linear layout built for another k is named as that
        (dict(q0=torch.randn(4, 8), p0=torch.randn(4, 8),
              weights=[torch.zeros(16, 10), w[1], w[2]]), ValueError,
         r"q0 and p0 have k = 8 coordinates, but the network expects k = 5"),
        (dict(q0=q0[:, :0], p0=q0[:, :0]), ValueError, "k >= 1 coordinates"),
        (dict(weights=[w[0][:0], w[1][:, :0], w[2]], biases=[b[0][:0], b[1], b[2]]),
         ValueError, r"weights\[0\] has no outputs"),
        # the whole argument of the wrong kind ("'NoneType' object is not iterable", or a
        # lone tensor read as a list of its rows, before)
        (dict(biases=None), TypeError,
         r"^biases must be a list of tensors, one per layer, got NoneType \(a network without "
         r"biases takes one torch.zeros\(out\) per layer\)$"),
        (dict(weights=w[0]), TypeError,
         r"^weights must be a list of tensors, one per layer, got Tensor$"),
        (dict(weights=torch.nn.Sequential(torch.nn.Linear(6, 16))), TypeError,
         r"weights must be a list of tensors.*got Sequential \(pass each nn.Linear's .weight"),
        (dict(weights=3), TypeError, r"^weights must be a list of tensors.*got int$"),
        (dict(dt=torch.tensor(0.05)), ValueError, "not a tensor"),
        (dict(dt=True), ValueError, "dt must be a finite real number"),
        # the rest of the contract, each a torch error deep inside a backend (or a silent
        # result) without its check: an infinite dt (a rollout of NaNs), a 3-d state, states
        # of different batch sizes, a network without a hidden layer, a bias too many or too
        # few, a bias of another dtype
        (dict(dt=float("inf")), ValueError, "dt must be a finite real number"),
        (dict(dt=-float("inf")), ValueError, "dt must be a finite real number"),
        (dict(q0=q0[..., None], p0=q0[..., None]), ValueError, r"q0 must be \[B, k\]"),
        (dict(p0=torch.randn(5, 3)), ValueError, "same shape"),
        (dict(weights=[torch.randn(1, 6)], biases=[torch.randn(1)]), ValueError,
         r"need >= 2 layers.*got 1 weights and 1 biases"),
        (dict(biases=b[:2]), ValueError, "one bias per weight, got 3 weights and 2 biases"),
        (dict(biases=[*b, b[2]]), ValueError, "one bias per weight, got 3 weights and 4 biases"),
        (dict(biases=[b[0], b[1].double(), b[2]]), TypeError,
         r"biases\[1\] has dtype torch.float64 but q0 has torch.float32"),
    ]
    for override, exc, msg in cases:
        kw = dict(q0=q0, p0=q0, weights=w, biases=b, frames=3)
        kw.update(override)
        with pytest.raises(exc, match=msg):
            leapfrog(kw.pop("q0"), kw.pop("p0"), kw.pop("weights"), kw.pop("biases"), **kw)


def test_layer_lists_are_checked_inside_autocast_too(mlp):
    # autocast takes its own path to the checks: the same error there
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match=r"^biases must be a list of tensors"):
            leapfrog(torch.randn(4, 3), torch.randn(4, 3), mlp[0], None, frames=3)


def test_layers_may_come_as_any_sequence(mlp):
    # tuples and generators (a module's parameters picked on the fly) are lists of layers
    q0 = torch.randn(4, 3)
    want = leapfrog(q0, q0, list(mlp[0]), list(mlp[1]), frames=3, backend="analytic")
    got = leapfrog(q0, q0, tuple(mlp[0]), (b for b in mlp[1]), frames=3, backend="analytic")
    for x, y in zip(got, want):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ["reference", "analytic", "fused"])
def test_layers_may_come_as_parameter_lists(mlp, backend):
    # A network that keeps its layers in nn.ParameterLists hands them over as they are: it
    # was refused as a module ("pass each nn.Linear's .weight and .bias, as lists"), though it
    # is exactly such a list. The gradients reach the Parameters in it.
    ws = torch.nn.ParameterList(torch.nn.Parameter(t.clone()) for t in mlp[0])
    bs = torch.nn.ParameterList(torch.nn.Parameter(t.clone()) for t in mlp[1])
    q0 = torch.randn(2, 3)
    want = leapfrog(q0, q0, list(mlp[0]), list(mlp[1]), frames=3, backend=backend)
    got = leapfrog(q0, q0, ws, bs, frames=3, backend=backend)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    (got[1].square().sum() + got[2].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*ws, *bs][:-1])


def test_dt_may_be_any_real_scalar(mlp):
    import numpy as np
    w, b = mlp
    q0 = torch.randn(2, 3)
    want = leapfrog(q0, q0, w, b, frames=3, dt=0.25, backend="analytic")
    for dt in (np.float32(0.25), np.float64(0.25), 0.25):
        got = leapfrog(q0, q0, w, b, frames=3, dt=dt, backend="analytic")
        assert all(torch.equal(x, y) for x, y in zip(got, want))


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_dt_may_be_any_numbers_real(mlp, backend):
    # check_inputs takes any finite numbers.Real; the dispatcher hands the backends a float.
    # Without that cast a Fraction reached torch.add(alpha=...) in the reference backend and
    # raised TypeError (numpy scalars, the only other Reals tested, pass either way).
    from fractions import Fraction
    w, b = mlp
    q0 = torch.randn(2, 3)
    want = leapfrog(q0, q0, w, b, frames=3, dt=0.25, backend=backend)
    got = leapfrog(q0, q0, w, b, frames=3, dt=Fraction(1, 4), backend=backend)
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_auto_decides_once_per_device_type(mlp, monkeypatch, caplog):
    # test_auto_chooses_once_and_remembers cannot see a re-decision on CPU (the CPU choice
    # never calls _triton_importable); the decision's log line can: one per device type.
    import logging
    monkeypatch.setattr(dispatch, "_auto_choice", {})
    q0 = torch.randn(2, 3)
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        for _ in range(3):
            leapfrog(q0, q0, *mlp, frames=2)
    decided = [r for r in caplog.records if "backend='auto' on cpu" in r.getMessage()]
    assert len(decided) == 1, [r.getMessage() for r in caplog.records]
    assert dispatch._auto_choice == {"cpu": "analytic"}


def test_frames_may_be_any_integer(mlp):
    import numpy as np
    w, b = mlp
    q0 = torch.randn(2, 3)
    want = leapfrog(q0, q0, w, b, frames=4, backend="analytic")
    for frames in (np.int64(4), np.int32(4), torch.tensor(4)):
        got = leapfrog(q0, q0, w, b, frames=frames, backend="analytic")
        assert all(torch.equal(x, y) for x, y in zip(got, want))
    for frames in (torch.tensor([4]), torch.tensor(4.0), np.float64(4.0), torch.tensor(True)):
        with pytest.raises(ValueError, match="frames must be an int"):
            leapfrog(q0, q0, w, b, frames=frames, backend="analytic")


def test_device_mismatch_is_reported(mlp):
    w, b = mlp
    q0 = torch.randn(2, 3, device="meta")
    with pytest.raises(ValueError, match="device"):
        leapfrog(q0, q0, w, b, frames=2)
    # whichever input is on another device than q0 is the one named (p0's check missing, a
    # backend failed with torch's "Tensor on device meta is not on the expected device cpu!")
    q0 = torch.randn(2, 3)
    meta = [(dict(p0=q0.to("meta")), "p0"),
            (dict(weights=[w[0], w[1].to("meta"), w[2]]), r"weights\[1\]"),
            (dict(biases=[b[0], b[1], b[2].to("meta")]), r"biases\[2\]")]
    for backend in ("reference", "analytic"):
        for override, name in meta:
            kw = {"p0": q0, "weights": w, "biases": b, **override}
            with pytest.raises(ValueError, match=rf"^{name} is on meta but q0 is on cpu"):
                leapfrog(q0, kw["p0"], kw["weights"], kw["biases"], frames=2, backend=backend)


def test_auto_chooses_once_and_remembers(mlp, monkeypatch):
    monkeypatch.setattr(dispatch, "_auto_choice", {})
    q0 = torch.randn(2, 3)
    leapfrog(q0, q0, *mlp, frames=2)
    assert dispatch._auto_choice == {"cpu": "analytic"}
    monkeypatch.setattr(dispatch, "_triton_importable",
                        lambda: pytest.fail("auto re-decided instead of remembering"))
    leapfrog(q0, q0, *mlp, frames=2)


def test_auto_picks_fused_for_cuda_tensors_where_triton_imports(mlp, monkeypatch):
    # The module's promise, checked without a GPU (a stand-in for a CUDA tensor): auto on
    # CUDA is the fused backend, which every GPU measurement and training run relies on;
    # without triton, analytic.
    from types import SimpleNamespace
    q0 = SimpleNamespace(device=SimpleNamespace(type="cuda"))
    monkeypatch.setattr(dispatch, "fused_unsupported_reason", lambda q0, w, act: None)
    for importable, want in ((True, "fused"), (False, "analytic")):
        monkeypatch.setattr(dispatch, "_auto_choice", {})
        monkeypatch.setattr(dispatch, "_triton_importable", lambda: importable)
        assert dispatch._resolve("auto", q0, mlp[0], "softplus") == want
        assert dispatch._auto_choice == {"cuda": want}


def test_without_triton_knobs_only_triton_interpret_1_means_interpreting(monkeypatch):
    # a triton without triton.knobs (or none): the variable read as older tritons read it
    monkeypatch.setitem(sys.modules, "triton", None)      # `from triton import ...` fails
    for value, want in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert dispatch._interpreting() is want, value


def test_import_is_silent_and_needs_no_triton():
    code = ("import sys, hgan.kernels as k; k.HamiltonianMLP(3); "
            "assert 'triton' not in sys.modules, 'triton imported eagerly'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_contract_tables():
    assert FUSED_CONTRACT["depth"] == 2 and FUSED_CONTRACT["widths"] == (16, 128)
    assert set(DERIVATIVE_ORDERS) == {"reference", "analytic", "fused"}
    assert DERIVATIVE_ORDERS["reference"]["double_backward"]
    assert not DERIVATIVE_ORDERS["analytic"]["double_backward"]
    assert not DERIVATIVE_ORDERS["fused"]["double_backward"]


@pytest.mark.parametrize("backend", ["reference", "analytic", "fused"])
def test_the_derivative_table_says_what_each_backend_does(backend):
    # DERIVATIVE_ORDERS is what a user reads before asking for a gradient penalty: a double
    # backward runs exactly where the table says it does.
    if backend == "fused" and not (dispatch._triton_importable()
                                   and (torch.cuda.is_available() or dispatch._interpreting())):
        pytest.skip("fused needs triton and CUDA or the Triton interpreter")
    dev = "cuda" if backend == "fused" and torch.cuda.is_available() else "cpu"
    w, b = random_mlp(2, (16, 16), device=dev)
    w = [t.requires_grad_(True) for t in w]
    q0 = torch.randn(3, 2, device=dev, requires_grad=True)
    q, _, _ = leapfrog(q0, q0.detach(), w, b, frames=3, backend=backend)
    try:
        (g,) = torch.autograd.grad(q.square().sum(), q0, create_graph=True)
        (gw,) = torch.autograd.grad(g.square().sum(), w[0])
        ran = bool(gw.abs().sum() > 0)
    except RuntimeError as e:
        assert "first-order gradients only" in str(e)      # refused by name, not by torch
        ran = False
    assert ran == DERIVATIVE_ORDERS[backend]["double_backward"]


def test_module_energy_and_separable_structure():
    torch.manual_seed(0)
    m = HamiltonianMLP(3, hidden=8, separable=True).double()
    q, p = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    h = m(q, p)
    # H = K(p) + V(q), evaluated on the two small MLPs directly (independent of block_diag).
    def run(layers, x):
        for i, lin in enumerate(layers):
            x = lin(x)
            if i < len(layers) - 1:
                x = torch.nn.functional.softplus(x)
        return x.squeeze(-1)
    torch.testing.assert_close(h, run(m.kinetic, p) + run(m.potential, q))
    w, _ = m.weights_and_biases()
    assert w[0].shape == (8, 6) and torch.count_nonzero(w[0][:4, 3:]) == 0
    # Gradients reach the blocks through the assembly.
    q_traj, _, _ = m.rollout(q, p, frames=3, backend="analytic")
    q_traj.sum().backward()
    assert all(prm.grad is not None for prm in m.parameters())


def test_module_rejects_bad_config():
    with pytest.raises(ValueError, match="activation"):
        HamiltonianMLP(3, activation="gelu")
    with pytest.raises(ValueError, match="even"):
        HamiltonianMLP(3, hidden=7, separable=True)
    with pytest.raises(ValueError, match="hidden >= 1"):
        HamiltonianMLP(2, hidden=0)          # accepted before, failed later in the rollout
    # the other two sizes of the same message (a network of no coordinates or no hidden layer)
    with pytest.raises(ValueError, match=r"need k >= 1.*got k=0"):
        HamiltonianMLP(0)
    with pytest.raises(ValueError, match=r"depth >= 1.*depth=0"):
        HamiltonianMLP(2, depth=0)


def test_rollout_passes_its_precision_on():
    # HamiltonianMLP.rollout takes the fused kernels' precision: asked of a backend that has
    # none, it is refused with the documented error (integrator.md: "reference and analytic,
    # asked by name, refuse any precision but ieee"), as leapfrog() refuses it, not dropped.
    torch.manual_seed(0)
    m = HamiltonianMLP(3, hidden=16)
    q0 = torch.randn(2, 3)
    for backend in ("reference", "analytic"):
        with pytest.raises(ValueError, match=r"precision='tf32' is an option of the fused"):
            m.rollout(q0, q0, 3, backend=backend, precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        m.rollout(q0, q0, 3, backend="analytic", precision="fp8")


def test_cyclic_loss_matches_definition():
    d = torch.tensor([[[1.0, -2.0], [0.5, 0.0]], [[-1.0, 1.0], [3.0, -0.5]]])  # [B=2, T-1=2, k=2]
    assert cyclic_loss(d, lam=0.01).item() == pytest.approx(0.01 / 2 * 9.0)
    with pytest.raises(ValueError, match=r"\[B, T-1, k\]"):
        cyclic_loss(d[0])
    with pytest.raises(ValueError, match="empty batch"):   # not a ZeroDivisionError
        cyclic_loss(d[:0])


def test_cyclic_loss_sums_frames_and_coordinates_and_averages_the_batch():
    # Distinct B, T-1 and k, so a division by the wrong axis cannot pass; lambda defaults to
    # the paper's 0.01 (integrator.md: L_cyc = lambda / B * sum_t<T-1 sum_i |dH/dq_i|).
    d = torch.randn(3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = 0.01 / 3 * sum(abs(x) for x in d.flatten().tolist())
    assert cyclic_loss(d).item() == pytest.approx(want, rel=1e-12)


def test_cyclic_loss_names_a_dhdq_that_is_not_a_tensor(mlp):
    # The whole rollout passed for its third result, or an array: "'tuple' object has no
    # attribute 'dim'" from inside cyclic_loss before.
    out = leapfrog(torch.randn(2, 3), torch.randn(2, 3), *mlp, frames=3)
    for bad, name in ((out, "tuple"), (out[2].numpy(), "ndarray"), ([out[2]], "list")):
        with pytest.raises(TypeError, match=rf"^dHdq must be a torch.Tensor \[B, T-1, k\] "
                                            rf"\(the rollout's third result\), got {name}$"):
            cyclic_loss(bad)


def test_fused_contract_ranges_are_inclusive():
    # k 1..32 and hidden widths 16..128 run fused, one past either end does not (refusing
    # k = 32 would silently cost the fused speed under auto, and raise under backend="fused").
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not dispatch._triton_importable() or (dev == "cpu" and not dispatch._interpreting()):
        pytest.skip("fused needs triton and CUDA or the Triton interpreter")

    def reason(k, widths):
        w, _ = random_mlp(k, widths, device=dev)
        return dispatch.fused_unsupported_reason(torch.zeros(2, k, device=dev), w, "softplus")
    assert reason(32, (16, 128)) is None and reason(1, (128, 16)) is None
    assert "k <= 32" in reason(33, (16, 16))
    assert "widths" in reason(4, (15, 16)) and "widths" in reason(4, (16, 129))
    assert reason(4, (16,)) == "fused supports depth 2, got 1 hidden layer"
    assert reason(4, (16, 16, 16)) == "fused supports depth 2, got 3 hidden layers"


def test_fused_reason_names_a_missing_triton(monkeypatch):
    # Without triton an in-contract configuration cannot run fused: the reason says so (and
    # backend="fused" raises with it), wherever the tensors are and whatever TRITON_INTERPRET
    # says; without the check it read "fused needs CUDA tensors" or nothing at all.
    monkeypatch.setattr(dispatch, "_triton_importable", lambda: False)
    w, b = random_mlp(3, (16, 16))
    q0 = torch.randn(2, 3)
    assert dispatch.fused_unsupported_reason(q0, w, "softplus") == "triton is not installed"
    with pytest.raises(ValueError, match="backend='fused' cannot run: triton is not installed"):
        leapfrog(q0, q0, w, b, frames=2, backend="fused")


def test_fused_refuses_a_device_that_is_neither_cuda_nor_the_interpreters_cpu(monkeypatch):
    # The Triton interpreter runs CPU tensors only: under TRITON_INTERPRET=1 a tensor on any
    # other device (here meta; mps, xpu alike) is refused naming CUDA and the device, not
    # handed to the kernels.
    monkeypatch.setattr(dispatch, "_triton_importable", lambda: True)
    monkeypatch.setattr(dispatch, "_interpreting", lambda: True)
    monkeypatch.setattr(dispatch, "_interpret_mismatch", lambda: None)
    w, _ = random_mlp(3, (16, 16))
    assert dispatch.fused_unsupported_reason(torch.zeros(2, 3), w, "softplus") is None  # CPU runs
    reason = dispatch.fused_unsupported_reason(torch.zeros(2, 3, device="meta"),
                                               [x.to("meta") for x in w], "softplus")
    assert reason is not None and "CUDA" in reason and "meta" in reason, reason


def test_each_fallback_reason_is_told_once_and_names_itself(monkeypatch):
    # backend="auto" where it chose fused: every configuration outside the documented contract
    # (depth 2, widths 16..128, k <= 32, softplus/tanh, float32) runs analytic with a warning
    # that names *its* reason, once per reason: a second, different reason is told too, and
    # neither is told again. All decided before any launch, so no kernel runs here.
    monkeypatch.setitem(dispatch._auto_choice, "cpu", "fused")
    monkeypatch.setattr(dispatch, "_warned", set())
    gen = torch.Generator().manual_seed(4)

    def config(k=3, widths=(16, 16), activation="softplus", dtype=torch.float32):
        w, b = random_mlp(k, widths, dtype=dtype, generator=gen)
        q0 = torch.randn(2, k, generator=gen, dtype=dtype)
        return (q0, q0.flip(0), w, b), activation

    cases = [(config(widths=(16, 16, 16)), r"depth 2, got 3 hidden layers"),
             (config(widths=(15, 16)), r"hidden widths 16\.\.128, got \[15, 16\]"),
             (config(widths=(16, 129)), r"hidden widths 16\.\.128, got \[16, 129\]"),
             (config(k=33), r"k <= 32, got k = 33"),
             (config(activation="relu"), r"activations .*got 'relu'"),
             (config(dtype=torch.float64), r"float32 only, got torch.float64")]
    for _ in range(2):                 # the second round: every reason already told
        for (args, activation), reason in cases:
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                got = leapfrog(*args, frames=3, activation=activation)
            told = [str(r.message) for r in rec if issubclass(r.category, UserWarning)]
            if _ == 0:
                assert len(told) == 1 and re.search(
                    rf"backend='auto': fused supports {reason}; running the analytic backend",
                    told[0]), (reason, told)
            else:
                assert told == [], (reason, told)
            want = leapfrog(*args, frames=3, activation=activation, backend="analytic")
            for x, y in zip(got, want):
                assert torch.equal(x, y)


def test_inference_mode_names_the_backend_that_cannot_run(mlp):
    w, b = mlp
    q0, p0 = torch.randn(2, 3), torch.randn(2, 3)
    with torch.no_grad():
        want = leapfrog(q0, p0, w, b, frames=4, backend="analytic")
    with torch.inference_mode():
        for frames in (2, 4):         # one step already differentiates H
            with pytest.raises(RuntimeError, match="reference.*inference_mode.*analytic"):
                leapfrog(q0, p0, w, b, frames=frames, backend="reference")
        got = leapfrog(q0, p0, w, b, frames=4, backend="analytic")
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_results_require_grad_only_when_an_input_does(mlp, backend):
    # reference differentiated H at a fresh leaf with create_graph whenever grad mode was on,
    # so a rollout of plain tensors came back requiring grad (q.numpy() raised) and kept its
    # graph alive; a torch op on inputs that need no gradient returns results that need none.
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    gen = torch.Generator().manual_seed(7)
    q0 = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    p0 = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    out = leapfrog(q0, p0, w, b, frames=3, backend=backend)
    assert not any(t.requires_grad for t in out)
    out[0].numpy()
    with torch.no_grad():
        want = leapfrog(q0, p0, w, b, frames=3, backend="analytic")
    for x, y in zip(out, want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    # one input that needs a gradient: every result is differentiable w.r.t. it
    w1 = w[1].clone().requires_grad_(True)
    q, p, d = leapfrog(q0, p0, [w[0], w1, w[2]], b, frames=3, backend=backend)
    assert q.requires_grad and p.requires_grad and d.requires_grad
    (g,) = torch.autograd.grad(p.square().sum(), w1)
    eps, e = 1e-6, torch.zeros_like(w1)
    e[0, 0] = eps                       # central difference in float64 on one entry

    def f(x):
        return leapfrog(q0, p0, [w[0], x, w[2]], b, frames=3, backend="analytic")[1].square().sum()
    fd = (f(w[1] + e) - f(w[1] - e)) / (2 * eps)
    torch.testing.assert_close(g[0, 0], fd, rtol=1e-6, atol=1e-9)


def test_flop_count_closed_form():
    # One gradient evaluation at k=1, widths (2, 3): m = [2*2, 2*3] -> 2*2*(4+6) FLOPs per row.
    assert leapfrog_flops(1, 2, 1, (2, 3)) == 3 * 2 * 2 * 10
    assert leapfrog_flops(5, 4, 1, (2, 3)) == 5 * 3 * 3 * 2 * 2 * 10
    assert leapfrog_flops(1, 2, 1, (2, 3), backward=True) == 120 + 3 * 2 * (5 * 4 + 6 * 6)


def test_compiled_callers_run_the_integrator_eagerly(mlp):
    # leapfrog is torch.compiler.disable'd: a compiled caller breaks its graph around it, so
    # the results are the eager ones exactly, and fullgraph=True refuses instead of tracing.
    w, b = mlp
    q0, p0 = torch.randn(5, 3), torch.randn(5, 3)

    def fn(q0, p0):
        q, p, d = leapfrog(q0 * 2.0, p0, w, b, frames=4, backend="analytic")
        return q.sin(), p, d

    torch._dynamo.reset()
    try:
        got = torch.compile(fn, backend="aot_eager")(q0, p0)
        for x, y in zip(got, fn(q0, p0)):
            assert torch.equal(x, y)
        torch._dynamo.reset()     # else the graph-broken entry above is simply reused
        with pytest.raises(Exception, match="skipped|disable"):
            torch.compile(fn, backend="aot_eager", fullgraph=True)(q0, p0)
    finally:
        torch._dynamo.reset()


def test_a_source_checkout_imports_its_own_kernels(tmp_path):
    # PYTHONPATH=<checkout>: hgan.kernels is that checkout's kernels/, even where an editable
    # install of another checkout maps hgan.kernels to its own (this suite's environment).
    import os
    import shutil
    import hgan
    src = os.path.dirname(os.path.abspath(hgan.__file__))
    shutil.copytree(src, tmp_path / "hgan", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "kernels" / "leapfrog").mkdir(parents=True)
    (tmp_path / "kernels" / "__init__.py").write_text("WHICH = 'the checkout on PYTHONPATH'\n")
    code = "import hgan.kernels; print(getattr(hgan.kernels, 'WHICH', 'the installed one'))"

    def which():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
        return out.stdout.strip() or out.stderr
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert which() == "the installed one"      # another project's pyproject: not a checkout
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "hgan"\n')
    assert which() == "the checkout on PYTHONPATH"


@pytest.mark.parametrize("value,interpreting", [
    ("1", True), ("true", True), ("0", False), ("", False), ("false", False), ("off", False)])
def test_fused_on_cpu_only_under_the_triton_interpreter(monkeypatch, value, interpreting):
    # CPU tensors run fused only where Triton itself interprets the kernels, read from
    # TRITON_INTERPRET as Triton reads it; otherwise the reason names CUDA (and
    # backend="fused" raises with it) instead of Triton compiling for a GPU with CPU pointers.
    knobs = pytest.importorskip("triton.knobs")     # how triton >= 3.4 reads the variable
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert bool(knobs.runtime.interpret) == interpreting      # Triton's own reading
    w, _ = random_mlp(2, (16, 16))
    reason = dispatch.fused_unsupported_reason(torch.zeros(2, 2), w, "softplus")
    if interpreting:
        assert reason is None
    else:
        assert "CUDA" in reason


def _backends_here():
    fused = dispatch._triton_importable() and (torch.cuda.is_available()
                                               or dispatch._interpreting())
    return ["reference", "analytic"] + (["fused"] if fused else [])


@pytest.mark.parametrize("backend", _backends_here())
def test_a_rollout_inside_autocast_is_the_fp32_rollout(backend):
    # A caller training under autocast (its network in bf16) gets the rollout and gradients
    # of fp32, bit for bit: reference and analytic ran in bf16 (dHdq off by 8e-3). The
    # hand-written backwards also run in fp32 when called inside the context (the analytic
    # one raised a dtype error); PyTorch's own backward formulas, which the reference
    # backend's gradients are, follow autocast there (PyTorch advises against backward
    # inside autocast), so that case is the custom backends' only.
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    w, b = random_mlp(3, (16, 16), generator=torch.Generator().manual_seed(1), device=dev)
    net = torch.nn.Linear(5, 6).to(dev)              # makes (q0, p0): bf16 under autocast
    x = torch.randn(4, 5, device=dev)

    def run(amp, backward_inside=False):
        params = [t.detach().clone().requires_grad_(True) for t in (*w, *b, *net.parameters())]
        wts, bs, (nw, nb) = params[:3], params[3:6], params[6:]
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            bf = torch.bfloat16
            y = torch.nn.functional.linear(x.to(bf), nw.to(bf), nb.to(bf))
            assert y.dtype == bf
            y = y if amp else y.float()   # the cast the library makes under autocast
            q, p, d = leapfrog(y[:, :3], y[:, 3:], wts, bs, frames=5, backend=backend)
            loss = cyclic_loss(d) + q.square().mean() + p.mean()
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        return (q, p, d), [t.grad for t in params]

    want = run(False)
    cases = [run(True)] + ([run(True, backward_inside=True)] if backend != "reference" else [])
    for (q, p, d), grads in cases:
        assert q.dtype == p.dtype == d.dtype == torch.float32
        for got, expected in zip((q, p, d, *grads), (*want[0], *want[1])):
            # (reference leaves the output bias, on which nothing depends, without a grad)
            assert got is expected is None or torch.equal(got, expected)
    # outside autocast a state of another dtype than the weights' is still refused
    with pytest.raises(TypeError, match="dtype"):
        leapfrog(torch.zeros(2, 3, dtype=torch.bfloat16, device=dev),
                 torch.zeros(2, 3, dtype=torch.bfloat16, device=dev), w, b, frames=2,
                 backend=backend)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_autocast_casts_the_state_up_to_a_float64_network_in_its_scheme(backend):
    # Under autocast the rollout runs in the weights' dtype, float64 included, and a state
    # that a network made in bf16 or fp16 there is cast up to it (integrator.md, "Autocast"),
    # which without the cast is a dtype error; and the scheme asked for is the one run.
    # Oracle: the float64 reference on the same (rounded) state outside autocast, with an H
    # strong enough that the two schemes land far apart.
    gen = torch.Generator().manual_seed(12)
    w, b = random_mlp(3, (16, 24), dtype=torch.float64, generator=gen, scale=3.0)
    q0, p0 = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    for low in (torch.bfloat16, torch.float16):
        ql, pl = q0.to(low), p0.to(low)
        want = {}
        for scheme in ("official", "order2"):
            want[scheme] = leapfrog(ql.double(), pl.double(), w, b, dt=0.1, frames=4,
                                    backend="reference", scheme=scheme)
            with torch.autocast("cpu", dtype=low):
                got = leapfrog(ql, pl, w, b, dt=0.1, frames=4, backend=backend, scheme=scheme)
            for x, y in zip(got, want[scheme]):
                assert x.dtype == torch.float64, (low, scheme, x.dtype)
                torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9)   # measured 2e-10
        gap = (want["official"][0] - want["order2"][0]).abs().max()
        assert gap > 1e-3, gap      # the other scheme could not pass the check above


@pytest.mark.parametrize("backend,low", [(b, low) for b in _backends_here()
                                          for low in (torch.bfloat16, torch.float16)
                                          if b != "fused" or low == torch.bfloat16])
def test_a_low_precision_network_integrates_in_float32(backend, low):
    # A network kept in bf16/fp16 gets the float32 rollout rounded to its dtype: it ran in
    # bf16 before (1e-2 from float64 after 6 frames, no warning). Oracle: float64 on the same
    # (rounded) numbers; the only error left is the final rounding to the low dtype.
    dev = "cuda" if backend == "fused" and torch.cuda.is_available() else "cpu"
    w, b = random_mlp(3, (20, 24), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    q0, p0 = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    lw = [t.to(low).to(dev).requires_grad_(True) for t in w]
    lb = [t.to(low).to(dev).requires_grad_(True) for t in b]
    out = leapfrog(q0.to(low).to(dev), p0.to(low).to(dev), lw, lb, frames=6, backend=backend)
    exact = leapfrog(q0.to(low).double(), p0.to(low).double(), [t.detach().double().cpu()
                     for t in lw], [t.detach().double().cpu() for t in lb], frames=6,
                     backend="reference")
    unit = torch.finfo(low).eps            # one rounding of a value in [1, 2)
    for got, want in zip(out, exact):
        assert got.dtype == low
        err = ((got.double().cpu() - want).abs() / want.abs().clamp_min(1e-3)).max()
        assert err <= unit, f"{low} rollout off by {err:.2e} relative (one rounding: {unit})"
    # gradients arrive in the parameters' dtype: float32 gradients through the casts
    sum(t.float().sum() for t in out).backward()
    fw = [t.detach().float().requires_grad_(True) for t in lw]
    fb = [t.detach().float().requires_grad_(True) for t in lb]
    f32 = leapfrog(q0.to(low).float().to(dev), p0.to(low).float().to(dev), fw, fb, frames=6,
                   backend=backend)
    sum(t.to(low).float().sum() for t in f32).backward()
    for got, want in zip(lw + lb, fw + fb):
        if want.grad is None:      # reference leaves the output bias, which moves nothing
            assert got.grad is None
            continue
        assert got.grad.dtype == low and torch.equal(got.grad, want.grad.to(low))


@pytest.mark.parametrize("backend", ["reference", "analytic"])
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_a_low_precision_network_keeps_its_scheme(backend, low):
    # The bf16/fp16 path re-enters the dispatcher in float32: it must pass the caller's scheme
    # on. Oracle (the stated contract): the float32 rollout of the same rounded numbers, in
    # that scheme, rounded to the low dtype. dt = 0.3 so that the schemes differ after rounding.
    w, b = random_mlp(3, (16, 16), generator=torch.Generator().manual_seed(8))
    gen = torch.Generator().manual_seed(9)
    q0, p0 = torch.randn(4, 3, generator=gen).to(low), torch.randn(4, 3, generator=gen).to(low)
    w, b = [t.to(low) for t in w], [t.to(low) for t in b]
    up = [t.float() for t in w], [t.float() for t in b]
    for scheme in ("official", "order2"):
        got = leapfrog(q0, p0, w, b, dt=0.3, frames=6, backend=backend, scheme=scheme)
        want = leapfrog(q0.float(), p0.float(), *up, dt=0.3, frames=6, backend=backend,
                        scheme=scheme)
        for x, y in zip(got, want):
            assert x.dtype == low and torch.equal(x, y.to(low)), scheme


def test_torch_func_runs_reference_under_auto_and_refuses_the_others(mlp, monkeypatch):
    # analytic is a hand-written autograd Function without a vmap rule: torch.func failed
    # inside torch with a message naming neither the backend nor the way out.
    monkeypatch.setattr(dispatch, "_warned", set())
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    q0 = torch.randn(4, 3, dtype=torch.float64)
    p0 = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="torch.func.*running the reference backend"):
        jac = torch.func.jacrev(lambda q: leapfrog(q, p0, w, b, frames=3)[0])(q0)
    want = torch.autograd.functional.jacobian(
        lambda q: leapfrog(q, p0, w, b, frames=3, backend="reference")[0], q0)
    torch.testing.assert_close(jac, want, rtol=1e-12, atol=1e-12)
    for backend in ("analytic", "fused"):
        with pytest.raises(ValueError, match=f"backend='{backend}' cannot run here: torch.func"):
            torch.func.grad(lambda q: leapfrog(q, p0, w, b, frames=3,
                                               backend=backend)[0].sum())(q0)
    # outside a transform, auto is the analytic backend as before
    assert dispatch._resolve("auto", q0, w, "softplus") == "analytic"


def test_torch_func_transforms_compose_with_the_reference_rollout(mlp):
    # reference took dH/dx with autograd.grad on a detached leaf, which vmap, jacfwd and grad
    # w.r.t. the weights refuse ("requires_grad_() inside a functorch transform").
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    gen = torch.Generator().manual_seed(6)
    q0 = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    p0 = torch.randn(3, 3, dtype=torch.float64, generator=gen)

    def roll(q, weights=w, backend="reference", p=p0):
        return leapfrog(q, p, weights, b, frames=4, backend=backend)
    want_jac = torch.autograd.functional.jacobian(lambda q: roll(q)[0], q0)
    w0 = w[0].clone().requires_grad_(True)
    (want_gw,) = torch.autograd.grad(roll(q0, [w0, *w[1:]])[1].sum(), w0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # auto's one-time fallback warning
        for backend in ("reference", "auto"):
            jf = torch.func.jacfwd(lambda q: roll(q, backend=backend)[0])(q0)
            torch.testing.assert_close(jf, want_jac, rtol=1e-12, atol=1e-12)
            gw = torch.func.grad(lambda W0: roll(q0, [W0, *w[1:]], backend)[1].sum())(w[0])
            torch.testing.assert_close(gw, want_gw, rtol=1e-12, atol=1e-12)
            # vmap over single-row rollouts is the batched rollout
            rows = torch.func.vmap(lambda q, p: roll(q[None], backend=backend, p=p[None])[0][0])(
                q0, p0)
            torch.testing.assert_close(rows, roll(q0)[0], rtol=1e-12, atol=1e-12)
    # the batched jacobian vmaps the backward: reference takes it, analytic says it cannot
    jv = torch.autograd.functional.jacobian(lambda q: roll(q)[0], q0, vectorize=True)
    torch.testing.assert_close(jv, want_jac, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="analytic leapfrog backend's hand-written backward "
                                           "cannot be vmapped.*use backend='reference'"):
        torch.autograd.functional.jacobian(lambda q: roll(q, backend="analytic")[0], q0,
                                           vectorize=True)


def test_forward_mode_ad_gets_the_reference_tangents_or_a_clear_refusal(mlp, monkeypatch):
    # torch.autograd.forward_ad: reference dropped the tangents of inputs that needed no
    # gradient (it differentiated H at a detached leaf and detached its results), so the
    # rollout of a dual q0 came back with tangent None, no error; analytic and fused failed
    # inside torch ("You must implement the jvp function"), naming neither the backend nor
    # the way out. Oracle: torch.func.jvp, which runs reference's torch.func path.
    import torch.autograd.forward_ad as fwAD
    monkeypatch.setattr(dispatch, "_warned", set())
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    gen = torch.Generator().manual_seed(21)
    q0, p0, tq = (torch.randn(3, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    tw = torch.randn(w[1].shape, dtype=torch.float64, generator=gen)

    def roll(q, w1, backend="reference"):
        return leapfrog(q, p0, [w[0], w1, w[2]], b, frames=4, backend=backend)
    _, want = torch.func.jvp(roll, (q0, w[1]), (tq, tw))
    for backend in ("reference", "auto"):
        with fwAD.dual_level(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = roll(fwAD.make_dual(q0, tq), fwAD.make_dual(w[1], tw), backend)
            got = [fwAD.unpack_dual(x).tangent for x in out]
        assert all(g is not None for g in got), backend
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
        assert not any(x.requires_grad for x in out)
        if backend == "auto":
            assert [str(c.message) for c in caught] == [
                "leapfrog backend='auto': forward-mode AD (torch.autograd.forward_ad) cannot "
                "see through the analytic and fused backends' hand-written backwards; running "
                "the reference backend"]
    for backend in ("analytic", "fused"):
        with fwAD.dual_level(), pytest.raises(
                ValueError, match=rf"^backend='{backend}' cannot run here: forward-mode AD.*"
                                  r"use backend='reference'"):
            roll(q0, fwAD.make_dual(w[1], tw), backend)
    # a dual input that also needs a gradient: the backward runs through the same rollout
    x = q0.clone().requires_grad_(True)
    with fwAD.dual_level():
        q = roll(fwAD.make_dual(x, tq), w[1])[0]
        (g,) = torch.autograd.grad(fwAD.unpack_dual(q).primal.square().sum(), x)
    (want_g,) = torch.autograd.grad(roll(x, w[1])[0].square().sum(), x)
    torch.testing.assert_close(g, want_g, rtol=1e-12, atol=1e-12)


def test_triton_interpret_changed_after_import_is_named():
    # Triton reads TRITON_INTERPRET once, at import: setting it later made the fused kernels
    # fail inside Triton ("Cannot call @triton.jit'd outside of the scope of a kernel").
    pytest.importorskip("triton")
    code = ("import os, torch, triton\n"
            "from hgan.kernels import HamiltonianMLP\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "try:\n"
            "    HamiltonianMLP(3, hidden=16).rollout(torch.zeros(2, 3), torch.zeros(2, 3), 3,\n"
            "                                         backend='fused')\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TRITON_INTERPRET was set after triton was imported" in out.stdout, out.stdout


@pytest.mark.parametrize("doc", ["README.md", "docs/integrator.md"])
def test_the_integrator_examples_run_as_written(doc):
    # The library's first page: each self-contained Python block about hgan.kernels runs.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, doc)) as f:
        text = f.read()
    blocks = [blk for blk in text.split("```python\n")[1:]]
    blocks = [blk[:blk.index("```")] for blk in blocks]
    blocks = [blk for blk in blocks if "hgan.kernels" in blk]
    assert blocks, f"no hgan.kernels example in {doc}"
    for blk in blocks:
        exec(compile(blk, doc, "exec"), {"__name__": "__doc_example__"})


def test_torch_func_rollout_keeps_dhdq_the_first_half_step_gradient(mlp):
    # Under a torch.func transform the reference runs its explicit-graph rollout: dHdq (what
    # L_cyc reads) must still be dH/dq at (q_t, p_t), and its gradient that of the plain
    # rollout. Oracle for the value: autograd of H at fresh leaves at the returned states.
    from hgan.kernels.leapfrog.reference import mlp_energy
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    gen = torch.Generator().manual_seed(11)
    q0 = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    p0 = torch.randn(3, 3, dtype=torch.float64, generator=gen)

    def row(q, p):
        return tuple(x[0] for x in leapfrog(q[None], p[None], w, b, frames=4,
                                            backend="reference"))
    q, p, d = torch.func.vmap(row)(q0, p0)
    assert d.shape == (3, 3, 3)
    qt = q[:, :-1].reshape(-1, 3).clone().requires_grad_(True)
    energy = mlp_energy(torch.cat([qt, p[:, :-1].reshape(-1, 3)], 1), w, b, "softplus")
    (want,) = torch.autograd.grad(energy.sum(), qt)
    torch.testing.assert_close(d.reshape(-1, 3), want, rtol=1e-12, atol=1e-12)
    r = torch.randn(3, 3, 3, dtype=torch.float64, generator=gen)
    got = torch.func.grad(
        lambda x: (leapfrog(x, p0, w, b, frames=4, backend="reference")[2] * r).sum())(q0)
    x = q0.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((leapfrog(x, p0, w, b, frames=4, backend="reference")[2]
                                  * r).sum(), x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_torch_func_rollout_of_one_frame_has_an_empty_dhdq(mlp):
    # frames = 1 is the initial state alone under a torch.func transform too: dHdq [B, 0, k]
    # (integrator.md: dHdq [B, frames-1, k]), and the Jacobian of q with respect to q0 the
    # identity.
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    gen = torch.Generator().manual_seed(13)
    q0 = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    p0 = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    q, p, d = torch.func.vmap(lambda q, p: tuple(x[0] for x in leapfrog(
        q[None], p[None], w, b, frames=1, backend="reference")))(q0, p0)
    assert d.shape == (3, 0, 3) and torch.equal(q[:, 0], q0) and torch.equal(p[:, 0], p0)
    jac = torch.func.jacrev(lambda x: leapfrog(x, p0, w, b, frames=1, backend="reference")[0])(q0)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.equal(jac[:, 0], torch.einsum("ij,ac->iajc", eye, eye))   # [B, k, B, k]


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_one_frame_dhdq_is_a_tensor_of_its_own(mlp, backend):
    # A one-frame rollout's dHdq is empty, and an in-place op on it (a caller masking dHdq
    # before L_cyc) must leave the backward of q and p alone: returning the empty tensor
    # analytic also saves for its backward would make that backward refuse to run ("modified
    # by an inplace operation"). Oracle: q = q0 and p = p0, so d(sum q + sum p)/dq0 is ones.
    w, b = mlp
    q0 = torch.randn(4, 3, requires_grad=True)
    q, p, d = leapfrog(q0, torch.randn(4, 3), w, b, frames=1, backend=backend)
    assert d.shape == (4, 0, 3)
    d.mul_(0.5)
    (g,) = torch.autograd.grad(q.sum() + p.sum(), q0)
    assert torch.equal(g, torch.ones(4, 3))


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_a_bias_alone_requiring_grad_gets_its_gradient(mlp, backend):
    # Training only the biases (the weights frozen): the rollout must still be differentiable
    # w.r.t. them. Oracle: a float64 central difference on one entry.
    w, b = [t.double() for t in mlp[0]], [t.double() for t in mlp[1]]
    gen = torch.Generator().manual_seed(8)
    q0 = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    p0 = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    b0 = b[0].clone().requires_grad_(True)
    q, p, d = leapfrog(q0, p0, w, [b0, b[1], b[2]], frames=3, backend=backend)
    assert q.requires_grad and p.requires_grad and d.requires_grad
    (g,) = torch.autograd.grad(p.square().sum() + d.sum(), b0)
    eps, e = 1e-6, torch.zeros_like(b0)
    e[2] = eps

    def f(x):
        _, p, d = leapfrog(q0, p0, w, [x, b[1], b[2]], frames=3, backend="analytic")
        return p.square().sum() + d.sum()
    fd = (f(b[0] + e) - f(b[0] - e)) / (2 * eps)
    torch.testing.assert_close(g[2], fd, rtol=1e-6, atol=1e-9)


def test_the_submodules_import_by_every_spelling_though_the_function_shares_their_name():
    # `import hgan.kernels.leapfrog.analytic as A` resolves attribute by attribute, and
    # hgan.kernels.leapfrog is the function: it failed with "cannot import name 'analytic'
    # from 'leapfrog' (unknown location)". A fresh interpreter: in this one they are loaded.
    code = """
import sys
import hgan.kernels.leapfrog.analytic as A
import hgan.kernels as K
from hgan.kernels.leapfrog import reference
assert A is sys.modules["hgan.kernels.leapfrog.analytic"] is K.leapfrog.analytic
assert reference is sys.modules["hgan.kernels.leapfrog.reference"] is K.leapfrog.reference
import hgan.kernels.leapfrog.check as C          # one the package had not loaded before
assert C is K.leapfrog.check
assert callable(K.leapfrog) and K.leapfrog.__module__ == "hgan.kernels.leapfrog.dispatch"
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_an_in_place_change_of_the_output_is_refused_where_the_backend_saved_it():
    # As docs/integrator.md says: analytic (and fused) keep q, p, dHdq for the backward, so
    # autograd refuses a backward through an output changed in place; reference does not
    # save them and differentiates the changed value.
    w, b = random_mlp(2, (16, 16))
    for t in w + b:
        t.requires_grad_(True)
    q0 = torch.randn(3, 2)
    for backend, refused in (("reference", False), ("analytic", True)):
        q, p, d = leapfrog(q0, q0, w, b, frames=3, backend=backend)
        q.mul_(2)
        if refused:
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                q.sum().backward()
        else:
            q.sum().backward()
            assert w[0].grad is not None and float(w[0].grad.abs().sum()) > 0


def _strong_mlp(k=3, dtype=torch.float64):
    """An H whose schemes and activations part visibly at dt = 0.1 (weights 3x fan-in)."""
    return random_mlp(k, (16, 16), dtype=dtype, generator=torch.Generator().manual_seed(21),
                      scale=3.0)


def _energy_by_hand(x, weights, biases, activation):
    act = {"softplus": torch.nn.functional.softplus, "tanh": torch.tanh}[activation]
    h = act(x @ weights[0].T + biases[0])
    h = act(h @ weights[1].T + biases[1])
    return (h @ weights[2].T + biases[2])[:, 0]


def _order2_by_hand(q, p, weights, biases, dt, steps, activation="softplus"):
    """The spec's order2 step with autograd gradients of H written out above: the drift at
    q + dt/2 H_p(q, p), the last kick at p - dt H_q(q, p)."""
    def grad(q, p):
        x = torch.cat([q, p], 1).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_energy_by_hand(x, weights, biases, activation).sum(), x)
        return g[:, :q.shape[1]], g[:, q.shape[1]:]
    qs, ps = [q], [p]
    for _ in range(steps):
        hq, hp = grad(q, p)
        p_half, q_mid, p_pred = p - dt / 2 * hq, q + dt / 2 * hp, p - dt * hq
        q = q + dt * grad(q_mid, p_half)[1]
        p = p_half - dt / 2 * grad(q, p_pred)[0]
        qs.append(q)
        ps.append(p)
    return torch.stack(qs, 1), torch.stack(ps, 1)


@pytest.mark.parametrize("backend", ["reference", "analytic"])
def test_the_defaults_are_order2_at_the_datas_dt(backend):
    # leapfrog(...) and H.rollout(...) without dt or scheme: the spec's order2 at 0.05 s
    w, b = _strong_mlp()
    gen = torch.Generator().manual_seed(22)
    q0, p0 = (torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(2))
    want = _order2_by_hand(q0, p0, w, b, 0.05, 3)
    q, p, _ = leapfrog(q0, p0, w, b, frames=4, backend=backend)
    torch.testing.assert_close((q, p), want, rtol=1e-10, atol=1e-10)
    h = HamiltonianMLP(3, hidden=16).double()
    with torch.no_grad():
        for lin, wi, bi in zip(h.layers, w, b):
            lin.weight.copy_(wi)
            lin.bias.copy_(bi)
    torch.testing.assert_close(h.rollout(q0, p0, 4, backend=backend)[:2], want, rtol=1e-10,
                               atol=1e-10)
    # and the other scheme or step would be told apart here
    official = leapfrog(q0, p0, w, b, frames=4, backend=backend, scheme="official")[0]
    assert float((official - want[0]).abs().max()) > 1e-4
    assert float((_order2_by_hand(q0, p0, w, b, 0.1, 3)[0] - want[0]).abs().max()) > 1e-2


@pytest.mark.parametrize("scheme", ["order2", "official"])
@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_torch_func_rollout_is_the_plain_one_for_every_scheme_and_activation(scheme, activation):
    # Under a torch.func transform the reference runs its explicit-graph rollout: that one
    # must take the caller's scheme and activation too, not the defaults (the other tests
    # here ran order2 with softplus only, where the two coincide).
    w, b = _strong_mlp()
    gen = torch.Generator().manual_seed(23)
    q0, p0 = (torch.randn(3, 3, dtype=torch.float64, generator=gen) for _ in range(2))

    def roll(q, p, **kw):
        return leapfrog(q, p, w, b, frames=4, dt=0.1, backend="reference",
                        **{"scheme": scheme, "activation": activation, **kw})
    rows = torch.func.vmap(lambda q, p: tuple(x[0] for x in roll(q[None], p[None])))(q0, p0)
    torch.testing.assert_close(rows, roll(q0, p0), rtol=1e-12, atol=1e-12)
    other_scheme = roll(q0, p0, scheme={"order2": "official", "official": "order2"}[scheme])
    other_act = roll(q0, p0, activation={"softplus": "tanh", "tanh": "softplus"}[activation])
    for other in (other_scheme, other_act):
        assert float((other[0] - rows[0]).abs().max()) > 1e-2
