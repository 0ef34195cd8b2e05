"""compare.md: the grid's Table 1, the other metrics, and the paper's claims as checks.

Every number carries the iterations and the training time of the run(s) behind it: runs of
different length are not comparable, and a claim checked after a few thousand iterations
says little about the paper's models. With several seeds a cell is mean ± std over seeds,
when they reached the same iteration; otherwise it lists each seed's value, and gets no
verdict.
"""

import numpy as np

from hgan.evaluate.probe import floored_drift
from hgan.evaluate.report import bodies_by_index, raw_angles
from hgan.evaluate.structure import ACTIVE_FLOOR, ACTIVE_FRACTION, active_text
from hgan.model_kinds import baseline_model, hamiltonian_models

# (key, title, getter on results.json, lower is better)
METRICS = [
    ("fvd", "FVD (StyleGAN-V's I3D; the protocol's 2048 videos only where each run's "
     "eval/report.md does not say fewer: with fewer the values run high)",
     lambda r: None if not r.get("fvd") or "skipped" in r["fvd"] else r["fvd"]["fvd_mean"], True),
    ("energy_drift", "Energy drift of probed generated videos (median std/|mean| of the true H)",
     lambda r: _drift(r, "generated"), True),
    ("state_distance", "Frechet state distance, probed generated vs real trajectories (half of "
     "the videos against half of the real ones, the sizes of the real half-vs-half reference)",
     # only this key: older results' full-size value (another bias) is left out, not mixed in
     lambda r: _state_distance(r, "generated_half_vs_real_half"), True),
    ("appearance", "Appearance variation of generated videos (median; objects fading, "
     "splitting or appearing)", lambda r: _get(r, "appearance", "generated", "median"), True),
    ("flagged", "Fraction of generated videos flagged for appearance",
     lambda r: _get(r, "appearance", "generated_flagged"), True),
    ("mass_ratio", "Foreground pixel mass of generated videos relative to real (1 is real; "
     "near 0: no objects drawn)", lambda r: _get(r, "appearance", "mass_ratio"), None),
    ("motion_ratio", "Object motion of generated videos relative to real (median centroid "
     "speed; 1 is real; near 0: still videos)", lambda r: _get(r, "appearance", "motion_ratio"),
     None),
    ("spread_ratio", "Spread of generated videos relative to real (median distance between two "
     "videos' object trajectories; 1 is real; near 0: one video whatever the noise)",
     lambda r: _get(r, "appearance", "spread_ratio"), None),
]
CHECKED = ("fvd", "energy_drift", "state_distance", "appearance")
# What the same metric gives on held-out real data (one value per system; any run has it).
REAL = {
    "energy_drift": ("real held-out videos (probe noise floor)", lambda r: _pair(
        _drift(r, "real"), _drift(r, "noise_floor"))),
    "state_distance": ("real: half vs half", lambda r: _state_distance(r, "real_half_vs_half")),
    "appearance": ("real held-out videos", lambda r: _get(r, "appearance", "real", "median")),
    "flagged": ("real held-out videos", lambda r: _get(r, "appearance", "real_flagged")),
}
# The paper's structural claim: with L_cyc the pendulum uses one momentum dimension.
ACTIVE_CLAIM = {("pendulum", "hgan"): 1}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _probed(r, *keys):
    """A physics-probe number of results.json; None for an n-body system's results from a
    probe that read its bodies in index order (they measure the probe, not the videos)."""
    return None if bodies_by_index(r) else _get(r, "physics", *keys)


def _drift(r, key):
    """An energy drift median of results.json; None for older results whose drift divided by
    the energy scale where H does not cross zero."""
    return None if floored_drift(r) else _probed(r, "energy_drift", key, "median")


def _state_distance(r, key):
    """A Frechet state distance of results.json; None for an angle system's older results."""
    return None if raw_angles(r) else _probed(r, "frechet_state_distance", key)


def _pair(a, b):
    return None if a is None else (a, b)


