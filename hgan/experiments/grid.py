"""The grid of (system, model, seed) runs: its layout on disk, each run's state, commands.

Layout under --out:

    grid.json                     the grid as last asked for (flags, device, commit)
    data/<system>/{train,test}.h5 datasets, generated when missing
    runs/<system>-<model>-s<seed>/ one training run (train.py's run directory), plus
        experiment.json           wall time and iterations of each training segment
        train.log, eval.log       the subprocesses' output
        eval/                     hgan.evaluate's results.json, report.md, figures
    compare.md, figures/          the Table-1-style comparison

A run's state is read from what train.py leaves: ``summary.json`` (written when a run ends,
also when it was stopped by a signal) and ``checkpoints/last.pt``. So a grid started again
skips finished runs, resumes interrupted ones from their checkpoint, and re-evaluates a run
whose evaluation is older than its last checkpoint.
"""
import contextlib
import functools
import io
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, fields

from hgan.evaluate.atomic import write_atomically
from hgan.model_kinds import MODELS, unused_option

TABLE1_SYSTEMS = ("mass_spring", "pendulum", "double_pendulum", "two_body", "three_body")
# The paper's data: 50,000 trajectories of 512 frames per system (the test split is ours).
PAPER_SIZES = {"train_traj": 50_000, "test_traj": 2_048, "traj_frames": 512}
# train.py flags a resumed run still takes (hgan.train.run.RESUMABLE_OVERRIDES, by flag name;
# --data is the grid's own): those with a value, and the switches (both forms of each).
RESUMABLE_FLAGS = ("--iters", "--device", "--log-every", "--sample-every", "--ckpt-every",
                   "--keep-every", "--n-samples", "--loader", "--num-workers")
RESUMABLE_SWITCHES = ("--cuda-graph", "--no-cuda-graph", "--profile", "--no-profile",
                      "--progress", "--no-progress")


class GridError(ValueError):
    """A grid that cannot run as asked (mismatching data or run, missing train.py)."""


