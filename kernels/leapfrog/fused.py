"""Fused leapfrog backend: Triton kernels for the whole rollout, forward and backward.

The math is analytic.py's (same symbols), specialised to the fused contract: two hidden layers
(W1 [n1, 2k], W2 [n2, n1], w [n2]), softplus or tanh, float32 with fp32 accumulation
(tl.dot input_precision="ieee"). W1 is split by the host into its q and p column blocks,
W1q and W1p, so x = [q; p] is never materialised: a1 = q W1q^T + p W1p^T + b1.

_leapfrog_fwd_kernel: one program owns BLOCK_B batch rows, loads the weights once and keeps
them on-chip for all T-1 steps; per step it writes q_t+1, p_t+1, p_half_t and dHdq_t, and for
scheme "order2" (ORDER2) also the moved evaluation points q_mid_t and p_pred_t. The q part of
a1 at q_t+1 is shared between evaluation c and the next step's a; for "official" also q_t
between a and b, and p_half between b and c.

_leapfrog_bwd_kernel: walks the steps in reverse from the saved trajectory (q, p, p_half and
for "order2" q_mid, p_pred: T*B*5k floats at most) and recomputes each evaluation's activations instead of saving them (that
would be T*B*3*(n1+n2) floats and as much HBM traffic as the recompute costs in FLOPs). Each
program accumulates its rows' weight gradients in registers and writes one partial; the host
sums the partials once (deterministic, no atomics).

Four layouts of the same kernels, chosen by one table (LATENCY_MAX_ROWS,
THROUGHPUT_PRECISIONS with _throughput_fits, _chunk):
  * latency.py: a program per batch row, matrix-vector products on the FMA units: the training
    regime (B up to about two thousand), where a row block of 16 would leave all but one or
    four SMs idle; its latency model is in its docstring;
  * throughput.py: hidden-major tiles for large batches with precision "bf16x3", so that every
    weight product has M = the hidden width and compiles to Hopper's wgmma; a persistent grid
    with the weights split and staged once per program; its cost model is in its docstring;
  * this module's tile layout keeps the weights (and, in the backward, their gradients) in
    registers and drives tl.dot on blocks of rows: large batches of the narrowest MLPs;
  * streamed.py walks the hidden units in chunks for wider ones, whose weights do not fit a
    tile program's registers.
The host code below serves all four.

tl.dot needs every dimension >= 16 and power-of-two blocks: the host zero-pads k and the
widths (width 100 -> 128, k = 10 -> 16) and slices the gradients back. Padded hidden units
have a = 0 and h = s(0) != 0 (softplus(0) = log 2), harmless only because their outgoing
weights are zero; their weight gradients are nonzero and are dropped by the slicing.
"""
import torch

from .common import refuse_double_backward

try:
    import triton
    import triton.language as tl
except ImportError:  # the dispatcher never routes here without triton
    triton = None

