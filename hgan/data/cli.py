"""`python -m hgan.data {generate, show, import-dm}`.

Every invalid value ends in one line `hgan.data: error: ...` and exit code 2. Ctrl-C or
SIGTERM ends generate and import-dm with one line, no partial file, and exit code 128 + the
signal's number (130, 143).
"""
import argparse
import os
import re
import signal
import sys
import time

import numpy as np

from hgan import _startup

from hgan.cli_args import OneLineParser, int_at_least, prog


def _name():
    """`hgan-data` when run as that console script, else `hgan.data`."""
    return prog("hgan-data", "hgan.data")


class _Parser(OneLineParser):
    error_name, script = "hgan.data", "hgan-data"


_nonneg, _positive = int_at_least(0), int_at_least(1)


def _unsupported_resolution(v):
    """Why frames of v px could never be trained on, or None. The sizes the models are built
    for (hgan.models.resolution_plan; importing it would import torch into this numpy-only
    tool)."""
    r, n = v, 0
    while r > 6 and r % 2 == 0:
        r, n = r // 2, n + 1
    if r not in (4, 6) or n < 2:
        return (f"unsupported resolution {v}: the models take 4*2^n or 6*2^n with n >= 2 "
                "(16, 24, 32, 48, 64, 96, ...)")
    return None


def _resolution(text):
    v = _positive(text)
    why = _unsupported_resolution(v)
    if why:
        raise argparse.ArgumentTypeError(why)
    return v


def _system(text):
    from hgan.data.systems import get_system
    try:
        return get_system(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser():
    from hgan.data.systems import SYSTEMS
    p = _Parser(prog=prog("hgan-data", "python -m hgan.data"), description="Toy Physics data engine")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="simulate and render a system into HDF5",
                       description="Simulate and render a system into "
                                   "<out>/<system>/{train,test}.h5.")
    g.add_argument("--system", type=_system, required=True,
                   help=f"one of {', '.join(SYSTEMS)} (required)")
    g.add_argument("--train", type=_nonneg, default=1000,
                   help="train trajectories; 0 skips the split (default: %(default)s)")
    g.add_argument("--test", type=_nonneg, default=200,
                   help="test trajectories; 0 skips the split (default: %(default)s)")
    g.add_argument("--frames", type=_positive, default=256,
                   help="frames per trajectory, dt = 0.05 s (default: %(default)s)")
    g.add_argument("--seed", type=_nonneg, default=0, help="data seed (default: %(default)s)")
    g.add_argument("--out", default="data", help="output directory (default: %(default)s)")
    g.add_argument("--resolution", type=_resolution, default=32,
                   help="frame size in pixels: 16, 24, 32, 48, 64, 96, ... "
                        "(default: %(default)s)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace splits that already exist (default: refuse)")
    s = sub.add_parser("show", help="write a PNG strip or an animated GIF of samples")
    s.add_argument("file", help="a generated <system>/<split>.h5")
    s.add_argument("--out", default=None,
                   help="strip.png or anim.gif (default: a PNG strip beside the file, "
                        "<split>.png)")
    s.add_argument("--n", type=_positive, default=8,
                   help="number of trajectories (default: %(default)s)")
    s.add_argument("--frames", type=_positive, default=None,
                   help="frames shown: in a PNG strip, spread evenly over the whole trajectory "
                        "(default: 16); in a GIF, the first N, played in real time (default: "
                        "every frame)")
    s.add_argument("--scale", type=_positive, default=2,
                   help="pixel magnification (default: %(default)s)")
    i = sub.add_parser("import-dm", help="convert the suite's train/test.tfrecord to HDF5",
                       description="Convert the suite's train/test.tfrecord to HDF5. Record "
                                   "framing is CRC-checked; record data is not (a pure-Python "
                                   "CRC, about 1 MB/s; see docs/data.md).")
    i.add_argument("dir", help="folder with features.txt, train.tfrecord, test.tfrecord")
    i.add_argument("--system", type=_system, default=None,
                   help="system name (default: the folder's name, <system> or the suite's "
                        "<system>_dt_0_05)")
    i.add_argument("--out", default="data", help="output directory (default: %(default)s)")
    i.add_argument("--overwrite", action="store_true",
                   help="replace splits that already exist (refused without it)")
    # argparse names a missing command by its dest ("required: cmd"); the choices say more
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return p


