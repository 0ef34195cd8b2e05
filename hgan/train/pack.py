"""Several training runs in one process, each in a thread with a CUDA stream of its own.

    python -m hgan.train.pack -- <train.py flags of run 1> -- <train.py flags of run 2> ...

Why: one batch-16 run fills a few of an H200's 132 SMs (the latency integrator 16 of them),
and separate processes without MPS take turns on the GPU: their kernels never overlap
(docs/experiments.md). Threads of one process share one CUDA context, so each run's kernels
(its captured graphs, replayed on its own stream) can run beside the others'. A captured
iteration is one short burst of host work (two graph replays and the batch), so the GIL is
not the limit at the grid's 15 runs.

Each run computes what it would alone (tests/test_train_pack.py compares the weights):
- setup (`hgan.train.run.prepare`), CUDA-graph warm-up and capture run one thread at a time,
  under one lock (hgan.train.capture.CAPTURE_LOCK): weights are initialised from the global
  RNG, whose CUDA generator a capture in another thread puts in capture mode (its offsets
  would then advance the graph's count, not the draws'); entering `torch.cuda.graph`
  synchronises the device and empties the allocator's cache. After setup every random draw
  uses the run's own generators, and replays need no lock;
- everything a run does on CUDA, setup included, is on its own stream, so the caching
  allocator never hands one run's freed block to another stream's pending work;
- nothing after setup draws from the global RNG (the torch loader seeds its workers from a
  generator of its own), and the torch loader's workers are spawned, not forked from this
  multi-threaded process (hgan.data.loader.WORKER_START_METHOD);
- SIGINT/SIGTERM reach the main thread only: one stop flag is shared, and every run saves a
  checkpoint after its current iteration and ends, as `train.py` does.

Each run's exit code is `train.py`'s; the process's is the first non-zero one (0 if none).
Output: each run's lines, prefixed with its index. With `--tagged` (the grid's runner) every
piece of a run's output, tqdm's carriage-return updates included, is one line
"\\x1e<index><n|r><text>" (n: the piece ended in a newline, r: in a carriage return), and a
run's exit is "\\x1e<index>x<code>"; the runner writes them to each run's log.
Not packed: --compile (dynamo compiles one thread at a time at best) and --profile (one
profiler per process); torchrun (DDP has one run per process by design).
"""
import os
import re
import sys
import threading
from contextlib import nullcontext

import torch

TAG = "\x1e"
_PIECE = re.compile(r"([^\r\n]*)([\r\n])")


class _Router:
    """sys.stdout/sys.stderr for the packed process: writes go to the run of the writing thread."""

    def __init__(self, out, tagged):
        self.out, self.tagged = out, tagged
        self.lock = threading.Lock()
        self.index = {}   # thread id -> run index
        self.pending = {}

    def register(self, i):
        self.index[threading.get_ident()] = i
        self.pending[i] = ""

    def write(self, text):
        i = self.index.get(threading.get_ident())
        with self.lock:
            if i is None:  # the main thread, or a thread a run did not start itself
                self.out.write(text)
            else:
                rest, end = self.pending[i] + text, 0
                for m in _PIECE.finditer(rest):
                    self._emit(i, m.group(1), m.group(2))
                    end = m.end()
                self.pending[i] = rest[end:]
            self.out.flush()
        return len(text)

    def _emit(self, i, text, ending):
        if self.tagged:
            self.out.write(f"{TAG}{i}{'n' if ending == chr(10) else 'r'}{text}\n")
        elif ending == "\n":  # progress-bar updates would interleave unreadably: dropped
            self.out.write(f"[{i}] {text}\n")

    def finish(self, i, code):
        with self.lock:
            if self.pending.get(i):
                self._emit(i, self.pending[i], "\n")
            self.pending[i] = ""
            self.out.write(f"{TAG}{i}x{code}\n" if self.tagged else f"[{i}] exit code {code}\n")
            self.out.flush()

    def flush(self):
        with self.lock:
            self.out.flush()

    def isatty(self):
        return False

    def fileno(self):
        return self.out.fileno()

    @property
    def encoding(self):
        return getattr(self.out, "encoding", "utf-8")