if triton is not None:

    @triton.jit
    def _act(a, ACT: tl.constexpr):
        """s(a), s'(a), s''(a); ACT 0 = softplus, 1 = tanh (via sigmoid: no libdevice needed)."""
        if ACT == 0:
            d1 = tl.sigmoid(a)
            s = tl.maximum(a, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(a)))
        else:
            s = 2.0 * tl.sigmoid(2.0 * a) - 1.0
            d1 = 1.0 - s * s
        return s, d1, _d2(s, d1, ACT)

    @triton.jit
    def _d2(s, d1, ACT: tl.constexpr):
        """s''(a) from s(a) and s'(a) (softplus: s' = sigmoid, s'' = s'(1 - s'); tanh:
        s'' = -2 s s'). A VJP may call it where it uses s'' rather than keep _act's third
        output alive across the products between: the throughput backward's spills fell from
        548 to 516 B per thread that way (its step loop's local loads and stores from 168 to
        156); the tile and latency backwards came out the same or slightly worse, and keep
        _act's (sm_90, bench/ptxas_report.py --sass)."""
        if ACT == 0:
            return d1 * (1.0 - d1)
        else:
            return -2.0 * s * d1

    @triton.jit
    def _bf16_split(x):
        """x = hi + lo + O(2^-17 |x|) with hi, lo bf16 (8 mantissa bits each)."""
        hi = x.to(tl.bfloat16)
        return hi, (x - hi.to(tl.float32)).to(tl.bfloat16)

    @triton.jit
    def _dot(a, b, PREC: tl.constexpr):
        """a @ b, fp32 in and out. PREC "ieee": fp32 products on the FMA units (the default);
        "tf32x3": tensor cores, each operand split in two tf32 parts and three products
        summed, close to fp32; "tf32": one tensor-core product on operands rounded to tf32;
        "bf16x3": each operand split into bf16 hi + lo, the three products hi hi + hi lo +
        lo hi on the tensor cores with fp32 accumulation (16-bit operands: one shared-memory
        copy serves both orientations of a weight, which 32-bit wgmma operands cannot);
        "bf16x3-emulated": the same split with its products in fp32 on the FMA units, for
        the Triton interpreter, whose bf16 dots are wrong (a bf16 x bf16 product is exact in
        fp32, so this is the split's arithmetic, bar summation order). (The interpreter
        computes the tf32 precisions in fp32.)"""
        if PREC == "bf16x3":
            a_hi, a_lo = _bf16_split(a)
            b_hi, b_lo = _bf16_split(b)
            return (tl.dot(a_hi, b_lo) + tl.dot(a_lo, b_hi)) + tl.dot(a_hi, b_hi)
        elif PREC == "bf16x3-emulated":
            a_hi, a_lo = _bf16_split(a)
            b_hi, b_lo = _bf16_split(b)
            a_hi, a_lo = a_hi.to(tl.float32), a_lo.to(tl.float32)
            b_hi, b_lo = b_hi.to(tl.float32), b_lo.to(tl.float32)
            return ((tl.dot(a_hi, b_lo, input_precision="ieee")
                     + tl.dot(a_lo, b_hi, input_precision="ieee"))
                    + tl.dot(a_hi, b_hi, input_precision="ieee"))
        else:
            return tl.dot(a, b, input_precision=PREC)

    @triton.jit
    def _dot_acc(a, b, acc, PREC: tl.constexpr):
        """acc + a @ b with acc as the products' accumulator: a weight-gradient sum grows in
        place instead of through a temporary of its size (at width 128, 64 registers per
        thread at 8 warps; throughput.py's backward spilled for them)."""
        if PREC == "bf16x3":
            a_hi, a_lo = _bf16_split(a)
            b_hi, b_lo = _bf16_split(b)
            acc = tl.dot(a_hi, b_lo, acc)
            acc = tl.dot(a_lo, b_hi, acc)
            return tl.dot(a_hi, b_hi, acc)
        elif PREC == "bf16x3-emulated":
            a_hi, a_lo = _bf16_split(a)
            b_hi, b_lo = _bf16_split(b)
            a_hi, a_lo = a_hi.to(tl.float32), a_lo.to(tl.float32)
            b_hi, b_lo = b_hi.to(tl.float32), b_lo.to(tl.float32)
            acc = tl.dot(a_hi, b_lo, acc, input_precision="ieee")
            acc = tl.dot(a_lo, b_hi, acc, input_precision="ieee")
            return tl.dot(a_hi, b_hi, acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc, input_precision=PREC)

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
    def _saved_step(q_ptr, p_ptr, ph_ptr, gd_ptr, qm_ptr, pc_ptr, traj, half, t, K, mask,
                    ORDER2: tl.constexpr):
        """What the backward reads back for step t: q_t, p_t, q_t+1, p_half, the dHdq
        cotangent and the evaluation points q_mid, p_pred (for "official", q_t and p_half)."""
        q = tl.load(q_ptr + traj + t * K, mask=mask, other=0.0)
        p = tl.load(p_ptr + traj + t * K, mask=mask, other=0.0)
        q1 = tl.load(q_ptr + traj + (t + 1) * K, mask=mask, other=0.0)
        ph = tl.load(ph_ptr + half + t * K, mask=mask, other=0.0)
        D = tl.load(gd_ptr + half + t * K, mask=mask, other=0.0)
        if ORDER2:
            qm = tl.load(qm_ptr + half + t * K, mask=mask, other=0.0)
            pc = tl.load(pc_ptr + half + t * K, mask=mask, other=0.0)
        else:
            qm = q
            pc = ph
        return q, p, q1, ph, D, qm, pc

    @triton.jit
    def _reverse_step(VJP: tl.constexpr, q, p, q1, ph, D, qm, pc, Q, P, W1q, W1p, b1, W2, b2,
                      w3, dW1q, dW1p, db1, dW2, db2, dw3, dt, ACT: tl.constexpr,
                      ORDER2: tl.constexpr, PREC: tl.constexpr):
        """One step of the reverse walk: the cotangents (Q, P) of (q_t+1, p_t+1) become those
        of (q_t, p_t), less the loss's own terms at t, which the caller adds; the weight
        gradients grow by the step's three VJPs. VJP is the layout's _vjp (this module's,
        or throughput.py's, whose operands are transposed); the step reads the same either way.
        D is the cotangent of dHdq_t; (q, p, q1, ph, qm, pc) are from _saved_step."""
        # c: p_t+1 = p_half - dt/2 F_q(q_t+1, p_pred)
        dxq, dxp, dW1q, dW1p, db1, dW2, db2, dw3 = VJP(
            q1, pc, -0.5 * dt * P, P, W1q, W1p, b1, W2, b2, w3,
            dW1q, dW1p, db1, dW2, db2, dw3, ACT, True, False, PREC)
        Q += dxq
        Pc = dxp
        # b: q_t+1 = q_t + dt F_p(q_mid, p_half)
        dxq, dxp, dW1q, dW1p, db1, dW2, db2, dw3 = VJP(
            qm, ph, Q, dt * Q, W1q, W1p, b1, W2, b2, w3,
            dW1q, dW1p, db1, dW2, db2, dw3, ACT, False, True, PREC)
        Qm = dxq
        Ph = P + dxp
        # a: p_half, p_pred and q_mid from F(q_t, p_t); dHdq_t = F_q(q_t, p_t).
        # q_mid hangs off q_t and p_pred off p_t, so Q_m and P_c flow into Q and Ph.
        Q += Qm
        Ph += Pc
        if ORDER2:
            dxq, dxp, dW1q, dW1p, db1, dW2, db2, dw3 = VJP(
                q, p, D - 0.5 * dt * (Ph + Pc), 0.5 * dt * Qm, W1q, W1p, b1, W2, b2, w3,
                dW1q, dW1p, db1, dW2, db2, dw3, ACT, True, True, PREC)
        else:
            dxq, dxp, dW1q, dW1p, db1, dW2, db2, dw3 = VJP(
                q, p, D - 0.5 * dt * Ph, Ph, W1q, W1p, b1, W2, b2, w3,
                dW1q, dW1p, db1, dW2, db2, dw3, ACT, True, False, PREC)
        return Q + dxq, Ph + dxp, dW1q, dW1p, db1, dW2, db2, dw3

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
        # One partial per program; the host reduces them once.
        tl.store(dw1q_ptr + pid * H1 * KP + h1[:, None] * KP + cols[None, :], dW1q)
        tl.store(dw1p_ptr + pid * H1 * KP + h1[:, None] * KP + cols[None, :], dW1p)
        tl.store(dw2_ptr + pid * H2 * H1 + h2[:, None] * H1 + h1[None, :], dW2)
        tl.store(db1_ptr + pid * H1 + h1, db1)
        tl.store(db2_ptr + pid * H2 + h2, db2)
        tl.store(dw3_ptr + pid * H2 + h2, dw3)


