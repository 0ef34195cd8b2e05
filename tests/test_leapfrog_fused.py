"""Fused (Triton) leapfrog backend against the float64 reference.

The cases run in both regimes of the fused kernels: the tile layouts (tile.py, streamed.py;
forced here by setting fused.LATENCY_MAX_ROWS to 0) and the latency layout (latency.py, a
program per row, what B <= LATENCY_MAX_ROWS runs); the throughput layout (throughput.py, what
bf16x3 runs above it) has its own cases below. The interpreter walks the latency layout
one row at a time, so it takes the cases with few row-steps, plus its own odd shapes below.

Without a GPU the kernels run through the Triton interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1), so CI checks the real kernel code. The interpreter is slow, so the shapes
form a pairwise cover rather than the full product: each k in {1, 3, 10, 16}, each width in
{16, 32, 100, 128}, each frames in {2, 16, 64}, both activations, both forms, negative dt and
a batch that is not a multiple of the row block all appear.
"""
import contextlib
import os
import types
import warnings

import pytest
import torch

from hgan.kernels import HamiltonianMLP, leapfrog
from hgan.kernels.leapfrog import dispatch, fused
from hgan.kernels.leapfrog.check import (compare_to_reference, random_mlp, rel_err,
                                         rollout_and_grads)

pytestmark = [pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or the Triton interpreter"), pytest.mark.usefixtures("one_thread")]
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from hgan.kernels.leapfrog import ops, throughput  # noqa: E402  (import triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The throughput layout's narrowest layers as shipped (what a GPU runs it from)
SHIPPED_MIN_WIDTHS = (fused.THROUGHPUT_MIN_H1, fused.THROUGHPUT_MIN_H2)


def _any_throughput_width(monkeypatch):
    monkeypatch.setattr(fused, "THROUGHPUT_MIN_H1", 16)
    monkeypatch.setattr(fused, "THROUGHPUT_MIN_H2", 16)


@pytest.fixture(autouse=True)
def _throughput_at_cheap_widths(monkeypatch):
    # The interpreter computes the throughput layout exactly at any width, and walks a 64-wide
    # one in a fraction of a 128-wide one's time: the tests below take it at any width there
    # (64 on the wider layer). A GPU runs it from SHIPPED_MIN_WIDTHS (fused.THROUGHPUT_MIN_H1
    # says why).
    if DEVICE == "cpu":
        _any_throughput_width(monkeypatch)


# (B, k, width, activation, separable, frames, dt, scheme): 23 and 19 are not multiples of the
# block (16 rows; 23 fills one and part of another); width 100 is not a power of two (padded
# to 128). Both schemes run with a general H (where they differ) and a separable one. The
# long rollout (48 frames) is a narrow case: the interpreter's time grows with width x frames,
# and the width-128 cases at 8 frames kept the suite near its 10-minute budget on 2 cores. The
# long rollout runs in one scheme (its step indexing does not depend on it; both schemes run
# at 8 and 16 frames).
CASES = [
    (5, 1, 16, "softplus", False, 2, 0.05, "order2"),
    (19, 3, 32, "tanh", True, 16, -0.05, "official"),
    (23, 10, 100, "softplus", True, 8, 0.05, "order2"),
    (9, 16, 128, "tanh", False, 8, 0.1, "order2"),
    (9, 16, 128, "tanh", False, 8, 0.1, "official"),
    (6, 3, 16, "softplus", False, 48, -0.1, "official"),
    (3, 10, 100, "tanh", False, 2, -0.05, "official"),
]


def _model_params(k, width, activation, separable, seed):
    torch.manual_seed(seed)
    m = HamiltonianMLP(k, hidden=width, activation=activation, separable=separable)
    w, b = m.weights_and_biases()
    return [x.detach().to(DEVICE) for x in w], [x.detach().to(DEVICE) for x in b]


@pytest.fixture
def tile(monkeypatch):
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)


REGIME_CASES = [(regime, *case) for case in CASES
                for regime in ("tile",) + (("latency",) if case[0] * (case[5] - 1) <= 150 else ())]


@pytest.mark.parametrize("layout,B,k,width,activation,separable,frames,dt,scheme", REGIME_CASES)
def test_fused_matches_float64_reference(monkeypatch, layout, B, k, width, activation,
                                         separable, frames, dt, scheme):
    if layout == "tile":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    weights, biases = _model_params(k, width, activation, separable, seed=B + k)
    gen = torch.Generator().manual_seed(B)
    q0 = torch.randn(B, k, generator=gen).to(DEVICE)
    p0 = torch.randn(B, k, generator=gen).to(DEVICE)
    errs = compare_to_reference(q0, p0, weights, biases, dt, frames, activation, "fused",
                                scheme=scheme)
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}  # `not <=` also catches NaN
    assert not bad, f"fused vs float64 reference, rel err > 1e-4: {bad}"


# layout -> (widths, precision, tolerance, what fused._kernels is asked for): each layout has
# its own forward step per scheme, tile.py's register-resident one (chunk 0) and
# throughput.py's hidden-major one included; that one takes bf16x3 from width 64 (within
# 1e-4 here with the GPU's rounding of the split, test_the_bf16x3_split_rounds_to_nearest_...)
SCHEME_LAYOUTS = {"tile": ((16, 24), "ieee", 1e-4, 16),
                  "latency": ((16, 24), "ieee", 1e-4, "latency"),
                  "resident": ((16, 24), "ieee", 1e-4, 0),
                  "throughput": ((16, 64), "bf16x3", 1e-4, "throughput")}


def _force_layout(monkeypatch, layout):
    """Make the dispatch run SCHEME_LAYOUTS' `layout`; the layouts launched from here on."""
    if layout != "latency":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    if layout == "resident":
        monkeypatch.setattr(fused, "_chunk", lambda h1, h2: 0)
    return _layouts_run(monkeypatch)


# sigmoid(-100) = 1 / (1 + exp(100)) = 1 / inf = 0, as on the GPU; numpy says it overflowed
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("activation, shift", [("softplus", 100.0), ("tanh", 50.0)])
@pytest.mark.parametrize("layout", list(SCHEME_LAYOUTS))
def test_saturated_activations_stay_finite_and_exact(monkeypatch, layout, activation, shift):
    # Layer-1 pre-activations of +-100 (softplus) or +-50 (tanh), half of the units each way:
    # where a naive log(1 + exp(a)) or (e^2a - 1) / (e^2a + 1) overflows to inf and NaN in
    # float32. The other cases' Hamiltonians keep |a| to a few units, where every form agrees.
    widths, precision, tol, want = SCHEME_LAYOUTS[layout]
    seen = _force_layout(monkeypatch, layout)
    gen = torch.Generator().manual_seed(12)
    w, b = random_mlp(3, widths, generator=gen)
    b[0] = b[0] + shift * torch.where(torch.arange(widths[0]) % 2 == 0, 1.0, -1.0)
    w, b = [x.to(DEVICE) for x in w], [x.to(DEVICE) for x in b]
    q0, p0 = (torch.randn(3, 3, generator=gen).to(DEVICE) for _ in range(2))
    errs = compare_to_reference(q0, p0, w, b, 0.05, 4, activation, "fused",
                                precision=precision)
    assert seen[0] == want
    bad = {n: e for n, e in errs.items() if not e <= tol}      # NaN fails too
    assert not bad, bad


@pytest.mark.parametrize("layout", list(SCHEME_LAYOUTS))
def test_fused_follows_its_scheme_where_the_schemes_differ(monkeypatch, layout):
    # The cases above use PyTorch-initialised Hamiltonians, under which a state moves little:
    # there a kernel running the other scheme stays within 1e-4 on the trajectory (only the
    # weight gradients give it away). Here H is strong enough that the two schemes' trajectories
    # differ by far more than the tolerance, and each is checked on the displacement from
    # frame 0, not against the size of the state. (Without the resident and throughput cases
    # a step of theirs evaluated at a wrong point -- official's last kick at (q_t, p_t) instead
    # of (q_t+1, p_half), order2's drift at q_t instead of q_mid -- passed every test.)
    widths, precision, tol, want = SCHEME_LAYOUTS[layout]
    seen = _force_layout(monkeypatch, layout)
    gen = torch.Generator().manual_seed(11)
    w64, b64 = random_mlp(3, widths, dtype=torch.float64, generator=gen, scale=3.0)
    q0, p0 = torch.randn(3, 3, generator=gen), torch.randn(3, 3, generator=gen)
    moved = {}
    for scheme in ("order2", "official"):
        with torch.no_grad():
            ref_q, _, _ = leapfrog(q0.double(), p0.double(), w64, b64, dt=0.1, frames=4,
                                   activation="softplus", backend="analytic", scheme=scheme)
        moved[scheme] = ref_q - ref_q[:, :1]
    gap = float((moved["order2"] - moved["official"]).norm() / moved["order2"].norm())
    assert gap > 1e-2, gap      # the schemes really differ here (about 0.04)
    weights = [w.float().to(DEVICE) for w in w64]
    biases = [b.float().to(DEVICE) for b in b64]
    for scheme in ("order2", "official"):
        with torch.no_grad():
            q, _, _ = leapfrog(q0.to(DEVICE), p0.to(DEVICE), weights, biases, dt=0.1, frames=4,
                               activation="softplus", backend="fused", scheme=scheme,
                               precision=precision)
        d = (q - q[:, :1]).double().cpu()
        err = float((d - moved[scheme]).norm() / moved[scheme].norm())
        assert err <= tol, (scheme, err)
        errs = compare_to_reference(q0.to(DEVICE), p0.to(DEVICE), weights, biases, 0.1, 4,
                                    "softplus", "fused", scheme=scheme, precision=precision)
        bad = {n: e for n, e in errs.items() if not e <= tol}
        assert not bad, (scheme, bad)
    assert set(seen) == {want}, seen


@pytest.mark.parametrize("layout", list(SCHEME_LAYOUTS))
def test_order2_steps_backwards_in_time_in_every_layout(monkeypatch, layout):
    # dt < 0 in the order2 step, in each layout's own kernels: the cases above run a
    # negative dt only with "official" outside the latency layout, where q_mid and p_pred
    # (order2's points, dt/2 and dt away) do not exist, so a kernel taking |dt| for them
    # passed. H strong enough that the midpoint's side matters; every output and gradient
    # against the float64 reference.
    widths, precision, tol, want = SCHEME_LAYOUTS[layout]
    seen = _force_layout(monkeypatch, layout)
    gen = torch.Generator().manual_seed(12)
    w, b = random_mlp(3, widths, generator=gen, scale=3.0)
    w, b = [x.to(DEVICE) for x in w], [x.to(DEVICE) for x in b]
    q0, p0 = (torch.randn(3, 3, generator=gen).to(DEVICE) for _ in range(2))
    errs = compare_to_reference(q0, p0, w, b, -0.1, 3, "softplus", "fused", scheme="order2",
                                precision=precision)
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, (layout, bad)
    assert set(seen) == {want}, seen


