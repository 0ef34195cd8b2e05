"""Several training runs in one process, each in a thread with a CUDA stream of its own.

    python -m hgan.train.pack -- <train.py flags of run 1> -- <train.py flags of run 2> ...

Why: one batch-16 run fills a few of an H200's 132 SMs (the latency integrator 16 of them),
and separate processes without MPS take turns on the GPU: their kernels never overlap
(docs/experiments.md). Threads of one process share one CUDA context, so each run's kernels
(its captured graphs, replayed on its own stream) can run beside the others'. A captured
iteration is one short burst of host work (two graph replays and the batch), so the GIL is
not the limit at the grid's 15 runs.

Each run computes what it would alone (tests/test_train_pack.py compares the weights):
- setup (`hgan.train.run.prepare`), the first iterations (CUDA-graph warm-up and capture,
  kernels loaded or compiled for the first time, the first samples), and the graphs'
  destruction run one thread at a time, under one lock (hgan.train.capture.CAPTURE_LOCK):
  weights are initialised from the global RNG; entering `torch.cuda.graph` synchronises the
  device and empties the allocator's cache; on torch 2.11 a capture puts the default CUDA
  generator in capture mode for the whole process. Replays need no lock;
- a run past its first iterations waits (StartGate) until every run is, so that all train
  together from then on: set up while others trained, runs started 20-40 s apart, and 7 of a
  grid's 15 had started after 180 s (an H200, 2026-12-04);
- nothing after setup draws from the global RNG (a test checks; the torch loader seeds its
  workers from a generator of its own), and the torch loader's workers are spawned, not
  forked from this multi-threaded process (hgan.data.loader.WORKER_START_METHOD);
- everything a run does on CUDA, setup included, is on its own stream, which it also
  captures on, so the caching allocator never hands one run's freed block to another
  stream's pending work. torch's stream pool has 32 streams per device, handed out round
  robin, hence at most MAX_RUNS runs per process;
- missing datasets (resumed runs' too) are generated first, in the main thread (where
  Ctrl-C can stop it);
- SIGINT/SIGTERM reach the main thread only: one stop flag is shared, and every run saves a
  checkpoint after its current iteration and ends, as `train.py` does; a run not yet set up
  then does not start (exit 128 + signal); a second Ctrl-C aborts them all at once, without
  those checkpoints (one line, exit 130). Before the threads start (reading resumed
  checkpoints, generating data) a signal ends the process in one line, exit 128 + signal,
  with nothing of the runs written. A failed capture stops every run the same way:
  on torch < 2.13 it leaves this process's CUDA generators and allocator in capture mode.
  A CUDA fault (an illegal address, a device assert) is sticky for the whole context: it
  ends every run of the process.

Each run's exit code is `train.py`'s, or PEER_FAILED_CODE (75) for a run that another run's
failed capture stopped (checkpoint saved, resumable) or kept from starting; the process's is
the first non-zero one other than 75, else 75, else 0.
Output: each run's lines, prefixed with its index. With `--tagged` (the grid's runner) every
piece of a run's output, tqdm's carriage-return updates included, is one line
"\\x1e<index><n|r><text>" (n: the piece ended in a newline, r: in a carriage return), and a
run's exit is "\\x1e<index>x<code>"; the runner writes them to each run's log. Lines from
threads no run owns (TensorBoard's writer, the main thread) are untagged: the runner copies
them to every run's log. One-time warnings (Python's, the integrator's fallback) are issued once
per process, by whichever run gets there first: they are written untagged, naming that run, so
that every run's log shows them.
Not packed: --compile (dynamo compiles one thread at a time at best), also when a resumed
checkpoint has it, and --profile (one profiler per process); torchrun (DDP has one run per
process by design).
"""
import os
import re
import signal
import sys
import threading
import time
import warnings
from contextlib import ExitStack, nullcontext

import torch

from hgan import _startup

TAG = "\x1e"
# The exit code (EX_TEMPFAIL) and summary.json's "stopped" of a run that another run's failed
# capture stopped: it saved a checkpoint but did not finish, and resumes like any other.
PEER_FAILED_CODE = 75
PEER_FAILED = "another packed run's capture failed"
# torch's pool holds 32 streams per device; leave half for anything else that takes one.
MAX_RUNS = 16
_PIECE = re.compile(r"([^\r\n]*)([\r\n])")
# Set when a second Ctrl-C abandoned the runs' threads mid-iteration (see entry).
ABANDONED = False
# Datasets this process generated before the runs started: {train.h5 path: (gen_train,
# gen_test, gen_frames)} (see _train_one).
_GENERATED = {}


