"""`python -m hgan.evaluate`: evaluate one checkpoint, or compare evaluated runs.

    python -m hgan.evaluate --checkpoint RUN/checkpoints/last.pt \\
        [--metrics fvd,physics,tsne,samples,cyclic,appearance] [--data H5|ROOT] [--i3d PATH] --out DIR
    python -m hgan.evaluate compare RUN_DIR... [--out table.md]

--metrics defaults to all six. Bad input (a missing or corrupt file, a flag out of range,
data of another system than the checkpoint's) stops before any work with one error line
and exit code 2; --out is created only once the inputs are checked. Damaged data inside an
HDF5 file that opens stops the command the same way when it is read.

results.json and report.md name files (checkpoint, data, figures, caches, and any absolute
path in the run's config) relative to the --out directory, so they stay valid wherever the
run directory is moved or committed.
"""
import argparse
import functools
import json
import os
import signal
import sys
import time

import numpy as np
import torch

from hgan import _startup
from hgan.evaluate import appearance, figures, fvd, inputs, probe, report, structure
from hgan.cli_args import OneLineParser, int_at_least, prog
from hgan.data.interrupt import sigterm_interrupts
from hgan.evaluate.inputs import ALL_METRICS, InputError
from hgan.evaluate.atomic import write_atomically
from hgan.train.checkpoint import checkpoint_file


class _Parser(OneLineParser):
    # as hgan.data, hgan.sample and hgan.experiments say theirs
    error_name, script = "hgan.evaluate", "hgan-evaluate"


# The flags (dests) that only some metrics read. Given while --metrics selects none of those,
# one would change nothing, and results.json would still record it among the settings.
# --frames and --data are left out: the experiment grid gives them to every evaluation,
# whatever its --eval-metrics.
METRIC_FLAGS = {"i3d": ("fvd",), "fvd_videos": ("fvd",),
                "seeds": ("fvd", "physics", "appearance"),
                "physics_videos": ("physics", "appearance"),
                "probe_steps": ("physics",), "probe_width": ("physics",),
                "tsne_samples": ("tsne",), "tsne_iters": ("tsne",),
                "momenta_videos": ("cyclic",), "rollout_videos": ("cyclic",),
                "rollout_steps": ("cyclic",), "real": inputs.DATA_METRICS}


class _EvalParser(_Parser):
    """One checkpoint's parser: a metric's flag given without that metric is refused."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        given = _given_parser().parse_args(args)
        for dest, metrics in METRIC_FLAGS.items():
            if dest in given and not set(metrics) & set(parsed.metrics):
                chosen = f"--metrics {','.join(parsed.metrics)}"
                which = (f"the {metrics[0]} metric, which {chosen} does not select"
                         if len(metrics) == 1 else
                         f"the {', '.join(metrics[:-1])} and {metrics[-1]} metrics, none of "
                         f"which {chosen} selects")
                self.error(f"--{dest.replace('_', '-')} is for {which}: it would change "
                           f"nothing")
        return parsed

__all__ = ["ALL_METRICS", "InputError", "build_parser", "compare", "evaluate", "main",
           "physics_metrics", "settings"]

# The flags that change an evaluation's numbers, paths and the device aside. results.json
# keeps them ("settings"), so that a caller (the experiments grid) can tell whether a result
# answers the question it asks now.
NUMBER_FLAGS = ("frames", "seeds", "fvd_videos", "physics_videos", "probe_steps", "probe_width",
                "tsne_samples", "tsne_iters", "momenta_videos", "rollout_videos", "rollout_steps")


def settings(args, system=None) -> dict:
    """The NUMBER_FLAGS of parsed arguments, as results.json stores them; for an n-body
    `system` (a name) also the physics probe's version, since version 3 reads their states
    differently (bodies by colour) and older results of them are not comparable. The other
    systems' probes read what they always did: their results stay current."""
    out = {k: list(getattr(args, k)) if k == "seeds" else getattr(args, k) for k in NUMBER_FLAGS}
    if probe.is_nbody(system):
        out["probe_version"] = probe.PROBE_VERSION
    return out