@pytest.mark.parametrize("chunk,scheme,activation", [
    (0, "order2", "softplus"), (16, "official", "tanh"), (32, "order2", "tanh"),
    (16, "order2", "softplus")])
def test_resident_and_streamed_layouts_match_float64_reference(tile, monkeypatch, chunk, scheme,
                                                               activation):
    # chunk 0: weights held in registers (tile.py); chunk > 0: streamed.py, walking layer 1
    # in chunks of that many hidden units and accumulating weight gradients in per-program
    # slabs. Widths 40, 100 pad to 64, 128: several chunks, and H1 != H2.
    monkeypatch.setattr(fused, "_chunk", lambda h1, h2: chunk)
    gen = torch.Generator().manual_seed(chunk + len(scheme))
    weights, biases = random_mlp(3, (40, 100), generator=gen)
    weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
    q0 = torch.randn(19, 3, generator=gen).to(DEVICE)
    p0 = torch.randn(19, 3, generator=gen).to(DEVICE)
    errs = compare_to_reference(q0, p0, weights, biases, 0.05, 5, activation, "fused",
                                scheme=scheme)
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"fused (chunk {chunk}) vs float64 reference, rel err > 1e-4: {bad}"


@pytest.mark.parametrize("chunk,widths,precision", [
    (0, (16, 16), "tf32x3"), (16, (40, 100), "tf32x3"), (16, (40, 100), "tf32"),
    (0, (16, 16), "bf16x3"), (16, (40, 100), "bf16x3")])
def test_tensor_core_precisions_run_in_both_layouts(tile, monkeypatch, chunk, widths,
                                                    precision):
    # The interpreter computes tf32 dots in fp32, so on CPU this checks the plumbing (the flag
    # reaches every dot of both layouts and both kernels) at the fp32 tolerance. bf16x3 runs
    # its real split there (products of the bf16 parts in fp32, exact; rounded as the GPU
    # rounds: test_the_bf16x3_split_rounds_to_nearest_as_the_gpu_does), so its accuracy is
    # tested here too, at 1e-4. On a GPU the
    # dots are real: tf32x3 keeps the contract, one-pass tf32 (10-bit operands) only a loose
    # tolerance; bench/gpu/leapfrog_table.py records every error. (The resident layout runs at
    # width 16: at width 128 its tf32x3 forward asks for 328 KB of shared memory on sm_90.)
    monkeypatch.setattr(fused, "_chunk", lambda h1, h2: chunk)
    monkeypatch.setattr(fused, "THROUGHPUT_PRECISIONS", ())   # bf16x3 in the tile layouts
    gen = torch.Generator().manual_seed(7)
    weights, biases = random_mlp(3, widths, generator=gen)
    weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
    q0 = torch.randn(19, 3, generator=gen).to(DEVICE)
    p0 = torch.randn(19, 3, generator=gen).to(DEVICE)
    # 3 frames: two steps carry the loop and every gradient; under the interpreter each step
    # of the bf16x3 split at width 128 costs seconds
    launched = []
    real_launch = fused._launch

    def spy(kernel, grid, *args, **kwargs):    # the flag must reach every kernel it launches
        launched.append(kwargs.get("PREC"))
        return real_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(fused, "_launch", spy)
    errs = compare_to_reference(q0, p0, weights, biases, 0.05, 3, "tanh", "fused",
                                precision=precision)
    # forward and backward; the interpreter runs bf16x3 as its fp32-product emulation
    want = "bf16x3-emulated" if precision == "bf16x3" and dispatch._interpreting() else precision
    assert launched and set(launched) == {want}, launched
    tol = 5e-3 if precision == "tf32" and DEVICE == "cuda" else 1e-4   # the contract's bounds
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"fused {precision} (chunk {chunk}) vs float64, rel err > {tol}: {bad}"


def _kernel_too_big_for_the_gpu(monkeypatch, which):
    """Make the forward or backward kernel fail at launch as Triton does on a GPU with less
    shared memory than the config needs (the interpreter has no such limit)."""
    from triton.runtime.errors import OutOfResources
    real = fused._kernels

    class Refused:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(300_000, 232_448, "shared memory")
            return launch

    def kernels(layout):
        fwd, bwd = real(layout)
        return (Refused(), bwd) if which == "fwd" else (fwd, Refused())
    monkeypatch.setattr(fused, "_kernels", kernels)


def _layouts_run(monkeypatch):
    """The layouts whose kernels are launched from here on, in order."""
    real, seen = fused._kernels, []

    def kernels(layout):
        seen.append(layout)
        return real(layout)
    monkeypatch.setattr(fused, "_kernels", kernels)
    return seen


# regime -> (widths, precision, tolerance against analytic): the throughput layout takes
# bf16x3 from width 64; what it computed before the fallback is bf16x3's, 1e-4-close
FALLBACK_REGIMES = {"latency": ((16, 16), "ieee", 1e-5), "tile": ((16, 16), "ieee", 1e-5),
                    "throughput": ((64, 64), "bf16x3", 1e-4)}


@pytest.mark.parametrize("which", ["fwd", "bwd"])
@pytest.mark.parametrize("regime", list(FALLBACK_REGIMES))
def test_kernel_that_does_not_fit_the_gpu_falls_back_to_analytic_under_auto(monkeypatch, regime,
                                                                            which):
    if regime != "latency":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    widths, precision, tol = FALLBACK_REGIMES[regime]
    seen = _layouts_run(monkeypatch)
    _kernel_too_big_for_the_gpu(monkeypatch, which)
    monkeypatch.setitem(dispatch._auto_choice, torch.device(DEVICE).type, "fused")
    monkeypatch.setattr(dispatch, "_warned", set())
    gen = torch.Generator().manual_seed(3)
    w, b = random_mlp(3, widths, generator=gen)
    w, b = [x.to(DEVICE) for x in w], [x.to(DEVICE) for x in b]
    q0, p0 = (torch.randn(5, 3, generator=gen).to(DEVICE) for _ in range(2))
    cot = [torch.randn(s, generator=gen).to(DEVICE) for s in [(5, 4, 3), (5, 4, 3), (5, 3, 3)]]
    with pytest.warns(UserWarning, match="does not fit this GPU.*shared memory"):
        outs, grads = rollout_and_grads(q0, p0, w, b, 0.05, 4, "softplus", "auto", cot,
                                        precision=precision)
    assert seen[0] == (regime if regime != "tile" else fused._chunk(16, 16))
    ref_outs, ref_grads = rollout_and_grads(q0, p0, w, b, 0.05, 4, "softplus", "analytic", cot)
    for x, y in zip(outs + grads, ref_outs + ref_grads):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol / 10)
    with warnings.catch_warnings():
        # one warning per reason, not one per call (UserWarning: the fallback's own; a
        # dependency's DeprecationWarning, such as triton 3.6's interpreter under numpy 2.3,
        # is not this test's business)
        warnings.simplefilter("error", UserWarning)
        rollout_and_grads(q0, p0, w, b, 0.05, 4, "softplus", "auto", cot, precision=precision)
    # asked for explicitly, fused says why it cannot run instead of falling back
    with pytest.raises((ValueError, RuntimeError), match="does not fit this GPU"):
        rollout_and_grads(q0, p0, w, b, 0.05, 4, "softplus", "fused", cot, precision=precision)


def test_shape_past_int32_offsets_falls_back_to_analytic_under_auto(monkeypatch):
    # B * frames * k past the kernels' int32 offsets (the limit lowered here so that a small
    # shape reaches it) is a config fused cannot run: analytic under auto with a one-time
    # warning, a ValueError naming int32 for backend="fused". (It raised under auto too.)
    monkeypatch.setattr(fused, "INT32_OFFSETS", 5 * 4 * 3)
    monkeypatch.setitem(dispatch._auto_choice, torch.device(DEVICE).type, "fused")
    monkeypatch.setattr(dispatch, "_warned", set())
    gen = torch.Generator().manual_seed(8)
    w, b = random_mlp(3, (16, 16), generator=gen)
    w, b = [x.to(DEVICE) for x in w], [x.to(DEVICE) for x in b]
    q0, p0 = (torch.randn(5, 3, generator=gen).to(DEVICE) for _ in range(2))
    with pytest.warns(UserWarning, match="int32"):
        outs = leapfrog(q0, p0, w, b, dt=0.05, frames=4, backend="auto")
    ref = leapfrog(q0, p0, w, b, dt=0.05, frames=4, backend="analytic")
    for x, y in zip(outs, ref):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="int32"):
        leapfrog(q0, p0, w, b, dt=0.05, frames=4, backend="fused")
    assert leapfrog(q0[:4], p0[:4], w, b, dt=0.05, frames=4, backend="fused")[0].shape[0] == 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("regime", list(FALLBACK_REGIMES))
def test_fused_forward_backward_replays_from_a_cuda_graph(monkeypatch, regime):
    # The captured training step records the integrator with it: each layout's forward +
    # backward must record into a CUDA graph (no host reads, no value-dependent allocation),
    # and a replay on new values in the same tensors must give what an eager call gives.
    if regime != "latency":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    widths, precision, _ = FALLBACK_REGIMES[regime]
    if regime == "throughput":
        widths = (100, 64)          # padded 128/64: where a GPU runs it (SHIPPED_MIN_WIDTHS)
    seen = _layouts_run(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    w, b = random_mlp(3, widths, generator=gen)
    leaves = [t.to("cuda").requires_grad_(True)
              for t in (torch.randn(37, 3, generator=gen), torch.randn(37, 3, generator=gen),
                        *w, *b)]

    def step():
        q, p, d = leapfrog(leaves[0], leaves[1], leaves[2:5], leaves[5:], dt=0.05, frames=6,
                           backend="fused", precision=precision)
        grads = torch.autograd.grad(q.square().sum() + p.sum() + d.sum(), leaves,
                                    allow_unused=True)
        return [t for t in (q, p, d, *grads) if t is not None]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    before = [t.clone() for t in static]
    with torch.no_grad():
        for t in leaves:
            t.mul_(0.9).add_(0.05 * torch.randn(t.shape, generator=gen).to("cuda"))
    graph.replay()
    eager = step()
    assert seen[0] == (regime if regime != "tile" else fused._chunk(*widths))
    assert not torch.allclose(static[0], before[0])       # the replay read the new values
    for x, y in zip(static, eager):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [24, 8])     # not a power of two; one under tl.dot's 16
def test_streamed_layout_refuses_a_chunk_tl_dot_cannot_take(tile, monkeypatch, chunk):
    monkeypatch.setattr(fused, "_chunk", lambda h1, h2: chunk)
    w, b = random_mlp(3, (64, 64), device=DEVICE)
    q0 = torch.randn(2, 3, device=DEVICE)
    with pytest.raises(ValueError, match="chunk must be 0 or a power of two >= 16"):
        leapfrog(q0, q0, w, b, frames=2, backend="fused")


