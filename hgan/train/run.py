"""`train(cfg)`: run directory, dataset, loader, progress, TensorBoard, samples, signals, resume."""
import json
import os
import signal
import time
from dataclasses import dataclass, fields, replace

import torch
from tqdm.auto import tqdm

from hgan.data.h5io import DataFormatError, error_line
from hgan.data.loader import build_loader
from hgan.data.stream import TooFewWindows
from hgan.model_kinds import model_kind
from hgan.models import ModelConfig
from hgan.train import capture as hcapture
from hgan.train import dist as hdist
from hgan.train import rundir
from hgan.train.checkpoint import load_checkpoint
from hgan.train.config import RunConfig, check_flags_apply, resumable_fields
from hgan.train.loop import (TRAINING_STATE, NonFiniteLoss, Trainer, amp_policy,
                             check_data_root, check_resumed_dataset, dataset_identity,
                             ensure_dataset, local_batch, resolve_device)
from hgan.train.media import save_samples, strip
from hgan.train.profiling import stage, step_profiler

# Iterations between the ranks' checks for a stop signal under torchrun.
STOP_POLL_EVERY = 10
# Flags that may change when a run is resumed; everything else comes from the checkpoint.
RESUMABLE_OVERRIDES = resumable_fields()
_MODEL_FIELDS = {f.name for f in fields(ModelConfig)}


def resume_config(ckpt: dict, cli: RunConfig, ckpt_path: str,
                  given: dict | None = None) -> RunConfig:
    """The checkpoint's config, with the resumable flags of `given` applied.

    given: the flags given on the command line ({field: value}); a flag that is not resumable
    must repeat the checkpoint's value (ValueError otherwise: it would be ignored). None (the
    Python API, whose `cli` is a whole RunConfig): every resumable field of `cli`."""
    if not isinstance(ckpt, dict) or not {"config", "iteration"} <= set(ckpt):
        raise ValueError(f"{ckpt_path} is not a training checkpoint (no run config or iteration)")
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise ValueError(f"{ckpt_path} is not a complete training checkpoint (it has no "
                         f"{', '.join(missing)})")
    saved = RunConfig.from_dict(ckpt["config"])
    # The run directory is the one holding checkpoints/<file>.
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path)))
    if given is None:
        given = {name: getattr(cli, name) for name in RESUMABLE_OVERRIDES}
        if cli.data == RunConfig.data:  # the default, not a place given: the run's own data
            del given["data"]
    # Before the comparison below: "cannot change" would suggest the flag could matter.
    check_flags_apply(saved.model.model, given)
    changes = {}
    for name, value in given.items():
        if name in RESUMABLE_OVERRIDES:
            changes[name] = value
            continue
        if name == "out" and not _same_setting(name, value, run_dir, saved):
            _check_new_run_dir(value)  # a branch: the run continued in a directory of its own
            run_dir = value
            continue
        have = run_dir if name == "out" else getattr(
            saved.model if name in _MODEL_FIELDS else saved, name)
        if not _same_setting(name, value, have, saved):
            raise ValueError(f"--{name.replace('_', '-')} cannot change on resume (the run has "
                             f"{have}, got {value})")
    # Profiling is something one invocation asks for, not a property of the run: resuming a
    # profiled run without --profile trains without the profiler.
    changes.setdefault("profile", False)
    return replace(saved, out=run_dir, **changes)


