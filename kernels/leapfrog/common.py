"""Pieces every leapfrog backend shares: the activation and its derivative (torch; the
Triton kernels have their own, ops._act), the input
checks of the public contract, and the FLOP count of one rollout.

Shapes (the public contract): q0, p0 [B, k]; weights[l] [out_l, in_l] in nn.Linear layout
with in_0 = 2k and out_L = 1; biases[l] [out_l]; results q, p [B, T, k] and dHdq [B, T-1, k].
"""
import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

ACTIVATIONS = ("softplus", "tanh", "relu")
BACKENDS = ("auto", "reference", "analytic", "fused")

# The step's three gradient evaluations are at (q_t, p_t), (q_mid, p_half), (q_t+1, p_pred).
# "official" is the official HGAN code's step: q_mid = q_t, p_pred = p_half. It is
# Stormer-Verlet for a separable H but only FIRST order for a general H(q, p): its local
# error keeps dt^2/2 H_pq H_p in q and dt^2/4 H_qp H_q in p, which vanish only when H_pq = 0.
# "order2" (the default) moves the drift to the midpoint q_mid = q_t + dt/2 H_p(q_t, p_t) and
# the last kick to the Euler-predicted p_pred = p_t - dt H_q(q_t, p_t). Taylor-expanding,
#   q_t+1 = q + dt H_p + dt^2/2 (H_pq H_p - H_pp H_q) + O(dt^3)
#   p_t+1 = p - dt H_q - dt^2/2 (H_qq H_p - H_qp H_q) + O(dt^3)
# which is the exact flow to second order, for every H, at the same three evaluations per
# step. For a separable H the moved points change nothing (H_p ignores q, H_q ignores p), so
# both schemes are the same Stormer-Verlet step (bit for bit in reference and fused; analytic
# shares its layer-1 block products differently in each, which can move the last float32 bit).
SCHEMES = ("order2", "official")

# Dot-product precision inside the fused kernels (inputs and outputs stay float32, products
# accumulate in fp32): "ieee" fp32 products on the FMA units (the default; what the 1e-4
# contract is tested with), "tf32x3" (tensor cores, three tf32 products per dot, close to
# fp32), "tf32" (one tensor-core product on operands rounded to 10 mantissa bits), "bf16x3"
# (tensor cores, each operand split into bf16 hi + lo, three products; under the Triton
# interpreter, whose bf16 dots are wrong, the same split runs its products in fp32, so CI
# tests the split's accuracy). They apply to the tile layouts; the latency layout (training
# batches) computes in fp32 whatever is asked. The other backends compute in float32 and
# refuse any other value.
PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16x3")
# What leapfrog(precision=) takes: one of PRECISIONS, or "auto" (the default), the fused
# dispatch table's choice for the batch: "ieee" in the latency regime, fused.SPLIT_ABOVE_LATENCY
# above it at the compiled shapes a GPU measured (fused.SPLIT_SHAPES; an fp32-faithful split
# once a GPU has measured one faster within 1e-4), "ieee" at the others. The other backends
# take "auto" as "ieee".
PRECISION_CHOICES = ("auto",) + PRECISIONS