_ACT_CODE = {"softplus": 0, "tanh": 1}


class FusedCannotLaunch(RuntimeError):
    """A kernel config needs more of a resource (shared memory, threads) than this GPU has.
    The dispatcher turns it into analytic with a one-time warning under backend="auto"."""


def _launch(kernel, grid, *args, **kwargs):
    try:
        kernel[grid](*args, **kwargs)
    except triton.runtime.errors.OutOfResources as err:
        cfg = {k: kwargs[k] for k in ("BLOCK_B", "KP", "H1", "H2", "CH", "PREC", "num_warps")
               if k in kwargs}
        cfg["layout"] = getattr(kernel, "__module__", "?").rsplit(".", 1)[-1]
        raise FusedCannotLaunch(f"the fused kernel does not fit this GPU ({err}; config "
                                f"{cfg})") from err


def _pow2(n):
    return max(16, 1 << (int(n) - 1).bit_length())


def _chunk(h1, h2):
    """Hidden units per chunk of the streamed layout (streamed.py), or 0 for this module's
    register-resident one, for the tile regime (B > LATENCY_MAX_ROWS). From what ptxas
    reports for sm_90 (bench/ptxas_report.py, triton 3.6, launch alignment; backward, 8
    warps): resident spills 2 KB per thread at width 32, streamed nothing (16-unit chunks);
    at width 128 streamed spills 0.36 KB with 16-unit chunks and 0.45 KB with 32-unit ones
    (half the loop trips). An H200 sweep of these tile configs (bench/tune_fused.py, commit
    10adb26) found none faster than 3.09 ms at B = 64 and 91.1 ms at B = 65536; which won
    was not kept, so re-run it before changing these."""
    width = max(h1, h2)
    return 0 if width <= 16 else 16 if width <= 32 else 32


