"""Fused leapfrog backend: Triton kernels for the whole rollout, forward and backward.

The math is analytic.py's (same symbols), specialised to the fused contract: two hidden layers
(W1 [n1, 2k], W2 [n2, n1], w [n2]), softplus or tanh, float32 with fp32 accumulation
(tl.dot input_precision="ieee"). W1 is split by the host into its q and p column blocks,
W1q and W1p, so x = [q; p] is never materialised: a1 = q W1q^T + p W1p^T + b1.

Every layout's forward kernel writes the trajectory, p_half and dHdq per step (for
"order2" also the moved evaluation points q_mid and p_pred); its backward walks the steps in
reverse from them and writes weight-gradient partials that the host reduces once
(deterministic, no atomics). The tile layouts' backwards recompute each evaluation's
activations (at their batch sizes saving them would take gigabytes); the latency layout's
forward saves them (a1, a2, e1), which halves its backward's large products.

Four layouts of the same kernels, chosen by one table (LATENCY_MAX_ROWS,
SPLIT_LATENCY_MAX_ROWS, THROUGHPUT_PRECISIONS with _throughput_fits, _chunk; and for
precision "auto", SPLIT_ABOVE_LATENCY at SPLIT_SHAPES):
  * latency.py: a program per batch row, matrix-vector products on the FMA units: the training
    regime (B up to about two thousand), where a row block of 16 would leave all but one or
    four SMs idle; its latency model is in its docstring;
  * throughput.py: hidden-major tiles for large batches with precision "bf16x3", so that every
    weight product has M = the hidden width and compiles to Hopper's wgmma; a persistent grid
    with the weights split and staged once per program; its cost model is in its docstring;
  * streamed.py drives tl.dot on blocks of rows and walks the hidden units in chunks: every
    other large batch;
  * tile.py keeps the weights (and, in the backward, their gradients) in registers instead;
    the table no longer picks it (it spills more than streamed.py at every width: _chunk)
    and it stays for bench/tune_fused.py until a GPU has timed the two.
This module is the host side of all four: the table, the launch, the autograd Function;
ops.py holds the device functions they share.

tl.dot needs every dimension >= 16 and power-of-two blocks: the host zero-pads k and the
widths (width 100 -> 128, k = 10 -> 16) and slices the gradients back. Padded hidden units
have a = 0 and h = s(0) != 0 (softplus(0) = log 2), harmless only because their outgoing
weights are zero; their weight gradients are nonzero and are dropped by the slicing.
"""
import contextlib

import torch

from .common import hand_written_backward

try:
    import triton
except ImportError:  # the dispatcher never routes here without triton
    triton = None

_ACT_CODE = {"softplus": 0, "tanh": 1}


class FusedCannotLaunch(RuntimeError):
    """A kernel config needs more of a resource (shared memory, threads) than this GPU has.
    The dispatcher turns it into analytic with a one-time warning under backend="auto"."""


class FusedShapeTooLarge(FusedCannotLaunch, ValueError):
    """A shape past the kernels' int32 offsets: analytic under backend="auto" (one-time
    warning), a ValueError naming the limit for backend="fused"."""


# The kernels index the [B, T, k] trajectories with int32 offsets.
INT32_OFFSETS = 2 ** 31


def _launch(kernel, grid, *args, **kwargs):
    # Triton launches on the current CUDA device: with the tensors on another one (cuda:1
    # while cuda:0 is current) the kernel would run on the wrong GPU with foreign pointers.
    dev = args[0].device
    try:
        with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
            # Fused multiply-adds asked for by name: the kernels were designed (instruction
            # counts, bench/ptxas_report.py) and checked against float64 on a GPU with them;
            # Triton 3.9 warns that its default turns them off from 3.10 on.
            kernel[grid](*args, enable_fp_fusion=True, **kwargs)
    except triton.runtime.errors.OutOfResources as err:
        cfg = {k: kwargs[k] for k in ("BLOCK_B", "KP", "H1", "H2", "CH", "PREC", "num_warps")
               if k in kwargs}
        cfg["layout"] = getattr(kernel, "__module__", "?").rsplit(".", 1)[-1]
        raise FusedCannotLaunch(f"the fused kernel does not fit this GPU ({err}; config "
                                f"{cfg})") from err


def _pow2(n):
    return max(16, 1 << (int(n) - 1).bit_length())