class _Router:
    """sys.stdout/sys.stderr for the packed process: writes go to the run of the writing thread."""

    def __init__(self, out, tagged):
        self.out, self.tagged = out, tagged
        self.lock = threading.Lock()
        self.index = {}   # thread id -> run index
        self.pending = {None: ""}

    def register(self, i):
        with self.lock:
            self.index[threading.get_ident()] = i
            self.pending[i] = ""

    def write(self, text):
        with self.lock:
            i = self.index.get(threading.get_ident())
            rest, end = self.pending[i] + text, 0
            if i is None:  # a thread no run owns: whole lines, so that no tag lands mid-line
                end = rest.rfind("\n") + 1
                self.out.write(rest[:end])
            else:
                for m in _PIECE.finditer(rest):
                    self._emit(i, m.group(1), m.group(2))
                    end = m.end()
            self.pending[i] = rest[end:]
            self.out.flush()
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def _emit(self, i, text, ending):
        if self.tagged:
            self.out.write(f"{TAG}{i}{'n' if ending == chr(10) else 'r'}{text}\n")
        elif ending == "\n":  # progress-bar updates would interleave unreadably: dropped
            self.out.write(f"[{i}] {text}\n")

    def finish(self, i, code):
        """The run's last words: what it left unterminated, then its exit code."""
        with self.lock:
            if self.pending.get(i):
                self._emit(i, self.pending[i], "\n")
            self.pending.pop(i, None)
            self.index = {t: j for t, j in self.index.items() if j != i}
            self.out.write(f"{TAG}{i}x{code}\n" if self.tagged else f"[{i}] exit code {code}\n")
            self.out.flush()

    def flush(self):
        with self.lock:
            self.out.flush()

    def broadcast(self, text):
        """Whole lines for every run's log (untagged), e.g. a one-time warning."""
        with self.lock:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()

    def run_index(self):
        """The calling thread's run, or None."""
        with self.lock:
            return self.index.get(threading.get_ident())

    def close_pending(self):
        """At the end: an unterminated line of no run, terminated."""
        with self.lock:
            if self.pending[None]:
                self.out.write(self.pending[None] + "\n")
                self.pending[None] = ""
            self.out.flush()

    def isatty(self):
        return False

    def fileno(self):
        return self.out.fileno()

    @property
    def encoding(self):
        return getattr(self.out, "encoding", "utf-8")


class StartGate:
    """Where packed runs wait, past their first iterations, until all of them are (or have
    ended): see hgan.train.run._FirstSteps. Each thread arrives once; a run that ends early
    (a bad flag, a failed setup, a signal) arrives on its way out, so nobody waits for it."""

    def __init__(self, n_runs):
        self.n_runs = n_runs
        self.arrived = set()
        self.cond = threading.Condition()

    def arrive(self):
        with self.cond:
            self.arrived.add(threading.get_ident())
            self.cond.notify_all()

    def wait(self, stop=None, poll_s=0.25):
        """Block until every run has arrived or `stop` has a signal; the seconds waited."""
        t0 = time.monotonic()
        with self.cond:
            while len(self.arrived) < self.n_runs:
                if stop is not None and stop.signum is not None:
                    break
                self.cond.wait(poll_s)  # short: a signal sets the stop flag without notifying
        return time.monotonic() - t0


class SharedStop:
    """The main thread's stop flag (hgan.train.run._StopFlag), shared by every packed run; a
    failed capture in any run (hgan.train.capture.CAPTURE_FAILED, set under the capture lock)
    reads as SIGTERM, so no other run sets up, warms up or captures after it. `reason` tells
    the two apart (summary.json's "stopped")."""

    def __init__(self, flag):
        self.flag = flag

    @property
    def signum(self):
        if self.flag.signum is not None:
            return self.flag.signum
        return signal.SIGTERM if self.peer_failed else None

    @property
    def peer_failed(self):
        """Stopped by another run's failed capture, not by a signal."""
        from hgan.train.capture import CAPTURE_FAILED
        return self.flag.signum is None and CAPTURE_FAILED.is_set()

    @property
    def reason(self):
        return PEER_FAILED if self.peer_failed else None