def _block_b(h1, h2):
    # The streamed backward spills more with 32-row blocks than with 16 (tl.dot's smallest)
    # at widths 32-128 (ptxas, sm_90); the resident layout at width 16 has room for 32.
    return 16 if _chunk(h1, h2) else 32


def _num_warps(h1, h2):
    # At width 128 the streamed backward spills 0.6-1.9 KB per thread with 4 warps and
    # 0.36-0.45 KB with 8 (ptxas, sm_90).
    return 8 if max(h1, h2) >= 128 else 4


# Which kernel runs, by regime: the one table the dispatcher reads. Rows up to
# LATENCY_MAX_ROWS run the latency layout (latency.py: a program per row, matrix-vector
# products on the FMA units), larger batches with precision "bf16x3" the throughput layout
# (throughput.py) where it fits, and the rest the tile layouts (this module's
# register-resident one up to width 16, streamed.py's above: _chunk). The switch point is modelled in
# latency.py's docstring and still to be measured on a GPU (bench/gpu/leapfrog.sh sweeps it).
LATENCY_MAX_ROWS = 2048
# The latency backward writes 5 floats per hidden unit, row and evaluation (latency._vjp):
# past this many bytes (and int32 offsets) a long rollout goes to the tile layouts instead.
LATENCY_SCRATCH_BYTES = 1 << 30
# Above LATENCY_MAX_ROWS, these precisions run throughput.py's hidden-major tiles (wgmma at
# any row block; 16-bit operands take either orientation). Row blocks per direction and
# warps from bench/ptxas_report.py (sm_90, triton 3.6, width 128, 8 warps): the forward
# compiles without spills at 16, 32 and 64 rows, and a wider block gives each wgmma more
# columns (N) for the same chain of dependent products, so it takes 64; the backward spills
# 0.52 KB at 16 rows and 2.3 KB at 32, so it takes 16. 4 warps spill 4.2 KB there.
THROUGHPUT_PRECISIONS = ("bf16x3",)
THROUGHPUT_BLOCK_B = {"fwd": 64, "bwd": 16}
THROUGHPUT_WARPS = 8


