"""The MoCoGAN baseline's GRU rollout in two Triton kernels: every frame of the recurrence in
one launch forward and one backward.

Contract (what `hgan.models.gru_unroll` calls; it keeps the products outside the recurrence,
the output layer and every weight gradient, in torch):
* `forward(gi, w, b, b_hh, frames, feedback)` -> hs [T, n, H], ws [T, n, 5H]: the hidden
  states of a GRU started from h = 0, and per frame the workspace [r, z, n, h_prev, hn]
  (hn: the hidden state's new-gate part with its bias), the layout of ATen's fused GRU cell.
  feedback: gi [n, 3H] is frame 0's input gates (bias included); frame t >= 1's gates, input
  and hidden, are w @ h_{t-1} + b with w = [W_ih W_out; W_hh] (6H x H), b its bias.
  noise: gi [T, n, 3H] is every frame's input gates; w = W_hh (3H x H), b = b_hh.
* `backward(dh, ws, w, feedback)` -> dgi, dgh [T, n, 3H]: the gradients of the gate
  pre-activations, given dh [T, n, H], the loss's gradient for every h_t from outside the
  recurrence (the output layer's); the recurrence's own path to h_{t-1} (directly, and
  through w) is carried inside.
* float32, contiguous, 1 <= H <= MAX_HIDDEN; CUDA, or CPU under TRITON_INTERPRET=1.

Why: a captured mocogan step ran the rollout as ~180 dependent kernels of a few microseconds
(6 per frame over 30 frames, forward and backward; ~700 with autograd's GRUCell loop), and 15
runs packed on one GPU share its hardware queues with those chains. Here a frame is a few
matrix-vector products inside one program per batch row (the leapfrog latency kernel's
layout: rows on separate SMs, FMA units, no tensor cores): w is 6 blocks of HP x HP re-read
from L2 every frame (393 KB at H = 100 padded to 128; it does not fit on one SM), ~3 us per
frame by L2 bandwidth per SM (modelled, ~120 GB/s): ~0.1 ms forward and as much backward at
30 frames, on 16 SMs at the training batch. Measured (H200, triton 3.6, commit cbeff1f, a
captured mocogan step at batch 16, 16 frames, profiled): forward 0.08 ms, backward 0.15 ms,
where the loops spent 1.58 ms in their 30 cuBLAS products alone; the step 3.60 ms against
5.23 (+45% videos/s), and in the 15-run Table-1 grid MoCoGAN now trains as fast as the HNN
models (docs/experiments.md).

Compiled for sm_90 without a GPU (`python bench/ptxas_report.py --gru`; triton 3.9 on the
development machine, the H200 runs 3.6; H = 100 padded to 128): forward 144 registers per
thread at 4 warps, no spills (128 and 36 B of spills at 8); backward 154 at 8 warps, no
spills (214 at 4); shared memory 0.5 / 4 KB. The grid-stride row loop and the constexpr
branches are the leapfrog latency kernel's, which runs on the H200's triton 3.6.
"""
import torch
import triton
import triton.language as tl

# the leapfrog kernels' launch (on the tensors' CUDA device, not the current one, with fused
# multiply-adds asked for by name) and their SM count, read once per device
from .leapfrog import fused

MAX_HIDDEN = 128


@triton.jit
def _block(w_ptr, blk, H: tl.constexpr, HP: tl.constexpr):
    """Rows [blk H, (blk + 1) H) of a row-major [*, H] matrix, zero-padded to HP x HP."""
    i = tl.arange(0, HP)
    j = tl.arange(0, HP)
    return tl.load(w_ptr + (blk * H + i[:, None]) * H + j[None, :],
                   mask=(i[:, None] < H) & (j[None, :] < H), other=0.0)


@triton.jit
def _wx(w_ptr, b_ptr, blk, h, H: tl.constexpr, HP: tl.constexpr):
    """Block blk of w @ h + b."""
    k = tl.arange(0, HP)
    return tl.sum(_block(w_ptr, blk, H, HP) * h[None, :], axis=1) + \
        tl.load(b_ptr + blk * H + k, mask=k < H, other=0.0)


@triton.jit
def _wtx(w_ptr, blk, g, H: tl.constexpr, HP: tl.constexpr):
    """Block blk of w, transposed, times g."""
    return tl.sum(_block(w_ptr, blk, H, HP) * g[:, None], axis=0)