def _fmt(x):
    if x is None:
        return "n/a"
    if isinstance(x, tuple):
        return f"{_fmt(x[0])} ({_fmt(x[1])})"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def collect(spec):
    """One row per run of the grid: its state, iterations, times and results."""
    rows = []
    for run in spec.runs():
        rec, res = run.record(), run.results()
        segs = rec.get("segments", [])
        # An evaluation of an earlier iteration (the run trained on since) says nothing now.
        ev = rec.get("eval") if _get(rec, "eval", "iteration") in (None, run.iteration()) else None
        current = res if res and res.get("iteration") == run.iteration() else None
        if current is not None:  # its results are written: whatever ended the process after
            ev = {**ev, "returncode": 0, "interrupted": False} if ev else ev
        rows.append({
            "run": run, "system": run.system, "model": run.model, "seed": run.seed,
            "iteration": run.iteration(), "target": spec.iters,
            "train_s": sum(s["seconds"] for s in segs) if segs else None,
            "it_per_s": next((s["it_per_s_logged"] for s in reversed(segs)
                              if s.get("it_per_s_logged")), None),
            "eval_s": _get(ev, "seconds"),
            "results": current,
            # a job the grid's stop ended is interrupted, not failed (the next command resumes)
            "failed": any(s.get("returncode") and not s.get("interrupted") for s in segs[-1:])
            or bool(_get(ev, "returncode") and not _get(ev, "interrupted")),
            "interrupted": any(s.get("interrupted") for s in segs[-1:])
            or bool(_get(ev, "interrupted")),
        })
    return rows


def _cell(rows, system, model, get):
    """(mean, std, n, iteration range, mean training seconds) over the seeds with a value."""
    hits = [r for r in rows if r["system"] == system and r["model"] == model and r["results"]]
    vals = [(get(r["results"]), r) for r in hits]
    vals = [(v, r) for v, r in vals if v is not None]
    if not vals:
        return None
    v = np.array([x for x, _ in vals], np.float64)
    its = sorted({r["iteration"] for _, r in vals})
    secs = [r["train_s"] for _, r in vals if r["train_s"] is not None]
    masses = [m for m in (_get(r["results"], "appearance", "mass_ratio") for _, r in vals)
              if m is not None]
    motions = [m for m in (_get(r["results"], "appearance", "motion_ratio") for _, r in vals)
               if m is not None]
    spreads = [m for m in (_get(r["results"], "appearance", "spread_ratio") for _, r in vals)
               if m is not None]
    # Seeds stopped at different iterations (a deadline): a mean would mix run lengths.
    mixed = [(float(x), r["iteration"], r["train_s"]) for x, r in vals] if len(its) > 1 else None
    return {"mean": None if mixed else float(v.mean()), "std": float(v.std()), "n": len(v),
            "iters": its, "train_s": float(np.mean(secs)) if secs else None,
            "mass_ratios": masses, "motion_ratios": motions, "spread_ratios": spreads,
            "per_seed": mixed}


def _cell_text(c):
    if c is None:
        return "n/a"
    if c["per_seed"]:
        return "; ".join(f"{x:.3g} ({it} it" + (f", {s:.0f} s)" if s is not None else ")")
                         for x, it, s in c["per_seed"])
    val = f"{c['mean']:.3g}" + (f" ± {c['std']:.2g}" if c["n"] > 1 else "")
    its = "/".join(str(i) for i in c["iters"])
    t = f", {c['train_s']:.0f} s" if c["train_s"] is not None else ""
    return f"{val} ({its} it{t})"


def _table(header, body):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in body]


def runs_section(rows):
    body = []
    for r in rows:
        short = r["iteration"] < r["target"]
        state = ("failed" if r["failed"] else "not run" if not r["iteration"] else
                 ("interrupted, " if r.get("interrupted") else "stopped short, " if short else "")
                 + ("evaluated" if r["results"] else "not evaluated"))
        body.append([r["system"], r["model"], r["seed"], f"{r['iteration']} / {r['target']}",
                     _fmt(r["train_s"] and round(r["train_s"], 1)),
                     _fmt(r["it_per_s"] and round(r["it_per_s"], 1)),
                     _fmt(r["eval_s"] and round(r["eval_s"], 1)), state])
    return ["## Runs", "", "Training time is the wall time of the training processes "
            "(start-up included, all segments of a resumed run); it/s is the last rate the "
            "trainer logged; evaluation time is the whole `hgan.evaluate` process.", ""] + _table(
        ["system", "model", "seed", "iterations / target", "training (s)", "it/s", "evaluation (s)",
         "state"], body) + [""]


