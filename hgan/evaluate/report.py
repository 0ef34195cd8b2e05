"""Markdown reports: one evaluated checkpoint, and a Table-1-style comparison of runs."""
import json
import os

from hgan.evaluate import structure
from hgan.evaluate.probe import floored_drift, is_angular, is_nbody

POOR_PROBE = 0.5  # relative RMSE above which the probe explains under 3/4 of a state's variance


def _fmt(x, digits=4):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _pct(fraction):
    """A fraction of the videos as a percentage (as compare gives it); n/a when absent."""
    return "n/a" if fraction is None else f"{fraction:.0%}"


def checkpoint_report(results):
    """Markdown for one results.json dict."""
    r = results
    lines = [f"# Evaluation: {r['model']} on {r['system']}", "",
             f"- checkpoint: `{r['checkpoint']}` (iteration {r['iteration']})",
             f"- data: `{r['data']}`", f"- device: {r['device']}"]
    if r.get("real_seen_in_training"):
        lines += ["- real clips: from the file the run trained on (the GAN saw them)"]
    lines += [""]
    fvd = r.get("fvd")
    if fvd:
        lines += ["## FVD (StyleGAN-V protocol)", ""]
        if "skipped" in fvd:
            lines += [f"Not computed: {fvd['skipped']}", ""]
        else:
            note = ("" if fvd["canonical"] else " (NOT the canonical protocol: 2048 x 16 "
                    "held-out clips)")
            lines += [f"FVD = {fvd['fvd_mean']:.2f} ± {fvd['fvd_std']:.2f} over seeds {fvd['seeds']}, "
                      f"{fvd['num_videos']} videos x {fvd['frames']} frames{note}.", ""]
    ph = r.get("physics")
    if ph:
        d = ph["energy_drift"]
        lines += ["## Physics probe", ""] + _physics_caveats(ph) + [
                  f"Probe RMSE on held-out real data per state dimension (q..., p...): "
                  f"{', '.join(_fmt(v, 3) for v in ph['probe_rmse'])} "
                  f"(relative to the state std: {', '.join(_fmt(v, 3) for v in ph['probe_rel_rmse'])}).", "",
                  f"{ph['num_videos']} videos of {ph['frames']} frames; energy drift = std/"
                  f"{d.get('relative_to', 'max(|mean H|, energy scale)')} of the true Hamiltonian "
                  "H of probed states along each video (median over videos).", "",
                  "| videos | energy drift (median) | Frechet state distance to real |",
                  "|---|---|---|",
                  f"| probe noise floor (true states + probe error) | {_fmt(d['noise_floor']['median'])} | |",
                  f"| {_real_label(r)} | {_fmt(d['real']['median'])} | {_half_vs_half(ph)} |",
                  f"| real, frames shuffled in time | {_fmt(d['shuffled_real']['median'])} | "
                  f"{_fmt(ph['frechet_state_distance']['shuffled_real'])} |",
                  f"| generated | {_fmt(d['generated']['median'])} | "
                  f"{_fmt(ph['frechet_state_distance']['generated'])}{_gen_half(ph)} |", ""]
    ap = r.get("appearance")
    if ap:
        lines += ["## Appearance consistency", "",
                  "Per video: the sum over palette colours of the std over time of that colour's "
                  "foreground pixel mass, relative to one real object's mass "
                  f"({_fmt(ap['object_mass_pixels'], 3)} pixels). A video is flagged above "
                  f"{_fmt(ap['flag_threshold'], 3)} (an object fading, splitting or appearing); "
                  "blank when its mean mass is under a tenth of one object's (nothing drawn). "
                  "Speed: the median distance in pixels a colour's centroid moves per frame (near "
                  "0 for a generator that draws still videos). Spread: the median distance in "
                  "pixels between two videos' centroids, frame by frame (near 0 for a generator "
                  "that draws one video whatever its noise).", "",
                  "| videos | variation (median) | flagged (% of videos) | blank (% of videos) | "
                  "foreground mass vs real | speed (px/frame) | spread (px) |",
                  "|---|---|---|---|---|---|---|",
                  f"| {_real_label(r)} | {_fmt(ap['real']['median'], 3)} | "
                  f"{_pct(ap['real_flagged'])} | {_pct(ap.get('real_blank'))} | 1 | "
                  f"{_motion(ap, 'real')} | {_spread(ap, 'real')} |",
                  f"| generated | {_fmt(ap['generated']['median'], 3)} | "
                  f"{_pct(ap['generated_flagged'])} | {_pct(ap.get('generated_blank'))} | "
                  f"{_fmt(ap['mass_ratio'], 3)} | {_motion(ap, 'generated')} | "
                  f"{_spread(ap, 'generated')} |", ""]
    cyc = r.get("cyclic")
    if cyc:
        lines += ["## Learned structure", ""]
        if cyc.get("active_momenta") is None:
            lines += ["No Hamiltonian in this motion module (GRU): not applicable.", ""]
        else:
            am, er = cyc["active_momenta"], cyc["energy_rollout"]
            above = ("" if am["threshold"] is None else
                     f" above {am['threshold']:.3g}, the larger of "
                     f"{structure.ACTIVE_FRACTION:.0%} of the largest and {am['floor']:.3g}, the "
                     f"rate that moves a momentum by {structure.ACTIVE_FLOOR:.0%} of the momenta's "
                     f"spread over the rollout")
            lines += [f"Active momentum dimensions (mean |dp_i/dt|{above}): "
                      f"**{structure.active_text(am)}**.", "",
                      f"Learned energy over {er['steps']} leapfrog steps (dt = {er['dt']:+g}), median "
                      f"over {er['n']} rollouts of max |H_t - H_0|/|H_0|: forward "
                      f"{_fmt(er['forward_max_abs_rel_drift'], 3)}, backward "
                      f"{_fmt(er['backward_max_abs_rel_drift'], 3)}.", ""]
    figs = r.get("figures", {})
    if figs:
        lines += ["## Figures", ""]
        for name, path in sorted(figs.items()):
            lines.append(f"![{name}]({os.path.basename(path)})")
        lines.append("")
    return "\n".join(lines)


