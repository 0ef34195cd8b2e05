"""MoCoGAN's GRU rollout as one autograd node with a hand-written backward.

Contract: `gru_unroll(inp, cell, out, frames, feedback)` returns y [n, T, D], the raw (not
normalised) frame outputs y_t = out(h_t) of `cell` (an `nn.GRUCell`) started from h = 0:
* feedback: inp is the first input x0 [n, D]; every later input is the previous y;
* noise: inp is [T, n, D], frame t's input.
Values and gradients (for inp and the six weights) are those of the frame-by-frame
`cell`/`out` loop, `reference_unroll` below, to rounding. Once differentiable (nothing
differentiates through a generator's gradient). Under autocast it runs in the weights'
dtype (fp32): the GRU is a few small products per frame, and fp32 keeps its 30-step
recurrence off low-precision rounding.

Why: in a captured CUDA step each ATen op is a kernel of a few microseconds, and a GRU
frame under autograd is ~4 of them forward and ~19 backward (2 weight-gradient products and
6 gradient accumulations per frame, the output layer's backward, the feedback's add): a
dependent chain of ~700 launches per step at 30 frames, which the 15 runs of the Table-1
grid, packed on one GPU, queue behind one another. Here:
* the feedback is folded into the recurrence: the next input gates are
  W_ih (W_out h + b_out) + b_ih = (W_ih W_out) h + (W_ih b_out + b_ih), so a frame is one
  product of h with [W_ih W_out; W_hh] (6H x H) and the fused GRU cell: 2 kernels forward;
* the output layer runs once over all frames, after the loop;
* backward, per frame: the add of the output's gradient, the fused cell's backward and two
  products carrying the gradient to h_{t-1}; every weight gradient is one product over all
  frames after the loop (the gate gradients and hidden states are kept per frame).
6 kernels a frame instead of ~23. Measured (H200, commit 1d8cb82): a captured mocogan step
alone +2.5%; in the packed grid MoCoGAN's rate unchanged while the HNN runs trained, +15-25%
once alone (docs/experiments.md). Hence the kernels below, which take the chain to 2.

Where hgan.kernels.gru applies (CUDA, float32, hidden <= 128: backend "auto"), the
per-frame loops forward and backward are one Triton kernel each, and a step's GRU is ~25
kernels in all, whatever the frame count; a failure of those kernels falls back, once and
with a warning, to the loops below ("cells"). There, on CUDA the cell is ATen's fused GRU
cell and its backward (the kernels nn.GRUCell runs); elsewhere the same formulas in
elementwise ops. All three share the workspace layout [r, z, n, h_prev, hn] (hn: the hidden
state's new-gate part with its bias).
"""
import warnings

import torch
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "kernels", "cells")


