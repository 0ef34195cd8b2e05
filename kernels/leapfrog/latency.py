"""Latency layout of the fused kernels: one batch row at a time per program, matrix-vector
products on the FMA units, for the training regime (B up to about two thousand).

Same rollout and same math as tile.py (analytic.py's symbols); only the work split differs.

Why a second layout. In the tile layouts (tile.py, streamed.py) a program owns a block of
16-32 rows and drives tl.dot. At the training batch, B = 16, that is ONE program on one of an
H200's 132 SMs walking the whole rollout alone: measured 3.6 ms forward+backward at B = 16..1024
(H200, triton 3.6, width 100 -> 128, frames 16), flat in B because the chain of dependent
stages, not arithmetic, sets the time. Here every row gets its own program, so B = 16 runs on
16 SMs and B = 64 on 64, and each stage of the chain is a matrix-vector product spread over the
program's threads:

    y = sum(W * x[None, :], axis=1)     (W x:   per-thread FMAs, then a warp reduction)
    y = sum(W * x[:, None], axis=0)     (W^T x: the same registers, reduced the other way)

W1q, W1p [H1, KP] and W2 [H2, H1] are loaded once per program, straight from the caller's
nn.Linear tensors (masked loads do the zero-padding), and stay in registers for every row and
step the program walks. Rows past the grid (B larger than the program count) are walked one
after another by the same program (grid-stride), so the weights are read once per program.
Weight gradients are sums over rows and evaluations of outer products (dW2 = sum r2 h1^T +
g2 u1^T, dW1 = sum r1 x^T + g1 v^T, with x = [q; p] and v its cotangent direction); held in
registers they would crowd out the weights, so each evaluation writes its factors (r2, g2,
u2, h1, u1; r1, g1; q, p, vq, vp) to a scratch row and the host reduces them all in two
fp32 matrix products and three sums: deterministic, with no atomics. The forward saves
each evaluation's a1, a2 and e1 = W2^T (w3 * s'(a2)) for the backward ((2 n1 + n2) floats per
row and evaluation, 1.2 KB at width 100: at these batch sizes memory is no constraint), so
that the backward need not recompute them.

Latency model (designed against; the figures it predicts are to be checked on a GPU with
bench/gpu/leapfrog_table.py). Width 128 (100 padded), KP 16, frames 16, order2:
  * One gradient evaluation F = dH/dx is four dependent stages: a1 = W1 x (2k x 128), a2 = W2 h1
    (128 x 128), e1 = W2^T g2 (128 x 128), F = W1^T g1 (128 x 2k), plus two register-layout
    conversions (a1's layout to W2's and back; each a shared-memory round trip and a barrier).
  * Its VJP (the backward) reads that evaluation's a1, a2 and e1 and is four reduction
    stages, two of them 128 x 128 (t2 = W2 u1, W2^T r2) and two 2k x 128 (t1 = W1 v,
    W1^T r1); recomputing a1, a2 and e1 there cost two more 128 x 128 stages and a 2k x 128
    one per VJP. Plus stores of the weight gradients' factors, which nothing waits for. The
    factors and saved activations are 40 * width + 16 * k bytes per row and evaluation (487
    MB written and read back at B = 2048, frames 16, width 128, k 10: ~0.25 ms at ~4 TB/s;
    a few us at the training batch), and the factors' products are B * 45 * 2 * width *
    (width + 2k) multiply-adds (~5 us at B = 64, ~0.14 ms at B = 2048, fp32 units).
  * A 128 x 128 stage over 8 warps is 64 FMAs per thread, a 5-level shuffle reduction and,
    for the cross-warp axis, a shared-memory exchange: ~150-300 cycles, ~0.1-0.15 us at 1.98 GHz.
  * Rollout: 15 steps x 3 evaluations x 4 stages = 180 stages forward, 180 backward (the
    VJPs; ~540 with the recomputed primal stages this layout had before it saved them):
    ~40-55 us per row chain by stage latency. The instructions the stages take set a higher
    floor: 2286 + 3006 per thread and step (below), two warps per scheduler, ~80 us.
  * Every program walks its rows' chains concurrently with the others, so up to one row per SM
    (132 on an H200) the time is one chain: ~0.08-0.1 ms forward+backward plus ~10 launches of
    host glue (~5 us each) -- against 3.6 ms measured for the tile layout at B = 16 and 64.
  * Above the SM count, rows queue: ceil(B / programs) chains each. At B = 1024, ~8 chains per
    program: ~0.65-0.8 ms, still under the tile layout's measured 3.6 ms; by a few thousand rows
    the tile layout's tensor-core dots win, which is where dispatch.py's table switches.
Measured against it (an H200, commit fcd82da, bench/gpu/leapfrog_table.py): 0.46 ms forward +
backward at B = 16 and at B = 64 replayed from a CUDA graph, ~5x the modelled 0.08-0.1 ms
(1.4-1.6 ms per eager call: the host's dispatch and autograd); B = 256 1.50 ms, 512 2.32 ms,
1024 4.26 ms, 2048 8.2 ms: past one row per SM each further chain costs ~0.5 ms, not the
modelled ~0.08, so the switch to the tile layouts came at 512 rows, not a few thousand.
Where the time goes beyond the model (stage latency, the register-layout conversions, the
factor stores) is for a profiler run to say.

Registers and instructions (bench/ptxas_report.py --sass, sm_90, triton 3.6): W2 is 64
registers per thread at 8 warps,
and each H2-indexed vector 16 (W2's register layout gives a row to one warp, so a vector
along H2 is spread over 8 warps only). The width-128 backward at 8 warps spilled 1.9 KB per
thread with dW2 in registers; 140 B (15 local loads and 5 stores in every step) with layer
2's factors written out and layer 1's gradients still accumulated in registers; nothing, and
2.6% fewer instructions per step (4103 against 4214), with layer 1's factors written out too:
at the training batch the extra 0.96 KB of stores per evaluation cost nothing measurable in
the model above, at B = 2048 ~0.05 ms. Reading the forward's a1, a2 and e1 instead of
recomputing them took the backward's step loop from 4103 to 3006 instructions per thread
(the forward's, which stores them, from 2211 to 2286): 16% fewer per step in all, no spills
(at 4 warps the backward's 152 B fell to 60, at 16 warps 308 B to 168). The report decides
the warps per width (fused._latency_warps).

Instruction mix of the step loop (SASS, same compile, width 128, 8 warps; per thread and
step): backward 3006 = 406 FFMA + 637 FMUL + 585 FADD + 348 SHFL + 276 shared-memory loads,
stores and barriers + 117 global loads + the rest; forward 2286 = 438 FFMA + 412 FMUL + 504
FADD + 318 SHFL + 235 shared-memory operations. FFMA is 13% of what the backward issues and
19% of the forward's. W2's register layout (a warp holds 16 rows x 128 columns, 4 columns
per lane) makes W x reduce every row value over 32 lanes (5 shuffle levels each: 80 SHFL +
80 FADD per product and thread) while W^T x reduces in-thread and across warps through
shared memory. If a GPU finds the kernel issue-bound, these reductions, not the
arithmetic, are the cost to cut. A layout that spreads W2's columns over fewer lanes does not
(counted for [4, 128, 32] blocks: W x falls from ~224 to ~100 instructions per thread, but
W^T x then reduces 16 values per thread across warps instead of 4, ~290 against ~100); what
would is a reduce-scatter (each lane keeping its own share of the outputs instead of all of
them), which tl.sum does not express.
"""
import triton
import triton.language as tl