def _physics_caveats(ph):
    """What the physics numbers cannot say here, in words: a probe that reads the state
    poorly, and generated videos that drift no more than real ones."""
    out = []
    worst = max(ph["probe_rel_rmse"], default=0.0)
    if worst > POOR_PROBE:
        out += [f"**The probe reads the state poorly here** (relative RMSE up to {worst:.2f}, "
                f"above {POOR_PROBE:g}: it explains under 3/4 of a state's variance): the energy "
                "drift and state distance below resolve little. A larger training set for it "
                "(--data) or more --probe-steps may help.", ""]
    d = ph["energy_drift"]
    real = max(d["real"]["median"], d["noise_floor"]["median"])
    if d["generated"]["median"] <= real:
        out += [f"Generated videos drift no more than real ones ({_fmt(d['generated']['median'], 3)}"
                f" <= {_fmt(real, 3)}, the larger of real's and the noise floor): this measure "
                "cannot tell their motion from real motion. A still or empty video can score "
                "as low: read the samples and the appearance metric beside it.", ""]
    return out


def _motion(ap, who):
    """Median speed, and for generated videos its ratio to real's; n/a in results written
    before the motion metric."""
    m = ap.get("motion")
    if not m:
        return "n/a"
    text = _fmt(m[who]["median"], 3)
    return text + (f" ({_fmt(ap['motion_ratio'], 2)} x real)" if who == "generated" else "")


def _spread(ap, who):
    """The spread, and for generated videos its ratio to real's; n/a where results have
    none (before the metric, or fewer than two videos)."""
    m = (ap.get("spread") or {}).get(who)
    if m is None:
        return "n/a"
    ratio = ap.get("spread_ratio")
    return _fmt(m, 3) + (f" ({_fmt(ratio, 2)} x real)" if who == "generated" and ratio is not None
                         else "")


def _real_label(r):
    return ("real, from the training file (the GAN saw them)"
            if r.get("real_seen_in_training") else "real, held-out")


def _half_vs_half(physics):
    v = physics["frechet_state_distance"]["real_half_vs_half"]
    if v is None:
        return f"n/a (half vs half needs >= 4 videos, {physics['num_videos']} held out)"
    return f"{_fmt(v)} (half vs half)"


def _gen_half(physics):
    v = physics["frechet_state_distance"].get("generated_half_vs_real_half")
    return "" if v is None else f"; {_fmt(v)} (half vs half, to set beside real's)"


def raw_angles(r):
    """True for an angle system's results.json written before the Frechet state distance took
    angles as (cos, sin) (no "angles" key): raw wrapped angles, another metric."""
    fsd = (r.get("physics") or {}).get("frechet_state_distance") or {}
    return "angles" not in fsd and is_angular(r.get("system"))


def bodies_by_index(r):
    """True for an n-body system's results.json written before the probe listed bodies by
    colour (probe version < 3): that probe could not read which body is which, so its
    physics numbers measure the probe, not the videos."""
    version = (r.get("settings") or {}).get("probe_version", 2)
    return is_nbody(r.get("system")) and version < 3


_BY_INDEX = "n/a (n-body states in index order: older results, not comparable)"
_FLOORED = "n/a (drift against the energy scale: older results, not comparable)"