def act_d1(a, name):
    """s'(a) alone (the forward pass of the integrator needs no s'')."""
    if name == "softplus":
        return torch.sigmoid(a)
    if name == "tanh":
        h = torch.tanh(a)
        return 1 - h * h
    if name == "relu":
        return (a > 0).to(a.dtype)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def act_value(a, name):
    if name == "softplus":
        return F.softplus(a)
    if name == "tanh":
        return torch.tanh(a)
    if name == "relu":
        return torch.relu(a)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def functorch_active():
    """Whether a torch.func transform (grad, vjp, jacrev, jacfwd, vmap) traces this call."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def forward_ad_tangents(*ts):
    """Whether any of ts carries a tangent of torch.autograd.forward_ad (a dual tensor)."""
    return any(isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None
               for t in ts)


def hand_written_backward(backend, backward, ctx, *grads):
    """Run a hand-written backward as every call of it needs: refused under create_graph,
    autocast off (a backward called inside the caller's autocast), and a vmapped backward
    (jacobian(vectorize=True), autograd.grad(is_grads_batched=True)), which its in-place
    buffer updates cannot take, named with the way out instead of vmap's message about add_."""
    refuse_double_backward(backend)
    if functorch_active() or any(_batched(g) for g in grads if isinstance(g, torch.Tensor)):
        # Checked before it runs: inside, analytic failed with vmap's message about add_ and
        # fused inside Triton's launch ("Cannot access storage of BatchedTensorImpl").
        raise RuntimeError(
            f"the {backend} leapfrog backend's hand-written backward cannot be vmapped "
            f"(torch.autograd.functional.jacobian(vectorize=True), "
            f"autograd.grad(is_grads_batched=True)); use backend='reference'")
    with autocast_off(grads[0].device.type):
        return backward(ctx, *grads)


def _batched(t):
    """Whether t is a vmap-batched tensor. The batched backwards (jacobian(vectorize=True),
    is_grads_batched=True) hand a custom Function's backward cotangents that carry the
    Batched dispatch key but no functorch interpreter on the stack; torch exposes no
    DispatchKey member for that key, so its name is read from the key set."""
    return "Batched" in str(torch._C._dispatch_keys(t))


def refuse_double_backward(backend):
    """Hand-written backwards build no graph: a create_graph backward through one would
    silently return gradients that are constants, so it raises instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"the {backend} leapfrog backend supports first-order gradients "
                           f"only; use backend='reference' for double backward")


def scheme_points(q, p, dq, dp, dt, scheme):
    """p_half, q_mid, p_pred of one step from dH/dq, dH/dp at (q_t, p_t) (see SCHEMES)."""
    p_half = torch.add(p, dq, alpha=-0.5 * dt)
    if scheme == "official":
        return p_half, q, p_half
    return p_half, torch.add(q, dp, alpha=0.5 * dt), torch.add(p, dq, alpha=-dt)


def layer_list(ts, name):
    """`weights` or `biases` as a list, one tensor per layer; a TypeError naming the argument
    for anything that is not a sequence of layers (None, a lone tensor, a module)."""
    if isinstance(ts, torch.nn.ParameterList):
        # a module, but one that is the list of tensors asked for (a network keeping its
        # layers' weights in one)
        return list(ts)
    if isinstance(ts, (torch.Tensor, torch.nn.Module)) or ts is None \
            or not hasattr(ts, "__iter__"):
        hint = (" (a network without biases takes one torch.zeros(out) per layer)"
                if ts is None and name == "biases" else
                " (pass each nn.Linear's .weight and .bias, as lists)"
                if isinstance(ts, torch.nn.Module) else "")
        raise TypeError(f"{name} must be a list of tensors, one per layer, got "
                        f"{type(ts).__name__}{hint}")
    return list(ts)


def check_inputs(q0, p0, weights, biases, dt, frames, activation, backend, scheme="order2",
                 precision="auto"):
    """Raise one clear error naming the first broken part of the contract."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    if precision not in ("auto", "ieee") and backend in ("reference", "analytic"):
        raise ValueError(f"precision={precision!r} is an option of the fused kernels; "
                         f"backend={backend!r} has none: it computes in the inputs' dtype "
                         f"(float32 for bf16 and fp16 inputs), as precision='ieee' does")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    if isinstance(dt, (torch.Tensor, bool)) or not isinstance(dt, numbers.Real) \
            or not math.isfinite(dt):
        raise ValueError(f"dt must be a finite real number (a float, not a tensor), got {dt!r}")
    for name, t in (("q0", q0), ("p0", p0)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be [B, k], got shape {tuple(t.shape)}")
    if q0.shape != p0.shape:
        raise ValueError(f"q0 and p0 must have the same shape, got {tuple(q0.shape)} and "
                         f"{tuple(p0.shape)}")
    if not q0.dtype.is_floating_point:
        raise TypeError(f"q0 must be a floating-point tensor, got {q0.dtype}")
    if q0.shape[1] < 1:
        raise ValueError(f"q0 and p0 must have k >= 1 coordinates, got shape {tuple(q0.shape)}")
    weights, biases = layer_list(weights, "weights"), layer_list(biases, "biases")
    if len(weights) != len(biases) or len(weights) < 2:
        raise ValueError(f"need >= 2 layers with one bias per weight, got {len(weights)} weights "
                         f"and {len(biases)} biases")
    for name, ts in (("weights", weights), ("biases", biases)):
        for l, t in enumerate(ts):
            if not isinstance(t, torch.Tensor):
                hint = (" (a layer without a bias takes torch.zeros(out) as its bias)"
                        if t is None and name == "biases" else
                        " (pass a layer's .weight, not the layer)"
                        if isinstance(t, torch.nn.Module) else "")
                raise TypeError(f"{name}[{l}] must be a torch.Tensor, got "
                                f"{type(t).__name__}{hint}")
    k = q0.shape[1]
    w0 = weights[0]
    last = weights[-1]
    if w0.dim() == 2 and w0.shape[0] == 2 * k and w0.shape[1] != 2 * k:
        w1 = weights[1]
        if last.dim() == 2 and last.shape[1] == 1 and last.shape[0] != 1:
            # the whole stack is [in, out]: [2k, n_1] first, [n_L, 1] last
            which = "transpose them"
        elif w1.dim() == 2 and w1.shape[1] == w0.shape[1]:
            # weights[1] takes w0.shape[1] inputs: weights[0] alone is [in, out]
            which = "transpose weights[0]"
        else:
            which = None
        if which:
            raise ValueError(f"weights[0] has shape {tuple(w0.shape)}: that is [in, out] for "
                             f"[q; p] of 2k = {2 * k} inputs; weights are in nn.Linear layout "
                             f"[out, in] ({which})")
    if isinstance(w0, torch.Tensor) and w0.dim() == 2 and w0.shape[1] != 2 * k \
            and w0.shape[1] % 2 == 0:
        # A first layer that does take some [q; p] was built for another k: the state is what
        # does not fit the network.
        raise ValueError(f"q0 and p0 have k = {k} coordinates, but the network expects "
                         f"k = {w0.shape[1] // 2} (weights[0] takes [q; p] of {w0.shape[1]} "
                         f"inputs)")
    fan_in = 2 * k
    for l, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 2 or w.shape[1] != fan_in:
            raise ValueError(f"weights[{l}] must be [out, {fan_in}] (nn.Linear layout), got "
                             f"{tuple(w.shape)}")
        if w.shape[0] < 1:
            raise ValueError(f"weights[{l}] has no outputs (shape {tuple(w.shape)})")
        if b.shape != (w.shape[0],):
            raise ValueError(f"biases[{l}] must be [{w.shape[0]}], got {tuple(b.shape)}")
        fan_in = w.shape[0]
    if fan_in != 1:
        raise ValueError(f"the last layer must have one output (H is a scalar), got {fan_in}")
    for name, t in [("p0", p0)] + [(f"weights[{l}]", w) for l, w in enumerate(weights)] + \
            [(f"biases[{l}]", b) for l, b in enumerate(biases)]:
        if t.dtype != q0.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q0 has {q0.dtype}: all inputs must "
                            f"share one dtype")
        if t.device != q0.device:
            raise ValueError(f"{name} is on {t.device} but q0 is on {q0.device}: all inputs must "
                             f"share one device")
    return weights, biases


def autocast_off(device_type):
    """Autocast off on `device_type` (cpu and cuda; a no-op on other devices): the rollout and
    its hand-written backward compute in the inputs' dtype whatever context they are called
    from. A leapfrog in bf16 misses the 1e-4 contract by far (measured: dHdq off by 8e-3), and
    the backward's in-place products cannot mix autocast's dtypes with the saved fp32 ones."""
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def leapfrog_flops(batch, frames, k, widths, backward=False):
    """Dense matmul FLOPs of one rollout (a multiply-add is 2 FLOPs; elementwise work ignored),
    so a benchmark can state achieved FLOP/s.

    With m_1 = 2k * n_1 and m_l = n_(l-1) * n_l the hidden layers' weight sizes: one gradient
    evaluation of H is a forward sweep and a backward sweep, 2 * sum(m) multiply-adds per row;
    a leapfrog step makes three. The backward of one evaluation (see analytic.py) recomputes
    a_l, forms the tangents t_l, the adjoints r_l W_l and two weight-gradient products per
    layer: 5 * m_1 + 6 * sum(m_2..m_L) multiply-adds per row.

    This is the fused tile layouts' work, and benchmarks use it for every backend so that
    FLOP/s compare like for like. `analytic` below its SAVE_BYTES, and the fused latency
    layout (training batches), keep the primal sweeps of the forward instead of recomputing
    them (4 * sum(m) per evaluation in the backward): at k 10, widths 100/100 they do 23% fewer
    multiply-adds in forward+backward than counted here, so their FLOP/s read 23% high.
    """
    dims = [2 * k] + list(widths)
    m = [a * b for a, b in zip(dims[:-1], dims[1:])]
    evals = 3 * batch * max(frames - 1, 0)
    fwd = 2 * evals * 2 * sum(m)
    bwd = 2 * evals * (5 * m[0] + 6 * sum(m[1:]))
    return fwd + (bwd if backward else 0)
