"""Device functions every layout of the fused kernels shares (tile.py, streamed.py,
latency.py, throughput.py): the activation and its derivatives, the precisions of a product,
and the reverse walk's read-back and step.
"""
import triton
import triton.language as tl


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
    """x = hi + lo + O(2^-16 |x|) with hi, lo bf16 (8 significant bits each), each rounded to
    nearest even on a GPU (cvt.rn.bf16.f32); the interpreter's cast truncates, so its
    emulation splits with _bf16_split_f32 instead."""
    hi = x.to(tl.bfloat16)
    return hi, (x - hi.to(tl.float32)).to(tl.bfloat16)

@triton.jit
def _bf16_rne(x):
    """bf16(x) rounded to nearest, ties to even, held in fp32: what the GPU's cast
    (cvt.rn.bf16.f32) computes. The interpreter's x.to(tl.bfloat16) truncates instead."""
    b = x.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.to(tl.float32, bitcast=True)

@triton.jit
def _bf16_split_f32(x):
    """_bf16_split's parts in fp32, rounded as on the GPU (the emulation's split)."""
    hi = _bf16_rne(x)
    return hi, _bf16_rne(x - hi)

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
    fp32, and the parts are rounded as the GPU rounds them, so this is the split's
    arithmetic, bar summation order). (The interpreter
    computes the tf32 precisions in fp32.)"""
    if PREC == "bf16x3":
        a_hi, a_lo = _bf16_split(a)
        b_hi, b_lo = _bf16_split(b)
        return (tl.dot(a_hi, b_lo) + tl.dot(a_lo, b_hi)) + tl.dot(a_hi, b_hi)
    elif PREC == "bf16x3-emulated":
        a_hi, a_lo = _bf16_split_f32(a)
        b_hi, b_lo = _bf16_split_f32(b)
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
        a_hi, a_lo = _bf16_split_f32(a)
        b_hi, b_lo = _bf16_split_f32(b)
        acc = tl.dot(a_hi, b_lo, acc, input_precision="ieee")
        acc = tl.dot(a_lo, b_hi, acc, input_precision="ieee")
        return tl.dot(a_hi, b_hi, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


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
    gradients grow by the step's three VJPs. VJP is the layout's _vjp (tile.py's,
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