def show(path, out=None, n=8, frames=None, scale=2):
    """Rows = trajectories; PNG: `frames` (None: 16) evenly spaced frames per row, GIF: the
    first `frames` (None: all). out=None: <path without .h5>.png, beside the data it shows."""
    import imageio.v2 as imageio
    from hgan.data.h5io import open_h5
    from hgan.data.simulate import REAL_TIME_FPS
    if out is None:
        out = os.path.splitext(path)[0] + ".png"
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".gif"):
        raise ValueError(f"--out must end in .png or .gif, got {out!r}")
    with open_h5(path) as f:
        held = len(f)
        clips = f.frames[:min(n, held)]  # [n, T, R, R, 3]; a corrupt file fails here first
    if n > held:
        print(f"{_name()}: {path} holds {held} trajectories: showing all of them",
              file=sys.stderr)
    n = min(n, held)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # as hgan.sample does
    if frames is None and ext == ".png":
        frames = 16
    if frames is not None and frames > clips.shape[1]:
        print(f"{_name()}: {path} has {clips.shape[1]} frames per trajectory: showing all of "
              f"them", file=sys.stderr)
    if ext == ".png":
        idx = np.linspace(0, clips.shape[1] - 1, min(frames, clips.shape[1])).astype(int)
        strip = clips[:, idx]  # [n, F, R, R, 3]
        img = strip.transpose(0, 2, 1, 3, 4).reshape(n * strip.shape[2], -1, 3)
        img = img.repeat(scale, 0).repeat(scale, 1)
        imageio.imwrite(out, img)
    else:
        movie = clips[:, :frames].transpose(1, 0, 2, 3, 4)  # [T, n, R, R, 3] -> side by side
        movie = movie.transpose(0, 2, 1, 3, 4).reshape(movie.shape[0], movie.shape[2], -1, 3)
        movie = movie.repeat(scale, 1).repeat(scale, 2)
        imageio.mimsave(out, list(movie), duration=1000 / REAL_TIME_FPS, loop=0)  # real time
    return out


def import_dm(directory, out_dir, system=None, progress=True, overwrite=True):
    """Convert <directory>/{train,test}.tfrecord (with features.txt) into
    <out_dir>/<system>/{train,test}.h5, test first (as `generate`: a stopped import never
    leaves a train.h5 without its test.h5). Returns {split: path}. overwrite=False: an
    existing split file is a ValueError before anything is read."""
    from hgan.data.interrupt import StopSignals
    from hgan.data.simulate import DT
    from hgan.data.systems import get_system
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    if not os.path.exists(os.path.join(directory, "features.txt")):
        raise ValueError(f"{directory}: features.txt missing (the suite writes it beside the "
                         "tfrecords)")
    name, dt = suite_dir_name(directory)
    if dt is not None and not np.isclose(dt, DT, rtol=1e-9, atol=0):
        raise ValueError(f"{directory}: its name says the suite wrote these records at dt = "
                         f"{dt:g}; this project's data is at dt = {DT:g}: import the suite's "
                         f"{name}_dt_{str(DT).replace('.', '_')} folder")
    sysobj = get_system(system or name)
    out = {}
    splits = ("test", "train")
    for split in splits if not overwrite else ():
        path = os.path.join(os.fspath(out_dir), sysobj.name, split + ".h5")
        if os.path.exists(os.path.join(directory, split + ".tfrecord")) and os.path.exists(path):
            raise ValueError(f"{path} exists; --overwrite replaces it, or choose another --out")
    for split in splits:
        path = os.path.join(os.fspath(out_dir), sysobj.name, split + ".h5")
        with StopSignals() as stop:
            if _import_split(directory, split, path, sysobj, progress, stop):
                out[split] = path
    if not out:
        raise ValueError(f"{directory}: no train.tfrecord or test.tfrecord with records")
    return out


def suite_dir_name(directory):
    """(system, dt) a suite folder's name gives: datasets.py writes `<dataset>_dt_<dt>` with
    '.' as '_' (generate_locally.sh makes pendulum_dt_0_05 and pendulum_dt_0_1); dt is None
    for a folder named after the system alone."""
    name = os.path.basename(os.path.normpath(os.fspath(directory)))
    m = re.fullmatch(r"(.+)_dt_(\d+(?:_\d+)?)", name)
    return (m.group(1), float(m.group(2).replace("_", "."))) if m else (name, None)