def metric_sections(spec, rows):
    out = []
    for key, title, get, lower in METRICS:
        cells = {(m, s): _cell(rows, s, m, get) for m in spec.models for s in spec.systems}
        if all(c is None for c in cells.values()):
            continue
        body = [[m] + [_cell_text(cells[m, s]) for s in spec.systems] for m in spec.models]
        if key in REAL:
            label, rget = REAL[key]
            ref = [next((_fmt(rget(r["results"])) for r in rows
                         if r["system"] == s and r["results"]), "n/a") for s in spec.systems]
            body.append([f"*{label}*"] + ref)
        better = " (lower is better)" if lower else ""
        out += [f"### {title}{better}", ""] + _table(["model"] + list(spec.systems), body) + [""]
    return out


# A generator whose foreground pixel mass is this far from real's draws (about) no objects, or
# fills the frame: its low energy drift or appearance variation would "win" a check.
DEGENERATE_MASS = (0.25, 4.0)
# A generator whose objects move at under this share of real's speed draws still videos:
# their energy drift and appearance variation are those of one frozen frame (an H200 grid,
# 2026-12-04: HGAN at 5,000 iterations on three systems), not of good physics.
STILL_MOTION = 0.25
# ... and one whose videos differ from each other by under this share of what real videos
# do draws one video whatever its noise (mode collapse): its drift is one trajectory's.
COLLAPSED_SPREAD = 0.25


def _degenerate_run(mass, motion, spread=None):
    """Why a run with these foreground-mass, motion and spread ratios (None: not evaluated)
    cannot enter a verdict, or None."""
    lo, hi = DEGENERATE_MASS
    if mass is not None and not lo <= mass <= hi:
        return f"foreground mass {mass:.2g} x real's"
    if motion is not None and motion < STILL_MOTION:
        return f"still videos: object motion {motion:.2g} x real's"
    if spread is not None and spread < COLLAPSED_SPREAD:
        return f"collapsed: videos {spread:.2g} x as far apart as real ones"
    return None


def _degenerate(c):
    """Why cell `c` cannot enter a verdict, or None."""
    if not np.isfinite(c["mean"]):
        return "non-finite value"
    whys = ([_degenerate_run(m, None) for m in c["mass_ratios"]]
            + [_degenerate_run(None, m) for m in c.get("motion_ratios", ())]
            + [_degenerate_run(None, None, s) for s in c.get("spread_ratios", ())])
    return next((why for why in whys if why), None)


def _real_floor(rows, key, system):
    """(value, what it is) of the metric on real held-out videos: the larger of its values
    (for the energy drift, real videos through the probe and the probe's noise floor), or
    None."""
    if key not in REAL:
        return None
    got = next((REAL[key][1](r["results"]) for r in rows
                if r["system"] == system and r["results"]), None)
    named = zip(got if isinstance(got, tuple) else (got,),
                ("real data's", "the probe's noise floor"))
    vals = [(v, what) for v, what in named if isinstance(v, (int, float)) and np.isfinite(v)]
    return max(vals, key=lambda vw: vw[0]) if vals else None


# Two runs compared in a check trained within this fraction of each other's iterations: a
# grid cut by a deadline can stop runs at very different points (an H200 grid, 2026-12-04:
# 20,000 against 7,400), and the longer run's lead then says nothing about the models.
ITERATION_SPREAD = 0.10


def _verdict(a, b, floor=None, names=None):
    """holds / does not hold / n/a (why) for "a < b"; `names` (of a and b) say which run a
    degenerate-run refusal is about."""
    if a is None or b is None:
        return "n/a"
    if a["per_seed"] or b["per_seed"]:
        return "n/a (seeds of different lengths)"
    ia, ib = a["iters"][0], b["iters"][0]
    if max(ia, ib) > (1 + ITERATION_SPREAD) * min(ia, ib):
        return f"n/a (trained {ia} vs {ib} iterations)"
    for cell, name in zip((a, b), names or (None, None)):
        why = _degenerate(cell)
        if why:
            return f"n/a ({name + ': ' if name else ''}{why})"
    if floor is not None and a["mean"] <= floor[0] and b["mean"] <= floor[0]:
        # real videos score no lower: the probe (or the metric) cannot order these two
        return f"n/a (both at or below {floor[1]} {floor[0]:.3g})"
    holds = a["mean"] < b["mean"]
    text = "holds" if holds else "does not hold"
    if a["n"] > 1 and b["n"] > 1:
        apart = (a["mean"] + a["std"] < b["mean"] - b["std"]) or (b["mean"] + b["std"] < a["mean"] - a["std"])
        text += " (outside the seed spread)" if apart else " (within the seed spread)"
    return text


