"""The training step as two CUDA graphs (the D update, the G update), replayed every iteration.

Measured on an H200 before this module (batch 16, 32 px): the eager step spends ~6 ms of
device time in ~25 ms of wall time; the rest is Python and kernel launches. A replay launches
each update's few hundred kernels with one call.

`torch.cuda.CUDAGraph` is captured by hand rather than through
`torch.compile(mode="reduce-overhead")`: the step calls the fused leapfrog integrator, which
breaks any compiled graph around itself (hgan.kernels.leapfrog.dispatch), and the R1 and
eager parts would split the step into several cudagraph-tree segments with their own
input copies; a manual capture records the whole update (forward, backward, Adam) whatever
runs inside, compiled modules included (`--compile` is measured with capture on).

How the step is made capturable (`StaticStep`):
- The real batch is copied into a static buffer; the graphs read it from there.
- The noise (frame and clip positions, content and motion noise) is drawn on the device from
  the trainer's `torch.Generator`, registered with both graphs
  (`CUDAGraph.register_generator_state`): each replay advances its Philox offset as the eager
  step would, so replays draw fresh noise, the same noise as the eager step from the same
  state, and a checkpoint of the generator state resumes the stream.
- Adam runs with capturable=True: its step counters live on the device.
- Non-finite losses are recorded on the device (the first bad iteration, which loss, its
  value) and read at the next log, sample or checkpoint boundary (`flush_checks`): no host
  read in the steady state.
- The update's statistics (losses, accuracies, gradient norms) are always computed: a graph
  cannot take a Python branch per step, and a norm is a few kernels inside a replay.
The first WARMUP_STEPS iterations run the same code uncaptured, on a side stream (lazy
initialisation: Adam's state, cuBLAS workspaces, Triton and inductor compilation); they are
ordinary training steps, so a captured run follows the eager run step for step.

The same `StaticStep` without capture (capture=False) is what CPU tests compare to the eager
step. `fallback_reason` says which configurations stay eager.
"""
import threading

import torch

from hgan.train.profiling import stage

# Warm-up and capture, one thread at a time (several runs in one process: hgan.train.pack,
# which also holds it for each run's setup and while its graphs are destroyed). Entering
# torch.cuda.graph synchronises the device and empties the allocator's cache, which would
# break a capture under way in another thread; on torch 2.11 a capture also puts the default
# CUDA generator in capture mode for the whole process (a draw from it in another thread
# raises) and registers in, and a destroyed graph unregisters from, one shared set. Replays
# need no lock.
CAPTURE_LOCK = threading.RLock()  # also held around a run's first iterations (hgan.train.run)
# Set by hgan.train.pack (a StartGate) while its runs train: a run that has passed its first
# iterations waits there until every run of the pack has (or has ended), so that no run's
# warm-up and capture compete with the others' replays for the GPU and the GIL.
START_GATE = None
# Uncaptured iterations before the capture (PyTorch's whole-network capture example uses 3).
WARMUP_STEPS = 3
# Adam's fused (single-kernel) implementation inside the captured step, as measured by
# bench/gpu/trainstep.sh (capture_fused_adam): +6.9% videos/s over the foreach one at 32 px
# (an H200, commit fcd82da: 4111 against 3845).
ADAM_FUSED = True

# Reasons already reported, per thread: once per run, also when several runs share a process.
_reported = threading.local()


class CaptureFailed(RuntimeError):
    """Capturing the step failed; this process's CUDA state may be unusable (see _capture)."""


# Set, under CAPTURE_LOCK, when a capture in this process failed: hgan.train.pack's other runs
# read it as a stop signal before they set up or step (the lock's next holder sees it).
CAPTURE_FAILED = threading.Event()


def fallback_reason(cfg, device, *, distributed=False, grad_scaler=False):
    """Why this configuration runs the eager step instead of CUDA graphs, or None."""
    if not cfg.cuda_graph:
        return "--no-cuda-graph"
    if torch.device(device).type != "cuda":
        return f"CUDA graphs need a CUDA device (running on {torch.device(device).type})"
    if distributed:
        return ("DDP: this trainer does not capture DistributedDataParallel's gradient "
                "all-reduce (NCCL inside a CUDA graph needs DDP's static-graph mode, not set up "
                "or measured here)")
    if cfg.r1_gamma > 0:
        return ("--r1-gamma > 0: the R1 penalty's double backward runs outside compiled "
                "code and is not captured")
    if grad_scaler:
        return "fp16 autocast: the GradScaler reads its inf check on the host every step"
    if cfg.profile:
        return "--profile: a graph replay does not run the per-stage ranges the trace needs"
    if _allocator_backend() == "cudaMallocAsync":
        return ("PYTORCH_CUDA_ALLOC_CONF backend:cudaMallocAsync: the D and G graphs share one "
                "memory pool (G's backward reads what D's graph saved), which is built on the "
                "native caching allocator's graph pools")
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return (f"torch {torch.__version__} has no CUDAGraph.register_generator_state: the "
                f"noise could not be drawn inside the graph")
    return None


def _allocator_backend():
    try:
        return torch.cuda.get_allocator_backend()
    except (AttributeError, RuntimeError):  # a CPU build of torch has no CUDA allocator
        return "native"