@pytest.mark.parametrize("layout", ["tile", "latency"])
def test_fused_drops_padded_gradients(monkeypatch, layout):
    # Width 100 pads to 128 and k = 3 to 16: softplus(0) = log 2 makes the padded hidden units
    # nonzero, so their weight gradients are nonzero inside the kernel and must be sliced off,
    # and the padding must not leak into the real units' values or gradients.
    if layout == "tile":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    weights, biases = _model_params(3, 100, "softplus", False, seed=1)
    q0, p0 = torch.randn(4, 3, device=DEVICE), torch.randn(4, 3, device=DEVICE)
    # every gradient (q0, p0, each weight and bias) against float64 autograd, which has no
    # padding: a padded gradient left in would not even have the shape to compare
    errs = compare_to_reference(q0, p0, weights, biases, 0.05, 3, "softplus", "fused")
    assert {"d_q0", "d_p0", "d_W0", "d_W1", "d_W2", "d_b0", "d_b1", "d_b2"} <= set(errs), errs
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"fused vs float64 reference, rel err > 1e-4: {bad}"


def test_explicit_fused_outside_contract_raises():
    q0 = torch.randn(2, 3, device=DEVICE)
    for widths, act, msg in [((16, 16, 16), "softplus", "depth"), ((16,), "softplus", "depth"),
                             ((8, 8), "softplus", "widths"), ((16, 16), "relu", "activations")]:
        w, b = random_mlp(3, widths, device=DEVICE)
        with pytest.raises(ValueError, match=msg):
            leapfrog(q0, q0, w, b, frames=2, activation=act, backend="fused")
    w, b = random_mlp(3, (16, 16), dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float32"):
        leapfrog(q0.double(), q0.double(), w, b, frames=2, backend="fused")
    w, b = random_mlp(33, (16, 16), device=DEVICE)     # past the backward's shared memory
    q33 = torch.randn(2, 33, device=DEVICE)
    with pytest.raises(ValueError, match="k <= 32"):
        leapfrog(q33, q33, w, b, frames=2, backend="fused")


def test_auto_falls_back_with_one_warning(monkeypatch):
    # Pretend auto chose fused for this device; an unsupported depth then runs analytic.
    monkeypatch.setitem(dispatch._auto_choice, torch.device(DEVICE).type, "fused")
    monkeypatch.setattr(dispatch, "_warned", set())
    w, b = random_mlp(2, (16, 16, 16), device=DEVICE)
    q0 = torch.randn(3, 2, device=DEVICE)
    with pytest.warns(UserWarning, match="running the analytic backend"):
        out = leapfrog(q0, q0, w, b, frames=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = leapfrog(q0, q0, w, b, frames=3)
    ref = leapfrog(q0, q0, w, b, frames=3, backend="analytic")
    for x, y, z in zip(out, again, ref):
        assert torch.equal(x, z) and torch.equal(y, z)


def test_fused_double_backward_raises():
    weights, biases = _model_params(2, 16, "softplus", False, seed=3)
    q0 = torch.randn(3, 2, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order"):
        q, _, _ = leapfrog(q0, q0.detach(), weights, biases, frames=3, backend="fused")
        torch.autograd.grad(q.sum(), q0, create_graph=True)


def test_fused_vmapped_backward_is_refused_by_name():
    # jacobian(vectorize=True) and autograd.grad(is_grads_batched=True) vmap the backward.
    # The fused backward failed inside Triton's launch ("Cannot access storage of
    # BatchedTensorImpl") instead of naming the backend and the way out, as analytic does.
    weights, biases = _model_params(2, 16, "softplus", False, seed=4)
    q0 = torch.randn(2, 2, device=DEVICE)
    p0 = torch.randn(2, 2, device=DEVICE)

    def roll(q, backend="fused"):
        return leapfrog(q, p0, weights, biases, frames=2, backend=backend)[1]
    msg = "fused leapfrog backend's hand-written backward cannot be vmapped.*backend='reference'"
    with pytest.raises(RuntimeError, match=msg):
        torch.autograd.functional.jacobian(roll, q0, vectorize=True)
    q = q0.clone().requires_grad_(True)
    out = roll(q)
    with pytest.raises(RuntimeError, match=msg):
        torch.autograd.grad(out, q, torch.randn(3, *out.shape, device=DEVICE),
                            is_grads_batched=True)
    # the unbatched jacobian of the fused rollout is the float64 reference's
    want = torch.autograd.functional.jacobian(
        lambda q: leapfrog(q, p0.double(), [w.double() for w in weights],
                           [b.double() for b in biases], frames=2, backend="reference")[1],
        q0.double())
    got = torch.autograd.functional.jacobian(roll, q0)
    assert ((got.double() - want).norm() / want.norm()).item() <= 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real-CUDA check needs a GPU")
@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("B,k,widths", [(37, 3, (128, 128)), (1031, 10, (100, 64))])
def test_throughput_layout_matches_float64_on_cuda(monkeypatch, B, k, widths, merged):
    # what the interpreter cannot show: the compiled wgmma kernels at the widths a GPU runs,
    # plain and merged (fused.THROUGHPUT_MERGED)
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    monkeypatch.setattr(fused, "THROUGHPUT_MERGED", merged)
    seen = _layouts_run(monkeypatch)
    gen = torch.Generator().manual_seed(B)
    weights, biases = random_mlp(k, widths, generator=gen, device="cuda")
    q0, p0 = (torch.randn(B, k, generator=gen).cuda() for _ in range(2))
    errs = compare_to_reference(q0, p0, weights, biases, 0.05, 6, "softplus", "fused",
                                precision="bf16x3")
    assert seen == ["throughput", "throughput"]
    assert all(e <= 1e-4 for e in errs.values()), errs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real-CUDA check needs a GPU")
@pytest.mark.parametrize("B,scheme", [(64, "order2"), (1000, "order2"), (1000, "official")])
def test_fused_matches_analytic_on_cuda(B, scheme):
    weights, biases = _model_params(10, 100, "softplus", False, seed=0)
    q0, p0 = torch.randn(B, 10, device="cuda"), torch.randn(B, 10, device="cuda")
    errs = compare_to_reference(q0, p0, weights, biases, 0.05, 16, "softplus", "fused",
                                scheme=scheme)
    assert all(e <= 1e-4 for e in errs.values()), errs
    a = leapfrog(q0, p0, weights, biases, frames=16, backend="analytic", scheme=scheme)
    f = leapfrog(q0, p0, weights, biases, frames=16, backend="fused", scheme=scheme)
    for x, y in zip(f, a):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real-CUDA check needs a GPU")
@pytest.mark.parametrize("separable", [False, True])
def test_a_graphed_rollout_replays_the_eager_call_on_cuda(separable):
    # README's recipe for a training loop of one's own: the rollout captured once with
    # torch.cuda.make_graphed_callables, then replayed. It must give the eager call's
    # trajectory and gradients (the eager call is checked against float64 above), also after
    # an optimizer has stepped the weights in place, on new inputs each time.
    import copy

    class Rollout(torch.nn.Module):
        def __init__(self, H):
            super().__init__()
            self.H = H

        def forward(self, q0, p0):
            return self.H.rollout(q0, p0, frames=16)

    def states():
        return tuple(torch.randn(16, 10, device="cuda", requires_grad=True) for _ in range(2))

    torch.manual_seed(0)
    H = HamiltonianMLP(10, hidden=100, separable=separable).cuda()
    H_eager = copy.deepcopy(H)
    graphed = torch.cuda.make_graphed_callables(Rollout(H), states())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (H, H_eager)]
    first = next(H.parameters()).detach().clone()
    for _ in range(3):
        q0, p0 = states()
        q0e, p0e = (t.detach().clone().requires_grad_(True) for t in (q0, p0))
        got, want = graphed(q0, p0), H_eager.rollout(q0e, p0e, frames=16)
        for x, y in zip(got, want):
            assert torch.allclose(x, y, rtol=1e-6, atol=1e-6), (x - y).abs().max()
        for q, p, d in (got, want):
            (q.sum() + p.square().sum() + d.abs().sum()).backward()
        pairs = [(q0.grad, q0e.grad), (p0.grad, p0e.grad)] + [
            (a.grad, b.grad) for a, b in zip(H.parameters(), H_eager.parameters())]
        for g, w in pairs:
            assert g is not None and torch.allclose(g, w, rtol=1e-5, atol=1e-6)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    assert not torch.equal(first, next(H.parameters()))   # the steps moved the weights


@triton.jit
def _split_probe(a_ptr, out_ptr, PREC: tl.constexpr):
    # a @ I through ops._dot and through throughput.py's weight product: with b = I the
    # split's products are exact (b_lo = 0), so the result is hi(a) + lo(a), exactly
    i = tl.arange(0, 16)
    a = tl.load(a_ptr + i[:, None] * 16 + i[None, :])
    eye = (i[:, None] == i[None, :]).to(tl.float32)
    tl.store(out_ptr + i[:, None] * 16 + i[None, :], ops._dot(a, eye, PREC))
    tl.store(out_ptr + 256 + i[:, None] * 16 + i[None, :],
             throughput._w_dot(throughput._split(a, PREC), eye, PREC))


def test_the_bf16x3_split_rounds_to_nearest_as_the_gpu_does():
    # On a GPU the split's fp32 -> bf16 casts round to nearest even (cvt.rn.bf16.f32 in the
    # sm_90 PTX of every bf16x3 kernel); the Triton interpreter's x.to(tl.bfloat16)
    # truncates, so the emulated split ran another, 4-5x less accurate, arithmetic: on the
    # inputs of the test below it missed the 1e-4 contract (1.6e-4, 1.15e-4) where the GPU's
    # rounding gives 3.6e-5 and 2.9e-5. hi(a) + lo(a) must be what torch's rounding gives.
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(16, 16, generator=gen)
         * 10.0 ** torch.randint(-6, 6, (16, 16), generator=gen)).to(DEVICE)
    a[0, :4] = torch.tensor([1.013, -1.013, 1.0 + 3 * 2 ** -8, 0.1])     # RNE != truncation
    hi = a.to(torch.bfloat16).float()
    want = hi + (a - hi).to(torch.bfloat16).float()
    out = torch.empty(2, 16, 16, device=DEVICE)
    prec = "bf16x3-emulated" if dispatch._interpreting() else "bf16x3"
    _split_probe[(1,)](a, out, PREC=prec)
    assert torch.equal(out[0], want) and torch.equal(out[1], want), (out - want).abs().max()


@pytest.mark.parametrize("widths, layout, err", [((32, 16), 16, 3.55e-5),     # streamed
                                                 ((64, 64), "throughput", 2.87e-5)])
def test_bf16x3_error_where_a_truncating_split_missed_the_contract(tile, widths, layout, err):
    # k = 1, tanh: the inputs on which the interpreter's truncating bf16 cast (see the test
    # above) made bf16x3 miss 1e-4 (1.6e-4 and 1.15e-4 in d_b0; 11 of 24 such inputs, up to
    # 2.2e-4). With the GPU's rounding the split stays within it there (4.4e-5 at worst over
    # the 24); ieee on the same inputs is within 1.4e-6. bf16x3 stays an opt-in all the same:
    # its on-GPU error (wgmma's own accumulation) is unmeasured (bench/gpu/leapfrog_table.py
    # measures it and only then reports it).
    assert fused._layout(5, 4, *widths, "bf16x3") == layout
    gen = torch.Generator().manual_seed(1)
    weights, biases = random_mlp(1, widths, generator=gen)
    q0, p0 = torch.randn(5, 1, generator=gen), torch.randn(5, 1, generator=gen)
    weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
    q0, p0 = q0.to(DEVICE), p0.to(DEVICE)
    errs = {prec: max(compare_to_reference(q0, p0, weights, biases, 0.1, 4, "tanh", "fused",
                                           precision=prec).values())
            for prec in ("ieee", "bf16x3")}
    assert errs["ieee"] <= 1e-4 and errs["bf16x3"] <= 1e-4, errs
    if dispatch._interpreting():                  # the emulated split, deterministic on CPU
        assert errs["bf16x3"] == pytest.approx(err, rel=0.1), errs
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for doc in ("README.md", "docs/integrator.md"):
        with open(os.path.join(root, doc)) as f:
            text = " ".join(f.read().split())
        for claim in ("it does not keep the 1e-4 contract", "does **not** keep the 1e-4"):
            assert claim not in text, (doc, claim)
        if doc.startswith("docs/"):               # the design notes say why the earlier
            assert "truncat" in text, doc         # figures were wrong (the README need not)


@pytest.mark.parametrize("B,k,widths,frames,scheme,activation", [
    (1, 1, (40, 100), 2, "order2", "softplus"),    # one row, one coordinate, H1 != H2
    (7, 3, (100, 40), 5, "official", "tanh"),      # more rows than programs: grid-stride
])
def test_latency_layout_odd_shapes_match_float64_reference(B, k, widths, frames, scheme,
                                                           activation):
    assert fused._layout(B, frames, 128, 128) == "latency"
    gen = torch.Generator().manual_seed(B + k)
    weights, biases = random_mlp(k, widths, generator=gen)
    weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
    q0 = torch.randn(B, k, generator=gen).to(DEVICE)
    p0 = torch.randn(B, k, generator=gen).to(DEVICE)
    errs = compare_to_reference(q0, p0, weights, biases, -0.05, frames, activation, "fused",
                                scheme=scheme)
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"fused latency layout vs float64 reference, rel err > 1e-4: {bad}"


def test_dispatch_table_picks_the_kernel_by_regime(monkeypatch):
    _any_throughput_width(monkeypatch)
    # training batches: a program per row; large batches: the tile layouts, by width
    assert fused._layout(16, 16, 128, 128) == "latency"
    assert fused._layout(16, 16, 128, 128, "bf16x3") == "latency"
    assert fused._layout(fused.LATENCY_MAX_ROWS, 16, 128, 128) == "latency"
    assert fused._layout(fused.LATENCY_MAX_ROWS + 1, 16, 128, 128) == fused._chunk(128, 128)
    assert fused._layout(65536, 16, 16, 16) == 16        # streamed, one chunk (ptxas spills)
    # large batches with the bf16x3 split: hidden-major tiles from width 64 (wgmma's M), up to
    # what fits a block's shared memory (width 128 with k <= 16)
    assert fused._layout(65536, 16, 128, 128, "bf16x3") == "throughput"
    assert fused._layout(65536, 16, 64, 128, "bf16x3", KP=16) == "throughput"
    assert fused._layout(65536, 16, 64, 64, "bf16x3", KP=32) == "throughput"
    assert fused._layout(65536, 16, 128, 128, "bf16x3", KP=32) == fused._chunk(128, 128)
    assert fused._layout(65536, 16, 32, 32, "bf16x3") == fused._chunk(32, 32)
    for precision in ("ieee", "tf32x3", "tf32"):
        assert fused._layout(65536, 16, 128, 128, precision) == fused._chunk(128, 128)
    # a rollout so long that the latency backward's scratch would pass its cap
    long_t = fused.LATENCY_SCRATCH_BYTES // (4 * 3 * (10 * 128 + 4 * 16) * 64) + 2
    assert 4 * fused._latency_scratch(64, long_t, 128, 128) > fused.LATENCY_SCRATCH_BYTES
    assert fused._layout(64, long_t, 128, 128) == fused._chunk(128, 128)
    # under the interpreter 4 programs walk the rows, so the tests above cover grid-stride
    assert fused._latency_programs(37, torch.device("cpu")) == 4


@pytest.mark.parametrize("api", ["legacy", "new"])
def test_latency_backward_keeps_fp32_products_and_the_callers_tf32_setting(api):
    # The weight-gradient product runs in full fp32 whatever the caller's TF32 setting, and
    # leaves that setting as it was. Since torch 2.9 a caller on the new API (fp32_precision,
    # which torch recommends) makes the legacy allow_tf32 flag raise on read ("mix of the
    # legacy and new APIs"): a guard that read it crashed every backward.
    m = torch.backends.cuda.matmul
    if api == "new" and not hasattr(m, "fp32_precision"):
        pytest.skip("torch without per-backend fp32_precision")
    attr, on = ("allow_tf32", True) if api == "legacy" else ("fp32_precision", "tf32")
    saved = getattr(m, attr)
    setattr(m, attr, on)
    try:
        gen = torch.Generator().manual_seed(11)
        weights, biases = random_mlp(2, (16, 16), generator=gen)
        weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
        q0 = torch.randn(3, 2, generator=gen).to(DEVICE)
        errs = compare_to_reference(q0, q0.flip(0), weights, biases, 0.05, 3, "softplus",
                                    "fused")
        assert max(errs.values()) <= 1e-4, errs
        assert getattr(m, attr) == on
    finally:
        setattr(m, attr, saved)


def _throughput_configs(monkeypatch):
    """The throughput layout at any width and batch, and the launch configs it is asked
    for, in order (forward, backward)."""
    _any_throughput_width(monkeypatch)
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    configs = []
    real = fused._launch_config

    def spy(layout, *a, **kw):
        grid, cfg = real(layout, *a, **kw)
        configs.append(cfg)
        return grid, cfg
    monkeypatch.setattr(fused, "_launch_config", spy)
    return configs


def _throughput_errors(B, k, widths, frames, scheme, activation, dt, seed):
    """compare_to_reference's errors of the fused bf16x3 rollout of a random network."""
    gen = torch.Generator().manual_seed(seed)
    weights, biases = random_mlp(k, widths, generator=gen)
    weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
    q0 = torch.randn(B, k, generator=gen).to(DEVICE)
    p0 = torch.randn(B, k, generator=gen).to(DEVICE)
    return compare_to_reference(q0, p0, weights, biases, dt, frames, activation, "fused",
                                scheme=scheme, precision="bf16x3")


@pytest.mark.parametrize("B,k,widths,frames,scheme,activation,dt", [
    (50, 3, (40, 100), 5, "order2", "tanh", 0.05),      # 4 backward blocks on 3 programs
    (200, 2, (64, 64), 2, "order2", "softplus", 0.05),  # 4 forward blocks (64 rows) on 3
    (1, 1, (100, 64), 3, "official", "softplus", -0.05),  # one row, one coordinate
    (37, 16, (128, 128), 4, "official", "softplus", -0.1),  # k = its padding, B % 16 != 0
    (33, 10, (64, 64), 16, "order2", "tanh", 0.05),     # width 64, the benchmark's 16 frames
])
def test_throughput_layout_matches_float64_reference(monkeypatch, B, k, widths, frames, scheme,
                                                     activation, dt):
    # Hidden-major tiles (throughput.py), what bf16x3 runs above LATENCY_MAX_ROWS. Under the
    # interpreter its products run the bf16 split in fp32 (exact), so the split's own error
    # is what is checked against the 1e-4 contract; 3 persistent programs walk the row
    # blocks (64 rows forward, 16 backward), so a program accumulates weight gradients over
    # several blocks.
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    seen = _layouts_run(monkeypatch)
    errs = _throughput_errors(B, k, widths, frames, scheme, activation, dt, B + k)
    assert seen == ["throughput", "throughput"]                # forward, backward
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"fused throughput layout vs float64 reference, rel err > 1e-4: {bad}"


@pytest.mark.parametrize("B,k,widths,frames,scheme", [
    (70, 3, (64, 64), 3, "order2"),      # 3 backward blocks of 32 on 3 programs, the last short
    (33, 10, (128, 64), 2, "official"),  # two blocks, one of them a single row
    (1, 1, (64, 64), 2, "order2"),
])
def test_throughput_backward_at_32_rows_matches_float64(monkeypatch, B, k, widths, frames,
                                                         scheme):
    # The leapfrog table times the backward at 32-row blocks against its 16
    # (fused_throughput_bwd32) and may move THROUGHPUT_BLOCK_B["bwd"] there: the kernel at
    # that block, every output and gradient, within the contract before any GPU times it.
    monkeypatch.setattr(fused, "THROUGHPUT_BLOCK_B", {"fwd": 64, "bwd": 32})
    configs = _throughput_configs(monkeypatch)
    errs = _throughput_errors(B, k, widths, frames, scheme, "softplus", 0.05, B * 7 + k)
    assert [c["BLOCK_B"] for c in configs] == [64, 32], configs     # forward, backward
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"throughput backward at 32 rows vs float64 reference, rel err > 1e-4: {bad}"


@pytest.mark.parametrize("B,k,widths,frames,scheme,activation,dt", [
    (50, 3, (40, 100), 4, "order2", "tanh", 0.05),        # 4 blocks on 3 programs, H1 != H2
    (1, 1, (64, 64), 3, "official", "softplus", -0.05),    # one row, one coordinate
    (37, 16, (100, 64), 3, "order2", "softplus", 0.1),     # k = its padding, B % 16 != 0
    (19, 5, (64, 128), 2, "official", "tanh", 0.05),
])
def test_merged_throughput_kernels_match_float64(monkeypatch, B, k, widths, frames, scheme,
                                                  activation, dt):
    # The leapfrog table times the throughput kernels with their products merged pairwise
    # (throughput._fwd_merged for order2, _vjp_merged; fused_throughput_merged) and may
    # switch THROUGHPUT_MERGED on: interleaved operands and results (_cols2, _rows2, W1q /
    # W1p columns, dW1's partials de-interleaved by the host) all within the contract before
    # any GPU times them.
    monkeypatch.setattr(fused, "THROUGHPUT_MERGED", True)
    configs = _throughput_configs(monkeypatch)
    errs = _throughput_errors(B, k, widths, frames, scheme, activation, dt, B * 5 + k)
    assert [c.get("MERGE") for c in configs] == [True, True], configs   # forward, backward
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"merged throughput kernels vs float64 reference, rel err > 1e-4: {bad}"


def test_throughput_layout_is_persistent():
    # one program per SM on a GPU (its grid-stride loop walks the rest); under the
    # interpreter 3, and never more programs than row blocks
    cpu = torch.device("cpu")
    assert fused._throughput_programs(65536, cpu, 16) == 3
    assert fused._throughput_programs(17, cpu, 16) == 2
    assert fused._throughput_programs(65, cpu, 64) == 2
    assert fused._throughput_programs(1, cpu, 64) == 1


def test_gpu_launches_size_their_grids_by_the_sms_and_run_the_real_bf16_split(monkeypatch):
    # What a GPU gets, checked without one (an H200 has 132 SMs): a latency program per row
    # up to one per SM, a persistent throughput program per SM at most, and bf16x3 on the
    # tensor cores; the emulated split is the interpreter's alone (it would time emulation).
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(fused, "_sm_count", lambda device: 132)
    assert fused._latency_programs(16, cuda) == 16
    assert fused._latency_programs(65536, cuda) == 132
    assert fused._throughput_programs(64 * 100, cuda, 64) == 100
    assert fused._throughput_programs(65536, cuda, 16) == 132
    for layout, block in (("throughput", 64), (32, 16)):
        grid, kw = fused._launch_config(layout, 65536, 128, 128, cuda, "bf16x3")
        assert kw["PREC"] == "bf16x3" and kw["BLOCK_B"] == block, layout
        assert fused._launch_config(layout, 65536, 128, 128, cpu, "bf16x3")[1]["PREC"] == (
            "bf16x3-emulated")
    assert fused._launch_config("latency", 16, 128, 128, cuda, "ieee") == (16, {"num_warps": 8})


def _launches(monkeypatch, run_kernels=False):
    """Record (layout, grid, keyword arguments) of every kernel launch from here on; unless
    run_kernels, the launch itself is skipped (the outputs are then uninitialised: for tests
    of the configuration alone, which is cheap to check without interpreting a kernel)."""
    real, seen = fused._launch, []

    def spy(kernel, grid, *args, **kwargs):
        module = getattr(kernel, "fn", kernel).__module__      # the interpreter wraps it
        seen.append((module.rsplit(".", 1)[-1], grid, kwargs))
        if run_kernels:
            return real(kernel, grid, *args, **kwargs)
    monkeypatch.setattr(fused, "_launch", spy)
    return seen


def _fwd_bwd(B, k, widths, precision="ieee", frames=3):
    gen = torch.Generator().manual_seed(B + k)
    w, b = random_mlp(k, widths, generator=gen)
    leaves = [t.to(DEVICE).requires_grad_(True)
              for t in (torch.randn(B, k, generator=gen), torch.randn(B, k, generator=gen),
                        *w, *b)]
    q, p, d = leapfrog(leaves[0], leaves[1], leaves[2:5], leaves[5:], dt=0.05, frames=frames,
                       backend="fused", precision=precision)
    (q.sum() + p.sum() + d.sum()).backward()


# (regime, B, k, widths, precision) -> what each launch must receive: k and the widths padded
# to powers of two >= 16 (tl.dot's smallest block; docs/integrator.md), the streamed layout's
# chunk (16 hidden units up to width 32, else 32, never more than the padded H1), the row
# blocks (16; throughput 64 forward, 16 backward), the warps (tile 8 from width 128, latency
# 8 from width 64, throughput 8) and the grid (latency: min(B, 4) programs under the
# interpreter; tile: a program per 16 rows; throughput: persistent, at most 3 here).
LAUNCH_CASES = [
    ("latency", 5, 3, (40, 100), "ieee",
     dict(K=3, N1=40, N2=100, KP=16, H1=64, H2=128, num_warps=8), (4,), (4,)),
    ("latency", 3, 17, (16, 32), "ieee",
     dict(K=17, N1=16, N2=32, KP=32, H1=16, H2=32, num_warps=4), (3,), (3,)),
    ("latency", 1, 1, (64, 16), "ieee",
     dict(K=1, N1=64, N2=16, KP=16, H1=64, H2=16, num_warps=8), (1,), (1,)),
    ("tile", 19, 3, (32, 32), "ieee",
     dict(KP=16, H1=32, H2=32, BLOCK_B=16, CH=16, num_warps=4, PREC="ieee"), (2,), (2,)),
    ("tile", 5, 1, (64, 16), "tf32x3",
     dict(KP=16, H1=64, H2=16, BLOCK_B=16, CH=32, num_warps=4, PREC="tf32x3"), (1,), (1,)),
    ("tile", 3, 2, (16, 64), "ieee",
     dict(KP=16, H1=16, H2=64, BLOCK_B=16, CH=16, num_warps=4, PREC="ieee"), (1,), (1,)),
    ("tile", 5, 2, (100, 128), "ieee",
     dict(KP=16, H1=128, H2=128, BLOCK_B=16, CH=32, num_warps=8, PREC="ieee"), (1,), (1,)),
    ("throughput", 200, 3, (64, 64), "bf16x3",
     dict(KP=16, H1=64, H2=64, num_warps=8), (3,), (3,)),
    # bf16x3 at width 128 with k 17..32 (KP 32): past the throughput layout's shared memory,
    # so the forward and the backward both run the streamed one (a direction that read the
    # table without the padded k would launch throughput.py's 230 KB backward on a GPU)
    ("tile", 3, 17, (128, 100), "bf16x3",
     dict(KP=32, H1=128, H2=128, BLOCK_B=16, CH=32, num_warps=8), (1,), (1,)),
]


@pytest.mark.parametrize("regime,B,k,widths,precision,want,fwd_grid,bwd_grid", LAUNCH_CASES)
def test_launch_configuration_by_regime(monkeypatch, regime, B, k, widths, precision, want,
                                        fwd_grid, bwd_grid):
    # The results cannot show these (the interpreter runs tl.dot at any size, ignores warps and
    # computes at any row block): they are what a GPU compiles, so each is checked as launched.
    if regime != "latency":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    seen = _launches(monkeypatch)
    _fwd_bwd(B, k, widths, precision)
    layout = {"latency": "latency", "tile": "streamed", "throughput": "throughput"}[regime]
    assert [s[0] for s in seen] == [layout, layout], seen
    for (_, grid, kwargs), direction, want_grid in zip(seen, ("fwd", "bwd"), (fwd_grid,
                                                                             bwd_grid)):
        got = {key: kwargs.get(key) for key in want}
        assert got == want, (direction, got)
        assert grid == want_grid, (direction, grid)
        if regime == "throughput":
            emulated = "bf16x3-emulated" if dispatch._interpreting() else "bf16x3"
            assert kwargs["PREC"] == emulated
            assert kwargs["BLOCK_B"] == {"fwd": 64, "bwd": 16}[direction], direction


def test_the_throughput_layout_runs_only_at_widths_a_gpu_found_it_right(monkeypatch):
    # An H200 found the throughput layout wrong at widths 64/64 (fused.THROUGHPUT_MIN_H1):
    # with the shipped limits, those widths and the unchecked narrower first layers run the
    # tile layouts; the checked ones (128/128, 128/64) the throughput layout
    monkeypatch.setattr(fused, "THROUGHPUT_MIN_H1", SHIPPED_MIN_WIDTHS[0])
    monkeypatch.setattr(fused, "THROUGHPUT_MIN_H2", SHIPPED_MIN_WIDTHS[1])
    for h1, h2 in ((128, 128), (128, 64)):
        assert fused._layout(65536, 16, h1, h2, "bf16x3", KP=16) == "throughput", (h1, h2)
    for h1, h2 in ((64, 64), (64, 128), (128, 32), (16, 64)):
        assert fused._layout(65536, 16, h1, h2, "bf16x3", KP=16) == min(fused._chunk(h1, h2), h1)


def test_dispatch_table_edges(monkeypatch):
    _any_throughput_width(monkeypatch)
    # the streamed chunk follows the wider layer and never exceeds the padded H1
    assert fused._layout(65536, 16, 32, 32) == 16
    assert fused._layout(65536, 16, 64, 16) == 32
    assert fused._layout(65536, 16, 16, 64) == 16
    # the throughput layout's shared-memory bound is on the wider layer: width 128 at KP 32
    # does not fit whichever layer is the wide one
    for h1, h2 in ((64, 128), (128, 64)):
        assert fused._layout(65536, 16, h1, h2, "bf16x3", KP=32) == 32, (h1, h2)
        assert fused._layout(65536, 16, h1, h2, "bf16x3", KP=16) == "throughput", (h1, h2)
    # the latency layout's scratch: 3 evaluations per step (T - 1 steps), each the forward's
    # a1, a2, e1 and the backward's factors: 4 floats per unit of layer 2 (a2; r2, g2, u2), 6
    # per unit of layer 1 (a1, e1; h1, u1, r1, g1) and 4 per padded coordinate (q, p, vq,
    # vp); the longest rollout under the cap runs the latency layout, one frame more the
    # tile layouts
    for B, h1, h2, kp in ((64, 128, 128, 16), (48, 128, 16, 16), (48, 16, 128, 32)):
        per_step = 4 * B * 3 * (4 * h2 + 6 * h1 + 4 * kp)
        steps = fused.LATENCY_SCRATCH_BYTES // per_step
        assert fused._layout(B, steps + 1, h1, h2, KP=kp) == "latency", (B, h1, h2)
        assert fused._layout(B, steps + 2, h1, h2, KP=kp) != "latency", (B, h1, h2)
    # the cap is inclusive: scratch of exactly LATENCY_SCRATCH_BYTES still fits (a cap that a
    # GPU measurement sets need not be a power of two, which no scratch size can equal)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "LATENCY_SCRATCH_BYTES", 4 * 64 * 9 * 3 * (10 * 128 + 4 * 16))
        assert fused._layout(64, 10, 128, 128) == "latency"
        assert fused._layout(64, 11, 128, 128) != "latency"
    # tile warps follow the wider layer (its backward spills with 4 at width 128)
    assert fused._num_warps(128, 16) == fused._num_warps(16, 128) == 8
    assert fused._num_warps(64, 64) == 4
    # the cap's value, as docs/integrator.md states it ((40 * width + 16 * padded k) * B *
    # (frames - 1) * 3 bytes past 1 GB; the code's 2^30): at B = 64, width 128 and k <= 16 a
    # step takes 1032192 bytes, so 1040 steps (1041 frames) fit and one more does not
    assert fused._layout(64, 1041, 128, 128) == "latency"
    assert fused._layout(64, 1042, 128, 128) == fused._chunk(128, 128)
    # the register-resident layout (chunk 0, tile.py) has no CH parameter to launch with
    assert fused._launch_config(0, 19, 16, 16, torch.device("cpu"), "ieee") == (
        2, dict(BLOCK_B=16, PREC="ieee", num_warps=4))


def test_streamed_layout_with_a_narrow_first_layer_matches_float64_reference(tile):
    # H1 = 16 under a 64-wide second layer: the chunk (32 for the wider layer) is clamped to
    # the padded H1, else the chunked loads run past W1 (out-of-bounds reads on a GPU).
    gen = torch.Generator().manual_seed(2)
    weights, biases = random_mlp(2, (16, 64), generator=gen)
    weights, biases = [w.to(DEVICE) for w in weights], [b.to(DEVICE) for b in biases]
    q0 = torch.randn(5, 2, generator=gen).to(DEVICE)
    p0 = torch.randn(5, 2, generator=gen).to(DEVICE)
    errs = compare_to_reference(q0, p0, weights, biases, 0.05, 3, "softplus", "fused")
    bad = {n: e for n, e in errs.items() if not e <= 1e-4}
    assert not bad, f"fused streamed (16, 64) vs float64 reference, rel err > 1e-4: {bad}"


def test_streamed_programs_keep_their_own_weight_gradient_slabs(tile, monkeypatch):
    # streamed.py adds each chunk's weight-gradient terms into its program's own slab in
    # memory (read, add, write), and the host sums the slabs. The interpreter runs programs
    # one after another, so programs adding into one shared slab would still sum to the right
    # total (on a GPU they race): each slab is checked against the float64 gradient of its
    # own 16-row block alone. 19 rows: two programs, the second with 3 rows; widths 32, 16:
    # two chunks of 16 hidden units.
    seen, slabs, real_launch = _layouts_run(monkeypatch), {}, fused._launch
    names = ("dw1q_ptr", "dw1p_ptr", "db1_ptr", "dw2_ptr", "db2_ptr", "dw3_ptr")

    def spy(kernel, grid, *args, **kwargs):
        real_launch(kernel, grid, *args, **kwargs)
        named = dict(zip(kernel.arg_names, args))
        if "dw2_ptr" in named:                            # the backward: its partials
            slabs.update({n: named[n].detach().double().cpu() for n in names})
    monkeypatch.setattr(fused, "_launch", spy)
    k, n1, n2, B, frames = 3, 32, 16, 19, 3
    gen = torch.Generator().manual_seed(9)
    w, b = random_mlp(k, (n1, n2), generator=gen)
    q0, p0 = torch.randn(B, k, generator=gen), torch.randn(B, k, generator=gen)
    cot = [torch.randn(s, generator=gen) for s in [(B, frames, k), (B, frames, k),
                                                   (B, frames - 1, k)]]
    rollout_and_grads(q0.to(DEVICE), p0.to(DEVICE), [x.to(DEVICE) for x in w],
                      [x.to(DEVICE) for x in b], 0.05, frames, "softplus", "fused",
                      [c.to(DEVICE) for c in cot])
    assert seen == [16, 16] and slabs["db1_ptr"].shape[0] == 2, (seen, slabs["db1_ptr"].shape)
    for prog, rows in enumerate((slice(0, 16), slice(16, B))):
        _, g = rollout_and_grads(q0[rows].double(), p0[rows].double(),
                                 [x.double() for x in w], [x.double() for x in b], 0.05, frames,
                                 "softplus", "reference", [c[rows].double() for c in cot])
        want = {"dw1q_ptr": g[2][:, :k], "dw1p_ptr": g[2][:, k:], "db1_ptr": g[5],
                "dw2_ptr": g[3], "db2_ptr": g[6], "dw3_ptr": g[4][0]}
        got = {"dw1q_ptr": slabs["dw1q_ptr"][prog, :n1, :k],
               "dw1p_ptr": slabs["dw1p_ptr"][prog, :n1, :k], "db1_ptr": slabs["db1_ptr"][prog, :n1],
               "dw2_ptr": slabs["dw2_ptr"][prog, :n2, :n1], "db2_ptr": slabs["db2_ptr"][prog, :n2],
               "dw3_ptr": slabs["dw3_ptr"][prog, :n2]}
        errs = {n: rel_err(got[n], want[n]) for n in names}
        bad = {n: e for n, e in errs.items() if not e <= 1e-4}
        assert not bad, f"program {prog}'s slabs vs its rows' float64 gradient: {bad}"


def test_latency_forward_saves_its_activations_only_for_a_backward(monkeypatch):
    # The latency backward reads each evaluation's a1, a2, e1 from the forward. A rollout no
    # gradient will flow through (inputs that need none, or torch.no_grad as in sampling and
    # evaluation) compiles the forward without those stores; its trajectory is the same to
    # the bit.
    seen = _launches(monkeypatch, run_kernels=True)
    w, b = random_mlp(3, (16, 24), generator=torch.Generator().manual_seed(8))
    w, b = [t.to(DEVICE) for t in w], [t.to(DEVICE) for t in b]
    q0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    plain = leapfrog(q0, q0, w, b, frames=4, backend="fused")
    assert [(s[0], s[2]["SAVE"]) for s in seen] == [("latency", False)], seen
    seen.clear()
    leaves = [t.detach().requires_grad_(True) for t in w]
    with torch.no_grad():                 # weights that need gradients, but none wanted here
        leapfrog(q0, q0, leaves, b, frames=4, backend="fused")
    assert [(s[0], s[2]["SAVE"]) for s in seen] == [("latency", False)], seen
    seen.clear()
    saved = leapfrog(q0, q0, leaves, b, frames=4, backend="fused")
    assert [(s[0], s[2]["SAVE"]) for s in seen] == [("latency", True)], seen
    for x, y in zip(plain, saved):
        assert torch.equal(x, y.detach())
    # a backward from a forward that saved nothing is refused, not read out of bounds
    q, p, ph, dq, points, acts = fused.leapfrog_fwd(q0, q0, w, b, 0.05, 4, "softplus",
                                                    save=False)
    cot = torch.ones_like(q), torch.ones_like(p), torch.ones_like(dq)
    with pytest.raises(RuntimeError, match="did not save its activations"):
        fused.leapfrog_bwd(q, p, ph, points, *cot, acts, (*w, *b), 0.05, "softplus", "order2")


def test_latency_weight_gradient_product_is_asked_for_in_fp32(monkeypatch):
    # On a GPU a TF32 product would put the layer-2 weight gradient ~1e-3 off (the contract is
    # 1e-4); on CPU torch ignores the setting, so what the backward asks for is checked.
    asked, inside, products = [], [], []

    class Recording(fused._fp32_matmul):
        def __enter__(self):
            asked.append(self.precision)
            inside.append(True)
            return super().__enter__()

        def __exit__(self, *exc):
            inside.pop()
            return super().__exit__(*exc)
    monkeypatch.setattr(fused, "_fp32_matmul", Recording)
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__",
                        lambda a, b: products.append(bool(inside)) or matmul(a, b))
    _launches(monkeypatch)                                 # the configuration alone
    _fwd_bwd(3, 2, (16, 16))
    assert asked == ["ieee"], asked
    assert products == [True, True], products             # dW2 and dW1, both inside


