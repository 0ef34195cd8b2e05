"""Streamed layout of the fused kernels: the same rollout and the same math as tile.py, for
wide MLPs whose weights do not fit a program's registers.

tile.py's kernels keep W1, W2 and, in the backward, their gradients in registers. At hidden
width 128 that is 2 x 64 KB for W2 and dW2 per program; compiled for sm_90 (triton 3.6) the
width-128 backward spilled 63 KB per thread to local memory and ptxas fell back to 32
registers. Here the hidden layer-1 units are walked in chunks of CH: per chunk the program
reads W1's and W2's CH slices from global memory (L1/L2-resident after the first step: the
weights are at most 80 KB) and holds only [BLOCK_B, CH] activations, [BLOCK_B, H2] layer-2
sums and one [H2, CH] weight slice at a time.

Per evaluation F(q, p) = dH/dx at x = [q; p] (analytic.py's symbols):
  pass 1 over chunks c:  a1_c = q W1q_c^T + p W1p_c^T + b1_c;  a2 += s(a1_c) W2[:, c]^T
  then:                  g2 = w3 * s'(a2)
  pass 2 over chunks c:  g1_c = (g2 W2[:, c]) * s'(a1_c);  F_q += g1_c W1q_c,  F_p += g1_c W1p_c
(a1_c is recomputed in pass 2: two k-wide products, cheaper than keeping H1 columns live.)

The backward's vector-Jacobian product follows the same two passes (t1, u1 and t2 ride along
in pass 1; e1, g1, r1 are formed per chunk in pass 2). Its chunked weight gradients cannot be
register accumulators (a chunk index cannot address a register tensor), so each program
accumulates them in its own partial slab in global memory, which stays in L2: read, add,
write per chunk, with a barrier so the next read sees every thread's write. The slabs are
reduced once by the host, as in tile.py: deterministic, no atomics.
"""
import triton
import triton.language as tl

from .ops import _act, _dot, _saved_step


@triton.jit
def _layer1(q, p, w1q_ptr, w1p_ptr, b1_ptr, c, KP: tl.constexpr, H1: tl.constexpr,
            CH: tl.constexpr, PREC: tl.constexpr):
    """Chunk c of layer 1: W1q_c, W1p_c [CH, KP] and a1_c [BLOCK_B, CH]."""
    hc = c + tl.arange(0, CH)
    cols = tl.arange(0, KP)
    W1q = tl.load(w1q_ptr + hc[:, None] * KP + cols[None, :])
    W1p = tl.load(w1p_ptr + hc[:, None] * KP + cols[None, :])
    a1 = (_dot(q, tl.trans(W1q), PREC) + _dot(p, tl.trans(W1p), PREC)
          + tl.load(b1_ptr + hc)[None, :])
    return W1q, W1p, a1


@triton.jit
def _w2_chunk(w2_ptr, c, H1: tl.constexpr, H2: tl.constexpr, CH: tl.constexpr):
    """W2[:, c:c+CH] [H2, CH]."""
    return tl.load(w2_ptr + tl.arange(0, H2)[:, None] * H1 + (c + tl.arange(0, CH))[None, :])