def _check_not_behind(path: str, iteration: int, out: str):
    """Resuming a kept snapshot (iter_N.pt) in its own run would overwrite that run's newer
    last.pt, samples and TensorBoard steps: it continues in a new --out instead (a branch:
    nothing to check), or rewinds the run once its last.pt is deleted (deliberately:
    TensorBoard's later steps go too)."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if os.path.realpath(out) != os.path.realpath(run_dir):
        return
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    if os.path.exists(last) and os.path.samefile(path, last):
        return
    try:
        newest = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["iteration"])
    except Exception:  # noqa: BLE001 - no last.pt, or one that cannot be read: nothing newer is lost
        return
    if newest > iteration:
        raise ValueError(f"{path} is at iteration {iteration}, but its run's last.pt is at "
                         f"{newest}: resuming it there would overwrite the newer checkpoint; "
                         f"continue it in a new directory with --resume {path} --out NEW_DIR "
                         f"(from Python: given={{'out': NEW_DIR}}), or delete {last} to rewind "
                         f"this run")


def _same_setting(name, value, have, saved: RunConfig) -> bool:
    if name in ("out", "data"):
        return os.path.realpath(value) == os.path.realpath(have)
    if name == "clip_frames":  # capped at --frames when the run started
        value = min(value, saved.frames)
    return value == have


def _check_writable(out: str):
    """--out must be a directory this process can make (or has): found here, not as an
    OSError traceback when the first file is written."""
    if os.path.lexists(out) and not os.path.isdir(out):
        what = "a broken symbolic link" if os.path.islink(out) else "a file"
        raise ValueError(f"--out {out} is {what}, not a run directory")
    parent = os.path.abspath(out)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        what = "a broken symbolic link" if os.path.islink(parent) else "a file"
        raise ValueError(f"--out {out}: {parent} is {what}, so the run directory cannot be made")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not writable")


def _check_new_run_dir(out: str):
    ckpts = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpts) and any(f.endswith(".pt") for f in os.listdir(ckpts)):
        raise ValueError(f"--out {out} already holds a run (checkpoints/): continue it with "
                         f"--resume {out}, or choose another --out")
    if os.path.isfile(os.path.join(out, "summary.json")):
        # summary.json is written only after a run's last checkpoint: these are the logs and
        # pictures of a run whose checkpoints were moved or deleted, not a stopped attempt
        # (whose leftovers a new run clears), and they stay.
        raise ValueError(f"--out {out} holds a finished run (summary.json) whose checkpoints "
                         f"are gone: choose another --out, or delete {out}")


def _check_saved_one(resume: str, path: str):
    """--resume RUN of a run killed before its first checkpoint: nothing to resume, but a new
    run may start in RUN (its leftovers cleared, _clear_stopped_attempt), which the plain "no
    checkpoint at" left unsaid."""
    if not os.path.isdir(resume) or os.path.exists(path) or \
            not os.path.isfile(os.path.join(resume, "config.json")):
        return
    try:
        _check_new_run_dir(resume)
    except ValueError:  # a finished run's, or snapshots without last.pt: not a fresh start
        return
    raise FileNotFoundError(f"no checkpoint at {path}: the run in {resume} stopped before it "
                            f"saved one; start it again with --out {resume} and its settings "
                            f"(in {os.path.join(resume, 'config.json')})")


def _clear_stopped_attempt(out: str):
    """A new run in a directory that an earlier attempt left without a checkpoint (allowed:
    nothing of it can be resumed; a finished run's directory is refused in the setup) starts
    clean: that attempt's TensorBoard events and samples would otherwise show as this run's
    (its steps duplicated, its later samples the newest)."""
    leftovers = []
    for sub, keep in (("tb", lambda f: f.startswith("events.out.tfevents.")),
                      ("samples", lambda f: f.startswith("iter_") and f.endswith((".png", ".gif")))):
        folder = os.path.join(out, sub)
        if os.path.isdir(folder):
            leftovers += [os.path.join(folder, f) for f in os.listdir(folder) if keep(f)]
    for path in leftovers:
        os.remove(path)
    if leftovers:
        print(f"[hgan] {out} held an attempt that stopped before its first checkpoint: its "
              f"TensorBoard events and samples were removed", flush=True)


def _unused_precision(m, device) -> str | None:
    """Why --fused-precision changes nothing on this device, or None: --integrator auto runs
    the analytic backend (fp32) off CUDA, so a run moved from a GPU to a CPU keeps its flags
    and says so, instead of a setting silently ignored (the parser refuses the flag only with
    an explicit analytic or reference integrator)."""
    if (model_kind(m.model).hamiltonian and m.integrator == "auto"
            and m.fused_precision not in ("auto", "ieee") and torch.device(device).type != "cuda"):
        return (f"[hgan] --fused-precision {m.fused_precision} sets the fused kernels' dot "
                f"products; on {torch.device(device).type} --integrator auto runs the analytic "
                f"backend in fp32, so it changes nothing in this run")
    return None


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _check_integrator(trainer: Trainer):
    """A fused integrator that cannot run here would fail only at the first rollout."""
    mcfg = trainer.cfg.model
    hamiltonian = getattr(trainer.G.motion_module, "hamiltonian", None)
    if mcfg.integrator != "fused" or hamiltonian is None:
        return
    from hgan.kernels.leapfrog.dispatch import fused_unsupported_reason
    with torch.no_grad():
        weights, _ = hamiltonian.weights_and_biases()
    reason = fused_unsupported_reason(torch.zeros(1, mcfg.k, device=trainer.device), weights,
                                      mcfg.activation)
    if reason is not None:
        raise ValueError(f"--integrator fused cannot run: {reason}; use --integrator auto or "
                         "analytic")


