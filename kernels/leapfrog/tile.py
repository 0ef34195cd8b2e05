"""Tile layout of the fused kernels: a program per block of BLOCK_B rows, the weights (and in
the backward their gradients) resident in registers, every product through tl.dot. The
dispatch table (fused.py) no longer picks it: at every width ptxas reports more spills for it
than for streamed.py, which walks the hidden units in chunks (fused._chunk). It stays as
bench/tune_fused.py's chunk 0 until a GPU has timed the two.

_leapfrog_fwd_kernel: one program owns BLOCK_B batch rows, loads the weights once and keeps
them on-chip for all T-1 steps; per step it writes q_t+1, p_t+1, p_half_t and dHdq_t, and for
scheme "order2" (ORDER2) also the moved evaluation points q_mid_t and p_pred_t. The q part of
a1 at q_t+1 is shared between evaluation c and the next step's a; for "official" also q_t
between a and b, and p_half between b and c.

_leapfrog_bwd_kernel: walks the steps in reverse from the saved trajectory (q, p, p_half and
for "order2" q_mid, p_pred: T*B*5k floats at most) and recomputes each evaluation's
activations instead of saving them (that would be T*B*3*(n1+n2) floats and as much HBM
traffic as the recompute costs in FLOPs). Each program accumulates its rows' weight gradients
in registers and writes one partial; the host sums the partials once (deterministic, no
atomics).
"""
import triton
import triton.language as tl

from .ops import _act, _dot, _reverse_step, _saved_step


@triton.jit
def _g1(a1, W2, b2, w3, ACT: tl.constexpr, PREC: tl.constexpr):
    """g1 = e1 * s'(a1) [BB, H1] from a1: dH/dx = W1^T g1, block by block."""
    h1, d1_1, _ = _act(a1, ACT)
    a2 = _dot(h1, tl.trans(W2), PREC) + b2[None, :]
    _, d1_2, _ = _act(a2, ACT)
    g2 = w3[None, :] * d1_2                                 # [BB, H2]
    return _dot(g2, W2, PREC) * d1_1

@triton.jit
def _grad_part(a1, W1x, W2, b2, w3, ACT: tl.constexpr, PREC: tl.constexpr):
    """One block of dH/dx = (W1x^T g1) from a1: W1x is W1q (-> dH/dq) or W1p (-> dH/dp)."""
    return _dot(_g1(a1, W2, b2, w3, ACT, PREC), W1x, PREC)   # [BB, KP]