def portable_paths(results, out_dir):
    """A copy of `results` with its paths relative to `out_dir`: the known path fields (as
    this process sees them: absolute or relative to the working directory) and every other
    string that is an absolute path (e.g. in the run's config). Relative strings elsewhere
    are left alone: their base (the training run's working directory) is unknown here."""
    base = os.path.abspath(out_dir)

    def rel(path):
        try:
            return os.path.relpath(os.path.abspath(path), base)
        except ValueError:  # another drive (Windows): no relative path exists
            return os.path.basename(path)

    def walk(v):
        if isinstance(v, str):
            return rel(v) if os.path.isabs(v) else v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    r = dict(results)
    for key in ("checkpoint", "data", "real_data"):
        if isinstance(r.get(key), str):
            r[key] = rel(r[key])
    r["figures"] = {k: rel(v) for k, v in r.get("figures", {}).items()}
    if isinstance(r.get("physics"), dict) and "probe_cache" in r["physics"]:
        r["physics"] = {**r["physics"], "probe_cache": rel(r["physics"]["probe_cache"])}
    return walk(r)


def _real_videos(ds, idx, frames, seed):
    """One random `frames` window per held-out trajectory: uint8 [N, T, H, W, 3], states, params."""
    rng = np.random.default_rng(seed)
    t = ds.frames.shape[1]
    if t < frames:
        raise ValueError(f"trajectories have {t} frames, fewer than --frames {frames}")
    starts = rng.integers(0, t - frames + 1, size=len(idx))
    vids = np.stack([np.asarray(ds.frames[i, s:s + frames]) for i, s in zip(idx, starts)])
    states = np.stack([np.asarray(ds.states[i, s:s + frames]) for i, s in zip(idx, starts)])
    params = {k: np.asarray(v)[idx] for k, v in ds.params.items()}
    return vids, states, params


def _generated_videos(generator, n, frames, seed, batch=64):
    gen = torch.Generator(device=generator.device).manual_seed(seed)
    out = [probe.generated_to_probe(generator.sample(min(batch, n - i), frames, generator=gen))
           for i in range(0, n, batch)]
    return np.concatenate(out)


def probe_settings(system, probe_steps, probe_width) -> dict:
    """The physics probe's training settings (its cache key: hgan.evaluate.probe)."""
    return dict(steps=probe_steps, angular=probe.angular_dims(system), width=probe_width,
                batch_size=64)


def cache_probe(data_path, *, probe_steps, probe_width, device="cpu", progress=False):
    """Train the physics probe of `data_path` (an HDF5 file) for these settings and cache it
    beside the file, as an evaluation would on its first use; a cache already there is kept.
    Returns the cache's path. (hgan.experiments' --probes: a grid's evaluations then start
    together instead of waiting for each system's first.)"""
    from hgan.data import get_system
    ds = inputs._open(data_path, "--data")
    system = get_system(ds.attrs["system"])
    probe.load_or_train_probe(data_path, ds.frames,
                              probe.ColourOrderedRows(system, ds.states, ds.color_index),
                              device=device, progress=progress,
                              **probe_settings(system, probe_steps, probe_width))
    return probe.probe_cache_path(data_path)