def check_autocast(cfg: RunConfig, given: dict | None = None):
    """ValueError for autocast flags that cannot train on cfg's device (given: the flags of
    a new run's command line). The Trainer's amp_policy refuses them too, but only after a
    missing dataset was generated: `--amp --amp-dtype fp16` on a CPU generated the data,
    then stopped; a grid (hgan.experiments) generated every system's and failed every run."""
    if (given or {}).get("amp_dtype", "auto") != "auto" and not cfg.amp:
        raise ValueError("--amp-dtype chooses autocast's dtype and autocast is off: add --amp")
    if cfg.amp:
        amp_policy(resolve_device(cfg.device, hdist.DistInfo()), True, cfg.amp_dtype, say=False)


def _regenerate(path: str) -> str:
    """How to get the dataset at `path` again with other sizes (an imported file is not
    this package's to delete and regenerate)."""
    from hgan.data.h5io import open_h5
    with open_h5(path) as f:
        made = str(f.attrs.get("generator_version", ""))
    if made.startswith("imported"):
        return f"{path} was imported (hgan.data import-dm): import it again with other sizes"
    return f"delete {path} to generate it again"


@dataclass
class Setup:
    """What `prepare` built; trainer is None when a resumed run has nothing left to do."""
    cfg: RunConfig
    info: hdist.DistInfo = None
    trainer: Trainer = None
    stream: object = None
    checkpoint: str = ""
    iteration: int = 0
    lock: object = None   # hgan.train.rundir.RunDirLock of the rank that writes the run