@triton.jit
def _step(ir, iz, i_n, hr, hz, hn, h, ws, H: tl.constexpr, HP: tl.constexpr):
    """One GRU step from its gate pre-activations; stores [r, z, n, h_prev, hn] at ws."""
    k = tl.arange(0, HP)
    m = k < H
    r = tl.sigmoid(ir + hr)
    z = tl.sigmoid(iz + hz)
    nn = 2.0 * tl.sigmoid(2.0 * (i_n + r * hn)) - 1.0      # tanh, without libdevice
    tl.store(ws + k, r, mask=m)
    tl.store(ws + H + k, z, mask=m)
    tl.store(ws + 2 * H + k, nn, mask=m)
    tl.store(ws + 3 * H + k, h, mask=m)
    tl.store(ws + 4 * H + k, hn, mask=m)
    return nn + z * (h - nn)        # padded lanes: r = z = 1/2, n = 0, h stays 0


@triton.jit
def _forward_kernel(gi_ptr, w_ptr, b_ptr, bhh_ptr, hs_ptr, ws_ptr, n, frames,
                    H: tl.constexpr, HP: tl.constexpr, FEEDBACK: tl.constexpr):
    k = tl.arange(0, HP)
    m = k < H
    for row in range(tl.program_id(0), n, tl.num_programs(0)):
        gi = gi_ptr + row * 3 * H          # frame 0's input gates, both modes
        h = tl.zeros([HP], dtype=tl.float32)
        h = _step(tl.load(gi + k, mask=m, other=0.0), tl.load(gi + H + k, mask=m, other=0.0),
                  tl.load(gi + 2 * H + k, mask=m, other=0.0),
                  tl.load(bhh_ptr + k, mask=m, other=0.0),
                  tl.load(bhh_ptr + H + k, mask=m, other=0.0),
                  tl.load(bhh_ptr + 2 * H + k, mask=m, other=0.0),
                  h, ws_ptr + row * 5 * H, H, HP)
        tl.store(hs_ptr + row * H + k, h, mask=m)
        for t in range(1, frames):
            if FEEDBACK:
                ir = _wx(w_ptr, b_ptr, 0, h, H, HP)
                iz = _wx(w_ptr, b_ptr, 1, h, H, HP)
                i_n = _wx(w_ptr, b_ptr, 2, h, H, HP)
                hr = _wx(w_ptr, b_ptr, 3, h, H, HP)
                hz = _wx(w_ptr, b_ptr, 4, h, H, HP)
                hn = _wx(w_ptr, b_ptr, 5, h, H, HP)
            else:
                gi = gi_ptr + (t * n + row) * 3 * H
                ir = tl.load(gi + k, mask=m, other=0.0)
                iz = tl.load(gi + H + k, mask=m, other=0.0)
                i_n = tl.load(gi + 2 * H + k, mask=m, other=0.0)
                hr = _wx(w_ptr, b_ptr, 0, h, H, HP)
                hz = _wx(w_ptr, b_ptr, 1, h, H, HP)
                hn = _wx(w_ptr, b_ptr, 2, h, H, HP)
            h = _step(ir, iz, i_n, hr, hz, hn, h, ws_ptr + (t * n + row) * 5 * H, H, HP)
            tl.store(hs_ptr + (t * n + row) * H + k, h, mask=m)


@triton.jit
def _step_backward(dh, ws, dgi, dgh, H: tl.constexpr, HP: tl.constexpr):
    """The gate gradients of one step (stored) and its direct path to h_prev (returned)."""
    k = tl.arange(0, HP)
    m = k < H
    r = tl.load(ws + k, mask=m, other=0.0)
    z = tl.load(ws + H + k, mask=m, other=0.0)
    nn = tl.load(ws + 2 * H + k, mask=m, other=0.0)
    hx = tl.load(ws + 3 * H + k, mask=m, other=0.0)
    hn = tl.load(ws + 4 * H + k, mask=m, other=0.0)
    g_n = dh * (1.0 - z) * (1.0 - nn * nn)
    g_z = dh * (hx - nn) * (1.0 - z) * z
    g_r = g_n * hn * (1.0 - r) * r
    g_hn = g_n * r
    tl.store(dgi + k, g_r, mask=m)
    tl.store(dgi + H + k, g_z, mask=m)
    tl.store(dgi + 2 * H + k, g_n, mask=m)
    tl.store(dgh + k, g_r, mask=m)
    tl.store(dgh + H + k, g_z, mask=m)
    tl.store(dgh + 2 * H + k, g_hn, mask=m)
    return g_r, g_z, g_n, g_hn, dh * z