def physics_metrics(generator, ds, system, data_path, held_out, *, n, frames, seed, probe_steps,
                    probe_width, device="cpu", progress=True):
    """`ds` trains the probe (first 80%); `held_out` = (file, trajectory indices) it never saw."""
    pr = probe.load_or_train_probe(data_path, ds.frames,
                                   probe.ColourOrderedRows(system, ds.states, ds.color_index),
                                   device=device, progress=progress,
                                   **probe_settings(system, probe_steps, probe_width))
    real_ds, idx = held_out
    real, real_states, params = _real_videos(real_ds, idx[:n], frames, seed)
    colours = np.asarray(real_ds.color_index)[idx[:n]]
    real_states = probe.colour_ordered(system, real_states, colours)
    params = probe.params_colour_ordered(system, params, colours)
    rmse = probe.probe_rmse(pr, real, real_states)
    rel = rmse / real_states.reshape(-1, rmse.size).std(0)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in real])
    real_p, shuf_p = pr.states(real), pr.states(shuffled)
    gen_p = pr.states(_generated_videos(generator, n, frames, seed))
    gen_params = probe.constant_params(
        probe.params_colour_ordered(system, ds.params, ds.color_index), len(gen_p))
    half = len(real_p) // 2
    if half < 2:  # two halves of one video each have no covariance: no reference to give
        print(f"[evaluate] note: the real half-vs-half state distance needs >= 4 held-out videos, "
              f"got {len(real_p)}; it is left out", file=sys.stderr)
    drift = {
        "noise_floor": probe.summarize(probe.noise_floor(system, real_states[:, :-1], params, rmse, seed)),
        "real": probe.summarize(probe.energy_drift(system, real_p, params)),
        "shuffled_real": probe.summarize(probe.energy_drift(system, shuf_p, params)),
        "generated": probe.summarize(probe.energy_drift(system, gen_p, gen_params)),
        "relative_to": probe.drift_relative_to(system),
    }
    # The real reference compares two halves: the generated videos' value at the same sample
    # sizes (half of them against the second real half) is the one to set beside it, since a
    # Frechet distance's finite-sample bias grows as the samples shrink.
    fsd_of = functools.partial(probe.frechet_state_distance, angular=pr.angular)
    fsd = {"generated": fsd_of(real_p, gen_p),
           "shuffled_real": fsd_of(real_p, shuf_p),
           "real_half_vs_half": fsd_of(real_p[:half], real_p[half:2 * half])
           if half >= 2 else None,
           "generated_half_vs_real_half": fsd_of(real_p[half:2 * half], gen_p[:half])
           if half >= 2 else None,
           "angles": "cos, sin" if pr.angular else None}
    return {"probe_rmse": rmse.tolist(), "probe_rel_rmse": rel.tolist(), "num_videos": len(real),
            "frames": frames, "energy_drift": drift, "frechet_state_distance": fsd,
            "probe_cache": probe.probe_cache_path(data_path)}


def evaluate(args):
    """Evaluate one checkpoint (`args` as `main` parses them); returns what results.json
    holds (paths relative to args.out).

    Bad input raises InputError before anything is written; --out is created only then, and
    removed again if the evaluation fails before writing into it."""
    run = inputs.check(args)
    try:
        made = _make_dirs(args.out)
    except OSError as e:
        raise InputError(f"--out {args.out}: {e.strerror}") from None
    try:
        return _evaluate(args, run)
    except BaseException as e:
        for d in made:  # deepest first; one that holds anything stays, with its parents
            try:
                os.rmdir(d)
            except OSError:
                break
        if isinstance(e, fvd.NonFiniteVideos):
            raise InputError(f"--checkpoint {args.checkpoint}: {e}") from None
        raise


def _make_dirs(path):
    """Create `path`; returns the directories this created, deepest first."""
    made, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        made.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    return made