def test_launch_runs_on_the_tensors_cuda_device(monkeypatch):
    # Triton launches on the current CUDA device: with the tensors on cuda:1 while cuda:0 is
    # current the kernel must be launched inside torch.cuda.device(cuda:1). Checked without a
    # GPU through stand-ins for the tensor and for torch.cuda.device.
    entered = []

    @contextlib.contextmanager
    def device(dev):
        entered.append(dev)
        yield
    monkeypatch.setattr(torch.cuda, "device", device)
    launched = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append((grid, args, kwargs))

    class OnCuda1:
        device = torch.device("cuda", 1)
    x = OnCuda1()
    fused._launch(Kernel(), (2,), x, 3, BLOCK_B=16)
    assert entered == [torch.device("cuda", 1)] and launched == [
        ((2,), (x, 3), {"BLOCK_B": 16, "enable_fp_fusion": True})]
    entered.clear()
    fused._launch(Kernel(), (1,), torch.zeros(1))          # CPU tensors: no CUDA context
    assert entered == []


@pytest.mark.parametrize("B, widths, precision", [(3, (16, 16), "ieee"),     # latency
                                                  (20, (16, 16), "ieee"),    # streamed
                                                  (20, (64, 64), "bf16x3")])  # throughput
def test_every_kernel_launch_asks_for_fused_multiply_adds(monkeypatch, B, widths, precision):
    # The kernels were designed (instruction counts) and checked against float64 on a GPU
    # with fused multiply-adds; Triton 3.9 warns that its default turns them off from 3.10, so
    # each launch, forward and backward, asks for them by name.
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 4)
    asked, real = [], fused._kernels

    class Spy:
        def __init__(self, kernel):
            self.kernel, self.fn = kernel, getattr(kernel, "fn", kernel)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                asked.append((self.fn.__module__.rsplit(".", 1)[-1],
                              kwargs.get("enable_fp_fusion")))
                return self.kernel[grid](*args, **kwargs)
            return launch
    monkeypatch.setattr(fused, "_kernels", lambda layout: tuple(map(Spy, real(layout))))
    _fwd_bwd(B, 2, widths, precision)
    layout = "latency" if B <= 4 else "throughput" if precision == "bf16x3" else "streamed"
    assert asked == [(layout, True)] * 2, asked