def _cell(gi, gh, hx):
    """One GRU step from the input and hidden gate pre-activations (biases included)."""
    if gi.is_cuda:
        return torch.ops.aten._thnn_fused_gru_cell(gi, gh, hx)
    (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(i_n + r * hn)
    return n + z * (hx - n), torch.cat([r, z, n, hx, hn], 1)


def _cell_backward(dh, ws):
    """(d input gates, d hidden gates, d h_prev) of one step from its workspace."""
    if dh.is_cuda:
        dgi, dgh, dhx, _, _ = torch.ops.aten._thnn_fused_gru_cell_backward(dh, ws, False)
        return dgi, dgh, dhx
    r, z, n, hx, hn = ws.chunk(5, 1)
    dn = dh * (1 - z) * (1 - n * n)            # through tanh: the new gate's pre-activation
    dz = dh * (hx - n) * (1 - z) * z
    dr = dn * hn * (1 - r) * r
    return torch.cat([dr, dz, dn], 1), torch.cat([dr, dz, dn * r], 1), dh * z


_fallback = {}      # why the kernels failed on this process's first call (then cells)


def _use_kernels(backend, inp, w_hh):
    """Whether this rollout runs hgan.kernels.gru: backend "kernels" always (CPU tests run
    it under TRITON_INTERPRET=1), "auto" on CUDA where the contract holds, the kernels have
    not failed before and torch.compile is not tracing, "cells" never."""
    if backend == "cells" or (backend == "auto" and (
            not inp.is_cuda or _fallback or torch.compiler.is_compiling())):
        return False      # (under torch.compile the loops are Inductor's to fuse)
    try:
        from hgan.kernels import gru as kgru   # triton, imported on first use only
    except ImportError:
        if backend == "kernels":
            raise
        return False
    why = kgru.supports(w_hh.shape[1], w_hh.dtype)
    if backend == "kernels":
        if why:
            raise ValueError(f"gru_unroll(backend='kernels'): {why}")
        return True
    return why is None


def _kernel_or_cells(backend, fn, *args):
    """The kernels' call, or under "auto" None after a one-time warning (the cells' path then
    runs): a compile or launch failure costs the speed, never the run. Asked for by name
    ("kernels"), a failure raises."""
    try:
        return fn(*args)
    except Exception as err:   # noqa: BLE001 - any failure of a Triton compile or launch
        if backend == "kernels":
            raise
        if not _fallback:
            _fallback["reason"] = f"{type(err).__name__}: {err}"[:300]
            warnings.warn("hgan.kernels.gru failed; mocogan's GRU rollout runs frame by frame "
                          f"from now on in this process ({_fallback['reason']})", stacklevel=3)
        return None


class _GRUUnroll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, w_ih, w_hh, b_ih, b_hh, w_out, b_out, frames, feedback, backend):
        dtype = w_hh.dtype
        inp = inp.to(dtype)
        n, three_h = inp.shape[-2], w_hh.shape[0]
        if feedback:
            # the previous output's input gates folded in: [W_ih W_out; W_hh] h + its bias
            w_cat = torch.cat([w_ih @ w_out, w_hh])
            b_cat = torch.cat([torch.addmv(b_ih, w_ih, b_out), b_hh])
            gi = torch.addmm(b_ih, inp, w_ih.t())
        else:
            gi_all = torch.addmm(b_ih, inp.reshape(-1, inp.shape[-1]), w_ih.t()).view(
                frames, n, three_h)
            gi = gi_all[0]
        done = None
        if _use_kernels(backend, inp, w_hh):
            from hgan.kernels import gru as kgru
            done = _kernel_or_cells(backend, kgru.forward, gi if feedback else gi_all,
                                    w_cat if feedback else w_hh, b_cat if feedback else b_hh,
                                    b_hh, frames, feedback)
        ctx.kernels, ctx.backend = done is not None, backend
        if done is not None:
            hs, wss = done
        else:
            h = inp.new_zeros(n, w_hh.shape[1])
            hs, wss = [], []
            for t in range(frames):
                if t == 0:
                    gh = b_hh.expand(n, three_h)           # h_{-1} = 0
                elif feedback:
                    g = torch.addmm(b_cat, h, w_cat.t())
                    gi, gh = g[:, :three_h], g[:, three_h:]
                else:
                    gi, gh = gi_all[t], torch.addmm(b_hh, h, w_hh.t())
                h, ws = _cell(gi, gh, h)
                hs.append(h)
                wss.append(ws)
            hs, wss = torch.stack(hs), torch.stack(wss)    # [T, n, H], [T, n, 5H]
        y = torch.addmm(b_out, hs.view(frames * n, -1), w_out.t()).view(frames, n, -1)
        ctx.feedback = feedback
        # the recurrence's matrix, kept for the backward: [W_ih W_out; W_hh] or W_hh
        w_rec = w_cat if feedback else w_hh
        ctx.save_for_backward(inp, w_ih, w_hh, w_out, b_out, hs, wss, w_rec)
        return y.transpose(0, 1).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        inp, w_ih, w_hh, w_out, b_out, hs, wss, w_rec = ctx.saved_tensors
        feedback = ctx.feedback
        frames, n, hid = hs.shape
        three_h = w_hh.shape[0]
        with torch.autocast(dy.device.type, enabled=False):
            dy = dy.to(hs.dtype).transpose(0, 1).reshape(frames * n, -1)   # frame-major rows
            dh_out = (dy @ w_out).view(frames, n, hid)
            a = w_rec[:three_h] if feedback else None    # W_ih W_out, from the forward
            done = None
            if ctx.kernels:
                from hgan.kernels import gru as kgru
                done = _kernel_or_cells(ctx.backend, kgru.backward, dh_out, wss, w_rec,
                                        feedback)
            if done is not None:
                dgi, dgh = done
            else:
                dgis, dghs = [None] * frames, [None] * frames
                carry = None
                for t in reversed(range(frames)):
                    dh = dh_out[t] if carry is None else dh_out[t] + carry
                    dgi, dgh, dhx = _cell_backward(dh, wss[t])
                    dgis[t], dghs[t] = dgi, dgh
                    if t > 0:   # to h_{t-1}: directly, through its hidden gates, (feedback) its output
                        carry = torch.addmm(dhx, dgh, w_hh)
                        if feedback:
                            carry = torch.addmm(carry, dgi, a)
                dgi, dgh = torch.stack(dgis), torch.stack(dghs)        # [T, n, 3H]
            h_prev = hs[:-1].reshape(-1, hid)                           # h_{t-1}, t >= 1
            d_w_hh = dgh[1:].reshape(-1, three_h).t() @ h_prev
            d_b_hh = dgh.sum((0, 1))
            d_w_out = dy.t() @ hs.view(frames * n, hid)
            d_b_out = dy.sum(0)
            if feedback:
                d_a = dgi[1:].reshape(-1, three_h).t() @ h_prev         # of W_ih W_out
                d_c = dgi[1:].sum((0, 1))                               # of W_ih b_out + b_ih
                d_w_ih = torch.addr(torch.addmm(dgi[0].t() @ inp, d_a, w_out.t()), d_c, b_out)
                d_b_ih = dgi[0].sum(0) + d_c
                d_w_out = torch.addmm(d_w_out, w_ih.t(), d_a)
                d_b_out = torch.addmv(d_b_out, w_ih.t(), d_c)
                d_inp = dgi[0] @ w_ih if ctx.needs_input_grad[0] else None
            else:
                d_w_ih = dgi.reshape(-1, three_h).t() @ inp.reshape(-1, inp.shape[-1])
                d_b_ih = dgi.sum((0, 1))
                d_inp = (dgi @ w_ih) if ctx.needs_input_grad[0] else None
        return d_inp, d_w_ih, d_w_hh, d_b_ih, d_b_hh, d_w_out, d_b_out, None, None, None


def gru_unroll(inp, cell, out, frames: int, feedback: bool, backend: str = "auto"):
    """y [n, T, D]: see the module docstring. `cell` an nn.GRUCell, `out` an nn.Linear;
    backend "auto" (the kernels on CUDA where they apply), "kernels" or "cells"."""
    if backend not in BACKENDS:
        raise ValueError(f"gru_unroll: backend {backend!r}, expected one of {BACKENDS}")
    with torch.autocast(inp.device.type, enabled=False):
        return _GRUUnroll.apply(inp, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                out.weight, out.bias, int(frames), bool(feedback), backend)


def reference_unroll(inp, cell, out, frames: int, feedback: bool):
    """The same rollout frame by frame through the modules (autograd's backward): the twin
    `gru_unroll` is tested against."""
    n = inp.shape[-2]
    h = inp.new_zeros(n, cell.hidden_size)
    ys, x = [], inp if feedback else None
    for t in range(frames):
        h = cell(x if feedback else inp[t], h)
        x = out(h)
        ys.append(x)
    return torch.stack(ys, dim=1)
