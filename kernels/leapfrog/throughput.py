"""Throughput layout of the fused kernels: hidden-major tiles on the tensor cores, for large
batches (B in the thousands and up) with a tensor-core precision (bf16x3 above all).

Same rollout and same math as tile.py (analytic.py's symbols); only the orientation and the
work split differ.

Why another layout. Hopper's tensor-core instruction (wgmma) computes a 64-row slab per
warpgroup: M >= 64. The tile layouts of tile.py / streamed.py hold activations row-major,
[BLOCK_B, H], so M is the row block; at BLOCK_B 16 Triton falls back to the older mma.sync
(every bf16x3 dot of streamed/16 at width 128 compiles to mma.sync; sm_90, triton 3.6), and at
BLOCK_B 64 the row-major backward spills. Here the activations are held transposed,
[H, BLOCK_B], and every product with a weight has the weight as its left operand:

    a1 = W1q q + W1p p + b1      [H1, KP] x [KP, BB]     M = H1
    a2 = W2 h1 + b2              [H2, H1] x [H1, BB]     M = H2
    e1 = W2^T g2                 [H1, H2] x [H2, BB]     M = H1
    dW2 += r2 h1^T + g2 u1^T     [H2, BB] x [BB, H1]     M = H2

so M is the hidden width (128 at the benchmark's 100) whatever the row block, and a row
block of 16 already compiles to wgmma (only the k-wide products W1^T g1, M = KP, stay on
mma.sync). The backward takes that small block: each activation tile is then 8 registers per
thread (8 warps), which leaves room for dW2 (64) and the layer-1 gradients in registers. The
forward has no gradients to hold and takes 64 rows (no spills either way): the same chain of
dependent products, each wgmma four times as wide (fused.THROUGHPUT_BLOCK_B).

Weights are loaded and split into bf16 hi/lo once per program, before its loops, and stay
on-chip: Triton stores the parts in shared memory once (W2 and W2^T, hi and lo: 128 KB at
width 128) and every product loads its weight fragment from there into registers, wgmma's A
operand (its choice for an operand computed in the kernel); the activation operands go
through shared memory too (sm_90 report: 172-197 KB of shared memory at width 128, so one
program per SM). Loading host-split bf16 parts instead, so that wgmma would read the weights
straight from shared memory, compiled to more spills (docs/measurements.md). The backward's
spills (0.52 KB per thread) sit in the step loop: 97 local loads and 59 stores per step,
0.66 KB per thread over a 320-byte working set (80 KB per program, more than the L1 left
beside 187 KB of shared memory), modelled at up to ~2 ms of L2 traffic at B = 65536; the
table times the forward alone so that the backward's share can be read off. (_vjp takes
s''(a) from ops._d2 at its use, which saved 32 B of those spills.) The grid is
persistent -- one program per SM, walking row blocks grid-stride -- so the weights are loaded
132 times per launch instead of B / BB times, and the backward writes 132 weight-gradient
partials (8.6 MB at width 128) instead of B / BB (256 MB at B = 65536).

Precision: bf16x3 only (ops._dot's split; under the interpreter its fp32 stand-in). Compiled
in this layout, "ieee" dots (FMA units, weights as the left operand) fell to 32 registers and
12-90 KB of spills per thread, and tf32x3 asked for ~310 KB of shared memory in a forward-only
prototype, over the 227 KB a block may have; those precisions run the other tile layouts.

Cost model (designed against, to be checked with bench/gpu/leapfrog_table.py). B = 65536,
frames 16, width 128 (padded), KP 16, order2: 942 GFLOP fp32-equivalent forward+backward
(padded), i.e. 2.8 TFLOP of bf16 tensor-core products with the three-product split: 3.6 ms at
the measured 787 TFLOP/s bf16 peak, ~7-9 ms at 40-50% of it. The transcendental work
(softplus / sigmoid, ~4 MUFU operations per hidden unit and activation) is ~1 ms spread over
132 SMs, and the trajectory traffic (~0.3 GB) ~0.1 ms: the products set the time.
Measured (an H200, commit fcd82da): 18.0 ms forward + backward (30.9 TFLOP/s fp32-equivalent),
of which the forward alone 3.39 ms (41.7); 8.5e-6 from float64. The backward's ~14.6 ms is 4x
what its products model, but not for its spills: with 16-row blocks the forward took ~6.5 ms
(21.1 ms in all), and the backward does ~2.9x that forward's products (18 of width x width x
rows per step against 6) in 2.2x its time. The 16-row block is the cost (wgmma 16 columns
wide along one dependent chain per SM), as it was the forward's (1.9x from 16 to 64 rows).
At 32 rows the backward spills 2.3 KB per thread instead of 0.5; bench/gpu/leapfrog_table.py
times it (fused_throughput_bwd32) and THROUGHPUT_BLOCK_B["bwd"] follows.

Merged products (fused.THROUGHPUT_MERGED, off until a GPU has timed it). What the 16-row
block costs is read off the PTX: Triton waits for every tl.dot's wgmma group before the next
instruction that needs it (wgmma.wait_group 0 after each), so a step is a chain of dependent
tensor-core stages, each paying the operand's trip through shared memory, the issue and the
wait: 114 per backward step (3 VJPs x 12-14 products x the split's 3 dots) and 36 per
forward step. Modelled from the H200's rows: a 16-row backward block-step took 30 us (14.6
ms over 480 per program), of which its tensor work at the bf16 peak is 5.5 us: ~220 ns per
stage besides the products. Merged, products that share a weight run as one of twice the
columns (_cols2: [a2 | t2] = W2 [h1 | u1], [W2^T r2 | e1] = W2^T [r2 | g2], a1 and t1 from
one product of W1 with q, p and their cotangents, _rows2), and the weight gradients as one
product each (dW2 += [r2 | g2] [h1 | u1]^T, dW1 likewise): 45 stages per backward step; the
order2 forward takes q and p as one operand of W1 (12 products instead of 15, 27 stages).
sm_90 with triton 3.6 (the H200's; bench/ptxas_report.py --chunks throughput_merged
--sass): backward 368 B of spills per thread against 516, step loop 3,965 instructions
against 5,356 with 62 / 32 local loads / stores against 97 / 59, 206 KB of shared memory;
forward 16 B of spills (2 local loads per step), 200 KB. (dW2's product comes right after
[r2 | g2] is formed, before W2^T's: the other way round it spilled 736 B.) Model at
B = 65536: if the stages set the time, the backward's 30 us per block-step becomes
45 x 0.22 + 5.5 = 15.4 us, 7.4 ms; if issuing does, it falls with the instruction count, to
10.8 ms; the forward saves up to 9 stages of ~0.57 us per block-step (its own rows: 3.39 ms
over 120 block-steps of 36 stages and 7.5 us of tensor work), to ~2.8 ms. Forward +
backward 10-14 ms against 18.0: the table (fused_throughput_merged) says which.
"""
import triton
import triton.language as tl