def checks_section(spec, rows):
    out = ["## Checks: the paper's claims", "",
           f"Each row compares means over seeds {list(spec.seeds)}; a single seed cannot separate "
           "a difference from run-to-run spread. Beside each value: iterations and training time. "
           "A generator that draws no object, a still one, or one video whatever its noise "
           "has a low energy drift and appearance variation: a run whose foreground mass is under "
           f"{DEGENERATE_MASS[0]:g} or over {DEGENERATE_MASS[1]:g} times real's, whose "
           f"objects move at under {STILL_MOTION:g} times real's speed, or whose videos lie "
           f"under {COLLAPSED_SPREAD:g} times as far apart as real ones (one video whatever "
           "the noise; when appearance was evaluated), or whose value is not finite, gets no "
           "verdict; neither does a pair "
           "both at or below what real held-out videos score (for the energy drift, the larger "
           "of real's and the probe's noise floor): the measurement cannot order them; nor "
           f"a pair whose iterations differ by more than {ITERATION_SPREAD:.0%}. Read "
           "the samples beside the rest.", ""]
    body = []
    baseline = baseline_model()   # the models are compared as hgan.model_kinds marks them
    for key, title, get, _ in METRICS:
        if key not in CHECKED:
            continue
        for s in spec.systems:
            base = _cell(rows, s, baseline, get)
            for m in hamiltonian_models():
                if m not in spec.models or baseline not in spec.models:
                    continue
                mine = _cell(rows, s, m, get)
                if mine is None and base is None:
                    continue
                body.append([f"{m} < {baseline} on {key.replace('_', ' ')}", s,
                             _verdict(mine, base, _real_floor(rows, key, s), (m, baseline)),
                             _cell_text(mine), _cell_text(base)])
    if body:
        out += _table(["claim", "system", "verdict", "HNN model", baseline], body) + [""]
    out += [f"**Active momentum dimensions.** A latent momentum dimension i is active when the "
            f"mean |dp_i/dt| over the rollouts of `hgan.evaluate --metrics cyclic` exceeds "
            f"{ACTIVE_FRACTION:.0%} of the largest dimension's and a floor, the rate that moves a "
            f"momentum by {ACTIVE_FLOOR:.0%} of the momenta's spread over the rollout (so a flat, "
            "dead H counts none; each run's threshold is beside it). The paper: with L_cyc, "
            "HGAN's pendulum shows about one.", ""]
    from hgan.data import get_system
    body = []
    for s in spec.systems:
        dof = get_system(s).dof
        for m in hamiltonian_models():
            if m not in spec.models:
                continue
            for r in rows:
                am = _get(r["results"], "cyclic", "active_momenta") if r["results"] else None
                if r["system"] != s or r["model"] != m or not am:
                    continue
                claim = ACTIVE_CLAIM.get((s, m))
                # a generator drawing (about) nothing, or still videos, learned no motion from
                # the data: its latent's count says nothing of the claim, as in the checks above
                why = _degenerate_run(*(_get(r["results"], "appearance", key) for key in
                                        ("mass_ratio", "motion_ratio", "spread_ratio")))
                verdict = ("n/a" if claim is None or am["active_dims"] is None else
                           f"n/a ({why})" if why else
                           "holds" if am["active_dims"] == claim else "does not hold")
                body.append([s, m, r["seed"], active_text(am), dof,
                             _fmt(am["threshold"]), verdict,
                             f"{r['iteration']} it, {_fmt(r['train_s'] and round(r['train_s']))} s"])
    if body:
        out += _table(["system", "model", "seed", "active", "true dof", "threshold (mean abs dp/dt)",
                       "claim (pendulum, hgan: 1)", "trained"], body) + [""]
    return out