def _evaluate(args, run):
    metrics, device, generator = list(args.metrics), run.device, run.generator
    data_path, ds, held_out, model = run.data_path, run.ds, run.held_out, generator.config.model
    results = {"checkpoint": os.path.abspath(checkpoint_file(args.checkpoint)), "model": model,
               "iteration": run.iteration, "data": data_path, "device": device, "metrics": metrics,
               "figures": {}, "config": run.config, "system": run.system,
               "settings": settings(args, run.system)}
    system = None
    if ds is not None:
        from hgan.data import get_system
        system = get_system(run.system)
        results["real_data"] = run.real_path
        results["real_trajectories"] = len(held_out[1])
        results["real_identity"] = inputs.real_identity(held_out)
        # With no test.h5 (or --real) the real clips are --data's last 20%: no probe trained on
        # them, but the GAN did if --data is the file it trained on.
        results["real_seen_in_training"] = inputs.seen_in_training(run)
    fig = lambda stem: os.path.join(args.out, stem)  # noqa: E731
    t0 = time.time()

    if "fvd" in metrics:
        if run.detector is None:
            # The full reason (it may name an absolute $HGAN_I3D path) goes to stderr; the
            # results file stays free of machine-specific paths.
            results["fvd"] = {"skipped": f"the TorchScript I3D detector '{fvd.I3D_FILENAME}' "
                                         f"was not found (--i3d PATH or ${fvd.I3D_ENV}); see "
                                         f"docs/evaluation.md#fvd"}
            print(f"[evaluate] FVD skipped: {run.fvd_skipped}", file=sys.stderr)
        else:
            det, det_path = run.detector, run.detector_path
            real_frames = _Rows(held_out[0].frames, held_out[1])
            mu, sigma = fvd.real_stats(real_frames, det, data_path=results["real_data"],
                                       detector_path=det_path,
                                       num_videos=args.fvd_videos, frames=args.frames, seed=0,
                                       rows=held_out[1],
                                       cache_dir=os.path.join(os.path.dirname(os.path.abspath(data_path)),
                                                              "fvd_cache"), device=device,
                                       progress=args.progress)
            results["fvd"] = fvd.fvd_over_seeds(generator, det, mu, sigma, seeds=args.seeds,
                                                num_videos=args.fvd_videos, frames=args.frames,
                                                device=device, progress=args.progress)
            # the protocol scores held-out clips: not ones the GAN trained on
            results["fvd"]["canonical"] &= not results["real_seen_in_training"]
    if "physics" in metrics:
        results["physics"] = physics_metrics(generator, ds, system, data_path, held_out,
                                             n=args.physics_videos,
                                             frames=args.frames, seed=args.seeds[0],
                                             probe_steps=args.probe_steps,
                                             probe_width=args.probe_width, device=device,
                                             progress=args.progress)
    if "appearance" in metrics:
        # The same held-out clips and generated sample set as the physics metrics.
        real, _, _ = _real_videos(held_out[0], held_out[1][:args.physics_videos], args.frames,
                                  args.seeds[0])
        gen = _generated_videos(generator, args.physics_videos, args.frames, args.seeds[0])
        results["appearance"] = appearance.appearance_consistency(real, gen, system.num_colors)
    if "samples" in metrics:
        real, _, _ = _real_videos(held_out[0], held_out[1][:8], args.frames, 0)
        gen = _generated_videos(generator, 8, args.frames, 0)
        results["figures"]["samples_real"] = figures.save_sample_grid(real, fig("samples_real.png"),
                                                                      fig("samples_real.gif"))
        results["figures"][f"samples_{model}"] = figures.save_sample_grid(
            gen, fig(f"samples_{model}.png"), fig(f"samples_{model}.gif"))
    if "tsne" in metrics:
        pts = structure.motion_points(generator, n=args.tsne_samples, seed=0)
        emb = figures.tsne_embedding(pts, iterations=args.tsne_iters)
        results["figures"]["tsne"] = figures.plot_tsne(
            emb, fig(f"tsne_{model}.png"), title=f"{model}: motion t-SNE ({len(pts)} samples)",
            color=np.linalg.norm(pts, axis=1),
            color_label="|q|" if structure.has_hamiltonian(generator) else "|y|")
    if "cyclic" in metrics:
        am = structure.active_momenta(generator, n=args.momenta_videos, frames=args.frames)
        er = structure.energy_rollouts(generator, n=args.rollout_videos, steps=args.rollout_steps)
        results["cyclic"] = {"active_momenta": am, "energy_rollout": er and er["summary"]}
        if am is not None:
            if am["active_dims"] is not None:
                results["figures"]["active_momenta"] = figures.plot_active_momenta(
                    am["mean_abs_dpdt"], am["threshold"], fig(f"momenta_{model}.png"),
                    title=f"{model}: {am['active_dims']} active of {am['k']}")
            results["figures"]["energy_rollout"] = figures.plot_energy_rollout(
                er["steps"], er["forward"], er["backward"], fig(f"energy_{model}.png"),
                title=f"{model}: learned H along {args.rollout_steps}-step rollouts")
    results["seconds"] = round(time.time() - t0, 1)
    results = portable_paths(results, args.out)
    _remove_stale_figures(args.out, results["figures"])
    # Each file whole or not at all, results.json last: it is what marks an evaluation done
    # (the grid reads it), and an interrupt before it leaves none written, as the line says.
    _write_whole(os.path.join(args.out, "report.md"), report.checkpoint_report(results))
    _write_whole(os.path.join(args.out, "results.json"),
                 json.dumps(results, indent=1, default=float))
    print(f"[evaluate] wrote {args.out}/results.json and report.md in {results['seconds']} s")
    return results