from .ops import _act, _saved_step


@triton.jit
def _load_weights(w1_ptr, b1_ptr, w2_ptr, K: tl.constexpr, N1: tl.constexpr,
                  N2: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr):
    """W1q, W1p [H1, KP], b1 [H1], W2 [H2, H1] from the caller's nn.Linear tensors (w1 [n1, 2k],
    w2 [n2, n1]), zero-padded by the loads' masks: no padded copies on the host. The sizes
    are compile-time constants so that Triton sees the row strides' alignment: with n1 = 100
    it loads W2 in 16-byte vectors, and the register layout that follows from that keeps an
    H2-indexed vector at 16 registers per thread instead of 64 (runtime sizes spilled 3 KB
    per thread in the width-128 backward; bench/ptxas_report.py)."""
    cols = tl.arange(0, KP)
    h1 = tl.arange(0, H1)
    h2 = tl.arange(0, H2)
    m1 = (h1[:, None] < N1) & (cols[None, :] < K)
    W1q = tl.load(w1_ptr + h1[:, None] * (2 * K) + cols[None, :], mask=m1, other=0.0)
    W1p = tl.load(w1_ptr + h1[:, None] * (2 * K) + K + cols[None, :], mask=m1, other=0.0)
    W2 = tl.load(w2_ptr + h2[:, None] * N1 + h1[None, :],
                 mask=(h2[:, None] < N2) & (h1[None, :] < N1), other=0.0)
    return W1q, W1p, tl.load(b1_ptr + h1, mask=h1 < N1, other=0.0), W2


