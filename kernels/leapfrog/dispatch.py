"""The one entry point every caller uses: ``leapfrog(..., backend=...)``.

``auto`` picks ``fused`` for CUDA tensors when Triton is importable and ``analytic``
otherwise; it decides once per device type and remembers. A configuration outside the fused
contract runs ``analytic`` under ``auto`` with a one-time warning; an explicit
``backend="fused"`` that cannot run raises with the reason instead.
"""
import logging
import operator
import os
import sys
import warnings

import torch

from .analytic import leapfrog_analytic
from .common import (autocast_off, check_inputs, forward_ad_tangents, functorch_active,
                     layer_list)
from .reference import leapfrog_reference

log = logging.getLogger(__name__)

# What the Triton kernels compile for; anything else goes to analytic (auto) or raises (fused).
FUSED_CONTRACT = {
    "depth": 2,                       # hidden layers
    "widths": (16, 128),              # each hidden width, inclusive; padded to a power of two
    # Coordinates, padded to a power of two >= 16. Not 64: the order2 backward at k 33..64 and
    # width 128 needs 248 KB of shared memory per block (triton 3.6, sm_90), over an H100's
    # 227 KB, and would fail at launch instead of falling back.
    "k": (1, 32),
    "activations": ("softplus", "tanh"),
    "schemes": ("order2", "official"),
    "dtypes": (torch.float32,),       # what the kernels take (bf16/fp16 inputs are cast up
                                      # first, see leapfrog()); dot precision: PRECISIONS
    "devices": ("cuda", "cpu under TRITON_INTERPRET=1"),
}

# Which derivative orders each backend supports. An unsupported order raises, never zeros.
DERIVATIVE_ORDERS = {
    "reference": {"forward": True, "backward": True, "double_backward": True},
    "analytic": {"forward": True, "backward": True, "double_backward": False},
    "fused": {"forward": True, "backward": True, "double_backward": False},
}

_auto_choice = {}      # device type -> backend, decided on first use
_warned = set()        # fallback reasons already reported


def _interpreting():
    """Whether Triton runs the kernels through its interpreter, as Triton itself reads
    TRITON_INTERPRET (triton.knobs: "1", "true", "on", "yes", "y" in any case): "false" or
    "off" mean a compiled launch, which cannot take CPU tensors."""
    try:
        from triton import knobs
    except ImportError:      # no triton (fused cannot run anyway), or one without knobs
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


def _triton_importable():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpret_mismatch():
    """Triton reads TRITON_INTERPRET once, when triton.language is imported: its own @jit
    functions (tl.sum, tl.max) are interpreted or compiled from then on. A kernel launched
    after the variable changed mixes the two and fails deep inside Triton with an error that
    names neither, so the mismatch is found here and stated."""
    tl = sys.modules.get("triton.language")
    if tl is None or not hasattr(tl, "sum"):
        return None
    interpreting = _interpreting()
    if interpreting == (type(tl.sum).__name__ != "InterpretedFunction"):
        now = "set" if interpreting else "unset"
        return (f"TRITON_INTERPRET was {now} after triton was imported (triton reads it once, "
                f"at import): set it before anything imports triton")
    return None


def fused_unsupported_reason(q0, weights, activation):
    """Why the fused kernels cannot run this configuration, or None if they can."""
    widths = [w.shape[0] for w in weights[:-1]]
    lo, hi = FUSED_CONTRACT["widths"]
    if len(widths) != FUSED_CONTRACT["depth"]:
        return (f"fused supports depth {FUSED_CONTRACT['depth']}, got {len(widths)} hidden "
                f"layer{'' if len(widths) == 1 else 's'}")
    if any(not lo <= n <= hi for n in widths):
        return f"fused supports hidden widths {lo}..{hi}, got {widths}"
    if activation not in FUSED_CONTRACT["activations"]:
        return f"fused supports activations {FUSED_CONTRACT['activations']}, got {activation!r}"
    if q0.dtype not in FUSED_CONTRACT["dtypes"]:
        return f"fused supports float32 only, got {q0.dtype}"
    if q0.shape[1] > FUSED_CONTRACT["k"][1]:
        return f"fused supports k <= {FUSED_CONTRACT['k'][1]}, got k = {q0.shape[1]}"
    if not _triton_importable():
        return "triton is not installed"
    if q0.device.type != "cuda" and not (q0.device.type == "cpu" and _interpreting()):
        return (f"fused needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got "
                f"{q0.device}")
    return _interpret_mismatch()