def _write_whole(path, text):
    write_atomically(path, lambda f: f.write(text), mode="w")


def _remove_stale_figures(out, figures):
    """Remove the figures an earlier evaluation into `out` wrote (its results.json lists them)
    that this one did not write again (another metric set or model): beside the new
    report.md they would pass for this checkpoint's. Called once the new results exist."""
    try:
        with open(os.path.join(out, "results.json")) as f:
            old = json.load(f).get("figures")
    except (OSError, ValueError, AttributeError):
        return
    keep = {os.path.normpath(p) for p in figures.values()}
    for path in old.values() if isinstance(old, dict) else ():
        if (not isinstance(path, str) or os.path.isabs(path) or os.path.normpath(path) in keep
                or not path.endswith((".png", ".gif"))):
            continue
        for name in {path, os.path.splitext(path)[0] + ".gif"}:  # a sample grid's GIF too
            target = os.path.join(out, name)
            if os.path.dirname(os.path.abspath(target)) == os.path.abspath(out):
                try:
                    os.remove(target)
                except OSError:
                    pass


class _Rows:
    """Row subset of an h5 frame dataset, indexable like the dataset (for held-out clips)."""

    def __init__(self, ds, idx):
        self.ds, self.idx = ds, np.asarray(idx)
        self.shape = (len(self.idx),) + tuple(ds.shape[1:])

    def __getitem__(self, key):
        i, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        return self.ds[(int(self.idx[i]),) + rest]


def compare(args):
    """The comparison table of evaluated runs; a missing or repeated run is an InputError."""
    seen, rows = {}, []
    for d in args.run_dirs:
        try:
            # by the results.json it reads: RUN and RUN/eval are one run too
            key = os.path.realpath(report.results_path(d))
            if key in seen:
                raise InputError(f"{d} is given twice (as {seen[key]})")
            seen[key] = d
            rows.append(report.find_results(d))
        except (OSError, ValueError) as e:
            raise InputError(str(e)) from None
    table = report.compare_table(rows, names=[os.path.normpath(d) for d in args.run_dirs])
    header = ("# Comparison across runs\n\nEach number carries the training iteration it was "
              "measured at; runs trained for different lengths are not directly comparable.\n\n")
    text = header + table
    if args.out:
        try:
            with open(args.out, "w") as f:
                f.write(text)
        except OSError as e:
            raise InputError(f"--out {args.out}: {e.strerror}") from None
    print(text)
    return text