def _throughput_fits(H1, H2, KP):
    """Where the throughput layout applies (padded sizes). Width >= 64: wgmma needs M >= 64,
    and narrower layers compile to mma.sync with more spills than the tile layouts (sm_90
    report). At most 128 x 16 of (width x padded k): at width 128 and k 17..32 (KP 32) its
    backward asks for 230 KB of shared memory, over the 227 KB a block may have."""
    width = max(H1, H2)
    return width >= 64 and width * KP <= 128 * 16


def _latency_scratch(B, T, H1, H2):
    """Elements of the latency backward's scratch (s2, s1, su of _latency_bwd)."""
    return B * max(T - 1, 0) * 3 * (3 * H2 + 2 * H1)


def _layout(B, T, H1, H2, precision="ieee", KP=16):
    """"latency", "throughput", or the tile layout's chunk width (0: resident), clamped to
    the padded H1."""
    if B <= LATENCY_MAX_ROWS and 4 * _latency_scratch(B, T, H1, H2) <= LATENCY_SCRATCH_BYTES:
        return "latency"
    if precision in THROUGHPUT_PRECISIONS and _throughput_fits(H1, H2, KP):
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
    if not layout:
        return _leapfrog_fwd_kernel, _leapfrog_bwd_kernel
    from . import streamed
    return streamed._leapfrog_fwd_kernel, streamed._leapfrog_bwd_kernel


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
        return _throughput_programs(B, device, block_b), dict(
            BLOCK_B=block_b, PREC=precision, num_warps=THROUGHPUT_WARPS)
    BLOCK_B = _block_b(H1, H2)
    extra = {"CH": layout} if layout else {}
    return triton.cdiv(B, BLOCK_B), dict(BLOCK_B=BLOCK_B, PREC=precision,
                                          num_warps=_num_warps(H1, H2), **extra)


def _latency_warps(h1, h2):
    # W2 is an [H2, H1] register tensor: 8 warps put 64 floats of it in a thread at width
    # 128. sm_90 (bench/ptxas_report.py --sass): the backward spills 140 B at 8 warps, 316 B
    # at 4, and 448 B at 16 (registers capped at 128); 16 warps issue more instructions per
    # step (23k against 18k forward) but hide more latency. bench/gpu/leapfrog_table.py times
    # 4 and 16 beside 8.
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
                 precision="ieee"):
    """Host side of the forward: check, allocate, launch. Returns q, p, p_half, dHdq, the
    order2 points (q_mid, p_pred; empty for "official") and the padded weights (the tile
    layouts'; empty for the latency layout, which reads the caller's tensors)."""
    B, k = q0.shape
    assert q0.dtype == torch.float32 and len(weights) == 3, "dispatcher checks the contract"
    if B * frames * k >= 2 ** 31:
        # The kernels index the [B, T, k] trajectories with int32 offsets (rows * T * k):
        # past 2^31 elements they would wrap and read or write out of bounds.
        raise ValueError(f"the fused leapfrog backend indexes with int32: B * frames * k = "
                         f"{B} * {frames} * {k} must stay below 2^31; split the batch or use "
                         f"backend='analytic'")
    n1, n2 = weights[0].shape[0], weights[1].shape[0]
    KP, H1, H2 = _pow2(k), _pow2(n1), _pow2(n2)
    layout = _layout(B, frames, H1, H2, precision, KP)
    if layout == "latency":
        # the latency kernels read the caller's tensors and pad by masked loads
        padded = ()
        params = (weights[0].detach().contiguous(), biases[0].detach().contiguous(),
                  weights[1].detach().contiguous(), biases[1].detach().contiguous(),
                  weights[2].detach().contiguous())
    else:
        with torch.no_grad():
            padded = params = _pad_params(weights, biases, k)[0]
    q0, p0 = q0.detach().contiguous(), p0.detach().contiguous()
    q = q0.new_empty(B, frames, k)             # [B, T, k]
    p = torch.empty_like(q)
    ph = q0.new_empty(B, frames - 1, k)        # [B, T-1, k]
    dq = torch.empty_like(ph)
    order2 = scheme == "order2"
    points = (torch.empty_like(ph), torch.empty_like(ph)) if order2 else (ph.new_empty(0),) * 2
    n_prog, config = _launch_config(layout, B, H1, H2, q0.device, precision)
    if layout == "latency":   # sizes are compile-time constants there (see latency.py)
        _launch(_kernels(layout)[0], (n_prog,), q0, p0, *params, q, p, ph, dq, *points, B,
                frames, dt, K=k, N1=n1, N2=n2, KP=KP, H1=H1, H2=H2,
                ACT=_ACT_CODE[activation], ORDER2=order2, **config)
    else:
        _launch(_kernels(layout)[0], (n_prog,), q0, p0, *params, q, p, ph, dq, *points, B, k,
                frames, dt, KP=KP, H1=H1, H2=H2, ACT=_ACT_CODE[activation], ORDER2=order2,
                **config)
    return q, p, ph, dq, points, padded