def _chunk(h1, h2):
    """Hidden units per chunk of the streamed layout (streamed.py) for the tile regime
    (B > LATENCY_MAX_ROWS); 0 would be tile.py's register-resident layout, which no width
    takes any more. From what ptxas reports for sm_90 (bench/ptxas_report.py, triton 3.6,
    launch alignment; backward, 16-row blocks): at width 16 the resident backward spills
    40 B per thread at k <= 16 and 1.9 KB at k 17..32, one 16-unit chunk nothing at either;
    at width 32 resident 2 KB, streamed nothing; at width 128 streamed spills 0.36 KB with
    16-unit chunks and 0.45 KB with 32-unit ones (half the loop trips). The resident layout
    stays for bench/tune_fused.py (chunk 0) until a GPU has timed the two. An H200 sweep of
    the tile configs (bench/tune_fused.py, commit 10adb26) found none faster than 3.09 ms at
    B = 64 and 91.1 ms at B = 65536; which won was not kept, so re-run it before changing
    these."""
    return 16 if max(h1, h2) <= 32 else 32


def _block_b(h1, h2):
    # 16 rows, tl.dot's smallest: 32-row blocks spill more in every tile backward ptxas
    # reports for sm_90 (streamed at widths 32-128; resident at width 16: 1.1 KB against 40 B
    # at k <= 16, 14 KB against 1.9 KB at k 17..32).
    return 16


def _num_warps(h1, h2):
    # At width 128 the streamed backward spills 0.6-1.9 KB per thread with 4 warps and
    # 0.36-0.45 KB with 8 (ptxas, sm_90).
    return 8 if max(h1, h2) >= 128 else 4


# Which kernel runs, by regime: the one table the dispatcher reads. Rows up to
# LATENCY_MAX_ROWS run the latency layout (latency.py: a program per row, matrix-vector
# products on the FMA units), larger batches with precision "bf16x3" the throughput layout
# (throughput.py) where it fits, and the rest the streamed tile layout (streamed.py, in
# chunks of _chunk hidden units). The switch point, as measured (an H200, commit fcd82da,
# widths 100/100, k 10, 16 frames; bench/results/NVIDIA-H200.json): the latency layout beats
# the ieee tile layout up to 512 rows (2.32 against 3.67 ms) and loses from 1024 (4.26 against
# 3.67). At the split shape the throughput layout (bf16x3, what "auto" runs there) already
# wins at 512 (1.64 ms) and loses narrowly at 256 (1.62 against 1.50): where a precision runs
# the throughput layout at a shape in SPLIT_SHAPES, the latency layout stops at
# SPLIT_LATENCY_MAX_ROWS instead (the leapfrog table's "split_latency_max_rows": the last
# crossover batch before the throughput layout beats it). Between the two measured batches
# the crossover is ~290 rows if both times are linear there; above it 512 rows run 1.64
# instead of 2.32 ms.
LATENCY_MAX_ROWS = 512
SPLIT_LATENCY_MAX_ROWS = 256
# The latency layout keeps, per row and evaluation, the forward's activations (a1, a2, e1)
# and the backward's weight-gradient factors (latency._vjp): 4 floats per unit of layer 2,
# 6 per unit of layer 1 and 4 per coordinate; past this many bytes (and int32 offsets) a
# long rollout goes to the tile layouts instead.
LATENCY_SCRATCH_BYTES = 1 << 30
# Above LATENCY_MAX_ROWS, these precisions run throughput.py's hidden-major tiles (wgmma at
# any row block; 16-bit operands take either orientation). Row blocks per direction and
# warps from bench/ptxas_report.py (sm_90, triton 3.6, width 128, 8 warps): the forward
# compiles without spills at 16, 32 and 64 rows, and a wider block gives each wgmma more
# columns (N) for the same chain of dependent products, so it takes 64 (an H200 at commit
# fcd82da: 18.0 ms against 21.1 with 16 at B = 65536); the backward spills 0.52 KB at 16 rows
# and 2.3 KB at 32, so it takes 16 until bench/gpu/leapfrog_table.py has timed 32
# (fused_throughput_bwd32: the 16-row block, not the spills, is what the measured rows say
# costs; throughput.py). 4 warps spill 4.2 KB there.
THROUGHPUT_PRECISIONS = ("bf16x3",)
THROUGHPUT_BLOCK_B = {"fwd": 64, "bwd": 16}
THROUGHPUT_WARPS = 8
# The throughput kernels with their weight products merged pairwise into wider ones
# (throughput._vjp_merged, _fwd_merged): fewer dependent tensor-core stages per step
# (backward 45 wgmma groups instead of 114, order2 forward 27 instead of 36; sm_90 PTX), the
# row blocks as above. Off until bench/gpu/leapfrog_table.py has timed it
# (fused_throughput_merged; its "fused_py" line says what to set): throughput.py's docstring
# has the model.
THROUGHPUT_MERGED = False
# What precision "auto" (leapfrog's default) runs above the latency regime: "ieee" until a GPU
# has measured an fp32-faithful split (tf32x3, or bf16x3 in the throughput or the tile layout)
# faster there at every batch and within 1e-4 of float64 (bench/gpu/leapfrog_table.py,
# "split_above_latency"; its "fused_py" line gives this and the entries above as measured).
# Measured (an H200, commit fcd82da): bf16x3 in the throughput layout, 8.5e-6 from float64,
# 1.6 ms at B = 1024 and 18.0 ms at 65536 against the ieee tile layout's 3.7 and 96.0 ms;
# tf32x3 in the tile layout ran 324 ms at 65536, bf16x3 in it 107 ms.
SPLIT_ABOVE_LATENCY = "bf16x3"
# ... and only at the compiled shapes the leapfrog table measured: padded (H1, H2, KP). It
# times widths 100/100 at k 10, and every width in 65..128 with k up to 16 compiles to
# that same (128, 128, 16) kernel. Elsewhere "auto" stays "ieee": the split layouts' other
# shapes were never timed and compile differently (sm_90 ptxas: the throughput backward at
# widths 16/128 spills 0.56-1.6 KB per thread and runs part of its products on mma.sync; at
# KP 32 it spills more), so a win at the table's shape says nothing about them.
SPLIT_SHAPES = ((128, 128, 16),)