from .ops import _act, _bf16_split, _bf16_split_f32, _d2, _dot_acc, _reverse_step, _saved_step


@triton.jit
def _split(W, PREC: tl.constexpr):
    """A weight as the (hi, lo) pair _w_dot takes, split once per program, before every loop:
    bf16 parts for "bf16x3", the same parts held in fp32 for "bf16x3-emulated"."""
    if PREC == "bf16x3":
        return _bf16_split(W)
    else:
        tl.static_assert(PREC == "bf16x3-emulated", "throughput layout: bf16x3 only")
        return _bf16_split_f32(W)


@triton.jit
def _t(W):
    """The transpose of a _split pair."""
    return tl.trans(W[0]), tl.trans(W[1])


@triton.jit
def _w_dot(W, x, PREC: tl.constexpr):
    """W x with W = (hi, lo) from _split on the left (M = W's rows): the layout's every
    weight product, W_hi x_lo + W_lo x_hi + W_hi x_hi with fp32 accumulation (ops._dot's
    bf16x3 split). "bf16x3-emulated" (the interpreter, whose bf16 dots are wrong): the same
    parts in fp32, products on the FMA units, exact (see ops._dot)."""
    if PREC == "bf16x3":
        x_hi, x_lo = _bf16_split(x)
        return (tl.dot(W[0], x_lo) + tl.dot(W[1], x_hi)) + tl.dot(W[0], x_hi)
    else:
        x_hi, x_lo = _bf16_split_f32(x)
        return ((tl.dot(W[0], x_lo, input_precision="ieee")
                 + tl.dot(W[1], x_hi, input_precision="ieee"))
                + tl.dot(W[0], x_hi, input_precision="ieee"))