@triton.jit
def _vec(ptr, N: tl.constexpr, H: tl.constexpr):
    """A length-N vector zero-padded to H (b2, w3: re-read where used, see _vjp)."""
    h = tl.arange(0, H)
    return tl.load(ptr + h, mask=h < N, other=0.0)


@triton.jit
def _a1(q, p, W1q, W1p, b1):
    """Layer 1's pre-activation at (q, p): one reduction for both column blocks."""
    return tl.sum(W1q * q[None, :] + W1p * p[None, :], axis=1) + b1


@triton.jit
def _g1(a1, W2, b2, w3, a1_ptr, a2_ptr, e1_ptr, e, N1: tl.constexpr, N2: tl.constexpr,
        H1: tl.constexpr, H2: tl.constexpr, ACT: tl.constexpr, SAVE: tl.constexpr):
    """g1 = (W2^T (w3 * s'(a2))) * s'(a1): dH/dx = W1^T g1. With SAVE, a1, a2 and
    e1 = W2^T (w3 * s'(a2)) go to row e of the saved activations, for the backward."""
    h1, d1_1, _ = _act(a1, ACT)
    a2 = tl.sum(W2 * h1[None, :], axis=1) + b2
    _, d1_2, _ = _act(a2, ACT)
    e1 = tl.sum(W2 * (w3 * d1_2)[:, None], axis=0)
    if SAVE:
        hh1 = tl.arange(0, H1)
        hh2 = tl.arange(0, H2)
        tl.store(a1_ptr + e * N1 + hh1, a1, mask=hh1 < N1)
        tl.store(a2_ptr + e * N2 + hh2, a2, mask=hh2 < N2)
        tl.store(e1_ptr + e * N1 + hh1, e1, mask=hh1 < N1)
    return e1 * d1_1


@triton.jit
def _leapfrog_fwd_kernel(q0_ptr, p0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         q_ptr, p_ptr, ph_ptr, dq_ptr, qm_ptr, pc_ptr, a1_ptr, a2_ptr, e1_ptr,
                         B, T, dt, K: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                         KP: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr,
                         ACT: tl.constexpr, ORDER2: tl.constexpr, SAVE: tl.constexpr):
    W1q, W1p, b1, W2 = _load_weights(w1_ptr, b1_ptr, w2_ptr, K, N1, N2, KP, H1, H2)
    b2 = _vec(b2_ptr, N2, H2)
    w3 = _vec(w3_ptr, N2, H2)
    cols = tl.arange(0, KP)
    cm = cols < K
    for row in range(tl.program_id(0), B, tl.num_programs(0)):
        traj = row * (T * K) + cols          # [B, T, k] offsets at t = 0
        half = row * ((T - 1) * K) + cols    # [B, T-1, k]
        q = tl.load(q0_ptr + row * K + cols, mask=cm, other=0.0)
        p = tl.load(p0_ptr + row * K + cols, mask=cm, other=0.0)
        tl.store(q_ptr + traj, q, mask=cm)
        tl.store(p_ptr + traj, p, mask=cm)
        for t in range(T - 1):
            e = (row * (T - 1) + t) * 3     # this step's three saved evaluations
            g1 = _g1(_a1(q, p, W1q, W1p, b1), W2, b2, w3, a1_ptr, a2_ptr, e1_ptr, e,
                     N1, N2, H1, H2, ACT, SAVE)
            dq = tl.sum(W1q * g1[:, None], axis=0)              # dH/dq(q_t, p_t)
            ph = p - 0.5 * dt * dq
            if ORDER2:
                qm = q + 0.5 * dt * tl.sum(W1p * g1[:, None], axis=0)
                pc = p - dt * dq
                tl.store(qm_ptr + half + t * K, qm, mask=cm)
                tl.store(pc_ptr + half + t * K, pc, mask=cm)
            else:
                qm = q
                pc = ph
            g1 = _g1(_a1(qm, ph, W1q, W1p, b1), W2, b2, w3, a1_ptr, a2_ptr, e1_ptr, e + 1,
                     N1, N2, H1, H2, ACT, SAVE)
            q = q + dt * tl.sum(W1p * g1[:, None], axis=0)
            g1 = _g1(_a1(q, pc, W1q, W1p, b1), W2, b2, w3, a1_ptr, a2_ptr, e1_ptr, e + 2,
                     N1, N2, H1, H2, ACT, SAVE)
            p = ph - 0.5 * dt * tl.sum(W1q * g1[:, None], axis=0)
            tl.store(q_ptr + traj + (t + 1) * K, q, mask=cm)
            tl.store(p_ptr + traj + (t + 1) * K, p, mask=cm)
            tl.store(ph_ptr + half + t * K, ph, mask=cm)
            tl.store(dq_ptr + half + t * K, dq, mask=cm)