@triton.jit
def _leapfrog_fwd_kernel(q0_ptr, p0_ptr, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         q_ptr, p_ptr, ph_ptr, dq_ptr, qm_ptr, pc_ptr, B, K, T, dt,
                         BLOCK_B: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr,
                         H2: tl.constexpr, ACT: tl.constexpr, ORDER2: tl.constexpr,
                         PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    h1 = tl.arange(0, H1)
    h2 = tl.arange(0, H2)
    mask = (rows[:, None] < B) & (cols[None, :] < K)
    # Weights: loaded once, on-chip for every step. Padded on the host, so no masks.
    W1q = tl.load(w1q_ptr + h1[:, None] * KP + cols[None, :])   # [H1, KP]
    W1p = tl.load(w1p_ptr + h1[:, None] * KP + cols[None, :])   # [H1, KP]
    W2 = tl.load(w2_ptr + h2[:, None] * H1 + h1[None, :])       # [H2, H1]
    b1 = tl.load(b1_ptr + h1)
    b2 = tl.load(b2_ptr + h2)
    w3 = tl.load(w3_ptr + h2)
    q = tl.load(q0_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    p = tl.load(p0_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    traj = rows[:, None] * (T * K) + cols[None, :]          # [B, T, k] offsets at t = 0
    half = rows[:, None] * ((T - 1) * K) + cols[None, :]    # [B, T-1, k] offsets at t = 0
    tl.store(q_ptr + traj, q, mask=mask)
    tl.store(p_ptr + traj, p, mask=mask)
    aq = _dot(q, tl.trans(W1q), PREC)
    for t in range(T - 1):
        a1 = aq + _dot(p, tl.trans(W1p), PREC) + b1[None, :]
        if ORDER2:
            g1 = _g1(a1, W2, b2, w3, ACT, PREC)
            dq = _dot(g1, W1q, PREC)    # dH/dq(q_t, p_t)
            qm = q + 0.5 * dt * _dot(g1, W1p, PREC)
            ph = p - 0.5 * dt * dq
            pc = p - dt * dq
            ap = _dot(ph, tl.trans(W1p), PREC) + b1[None, :]
            amid = _dot(qm, tl.trans(W1q), PREC) + ap
            q = q + dt * _grad_part(amid, W1p, W2, b2, w3, ACT, PREC)
            aq = _dot(q, tl.trans(W1q), PREC)
            ac = aq + _dot(pc, tl.trans(W1p), PREC) + b1[None, :]
            p = ph - 0.5 * dt * _grad_part(ac, W1q, W2, b2, w3, ACT, PREC)
            tl.store(qm_ptr + half + t * K, qm, mask=mask)
            tl.store(pc_ptr + half + t * K, pc, mask=mask)
        else:
            dq = _grad_part(a1, W1q, W2, b2, w3, ACT, PREC)       # dH/dq(q_t, p_t)
            ph = p - 0.5 * dt * dq
            ap = _dot(ph, tl.trans(W1p), PREC) + b1[None, :]
            q = q + dt * _grad_part(aq + ap, W1p, W2, b2, w3, ACT, PREC)
            aq = _dot(q, tl.trans(W1q), PREC)
            p = ph - 0.5 * dt * _grad_part(aq + ap, W1q, W2, b2, w3, ACT, PREC)
        tl.store(q_ptr + traj + (t + 1) * K, q, mask=mask)
        tl.store(p_ptr + traj + (t + 1) * K, p, mask=mask)
        tl.store(ph_ptr + half + t * K, ph, mask=mask)
        tl.store(dq_ptr + half + t * K, dq, mask=mask)


@triton.jit
def _vjp(q, p, vq, vp, W1q, W1p, b1, W2, b2, w3, dW1q, dW1p, db1, dW2, db2, dw3,
         ACT: tl.constexpr, HAS_VQ: tl.constexpr, HAS_VP: tl.constexpr,
         PREC: tl.constexpr):
    """d<v, F(q, p)>/d(q, p) and the weight terms (analytic.py's derivation, depth 2).
    v = [vq, vp]; a block whose HAS_ flag is off is zero (its argument is ignored)."""
    a1 = (_dot(q, tl.trans(W1q), PREC)
          + _dot(p, tl.trans(W1p), PREC) + b1[None, :])
    h1, d1_1, d2_1 = _act(a1, ACT)
    a2 = _dot(h1, tl.trans(W2), PREC) + b2[None, :]
    _, d1_2, d2_2 = _act(a2, ACT)
    if HAS_VQ:
        t1 = _dot(vq, tl.trans(W1q), PREC)
        if HAS_VP:
            t1 += _dot(vp, tl.trans(W1p), PREC)
    else:
        t1 = _dot(vp, tl.trans(W1p), PREC)
    u1 = d1_1 * t1
    t2 = _dot(u1, tl.trans(W2), PREC)
    g2 = w3[None, :] * d1_2
    r2 = w3[None, :] * d2_2 * t2
    e1 = _dot(g2, W2, PREC)
    g1 = e1 * d1_1
    r1 = e1 * d2_1 * t1 + _dot(r2, W2, PREC) * d1_1
    dw3 += tl.sum(d1_2 * t2, axis=0)                                 # u2
    db2 += tl.sum(r2, axis=0)
    dW2 += (_dot(tl.trans(r2), h1, PREC)
            + _dot(tl.trans(g2), u1, PREC))
    db1 += tl.sum(r1, axis=0)
    dW1q += _dot(tl.trans(r1), q, PREC)
    dW1p += _dot(tl.trans(r1), p, PREC)
    if HAS_VQ:
        dW1q += _dot(tl.trans(g1), vq, PREC)
    if HAS_VP:
        dW1p += _dot(tl.trans(g1), vp, PREC)
    dxq = _dot(r1, W1q, PREC)
    dxp = _dot(r1, W1p, PREC)
    return dxq, dxp, dW1q, dW1p, db1, dW2, db2, dw3


@triton.jit
def _leapfrog_bwd_kernel(q_ptr, p_ptr, ph_ptr, qm_ptr, pc_ptr, gq_ptr, gp_ptr, gd_ptr,
                         w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         dq0_ptr, dp0_ptr, dw1q_ptr, dw1p_ptr, db1_ptr, dw2_ptr, db2_ptr,
                         dw3_ptr, B, K, T, dt,
                         BLOCK_B: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr,
                         H2: tl.constexpr, ACT: tl.constexpr, ORDER2: tl.constexpr,
                         PREC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    h1 = tl.arange(0, H1)
    h2 = tl.arange(0, H2)
    mask = (rows[:, None] < B) & (cols[None, :] < K)
    W1q = tl.load(w1q_ptr + h1[:, None] * KP + cols[None, :])
    W1p = tl.load(w1p_ptr + h1[:, None] * KP + cols[None, :])
    W2 = tl.load(w2_ptr + h2[:, None] * H1 + h1[None, :])
    b1 = tl.load(b1_ptr + h1)
    b2 = tl.load(b2_ptr + h2)
    w3 = tl.load(w3_ptr + h2)
    dW1q = tl.zeros((H1, KP), dtype=tl.float32)
    dW1p = tl.zeros((H1, KP), dtype=tl.float32)
    dW2 = tl.zeros((H2, H1), dtype=tl.float32)
    db1 = tl.zeros((H1,), dtype=tl.float32)
    db2 = tl.zeros((H2,), dtype=tl.float32)
    dw3 = tl.zeros((H2,), dtype=tl.float32)
    traj = rows[:, None] * (T * K) + cols[None, :]
    half = rows[:, None] * ((T - 1) * K) + cols[None, :]
    # Cotangents of (q_T-1, p_T-1); masked rows stay zero, so they add nothing below.
    Q = tl.load(gq_ptr + traj + (T - 1) * K, mask=mask, other=0.0)
    P = tl.load(gp_ptr + traj + (T - 1) * K, mask=mask, other=0.0)
    for i in range(T - 1):
        t = T - 2 - i
        q, p, q1, ph, D, qm, pc = _saved_step(q_ptr, p_ptr, ph_ptr, gd_ptr, qm_ptr, pc_ptr,
                                              traj, half, t, K, mask, ORDER2)
        Q, P, dW1q, dW1p, db1, dW2, db2, dw3 = _reverse_step(
            _vjp, q, p, q1, ph, D, qm, pc, Q, P, W1q, W1p, b1, W2, b2, w3,
            dW1q, dW1p, db1, dW2, db2, dw3, dt, ACT, ORDER2, PREC)
        Q += tl.load(gq_ptr + traj + t * K, mask=mask, other=0.0)
        P += tl.load(gp_ptr + traj + t * K, mask=mask, other=0.0)
    tl.store(dq0_ptr + rows[:, None] * K + cols[None, :], Q, mask=mask)
    tl.store(dp0_ptr + rows[:, None] * K + cols[None, :], P, mask=mask)
    # One partial per program; the host reduces them once. int64 slab offsets: pid * H1 * KP
    # passes 2^31 at B / BLOCK_B programs from about 2^27 rows.
    slab = pid.to(tl.int64)
    tl.store(dw1q_ptr + slab * (H1 * KP) + h1[:, None] * KP + cols[None, :], dW1q)
    tl.store(dw1p_ptr + slab * (H1 * KP) + h1[:, None] * KP + cols[None, :], dW1p)
    tl.store(dw2_ptr + slab * (H2 * H1) + h2[:, None] * H1 + h1[None, :], dW2)
    tl.store(db1_ptr + slab * H1 + h1, db1)
    tl.store(db2_ptr + slab * H2 + h2, db2)
    tl.store(dw3_ptr + slab * H2 + h2, dw3)