def leapfrog_bwd(q, p, ph, points, gq, gp, gd, padded, raw, dt, activation, scheme,
                 precision="ieee"):
    """Host side of the backward: launch, reduce the per-program partials once, unpad.
    padded: the forward's padded weights (tile layouts); raw: (w1, w2, w3, b1, b2, b3)."""
    B, T, k = q.shape
    n1, n2 = raw[0].shape[0], raw[1].shape[0]
    KP, H1, H2 = _pow2(k), _pow2(n1), _pow2(n2)
    layout = _layout(B, T, H1, H2, precision, KP)
    n_prog, config = _launch_config(layout, B, H1, H2, q.device, precision, "bwd")
    gq, gp, gd = gq.contiguous(), gp.contiguous(), gd.contiguous()
    dq0, dp0 = q.new_empty(B, k), q.new_empty(B, k)
    if layout == "latency":
        dws, dbs = _latency_bwd(q, p, ph, points, gq, gp, gd, raw, dq0, dp0, n_prog, dt,
                                activation, scheme, config)
        return dq0, dp0, dws, dbs
    # streamed.py adds into its slabs; the resident and throughput layouts write each
    # partial once
    slab = q.new_zeros if layout and layout != "throughput" else q.new_empty
    dW1q, dW1p, db1, dW2 = slab(n_prog, H1, KP), slab(n_prog, H1, KP), slab(n_prog, H1), \
        slab(n_prog, H2, H1)
    db2, dw3 = q.new_empty(n_prog, H2), q.new_empty(n_prog, H2)
    _launch(_kernels(layout)[1], (n_prog,), q, p, ph, *points, gq, gp, gd, *padded, dq0, dp0,
            dW1q, dW1p, db1, dW2, db2, dw3, B, k, T, dt, KP=KP, H1=H1, H2=H2,
            ACT=_ACT_CODE[activation], ORDER2=scheme == "order2", **config)
    dW1q, dW1p, db1, dW2, db2, dw3 = (x.sum(0) for x in (dW1q, dW1p, db1, dW2, db2, dw3))
    dw1 = torch.cat([dW1q[:n1, :k], dW1p[:n1, :k]], 1)       # [n1, 2k]
    return (dq0, dp0, (dw1, dW2[:n2, :n1], dw3[:n2].unsqueeze(0)),
            (db1[:n1], db2[:n2], q.new_zeros(1)))