@pytest.mark.parametrize("layout", ["tile", "latency"])
def test_fused_reads_nothing_past_its_inputs(monkeypatch, layout):
    # The latency layout reads the caller's tensors and pads them by masked loads (the tile
    # layouts copy them into padded buffers): every input here is the front of a larger
    # buffer whose tail is NaN, so a load past a tensor's end (or into the next row of W2, a
    # mask on the padded instead of the real size) turns the results NaN or wrong.
    if layout == "tile":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    gen = torch.Generator().manual_seed(4)
    w, b = random_mlp(3, (40, 100), generator=gen)
    q0, p0 = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)

    def nan_tailed(t):
        buf = torch.full((t.numel() + 4096,), float("nan"))
        buf[:t.numel()] = t.flatten()
        return buf[:t.numel()].view(t.shape)
    clean = [x.to(DEVICE) for x in (q0, p0, *w, *b)]
    tailed = [nan_tailed(x).to(DEVICE) if DEVICE == "cpu" else x.to(DEVICE)
              for x in (q0, p0, *w, *b)]
    assert all(x.is_contiguous() for x in tailed)
    cot = [torch.randn(s, generator=gen).to(DEVICE) for s in [(5, 3, 3), (5, 3, 3), (5, 2, 3)]]

    def run(leaves, backend):     # not rollout_and_grads: it would copy the inputs
        leaves = [x.requires_grad_(True) for x in leaves]
        outs = leapfrog(leaves[0], leaves[1], leaves[2:5], leaves[5:], dt=0.05, frames=3,
                        backend=backend)
        loss = sum((o * c).sum() for o, c in zip(outs, cot))
        return list(outs) + list(torch.autograd.grad(loss, leaves))
    for x, y in zip(run(tailed, "fused"), run(clean, "analytic")):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", ["tile", "latency"])