@triton.jit
def _backward_kernel(dh_ptr, ws_ptr, w_ptr, dgi_ptr, dgh_ptr, n, frames,
                     H: tl.constexpr, HP: tl.constexpr, FEEDBACK: tl.constexpr):
    k = tl.arange(0, HP)
    m = k < H
    for row in range(tl.program_id(0), n, tl.num_programs(0)):
        carry = tl.zeros([HP], dtype=tl.float32)
        for s in range(0, frames - 1):          # frames T-1 .. 1, then frame 0 (no h_{-1})
            t = frames - 1 - s
            at = t * n + row
            dh = tl.load(dh_ptr + at * H + k, mask=m, other=0.0) + carry
            g_r, g_z, g_n, g_hn, carry = _step_backward(
                dh, ws_ptr + at * 5 * H, dgi_ptr + at * 3 * H, dgh_ptr + at * 3 * H, H, HP)
            if FEEDBACK:   # frame t's input gates came from h_{t-1} too, through W_ih W_out
                carry += _wtx(w_ptr, 0, g_r, H, HP) + _wtx(w_ptr, 1, g_z, H, HP) + \
                    _wtx(w_ptr, 2, g_n, H, HP) + _wtx(w_ptr, 3, g_r, H, HP) + \
                    _wtx(w_ptr, 4, g_z, H, HP) + _wtx(w_ptr, 5, g_hn, H, HP)
            else:
                carry += _wtx(w_ptr, 0, g_r, H, HP) + _wtx(w_ptr, 1, g_z, H, HP) + \
                    _wtx(w_ptr, 2, g_hn, H, HP)
        dh = tl.load(dh_ptr + row * H + k, mask=m, other=0.0) + carry
        _step_backward(dh, ws_ptr + row * 5 * H, dgi_ptr + row * 3 * H, dgh_ptr + row * 3 * H,
                       H, HP)


def _grid(n, hidden, device):
    """Grid and padded width: a program per row, up to a few per SM (rows past that are
    walked grid-stride by the same programs)."""
    hp = max(16, triton.next_power_of_2(hidden))
    programs = n
    if device.type == "cuda":
        programs = min(n, 4 * fused._sm_count(device))
    return (max(programs, 1),), hp


# Warps per direction at HP = 128, from ptxas for sm_90 (triton 3.9, H = 100; see the
# docstring): the forward spills 36 B per thread at 8 warps and none at 4 (144 registers),
# the backward takes 214 registers at 4 warps and 154 at 8, neither spilling.
FORWARD_WARPS, BACKWARD_WARPS = 4, 8


def supports(hidden, dtype):
    """Why this kernel cannot run the rollout (None: it can)."""
    if dtype != torch.float32:
        return f"the fused GRU kernels take float32, got {dtype}"
    if not 1 <= hidden <= MAX_HIDDEN:
        return f"the fused GRU kernels take hidden widths 1..{MAX_HIDDEN}, got {hidden}"
    return None


def forward(gi, w, b, b_hh, frames, feedback):
    n, hidden = gi.shape[-2], w.shape[1]
    hs = torch.empty(frames, n, hidden, device=gi.device, dtype=gi.dtype)
    ws = torch.empty(frames, n, 5 * hidden, device=gi.device, dtype=gi.dtype)
    grid, hp = _grid(n, hidden, gi.device)
    fused._launch(_forward_kernel, grid, gi, w, b, b_hh, hs, ws, n, frames, H=hidden, HP=hp,
                  FEEDBACK=bool(feedback), num_warps=FORWARD_WARPS)
    return hs, ws


def backward(dh, ws, w, feedback):
    frames, n, hidden = dh.shape
    dgi = torch.empty(frames, n, 3 * hidden, device=dh.device, dtype=dh.dtype)
    dgh = torch.empty_like(dgi)
    grid, hp = _grid(n, hidden, dh.device)
    fused._launch(_backward_kernel, grid, dh, ws, w, dgi, dgh, n, frames, H=hidden, HP=hp,
                  FEEDBACK=bool(feedback), num_warps=BACKWARD_WARPS)
    return dgi, dgh