def report_fallback(reason, main=True):
    """One line, once per run (thread) and reason."""
    seen = _reported.__dict__.setdefault("reasons", set())
    if main and reason not in seen:
        seen.add(reason)
        print(f"[hgan] eager training step (no CUDA graphs): {reason}", flush=True)


def set_capturable(optimizer, on: bool, fused=None):
    """Switch an Adam between host step counters (eager) and device ones (capturable), and
    its fused kernel on or off.

    A checkpoint carries the flags of the run that wrote it and load_state_dict restores
    them, so this is applied after every load too."""
    for group in optimizer.param_groups:
        group["capturable"] = on
        group["fused"] = fused
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:
                st["step"] = st["step"].to(p.device if on else "cpu", torch.float32)


class NonFiniteRecord:
    """The first non-finite loss, recorded on the device: iteration, which loss, value."""

    NAMES = ("discriminator loss", "generator loss")

    def __init__(self, device, iteration):
        self.iteration = torch.full((), iteration, dtype=torch.int64, device=device)
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.which = torch.zeros((), dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)

    def next_iteration(self):
        self.iteration.add_(1)

    def __call__(self, name, loss):
        new = (self.first < 0) & ~torch.isfinite(loss.detach())
        self.first.copy_(torch.where(new, self.iteration, self.first))
        self.which.copy_(torch.where(new, self.NAMES.index(name), self.which))
        self.value.copy_(torch.where(new, loss.detach().float(), self.value))

    def read(self):
        """(iteration, name, value) of the first non-finite loss, or None: one host sync."""
        first, which, value = torch.stack([self.first.double(), self.which.double(),
                                           self.value.double()]).tolist()
        if first < 0:
            return None
        return int(first), self.NAMES[int(which)], value


class StaticStep:
    """The trainer's step on static buffers; captured into two CUDA graphs when capture=True.

    Call it like `Trainer.step`; it returns the update's metrics (device tensors, the graphs'
    static outputs under capture: read them before the next step)."""

    def __init__(self, trainer, capture: bool):
        self.trainer, self.capture = trainer, capture
        self.real = None
        self.checks = NonFiniteRecord(trainer.device, trainer.iteration)
        self.graphs = None
        self.out = None
        self._keep = None
        self.warmup_left = WARMUP_STEPS if capture else 0
        # A side stream to capture on; a run already on a stream of its own (hgan.train.pack)
        # captures on that one: torch hands out streams from a pool of 32 per device, round
        # robin, and two runs on one stream would capture each other's work.
        self.stream = None
        if capture:
            current = torch.cuda.current_stream(trainer.device)
            self.stream = (torch.cuda.Stream(trainer.device)
                           if current == torch.cuda.default_stream(trainer.device) else current)

    def _load(self, real):
        if self.real is None:
            self.trainer.check_batch(real)
            self.real = torch.empty_like(real)       # same strides (channels-last batches)
        elif real.shape != self.real.shape:
            raise ValueError(f"a captured training step takes batches of one shape: got "
                             f"{tuple(real.shape)} after {tuple(self.real.shape)}")
        self.real.copy_(real, non_blocking=True)

    def _d(self):
        self.checks.next_iteration()
        return self.trainer._d_update(self.real, True, self.checks)

    def _g(self, d):
        return self.trainer._g_update(d, True, self.checks)

    def __call__(self, real, want_stats=False):
        self._load(real)
        if self.graphs is not None:
            with stage("replay"):
                self.graphs[0].replay()
                self.graphs[1].replay()
            return dict(self.out)
        if not self.capture:
            return self._g(self._d())
        with CAPTURE_LOCK:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                self.stream.wait_stream(torch.cuda.current_stream(self.trainer.device))
                with torch.cuda.stream(self.stream):
                    out = self._g(self._d())
                torch.cuda.current_stream(self.trainer.device).wait_stream(self.stream)
                return out
            self._capture()
        return self(real)

    def _capture(self):
        # Under the run's device: registering the generator allocates its graph-safe seed and
        # offset on the *current* device, which for a run on cuda:1 is still cuda:0.
        with torch.cuda.device(self.trainer.device):
            self._capture_on_device()

    def _capture_on_device(self):
        t = self.trainer
        graphs = (torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph())
        for g in graphs:
            g.register_generator_state(t.noise)
        # thread_local: the torch loader's pin-memory thread keeps calling CUDA (pinned
        # allocations) while this thread captures; "global" would abort the capture for it.
        mode = "thread_local"
        try:
            # One memory pool: the G graph's backward reads what the D graph's G forward saved.
            with torch.cuda.graph(graphs[0], stream=self.stream, capture_error_mode=mode):
                d = self._d()
            with torch.cuda.graph(graphs[1], pool=graphs[0].pool(), stream=self.stream,
                                  capture_error_mode=mode):
                out = self._g(d)
        except RuntimeError as err:
            CAPTURE_FAILED.set()
            # No eager fallback here: torch < 2.13 leaves the CUDA generators in capture
            # mode after a failed capture, and every later random draw in this process fails.
            raise CaptureFailed(f"capturing the training step into CUDA graphs failed ({err}); "
                                f"train with --no-cuda-graph, in a new process") from err
        self._keep = d                               # tensors the G graph reads
        self.graphs, self.out = graphs, out

    def flush_checks(self):
        return self.checks.read()

    def release(self):
        """Destroy the graphs now (hgan.train.pack calls this under CAPTURE_LOCK)."""
        self.graphs = self.out = self._keep = None