def _warning_printer(router):
    """warnings.showwarning for the packed process: a warning is shown once per process (per
    call site), so it goes to every run's log, with the run that raised it named."""
    def show(message, category, filename, lineno, file=None, line=None):
        i = router.run_index()
        who = f"[pack] run {i}: " if i is not None else "[pack] "
        router.broadcast(who + warnings.formatwarning(message, category, filename, lineno,
                                                      line).rstrip("\n"))
    return show


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
    if len(runs) > MAX_RUNS:
        raise ValueError(f"{len(runs)} runs given; at most {MAX_RUNS} per process (each needs "
                         f"a CUDA stream of its own from torch's pool of 32)")
    return runs


def refuse(cfg):
    """ValueError for a config that cannot train in a thread (checked after a resume's
    config is read from its checkpoint)."""
    if cfg.compile:
        raise ValueError("--compile cannot run in a packed process (torch.compile is not "
                         "thread-safe); train it alone")
    if cfg.profile:
        raise ValueError("--profile cannot run in a packed process (one profiler per "
                         "process); train it alone")


def _train_one(i, argv, stop, router, codes):
    """One packed run, in its thread: train.py's phases and exit codes."""
    from hgan.data import GenerationInterrupted
    from hgan.data.h5io import DataFormatError
    from hgan.train.capture import CAPTURE_LOCK, CaptureFailed
    from hgan.train.checkpoint import CheckpointError
    from hgan.train.cli import bad_input
    from hgan.train.config import parse_command_line
    from hgan.train.dist import DistInfo
    from hgan.train.loop import NonFiniteLoss, resolve_device
    from hgan.train.run import prepare, run
    router.register(i)
    code, setup = 0, None
    try:
        try:
            cfg, resume, given = parse_command_line(argv)
            resolve_device(cfg.device, DistInfo())  # a missing device, before waiting to start
        except SystemExit as e:  # argparse's one-line error, already printed
            code = e.code if isinstance(e.code, int) else 2
            return
        except ValueError as e:
            code = bad_input(e)
            return
        made = _GENERATED.get(os.path.abspath(cfg.data_path))
        if not resume and made == (cfg.gen_train, cfg.gen_test, cfg.gen_frames):
            # its --gen-* flags made the dataset (alone, the run itself would have): not
            # "exists: ... not used"
            given = {k: v for k, v in given.items() if k not in ("gen_train", "gen_test",
                                                                  "gen_frames")}
        own_stream = ExitStack()

        def check(cfg):
            # `prepare` calls it with the config that trains (a resumed run's device is its
            # checkpoint's), before any CUDA work
            refuse(cfg)
            own_stream.enter_context(run_stream(cfg))
        with own_stream:
            with CAPTURE_LOCK:
                if stop.signum is not None:  # stopped while waiting for its turn
                    if stop.peer_failed:
                        print(f"[hgan] {PEER_FAILED} before this run was set up: not started",
                              flush=True)
                        code = PEER_FAILED_CODE
                    else:
                        print(f"[hgan] {signal.Signals(stop.signum).name} before this run was "
                              f"set up: not started", flush=True)
                        code = 128 + stop.signum
                    return
                try:
                    setup = prepare(cfg, resume=resume, given=given, check=check)
                except (ValueError, FileNotFoundError, CheckpointError) as e:
                    code = bad_input(e)
                    return
                except GenerationInterrupted as e:
                    code = 128 + e.signum
                    return
            try:
                if run(setup, stop=stop)["stopped"] == PEER_FAILED:
                    code = PEER_FAILED_CODE
            except NonFiniteLoss as e:
                print(f"[hgan] error: {e}", file=sys.stderr)
                code = 1
            except DataFormatError as e:  # a damaged chunk met in training; checkpoint kept
                code = bad_input(e)
            except CaptureFailed as e:  # the others stop too: see SharedStop
                print(f"[hgan] error: {e}; stopping every run of this process (its CUDA state "
                      f"may be unusable after a failed capture)", file=sys.stderr)
                code = 1
    except BaseException:  # a bug: its traceback goes to this run's log, the others go on
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        from hgan.train import capture as hcapture
        if hcapture.START_GATE is not None:
            hcapture.START_GATE.arrive()  # never waited for, whatever ended this run
        try:
            trainer = getattr(setup, "trainer", None)
            if trainer is not None and trainer.static is not None:
                with CAPTURE_LOCK:  # destroying a graph must not overlap another run's capture
                    trainer.static.release()
        finally:
            codes[i] = code
            router.finish(i, code)