def test_fused_writes_nothing_past_its_outputs(monkeypatch, layout):
    # Every store is masked by the real sizes as every load is (test above): each tensor a
    # kernel gets sits here between NaN guard bands, which must come back NaN. A store one
    # element past a partial's end hides from the results: a latency program's padded hidden
    # unit of db1 (a mask <= n1) lands in the next program's partial, which that program
    # overwrites under the interpreter (programs run in order; on a GPU they race), and the
    # last program's past the partials' end, where nothing reads it back.
    if layout == "tile":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    real_launch, guards = fused._launch, []

    def guarded(t, pad=64):
        buf = torch.full((pad + t.numel() + pad,), float("nan"), dtype=t.dtype, device=t.device)
        buf[pad:pad + t.numel()] = t.flatten()
        guards.append((buf[:pad], buf[pad + t.numel():]))
        return buf[pad:pad + t.numel()].view(t.shape)

    def spy(kernel, grid, *args, **kwargs):
        inner = [guarded(a) if isinstance(a, torch.Tensor) else a for a in args]
        real_launch(kernel, grid, *inner, **kwargs)
        for a, x in zip(args, inner):
            # the outputs back into the host's tensors (inputs only if a kernel wrote them:
            # an in-place copy into a saved weight would fail the backward's version check)
            if isinstance(a, torch.Tensor) and not torch.equal(a, x):
                a.copy_(x)
    monkeypatch.setattr(fused, "_launch", spy)
    gen = torch.Generator().manual_seed(6)
    w, b = random_mlp(3, (40, 100), generator=gen)
    w, b = [x.to(DEVICE) for x in w], [x.to(DEVICE) for x in b]
    q0, p0 = (torch.randn(5, 3, generator=gen).to(DEVICE) for _ in range(2))
    cot = [torch.randn(s, generator=gen).to(DEVICE) for s in [(5, 3, 3), (5, 3, 3), (5, 2, 3)]]
    outs, grads = rollout_and_grads(q0, p0, w, b, 0.05, 3, "softplus", "fused", cot)
    ref_outs, ref_grads = rollout_and_grads(q0, p0, w, b, 0.05, 3, "softplus", "analytic", cot)
    for x, y in zip(outs + grads, ref_outs + ref_grads):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    assert len(guards) > 20                               # forward and backward, every tensor
    written = [i for i, pair in enumerate(guards) if not all(g.isnan().all() for g in pair)]
    assert not written, f"stores past the ends of launch arguments {written}"