@dataclass
class GridSpec:
    out: str
    systems: tuple = TABLE1_SYSTEMS
    models: tuple = MODELS
    seeds: tuple = (0,)
    iters: int = 20_000
    batch_size: int = 16
    frames: int = 16
    resolution: int = 32
    device: str = "auto"
    train_traj: int = 1_000
    test_traj: int = 256
    traj_frames: int = 128
    data_seed: int = 0
    train_args: tuple = ()        # extra train.py flags, e.g. ("--amp", "--compile")
    eval_metrics: str = "physics,appearance,cyclic,samples,tsne"
    eval_args: tuple = ()         # extra hgan.evaluate flags
    i3d: str = ""

    def __post_init__(self):
        for name in ("systems", "models", "seeds", "train_args", "eval_args"):
            setattr(self, name, tuple(getattr(self, name)))

    def runs(self):
        return [Run(self, s, m, seed) for s in self.systems for m in self.models for seed in self.seeds]

    def data_path(self, system, split="train"):
        return os.path.join(self.out, "data", system, f"{split}.h5")

    def to_dict(self):
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class Run:
    spec: GridSpec
    system: str
    model: str
    seed: int

    @property
    def name(self):
        return f"{self.system}-{self.model}-s{self.seed}"

    @property
    def dir(self):
        return os.path.join(self.spec.out, "runs", self.name)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def summary(self):
        return _read_json(self.path("summary.json"))

    def record(self):
        """experiment.json: {"segments": [{"from", "to", "seconds", "returncode"}], "eval": {...}}."""
        return _read_json(self.path("experiment.json")) or {"segments": []}

    def save_record(self, rec):
        _write_json(self.path("experiment.json"), rec)

    def iteration(self):
        s = self.summary()
        return int(s["iteration"]) if s else 0

    def trained(self):
        return self.iteration() == self.spec.iters and os.path.exists(self.checkpoint)

    def check_length(self):
        """A run trained past --iters is an error: counted done, it would stand in compare.md
        beside runs of the asked length (and its seeds be averaged with theirs)."""
        n = self.iteration()
        if n > self.spec.iters:
            raise GridError(f"{self.dir} was trained to {n} iterations, the grid asks for --iters "
                            f"{self.spec.iters}: use --iters {n} or another --out")

    def resumable(self):
        return os.path.exists(self.checkpoint)

    @property
    def checkpoint(self):
        return self.path("checkpoints", "last.pt")

    def results(self):
        return _read_json(self.path("eval", "results.json"))

    def evaluated(self):
        """Evaluated at the checkpoint's iteration, with every metric and the settings the
        grid asks for (--eval-args may have changed since), and FVD computed if a detector
        is there now (a result without one skipped it)."""
        r = self.results()
        if not r or not os.path.exists(self.checkpoint):
            return False
        want = set(metric_list(self.spec))
        if r.get("iteration") != self.iteration() or not want <= set(r.get("metrics", ())):
            return False
        from hgan.evaluate.cli import build_parser, settings
        from hgan.evaluate.probe import floored_drift
        args = build_parser().parse_args(self.eval_flags())
        if r.get("settings") != settings(args, self.system):
            return False
        if "physics" in want and floored_drift(r):  # an older drift metric: evaluated again
            return False
        return not ("fvd" in args.metrics and _detector(args)
                    and "skipped" in (r.get("fvd") or {}))

    def check_config(self):
        """A run directory trained with other settings than the grid asks for is an error: a
        resumed run keeps its checkpoint's configuration, so the table would mix them (and
        its header would state flags the run never had). Every setting counts but the ones
        a resumed run may change (hgan.train.config.resumable_fields) and the paths; a config
        saved before a model form existed was trained with the old form
        (ModelConfig.from_dict), which a fresh run of this grid would not use."""
        cfg = _read_json(self.path("config.json"))
        if not cfg:
            return
        from hgan.models.config import ModelConfig
        from hgan.train.config import RunConfig, parse_command_line, resumable_fields
        saved = RunConfig.from_dict(cfg)
        fresh = parse_command_line(self.train_flags())[0]
        # generation sizes matter only where the grid's data is missing, and the grid makes it
        skip = set(resumable_fields()) | {"out", "model", "gen_train", "gen_test", "gen_frames"}
        # nor the settings this model never reads: a mocogan run that an older grid gave
        # --train-args --k 3 (model_args now leaves it out) trained what a fresh one trains
        unused = {f for f in (*(f.name for f in fields(RunConfig)),
                              *(f.name for f in fields(ModelConfig)))
                  if unused_option(self.model, f)}
        pairs = [(f.name, getattr(saved, f.name), getattr(fresh, f.name))
                 for f in fields(RunConfig) if f.name not in skip | unused]
        pairs += [(f"model.{f.name}", getattr(saved.model, f.name), getattr(fresh.model, f.name))
                  for f in fields(ModelConfig) if f.name not in unused]
        diffs = [f"{k} = {have!r}, the grid asks for {want!r}" for k, have, want in pairs
                 if have != want]
        if diffs:
            raise GridError(f"{self.dir} was trained with {'; '.join(diffs)}: use another --out "
                            f"or delete that run directory")

    def train_command(self, python=sys.executable):
        spec = self.spec
        script = train_script()
        if self.resumable():
            cmd = [python, script, "--resume", self.dir, "--iters", str(spec.iters),
                   "--device", spec.device]
            return cmd + resumable_args(spec.train_args)
        return [python, script] + self.train_flags()

    def train_flags(self, extra=True):
        """train.py's flags for this run started afresh; extra=False: without --train-args."""
        spec = self.spec
        return ["--system", self.system, "--model", self.model,
                "--seed", str(self.seed), "--iters", str(spec.iters),
                "--batch-size", str(spec.batch_size), "--frames", str(spec.frames),
                "--resolution", str(spec.resolution), "--device", spec.device,
                "--data", os.path.join(spec.out, "data"), "--out", self.dir] + \
            (model_args(self.model, spec.train_args) if extra else [])

    def eval_command(self, python=sys.executable):
        return [python, "-m", "hgan.evaluate"] + self.eval_flags()

    def eval_flags(self, extra=True):
        """hgan.evaluate's flags for this run; extra=False: without --eval-args."""
        spec = self.spec
        # The clip length the generator was trained on. --eval-args come after it, so that a
        # --frames of their own wins (argparse keeps a flag's last value).
        flags = ["--checkpoint", self.checkpoint, "--out", self.path("eval"),
                 "--metrics", ",".join(metric_list(spec)), "--data", spec.data_path(self.system),
                 "--frames", str(spec.frames)]
        if spec.device != "auto":
            flags += ["--device", spec.device]
        if spec.i3d:
            flags += ["--i3d", spec.i3d]
        return flags + (list(spec.eval_args) if extra else [])