@triton.jit
def _grad(q, p, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2, w3, BLOCK_B: tl.constexpr,
          KP: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr, CH: tl.constexpr,
          ACT: tl.constexpr, WANT_Q: tl.constexpr, WANT_P: tl.constexpr,
          PREC: tl.constexpr):
    """(F_q, F_p) at (q, p); a block not wanted is returned as zeros, uncomputed."""
    a2 = tl.zeros((BLOCK_B, H2), dtype=tl.float32) + b2[None, :]
    for c in range(0, H1, CH):
        a1 = _layer1(q, p, w1q_ptr, w1p_ptr, b1_ptr, c, KP, H1, CH, PREC)[2]
        h1 = _act(a1, ACT)[0]
        a2 += _dot(h1, tl.trans(_w2_chunk(w2_ptr, c, H1, H2, CH)), PREC)
    g2 = w3[None, :] * _act(a2, ACT)[1]
    fq = tl.zeros((BLOCK_B, KP), dtype=tl.float32)
    fp = tl.zeros((BLOCK_B, KP), dtype=tl.float32)
    for c in range(0, H1, CH):
        W1q, W1p, a1 = _layer1(q, p, w1q_ptr, w1p_ptr, b1_ptr, c, KP, H1, CH, PREC)
        g1 = _dot(g2, _w2_chunk(w2_ptr, c, H1, H2, CH), PREC) * _act(a1, ACT)[1]
        if WANT_Q:
            fq += _dot(g1, W1q, PREC)
        if WANT_P:
            fp += _dot(g1, W1p, PREC)
    return fq, fp


