"""The checks `python -m hgan.evaluate` makes before any work or output.

Each bad input (a missing or corrupt file, a flag out of range, data that does not belong to
the checkpoint) becomes one `InputError` naming it, which the command line prints as
`hgan.evaluate: error: ...` with exit code 2. The one input found later is a damaged
chunk inside an HDF5 file that opens: its frames and states raise the same InputError when
the metrics read them. Other errors raised by the metrics are not caught: past these checks
they are bugs, and keep their tracebacks.
"""
import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np

from hgan.device import check_device
from hgan.evaluate import fvd, probe

ALL_METRICS = ("fvd", "physics", "tsne", "samples", "cyclic", "appearance")
DATA_METRICS = ("fvd", "physics", "samples", "appearance")  # those that read real videos
MIN_PHYSICS_VIDEOS = 2  # the Frechet state distance needs a covariance
# The probe reads one state from each frame pair: 2 frames give one state per video, whose
# energy has no spread to measure (every drift 0).
MIN_PHYSICS_FRAMES = 3


class InputError(ValueError):
    """A bad command-line input, described in one line."""


# Metrics drawn with the libraries of the `eval` extra (pyproject.toml), by import name;
# PIP_NAMES: what pip installs them as.
EXTRA_MODULES = {"tsne": ("sklearn", "matplotlib"), "cyclic": ("matplotlib",)}
PIP_NAMES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def missing_eval_extra(metrics, also=(), flag="--metrics"):
    """One line naming the `eval` extra when `metrics` (or the modules `also`) need a library
    that is not installed; None when all are there. Looked up, not imported (cheap). `flag`:
    the option that chose the metrics, in the caller's command line."""
    import importlib.util
    missing = {}  # module -> the metrics that need it
    for metric, modules in [(m, EXTRA_MODULES.get(m, ())) for m in metrics] + [(None, also)]:
        for module in modules:
            if importlib.util.find_spec(module) is None:
                missing.setdefault(module, [])
                if metric and metric not in missing[module]:
                    missing[module].append(metric)
    if not missing:
        return None
    used = sorted({m for ms in missing.values() for m in ms})
    return (f"{' and '.join(PIP_NAMES[m] for m in missing)} not installed"
            + (f" ({flag} {','.join(used)} need{'s' if len(used) == 1 else ''} "
               f"{'them' if len(missing) > 1 else 'it'})" if used else "")
            + ": install the eval extra, pip install -e '.[eval]' in the repository")


def metric_list(text):
    metrics = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        what = f"unknown metrics {unknown}" if unknown else f"no metric in {text!r}"
        raise argparse.ArgumentTypeError(f"{what}; choose from {','.join(ALL_METRICS)}")
    return metrics


def seed_list(text):
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    if len(set(seeds)) < len(seeds):  # one sample set twice: a spread over seeds of 0
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def resolve_device(name):
    """The device `name` (None: auto) resolves to, by the rule every --device follows."""
    try:
        return str(check_device("auto" if name is None else name))
    except ValueError as e:
        raise InputError(str(e)) from None


def load_run(path, device):
    """(generator in eval mode on `device`, run config, training iteration, the checkpoint's
    dataset_identity of its training set or None)."""
    from hgan.sample import generator_from_checkpoint
    from hgan.train.checkpoint import CheckpointError, load_checkpoint
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except (OSError, RuntimeError) as e:
        raise InputError(f"--checkpoint: {e}") from None
    if not (isinstance(ckpt, dict) and "generator" in ckpt
            and isinstance(ckpt.get("config"), dict) and "model" in ckpt["config"]):
        raise InputError(f"--checkpoint {path}: not a training checkpoint (no generator "
                         f"weights and model config)")
    try:
        generator = generator_from_checkpoint(ckpt, device)
    except CheckpointError as e:
        raise InputError(f"--checkpoint {path}: {e}") from None
    return generator, ckpt["config"], int(ckpt.get("iteration", -1)), ckpt.get("dataset")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them missing
        return os.path.abspath(a) == os.path.abspath(b)


def _identity(ds) -> dict:
    """An open data file's side of hgan.train.loop.dataset_identity (the path left out)."""
    return {"trajectories": len(ds), "frames": int(ds.frames.shape[1]),
            **{k: ds.attrs.get(k) for k in ("system", "resolution", "seed")}}


def seen_in_training(run):
    """Whether the real clips' file is the one the run trained on: the same file under any
    path (a link, a relative one), or a copy of it, by the identity its checkpoint kept
    (hgan.train.loop.dataset_identity: system, resolution, seed, trajectories, frames)."""
    trained_on = (run.config or {}).get("data_path")
    if trained_on and _same_file(run.real_path, trained_on):
        return True
    ident, real = run.trained_dataset, run.held_out[0]
    if not ident or real.attrs.get("split", "train") != "train":
        return False
    return all(ident.get(k) is None or ident[k] == v for k, v in _identity(real).items())