def _import_split(directory, split, path, sysobj, progress, stop):
    """Write one split's records to path; False when the split has none."""
    from tqdm import tqdm

    from hgan.data.interrupt import discard
    from hgan.data.h5io import H5Writer, missing_folders
    from hgan.data.simulate import DT
    from hgan.data.tfrecord import iter_split, read_records
    src = os.path.join(directory, split + ".tfrecord")
    if not os.path.exists(src):
        return False
    n = sum(1 for _ in read_records(src))
    if n == 0:
        return False
    writer = first = None
    made = missing_folders(path)
    try:
        for j, traj in enumerate(tqdm(iter_split(directory, split), total=n,
                                      disable=not progress, desc=f"import {split}")):
            stop.check()
            img, x = traj["image"], traj["x"]
            if x.shape[-1] != 2 * sysobj.dof:
                raise ValueError(f"{src}: x has {x.shape[-1]} columns, {sysobj.name} needs "
                                 f"{2 * sysobj.dof}")
            if len(x) != len(img):
                raise ValueError(f"{src}: record {j}: x has {len(x)} states but image has "
                                 f"{len(img)} frames")
            if not np.isfinite(x).all():
                raise ValueError(f"{src}: record {j}: x holds a non-finite state")
            dt = _suite_dt(traj)
            if dt is not None and not 0.9 < dt / DT < 1.1:
                raise ValueError(f"{src}: record {j}: its states advance by dt = {dt:.3g} (x "
                                 f"against dx_dt); this project's data is at dt = {DT:g}: "
                                 f"import the suite's {sysobj.name}_dt_"
                                 f"{str(DT).replace('.', '_')} set")
            if first is not None and img.shape != first:
                raise ValueError(f"{src}: record {j}: image of {img.shape[0]} frames of "
                                 f"{img.shape[1]} px, record 0's of {first[0]} of {first[1]} px")
            if writer is None:
                if _unsupported_resolution(img.shape[1]):
                    raise ValueError(f"{src}: record {j}: frames of {img.shape[1]} px: "
                                     f"{_unsupported_resolution(img.shape[1])}")
                first = img.shape
                writer = H5Writer(path, sysobj, n, img.shape[0], img.shape[1], dict(
                    split=split, seed=-1, dt=DT, substeps=-1,
                    generator_version="imported from dm_hamiltonian_dynamics_suite"))
            params = {name: _suite_param(traj, sysobj, name, f"{src}: record {j}")[None]
                      for name in sysobj.param_names}
            writer.write(j, frames=img[None], states=x[None], params=params,
                         color_index=_suite_colors(traj, sysobj, src, j)[None],
                         offset=_suite_offset(traj, src, j)[None])
        writer.close(rejected=-1, inaccurate=-1)
    except BaseException:
        discard(writer, path, made)
        raise
    return True


