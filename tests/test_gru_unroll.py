"""hgan.models.gru_unroll: mocogan's rollout as one node with a hand-written backward, against
the frame-by-frame GRUCell loop (autograd's backward), float64, finite differences and an
op count."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hgan.models import gru_unroll as gu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _modules(d_in, hidden, seed, dtype=torch.float64, device="cpu"):
    torch.manual_seed(seed)
    cell, out = nn.GRUCell(d_in, hidden), nn.Linear(hidden, d_in)
    with torch.no_grad():   # biases away from 0, so that every bias term is exercised
        for b in (cell.bias_ih, cell.bias_hh, out.bias):
            b.uniform_(-0.5, 0.5)
    return cell.to(device, dtype), out.to(device, dtype)


def _inputs(n, frames, d_in, feedback, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, d_in) if feedback else (frames, n, d_in)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


def _grads(fn, inp, cell, out, frames, feedback, up):
    x = inp.clone().requires_grad_(True)
    y = fn(x, cell, out, frames, feedback)
    params = [x, *cell.parameters(), *out.parameters()]
    return y, torch.autograd.grad((y * up).sum(), params)


@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("n,frames,d_in,hidden", [(1, 1, 3, 5), (3, 2, 4, 4), (5, 7, 6, 9),
                                                  (2, 30, 20, 16)])
def test_values_and_every_gradient_match_the_frame_by_frame_loop(feedback, n, frames, d_in,
                                                                 hidden):
    cell, out = _modules(d_in, hidden, seed=frames)
    inp = _inputs(n, frames, d_in, feedback, torch.float64, seed=n)
    up = torch.randn(n, frames, d_in, generator=torch.Generator().manual_seed(9),
                     dtype=torch.float64)
    y, got = _grads(gu.gru_unroll, inp, cell, out, frames, feedback, up)
    y_ref, want = _grads(gu.reference_unroll, inp, cell, out, frames, feedback, up)
    assert y.shape == (n, frames, d_in)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    names = ["input", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "out.weight", "out.bias"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("feedback", [True, False])
def test_gradients_pass_finite_differences(feedback):
    cell, out = _modules(3, 4, seed=1)
    inp = _inputs(2, 4, 3, feedback, torch.float64).requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True)
              for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                        out.weight, out.bias)]
    fn = lambda x, *w: gu._GRUUnroll.apply(x, *w, 4, feedback, "cells")    # noqa: E731
    assert torch.autograd.gradcheck(fn, (inp, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("feedback", [True, False])
def test_float32_is_within_rounding_of_float64(feedback):
    cell64, out64 = _modules(20, 100, seed=3)
    cell32, out32 = _modules(20, 100, seed=3, dtype=torch.float32)
    inp = _inputs(16, 30, 20, feedback, torch.float64)
    up = torch.randn(16, 30, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y64, g64 = _grads(gu.reference_unroll, inp, cell64, out64, 30, feedback, up)
    y32, g32 = _grads(gu.gru_unroll, inp.float(), cell32, out32, 30, feedback, up.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_runs_in_float32_under_autocast():
    # a bf16 GRU over 30 frames would round its recurrence at every step: it stays in fp32
    cell, out = _modules(6, 8, seed=4, dtype=torch.float32)
    inp = _inputs(3, 10, 6, True, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gu.gru_unroll(inp, cell, out, 10, True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, gu.reference_unroll(inp, cell, out, 10, True), rtol=1e-5,
                               atol=1e-6)


def test_kernels_per_frame():
    # The point of the module: a few ATen ops per frame, forward and backward (each a kernel in
    # a captured CUDA step). The GRU cell and its backward are one fused op each on CUDA (the
    # CPU runs them as elementwise ops): counted as one here.
    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n, self.paused = 0, False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name
            if not self.paused and not name.endswith(("view", "select", "slice", "detach",
                                                      "alias", "t", "transpose", "expand",
                                                      "_unsafe_view", "empty", "zeros")):
                self.n += 1
            return func(*args, **(kwargs or {}))

    def as_one(fn, mode):
        def wrapped(*args):
            mode.paused = True
            try:
                return fn(*args)
            finally:
                mode.paused = False
                mode.n += 1
        return wrapped

    cell, out = _modules(20, 32, seed=0, dtype=torch.float32)
    from hgan.kernels import gru as kgru
    counts = {}
    for backend in ("cells", "kernels"):
        for frames in (8, 16):
            mode = Ops()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(gu, "_cell", as_one(gu._cell, mode))
                mp.setattr(gu, "_cell_backward", as_one(gu._cell_backward, mode))
                # each Triton kernel is one launch (the interpreter's own copies not counted)
                mp.setattr(kgru, "forward", as_one(kgru.forward, mode))
                mp.setattr(kgru, "backward", as_one(kgru.backward, mode))
                x = _inputs(4, frames, 20, True, torch.float32)
                params = list(cell.parameters()) + list(out.parameters())
                with mode:
                    y = gu.gru_unroll(x, cell, out, frames, True, backend=backend)
                    torch.autograd.grad(y.sum(), params)
            counts[backend, frames] = mode.n
    # cells, per frame: forward a product and the cell; backward an add, the cell's backward,
    # two products. The kernels: none per frame, about 25 ops in all.
    assert (counts["cells", 16] - counts["cells", 8]) / 8 == 6, counts
    assert counts["kernels", 16] == counts["kernels", 8] <= 30, counts


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("dtype,backend", [(torch.float64, "auto"), (torch.float32, "cells"),
                                           (torch.float32, "auto")])
def test_cuda_rollout_matches_the_loop(feedback, dtype, backend):
    # on CUDA: "cells" is ATen's fused GRU cell and its backward (workspace layout, gate
    # order), as is "auto" in float64; "auto" in float32 is hgan.kernels.gru, compiled; all
    # against the frame-by-frame modules in float64 on the same device
    cell, out = _modules(20, 100, seed=5, dtype=dtype, device="cuda")
    inp = _inputs(16, 30, 20, feedback, dtype, device="cuda")
    up = torch.randn(16, 30, 20, generator=torch.Generator().manual_seed(2), dtype=dtype).cuda()
    run = lambda *a: gu.gru_unroll(*a, backend=backend)      # noqa: E731
    y, got = _grads(run, inp, cell, out, 30, feedback, up)
    assert not gu._fallback, gu._fallback
    cell64, out64 = _modules(20, 100, seed=5, device="cuda")
    y_ref, want = _grads(gu.reference_unroll, inp.double(), cell64, out64, 30, feedback,
                         up.double())
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, **tol)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"],
                                   atol=tol["atol"] * max(1.0, b.abs().max().item()))


# hgan.kernels.gru: the loops forward and backward in Triton (on CPU under TRITON_INTERPRET=1,
# which tests/conftest.py sets where there is no GPU)
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="needs a CUDA GPU or the Triton interpreter")


@needs_triton
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("n,frames,d_in,hidden", [(1, 1, 3, 5), (3, 2, 4, 4), (5, 7, 6, 9),
                                                  (2, 30, 20, 16), (3, 4, 20, 100)])
def test_kernels_match_float64_and_the_cells(feedback, n, frames, d_in, hidden):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cell64, out64 = _modules(d_in, hidden, seed=frames)
    cell, out = _modules(d_in, hidden, seed=frames, dtype=torch.float32, device=dev)
    inp = _inputs(n, frames, d_in, feedback, torch.float64, seed=n)
    up = torch.randn(n, frames, d_in, generator=torch.Generator().manual_seed(9),
                     dtype=torch.float64)
    y64, want = _grads(gu.reference_unroll, inp, cell64, out64, frames, feedback, up)
    k = lambda *a: gu.gru_unroll(*a, backend="kernels")      # noqa: E731
    c = lambda *a: gu.gru_unroll(*a, backend="cells")        # noqa: E731
    y, got = _grads(k, inp.float().to(dev), cell, out, frames, feedback, up.float().to(dev))
    y_c, cells = _grads(c, inp.float().to(dev), cell, out, frames, feedback, up.float().to(dev))
    torch.testing.assert_close(y.double().cpu(), y64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, y_c, rtol=1e-5, atol=1e-6)
    for a, b, cc in zip(got, want, cells):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(a, cc, rtol=1e-5, atol=1e-6 * scale)


@needs_triton
def test_kernels_launch_through_the_leapfrog_kernels_device_guard(monkeypatch):
    # Triton launches on the current CUDA device: a run on cuda:1 while cuda:0 is current
    # would launch there with foreign pointers. The leapfrog kernels' launch enters the
    # tensors' device (tested in test_leapfrog_fused.py); the GRU kernels go through it.
    from hgan.kernels import gru as kgru
    from hgan.kernels.leapfrog import fused
    real, launched = fused._launch, []

    def spy(kernel, grid, *args, **kwargs):
        launched.append(kernel)
        return real(kernel, grid, *args, **kwargs)
    monkeypatch.setattr(fused, "_launch", spy)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cell, out = _modules(3, 4, seed=0, dtype=torch.float32, device=dev)
    x = _inputs(2, 3, 3, True, torch.float32, device=dev).requires_grad_(True)
    gu.gru_unroll(x, cell, out, 3, True, backend="kernels").sum().backward()
    assert launched == [kgru._forward_kernel, kgru._backward_kernel]


def test_kernels_refuse_what_they_do_not_take():
    cell, out = _modules(3, 4, seed=0)                        # float64
    with pytest.raises(ValueError, match="the fused GRU kernels take float32, got torch.float64"):
        gu.gru_unroll(_inputs(2, 3, 3, True, torch.float64), cell, out, 3, True,
                      backend="kernels")
    wide_cell, wide_out = _modules(3, 129, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"hidden widths 1\.\.128, got 129"):
        gu.gru_unroll(_inputs(2, 3, 3, True, torch.float32), wide_cell, wide_out, 3, True,
                      backend="kernels")
    with pytest.raises(ValueError, match="backend 'triton', expected one of"):
        gu.gru_unroll(_inputs(2, 3, 3, True, torch.float32), wide_cell, wide_out, 3, True,
                      backend="triton")


def test_a_kernel_failure_falls_back_to_the_cells_once_with_a_warning(monkeypatch):
    # "auto" on CUDA: a compile or launch failure costs the speed, never the run; asked for by
    # name the failure raises
    from hgan.kernels import gru as kgru
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("ptxas: out of resources (stand-in)")
    monkeypatch.setattr(kgru, "forward", broken)
    monkeypatch.setattr(gu, "_fallback", {})
    monkeypatch.setattr(gu, "_use_kernels", lambda backend, inp, w: not gu._fallback)
    cell, out = _modules(3, 4, seed=0, dtype=torch.float32)
    inp = _inputs(2, 3, 3, True, torch.float32)
    with pytest.warns(UserWarning, match=r"hgan.kernels.gru failed; .*frame by frame .*"
                                         r"RuntimeError: ptxas: out of resources"):
        y = gu.gru_unroll(inp, cell, out, 3, True)
    torch.testing.assert_close(y, gu.gru_unroll(inp, cell, out, 3, True, backend="cells"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # remembered: no second try, no second warning
        gu.gru_unroll(inp, cell, out, 3, True)
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="out of resources"):
        gu._kernel_or_cells("kernels", broken)