def run_stream(cfg):
    """A run's own CUDA stream, on the device `cfg` trains on (a context; none on the CPU)."""
    from hgan.train.dist import DistInfo
    from hgan.train.loop import resolve_device
    device = resolve_device(cfg.device, DistInfo())
    return torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else nullcontext()


def _parse_quietly(argv):
    """parse_command_line without argparse's message (a run reports its own bad flags)."""
    from hgan.train.config import parse_command_line
    with open(os.devnull, "w") as null:
        saved, sys.stderr = sys.stderr, null
        try:
            return parse_command_line(argv)
        finally:
            sys.stderr = saved


def distinct_run_dirs(runs):
    """The runs' flags, each with a run directory of its own: ValueError when two name the same
    one (--out or --resume: they would write one directory's checkpoints and config in turn);
    a run left to the default --out (runs/<system>-<model>-<time>, the same for two such runs
    started in one second) gets a numbered one."""
    seen, out = {}, []
    for i, argv in enumerate(runs):
        try:
            cfg, resume, given = _parse_quietly(argv)
        except (SystemExit, Exception):
            out.append(argv)
            continue
        if "out" in given:  # a new run's, or a resumed run's branch (hgan.train.run)
            where = cfg.out
        elif resume:
            where = resume if os.path.isdir(resume) else os.path.dirname(os.path.dirname(resume))
        else:
            base, n, where = cfg.out, 1, cfg.out
            while os.path.realpath(where) in seen:
                n += 1
                where = f"{base}-{n}"
            argv = [*argv, "--out", where]
        key = os.path.realpath(where)
        if key in seen:
            raise ValueError(f"runs {seen[key]} and {i} both train in {where}: give each its "
                             f"own --out")
        seen[key] = i
        out.append(argv)
    return out


def _generate_missing(runs):
    """Generate the datasets the runs need and lack, here in the main thread (train.py's
    messages; Ctrl-C stops it, keeping nothing). Runs whose flags are bad are left to fail
    in their own thread. Returns an exit code for the whole process, or None."""
    from hgan.data import GenerationInterrupted
    from hgan.train.checkpoint import load_checkpoint
    from hgan.train.dist import DistInfo
    from hgan.train.loop import check_resumed_dataset, ensure_dataset
    from hgan.train.run import resume_config
    done = set()
    _GENERATED.clear()
    for argv in runs:
        try:
            cfg, resume, given = _parse_quietly(argv)
            if resume:  # the data the checkpoint's config names
                path = (os.path.join(resume, "checkpoints", "last.pt") if os.path.isdir(resume)
                        else resume)
                ckpt = load_checkpoint(path)
                cfg = resume_config(ckpt, cfg, path, given)
                if not os.path.exists(cfg.data_path):  # generate only what gives back its data
                    check_resumed_dataset(ckpt.get("dataset"), cfg)
        except (SystemExit, Exception):
            continue
        if cfg.data_path in done or os.path.exists(cfg.data_path):
            continue
        done.add(cfg.data_path)
        try:
            ensure_dataset(cfg, DistInfo())
            _GENERATED[os.path.abspath(cfg.data_path)] = (cfg.gen_train, cfg.gen_test,
                                                          cfg.gen_frames)
        except GenerationInterrupted as e:
            print(f"hgan.train.pack: generation of {cfg.data_path} was interrupted "
                  f"({signal.Signals(e.signum).name}); no partial file or half-made dataset "
                  "was kept", file=sys.stderr)
            return 128 + e.signum
        except (ValueError, OSError):
            continue  # the run reports it
    return None