def _suite_dt(traj):
    """The time step a record's states were written at, from the suite's exact derivative
    dx_dt: each step's x[t+1] - x[t] against the trapezoid dt (dx_dt[t] + dx_dt[t+1]) / 2,
    the median over steps (an angle wrapped once moves one step, not the answer). None
    without dx_dt or motion. A folder renamed after the system alone no longer says its dt;
    its states still do."""
    d = traj.get("dx_dt")
    x = traj["x"]
    if d is None or np.shape(d) != np.shape(x) or len(x) < 2:
        return None
    d = np.asarray(d, np.float64).reshape(len(x), -1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    mid = (d[1:] + d[:-1]) / 2
    den = (mid * mid).sum(1)
    step = ((x[1:] - x[:-1]) * mid).sum(1)
    ok = np.isfinite(den) & np.isfinite(step)
    ok &= den > 1e-12 * den[ok].max(initial=0.0)
    if not ok.any() or not (den[ok] > 0).any():
        return None
    return float(np.median(step[ok] / den[ok]))


def _suite_colors(traj, system, src, j):
    """The record's colour per body, checked against the system's palette now: a file
    holding others is refused by every reader (open_h5), and most likely comes from another
    set (pendulum_colors imported as pendulum)."""
    ci = np.asarray(traj.get("other/color_index", np.zeros(system.n_bodies)),
                    np.int64).reshape(-1)
    if ci.size != system.n_bodies or ci.min() < 0 or ci.max() >= system.num_colors:
        raise ValueError(f"{src}: record {j}: other/color_index is {ci.tolist()}, {system.name} "
                         f"needs {system.n_bodies} index{'es' if system.n_bodies > 1 else ''} "
                         f"in [0, {system.num_colors}) (another set? --system names it)")
    return ci.astype(np.int32)


def _suite_offset(traj, src, j):
    """The record's world shift [2]. ideal_mass_spring.py stores one value per trajectory
    (offset [n, 1]: zeros in the constant set) that its renderer adds to x and y alike."""
    off = np.asarray(traj.get("other/offset", np.zeros(2)), np.float64).reshape(-1)
    if off.size == 1:
        off = np.repeat(off, 2)
    if off.size != 2:
        raise ValueError(f"{src}: record {j}: other/offset has {off.size} values, not 2 (x, y)")
    return off


def _suite_param(traj, system, name, src):
    """One trajectory's parameter from the suite's `other/` entries, shaped
    system.param_shape(name). The suite stores n-body masses as one `m` of n values and the
    double pendulum's arms as `m_1`, `m_2`, `l_1`, `l_2`; a constant it left out takes its
    (fixed) value from the system."""
    shape = system.param_shape(name)
    size = shape[0] if shape else 1
    if "other/" + name in traj:
        v = np.asarray(traj["other/" + name], np.float64).reshape(-1)
    elif shape and all(f"other/{name}_{i}" in traj for i in range(1, size + 1)):
        v = np.concatenate([np.asarray(traj[f"other/{name}_{i}"], np.float64).reshape(-1)
                            for i in range(1, size + 1)])
    else:
        lo, hi = system.param_ranges[name]
        if lo != hi:
            raise ValueError(f"{src}: record lacks other/{name}, and {system.name} draws it "
                             f"from [{lo}, {hi}]")
        v = np.array([lo])
    if v.size == 1:
        v = np.repeat(v, size)
    if v.size != size:
        raise ValueError(f"{src}: other/{name} has {v.size} values, {system.name} needs {size}")
    # The values must be the system's: a set drawn from other ranges (pendulum_colors imported
    # as pendulum) would be trained and evaluated as physics it is not.
    lo, hi = system.param_ranges[name]
    tol = 1e-6 * max(abs(lo), abs(hi))
    if not ((v >= lo - tol) & (v <= hi + tol)).all():
        raise ValueError(f"{src}: other/{name} is {v.tolist()}, outside {system.name}'s "
                         f"[{lo}, {hi}] (another set? --system names it)")
    return v.reshape(shape)


def _check_generate(args):
    """ValueError for a generation that would do nothing, or silently replace a dataset (at
    the paper's sizes, hours of simulation)."""
    if args.train == 0 and args.test == 0:
        raise ValueError("--train 0 and --test 0: nothing to generate")
    if args.overwrite:
        return
    paths = {split: os.path.join(args.out, args.system, split + ".h5")
             for split, n in (("train", args.train), ("test", args.test)) if n}
    existing = [split for split, path in paths.items() if os.path.exists(path)]
    if len(existing) == 2:
        # Both asked for and both there (a dataset train.py generated): "--train 0 keeps it"
        # would only be refused next for test.h5, and keeping both leaves nothing to generate.
        raise ValueError(f"{paths['train']} and {paths['test']} exist; --overwrite replaces "
                         "them, or choose another --out")
    if existing:
        split = existing[0]
        raise ValueError(f"{paths[split]} exists; --overwrite replaces it, --{split} 0 keeps it "
                         "(after a stopped run: the split it finished), or choose another "
                         "--out")


def _kept(args, started):
    """For an interrupted `generate` or `import-dm` that finished a split (the test split
    comes first): which split files it wrote complete and which it did not write."""
    if args.cmd == "generate":
        system, wanted = args.system, (("test", args.test), ("train", args.train))
    elif args.cmd == "import-dm":
        system = args.system or suite_dir_name(args.dir)[0]
        wanted = [(s, os.path.exists(os.path.join(args.dir, s + ".tfrecord")))
                  for s in ("test", "train")]
    else:
        return ""
    done, not_done = [], []
    for split, n in wanted:
        path = os.path.join(args.out, system, split + ".h5")
        if n:
            fresh = os.path.exists(path) and os.path.getmtime(path) >= started - 1
            (done if fresh else not_done).append(path)
    if not done:
        return ""
    return (f"; {', '.join(done)} written complete"
            + (f", {', '.join(not_done)} not written" if not_done else ""))


def main(argv=None):
    _startup.release(_name())
    from hgan.data.h5io import DataFormatError
    from hgan.data.tfrecord import TFRecordError
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.time()
    try:
        if args.cmd == "generate":
            from hgan.data.generate import generate_dataset
            _check_generate(args)
            generate_dataset(args.system, args.out, train=args.train, test=args.test,
                             frames=args.frames, seed=args.seed, resolution=args.resolution)
        elif args.cmd == "show":
            print(show(args.file, args.out, args.n, args.frames, args.scale))
        else:
            for split, path in sorted(import_dm(args.dir, args.out, args.system,
                                                overwrite=args.overwrite).items()):
                print(f"{split}: {path}")
    except OSError as e:  # "<path>: Not a directory", not "[Errno 20] Not a directory: '<path>'"
        parser.error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except (DataFormatError, TFRecordError, ValueError) as e:
        parser.error(str(e).replace("\n", " "))
    except KeyboardInterrupt as e:
        # GenerationInterrupted carries the signal; a bare KeyboardInterrupt is Ctrl-C.
        signum = getattr(e, "signum", signal.SIGINT)
        what = {"generate": "generation", "import-dm": "import"}.get(args.cmd, args.cmd)
        print(f"{_name()}: {what} interrupted{_kept(args, started)}", file=sys.stderr,
              flush=True)
        return 128 + int(signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
