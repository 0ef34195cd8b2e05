"""`python -m hgan.experiments {table1, export}`: the Table-1 grid, trained and evaluated.

Every invalid setting ends in one line `hgan.experiments: error: ...` and exit code 2.
"""
import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from hgan import _startup
from hgan.cli_args import OneLineParser
from hgan.experiments.grid import (MODELS, PAPER_SIZES, TABLE1_SYSTEMS, GridError, GridSpec,
                                   check_device, check_flags, metric_list, split_args)


class _Parser(OneLineParser):
    error_name = "hgan.experiments"


def _list(text):
    return _once(tuple(x.strip() for x in text.split(",") if x.strip()), text)


def _ints(text):
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return _once(values, text)


def _once(values, text):
    """`values`, unless one is repeated: its runs would train twice at once in one directory,
    and count twice in compare.md."""
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise argparse.ArgumentTypeError(f"{repeated[0]} is repeated in {text!r}")
    return values


def build_parser(defaults=True):
    """defaults=False: table1's options get none, so that a parse holds only those given."""
    p = _Parser(prog="python -m hgan.experiments", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    t = sub.add_parser("table1", help="train and evaluate the grid, write compare.md",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, default=argparse.SUPPRESS,  # no "(default: None)"
                   help="grid directory (data/, runs/, compare.md)")
    # String defaults: argparse passes them through `type`, and --help shows them as typed.
    t.add_argument("--systems", type=_list, default=",".join(TABLE1_SYSTEMS), help="comma list")
    t.add_argument("--models", type=_list, default=",".join(MODELS), help="comma list")
    t.add_argument("--seeds", type=_ints, default="0", help="comma list of training seeds")
    t.add_argument("--iters", type=int, default=20_000, help="training iterations of every run")
    t.add_argument("--parallel", type=int, default=1,
                   help="jobs at a time (training and evaluation processes share one device)")
    t.add_argument("--pack", type=int, default=1,
                   help="training runs per process, each in a thread with its own CUDA stream, "
                        "so that their kernels share the GPU without MPS (hgan.train.pack); "
                        "a pack takes one --parallel slot")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (every job)")
    t.add_argument("--batch-size", type=int, default=16, help="videos per iteration of every run")
    t.add_argument("--frames", type=int, default=16, help="frames per training video")
    t.add_argument("--resolution", type=int, default=32,
                   help="frame size in pixels of the generated datasets and the runs")
    t.add_argument("--train-traj", type=int, default=1_000, help="train trajectories per system")
    t.add_argument("--test-traj", type=int, default=256, help="held-out trajectories per system")
    t.add_argument("--traj-frames", type=int, default=128, help="frames per generated trajectory")
    t.add_argument("--data-seed", type=int, default=0,
                   help="seed of the generated datasets (runs keep their --seeds)")
    t.add_argument("--paper-sizes", action="store_true",
                   help=f"the paper's data: {PAPER_SIZES['train_traj']} x {PAPER_SIZES['traj_frames']} "
                        f"frames per system (+ {PAPER_SIZES['test_traj']} held out); slow to generate")
    t.add_argument("--train-args", default="", help="extra train.py flags, e.g. '--amp --compile'")
    t.add_argument("--eval-metrics", default="physics,appearance,cyclic,samples,tsne",
                   help="hgan.evaluate metrics (fvd is added when --i3d is given)")
    t.add_argument("--eval-args", default="", help="extra hgan.evaluate flags")
    t.add_argument("--i3d", default="", help="I3D detector for FVD (i3d_torchscript.pt)")
    t.add_argument("--inline-eval", action="store_true",
                   help="evaluate in this process, one run at a time (no process start per "
                        "evaluation: faster for tiny CPU grids; GPU grids evaluate in parallel)")
    t.add_argument("--deadline", type=float, default=None,
                   help="seconds after which training jobs checkpoint and stop (evaluation "
                        "goes on); compare.md shows the iterations each run reached")
    t.add_argument("--status-every", type=float, default=60.0, help="seconds between status lines")
    t.add_argument("--report-only", action="store_true", help="only rewrite compare.md")
    t.add_argument("--data-only", action="store_true",
                   help="only generate the datasets the grid needs (e.g. before a --deadline "
                        "grid, whose clock would otherwise include them)")
    t.add_argument("--probes", action="store_true",
                   help="with --data-only: also train and cache each system's physics probe "
                        "for the grid's evaluation settings, so that its evaluations later "
                        "start together instead of waiting for the first")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (status lines stay)")
    if not defaults:
        for action in t._actions:  # (not set_defaults: those reach the namespace anyway)
            action.default = argparse.SUPPRESS
    e = sub.add_parser("export", help="copy a grid's small results (no checkpoints) elsewhere")
    e.add_argument("grid_dir", help="the grid's --out directory")
    e.add_argument("--to", required=True, metavar="DIR",
                   help="a new (or empty) directory for compare.md, figures/ and each run's "
                        "configs, summaries and evaluation outputs (no checkpoints)")
    # argparse names a missing command by its dest ("required: cmd"); the choices say more
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return p


def spec_from_args(a):
    sizes = dict(PAPER_SIZES) if a.paper_sizes else dict(
        train_traj=a.train_traj, test_traj=a.test_traj, traj_frames=a.traj_frames)
    for name in ("parallel", "pack", "batch_size", "frames", "resolution", "iters"):
        if getattr(a, name) < 1:
            raise GridError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name, value in sizes.items():  # else each dataset's generation fails in its thread
        if value < 1:
            raise GridError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    # a deadline already passed, or status lines at every poll of the loop (4 a second)
    for name in ("deadline", "status_every"):
        value = getattr(a, name, None)
        if value is not None and not value > 0:
            raise GridError(f"--{name.replace('_', '-')} must be a number of seconds > 0, "
                            f"got {value:g}")
    if not a.systems or not a.models or not a.seeds:
        raise GridError("--systems, --models and --seeds need at least one entry each")
    if a.data_only and a.report_only:
        raise GridError("--data-only and --report-only: choose one")
    if getattr(a, "probes", False) and not a.data_only:
        raise GridError("--probes goes with --data-only (a grid's first evaluation of a system "
                        "trains its probe anyway)")
    if a.pack > 1:
        from hgan.train.pack import MAX_RUNS
        if a.pack > MAX_RUNS:
            raise GridError(f"--pack {a.pack}: at most {MAX_RUNS} training runs per process")
        unpackable = {"--compile", "--profile"} & set(split_args(a.train_args, "--train-args"))
        if unpackable:
            raise GridError(f"--pack > 1 with --train-args {' '.join(sorted(unpackable))}: "
                            f"packed runs cannot use them (hgan.train.pack); use --pack 1")
    return GridSpec(out=a.out, systems=a.systems, models=a.models, seeds=a.seeds, iters=a.iters,
                    batch_size=a.batch_size, frames=a.frames, resolution=a.resolution,
                    device=a.device, data_seed=a.data_seed,
                    train_args=split_args(a.train_args, "--train-args"), eval_metrics=a.eval_metrics,
                    eval_args=split_args(a.eval_args, "--eval-args"), i3d=a.i3d, **sizes)


def _commit():
    """The checkout's commit; $HGAN_COMMIT where the tree was copied without its .git."""
    if os.environ.get("HGAN_COMMIT"):
        return os.environ["HGAN_COMMIT"]
    import hgan
    root = os.path.dirname(os.path.dirname(os.path.abspath(hgan.__file__)))
    installed = f"unknown (installed hgan {hgan.__version__})"
    # Only a checkout of this project: an installed copy's site-packages may sit inside
    # another git repository (a venv in the user's project), whose commit git would report.
    if not hgan._names_hgan(os.path.join(root, "pyproject.toml")):
        return installed
    try:   # a source tree without its .git (copied) or without git: "unknown"
        return subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                               capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device_name(device):
    import platform

    import torch
    if device != "cpu" and torch.cuda.is_available():
        # the grid's own GPU (cuda:N), not always the first one
        index = torch.device(device).index if device.startswith("cuda") else None
        return torch.cuda.get_device_name(index or 0) + f" (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def _saved_grid(out):
    try:
        with open(os.path.join(out, "grid.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _given(argv):
    """The table1 settings named on the command line (argparse dests)."""
    args = build_parser(defaults=False).parse_args(_attach_flag_strings(argv))
    return set(vars(args)) - {"cmd"}


def _report_spec(saved, spec, given):
    """grid.json's settings, but those given with --report-only (`--systems a,b` after a grid
    run on a subset: the table of those runs)."""
    fields = {"paper_sizes": ("train_traj", "test_traj", "traj_frames")}
    chosen = {f for d in given for f in fields.get(d, (d,)) if f in GridSpec.__dataclass_fields__}
    return GridSpec(**{**saved["spec"], **{f: getattr(spec, f) for f in chosen}, "out": spec.out})


# How the jobs of a grid run: --report-only runs none, so given beside it they change nothing.
# Said, not refused: bench/gpu/table1.sh's fallback report passes the grid's own flags along.
REPORT_IDLE = ("parallel", "pack", "deadline", "status_every", "inline_eval")


def table1(a, argv):
    from hgan.experiments import report, runner
    from hgan.experiments.report import count_of
    spec = spec_from_args(a)
    idle = [d for d in REPORT_IDLE if d in _given(argv)] if a.report_only else []
    if idle:
        print(f"[grid] --report-only runs no job: "
              f"{', '.join('--' + d.replace('_', '-') for d in idle)} change"
              f"{'s' if len(idle) == 1 else ''} nothing", file=sys.stderr, flush=True)
    if os.path.exists(spec.out) and not os.path.isdir(spec.out):
        raise GridError(f"--out {spec.out} is a file, not a directory")
    saved = _saved_grid(spec.out) if a.report_only else None
    if a.report_only and not saved:  # a mistyped --out: no table of runs never made
        raise GridError(f"--report-only: no grid at {spec.out}"
                        + (" (no readable grid.json)" if os.path.isdir(spec.out) else ""))
    if saved:  # the table of the invocation that trained the grid, with its settings
        spec = _report_spec(saved, spec, _given(argv))
    runner.check_ready(spec)
    if not a.data_only:  # the evaluations and compare.md's figures need the eval extra
        from hgan.evaluate.inputs import missing_eval_extra
        missing = missing_eval_extra(() if a.report_only else metric_list(spec),
                                     also=("matplotlib",), flag="--eval-metrics")
        if missing:
            raise GridError(missing)
    if not a.report_only:
        check_device(spec.device)
        check_flags(spec)
    from hgan.data.h5io import missing_folders, remove_empty
    made = missing_folders(os.path.join(spec.out, "grid.json"))   # --out and those above it
    try:
        os.makedirs(spec.out, exist_ok=True)
    except OSError as e:
        raise GridError(f"--out {spec.out}: {e.strerror}") from None
    t0 = time.time()
    meta = {"command": "python -m hgan.experiments " + shlex.join(argv), "commit": _commit(),
            "device": _device_name(spec.device)}
    jobs, grid = [], None
    if saved:
        meta.update({k: saved[k] for k in ("command", "commit", "device", "wall_s",
                                           "wall_s_total") if k in saved})
        meta["command"] += " (table rewritten with --report-only)"
    # every invocation's wall time adds up (a rerun with nothing to do said "0 s" of a grid
    # that had trained for an hour)
    before = (_saved_grid(spec.out) or {}) if not a.report_only else {}
    before = before.get("wall_s_total", before.get("wall_s", 0.0))
    if not a.report_only:
        grid = runner.GridRunner(spec, parallel=a.parallel, deadline_s=a.deadline,
                                 status_every_s=a.status_every, progress=not a.no_progress,
                                 inline_eval=a.inline_eval, pack=a.pack)
        try:
            jobs = grid.plan(data_only=a.data_only)  # data alone: whatever the runs hold
        except GridError:  # a refused command leaves no empty --out of its own behind
            remove_empty(made)
            raise
        if a.data_only:  # (with --report-only: refused in spec_from_args)
            print(f"[grid] {count_of(len(jobs), 'dataset')} to generate in {spec.out}/data",
                  file=sys.stderr, flush=True)
            grid.execute()
            failed = [j.name for j in jobs if j.state != "done"]
            if failed:
                print(f"[grid] data not generated: {', '.join(failed)}", file=sys.stderr)
            if a.probes and not failed and not grid.stopping:
                failed = runner.cache_probes(spec)
            return 130 if grid.stopping else 1 if failed else 0
        counts = {k: sum(j.kind == k for j in jobs) for k in ("data", "train", "eval")}
        print(f"[grid] {count_of(len(spec.runs()), 'run')} in {spec.out}: "
              f"{count_of(counts['data'], 'dataset')} to generate, "
              f"{count_of(counts['train'], 'run')} to train, {counts['eval']} to evaluate; "
              f"{a.parallel} at a time"
              + (f", up to {a.pack} training runs per process" if a.pack > 1 else ""),
              file=sys.stderr, flush=True)
        meta["wall_s_total"] = before  # kept if this invocation dies before its end
        _save_grid(spec, meta)
    stopped = False
    # Until compare.md is written, a stop signal (a second Ctrl-C, `timeout -s INT`'s copy)
    # is the grid's, not a KeyboardInterrupt that would lose the table.
    with grid.signals() if grid else contextlib.nullcontext():
        if grid:
            grid.execute()
            stopped = grid.stopping  # a signal while compare.md is written stops nothing
            if grid.stopping:
                meta["note"] = "**Interrupted**: the command was stopped; run it again to resume."
            meta["wall_s"] = time.time() - t0
            meta["wall_s_total"] = before + meta["wall_s"]
            _save_grid(spec, meta)
        meta["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        report.write_compare(spec, meta)
    failed = [f"{j.kind} {j.name}" for j in jobs if j.state == "failed"]
    print(f"[grid] wrote {os.path.join(spec.out, 'compare.md')}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 130 if stopped else 1 if failed else 0


def _save_grid(spec, meta):
    # Atomically: a grid stopped while it wrote grid.json would lose the settings and the wall
    # time of every earlier invocation, which --report-only and the next one read.
    from hgan.experiments.grid import _write_json
    _write_json(os.path.join(spec.out, "grid.json"), {"spec": spec.to_dict(), **meta})


# Small files of a grid worth committing: no checkpoints, TensorBoard events, logs or GIFs.
EXPORT_TOP = ("compare.md", "grid.json")
EXPORT_RUN = ("config.json", "summary.json", "experiment.json")
EXPORT_EVAL = (".json", ".md", ".png")


EXPORT_TEXT = (".json", ".md", ".txt", ".log")


def relative_to_grid(text, grid_dir):
    """`text` with the grid directory's absolute path made relative to it: '<grid>/runs/x' ->
    'runs/x', '<grid>' alone -> '.'. Results meant for a repository must not name the
    machine's folders (the grid's configs, summaries and command line do)."""
    for root in sorted({os.path.abspath(grid_dir), os.path.realpath(grid_dir)}, key=len,
                       reverse=True):
        text = text.replace(root + os.sep, "")
        text = re.sub(re.escape(root) + r"(?![\w.-])", ".", text)
    return text


def export(grid_dir, dest):
    """Copy compare.md, figures/ and each run's configs, summaries and evaluation outputs,
    keeping the layout so that compare.md's links still work; paths into the grid directory
    in the text files become relative to it (`relative_to_grid`)."""
    if not os.path.isfile(os.path.join(grid_dir, "compare.md")):
        raise GridError(f"{grid_dir} has no compare.md: run table1 first")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise GridError(f"--to {dest} is a file, not a directory")
    if os.path.isdir(dest) and os.listdir(dest):
        # merged, another grid's runs would sit beside this one's compare.md
        raise GridError(f"--to {dest} is not empty: export into a new directory, or delete "
                        f"{dest} first")
    copied = []

    def cp(src, rel):
        os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
        if rel.endswith(EXPORT_TEXT):
            with open(src, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
            with open(os.path.join(dest, rel), "w", encoding="utf-8",
                      errors="surrogateescape") as f:
                f.write(relative_to_grid(text, grid_dir))
        copied.append(rel)

    for name in EXPORT_TOP:
        if os.path.isfile(os.path.join(grid_dir, name)):
            cp(os.path.join(grid_dir, name), name)
    for sub in ("figures",):
        d = os.path.join(grid_dir, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            cp(os.path.join(d, name), os.path.join(sub, name))
    runs = os.path.join(grid_dir, "runs")
    for run in sorted(os.listdir(runs)) if os.path.isdir(runs) else ():
        for name in EXPORT_RUN:
            if os.path.isfile(os.path.join(runs, run, name)):
                cp(os.path.join(runs, run, name), os.path.join("runs", run, name))
        ev = os.path.join(runs, run, "eval")
        for name in sorted(os.listdir(ev)) if os.path.isdir(ev) else ():
            if name.endswith(EXPORT_EVAL):
                cp(os.path.join(ev, name), os.path.join("runs", run, "eval", name))
    return copied


def _attach_flag_strings(argv):
    """`--train-args '--amp'` as `--train-args=--amp`: argparse takes a lone value that starts
    with '-' and has no space for a flag of its own ("expected one argument")."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--train-args", "--eval-args") and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None):
    _startup.release("hgan.experiments")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(_attach_flag_strings(argv))
    try:
        if a.cmd == "export":
            try:
                n = len(export(a.grid_dir, a.to))
            except OSError as e:  # --to under a file, or unwritable
                raise GridError(f"export to {a.to}: {e.strerror or e}") from None
            print(f"[grid] copied {n} files to {a.to}", file=sys.stderr)
            return 0
        return table1(a, argv)
    except GridError as e:
        print(f"hgan.experiments: error: {e}", file=sys.stderr)
        return 2