@triton.jit
def _g1(a1, W2, b2, w3, ACT: tl.constexpr, PREC: tl.constexpr):
    """g1 = (W2^T g2) * s'(a1) [H1, BB] from a1 [H1, BB]: dH/dx = W1^T g1."""
    h1, d1_1, _ = _act(a1, ACT)
    a2 = _w_dot(W2, h1, PREC) + b2[:, None]
    _, d1_2, _ = _act(a2, ACT)
    return _w_dot(_t(W2), w3[:, None] * d1_2, PREC) * d1_1


@triton.jit
def _grad_part(a1, W1x, W2, b2, w3, ACT: tl.constexpr, PREC: tl.constexpr):
    """One block of dH/dx, W1x^T g1 [KP, BB]: W1x is W1q (-> dH/dq) or W1p (-> dH/dp)."""
    return _w_dot(_t(W1x), _g1(a1, W2, b2, w3, ACT, PREC), PREC)


@triton.jit
def _weights(w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, KP: tl.constexpr,
             H1: tl.constexpr, H2: tl.constexpr, PREC: tl.constexpr):
    """The padded weights (fused._pad_params), loaded and split once per program."""
    cols = tl.arange(0, KP)
    h1 = tl.arange(0, H1)
    h2 = tl.arange(0, H2)
    W1q = tl.load(w1q_ptr + h1[:, None] * KP + cols[None, :])    # [H1, KP]
    W1p = tl.load(w1p_ptr + h1[:, None] * KP + cols[None, :])
    W2 = tl.load(w2_ptr + h2[:, None] * H1 + h1[None, :])        # [H2, H1]
    return (_split(W1q, PREC), _split(W1p, PREC), tl.load(b1_ptr + h1), _split(W2, PREC),
            tl.load(b2_ptr + h2), tl.load(w3_ptr + h2))


@triton.jit
def _block(blk, B, K, T, BLOCK_B: tl.constexpr, KP: tl.constexpr):
    """Offsets of row block blk, transposed ([KP, BB]): into [B, T, k] at t = 0, into
    [B, T-1, k] at t = 0, into [B, k]; and the mask of real rows and coordinates."""
    rows = blk * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    mask = (cols[:, None] < K) & (rows[None, :] < B)
    return (rows[None, :] * (T * K) + cols[:, None], rows[None, :] * ((T - 1) * K) + cols[:, None],
            rows[None, :] * K + cols[:, None], mask)


@triton.jit
def _start(q0_ptr, p0_ptr, q_ptr, p_ptr, traj, flat, mask):
    """A row block's initial state [KP, BB], written as frame 0."""
    q = tl.load(q0_ptr + flat, mask=mask, other=0.0)
    p = tl.load(p0_ptr + flat, mask=mask, other=0.0)
    tl.store(q_ptr + traj, q, mask=mask)
    tl.store(p_ptr + traj, p, mask=mask)
    return q, p