def test_fallback_warning_points_at_the_callers_line(monkeypatch):
    # The one-time warning names the caller's file and line, not the dispatcher's: for a
    # config outside the contract (decided before any launch), for a forward that cannot
    # launch, and through HamiltonianMLP.rollout.
    monkeypatch.setitem(dispatch._auto_choice, torch.device(DEVICE).type, "fused")
    q0 = torch.randn(3, 2, device=DEVICE)
    w, b = random_mlp(2, (16, 16, 16), device=DEVICE)
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(UserWarning, match="running the analytic backend") as rec:
        leapfrog(q0, q0, w, b, frames=2)
    assert [r.filename for r in rec] == [__file__], [(r.filename, r.lineno) for r in rec]
    monkeypatch.setattr(dispatch, "_warned", set())
    torch.manual_seed(0)
    H = HamiltonianMLP(2, hidden=16, depth=3).to(DEVICE)
    with pytest.warns(UserWarning, match="running the analytic backend") as rec:
        H.rollout(q0, q0, frames=2)
    assert [r.filename for r in rec] == [__file__], [(r.filename, r.lineno) for r in rec]
    _kernel_too_big_for_the_gpu(monkeypatch, "fwd")
    monkeypatch.setattr(dispatch, "_warned", set())
    w, b = random_mlp(2, (16, 16), device=DEVICE)
    with pytest.warns(UserWarning, match="does not fit this GPU") as rec:
        leapfrog(q0, q0, w, b, frames=2)
    assert [r.filename for r in rec] == [__file__], [(r.filename, r.lineno) for r in rec]


@pytest.mark.parametrize("layout", ["tile", "latency"])
def test_fused_takes_strided_inputs_and_cotangents(monkeypatch, layout):
    # The kernels index every tensor as contiguous: the host must hand them contiguous copies
    # of strided states and weights (a sliced batch, a transposed parameter) and of the
    # incoming cotangents (q.sum() gives an expanded, stride-0 one; a permuted loss a
    # transposed one), or they read the wrong elements. Oracle: the analytic backend.
    if layout == "tile":
        monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)
    gen = torch.Generator().manual_seed(5)
    w, b = random_mlp(3, (16, 24), generator=gen)
    base = torch.randn(8, 7, generator=gen)
    q0, p0 = base[:, ::2][:, :3], base.t().contiguous().t()[:, 4:7]
    w = [w[0].t().contiguous().t(), w[1].t().contiguous().t(), w[2]]
    assert not (q0.is_contiguous() or p0.is_contiguous() or w[0].is_contiguous()
                or w[1].is_contiguous())
    q0, p0, w, b = q0.to(DEVICE), p0.to(DEVICE), [x.to(DEVICE) for x in w], \
        [x.to(DEVICE) for x in b]
    cot_d = torch.randn(3, 4, 8, generator=gen).to(DEVICE)   # dHdq's cotangent: transposed
    results = {}
    for backend in ("fused", "analytic"):
        leaves = [t.detach().requires_grad_(True) for t in (q0, p0, *w, *b)]
        q, p, d = leapfrog(leaves[0], leaves[1], leaves[2:5], leaves[5:], frames=5,
                           backend=backend)
        loss = q.sum() + (p[:, :, 1] ** 2).sum() + (d.transpose(0, 2) * cot_d).sum()
        results[backend] = [q, p, d, *torch.autograd.grad(loss, leaves)]
    for x, y in zip(results["fused"], results["analytic"]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("split", ["ieee", "tf32x3", "bf16x3"])
@pytest.mark.parametrize("split_rows", [None, 3])
def test_auto_precision_is_the_tables_by_regime(monkeypatch, split, split_rows):
    # precision "auto" (leapfrog's default) runs fp32 in the latency regime and
    # SPLIT_ABOVE_LATENCY above it, in the layout that precision takes there (bf16x3: the
    # throughput layout at widths 64-128): what each kernel launch is given shows it, forward
    # and backward, and the result is that of asking for the precision by name. A split that
    # runs the throughput layout ends the latency regime at SPLIT_LATENCY_MAX_ROWS (3 rows
    # here); the others keep LATENCY_MAX_ROWS (4).
    assert fused.SPLIT_ABOVE_LATENCY == "bf16x3"   # as an H200 measured (fused.py)
    monkeypatch.setattr(fused, "SPLIT_ABOVE_LATENCY", split)
    monkeypatch.setattr(fused, "SPLIT_SHAPES", ((64, 64, 16),))   # this test's, padded
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 4)
    monkeypatch.setattr(fused, "SPLIT_LATENCY_MAX_ROWS", split_rows or 4)
    launched, real_launch = [], fused._launch

    def spy(kernel, grid, *args, **kwargs):
        launched.append((kernel.fn.__module__.rsplit(".", 1)[1], kwargs.get("PREC")))
        return real_launch(kernel, grid, *args, **kwargs)
    monkeypatch.setattr(fused, "_launch", spy)
    w, b = random_mlp(2, (64, 64), generator=torch.Generator().manual_seed(5))
    w, b = [t.to(DEVICE) for t in w], [t.to(DEVICE) for t in b]
    cot = [torch.randn(5, 3, 2, device=DEVICE), torch.randn(5, 3, 2, device=DEVICE),
           torch.randn(5, 2, 2, device=DEVICE)]
    cases = [(4, ("latency", None)),
             (5, ("throughput" if split == "bf16x3" else "streamed", split))]
    if split_rows:
        cases[0] = (4, ("throughput", "bf16x3") if split == "bf16x3" else ("latency", None))
        cases.insert(0, (3, ("latency", None)))
    for B, want in cases:
        q0, p0 = torch.randn(B, 2, device=DEVICE), torch.randn(B, 2, device=DEVICE)
        runs = {}
        for precision in ("auto", want[1] or "ieee"):
            launched.clear()
            outs, grads = rollout_and_grads(q0, p0, w, b, 0.05, 3, "softplus", "fused",
                                            [c[:B] for c in cot], precision=precision)
            runs[precision] = torch.cat([t.flatten() for t in outs + grads])
            if precision == "auto":
                # the interpreter runs the bf16x3 split's products in fp32 (see common.py)
                want_prec = "bf16x3-emulated" if want[1] == "bf16x3" and DEVICE == "cpu" \
                    else want[1]
                assert launched == [(want[0], want_prec)] * 2, (B, split, launched)
        assert torch.equal(runs["auto"], runs[want[1] or "ieee"]), (B, split)
    assert fused.resolve_precision("tf32", 4, 3, 2, 64, 64) == "tf32"   # asked: as asked
    assert fused.resolve_precision("auto", 5, 3, 2, 64, 64) == split