# The narrowest (padded) layers the throughput layout takes. An H200 (commit fcd82da, triton
# 3.6) checked it against float64 at (H1, H2) = (128, 128) and (128, 64), within 1e-5, and
# found it wrong at (64, 64): relative errors of 1e2, and an illegal memory access when a CUDA
# graph replayed it. Its weight products there have M = 64 over 8 warps; not investigated
# further, so other widths run the tile layouts. The interpreter (exact at any width) lets
# tests lower both, to walk the kernel's math at cheap widths.
THROUGHPUT_MIN_H1 = 128
THROUGHPUT_MIN_H2 = 64


def _throughput_fits(H1, H2, KP):
    """Where the throughput layout applies (padded sizes). At least THROUGHPUT_MIN_H1 and
    _H2 (above), and 64 on the wider layer: wgmma needs M >= 64, and narrower layers compile
    to mma.sync with more spills than the tile layouts (sm_90 report). At most 128 x 16 of
    (width x padded k): at width 128 and k 17..32 (KP 32) its backward asks for 230 KB of
    shared memory, over the 227 KB a block may have."""
    width = max(H1, H2)
    return (H1 >= THROUGHPUT_MIN_H1 and H2 >= THROUGHPUT_MIN_H2 and width >= 64
            and width * KP <= 128 * 16)


def _latency_scratch(B, T, H1, H2, KP=16):
    """Elements the latency layout keeps per rollout beyond its outputs: the forward's saved
    activations (a1, a2, e1) and the backward's factors (s2, s1, su, s0, xs of _latency_bwd),
    at the padded sizes (a bound: the arrays take the unpadded ones)."""
    return B * max(T - 1, 0) * 3 * ((2 * H1 + H2) + (3 * H2 + 4 * H1 + 4 * KP))


def resolve_precision(precision, B, T, k, n1, n2):
    """The precision the kernels run: as asked, or for "auto" the table's at this shape:
    "ieee" in the latency regime (whose layout computes in fp32 whatever is asked),
    SPLIT_ABOVE_LATENCY above it at the shapes in SPLIT_SHAPES, "ieee" at the others."""
    if precision != "auto":
        return precision
    shape = (_pow2(n1), _pow2(n2), _pow2(k))
    if shape not in SPLIT_SHAPES:
        return "ieee"
    latency = _layout(B, T, *shape[:2], SPLIT_ABOVE_LATENCY, shape[2]) == "latency"
    return "ieee" if latency else SPLIT_ABOVE_LATENCY