def _resolve(backend, q0, weights, activation, dual=False):
    """dual: whether an input carries a torch.autograd.forward_ad tangent."""
    if (functorch_active() or dual) and backend != "reference":
        # analytic and fused are autograd.Functions with hand-written backwards and no vmap
        # or jvp rule: torch.func and forward-mode AD cannot see through them, while they
        # can through reference.
        what = ("torch.func transforms (grad, vjp, jacrev, vmap)" if functorch_active() else
                "forward-mode AD (torch.autograd.forward_ad)")
        reason = (f"{what} cannot see through the analytic and fused backends' hand-written "
                  f"backwards")
        if backend != "auto":
            raise ValueError(f"backend={backend!r} cannot run here: {reason}; use "
                             f"backend='reference' (or 'auto', which picks it)")
        _fall_back(reason, "reference")
        return "reference"
    if backend != "auto":
        if backend == "fused":
            reason = fused_unsupported_reason(q0, weights, activation)
            if reason is not None:
                raise ValueError(f"backend='fused' cannot run: {reason}; use backend='analytic' "
                                 f"(same results, plain torch) or backend='auto'")
        return backend
    dev = q0.device.type
    if dev not in _auto_choice:
        _auto_choice[dev] = "fused" if dev == "cuda" and _triton_importable() else "analytic"
        log.info("leapfrog backend='auto' on %s: using %s", dev, _auto_choice[dev])
    choice = _auto_choice[dev]
    if choice == "fused":
        reason = fused_unsupported_reason(q0, weights, activation)
        if reason is not None:
            _fall_back(reason)
            return "analytic"
    return choice


# hgan/kernels/: warnings point past its frames, at the line that called into it
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _fall_back(reason, instead="analytic"):
    """The one-time warning of backend='auto' running analytic instead of fused, attributed
    to the caller's line (leapfrog() or HamiltonianMLP.rollout()), however deep the call
    inside this package was: the contract check, a forward or a backward that cannot launch."""
    if reason not in _warned:
        _warned.add(reason)
        frame, level = sys._getframe(0), 1
        while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            frame, level = frame.f_back, level + 1
        warnings.warn(f"leapfrog backend='auto': {reason}; running the {instead} backend",
                      stacklevel=level)


def leapfrog(q0, p0, weights, biases, *, dt=0.05, frames, activation="softplus",
             backend="auto", scheme="order2", precision="auto"):
    """Leapfrog rollout of the MLP Hamiltonian H(q, p) = MLP([q; p]).

    q0, p0 [B, k]; weights / biases in nn.Linear layout (weights[0] is [n_1, 2k], the last is
    [1, n_L]). Returns q, p [B, frames, k] (frame 0 is the initial state) and dHdq
    [B, frames-1, k], dH/dq at (q_t, p_t), the first half-step's gradient (for L_cyc).
    Differentiable w.r.t. q0, p0 and every weight and bias (double backward: reference only,
    see DERIVATIVE_ORDERS). backend: "auto" | "reference" | "analytic" | "fused"; the fused
    Triton kernels support FUSED_CONTRACT (depth 2, widths 16..128, softplus/tanh, float32).
    scheme: "order2" (default; second order for every H) | "official" (the official HGAN
    code's step, first order unless H is separable); both are Stormer-Verlet for a separable
    H. See SCHEMES in common.py. precision: the fused kernels' dot products, "auto" (default:
    the dispatch table's, fp32 "ieee" in the latency regime and fused.SPLIT_ABOVE_LATENCY
    above it at the measured shapes, fused.SPLIT_SHAPES) | "ieee" (fp32) | "tf32x3" |
    "bf16x3" | "tf32" (see PRECISIONS in common.py); "auto" ignores it where it runs analytic
    (CPU, or outside the fused contract), an explicit reference or analytic refuses any but
    "auto" and "ieee". float32 and float64 compute in their dtype; bf16 and fp16 inputs
    compute in float32 and come back in their dtype.
    """
    if torch.compiler.is_compiling():
        # torch.compile never traces the rollout (why: docs/integrator.md, "torch.compile");
        # disabled lazily: importing torch._dynamo up front would import triton with us.
        return torch._dynamo.disable(_leapfrog)(q0, p0, weights, biases, dt, frames, activation,
                                                backend, scheme, precision)
    return _leapfrog(q0, p0, weights, biases, dt, frames, activation, backend, scheme, precision)


