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
    fn = lambda x, *w: gu._GRUUnroll.apply(x, *w, 4, feedback)    # noqa: E731
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

    cell, out = _modules(20, 100, seed=0, dtype=torch.float32)
    counts = {}
    for frames in (8, 16):
        mode = Ops()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gu, "_cell", as_one(gu._cell, mode))
            mp.setattr(gu, "_cell_backward", as_one(gu._cell_backward, mode))
            x = _inputs(16, frames, 20, True, torch.float32)
            params = list(cell.parameters()) + list(out.parameters())
            with mode:
                y = gu.gru_unroll(x, cell, out, frames, True)
                torch.autograd.grad(y.sum(), params)
        counts[frames] = mode.n
    per_frame = (counts[16] - counts[8]) / 8
    # forward: a product and the cell; backward: an add, the cell's backward, two products
    assert per_frame == 6, counts


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_fused_cell_matches_the_loop(feedback, dtype):
    # ATen's fused GRU cell and its backward (workspace layout, gate order) against the
    # frame-by-frame modules on the same device
    cell, out = _modules(20, 100, seed=5, dtype=dtype, device="cuda")
    inp = _inputs(16, 30, 20, feedback, dtype, device="cuda")
    up = torch.randn(16, 30, 20, generator=torch.Generator().manual_seed(2), dtype=dtype).cuda()
    y, got = _grads(gu.gru_unroll, inp, cell, out, 30, feedback, up)
    cell64, out64 = _modules(20, 100, seed=5, device="cuda")
    y_ref, want = _grads(gu.reference_unroll, inp.double(), cell64, out64, 30, feedback,
                         up.double())
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, **tol)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"],
                                   atol=tol["atol"] * max(1.0, b.abs().max().item()))