def prepare(cfg: RunConfig, resume: str = "", given: dict | None = None, check=None) -> Setup:
    """The setup phase of `train`: every check of the input, before anything of the run is
    written. Its last step makes the run directory and claims it (hgan.train.rundir; a default
    --out already taken is numbered), and removes it again if it made it and the rest fails.

    Bad input raises ValueError (hgan.data.h5io.DataFormatError among them), FileNotFoundError
    or CheckpointError, which train.py reports in one line; errors of training itself come
    later, from `run`. `given`: see resume_config. `check(cfg)`: the caller's own refusal of
    the config that will train (a resumed run's is the checkpoint's), a ValueError."""
    ckpt, path = None, ""
    if resume:
        path = os.path.join(resume, "checkpoints", "last.pt") if os.path.isdir(resume) else resume
        _check_saved_one(resume, path)
        ckpt = load_checkpoint(path)
        cfg = resume_config(ckpt, cfg, path, given)
        if int(ckpt["iteration"]) >= cfg.iters:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"[hgan] {cfg.out} is already at iteration {ckpt['iteration']} >= --iters "
                      f"{cfg.iters}: nothing to do", flush=True)
            return Setup(cfg, checkpoint=path, iteration=int(ckpt["iteration"]))
        _check_not_behind(path, int(ckpt["iteration"]), cfg.out)
    else:
        _check_new_run_dir(cfg.out)
    _check_writable(cfg.out)
    check_autocast(cfg, None if resume else given)
    # Absolute in the checkpoint: a run resumed from another directory must find the same
    # data (a relative --data would name another folder there).
    cfg = replace(cfg, data=os.path.abspath(cfg.data), out=os.path.abspath(cfg.out))
    if check is not None:
        check(cfg)
    # A batch these flags cannot train is refused before a missing dataset is generated (and
    # before joining torchrun's group, whose size WORLD_SIZE already gives).
    local_batch(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    saved_data = ckpt.get("dataset") if ckpt is not None else None
    check_data_root(cfg)
    if not os.path.exists(cfg.data_path):  # before generating what would not be the run's data
        check_resumed_dataset(saved_data, cfg)
    had_data = os.path.exists(cfg.data_path)
    info = hdist.init_distributed(resolve_device(cfg.device, hdist.DistInfo()).type)
    ensure_dataset(cfg, info)
    unused = [f"--{k.replace('_', '-')}" for k in ("gen_train", "gen_test", "gen_frames")
              if k in (given or {})]
    if had_data and unused and not resume and info.is_main:
        print(f"[hgan] {cfg.data_path} exists: {', '.join(unused)} "
              f"{'is' if len(unused) == 1 else 'are'} for a dataset to generate, not used "
              f"({_regenerate(cfg.data_path)})", flush=True)
    dataset = dataset_identity(cfg.data_path)
    check_resumed_dataset(saved_data, cfg, now=dataset)
    lock, refused = None, None
    if info.is_main:  # the rank that writes the run directory claims it (hgan.train.rundir)
        try:
            lock = rundir.claim(cfg.out, numbered=not resume and given is not None
                                and "out" not in given)
        except ValueError as e:
            refused = str(e)
    # Every rank names the directory rank 0 claimed (a numbered default, or one named by
    # another clock's second), or stops with its refusal.
    out, refused = hdist.from_main((lock.path if lock else cfg.out, refused), info)
    if refused:
        raise ValueError(refused)
    cfg = replace(cfg, out=out)
    try:
        if lock is not None and not resume:
            _check_new_run_dir(cfg.out)  # a run that finished in it since the check above
        trainer = Trainer(cfg, info)
        trainer.dataset = dataset
        _check_integrator(trainer)
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
        stream = build_loader(cfg.data_path, batch_size=trainer.local_batch, frames=cfg.frames,
                              seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                              device=trainer.device, kind=cfg.loader,
                              num_workers=cfg.num_workers, start_batch=trainer.loader_position,
                              channels_last=cfg.model.channels_last)
    except BaseException as e:
        if lock is not None:
            lock.release(discard=True)
        if isinstance(e, TooFewWindows):
            raise TooFewWindows(f"{e} (--gen-train sets how many a generated dataset has: "
                                f"{_regenerate(cfg.data_path)})") from None
        raise
    return Setup(cfg, info, trainer, stream, path, lock=lock)


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints after the current iteration and exits.

    A signal sent to the whole process group does not reach the loader workers (they run in
    process groups of their own, hgan.data.workers); this process ends them when it closes
    the stream. On exit the
    handlers installed before are restored, whatever they were (SIG_IGN under nohup)."""

    # A second SIGINT this long after the first is a second Ctrl-C; sooner, it is the same
    # stop delivered twice: `timeout -s INT` (without --foreground) signals its child and
    # then the child's process group, and both can reach the handler separately.
    SECOND_AFTER_S = 1.0

    def __init__(self):
        self.signum = None
        self._at = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signum is not None:
            if signum == signal.SIGINT and now - self._at >= self.SECOND_AFTER_S:
                raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting
            return
        self.signum, self._at = signum, now

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            # None: the previous handler was not installed from Python; SIG_DFL is the best guess
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        return False


def _stop_reason(stop):
    """What summary.json's "stopped" says: the signal's name, or the stop's own reason
    (hgan.train.pack.SharedStop: another packed run's failed capture)."""
    return getattr(stop, "reason", None) or signal.Signals(stop.signum).name


class _FirstSteps:
    """Holds hcapture.CAPTURE_LOCK through a run's first iterations: the warm-up and the
    capture, and everything else done there for the first time (kernels loaded or compiled,
    the first samples), so that none of it overlaps another run's capture when several runs
    share a process (hgan.train.pack). Uncontended in a process of one run.

    In a pack (hcapture.START_GATE set) a run that has passed them then waits until every
    run has: set up one at a time while the others already trained, the later runs' eager
    warm-up fought the others' replays for the GPU and the GIL, and 15 runs took minutes to
    start (an H200, 2026-12-04: 7 of 15 had started after 180 s). `stop` ends the wait."""

    def __init__(self, until, stop=None):
        self.until, self.held, self.stop = until, False, stop
        self.gate = hcapture.START_GATE

    def __enter__(self):
        hcapture.CAPTURE_LOCK.acquire()
        self.held = True
        return self

    def passed(self, iteration, wait=True):
        if self.held and iteration >= self.until:
            hcapture.CAPTURE_LOCK.release()
            self.held = False
            if self.gate is not None:
                self.gate.arrive()
                if wait:
                    waited = self.gate.wait(self.stop)
                    if waited >= 1:
                        print(f"[hgan] waited {waited:.0f} s for the pack's other runs to "
                              f"set up", flush=True)

    def __exit__(self, *exc):
        self.passed(float("inf"), wait=False)
        return False


def _write_samples(trainer: Trainer, writer, tag: str):
    cfg = trainer.cfg
    g = trainer.G
    was_training = g.training
    g.eval()
    fixed = torch.Generator(trainer.device).manual_seed(cfg.seed + 12345)
    videos = g.sample(cfg.n_samples, cfg.frames, generator=fixed)
    g.train(was_training)
    stem = os.path.join(cfg.out, "samples", tag)
    save_samples(videos, stem)
    if writer is not None:
        writer.add_image("samples", strip(videos), trainer.iteration, dataformats="HWC")
    return stem


def _wait_past_event_files(tb_dir, clock=time):
    """Wait until the clock has passed the second of the newest event file in tb_dir.

    TensorBoard reads a run's event files in name order, and a name starts with the second
    it was made in, then the process and a per-process counter: a resumed run's file made in
    the same second as the one before it can sort first (counter 10 before 9), and the purge
    of its redone steps then comes before the events it should remove. At most about a
    second, and only where a file of this very second exists (not for a clock far ahead)."""
    latest = -1
    for name in (os.listdir(tb_dir) if os.path.isdir(tb_dir) else ()):
        parts = name.split(".")
        if name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
            latest = max(latest, int(parts[3]))
    if latest - int(clock.time()) > 1:
        return
    while int(clock.time()) <= latest:
        clock.sleep(0.05)


def train(cfg: RunConfig, resume: str = "", callback=None, given: dict | None = None) -> dict:
    """Train until cfg.iters (or a signal); returns the final metrics and paths.

    `callback(trainer)` runs after every iteration (tests use it to send signals).
    """
    return run(prepare(cfg, resume, given), callback)


def run(setup: Setup, callback=None, stop=None) -> dict:
    """The training phase of `train`, from what `prepare` built.

    stop: an object whose `signum` turns non-None to stop; None installs this process's
    SIGTERM/SIGINT handlers (main thread only; hgan.train.pack shares one flag instead),
    before anything of the run is written: from here on a signal saves a checkpoint, at
    iteration 0 (or the resumed one) when it comes before the first step."""
    if setup.trainer is None:
        cfg = setup.cfg
        return {"iteration": setup.iteration, "stats": {}, "out": cfg.out, "stopped": None,
                "checkpoint": setup.checkpoint}
    try:
        if stop is None:
            with _StopFlag() as flag:
                return _run(setup, callback, flag)
        return _run(setup, callback, stop)
    finally:
        if setup.lock is not None:
            setup.lock.release()


def _run(setup: Setup, callback, stop) -> dict:
    cfg, info, trainer, stream = setup.cfg, setup.info, setup.trainer, setup.stream
    main = info.is_main
    writer = None
    if main:
        os.makedirs(cfg.out, exist_ok=True)
        if not setup.checkpoint or not _inside(setup.checkpoint, cfg.out):
            # a new run, or a branch (--resume X --out NEW): the directory has no checkpoint
            _clear_stopped_attempt(cfg.out)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            f.write(cfg.dumps())
        m = cfg.model
        start = (f"resumed at iteration {trainer.iteration} of {cfg.iters}" if trainer.iteration
                 else f"{cfg.iters} iteration{'s' if cfg.iters != 1 else ''}")
        # The full configuration is config.json's (about 50 lines): here, what tells runs apart.
        print(f"[hgan] run directory {cfg.out}\n"
              f"[hgan] {m.model} on {cfg.system}: {start}, batch {cfg.batch_size}"
              f"{f' ({cfg.batch_size // info.world_size} per rank)' if info.enabled else ''}, "
              f"{cfg.frames} frames at {m.resolution} px, seed {cfg.seed} (every setting: "
              f"config.json)\n"
              f"[hgan] device {trainer.device}, world size {info.world_size}, autocast "
              f"{trainer.amp_dtype or 'off (fp32)'}", flush=True)
        note = _unused_precision(m, trainer.device)
        if note:
            print(note, flush=True)
        from torch.utils.tensorboard import SummaryWriter
        # Events after the checkpoint's iteration belong to steps that will be redone; those
        # at it were logged by the state the checkpoint holds, and stay.
        _wait_past_event_files(os.path.join(cfg.out, "tb"))
        writer = SummaryWriter(os.path.join(cfg.out, "tb"),
                               purge_step=trainer.iteration + 1 if trainer.iteration else None)

    batches = iter(stream)
    bar = tqdm(total=cfg.iters, initial=trainer.iteration, disable=not (main and cfg.progress),
               desc=f"{cfg.model.model}/{cfg.system}", unit="it", dynamic_ncols=True,
               position=0)  # not stacked under another run's bar (hgan.train.pack's threads)
    last_stats, stopped, data_error, restarted = {}, None, None, False
    sampled_at = saved_at = None  # the end writes neither twice at one iteration
    t_log, it_log = time.perf_counter(), trainer.iteration
    try:
        with step_profiler(cfg.out, cfg.profile and main) as prof, \
                _FirstSteps(trainer.iteration + hcapture.WARMUP_STEPS + 1, stop) as first:
            # Stopped while waiting for the lock (another packed run's failed capture, a
            # signal): no step, only the checkpoint below.
            if stop.signum is not None:
                stopped = _stop_reason(stop)
            while stopped is None and trainer.iteration < cfg.iters:
                # The last iteration logs too: a run shorter than --log-every has its losses.
                want = ((trainer.iteration + 1) % cfg.log_every == 0
                        or trainer.iteration + 1 == cfg.iters)
                with stage("data"):
                    try:
                        real = next(batches)
                    except Exception as e:
                        # A signal to the process group can kill a loader worker that is
                        # still starting (a spawned one ignores it only once running, as in
                        # hgan.train.pack): then the loader fails, and the run stops for
                        # the signal, with its checkpoint, like any other. Under torchrun
                        # the other ranks step on until the agreed poll, and this one must
                        # meet them there: its loader starts again at the same batch (new
                        # workers start after the signal, so they live) and it steps on.
                        if stop.signum is not None and info.enabled:
                            if restarted:  # no stop alone: the process group ends instead
                                raise
                            restarted = True
                            batches = iter(stream)
                            real = next(batches)  # a second failure is raised
                        elif stop.signum is not None:
                            stopped = _stop_reason(stop)
                        # A chunk of the data that cannot be read (the file is checked only
                        # at its ends when opened) stops the run with its checkpoint; under
                        # torchrun the other ranks would wait for this one in a collective,
                        # so it ends the process group there instead.
                        elif isinstance(e, DataFormatError) and not info.enabled:
                            data_error, stopped = error_line(e), "unreadable data"
                        else:
                            raise
                        # as every stop: a non-finite loss named here (this rank alone:
                        # the others are not at this point)
                        if stopped is not None:
                            trainer.flush_checks(agree=False)
                            break
                stats = trainer.step(real, want_stats=want)
                trainer.iteration += 1
                trainer.loader_position = stream.position
                prof.step()
                bar.update(1)
                it = trainer.iteration
                if (want or it == 1 or it % cfg.sample_every == 0 or it % cfg.ckpt_every == 0
                        or (cfg.keep_every and it % cfg.keep_every == 0) or it >= cfg.iters):
                    trainer.flush_checks()
                if want:
                    now = time.perf_counter()
                    rate = (trainer.iteration - it_log) / max(now - t_log, 1e-9)
                    t_log, it_log = now, trainer.iteration
                    fresh = {k: float(v) for k, v in stats.items()}
                    # The last iteration's extra log (off the --log-every grid) times a short
                    # window, with the previous boundary's samples and checkpoint in it: the
                    # speed stays the last full window's, unless there was none.
                    if it % cfg.log_every == 0 or "speed/it_per_s" not in last_stats:
                        fresh["speed/it_per_s"] = rate
                        fresh["speed/videos_per_s"] = rate * cfg.batch_size
                    last_stats = {**last_stats, **fresh}
                    if main:
                        for k, v in fresh.items():
                            writer.add_scalar(k, v, trainer.iteration)
                        # L_cyc only where there is one (hgan): the baselines' constant
                        # 0.000 read as a cyclic loss that is computed and vanishes
                        shown = ("loss/D_I", "loss/D_V", "loss/G") + (
                            ("loss/L_cyc",) if model_kind(cfg.model.model).cyclic_loss else ())
                        losses = {k.split("/")[-1]: f"{last_stats[k]:.3f}" for k in shown}
                        bar.set_postfix(losses)
                        if not cfg.progress:  # no bar (a batch job's log): a line instead
                            print(f"[hgan] iteration {it}/{cfg.iters}: "
                                  + ", ".join(f"{k} {v}" for k, v in losses.items())
                                  + f", {last_stats['speed/it_per_s']:.1f} it/s", flush=True)
                # after the first iteration too, so a new run shows its output at once
                if main and (trainer.iteration % cfg.sample_every == 0 or trainer.iteration == 1):
                    _write_samples(trainer, writer, f"iter_{trainer.iteration:07d}")
                    sampled_at = trainer.iteration
                keep = cfg.keep_every and it % cfg.keep_every == 0
                if it % cfg.ckpt_every == 0 or keep:
                    trainer.gather_noise()  # every rank: a collective under torchrun
                    if main:
                        # last.pt too at a snapshot: it stays the newest checkpoint, the one
                        # --resume RUN takes, whatever the two cadences
                        trainer.save()
                        if keep:
                            trainer.save(f"iter_{it:07d}.pt")
                        # A resume keeps the events up to the checkpoint's iteration and logs
                        # only later ones: those still in the writer's queue when the process
                        # dies (killed, out of memory, a second Ctrl-C) would be a gap.
                        writer.flush()
                    saved_at = it
                if callback is not None:
                    callback(trainer)
                first.passed(it)
                # Under torchrun the stop flag is all-reduced, which waits for the GPU: every
                # STOP_POLL_EVERY iterations (the same ones on every rank), not every step.
                poll = not info.enabled or it % STOP_POLL_EVERY == 0 or it >= cfg.iters
                if poll and hdist.any_rank(stop.signum is not None, info, trainer.device):
                    stopped = _stop_reason(stop) if stop.signum else "peer signal"
                    trainer.flush_checks()
                    break
    except NonFiniteLoss as e:
        bar.close()
        last = os.path.join(cfg.out, "checkpoints", "last.pt")
        kept = f"last good checkpoint kept: {last}" if os.path.exists(last) else "no checkpoint was written yet"
        raise NonFiniteLoss(f"{e}; stopping ({kept})", reporter=e.reporter) from None
    finally:
        bar.close()
        batches.close()  # ends the loader's workers now, not whenever the generator is collected
        stream.close()
    result = {"iteration": trainer.iteration, "stats": last_stats, "out": cfg.out, "stopped": stopped,
              "trainer": trainer}
    if saved_at != trainer.iteration:   # the same on every rank
        trainer.gather_noise()  # every rank: a collective under torchrun
    if main:
        result["checkpoint"] = (trainer.save() if saved_at != trainer.iteration else
                                os.path.join(cfg.out, "checkpoints", "last.pt"))
        if sampled_at != trainer.iteration:
            _write_samples(trainer, writer, f"iter_{trainer.iteration:07d}")
        writer.close()
        with open(os.path.join(cfg.out, "summary.json"), "w") as f:
            json.dump({k: v for k, v in result.items() if k != "trainer"}, f, indent=2)
        if stopped:
            print(f"[hgan] {stopped}: checkpoint saved at iteration {trainer.iteration} -> "
                  f"{result['checkpoint']}; resume with --resume {cfg.out}", flush=True)
        else:
            print(f"[hgan] done at iteration {trainer.iteration}: {result['checkpoint']}; "
                  f"samples in {os.path.join(cfg.out, 'samples')}, curves: tensorboard "
                  f"--logdir {os.path.join(cfg.out, 'tb')}", flush=True)
    if data_error:
        raise DataFormatError(f"{data_error} (the run stopped at iteration {trainer.iteration} "
                              f"with its checkpoint; resume with --resume {cfg.out} once the "
                              f"data reads)")
    return result