def real_identity(held_out) -> dict:
    """What results.json records of the real clips, so that `compare` can tell runs scored
    against other real data (another split, seed or size) from runs it may set side by side:
    the file's generation attributes, not its path, which differs between machines."""
    real, rows = held_out[0], held_out[1]
    return {"split": real.attrs.get("split"), "seed": real.attrs.get("seed"),
            "trajectories": int(len(rows)), "of": int(len(real)),
            "frames": int(real.frames.shape[1]), "resolution": real.attrs.get("resolution")}


class _CheckedReads:
    """A file's frames or states whose damaged chunks (DataFormatError, hgan.data.h5io) are
    bad input here: an InputError naming the flag.

    open_h5 decompresses only the first and last trajectories, so damage elsewhere in a file
    whose header is intact shows only when the evaluation reads it; checking every chunk up
    front would read the whole file for metrics that use a fraction of it."""

    def __init__(self, dataset, what):
        self.dataset, self.what = dataset, what
        self.shape, self.dtype = dataset.shape, dataset.dtype

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        from hgan.data.h5io import DataFormatError
        try:
            return self.dataset[key]
        except DataFormatError as e:
            raise InputError(f"{self.what}: {e}") from None


def _open(path, what):
    from hgan.data import open_h5
    from hgan.data.h5io import DataFormatError
    try:
        ds = open_h5(path)
    except DataFormatError as e:
        raise InputError(f"{what}: {e}") from None
    ds.frames = _CheckedReads(ds.frames, what)
    ds.states = _CheckedReads(ds.states, what)
    return ds


def _run_system(args, config):
    """The system the checkpoint was trained on (--system where its config lacks one)."""
    from hgan.data import get_system
    trained = config.get("system")
    if args.system:
        try:
            get_system(args.system)
        except ValueError as e:
            raise InputError(f"--system: {e}") from None
        if trained and args.system != trained:
            raise InputError(f"--system {args.system}, but the checkpoint was trained on {trained}")
    return args.system or trained


def _held_out(args, data_path, ds, system):
    """(file, trajectory indices, path) of the real clips no probe or (with test.h5) GAN saw."""
    real_path = args.real or os.path.join(os.path.dirname(data_path), "test.h5")
    same = _same_file(real_path, data_path)  # then its last 20%
    if same and args.real:
        print("[evaluate] note: --real is --data: the real clips are its last 20% of "
              "trajectories, since the physics probe trains on the first 80%", file=sys.stderr)
    if not same and (args.real or os.path.exists(real_path)):
        what = "--real" if args.real else "held-out data (test.h5 beside --data)"
        real_ds = _open(real_path, what)
        if real_ds.attrs["system"] != system:
            raise InputError(f"{what} {real_path} holds {real_ds.attrs['system']} data, "
                             f"--data holds {system}")
        if real_ds.frames.shape[2:] != ds.frames.shape[2:]:
            raise InputError(f"{what} {real_path} has {real_ds.frames.shape[2]}-pixel frames, "
                             f"--data {ds.frames.shape[2]}-pixel ones")
        return real_ds, np.arange(len(real_ds)), real_path
    if len(ds) < 2:
        raise InputError(f"--data {data_path} has {len(ds)} trajectory: with no test.h5 beside it "
                         f"(or --real), at least 2 are needed to hold some out")
    return ds, probe.split_indices(len(ds))[1], data_path


def _check_counts(args, held, detector_path):
    n, t = len(held[1]), held[0].frames.shape[1]
    if n == 0:
        raise InputError(f"the held-out set {held[2]} has no trajectories")
    if args.frames > t:
        raise InputError(f"--frames {args.frames} is longer than the held-out trajectories "
                         f"({t} frames in {held[2]})")
    if "physics" in args.metrics and args.frames < MIN_PHYSICS_FRAMES:
        raise InputError(f"--frames {args.frames}: the physics metrics need at least "
                         f"{MIN_PHYSICS_FRAMES} (the probe reads a state from each frame pair; "
                         f"one state per video has no energy drift to measure)")
    if "physics" in args.metrics and min(n, args.physics_videos) < MIN_PHYSICS_VIDEOS:
        raise InputError(f"the physics metrics need at least {MIN_PHYSICS_VIDEOS} held-out videos; "
                         f"got {min(n, args.physics_videos)} (--physics-videos "
                         f"{args.physics_videos}, {n} held-out trajectories in {held[2]})")
    if {"physics", "appearance"} & set(args.metrics) and n < args.physics_videos:
        print(f"[evaluate] note: --physics-videos {args.physics_videos}, but {held[2]} holds out "
              f"{n} trajectories: the real side of the physics and appearance metrics has {n} "
              f"videos (one clip each), the generated side {args.physics_videos}",
              file=sys.stderr)
    if detector_path:
        if args.frames < fvd.MIN_FRAMES:
            raise InputError(f"--frames {args.frames}: FVD's I3D needs at least {fvd.MIN_FRAMES}")
        if args.fvd_videos > n:
            raise InputError(f"--fvd-videos {args.fvd_videos}: the held-out set {held[2]} has {n} "
                             f"trajectories (one clip each): lower --fvd-videos or pass a larger --real")