@triton.jit
def _vjp(q, p, vq, vp, W1q, W1p, W2, w3_ptr, a1_ptr, a2_ptr, e1_ptr, s2_ptr, s1_ptr, su_ptr,
         s0_ptr, x_ptr, e, es, K: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
         H1: tl.constexpr, H2: tl.constexpr, KP: tl.constexpr, ACT: tl.constexpr):
    """d<v, F(q, p)>/d(q, p) for one row (tile._vjp's math on vectors). The weight terms
    are not accumulated here: dW2 = sum r2 h1^T + g2 u1^T, db2 = sum r2 and dw3 = sum u2 go
    as factors to scratch row e of s2 ([., 2, n2]: r2, g2), s1 ([., 2, n1]: h1, u1) and su
    ([., n2]: u2); dW1 = sum r1 [q, p]^T + g1 [vq, vp]^T and db1 = sum r1 to s0 ([., 2, n1]:
    r1, g1) and x ([., 4, k]: q, p, vq, vp). The host reduces them in two matrix products
    (dW2 = s2^T s1, dW1 = s0^T x over the stacked rows) and three sums. (An H2-indexed
    vector costs 16 registers per thread at 8 warps; with accumulators held here the
    width-128 backward spilled, see the module docstring.) w3 is re-read (L1 hits) rather
    than held, for the same reason. The primal a1, a2 and e1 = W2^T g2 at (q, p) are the
    forward's, read from its saved row es: recomputing them was half the products here."""
    hh1 = tl.arange(0, H1)
    hh2 = tl.arange(0, H2)
    m2 = hh2 < N2
    m1 = hh1 < N1
    a1 = tl.load(a1_ptr + es * N1 + hh1, mask=m1, other=0.0)
    a2 = tl.load(a2_ptr + es * N2 + hh2, mask=m2, other=0.0)
    e1 = tl.load(e1_ptr + es * N1 + hh1, mask=m1, other=0.0)
    h1, d1_1, d2_1 = _act(a1, ACT)
    t1 = tl.sum(W1q * vq[None, :] + W1p * vp[None, :], axis=1)
    u1 = d1_1 * t1
    t2 = tl.sum(W2 * u1[None, :], axis=1)
    _, d1_2, d2_2 = _act(a2, ACT)
    w3 = _vec(w3_ptr, N2, H2)
    g2 = w3 * d1_2
    r2 = w3 * d2_2 * t2
    g1 = e1 * d1_1
    r1 = e1 * d2_1 * t1 + tl.sum(W2 * r2[:, None], axis=0) * d1_1
    row2 = s2_ptr + e * (2 * N2) + hh2
    tl.store(row2, r2, mask=m2)
    tl.store(row2 + N2, g2, mask=m2)
    tl.store(su_ptr + e * N2 + hh2, d1_2 * t2, mask=m2)
    row1 = s1_ptr + e * (2 * N1) + hh1
    tl.store(row1, h1, mask=m1)
    tl.store(row1 + N1, u1, mask=m1)
    row0 = s0_ptr + e * (2 * N1) + hh1
    tl.store(row0, r1, mask=m1)
    tl.store(row0 + N1, g1, mask=m1)
    cols = tl.arange(0, KP)
    cm = cols < K
    rowx = x_ptr + e * (4 * K) + cols
    tl.store(rowx, q, mask=cm)
    tl.store(rowx + K, p, mask=cm)
    tl.store(rowx + 2 * K, vq, mask=cm)
    tl.store(rowx + 3 * K, vp, mask=cm)
    dxq = tl.sum(W1q * r1[:, None], axis=0)
    dxp = tl.sum(W1p * r1[:, None], axis=0)
    return dxq, dxp