@triton.jit
def _leapfrog_fwd_kernel(q0_ptr, p0_ptr, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         q_ptr, p_ptr, ph_ptr, dq_ptr, qm_ptr, pc_ptr, B, K, T, dt,
                         BLOCK_B: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr,
                         H2: tl.constexpr, ACT: tl.constexpr, ORDER2: tl.constexpr,
                         PREC: tl.constexpr, MERGE: tl.constexpr = False):
    W1q, W1p, b1, W2, b2, w3 = _weights(w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                                        KP, H1, H2, PREC)
    if MERGE and ORDER2:   # ("official" keeps the plain step below)
        W1 = _w1_interleaved(w1q_ptr, w1p_ptr, KP, H1, PREC)
        _fwd_merged(q0_ptr, p0_ptr, W1, W1q, W1p, b1, W2, b2, w3, q_ptr, p_ptr, ph_ptr, dq_ptr,
                    qm_ptr, pc_ptr, B, K, T, dt, BLOCK_B, KP, ACT, PREC)
        return
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        traj, half, flat, mask = _block(blk, B, K, T, BLOCK_B, KP)
        q, p = _start(q0_ptr, p0_ptr, q_ptr, p_ptr, traj, flat, mask)
        aq = _w_dot(W1q, q, PREC)
        for t in range(T - 1):
            # tile._leapfrog_fwd_kernel's step, transposed (its comments apply)
            a1 = aq + _w_dot(W1p, p, PREC) + b1[:, None]
            if ORDER2:
                g1 = _g1(a1, W2, b2, w3, ACT, PREC)
                dq = _w_dot(_t(W1q), g1, PREC)
                qm = q + 0.5 * dt * _w_dot(_t(W1p), g1, PREC)
                ph = p - 0.5 * dt * dq
                pc = p - dt * dq
                ap = _w_dot(W1p, ph, PREC) + b1[:, None]
                amid = _w_dot(W1q, qm, PREC) + ap
                q = q + dt * _grad_part(amid, W1p, W2, b2, w3, ACT, PREC)
                aq = _w_dot(W1q, q, PREC)
                ac = aq + _w_dot(W1p, pc, PREC) + b1[:, None]
                p = ph - 0.5 * dt * _grad_part(ac, W1q, W2, b2, w3, ACT, PREC)
                tl.store(qm_ptr + half + t * K, qm, mask=mask)
                tl.store(pc_ptr + half + t * K, pc, mask=mask)
            else:
                dq = _grad_part(a1, W1q, W2, b2, w3, ACT, PREC)
                ph = p - 0.5 * dt * dq
                ap = _w_dot(W1p, ph, PREC) + b1[:, None]
                q = q + dt * _grad_part(aq + ap, W1p, W2, b2, w3, ACT, PREC)
                aq = _w_dot(W1q, q, PREC)
                p = ph - 0.5 * dt * _grad_part(aq + ap, W1q, W2, b2, w3, ACT, PREC)
            tl.store(q_ptr + traj + (t + 1) * K, q, mask=mask)
            tl.store(p_ptr + traj + (t + 1) * K, p, mask=mask)
            tl.store(ph_ptr + half + t * K, ph, mask=mask)
            tl.store(dq_ptr + half + t * K, dq, mask=mask)