def _layout(B, T, H1, H2, precision="ieee", KP=16):
    """"latency", "throughput", or the tile layout's chunk width (0: resident), clamped to
    the padded H1."""
    throughput = precision in THROUGHPUT_PRECISIONS and _throughput_fits(H1, H2, KP)
    rows = (min(LATENCY_MAX_ROWS, SPLIT_LATENCY_MAX_ROWS)
            if throughput and (H1, H2, KP) in SPLIT_SHAPES else LATENCY_MAX_ROWS)
    if B <= rows and 4 * _latency_scratch(B, T, H1, H2, KP) <= LATENCY_SCRATCH_BYTES:
        return "latency"
    if throughput:
        return "throughput"
    chunk = _chunk(H1, H2)
    if chunk and (chunk < 16 or chunk & (chunk - 1)):
        raise ValueError(f"fused streamed layout: chunk must be 0 or a power of two >= 16 "
                         f"(tl.dot's smallest block), got {chunk}")
    return min(chunk, H1)


def _kernels(layout):
    """(forward kernel, backward kernel) of a layout."""
    if layout in ("latency", "throughput"):
        from . import latency, throughput
        mod = latency if layout == "latency" else throughput
        return mod._leapfrog_fwd_kernel, mod._leapfrog_bwd_kernel
    from . import streamed, tile
    mod = streamed if layout else tile
    return mod._leapfrog_fwd_kernel, mod._leapfrog_bwd_kernel


_sm_counts = {}