def _leapfrog(q0, p0, weights, biases, dt, frames, activation, backend, scheme, precision):
    device_type = q0.device.type if isinstance(q0, torch.Tensor) else None
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # Autocast is the caller's network's: the rollout runs in the weights' dtype, as
        # autocast runs its fp32 ops, and states a network made in bf16 or fp16 under it
        # are cast up to that dtype (without autocast a dtype mismatch stays an error).
        weights, biases = layer_list(weights, "weights"), layer_list(biases, "biases")
        want = weights[0].dtype if weights and isinstance(weights[0], torch.Tensor) else None
        if want in (torch.float32, torch.float64):
            q0, p0 = (t.to(want) if isinstance(t, torch.Tensor)
                      and t.dtype in (torch.bfloat16, torch.float16) else t for t in (q0, p0))
        with autocast_off(device_type):
            return _leapfrog(q0, p0, weights, biases, dt, frames, activation, backend, scheme,
                             precision)
    if not isinstance(frames, bool) and not (isinstance(frames, torch.Tensor)
                                             and (frames.dim() or frames.dtype == torch.bool)):
        try:                  # numpy and 0-d tensor integers are ints here, as in range()
            frames = operator.index(frames)
        except TypeError:
            pass              # check_inputs names it
    weights, biases = check_inputs(q0, p0, weights, biases, dt, frames, activation, backend,
                                   scheme, precision)
    if q0.dtype in (torch.bfloat16, torch.float16):
        # A network kept in bf16 or fp16: integrating in it misses the 1e-4 contract by far
        # (measured: 1e-2 in bf16 over 6 frames, errors compound along the rollout), so every
        # backend computes in float32 and hands back the inputs' dtype, as torch's own
        # reductions do. Gradients reach the low-precision tensors through the casts.
        low = q0.dtype
        up = [t.float() for t in weights], [t.float() for t in biases]
        out = _leapfrog(q0.float(), p0.float(), *up, dt, frames, activation, backend, scheme,
                        precision)
        return tuple(t.to(low) for t in out)
    chosen = _resolve(backend, q0, weights, activation,
                      forward_ad_tangents(q0, p0, *weights, *biases))
    dt = float(dt)
    if chosen == "reference":
        return leapfrog_reference(q0, p0, weights, biases, dt, frames, activation, scheme)
    if chosen == "analytic":
        return leapfrog_analytic(q0, p0, weights, biases, dt, frames, activation, scheme)
    from .fused import FusedCannotLaunch, leapfrog_fused  # imports triton: first fused use only
    # A config that does not fit the GPU (shared memory, threads) is found at launch: under
    # auto the analytic backend stands in, forward or backward, with a one-time warning.
    auto = backend == "auto"
    try:
        return leapfrog_fused(q0, p0, weights, biases, dt, frames, activation, scheme,
                              precision, on_fallback=_fall_back if auto else None)
    except FusedCannotLaunch as err:
        if not auto:
            raise ValueError(f"backend='fused' cannot run: {err}; use backend='analytic' "
                             f"(same results, plain torch) or backend='auto'") from err
        _fall_back(str(err))
        return leapfrog_analytic(q0, p0, weights, biases, dt, frames, activation, scheme)