@triton.jit
def _w1_interleaved(w1q_ptr, w1p_ptr, KP: tl.constexpr, H1: tl.constexpr, PREC: tl.constexpr):
    """[W1q W1p] as one _split pair [H1, 2 KP] with their columns interleaved (2i from W1q,
    2i + 1 from W1p): the operand _rows2(q, p) pairs with."""
    c2 = tl.arange(0, 2 * KP)
    at = tl.arange(0, H1)[:, None] * KP + (c2 // 2)[None, :]
    odd = (c2 % 2 == 1)[None, :]
    return _split(tl.where(odd, tl.load(w1p_ptr + at), tl.load(w1q_ptr + at)), PREC)


@triton.jit
def _fwd_merged(q0_ptr, p0_ptr, W1, W1q, W1p, b1, W2, b2, w3, q_ptr, p_ptr, ph_ptr, dq_ptr,
                qm_ptr, pc_ptr, B, K, T, dt, BLOCK_B: tl.constexpr, KP: tl.constexpr,
                ACT: tl.constexpr, PREC: tl.constexpr):
    """The order2 forward with W1's products merged (MERGE): q and p as one operand of the
    interleaved W1 (_rows2, _w1_interleaved), W1q^T g1 and W1p^T g1 as one product; 12 weight
    products per step instead of 15 (27 wgmma groups instead of 36, sm_90 PTX)."""
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        traj, half, flat, mask = _block(blk, B, K, T, BLOCK_B, KP)
        q, p = _start(q0_ptr, p0_ptr, q_ptr, p_ptr, traj, flat, mask)
        for t in range(T - 1):
            a1 = _w_dot(W1, _rows2(q, p), PREC) + b1[:, None]
            dq, dqp = _unrows2(_w_dot(_t(W1), _g1(a1, W2, b2, w3, ACT, PREC), PREC))
            qm = q + 0.5 * dt * dqp
            ph = p - 0.5 * dt * dq
            pc = p - dt * dq
            amid = _w_dot(W1, _rows2(qm, ph), PREC) + b1[:, None]
            q = q + dt * _grad_part(amid, W1p, W2, b2, w3, ACT, PREC)
            ac = _w_dot(W1, _rows2(q, pc), PREC) + b1[:, None]
            p = ph - 0.5 * dt * _grad_part(ac, W1q, W2, b2, w3, ACT, PREC)
            tl.store(qm_ptr + half + t * K, qm, mask=mask)
            tl.store(pc_ptr + half + t * K, pc, mask=mask)
            tl.store(q_ptr + traj + (t + 1) * K, q, mask=mask)
            tl.store(p_ptr + traj + (t + 1) * K, p, mask=mask)
            tl.store(ph_ptr + half + t * K, ph, mask=mask)
            tl.store(dq_ptr + half + t * K, dq, mask=mask)


@triton.jit
def _vjp(q, p, vq, vp, W1q, W1p, b1, W2, b2, w3, dW1q, dW1p, db1, dW2, db2, dw3,
         ACT: tl.constexpr, HAS_VQ: tl.constexpr, HAS_VP: tl.constexpr, PREC: tl.constexpr):
    """tile._vjp transposed: every activation [H, BB], q, p, v and the results [KP, BB]."""
    a1 = _w_dot(W1q, q, PREC) + _w_dot(W1p, p, PREC) + b1[:, None]
    h1, d1_1, _ = _act(a1, ACT)
    a2 = _w_dot(W2, h1, PREC) + b2[:, None]
    h2, d1_2, _ = _act(a2, ACT)
    if HAS_VQ:
        t1 = _w_dot(W1q, vq, PREC)
        if HAS_VP:
            t1 += _w_dot(W1p, vp, PREC)
    else:
        t1 = _w_dot(W1p, vp, PREC)
    u1 = d1_1 * t1
    t2 = _w_dot(W2, u1, PREC)
    g2 = w3[:, None] * d1_2
    r2 = w3[:, None] * _d2(h2, d1_2, ACT) * t2
    e1 = _w_dot(_t(W2), g2, PREC)
    g1 = e1 * d1_1
    r1 = e1 * _d2(h1, d1_1, ACT) * t1 + _w_dot(_t(W2), r2, PREC) * d1_1
    dw3 += tl.sum(d1_2 * t2, axis=1)                                 # u2
    db2 += tl.sum(r2, axis=1)
    dW2 = _dot_acc(g2, tl.trans(u1), _dot_acc(r2, tl.trans(h1), dW2, PREC), PREC)
    db1 += tl.sum(r1, axis=1)
    dW1q = _dot_acc(r1, tl.trans(q), dW1q, PREC)
    dW1p = _dot_acc(r1, tl.trans(p), dW1p, PREC)
    if HAS_VQ:
        dW1q = _dot_acc(g1, tl.trans(vq), dW1q, PREC)
    if HAS_VP:
        dW1p = _dot_acc(g1, tl.trans(vp), dW1p, PREC)
    dxq = _w_dot(_t(W1q), r1, PREC)
    dxp = _w_dot(_t(W1p), r1, PREC)
    return dxq, dxp, dW1q, dW1p, db1, dW2, db2, dw3


@triton.jit
def _cols2(a, b):
    """[M, N] and [M, N] -> [M, 2N], columns interleaved (a_0, b_0, a_1, b_1, ...): two
    operands of one weight product side by side, so that it runs as one wider wgmma."""
    return tl.reshape(tl.join(a, b), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _uncols2(x):
    """_cols2's inverse: [M, 2N] -> ([M, N], [M, N])."""
    return tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))