class SharedStop:
    """The main thread's stop flag (hgan.train.run._StopFlag), shared by every packed run."""

    def __init__(self, flag):
        self.flag = flag

    @property
    def signum(self):
        return self.flag.signum


def split_runs(argv):
    """['--', a..., '--', b...] -> [[a...], [b...]]; ValueError when no run is given."""
    runs, cur = [], None
    for arg in argv:
        if arg == "--":
            cur = []
            runs.append(cur)
        elif cur is None:
            raise ValueError(f"expected '--' before the first run's flags, got {arg!r}")
        else:
            cur.append(arg)
    runs = [r for r in runs if r]
    if not runs:
        raise ValueError("no runs given: python -m hgan.train.pack -- <train.py flags> [-- ...]")
    return runs


def _refusal(cfg):
    if cfg.compile:
        return "--compile cannot run in a packed process (torch.compile is not thread-safe); " \
               "train it alone"
    if cfg.profile:
        return "--profile cannot run in a packed process (one profiler per process); train it alone"
    return None


def _train_one(i, argv, stop, router, codes):
    """One packed run, in its thread: train.py's phases and exit codes."""
    from hgan.data import GenerationInterrupted
    from hgan.train.checkpoint import CheckpointError
    from hgan.train.capture import CAPTURE_LOCK
    from hgan.train.config import parse_command_line
    from hgan.train.dist import DistInfo
    from hgan.train.loop import NonFiniteLoss, resolve_device
    from hgan.train.run import prepare, run
    router.register(i)
    code = 0
    try:
        try:
            cfg, resume, given = parse_command_line(argv)
            reason = _refusal(cfg)
            if reason:
                raise ValueError(reason)
            device = resolve_device(cfg.device, DistInfo())
        except SystemExit as e:  # argparse's one-line error, already printed
            code = e.code if isinstance(e.code, int) else 2
            return
        except ValueError as e:
            print(f"train.py: error: {str(e).strip()}".replace("\n", " "), file=sys.stderr)
            code = 2
            return
        with torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else nullcontext():
            try:
                with CAPTURE_LOCK:
                    setup = prepare(cfg, resume=resume, given=given)
            except (ValueError, FileNotFoundError, CheckpointError) as e:
                print(f"train.py: error: {str(e).strip()}".replace("\n", " "), file=sys.stderr)
                code = 2
                return
            except GenerationInterrupted as e:
                print(f"train.py: generation of {cfg.data_path} was interrupted", file=sys.stderr)
                code = 128 + e.signum
                return
            try:
                run(setup, stop=stop)
            except NonFiniteLoss as e:
                print(f"[hgan] error: {e}", file=sys.stderr)
                code = 1
    except BaseException:  # a bug: its traceback goes to this run's log, the others go on
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        codes[i] = code
        router.finish(i, code)


def main(argv=None) -> int:
    from tqdm import tqdm

    from hgan.train.run import _StopFlag
    argv = list(sys.argv[1:] if argv is None else argv)
    tagged = "--tagged" in argv[:1]
    if tagged:
        argv = argv[1:]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("hgan.train.pack: error: not under torchrun (DDP runs one run per process)",
              file=sys.stderr)
        return 2
    try:
        runs = split_runs(argv)
    except ValueError as e:
        print(f"hgan.train.pack: error: {e}", file=sys.stderr)
        return 2
    # tqdm's monitor thread would refresh bars from a thread no run owns.
    tqdm.monitor_interval = 0
    from hgan.data import loader
    loader.WORKER_START_METHOD = "spawn"
    router = _Router(sys.stdout, tagged)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = router
    codes = {}
    try:
        with _StopFlag() as flag:
            stop = SharedStop(flag)
            threads = [threading.Thread(target=_train_one, args=(i, a, stop, router, codes),
                                        name=f"run-{i}", daemon=True)
                       for i, a in enumerate(runs)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():  # short joins: the main thread must stay free for signals
                    t.join(timeout=0.25)
    finally:
        sys.stdout, sys.stderr = saved
    bad = [codes.get(i, 1) for i in range(len(runs)) if codes.get(i, 1) != 0]
    return bad[0] if bad else 0


if __name__ == "__main__":
    sys.exit(main())