def main(argv=None):
    _startup.release(prog("hgan-evaluate", "hgan.evaluate"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        p = _Parser(prog=prog("hgan-evaluate", "python -m hgan.evaluate") + " compare",
                    description="Table-1-style markdown table of evaluated runs: rows are models "
                                "(one per seed where a model has several runs on a system), "
                                "columns systems")
        p.error_name, p.script = prog("hgan-evaluate", "hgan.evaluate") + " compare", None
        p.add_argument("run_dirs", nargs="+", help="directories holding results.json (or eval/results.json)")
        p.add_argument("--out", help="write the table to this markdown file as well")
        try:
            return compare(p.parse_args(argv[1:]))
        except InputError as e:
            p.error(str(e))
    p = build_parser()
    args = p.parse_args(argv)
    # SIGTERM ends an evaluation as Ctrl-C does, not silently with an empty --out left behind
    try:
        with sigterm_interrupts():
            return evaluate(args)
    except InputError as e:
        p.error(str(e))
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        print(f"{p.name()}: interrupted{by}; no results.json was written to {args.out} (an "
              f"--out this run created and left empty is removed)", file=sys.stderr)
        raise SystemExit(128 + signum) from None


def build_parser():
    """The parser of one checkpoint's evaluation (not of `compare`)."""
    return _add_options(_EvalParser(prog=prog("hgan-evaluate", "python -m hgan.evaluate"),
                                    description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter))


def _given_parser():
    """build_parser's options without defaults: a parse holds only the flags given."""
    p = _add_options(_Parser(prog=prog("hgan-evaluate", "python -m hgan.evaluate")))
    for action in p._actions:  # (not set_defaults: those reach the namespace anyway)
        action.default = argparse.SUPPRESS
    return p


def _add_options(p):
    positive = int_at_least(1)
    p.add_argument("--checkpoint", required=True,
                   help="a run's checkpoint (e.g. RUN/checkpoints/last.pt), or its run "
                        "directory RUN (its last.pt)")
    p.add_argument("--metrics", type=inputs.metric_list, default=",".join(ALL_METRICS),
                   help=f"comma list of {','.join(ALL_METRICS)} (default: all {len(ALL_METRICS)})")
    p.add_argument("--out", required=True, help="output directory for results.json, report.md, figures")
    p.add_argument("--data", help="Toy Physics HDF5 file, or a data root as train.py's --data "
                   "(its <system>/train.h5) (default: the one in the run's config)")
    p.add_argument("--i3d", help=f"path to {fvd.I3D_FILENAME} (default: ${fvd.I3D_ENV})")
    p.add_argument("--fvd-videos", type=int_at_least(2), default=fvd.PROTOCOL["num_videos"],
                   help="videos per side for FVD (default and protocol: %(default)s)")
    p.add_argument("--real", help="held-out real HDF5 (default: test.h5 beside --data if present, "
                   "else the last 20%% of --data's trajectories)")
    p.add_argument("--frames", type=int_at_least(2, " (frame pairs)"), default=fvd.PROTOCOL["frames"],
                   help="clip length (default and protocol: %(default)s; FVD needs >= 10)")
    p.add_argument("--seeds", type=inputs.seed_list, default=(0, 1, 2),
                   help="generated-set seeds (default: 0,1,2)")
    p.add_argument("--physics-videos", type=positive, default=256,
                   help=f"videos for the physics (>= {inputs.MIN_PHYSICS_VIDEOS}) and appearance "
                        "metrics (default: %(default)s)")
    p.add_argument("--probe-steps", type=positive, default=600,
                   help="probe training steps (first use; then cached beside the data; default: "
                        "%(default)s)")
    p.add_argument("--probe-width", type=positive, default=16,
                   help="probe CNN width (default: %(default)s)")
    p.add_argument("--tsne-samples", type=int_at_least(3, " (t-SNE's perplexity)"), default=1024,
                   help="latent samples in the t-SNE figure (default: %(default)s)")
    p.add_argument("--tsne-iters", type=int_at_least(figures.TSNE_MIN_ITERS, " (scikit-learn's minimum)"),
                   default=1000,
                   help=f"t-SNE iterations (>= {figures.TSNE_MIN_ITERS}; default: %(default)s)")
    p.add_argument("--momenta-videos", type=positive, default=256,
                   help="rollouts for mean |dp_i/dt| (default: %(default)s)")
    p.add_argument("--rollout-videos", type=positive, default=64,
                   help="rollouts for the learned energy (default: %(default)s)")
    p.add_argument("--rollout-steps", type=positive, default=512,
                   help="leapfrog steps of the energy rollouts (default: %(default)s)")
    p.add_argument("--system", help="system name when no dataset is read (tsne/cyclic only; "
                   "default: the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars of the probe's training and the I3D features "
                        "(default: on)")
    return p


def entry() -> int:
    """The `hgan-evaluate` console script (main returns the results, not an exit code)."""
    main()
    return 0