def metric_list(spec):
    metrics = [m.strip() for m in spec.eval_metrics.split(",") if m.strip()]
    if spec.i3d and "fvd" not in metrics:
        metrics.insert(0, "fvd")
    return metrics


def _given_train_args(args):
    """{field: value} of the train.py flags in `args` as its parser reads them (abbreviations
    and --flag=value included); None when it cannot read them (check_flags reports why)."""
    from hgan.train.config import build_parser
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return vars(build_parser(defaults=False).parse_args(list(args)))
    except SystemExit:
        return None


def model_args(model, args):
    """The extra train.py flags (--train-args) for a run of `model`: without those that do not
    apply to it (hgan.model_kinds.unused_option), which train.py refuses. The grid gives every
    model the same extra flags, so that `--gru-input noise` is mocogan's and `--dt 0.1` the
    Hamiltonian models'; check_flags says once which runs go without them."""
    given = _given_train_args(args)
    if given is None or not any(unused_option(model, name) for name in given):
        return list(args)   # as given, the usual case
    out = []
    for name, value in given.items():
        if name != "resume" and unused_option(model, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def resumable_args(args):
    """The subset of extra train.py flags that a resumed run accepts (with their values)."""
    out, args = [], list(args)
    for i, a in enumerate(args):
        flag = a.split("=", 1)[0]
        if flag in RESUMABLE_SWITCHES:
            out.append(a)
        elif flag in RESUMABLE_FLAGS:
            out.append(a)
            if "=" not in a and i + 1 < len(args):
                out.append(args[i + 1])
    return out


def train_script():
    """train.py of this checkout (the package used from the repository, editable or not), else
    the hgan-train console script of an installed copy (`pip install .` installs no train.py;
    `pip install --user .` puts the script in the user scheme's folder); either runs as
    `python SCRIPT FLAGS...`."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "train.py")
    path = os.path.normpath(path)
    if _runs_hgan_train(path):  # not a train.py another distribution put in site-packages
        return path
    import sysconfig
    name = "hgan-train.exe" if os.name == "nt" else "hgan-train"  # a zip python runs
    scripts = [os.path.join(sysconfig.get_path("scripts"), name),
               os.path.join(sysconfig.get_path("scripts", f"{os.name}_user"), name)]
    for script in scripts:
        if os.path.exists(script):
            return script
    raise GridError(f"train.py not found at {path}, nor the hgan-train script at "
                    f"{' or '.join(scripts)}: run from a checkout of the repository, or pip "
                    f"install it")


def _runs_hgan_train(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "hgan.train.cli" in f.read()
    except OSError:
        return False


def check_device(name):
    """GridError unless every job can run on --device `name`: checked before any data is
    generated, since each training and evaluation process would otherwise fail on it alone."""
    from hgan.device import check_device as check
    try:
        check(name)
    except ValueError as e:
        raise GridError(str(e)) from None


def _detector(eval_args):
    """The I3D detector hgan.evaluate will use for these parsed flags: --i3d, else the file
    at $HGAN_I3D by evaluate's own rule (a directory there is none); None when it will skip
    FVD."""
    from hgan.evaluate import fvd
    if eval_args.i3d:
        return eval_args.i3d
    try:
        return fvd.resolve_detector_path()
    except FileNotFoundError:
        return None


def check_flags(spec):
    """GridError unless train.py and hgan.evaluate take the flags the grid gives every run,
    --train-args and --eval-args included, checked by their own parsers before any data is
    generated: each job would otherwise fail on them alone, after the data."""
    from hgan.evaluate import fvd
    from hgan.evaluate.cli import build_parser as eval_parser
    from hgan.models.config import batch_refusal
    from hgan.train.config import parse_command_line
    from hgan.train.run import check_autocast
    train = functools.partial(_parse, parse_command_line, what="--train-args",
                              command="python train.py")
    evaluate = functools.partial(_parse, eval_parser().parse_args, what="--eval-args",
                                 command="python -m hgan.evaluate")
    _note_model_args(spec)
    # Every run, not one per system and model: an extra --seed equal to one run's seed
    # changes the others'.
    for run in spec.runs():
        cfg, resume, given = train(run.train_flags)
        _check_not_owned("--train-args", _TRAIN_OWNED, cfg,
                         train(functools.partial(run.train_flags, extra=False))[0])
        if resume:
            raise GridError("--train-args --resume: the grid resumes its own runs (run the same "
                            "command again)")
        # as train.py's setup checks it (one process: one rank), named as the grid's flag
        refusal = batch_refusal(cfg.model, cfg.batch_size)
        if refusal:
            raise GridError(f"{refusal} (--batch-size)")
        try:   # train.py's setup refuses them too, not its parser
            check_autocast(cfg, given)
        except ValueError as e:
            raise GridError(f"--train-args: {e}") from None
        args = evaluate(run.eval_flags)
        _check_not_owned("--eval-args", _EVAL_OWNED, args,
                         evaluate(functools.partial(run.eval_flags, extra=False)))
    i3d = _detector(args)
    if set(args.metrics) == {"fvd"} and not i3d:  # hgan.evaluate refuses it (exit 2)
        raise GridError(f"--eval-metrics fvd alone needs the I3D detector: pass --i3d PATH "
                        f"(or set ${fvd.I3D_ENV})")
    if "fvd" in args.metrics and i3d and args.frames < fvd.MIN_FRAMES:
        raise GridError(f"evaluation with --frames {args.frames}: FVD's I3D (--i3d) needs at "
                        f"least {fvd.MIN_FRAMES}; pass --eval-args '--frames N'")
    if args.frames > spec.traj_frames and not args.real:  # --real: not the grid's test.h5
        raise GridError(f"evaluation with --frames {args.frames} is longer than the held-out "
                        f"trajectories (--traj-frames {spec.traj_frames})")
    from hgan.evaluate.inputs import MIN_PHYSICS_FRAMES
    if "physics" in args.metrics and args.frames < MIN_PHYSICS_FRAMES:
        raise GridError(f"evaluation with --frames {args.frames}: the physics metrics need at "
                        f"least {MIN_PHYSICS_FRAMES}; pass --eval-args '--frames N'")
    if "physics" in args.metrics and not args.real:
        # hgan.evaluate's own check (inputs.MIN_PHYSICS_VIDEOS), made before the training it
        # would otherwise follow
        from hgan.evaluate.inputs import MIN_PHYSICS_VIDEOS
        n = min(spec.test_traj, args.physics_videos)
        if n < MIN_PHYSICS_VIDEOS:
            raise GridError(f"the physics metrics need at least {MIN_PHYSICS_VIDEOS} held-out "
                            f"videos; the grid would give {n} (--test-traj {spec.test_traj}, "
                            f"--physics-videos {args.physics_videos})")
    if "fvd" in args.metrics and i3d and not args.real and args.fvd_videos > spec.test_traj:
        # one clip per held-out trajectory (hgan.evaluate.inputs)
        raise GridError(f"FVD over --fvd-videos {args.fvd_videos} needs as many held-out "
                        f"trajectories, and the grid makes --test-traj {spec.test_traj}: pass "
                        f"--test-traj {args.fvd_videos} (or --paper-sizes), or --eval-args "
                        f"'--fvd-videos {spec.test_traj}' (not the protocol's 2048)")
    if spec.train_traj < spec.batch_size:
        # each video of a batch is a window of a training trajectory of its own: every run's
        # loader would refuse the data after it was generated
        raise GridError(f"--train-traj {spec.train_traj} is fewer than a batch (--batch-size "
                        f"{spec.batch_size})")


def _note_model_args(spec):
    """One line per --train-args flag that model_args leaves out of some models' runs, also
    when that is every run: the same --train-args serve grids of any subset of the models
    (bench/gpu/table1.sh's TRAIN_ARGS with MODELS=mocogan), as one train.py command could not."""
    given = _given_train_args(spec.train_args) or {}
    for name in given:
        without = [m for m in spec.models if unused_option(m, name)]
        if not without:
            continue
        flag = f"--{name.replace('_', '-')}"
        print(f"[grid] --train-args {flag}: not given to the {', '.join(without)} runs "
              f"({unused_option(without[0], name)})", file=sys.stderr, flush=True)


# Flags the grid sets for every run: an extra flag would win (argparse keeps the last value)
# and send a run elsewhere, or train it on other settings than compare.md states. Given by
# what reads the parsed value, so that abbreviations and --flag=value are caught too.
_TRAIN_OWNED = {
    "--system": ("--systems", lambda c: c.system), "--model": ("--models", lambda c: c.model.model),
    "--seed": ("--seeds", lambda c: c.seed), "--iters": ("--iters", lambda c: c.iters),
    "--batch-size": ("--batch-size", lambda c: c.batch_size),
    "--frames": ("--frames", lambda c: c.frames),
    "--resolution": ("--resolution", lambda c: c.model.resolution),
    "--device": ("--device", lambda c: c.device), "--data": ("--out", lambda c: c.data),
    "--out": ("--out", lambda c: c.out)}
_EVAL_OWNED = {
    "--checkpoint": ("--out", lambda a: a.checkpoint), "--out": ("--out", lambda a: a.out),
    "--data": ("--out", lambda a: a.data), "--metrics": ("--eval-metrics", lambda a: a.metrics)}


def _check_not_owned(what, owned, given, grid):
    """GridError for the first owned setting whose value with the extra flags (`given`, as
    parsed) differs from the grid's own (`grid`)."""
    for flag, (option, get) in owned.items():
        if get(given) != get(grid):
            raise GridError(f"{what} {flag}: the grid sets it for every run; use the grid's own "
                            f"{option}")


def _parse(parse, flags, what, command):
    """parse(flags()) with `command`'s own parser; its one-line error becomes a GridError that
    blames `what` (the user's extra flags) or, when the flags fail without them, the grid."""
    def attempt(argv):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return parse(argv), None
        except SystemExit as e:  # argparse has printed its reason, or the help (exit 0)
            lines = err.getvalue().strip().splitlines()
            if e.code == 0 or not lines:
                return None, "-h/--help is not a flag of a run"
            return None, lines[-1].split(": error: ", 1)[-1]

    parsed, reason = attempt(flags())
    if reason is None:
        return parsed
    if attempt(flags(extra=False))[1] is not None:
        raise GridError(f"{command} refuses the grid's own settings: {reason}")
    raise GridError(f"{what}: {reason} (see {command} --help)")


def split_args(text, what):
    """The flags in `text`, split as a shell would; GridError naming the option `what` when
    its quotes do not close."""
    try:
        return tuple(shlex.split(text or ""))
    except ValueError as e:  # shlex: "No closing quotation", "No escaped character"
        raise GridError(f"{what} {text!r}: {str(e).lower()}") from None


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path, obj):
    """Whole or not at all, and a write that fails (a Ctrl-C in it) leaves no temporary file
    behind (grid.json, each run's experiment.json)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # default=str: a value JSON lacks (a numpy float, a path) is kept as text rather than
    # ending a grid that has trained for hours
    write_atomically(path, lambda f: json.dump(obj, f, indent=1, default=str), mode="w")