def _latency_bwd(q, p, ph, points, gq, gp, gd, raw, dq0, dp0, n_prog, dt, activation, scheme,
                 config):
    """The latency layout's backward: the kernel writes dq0, dp0, layer 1's per-program
    partials in w1's layout and, per row and evaluation, the factors of layer 2's weight
    gradient; one matrix product and four sums reduce them (deterministic, no atomics).
    Returns the weight and bias gradients in the caller's shapes."""
    B, T, k = q.shape
    w1, w2, w3, b1, b2, _ = (t.detach().contiguous() for t in raw)
    n1, n2 = w1.shape[0], w2.shape[0]
    n = B * (T - 1) * 3                        # evaluations, each a scratch row
    s2, s1, su = q.new_empty(n, 2, n2), q.new_empty(n, 2, n1), q.new_empty(n, n2)
    dw1, db1 = q.new_empty(n_prog, n1, 2 * k), q.new_empty(n_prog, n1)
    _launch(_kernels("latency")[1], (n_prog,), q, p, ph, *points, gq, gp, gd, w1, b1, w2, b2,
            w3, dq0, dp0, dw1, db1, s2, s1, su, B, T, dt, K=k, N1=n1, N2=n2, KP=_pow2(k),
            H1=_pow2(n1), H2=_pow2(n2), ACT=_ACT_CODE[activation],
            ORDER2=scheme == "order2", **config)
    with _fp32_matmul():
        dW2 = s2.view(2 * n, n2).t() @ s1.view(2 * n, n1)   # sum r2 h1^T + g2 u1^T
    return ((dw1.sum(0), dW2, su.sum(0).unsqueeze(0)),
            (db1.sum(0), s2[:, 0].sum(0), q.new_zeros(1)))


class _fp32_matmul:
    """Full fp32 for the weight-gradient product whatever the caller's TF32 setting (the
    contract is 1e-4 against float64; TF32 products are ~1e-3)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved
        return False


class LeapfrogFunction(torch.autograd.Function):
    """Fused rollout: one forward launch, one backward launch; first-order gradients only."""

    @staticmethod
    def forward(ctx, q0, p0, dt, frames, activation, scheme, precision, on_fallback, w1, w2,
                w3, b1, b2, b3):
        q, p, ph, dq, points, padded = leapfrog_fwd(q0, p0, (w1, w2, w3), (b1, b2, b3), dt,
                                                    frames, activation, scheme, precision)
        # The raw weights too: if the backward kernel cannot launch, the analytic backend
        # recomputes the gradients from (q0, p0, weights) instead.
        ctx.save_for_backward(q, p, ph, *points, *padded, w1, w2, w3, b1, b2, b3)
        ctx.dt, ctx.activation, ctx.n_padded = dt, activation, len(padded)
        ctx.scheme, ctx.precision, ctx.on_fallback = scheme, precision, on_fallback
        ctx.frames = frames
        return q, p, dq

    @staticmethod
    def backward(ctx, gq, gp, gd):
        refuse_double_backward("fused")
        q, p, ph, qm, pc, *rest = ctx.saved_tensors
        padded, raw = rest[:ctx.n_padded], rest[ctx.n_padded:]
        try:
            dq0, dp0, dws, dbs = leapfrog_bwd(q, p, ph, (qm, pc), gq, gp, gd, padded, raw,
                                              ctx.dt, ctx.activation, ctx.scheme, ctx.precision)
        except FusedCannotLaunch as err:
            if ctx.on_fallback is None:
                raise
            ctx.on_fallback(str(err))
            g = _analytic_grads(q[:, 0], p[:, 0], raw, (gq, gp, gd), ctx)
            return (g[0], g[1], None, None, None, None, None, None, *g[2:])
        return (dq0, dp0, None, None, None, None, None, None, *dws, *dbs)


def _analytic_grads(q0, p0, raw, cotangents, ctx):
    """Gradients w.r.t. (q0, p0, *weights, *biases) from the analytic backend."""
    from .analytic import leapfrog_analytic
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q0, p0, *raw)]
        outs = leapfrog_analytic(leaves[0], leaves[1], leaves[2:5], leaves[5:], ctx.dt,
                                 ctx.frames, ctx.activation, ctx.scheme)
        return torch.autograd.grad(outs, leaves, cotangents, allow_unused=True)


def leapfrog_fused(q0, p0, weights, biases, dt, frames, activation, scheme="order2",
                   precision="ieee", on_fallback=None):
    """on_fallback(reason): called when a kernel does not fit this GPU and the analytic
    backend stands in (the dispatcher's one-time warning); None: FusedCannotLaunch raises."""
    return LeapfrogFunction.apply(q0, p0, float(dt), frames, activation, scheme, precision,
                                  on_fallback, *weights, *biases)