@triton.jit
def _leapfrog_fwd_kernel(q0_ptr, p0_ptr, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         q_ptr, p_ptr, ph_ptr, dq_ptr, qm_ptr, pc_ptr, B, K, T, dt,
                         BLOCK_B: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr,
                         H2: tl.constexpr, ACT: tl.constexpr, ORDER2: tl.constexpr,
                         CH: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    h2 = tl.arange(0, H2)
    mask = (rows[:, None] < B) & (cols[None, :] < K)
    b2 = tl.load(b2_ptr + h2)
    w3 = tl.load(w3_ptr + h2)
    q = tl.load(q0_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    p = tl.load(p0_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    traj = rows[:, None] * (T * K) + cols[None, :]
    half = rows[:, None] * ((T - 1) * K) + cols[None, :]
    tl.store(q_ptr + traj, q, mask=mask)
    tl.store(p_ptr + traj, p, mask=mask)
    for t in range(T - 1):
        dq, dp = _grad(q, p, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2, w3, BLOCK_B, KP, H1, H2,
                       CH, ACT, True, ORDER2, PREC)
        ph = p - 0.5 * dt * dq
        if ORDER2:
            qm = q + 0.5 * dt * dp
            pc = p - dt * dq
            tl.store(qm_ptr + half + t * K, qm, mask=mask)
            tl.store(pc_ptr + half + t * K, pc, mask=mask)
        else:
            qm = q
            pc = ph
        fp = _grad(qm, ph, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2, w3, BLOCK_B, KP, H1, H2,
                   CH, ACT, False, True, PREC)[1]
        q = q + dt * fp
        fq = _grad(q, pc, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2, w3, BLOCK_B, KP, H1, H2,
                   CH, ACT, True, False, PREC)[0]
        p = ph - 0.5 * dt * fq
        tl.store(q_ptr + traj + (t + 1) * K, q, mask=mask)
        tl.store(p_ptr + traj + (t + 1) * K, p, mask=mask)
        tl.store(ph_ptr + half + t * K, ph, mask=mask)
        tl.store(dq_ptr + half + t * K, dq, mask=mask)


@triton.jit
def _t1(vq, vp, W1q, W1p, HAS_VQ: tl.constexpr, HAS_VP: tl.constexpr, PREC: tl.constexpr):
    """Chunk of t1 = v W1^T: the direction v = [vq; vp] through layer 1."""
    if HAS_VQ:
        t1 = _dot(vq, tl.trans(W1q), PREC)
        if HAS_VP:
            t1 += _dot(vp, tl.trans(W1p), PREC)
    else:
        t1 = _dot(vp, tl.trans(W1p), PREC)
    return t1


@triton.jit
def _add_to(ptr, value):
    tl.store(ptr, tl.load(ptr) + value)


@triton.jit
def _vjp(q, p, vq, vp, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2, w3,
         gw1q_ptr, gw1p_ptr, gb1_ptr, gw2_ptr, db2, dw3, BLOCK_B: tl.constexpr,
         KP: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr, CH: tl.constexpr,
         ACT: tl.constexpr, HAS_VQ: tl.constexpr, HAS_VP: tl.constexpr, PREC: tl.constexpr):
    """tile._vjp in two chunked passes: returns d<v, F>/d(q, p) and db2, dw3; adds the
    W1, b1 and W2 terms to this program's slabs (gw*_ptr)."""
    a2 = tl.zeros((BLOCK_B, H2), dtype=tl.float32) + b2[None, :]
    t2 = tl.zeros((BLOCK_B, H2), dtype=tl.float32)
    for c in range(0, H1, CH):
        L1 = _layer1(q, p, w1q_ptr, w1p_ptr, b1_ptr, c, KP, H1, CH, PREC)
        s1 = _act(L1[2], ACT)
        W2c = tl.trans(_w2_chunk(w2_ptr, c, H1, H2, CH))
        a2 += _dot(s1[0], W2c, PREC)
        t2 += _dot(s1[1] * _t1(vq, vp, L1[0], L1[1], HAS_VQ, HAS_VP, PREC), W2c, PREC)
    s2 = _act(a2, ACT)
    g2 = w3[None, :] * s2[1]
    r2 = w3[None, :] * s2[2] * t2
    dw3 += tl.sum(s2[1] * t2, axis=0)           # u2
    db2 += tl.sum(r2, axis=0)
    dxq = tl.zeros((BLOCK_B, KP), dtype=tl.float32)
    dxp = tl.zeros((BLOCK_B, KP), dtype=tl.float32)
    h2 = tl.arange(0, H2)
    cols = tl.arange(0, KP)
    for c in range(0, H1, CH):
        W1q, W1p, a1 = _layer1(q, p, w1q_ptr, w1p_ptr, b1_ptr, c, KP, H1, CH, PREC)
        h1, d1_1, d2_1 = _act(a1, ACT)
        t1 = _t1(vq, vp, W1q, W1p, HAS_VQ, HAS_VP, PREC)
        W2c = _w2_chunk(w2_ptr, c, H1, H2, CH)
        e1 = _dot(g2, W2c, PREC)
        g1 = e1 * d1_1
        r1 = e1 * d2_1 * t1 + _dot(r2, W2c, PREC) * d1_1
        hc = c + tl.arange(0, CH)
        _add_to(gw2_ptr + h2[:, None] * H1 + hc[None, :],
                _dot(tl.trans(r2), h1, PREC) + _dot(tl.trans(g2), d1_1 * t1, PREC))
        _add_to(gb1_ptr + hc, tl.sum(r1, axis=0))
        gq = _dot(tl.trans(r1), q, PREC)
        gp = _dot(tl.trans(r1), p, PREC)
        if HAS_VQ:
            gq += _dot(tl.trans(g1), vq, PREC)
        if HAS_VP:
            gp += _dot(tl.trans(g1), vp, PREC)
        _add_to(gw1q_ptr + hc[:, None] * KP + cols[None, :], gq)
        _add_to(gw1p_ptr + hc[:, None] * KP + cols[None, :], gp)
        dxq += _dot(r1, W1q, PREC)
        dxp += _dot(r1, W1p, PREC)
    # The next evaluation reads these slabs back, possibly through other threads of the
    # program: a block barrier makes every thread's writes visible to all of them.
    tl.debug_barrier()
    return dxq, dxp, db2, dw3


@triton.jit
def _leapfrog_bwd_kernel(q_ptr, p_ptr, ph_ptr, qm_ptr, pc_ptr, gq_ptr, gp_ptr, gd_ptr,
                         w1q_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                         dq0_ptr, dp0_ptr, dw1q_ptr, dw1p_ptr, db1_ptr, dw2_ptr, db2_ptr,
                         dw3_ptr, B, K, T, dt,
                         BLOCK_B: tl.constexpr, KP: tl.constexpr, H1: tl.constexpr,
                         H2: tl.constexpr, ACT: tl.constexpr, ORDER2: tl.constexpr,
                         CH: tl.constexpr, PREC: tl.constexpr):
    """tile._leapfrog_bwd_kernel's reverse walk; the dw1q, dw1p, db1, dw2 slabs must be
    zeroed by the host (they are accumulated in place)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    h2 = tl.arange(0, H2)
    mask = (rows[:, None] < B) & (cols[None, :] < K)
    b2 = tl.load(b2_ptr + h2)
    w3 = tl.load(w3_ptr + h2)
    db2 = tl.zeros((H2,), dtype=tl.float32)
    dw3 = tl.zeros((H2,), dtype=tl.float32)
    # The slabs' offsets in int64: a program per 16 rows puts pid * H2 * H1 past 2^31 from
    # about 2M rows at width 128 (an 8 GB slab, which an H200 holds), where int32 wraps.
    slab = pid.to(tl.int64)
    gw1q = dw1q_ptr + slab * (H1 * KP)
    gw1p = dw1p_ptr + slab * (H1 * KP)
    gb1 = db1_ptr + slab * H1
    gw2 = dw2_ptr + slab * (H2 * H1)
    traj = rows[:, None] * (T * K) + cols[None, :]
    half = rows[:, None] * ((T - 1) * K) + cols[None, :]
    Q = tl.load(gq_ptr + traj + (T - 1) * K, mask=mask, other=0.0)
    P = tl.load(gp_ptr + traj + (T - 1) * K, mask=mask, other=0.0)
    for i in range(T - 1):
        t = T - 2 - i
        q, p, q1, ph, D, qm, pc = _saved_step(q_ptr, p_ptr, ph_ptr, gd_ptr, qm_ptr, pc_ptr, traj,
                                              half, t, K, mask, ORDER2)
        # c, b, a: as in tile._leapfrog_bwd_kernel
        dxq, dxp, db2, dw3 = _vjp(q1, pc, -0.5 * dt * P, P, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr,
                                  b2, w3, gw1q, gw1p, gb1, gw2, db2, dw3, BLOCK_B, KP, H1, H2,
                                  CH, ACT, True, False, PREC)
        Q += dxq
        Pc = dxp
        dxq, dxp, db2, dw3 = _vjp(qm, ph, Q, dt * Q, w1q_ptr, w1p_ptr, b1_ptr, w2_ptr,
                                  b2, w3, gw1q, gw1p, gb1, gw2, db2, dw3, BLOCK_B, KP, H1, H2,
                                  CH, ACT, False, True, PREC)
        Qm = dxq
        Ph = P + dxp
        Q += Qm
        Ph += Pc
        if ORDER2:
            dxq, dxp, db2, dw3 = _vjp(q, p, D - 0.5 * dt * (Ph + Pc), 0.5 * dt * Qm, w1q_ptr,
                                      w1p_ptr, b1_ptr, w2_ptr, b2, w3, gw1q, gw1p, gb1, gw2,
                                      db2, dw3, BLOCK_B, KP, H1, H2, CH, ACT, True, True, PREC)
        else:
            dxq, dxp, db2, dw3 = _vjp(q, p, D - 0.5 * dt * Ph, Ph, w1q_ptr, w1p_ptr, b1_ptr,
                                      w2_ptr, b2, w3, gw1q, gw1p, gb1, gw2, db2, dw3, BLOCK_B,
                                      KP, H1, H2, CH, ACT, True, False, PREC)
        Q += dxq + tl.load(gq_ptr + traj + t * K, mask=mask, other=0.0)
        P = Ph + dxp + tl.load(gp_ptr + traj + t * K, mask=mask, other=0.0)
    tl.store(dq0_ptr + rows[:, None] * K + cols[None, :], Q, mask=mask)
    tl.store(dp0_ptr + rows[:, None] * K + cols[None, :], P, mask=mask)
    tl.store(db2_ptr + slab * H2 + h2, db2)
    tl.store(dw3_ptr + slab * H2 + h2, dw3)