def test_a_split_in_the_throughput_layout_ends_the_latency_regime_sooner(monkeypatch):
    # As an H200 measured (fused.py): at the split shape the latency layout wins at 256 rows
    # (1.50 against 1.62 ms) and the throughput layout at 512 (1.64 against 2.32), so "auto"
    # runs bf16x3 in the throughput layout from 257 rows there, and only there.
    assert (fused.SPLIT_LATENCY_MAX_ROWS, fused.LATENCY_MAX_ROWS) == (256, 512)
    assert fused.SPLIT_ABOVE_LATENCY == "bf16x3" and fused.THROUGHPUT_PRECISIONS == ("bf16x3",)
    T = 16

    def runs(precision, B, n1, n2, k):
        prec = fused.resolve_precision(precision, B, T, k, n1, n2)
        return prec, fused._layout(B, T, fused._pow2(n1), fused._pow2(n2), prec, fused._pow2(k))
    for B in (1, 16, 256):
        assert runs("auto", B, 100, 100, 10) == ("ieee", "latency"), B
    for B in (257, 300, 512, 513):
        assert runs("auto", B, 100, 100, 10) == ("bf16x3", "throughput"), B
        assert runs("bf16x3", B, 128, 128, 16) == ("bf16x3", "throughput"), B   # asked
    # other precisions, and shapes the table never timed, keep the latency layout to 512
    for B in (257, 512):
        assert runs("tf32x3", B, 100, 100, 10) == ("tf32x3", "latency")
        assert runs("ieee", B, 100, 100, 10) == ("ieee", "latency")
        assert runs("auto", B, 128, 64, 10) == ("ieee", "latency")      # throughput fits there
        assert runs("bf16x3", B, 128, 64, 10) == ("bf16x3", "latency")
        assert runs("bf16x3", B, 128, 128, 17) == ("bf16x3", "latency")  # KP 32: no fit
    # a tile split (bf16x3 out of THROUGHPUT_PRECISIONS) keeps the latency regime whole
    monkeypatch.setattr(fused, "THROUGHPUT_PRECISIONS", ())
    assert runs("auto", 300, 100, 100, 10) == ("ieee", "latency")
    assert runs("auto", 513, 100, 100, 10)[0] == "bf16x3"
    # and the split's switch never extends the latency regime
    monkeypatch.setattr(fused, "THROUGHPUT_PRECISIONS", ("bf16x3",))
    monkeypatch.setattr(fused, "SPLIT_LATENCY_MAX_ROWS", 4096)
    assert runs("auto", 513, 100, 100, 10) == ("bf16x3", "throughput")


@pytest.mark.parametrize("split", ["tf32x3", "bf16x3"])
def test_auto_precision_runs_a_split_only_at_the_measured_shape(monkeypatch, split):
    # A split measured faster at the leapfrog table's shape (widths 100/100, k 10: padded
    # 128/128, KP 16) becomes "auto"'s choice above the latency regime at every network that
    # compiles to that kernel, and at no other: the split layouts spill differently there.
    monkeypatch.setattr(fused, "SPLIT_ABOVE_LATENCY", split)
    assert fused.SPLIT_SHAPES == ((128, 128, 16),)
    T, big = 16, fused.LATENCY_MAX_ROWS + 1
    for n1, n2, k in ((100, 100, 10), (65, 128, 9), (128, 128, 16), (120, 70, 1)):
        assert fused.resolve_precision("auto", big, T, k, n1, n2) == split, (n1, n2, k)
        assert fused.resolve_precision("auto", 16, T, k, n1, n2) == "ieee"   # latency regime
    for n1, n2, k in ((16, 128, 10), (128, 16, 10), (64, 64, 10), (100, 100, 17),
                      (129, 100, 10), (32, 32, 2)):
        assert fused.resolve_precision("auto", big, T, k, n1, n2) == "ieee", (n1, n2, k)
        assert fused.resolve_precision(split, big, T, k, n1, n2) == split   # asked by name


def test_auto_precision_is_ieee_for_the_other_backends():
    # reference and analytic compute in float32: "auto" is "ieee" to them, and neither refuses
    w, b = random_mlp(3, (16, 16), generator=torch.Generator().manual_seed(6))
    q0 = torch.randn(4, 3)
    for backend in ("reference", "analytic"):
        auto = leapfrog(q0, q0, w, b, frames=4, backend=backend)
        ieee = leapfrog(q0, q0, w, b, frames=4, backend=backend, precision="ieee")
        assert all(torch.equal(x, y) for x, y in zip(auto, ieee)), backend


def test_a_low_precision_network_keeps_its_fused_precision(monkeypatch):
    # A bf16 network re-enters the dispatcher in float32: the caller's precision must reach
    # every kernel it launches, forward and backward (the interpreter computes tf32x3 in fp32,
    # so only the launch can show it).
    monkeypatch.setattr(fused, "LATENCY_MAX_ROWS", 0)     # the tile layouts take PREC
    launched, real_launch = [], fused._launch

    def spy(kernel, grid, *args, **kwargs):
        launched.append(kwargs.get("PREC"))
        return real_launch(kernel, grid, *args, **kwargs)
    monkeypatch.setattr(fused, "_launch", spy)
    w, b = random_mlp(2, (16, 16), generator=torch.Generator().manual_seed(4))
    w = [t.to(torch.bfloat16).to(DEVICE).requires_grad_(True) for t in w]
    b = [t.to(torch.bfloat16).to(DEVICE) for t in b]
    q0 = torch.randn(3, 2, device=DEVICE).to(torch.bfloat16)
    q, _, _ = leapfrog(q0, q0, w, b, frames=3, backend="fused", precision="tf32x3")
    q.float().sum().backward()
    assert q.dtype == torch.bfloat16 and len(launched) == 2 and set(launched) == {"tf32x3"}, \
        launched


def test_a_kernel_that_does_not_fit_names_its_layout_and_config():
    # What FusedCannotLaunch says is what a user reports (and the dispatcher's one-time warning
    # shows): the layout, from the kernel's module (a JITFunction carries its function's), and
    # the launch's own block, padding, chunk, precision and warps, with Triton's error chained.
    from triton.runtime.errors import OutOfResources
    err = OutOfResources(300_000, 232_448, "shared memory")

    class Kernel:
        __module__ = "hgan.kernels.leapfrog.streamed"

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise err
            return launch
    with pytest.raises(fused.FusedCannotLaunch) as info:
        fused._launch(Kernel(), (2,), torch.zeros(1), 7, BLOCK_B=16, KP=32, H1=64, H2=128,
                      CH=32, PREC="ieee", num_warps=8, ACT=0, ORDER2=True)
    assert str(info.value) == (
        "the fused kernel does not fit this GPU (out of resource: shared memory, Required: "
        "300000, Hardware limit: 232448. Reducing block sizes or `num_stages` may help.; config "
        "{'BLOCK_B': 16, 'KP': 32, 'H1': 64, 'H2': 128, 'CH': 32, 'PREC': 'ieee', "
        "'num_warps': 8, 'layout': 'streamed'})")
    assert info.value.__cause__ is err


def test_sm_count_is_read_once_per_device(monkeypatch):
    # The grids of every launch read the SM count: from the device's properties once per
    # device, not once per launch, and never one device's for another's.
    calls = []
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)

    def properties(device):
        calls.append(device)
        return types.SimpleNamespace(multi_processor_count=132 if device == cuda0 else 66)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(fused, "_sm_counts", {})
    assert [fused._sm_count(d) for d in (cuda0, cuda1, cuda0, cuda1)] == [132, 66, 132, 66]
    assert calls == [cuda0, cuda1]
    assert fused._latency_programs(1000, cuda1) == 66


def test_the_official_scheme_keeps_no_order2_points(monkeypatch):
    # Only "order2" moves its evaluation points (q_mid, p_pred: [B, frames - 1, k] each, saved
    # for the backward); "official" allocates and saves none (leapfrog_fwd's docstring).
    _launches(monkeypatch)                                 # the allocation alone
    w, b = random_mlp(2, (16, 16), device=DEVICE)
    q0 = torch.randn(3, 2, device=DEVICE)
    for scheme, numel in (("official", 0), ("order2", 3 * 4 * 2)):
        points = fused.leapfrog_fwd(q0, q0, w, b, 0.05, 5, "softplus", scheme)[4]
        assert [t.numel() for t in points] == [numel, numel], scheme


def test_fp32_matmul_turns_tf32_off_inside_and_restores_the_callers_setting():
    # CPU products ignore the setting (so the results cannot show it): what the context sets
    # inside, what it leaves after, and that it does not swallow an error raised inside.
    m = torch.backends.cuda.matmul
    if not hasattr(m, "fp32_precision"):
        pytest.skip("torch without per-backend fp32_precision")
    saved = m.fp32_precision
    try:
        m.fp32_precision = "tf32"
        with fused._fp32_matmul():
            assert m.fp32_precision == "ieee"
        assert m.fp32_precision == "tf32"
        m.fp32_precision = "ieee"
        with fused._fp32_matmul("tf32"):
            assert m.fp32_precision == "tf32"
        assert m.fp32_precision == "ieee"
        with pytest.raises(ZeroDivisionError):
            with fused._fp32_matmul():
                1 / 0
    finally:
        m.fp32_precision = saved


@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_a_fallback_keeps_the_rollouts_scheme_dt_and_activation(monkeypatch, which):
    # A kernel that does not fit the GPU hands the rollout (fwd) or its gradients (bwd) to
    # the analytic backend: they must be those of the rollout asked for ("official", dt < 0,
    # tanh), not of the defaults. H is strong enough here that the schemes' gradients differ
    # by far more than the tolerance (as in test_fused_follows_its_scheme_where_the_schemes_
    # differ).
    _kernel_too_big_for_the_gpu(monkeypatch, which)
    monkeypatch.setitem(dispatch._auto_choice, torch.device(DEVICE).type, "fused")
    monkeypatch.setattr(dispatch, "_warned", set())
    gen = torch.Generator().manual_seed(11)
    w, b = random_mlp(3, (16, 24), generator=gen, scale=3.0)
    w, b = [x.to(DEVICE) for x in w], [x.to(DEVICE) for x in b]
    q0, p0 = (torch.randn(3, 3, generator=gen).to(DEVICE) for _ in range(2))
    cot = [torch.randn(s, generator=gen).to(DEVICE) for s in [(3, 4, 3), (3, 4, 3), (3, 3, 3)]]
    with pytest.warns(UserWarning, match="does not fit this GPU"):
        outs, grads = rollout_and_grads(q0, p0, w, b, -0.1, 4, "tanh", "auto", cot,
                                        scheme="official")
    want_outs, want = rollout_and_grads(q0, p0, w, b, -0.1, 4, "tanh", "analytic", cot,
                                        scheme="official")
    _, other = rollout_and_grads(q0, p0, w, b, -0.1, 4, "tanh", "analytic", cot)
    assert max(rel_err(x, y) for x, y in zip(other, want)) > 1e-2      # the schemes differ
    for x, y in zip(outs + grads, want_outs + want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_forward_and_backward_take_the_same_layout_at_the_scratch_cap(monkeypatch):
    # The latency backward's scratch decides the layout of both directions, each from the
    # rollout's frames: a rollout whose scratch is exactly the cap runs the latency layout
    # forward and backward, one frame more the streamed layout in both (a direction that
    # counted steps instead would pair a latency forward with a tile backward, which needs
    # the padded weights only a tile forward makes). Cap here: B = 3 rows, widths 16, 4 steps
    # of 3 evaluations, each 4 * 16 + 6 * 16 + 4 * 16 floats (k 2 pads to 16).
    monkeypatch.setattr(fused, "LATENCY_SCRATCH_BYTES", 4 * 3 * 4 * 3 * 224)
    seen = _launches(monkeypatch)                          # the configuration alone
    _fwd_bwd(3, 2, (16, 16), frames=5)
    _fwd_bwd(3, 2, (16, 16), frames=6)
    assert [s[0] for s in seen] == ["latency"] * 2 + ["streamed"] * 2, seen