def _drift_cell(r):
    if bodies_by_index(r):
        return _BY_INDEX
    if floored_drift(r):
        return _FLOORED
    d = r["physics"]["energy_drift"]
    gen = d["generated"]["median"]
    refs = [d[k]["median"] for k in ("real", "noise_floor") if k in d]
    real = max(refs) if refs else None
    return _fmt(gen, 3) + (f" (at or below the real level {_fmt(real, 3)})"
                           if real is not None and gen <= real else "")


def _fsd_cell(r):
    fsd = r["physics"]["frechet_state_distance"]
    if bodies_by_index(r):
        return _BY_INDEX
    if raw_angles(r):
        return "n/a (raw angles: older results, not comparable)"
    return (_fmt(fsd.get("generated_half_vs_real_half"), 3)
            + f" ({_fmt(fsd['generated'], 3)})")


def results_path(run_dir):
    """RUN/results.json, else RUN/eval/results.json; FileNotFoundError naming both."""
    for cand in (os.path.join(run_dir, "results.json"), os.path.join(run_dir, "eval", "results.json")):
        if os.path.isfile(cand):
            return cand
    raise FileNotFoundError(f"no results.json in {run_dir} or {run_dir}/eval: run "
                            f"`python -m hgan.evaluate --checkpoint ... --out {run_dir}/eval` first")


# What compare_table reads of every results.json (the rest it reads where present).
REQUIRED_KEYS = ("model", "system", "iteration")


def find_results(run_dir):
    """The results.json of `run_dir` (results_path); ValueError naming the file when it is
    not valid JSON or not an evaluation's results (lacks REQUIRED_KEYS)."""
    path = results_path(run_dir)
    with open(path) as f:
        try:
            r = json.load(f)
        except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(r, dict) or k not in r]
    if missing:
        raise ValueError(f"{path}: not an evaluation's results (no {', '.join(missing)}); "
                         f"python -m hgan.evaluate writes them")
    return r


METRICS = [
    ("FVD (lower is better; \"not canonical\": other than the protocol's 2048 videos of 16 "
     "frames, or real clips the GAN trained on)",
     lambda r: None if not r.get("fvd") or "skipped" in r["fvd"]
     else f"{r['fvd']['fvd_mean']:.1f} ± {r['fvd']['fvd_std']:.1f}"
     + ("" if r["fvd"].get("canonical", True) else " (not canonical)")),
    ("energy drift of probed generated videos (median std/|mean| of true H; lower is better, "
     "down to the real level: the larger of real videos' drift and the probe's noise floor)",
     lambda r: r.get("physics") and _drift_cell(r)),
    ("Frechet state distance, probed generated vs real trajectories, half vs half as real's "
     "reference (all videos in parentheses; lower is better)",
     lambda r: r.get("physics") and _fsd_cell(r)),
    ("appearance variation of generated videos (median; real videos score near 0; lower is better)",
     lambda r: r.get("appearance") and
     f"{r['appearance']['generated']['median']:.3g} (flagged "
     f"{r['appearance']['generated_flagged']:.0%}"
     + (f", blank {r['appearance']['generated_blank']:.0%}"
        if "generated_blank" in r["appearance"] else "") + ")"),
    ("active latent momentum dimensions",
     lambda r: (r.get("cyclic") or {}).get("active_momenta") and
     structure.active_text(r["cyclic"]["active_momenta"])),
    ("learned-energy drift over the rollout, forward / backward (median max |dH|/|H0|)",
     lambda r: (r.get("cyclic") or {}).get("energy_rollout") and
     f"{r['cyclic']['energy_rollout']['forward_max_abs_rel_drift']:.3g} / "
     f"{r['cyclic']['energy_rollout']['backward_max_abs_rel_drift']:.3g}"),
]


def _row_labels(results_list, names):
    """Each run's row: its model, or where that model has several runs on one system (seeds,
    reruns) its model and seed, or its directory when seeds repeat, so no run hides another.
    Returns (sort key, label) per run."""
    rows = [((r["model"],), r["model"]) for r in results_list]
    for model in {r["model"] for r in results_list}:
        runs = [i for i, r in enumerate(results_list) if r["model"] == model]
        systems = [results_list[i]["system"] for i in runs]
        if len(set(systems)) == len(runs):
            continue
        seeds = [(results_list[i].get("config") or {}).get("seed") for i in runs]
        by_seed = None not in seeds and len(set(zip(systems, seeds))) == len(runs)
        for i, seed in zip(runs, seeds):
            rows[i] = (((model, 0, int(seed), ""), f"{model} seed {seed}") if by_seed
                       else ((model, 1, 0, names[i]), f"{model} ({names[i]})"))
    return rows