def main(argv=None) -> int:
    _startup.release("hgan.train.pack")
    from tqdm import tqdm

    from hgan.data import loader
    from hgan.data.interrupt import raise_interrupted
    from hgan.train.run import _StopFlag
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print("\n\n".join(__doc__.split("\n\n")[:2]) + "\n\nEach run's flags are train.py's "
              "(python train.py --help); --tagged before the first '--' tags each output line "
              "with its run (for hgan.experiments). More: docs/training.md, 'Several small runs "
              "on one GPU'.")
        return 0
    tagged = "--tagged" in argv[:1]
    if tagged:
        argv = argv[1:]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("hgan.train.pack: error: not under torchrun (DDP runs one run per process)",
              file=sys.stderr)
        return 2
    # Until the stop flag exists, SIGTERM ends start-up as Ctrl-C does: one line, not a
    # traceback or a silent exit (as train.py's setup). One the parent ignores stays ignored.
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    if sigterm == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        try:
            runs = distinct_run_dirs(split_runs(argv))
        except ValueError as e:
            print(f"hgan.train.pack: error: {e}", file=sys.stderr)
            return 2
        code = _generate_missing(runs)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"hgan.train.pack: stopped by {signal.Signals(signum).name} before any run "
              f"started; nothing of the runs was written", file=sys.stderr)
        return 128 + signum
    finally:
        if sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, sigterm)
    if code is not None:
        return code
    # tqdm's monitor thread would refresh bars from a thread no run owns; forked loader
    # workers could inherit locks other threads hold. Process-wide: restored on the way out.
    # The runs share this GPU: under --loader auto each keeps its frames there only within its
    # share (loader.runs_sharing_gpu); a value set by the caller (the grid: all its processes'
    # runs) is kept.
    saved = (sys.stdout, sys.stderr, tqdm.monitor_interval, loader.WORKER_START_METHOD,
             warnings.showwarning, os.environ.get(loader.GPU_RUNS_ENV))
    tqdm.monitor_interval, loader.WORKER_START_METHOD = 0, "spawn"
    os.environ.setdefault(loader.GPU_RUNS_ENV, str(len(runs)))
    router = _Router(sys.stdout, tagged)
    sys.stdout = sys.stderr = router
    warnings.showwarning = _warning_printer(router)
    from hgan.train import capture as hcapture
    codes, aborted = {}, False
    hcapture.START_GATE = StartGate(len(runs))
    try:
        with _StopFlag() as flag:
            stop = SharedStop(flag)
            threads = [threading.Thread(target=_train_one, args=(i, a, stop, router, codes),
                                        name=f"run-{i}", daemon=True)
                       for i, a in enumerate(runs)]
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():  # short joins: the main thread must stay free for signals
                        t.join(timeout=0.25)
            except KeyboardInterrupt:  # a second Ctrl-C (hgan.train.run._StopFlag): abort now
                aborted = True
    finally:
        hcapture.START_GATE = None
        router.close_pending()
        (sys.stdout, sys.stderr, tqdm.monitor_interval, loader.WORKER_START_METHOD,
         warnings.showwarning, gpu_runs) = saved
        if gpu_runs is None:
            os.environ.pop(loader.GPU_RUNS_ENV, None)
        else:
            os.environ[loader.GPU_RUNS_ENV] = gpu_runs
    if aborted:
        global ABANDONED
        ABANDONED = True
        print("hgan.train.pack: aborted by a second Ctrl-C; each run keeps its last checkpoint, "
              "if one was written (resume it with --resume <its run directory>)",
              file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    return process_code(codes, len(runs))


def process_code(codes, n_runs):
    """The packed process's exit code from its runs' ({index: code}; a run missing crashed):
    the first non-zero one other than PEER_FAILED_CODE (the cause before its consequences:
    a failed capture's 1 before the others' 75), else 75, else 0."""
    bad = [codes.get(i, 1) for i in range(n_runs) if codes.get(i, 1) != 0]
    cause = [c for c in bad if c != PEER_FAILED_CODE]
    return (cause or bad or [0])[0]


def entry(argv=None) -> int:
    """The process's exit: main's code; after an abort, without the interpreter's
    finalization, which the runs' threads, still in torch's C++ code, would end in
    "terminate called without an active exception" (SIGABRT)."""
    global ABANDONED
    ABANDONED = False  # an earlier pack of this process (tests) abandoned its own runs
    code = main(argv)
    if ABANDONED:
        from hgan.train.checkpoint import WRITING
        for tmp in list(WRITING):  # a checkpoint a run was writing: never renamed, half written
            try:
                os.remove(tmp)
            except OSError:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(entry())