@triton.jit
def _leapfrog_bwd_kernel(q_ptr, p_ptr, ph_ptr, qm_ptr, pc_ptr, gq_ptr, gp_ptr, gd_ptr,
                         w1_ptr, b1_ptr, w2_ptr, w3_ptr, a1_ptr, a2_ptr, e1_ptr,
                         dq0_ptr, dp0_ptr, s2_ptr, s1_ptr, su_ptr, s0_ptr, x_ptr,
                         B, T, dt, K: tl.constexpr, N1: tl.constexpr,
                         N2: tl.constexpr,
                         KP: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr,
                         ACT: tl.constexpr, ORDER2: tl.constexpr):
    pid = tl.program_id(0)
    W1q, W1p, _, W2 = _load_weights(w1_ptr, b1_ptr, w2_ptr, K, N1, N2, KP, H1, H2)
    cols = tl.arange(0, KP)
    cm = cols < K
    zero = tl.zeros((KP,), dtype=tl.float32)
    for row in range(pid, B, tl.num_programs(0)):
        traj = row * (T * K) + cols
        half = row * ((T - 1) * K) + cols
        # Cotangents of (q_T-1, p_T-1)
        Q = tl.load(gq_ptr + traj + (T - 1) * K, mask=cm, other=0.0)
        P = tl.load(gp_ptr + traj + (T - 1) * K, mask=cm, other=0.0)
        for i in range(T - 1):
            t = T - 2 - i
            q, p, q1, ph, D, qm, pc = _saved_step(q_ptr, p_ptr, ph_ptr, gd_ptr, qm_ptr, pc_ptr,
                                                  traj, half, t, K, cm, ORDER2)
            # this step's three scratch rows, and its three saved evaluations (the forward's
            # order: at (q_t, p_t), (q_mid, p_half), (q_t+1, p_pred))
            e = (row * (T - 1) + t) * 3
            # c: p_t+1 = p_half - dt/2 F_q(q_t+1, p_pred)
            dxq, dxp = _vjp(
                q1, pc, -0.5 * dt * P, zero, W1q, W1p, W2, w3_ptr, a1_ptr, a2_ptr, e1_ptr,
                s2_ptr, s1_ptr, su_ptr, s0_ptr, x_ptr, e, e + 2, K, N1, N2, H1, H2, KP, ACT)
            Q += dxq
            Pc = dxp
            # b: q_t+1 = q_t + dt F_p(q_mid, p_half)
            dxq, dxp = _vjp(
                qm, ph, zero, dt * Q, W1q, W1p, W2, w3_ptr, a1_ptr, a2_ptr, e1_ptr,
                s2_ptr, s1_ptr, su_ptr, s0_ptr, x_ptr, e + 1, e + 1, K, N1, N2, H1, H2, KP,
                ACT)
            Qm = dxq
            Ph = P + dxp
            # a: q_mid hangs off q_t and p_pred off p_t (analytic.py's derivation)
            Q += Qm
            Ph += Pc
            if ORDER2:
                vq = D - 0.5 * dt * (Ph + Pc)
                vp = 0.5 * dt * Qm
            else:
                vq = D - 0.5 * dt * Ph
                vp = zero
            dxq, dxp = _vjp(
                q, p, vq, vp, W1q, W1p, W2, w3_ptr, a1_ptr, a2_ptr, e1_ptr,
                s2_ptr, s1_ptr, su_ptr, s0_ptr, x_ptr, e + 2, e, K, N1, N2, H1, H2, KP, ACT)
            Q += dxq + tl.load(gq_ptr + traj + t * K, mask=cm, other=0.0)
            P = Ph + dxp + tl.load(gp_ptr + traj + t * K, mask=cm, other=0.0)
        tl.store(dq0_ptr + row * K + cols, Q, mask=cm)
        tl.store(dp0_ptr + row * K + cols, P, mask=cm)