@triton.jit
def _rows2(a, b):
    """[K, N] and [K, N] -> [2K, N], rows interleaved (a_0, b_0, a_1, ...)."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (2 * a.shape[0], a.shape[1]))


@triton.jit
def _unrows2(x):
    """_rows2's inverse: [2K, N] -> ([K, N], [K, N])."""
    return tl.split(tl.permute(tl.reshape(x, (x.shape[0] // 2, 2, x.shape[1])), (0, 2, 1)))


@triton.jit
def _vjp_merged(q, p, vq, vp, W1, W1_unused, b1, W2, b2, w3, dW1, dW1_unused, db1, dW2, db2,
                dw3, ACT: tl.constexpr, HAS_VQ: tl.constexpr, HAS_VP: tl.constexpr,
                PREC: tl.constexpr):
    """_vjp with its products merged pairwise into wider ones: five weight products
    (each three wgmma groups under bf16x3) instead of up to fourteen. W1 is [W1q W1p] with
    their columns interleaved ([H1, 2 KP], column 2i from W1q, 2i + 1 from W1p), dW1 its
    gradient in the same order; the *_unused slots keep _reverse_step's signature."""
    zero = tl.zeros_like(q)
    if HAS_VQ:
        vq_ = vq
    else:
        vq_ = zero
    if HAS_VP:
        vp_ = vp
    else:
        vp_ = zero
    # X [2 KP, 2 BB]: rows alternate q / p, columns the state and the cotangent v
    X = _rows2(_cols2(q, vq_), _cols2(p, vp_))
    a1, t1 = _uncols2(_w_dot(W1, X, PREC))               # W1 x and W1 v in one product
    a1 += b1[:, None]
    h1, d1_1, _ = _act(a1, ACT)
    u1 = d1_1 * t1
    HU = _cols2(h1, u1)
    a2, t2 = _uncols2(_w_dot(W2, HU, PREC))              # W2 h1 and W2 u1
    a2 += b2[:, None]
    h2, d1_2, _ = _act(a2, ACT)
    g2 = w3[:, None] * d1_2
    r2 = w3[:, None] * _d2(h2, d1_2, ACT) * t2
    RG = _cols2(r2, g2)
    dW2 = _dot_acc(RG, tl.trans(HU), dW2, PREC)          # r2 h1^T + g2 u1^T
    dw3 += tl.sum(d1_2 * t2, axis=1)                                 # u2
    db2 += tl.sum(r2, axis=1)
    f1, e1 = _uncols2(_w_dot(_t(W2), RG, PREC))          # W2^T r2 and W2^T g2
    g1 = e1 * d1_1
    r1 = e1 * _d2(h1, d1_1, ACT) * t1 + f1 * d1_1
    db1 += tl.sum(r1, axis=1)
    dW1 = _dot_acc(_cols2(r1, g1), tl.trans(X), dW1, PREC)   # r1 x^T + g1 v^T
    dxq, dxp = _unrows2(_w_dot(_t(W1), r1, PREC))
    return dxq, dxp, dW1, dW1_unused, db1, dW2, db2, dw3


@triton.jit
def _leapfrog_bwd_kernel(q_ptr, p_ptr, ph_ptr, qm_ptr, pc_ptr, gq_ptr, gp_ptr, gd_ptr,
                         w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         dq0_ptr, dp0_ptr, dw1q_ptr, dw1p_ptr, db1_ptr, dw2_ptr, db2_ptr,
                         dw3_ptr, B, K, T, dt,
                         BLOCK_B: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr,
                         H2: tl.constexpr, ACT: tl.constexpr, ORDER2: tl.constexpr,
                         PREC: tl.constexpr, MERGE: tl.constexpr = False):
    """tile._leapfrog_bwd_kernel's reverse walk, transposed, over this program's row blocks;
    the weight gradients accumulate over all of them into one partial per program. MERGE:
    the step's VJPs are _vjp_merged's, W1 and its gradient held as one [H1, 2 KP] tile with
    W1q's and W1p's columns interleaved (written so to dw1q_ptr; dw1p_ptr is not written)."""
    pid = tl.program_id(0)
    W1q, W1p, b1, W2, b2, w3 = _weights(w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                                        KP, H1, H2, PREC)
    if MERGE:
        W1q = _w1_interleaved(w1q_ptr, w1p_ptr, KP, H1, PREC)
        W1p = W1q
        dW1q = tl.zeros((H1, 2 * KP), dtype=tl.float32)
        dW1p = tl.zeros((16,), dtype=tl.float32)
        VJP: tl.constexpr = _vjp_merged
    else:
        dW1q = tl.zeros((H1, KP), dtype=tl.float32)
        dW1p = tl.zeros((H1, KP), dtype=tl.float32)
        VJP: tl.constexpr = _vjp
    dW2 = tl.zeros((H2, H1), dtype=tl.float32)
    db1 = tl.zeros((H1,), dtype=tl.float32)
    db2 = tl.zeros((H2,), dtype=tl.float32)
    dw3 = tl.zeros((H2,), dtype=tl.float32)
    for blk in range(pid, tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        traj, half, flat, mask = _block(blk, B, K, T, BLOCK_B, KP)
        Q = tl.load(gq_ptr + traj + (T - 1) * K, mask=mask, other=0.0)
        P = tl.load(gp_ptr + traj + (T - 1) * K, mask=mask, other=0.0)
        for i in range(T - 1):
            t = T - 2 - i
            q, p, q1, ph, D, qm, pc = _saved_step(q_ptr, p_ptr, ph_ptr, gd_ptr, qm_ptr,
                                                  pc_ptr, traj, half, t, K, mask, ORDER2)
            Q, P, dW1q, dW1p, db1, dW2, db2, dw3 = _reverse_step(
                VJP, q, p, q1, ph, D, qm, pc, Q, P, W1q, W1p, b1, W2, b2, w3,
                dW1q, dW1p, db1, dW2, db2, dw3, dt, ACT, ORDER2, PREC)
            Q += tl.load(gq_ptr + traj + t * K, mask=mask, other=0.0)
            P += tl.load(gp_ptr + traj + t * K, mask=mask, other=0.0)
        tl.store(dq0_ptr + flat, Q, mask=mask)
        tl.store(dp0_ptr + flat, P, mask=mask)
    cols = tl.arange(0, KP)
    h1 = tl.arange(0, H1)
    h2 = tl.arange(0, H2)
    if MERGE:
        c2 = tl.arange(0, 2 * KP)
        tl.store(dw1q_ptr + pid * H1 * 2 * KP + h1[:, None] * (2 * KP) + c2[None, :], dW1q)
    else:
        tl.store(dw1q_ptr + pid * H1 * KP + h1[:, None] * KP + cols[None, :], dW1q)
        tl.store(dw1p_ptr + pid * H1 * KP + h1[:, None] * KP + cols[None, :], dW1p)
    tl.store(dw2_ptr + pid * H2 * H1 + h2[:, None] * H1 + h1[None, :], dW2)
    tl.store(db1_ptr + pid * H1 + h1, db1)
    tl.store(db2_ptr + pid * H2 + h2, db2)
    tl.store(dw3_ptr + pid * H2 + h2, dw3)