def compare_table(results_list, names=None):
    """Markdown tables, one per metric: rows are models, columns systems, each number with
    the iteration count it was measured at (runs of different length are not comparable).
    A model with several runs on one system gets a row per seed (or per run, named by
    `names`, its run directories, when seeds repeat)."""
    names = names or [f"run {i + 1}" for i in range(len(results_list))]
    labels = _row_labels(results_list, names)
    systems = sorted({r["system"] for r in results_list})
    models = [label for _, label in sorted(set(labels))]
    cells = {(label, r["system"]): r for (_, label), r in zip(labels, results_list)}
    out = []
    for title, get in METRICS:
        rows = []
        for m in models:
            row = [m]
            for s in systems:
                r = cells.get((m, s))
                v = get(r) if r else None
                row.append(f"{v} ({r['iteration']} it)" if v else "n/a")
            rows.append(row)
        if all(c == "n/a" for row in rows for c in row[1:]):
            continue
        out += [f"### {title}", "", "| model | " + " | ".join(systems) + " |",
                "|---" * (len(systems) + 1) + "|"] + ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(out + _settings_that_differ(results_list, labels)
                     + _real_data_that_differs(results_list, labels))


# The metrics each setting changes (results.json keys; tsne is a figure): a setting differs
# only between runs that computed one of them (probe_steps is stored by an appearance-only
# evaluation too, where it changes nothing). Settings not listed change every metric.
SETTING_METRICS = {"fvd_videos": ("fvd",), "physics_videos": ("physics", "appearance"),
                   "probe_steps": ("physics",), "probe_width": ("physics",),
                   "probe_version": ("physics",), "tsne_samples": ("tsne",),
                   "tsne_iters": ("tsne",), "momenta_videos": ("cyclic",),
                   "rollout_videos": ("cyclic",), "rollout_steps": ("cyclic",)}


# The metrics whose numbers are distances to the real clips (samples only draws them)
REAL_DATA_METRICS = ("fvd", "physics", "appearance")


def _computed(r, metrics):
    """Whether `r` holds one of `metrics` (a result or a figure); a skipped FVD
    ({"skipped": why}, no detector) is not computed."""
    def has(m):
        v = r.get(m) or (r.get("figures") or {}).get(m)
        return bool(v) and not (isinstance(v, dict) and "skipped" in v)
    return any(has(m) for m in metrics)


def _settings_that_differ(results_list, labels):
    """A table of the evaluation settings (results.json "settings") that are not the same for
    every run that computed a metric they change: numbers measured with other video counts
    or probe training differ for that reason alone."""
    sets = [r.get("settings") or {} for r in results_list]

    def applies(r, k):  # the run computed a metric setting k changes
        return k not in SETTING_METRICS or _computed(r, SETTING_METRICS[k])

    def differs(k):
        return len({repr(st.get(k)) for r, st in zip(results_list, sets) if applies(r, k)}) > 1

    def cell(r, st, k):
        return _fmt(st.get(k)) if applies(r, k) else "(not computed)"

    keys = sorted(k for k in {k for st in sets for k in st} if differs(k))
    if not keys:
        return []
    rows = sorted(((label, r["system"], [cell(r, st, k) for k in keys]) for (_, label), r, st in
                   zip(labels, results_list, sets)), key=lambda row: row[:2])
    return (["### Evaluation settings that differ between these runs", "",
             "Their numbers are not comparable across these settings.", "",
             "| model | system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
            + [f"| {label} | {system} | " + " | ".join(cells) + " |"
               for label, system, cells in rows] + [""])


def _real_text(r):
    i = r.get("real_identity")
    if not i:
        return "not recorded (older results)"
    text = (f"{i['split'] or '?'} split, seed {_fmt(i['seed'])}: {i['trajectories']} of "
            f"{i['of']} trajectories x {i['frames']} frames, {_fmt(i['resolution'])} px")
    return text + (", seen in training" if r.get("real_seen_in_training") else "")


def _real_data_that_differs(results_list, labels):
    """A table of the runs of each system whose real clips were not the same data: their
    physics, appearance and FVD numbers are distances to different references. A run that
    computed none of them (--metrics cyclic, a skipped FVD) has no real data to differ."""
    rows = []
    for system in sorted({r["system"] for r in results_list}):
        runs = [(label, r) for (_, label), r in zip(labels, results_list)
                if r["system"] == system and _computed(r, REAL_DATA_METRICS)]
        # differing records only: an older result without one may well share the others'
        # data, and is listed (as not recorded) only beside records that differ
        if len({_real_text(r) for _, r in runs if r.get("real_identity")}) > 1:
            rows += sorted((label, system, _real_text(r)) for label, r in runs)
    if not rows:
        return []
    return (["### Real data that differs between runs of one system", "",
             "Their numbers are measured against different real videos.", "",
             "| model | system | real clips |", "|---|---|---|"]
            + [f"| {label} | {system} | {text} |" for label, system, text in rows] + [""])