def _detector(args, device):
    """(detector, its path, None), or (None, None, why) when FVD is skipped: without --i3d
    and with no file at $HGAN_I3D. A missing --i3d is an error."""
    try:
        path = fvd.resolve_detector_path(args.i3d)
    except FileNotFoundError as e:
        if args.i3d:
            raise InputError(str(e)) from None
        return None, None, str(e)
    try:
        return fvd.load_detector(path, device), path, None
    except (RuntimeError, ValueError) as e:
        raise InputError(f"--i3d {path}: not a TorchScript detector ({str(e).split('. ')[0]})") from None


def _note_regenerated(run):
    """One line when the file at the run's own data path is no longer the set it trained on
    (regenerated with other sizes, say): a resume refuses that file, an evaluation may use it
    (its real clips and probe are of the same system; results.json records which)."""
    ident = run.trained_dataset
    if not ident:
        return
    changed = [f"{k} {ident[k]} -> {v}" for k, v in _identity(run.ds).items()
               if ident.get(k) is not None and ident[k] != v]
    if changed:
        print(f"[evaluate] note: {run.data_path} is not the set the run trained on "
              f"({', '.join(changed)}); evaluating with it as it is now (--data PATH chooses "
              "another)", file=sys.stderr)


def _data_file(path, system):
    """--data as given: an HDF5 file, or the data root `train.py --data` takes, whose
    <system>/train.h5 is the run's training set (a root without one stays a directory, and
    its error lists the data files in it)."""
    if system and os.path.isdir(path):
        inside = os.path.join(path, system, "train.h5")
        if os.path.isfile(inside):
            return inside
    return path


def check(args):
    """Everything the evaluation reads, opened and checked against the checkpoint and flags."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError(f"--out {args.out} is a file, not a directory")
    missing = missing_eval_extra(args.metrics)
    if missing:
        raise InputError(missing)
    device = resolve_device(args.device)
    generator, config, iteration, trained_dataset = load_run(args.checkpoint, device)
    system = _run_system(args, config)
    data = _data_file(args.data, system) if args.data else None
    run = SimpleNamespace(device=device, generator=generator, config=config, iteration=iteration,
                          trained_dataset=trained_dataset,
                          system=system or "unknown", data_path=data or config.get("data_path"),
                          ds=None, held_out=None, real_path=None, detector=None, detector_path=None,
                          fvd_skipped=None)
    if not any(m in args.metrics for m in DATA_METRICS):
        return run
    if data and not os.path.exists(data):
        raise InputError(f"--data {data}: no such file")
    if not run.data_path or not os.path.exists(run.data_path):
        raise InputError(f"the run's dataset was not found ({run.data_path!r}, from its "
                         f"checkpoint): pass --data PATH.h5")
    run.ds = _open(run.data_path, "--data")
    found = run.ds.attrs["system"]
    if system and found != system:
        raise InputError(f"--data {run.data_path} holds {found} data, but the checkpoint was "
                         f"trained on {system}")
    run.system = found
    size = generator.config.resolution
    if run.ds.frames.shape[2] != size:
        raise InputError(f"--data {run.data_path} has {run.ds.frames.shape[2]}-pixel frames, the "
                         f"checkpoint's generator makes {size}-pixel ones")
    held = _held_out(args, run.data_path, run.ds, found)
    run.held_out, run.real_path = held[:2], held[2]
    if "fvd" in args.metrics:
        run.detector, run.detector_path, run.fvd_skipped = _detector(args, device)
        if run.detector is None and set(args.metrics) == {"fvd"}:
            # skipped beside other metrics; alone, an evaluation of nothing that exits 0
            raise InputError(f"--metrics fvd: {run.fvd_skipped}")
    _check_counts(args, held, run.detector_path)
    if not args.data:   # after the checks: bad input stays one error line
        _note_regenerated(run)
    return run