def _sm_count(device):
    """Multiprocessors of a CUDA device, read once."""
    if device not in _sm_counts:
        _sm_counts[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _sm_counts[device]


def _latency_programs(B, device):
    """Programs of the latency layout: one per row up to what the GPU holds at once (one
    resident program per SM: each uses most of an SM's registers), then rows queue on them.
    Under the interpreter, 4, so that the tests walk several rows per program."""
    if device.type != "cuda":
        return min(B, 4)
    return min(B, _sm_count(device))


def _throughput_programs(B, device, block_b):
    """Programs of the throughput layout: persistent, one per SM (each holds ~170-200 KB of
    shared memory at width 128, so one fits an SM anyway), walking row blocks grid-stride;
    under the interpreter 3, so that the tests walk several blocks per program."""
    blocks = triton.cdiv(B, block_b)
    if device.type != "cuda":
        return min(blocks, 3)
    return min(blocks, _sm_count(device))


def _launch_config(layout, B, H1, H2, device, precision, direction="fwd"):
    """(grid size, launch keyword arguments) of a layout's fwd or bwd kernel."""
    if layout == "latency":
        return _latency_programs(B, device), dict(num_warps=_latency_warps(H1, H2))
    if precision == "bf16x3" and device.type != "cuda":
        precision = "bf16x3-emulated"          # the interpreter's bf16 dots are wrong
    if layout == "throughput":
        block_b = THROUGHPUT_BLOCK_B[direction]
        merge = {"MERGE": True} if THROUGHPUT_MERGED else {}
        return _throughput_programs(B, device, block_b), dict(
            BLOCK_B=block_b, PREC=precision, num_warps=THROUGHPUT_WARPS, **merge)
    BLOCK_B = _block_b(H1, H2)
    extra = {"CH": layout} if layout else {}
    return triton.cdiv(B, BLOCK_B), dict(BLOCK_B=BLOCK_B, PREC=precision,
                                          num_warps=_num_warps(H1, H2), **extra)


def _latency_warps(h1, h2):
    # W2 is an [H2, H1] register tensor: 8 warps put 64 floats of it in a thread at width
    # 128. sm_90 (bench/ptxas_report.py --sass, triton 3.6): the backward spills nothing at 8
    # warps, 60 B at 4, and 168 B at 16 (registers capped at 128). Per step the whole program
    # issues 21k (4 warps), 42k (8) and 63k (16) instructions forward + backward: fewer warps
    # issue less, more hide more latency. bench/gpu/leapfrog_table.py times 4 and 16 beside 8.
    return 8 if max(h1, h2) >= 64 else 4


def _pad_params(weights, biases, k):
    """Zero-padded, contiguous fp32 copies: W1q, W1p [H1, KP], b1 [H1], W2 [H2, H1], b2, w3."""
    (w1, w2, w3), (b1, b2, _) = weights, biases
    n1, n2 = w1.shape[0], w2.shape[0]
    KP, H1, H2 = _pow2(k), _pow2(n1), _pow2(n2)
    new = w1.new_zeros
    W1q, W1p, W2 = new(H1, KP), new(H1, KP), new(H2, H1)
    W1q[:n1, :k], W1p[:n1, :k], W2[:n2, :n1] = w1[:, :k], w1[:, k:], w2
    B1, B2, W3 = new(H1), new(H2), new(H2)
    B1[:n1], B2[:n2], W3[:n2] = b1, b2, w3[0]
    return (W1q, W1p, B1, W2, B2, W3), (KP, H1, H2)


def leapfrog_fwd(q0, p0, weights, biases, dt, frames, activation, scheme="order2",
                 precision="ieee", save=True):
    """Host side of the forward: check, allocate, launch. Returns q, p, p_half, dHdq, the
    order2 points (q_mid, p_pred; empty for "official") and `saved`, what the backward needs
    besides: the tile layouts' padded weights, or the latency layout's activations (a1, a2,
    e1 per evaluation; empty when not `save`: no backward will run)."""
    B, k = q0.shape
    assert q0.dtype == torch.float32 and len(weights) == 3, "dispatcher checks the contract"
    if B * frames * k >= INT32_OFFSETS:
        # The kernels index the [B, T, k] trajectories with int32 offsets (rows * T * k):
        # past 2^31 elements they would wrap and read or write out of bounds. Under "auto"
        # the dispatcher runs analytic instead (FusedCannotLaunch).
        raise FusedShapeTooLarge(f"the fused leapfrog backend indexes with int32: B * frames "
                                 f"* k = {B} * {frames} * {k} must stay below 2^31; split the "
                                 f"batch or use backend='analytic'")
    n1, n2 = weights[0].shape[0], weights[1].shape[0]
    KP, H1, H2 = _pow2(k), _pow2(n1), _pow2(n2)
    layout = _layout(B, frames, H1, H2, precision, KP)
    if layout == "latency":
        # the latency kernels read the caller's tensors and pad by masked loads
        saved = ()
        params = (weights[0].detach().contiguous(), biases[0].detach().contiguous(),
                  weights[1].detach().contiguous(), biases[1].detach().contiguous(),
                  weights[2].detach().contiguous())
    else:
        with torch.no_grad():
            saved = params = _pad_params(weights, biases, k)[0]
    q0, p0 = q0.detach().contiguous(), p0.detach().contiguous()
    q = q0.new_empty(B, frames, k)             # [B, T, k]
    p = torch.empty_like(q)
    ph = q0.new_empty(B, frames - 1, k)        # [B, T-1, k]
    dq = torch.empty_like(ph)
    order2 = scheme == "order2"
    points = (torch.empty_like(ph), torch.empty_like(ph)) if order2 else (ph.new_empty(0),) * 2
    n_prog, config = _launch_config(layout, B, H1, H2, q0.device, precision)
    if layout == "latency":   # sizes are compile-time constants there (see latency.py)
        n = B * (frames - 1) * 3 if save else 0
        saved = (q0.new_empty(n, n1), q0.new_empty(n, n2), q0.new_empty(n, n1))
        _launch(_kernels(layout)[0], (n_prog,), q0, p0, *params, q, p, ph, dq, *points,
                *saved, B, frames, dt, K=k, N1=n1, N2=n2, KP=KP, H1=H1, H2=H2,
                ACT=_ACT_CODE[activation], ORDER2=order2, SAVE=save, **config)
    else:
        _launch(_kernels(layout)[0], (n_prog,), q0, p0, *params, q, p, ph, dq, *points, B, k,
                frames, dt, KP=KP, H1=H1, H2=H2, ACT=_ACT_CODE[activation], ORDER2=order2,
                **config)
    return q, p, ph, dq, points, saved


def leapfrog_bwd(q, p, ph, points, gq, gp, gd, saved, raw, dt, activation, scheme,
                 precision="ieee"):
    """Host side of the backward: launch, reduce the weight-gradient partials once (per
    program; per evaluation in the latency layout), unpad. saved: the forward's padded
    weights (tile layouts) or saved activations (latency); raw: (w1, w2, w3, b1, b2, b3)."""
    B, T, k = q.shape
    n1, n2 = raw[0].shape[0], raw[1].shape[0]
    KP, H1, H2 = _pow2(k), _pow2(n1), _pow2(n2)
    layout = _layout(B, T, H1, H2, precision, KP)
    n_prog, config = _launch_config(layout, B, H1, H2, q.device, precision, "bwd")
    gq, gp, gd = gq.contiguous(), gp.contiguous(), gd.contiguous()
    dq0, dp0 = q.new_empty(B, k), q.new_empty(B, k)
    if layout == "latency":
        dws, dbs = _latency_bwd(q, p, ph, points, gq, gp, gd, saved, raw, dq0, dp0, n_prog,
                                dt, activation, scheme, config)
        return dq0, dp0, dws, dbs
    # streamed.py adds into its slabs; the resident and throughput layouts write each
    # partial once
    slab = q.new_zeros if layout and layout != "throughput" else q.new_empty
    merge = config.get("MERGE", False)      # throughput.py's merged kernels
    if merge:   # one [H1, 2 KP] partial per program, W1q's and W1p's columns interleaved
        dW1q = dW1p = slab(n_prog, H1, KP, 2)
    else:
        dW1q, dW1p = slab(n_prog, H1, KP), slab(n_prog, H1, KP)
    db1, dW2 = slab(n_prog, H1), slab(n_prog, H2, H1)
    db2, dw3 = q.new_empty(n_prog, H2), q.new_empty(n_prog, H2)
    _launch(_kernels(layout)[1], (n_prog,), q, p, ph, *points, gq, gp, gd, *saved, dq0, dp0,
            dW1q, dW1p, db1, dW2, db2, dw3, B, k, T, dt, KP=KP, H1=H1, H2=H2,
            ACT=_ACT_CODE[activation], ORDER2=scheme == "order2", **config)
    if merge:
        dW1q, dW1p = dW1q[..., 0], dW1q[..., 1]
    dW1q, dW1p, db1, dW2, db2, dw3 = (x.sum(0) for x in (dW1q, dW1p, db1, dW2, db2, dw3))
    dw1 = torch.cat([dW1q[:n1, :k], dW1p[:n1, :k]], 1)       # [n1, 2k]
    return (dq0, dp0, (dw1, dW2[:n2, :n1], dw3[:n2].unsqueeze(0)),
            (db1[:n1], db2[:n2], q.new_zeros(1)))


def _latency_bwd(q, p, ph, points, gq, gp, gd, acts, raw, dq0, dp0, n_prog, dt, activation,
                 scheme, config):
    """The latency layout's backward: from the forward's saved activations (acts) the kernel
    writes dq0, dp0 and, per row and evaluation, the factors of every weight gradient; two
    matrix products and three sums reduce them (deterministic, no atomics). Returns the
    weight and bias gradients in the caller's shapes."""
    B, T, k = q.shape
    w1, w2, w3, b1, _, _ = (t.detach().contiguous() for t in raw)
    n1, n2 = w1.shape[0], w2.shape[0]
    n = B * (T - 1) * 3                        # evaluations, each a scratch row
    if len(acts) != 3 or acts[0].shape[0] != n:  # the kernel would read past their ends
        raise RuntimeError("fused latency backward: the forward did not save its activations "
                           "(it ran where no gradient was wanted)")
    s2, s1, su = q.new_empty(n, 2, n2), q.new_empty(n, 2, n1), q.new_empty(n, n2)
    s0, xs = q.new_empty(n, 2, n1), q.new_empty(n, 2, 2 * k)
    _launch(_kernels("latency")[1], (n_prog,), q, p, ph, *points, gq, gp, gd, w1, b1, w2, w3,
            *acts, dq0, dp0, s2, s1, su, s0, xs, B, T, dt, K=k, N1=n1, N2=n2, KP=_pow2(k),
            H1=_pow2(n1), H2=_pow2(n2), ACT=_ACT_CODE[activation],
            ORDER2=scheme == "order2", **config)
    with _fp32_matmul():
        dW2 = s2.view(2 * n, n2).t() @ s1.view(2 * n, n1)   # sum r2 h1^T + g2 u1^T
        dW1 = s0.view(2 * n, n1).t() @ xs.view(2 * n, 2 * k)  # sum r1 x^T + g1 v^T
    return ((dW1, dW2, su.sum(0).unsqueeze(0)),
            (s0[:, 0].sum(0), s2[:, 0].sum(0), q.new_zeros(1)))


class _fp32_matmul:
    """Full fp32 for the weight-gradient product whatever the caller's TF32 setting (the
    contract is 1e-4 against float64; TF32 products are ~1e-3). Through torch's per-backend
    fp32_precision (torch >= 2.9; the package needs >= 2.11): the legacy allow_tf32 flag
    raises on read once a caller has set TF32 with that API ("mix of the legacy and new
    APIs"), and writing it would leave the caller's state mixed. `_fp32_matmul("tf32")` sets
    TF32 instead (bench/gpu/leapfrog_table.py's matmul peaks)."""

    def __init__(self, precision="ieee"):
        self.precision = precision

    def __enter__(self):
        m = torch.backends.cuda.matmul
        self.saved = m.fp32_precision
        m.fp32_precision = self.precision

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.fp32_precision = self.saved
        return False


class LeapfrogFunction(torch.autograd.Function):
    """Fused rollout: one forward launch, one backward launch; first-order gradients only."""

    @staticmethod
    def forward(ctx, q0, p0, dt, frames, activation, scheme, precision, on_fallback, save, w1,
                w2, w3, b1, b2, b3):
        # save: whether a backward can follow (the caller's grad mode, which forward does not
        # see); only then does the latency layout save its activations
        q, p, ph, dq, points, saved = leapfrog_fwd(q0, p0, (w1, w2, w3), (b1, b2, b3), dt,
                                                   frames, activation, scheme, precision,
                                                   save=save)
        # The raw weights too: if the backward kernel cannot launch, the analytic backend
        # recomputes the gradients from (q0, p0, weights) instead.
        ctx.save_for_backward(q, p, ph, *points, *saved, w1, w2, w3, b1, b2, b3)
        ctx.dt, ctx.activation, ctx.n_saved = dt, activation, len(saved)
        ctx.scheme, ctx.precision, ctx.on_fallback = scheme, precision, on_fallback
        ctx.frames = frames
        return q, p, dq

    @staticmethod
    def backward(ctx, gq, gp, gd):
        return hand_written_backward("fused", LeapfrogFunction._backward, ctx, gq, gp, gd)

    @staticmethod
    def _backward(ctx, gq, gp, gd):
        q, p, ph, qm, pc, *rest = ctx.saved_tensors
        saved, raw = rest[:ctx.n_saved], rest[ctx.n_saved:]
        try:
            dq0, dp0, dws, dbs = leapfrog_bwd(q, p, ph, (qm, pc), gq, gp, gd, saved, raw,
                                              ctx.dt, ctx.activation, ctx.scheme, ctx.precision)
        except FusedCannotLaunch as err:
            if ctx.on_fallback is None:
                raise
            ctx.on_fallback(str(err))
            g = _analytic_grads(q[:, 0], p[:, 0], raw, (gq, gp, gd), ctx)
            return (g[0], g[1], None, None, None, None, None, None, None, *g[2:])
        return (dq0, dp0, None, None, None, None, None, None, None, *dws, *dbs)


def _analytic_grads(q0, p0, raw, cotangents, ctx):
    """Gradients w.r.t. (q0, p0, *weights, *biases) from the analytic backend."""
    from .analytic import leapfrog_analytic
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q0, p0, *raw)]
        outs = leapfrog_analytic(leaves[0], leaves[1], leaves[2:5], leaves[5:], ctx.dt,
                                 ctx.frames, ctx.activation, ctx.scheme)
        return torch.autograd.grad(outs, leaves, cotangents, allow_unused=True)


def leapfrog_fused(q0, p0, weights, biases, dt, frames, activation, scheme="order2",
                   precision="auto", on_fallback=None):
    """on_fallback(reason): called when a kernel does not fit this GPU and the analytic
    backend stands in (the dispatcher's one-time warning); None: FusedCannotLaunch raises.
    precision "auto": resolve_precision's."""
    precision = resolve_precision(precision, q0.shape[0], frames, q0.shape[1],
                                  weights[0].shape[0], weights[1].shape[0])
    save = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (q0, p0, *weights, *biases))
    return LeapfrogFunction.apply(q0, p0, float(dt), frames, activation, scheme, precision,
                                  on_fallback, save, *weights, *biases)
