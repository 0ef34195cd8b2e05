"""compare.md from hand-made run directories: cells over several seeds, the runs' states and
times, the real-data row, the claims' verdicts at their bounds, the sample montage, the
header (no training, no evaluation)."""
import json
import os
import statistics

import pytest

from hgan.experiments import report, table
from hgan.experiments.grid import GridSpec


def _spec(tmp_path, **kw):
    base = dict(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"), seeds=(0,),
                iters=100, eval_metrics="physics,cyclic,appearance")
    base.update(kw)
    return GridSpec(**base)


def _results(drift, *, real=0.01, noise_floor=0.008, mass_ratio=None, active=None,
             iteration=100):
    res = {"iteration": iteration, "metrics": ["physics", "cyclic", "appearance"],
           "physics": {"energy_drift": {"generated": {"median": drift}, "real": {"median": real},
                                        "noise_floor": {"median": noise_floor},
                                        "relative_to": "|mean H|"}},
           "appearance": {"generated": {"median": 0.01}, "real": {"median": 0.003},
                          "generated_flagged": 0.0, "real_flagged": 0.0},
           "cyclic": {"active_momenta": None if active is None else {
               "active_dims": active, "k": 10, "threshold": 0.02}}}
    if mass_ratio is not None:
        res["appearance"]["mass_ratio"] = mass_ratio
    return res


def _write(run, results=None, *, iteration=100, segments=None, ev=None):
    """A run directory as train.py, hgan.evaluate and the runner leave it."""
    os.makedirs(run.path("checkpoints"), exist_ok=True)
    open(run.checkpoint, "wb").close()
    with open(run.path("summary.json"), "w") as f:
        json.dump({"iteration": iteration}, f)
    if results is not None:
        os.makedirs(run.path("eval"), exist_ok=True)
        with open(run.path("eval", "results.json"), "w") as f:
            json.dump(results, f)
    segs = segments if segments is not None else [
        {"from": 0, "to": iteration, "seconds": 12.0, "returncode": 0, "it_per_s_logged": 8.5}]
    run.save_record({"segments": segs, **({"eval": ev} if ev else {})})


def _checks(spec):
    return "\n".join(table.checks_section(spec, table.collect(spec)))


def _check_row(text, metric="energy drift", system="pendulum", model="hgan"):
    prefix = f"| {model} < mocogan on {metric} | {system} | "
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return line[len(prefix):].rstrip(" |").split(" | ")   # verdict, HNN model, mocogan


def _seeds(tmp_path, values):
    """Runs of several seeds with the energy drifts `values` {model: [per seed]}."""
    n = len(next(iter(values.values())))
    spec = _spec(tmp_path, seeds=tuple(range(n)))
    for run in spec.runs():
        _write(run, _results(values[run.model][run.seed]))
    return spec


def test_a_cell_of_several_seeds_is_their_mean_and_standard_deviation(tmp_path):
    hgan, moco = [0.1, 0.1, 0.4], [0.5, 0.6, 0.7]   # hgan: mean 0.2, median 0.1
    spec = _seeds(tmp_path, {"hgan": hgan, "mocogan": moco})
    text = "\n".join(table.metric_sections(spec, table.collect(spec)))
    mean, std = statistics.fmean(hgan), statistics.pstdev(hgan)
    assert (f"{mean:.3g}", f"{std:.2g}") == ("0.2", "0.14")
    assert "| hgan | 0.2 ± 0.14 (100 it, 12 s) |" in text, text
    assert "| mocogan | 0.6 ± 0.082 (100 it, 12 s) |" in text, text


def test_seeds_of_different_lengths_are_listed_not_averaged(tmp_path):
    # (a deadline stops seeds at different iterations) a mean would mix the run lengths
    spec = _spec(tmp_path, seeds=(0, 1))
    for run in spec.runs():
        it = 100 if run.seed == 0 or run.model == "mocogan" else 40
        _write(run, _results(0.1 + run.seed, iteration=it), iteration=it)
    rows = table.collect(spec)
    text = "\n".join(table.metric_sections(spec, rows))
    assert "| hgan | 0.1 (100 it, 12 s); 1.1 (40 it, 12 s) |" in text, text
    assert "| mocogan | 0.6 ± 0.5 (100 it, 12 s) |" in text, text
    assert _check_row(_checks(spec))[0] == "n/a (seeds of different lengths)"
    report.write_compare(spec, {"command": "x", "commit": "c", "device": "d", "date": "t"})
    # the chart shows such a cell's seeds as dots: it had no bar, as if never evaluated
    only = _spec(tmp_path / "only", models=("hgan",), seeds=(0, 1))
    for run in only.runs():
        _write(run, _results(0.1 + run.seed, iteration=100 - 60 * run.seed),
               iteration=100 - 60 * run.seed)
    key, title, get, _ = next(m for m in table.METRICS if m[0] == "energy_drift")
    path = report._bar_chart(only, table.collect(only), key, title, get,
                             str(tmp_path / "drift.png"))
    assert path is not None and os.path.getsize(path) > 0


@pytest.mark.parametrize("hgan, moco, verdict", [
    # 0.2 ± 0.1 against 0.6 ± 0.1: the spreads [0.1, 0.3] and [0.5, 0.7] do not meet
    ([0.1, 0.3], [0.5, 0.7], "holds (outside the seed spread)"),
    # 0.2 ± 0.1 against 0.3 ± 0.05: [0.1, 0.3] and [0.25, 0.35] overlap
    ([0.1, 0.3], [0.25, 0.35], "holds (within the seed spread)"),
    ([0.5, 0.7], [0.1, 0.3], "does not hold (outside the seed spread)"),
    # 0.25 ± 0.25 against 0.75 ± 0.25: [0, 0.5] and [0.5, 1] meet at 0.5
    ([0.0, 0.5], [0.5, 1.0], "holds (within the seed spread)"),
])
def test_two_seeds_say_whether_the_means_lie_outside_each_others_spread(tmp_path, hgan, moco,
                                                                        verdict):
    spec = _seeds(tmp_path, {"hgan": hgan, "mocogan": moco})
    assert _check_row(_checks(spec))[0] == verdict


def test_a_tie_does_not_hold(tmp_path):
    # "HGAN < MoCoGAN" is strict: equal values are no evidence for it
    spec = _spec(tmp_path)
    for run in spec.runs():
        _write(run, _results(0.2))
    assert _check_row(_checks(spec))[0] == "does not hold"


@pytest.mark.parametrize("hgan_it, moco_it, verdict", [
    (20000, 7400, "n/a (trained 20000 vs 7400 iterations)"),    # a deadline's uneven grid
    (7400, 20000, "n/a (trained 7400 vs 20000 iterations)"),
    (1100, 1000, "holds"), (1000, 1100, "holds"),                 # 10% apart: comparable
    (1000, 1101, "n/a (trained 1000 vs 1101 iterations)"),
])
def test_runs_of_very_different_lengths_get_no_verdict(tmp_path, hgan_it, moco_it, verdict):
    spec = _spec(tmp_path)
    for run in spec.runs():
        it = hgan_it if run.model == "hgan" else moco_it
        _write(run, _results(0.05 if run.model == "hgan" else 0.2, iteration=it), iteration=it)
    assert _check_row(_checks(spec))[0] == verdict


@pytest.mark.parametrize("mass, verdict", [
    (0.25, "holds"), (4.0, "holds"),                       # the bounds themselves: real-like
    (5.0, "n/a (hgan: foreground mass 5 x real's)"),             # fills the frame
    (0.2, "n/a (hgan: foreground mass 0.2 x real's)"),           # draws (almost) nothing
])
def test_a_foreground_mass_outside_a_quarter_to_four_times_reals_gets_no_verdict(tmp_path, mass,
                                                                                   verdict):
    spec = _spec(tmp_path)
    for run in spec.runs():
        _write(run, _results(0.05 if run.model == "hgan" else 0.2,
                             mass_ratio=mass if run.model == "hgan" else 1.0))
    assert _check_row(_checks(spec))[0] == verdict


def test_a_still_baseline_withholds_the_verdict_and_is_named(tmp_path):
    # the refusal says whose videos are still: here the baseline's, not the HNN model's
    spec = _spec(tmp_path)
    for run in spec.runs():
        res = _results(0.05 if run.model == "hgan" else 0.2, mass_ratio=1.0)
        res["appearance"]["motion_ratio"] = 1.1 if run.model == "hgan" else 0.23
        _write(run, res)
    assert _check_row(_checks(spec))[0] == "n/a (mocogan: still videos: object motion 0.23 x real's)"


@pytest.mark.parametrize("active, verdict", [(1, "holds"), (0, "does not hold"),
                                             (2, "does not hold")])
def test_the_pendulum_claim_holds_for_exactly_one_active_dimension(tmp_path, active, verdict):
    spec = _spec(tmp_path, models=("hgan",))
    run, = spec.runs()
    _write(run, _results(0.05, active=active))
    assert f"| pendulum | hgan | 0 | {active} of 10 | 1 | 0.02 | {verdict} | 100 it, 12 s |" in \
        _checks(spec)
    # a generator that draws no objects: no verdict (it read "does not hold")
    _write(run, _results(0.05, active=active, mass_ratio=0.0))
    assert (f"| pendulum | hgan | 0 | {active} of 10 | 1 | 0.02 | n/a (foreground mass 0 x "
            f"real's) | 100 it, 12 s |") in _checks(spec)
    # nor one that draws still videos (objects at a twentieth of real's speed)
    res = _results(0.05, active=active, mass_ratio=1.0)
    res["appearance"]["motion_ratio"] = 0.05
    _write(run, res)
    assert (f"| pendulum | hgan | 0 | {active} of 10 | 1 | 0.02 | n/a (still videos: object "
            f"motion 0.05 x real's) | 100 it, 12 s |") in _checks(spec)


def test_a_claim_with_one_side_not_evaluated_is_listed_as_n_a(tmp_path):
    spec = _spec(tmp_path)
    hgan, moco = spec.runs()
    _write(hgan, _results(0.05))
    _write(moco, None)
    assert _check_row(_checks(spec)) == ["n/a", "0.05 (100 it, 12 s)", "n/a"]


def test_the_real_data_row_gives_each_systems_own_value(tmp_path):
    spec = _spec(tmp_path, systems=("pendulum", "mass_spring"))
    real = {"pendulum": 0.01, "mass_spring": 0.02}
    for run in spec.runs():
        _write(run, _results(0.05, real=real[run.system], noise_floor=0.008))
    text = "\n".join(table.metric_sections(spec, table.collect(spec)))
    assert "| *real held-out videos (probe noise floor)* | 0.01 (0.008) | 0.02 (0.008) |" in text


def test_runs_table_states_times_and_the_last_rate(tmp_path):
    spec = _spec(tmp_path, models=("hgan", "hnn_gan", "mocogan"), seeds=(0,), iters=10)
    hgan, hnn, moco = spec.runs()
    # failed once, then resumed to the end and evaluated: not "failed"; the rate of the last
    # segment; the time of both segments
    _write(hgan, _results(0.05, iteration=10), iteration=10, segments=[
        {"from": 0, "to": 4, "seconds": 5.0, "returncode": 1, "it_per_s_logged": 2.0},
        {"from": 4, "to": 10, "seconds": 9.0, "returncode": 0, "it_per_s_logged": 6.5}],
        ev={"seconds": 3.0, "returncode": 0, "iteration": 10})
    # its last segment failed at 4
    _write(hnn, None, iteration=4, segments=[
        {"from": 0, "to": 4, "seconds": 5.0, "returncode": 3, "it_per_s_logged": 2.0}])
    # stopped short by a deadline at 6, evaluated there
    _write(moco, _results(0.2, iteration=6), iteration=6, segments=[
        {"from": 0, "to": 6, "seconds": 7.0, "returncode": 0, "it_per_s_logged": 4.0}],
        ev={"seconds": 2.0, "returncode": 0, "iteration": 6})
    text = "\n".join(table.runs_section(table.collect(spec)))
    assert "| pendulum | hgan | 0 | 10 / 10 | 14 | 6.5 | 3 | evaluated |" in text, text
    assert "| pendulum | hnn_gan | 0 | 4 / 10 | 5 | 2 | n/a | failed |" in text, text
    assert "| pendulum | mocogan | 0 | 6 / 10 | 7 | 4 | 2 | stopped short, evaluated |" in text
    # a segment the grid's stop ended (exit 143 before its first iteration): not "failed"
    _write(hnn, None, iteration=4, segments=[
        {"from": 0, "to": 4, "seconds": 5.0, "returncode": 0, "it_per_s_logged": 2.0},
        {"from": 4, "to": 4, "seconds": 1.0, "returncode": 143, "interrupted": True}])
    stopped = "\n".join(table.runs_section(table.collect(spec)))
    assert "| pendulum | hnn_gan | 0 | 4 / 10 | 6 | 2 | n/a | interrupted, not evaluated |" \
        in stopped, stopped


def test_the_sample_montage_shows_real_data_first_then_the_models(tmp_path):
    from PIL import Image
    spec = _spec(tmp_path, models=("hgan", "mocogan"))
    colours = {"real": (0, 0, 255), "hgan": (255, 0, 0), "mocogan": (0, 255, 0)}
    for run in spec.runs():
        res = _results(0.05)
        res["figures"] = {f"samples_{run.model}": "mine.png", "samples_real": "real.png"}
        _write(run, res)
        Image.new("RGB", (8, 4), colours[run.model]).save(run.path("eval", "mine.png"))
        Image.new("RGB", (8, 4), colours["real"]).save(run.path("eval", "real.png"))
    path = str(tmp_path / "montage.png")
    got, labels = report._samples_montage(spec, table.collect(spec), "pendulum", path)
    assert labels == ["real", "hgan", "mocogan"]
    im = Image.open(got).convert("RGB")
    # 4-pixel strips with 6-pixel gaps: rows 0, 10, 20 start each strip
    assert [im.getpixel((0, y)) for y in (0, 10, 20)] == [colours[k] for k in labels]


def test_a_rewritten_table_leaves_no_figure_it_no_longer_shows(tmp_path):
    # `--report-only --systems pendulum` after a grid of two systems: mass_spring's montage
    # stayed in figures/, unlinked (and exported); a file of the user's there stays
    from PIL import Image
    spec = _spec(tmp_path, systems=("pendulum", "mass_spring"), models=("hgan",))
    for run in spec.runs():
        res = _results(0.05)
        res["figures"] = {"samples_hgan": "mine.png"}
        _write(run, res)
        Image.new("RGB", (8, 4)).save(run.path("eval", "mine.png"))
    report.write_compare(spec, {})
    assert os.path.exists(tmp_path / "figures" / "samples_mass_spring.png")
    open(tmp_path / "figures" / "notes.png", "wb").close()
    text = report.write_compare(_spec(tmp_path, systems=("pendulum",), models=("hgan",)), {})
    assert text.splitlines()[0] == "# Table 1 grid: 1 system x 1 model x 1 seed"
    left = sorted(os.listdir(tmp_path / "figures"))
    assert "samples_pendulum.png" in left and "notes.png" in left
    assert [n for n in left if n != "notes.png" and f"(figures/{n})" not in text] == []


def test_the_bar_charts_real_dash_is_real_datas_value_not_the_noise_floor(tmp_path,
                                                                           monkeypatch):
    import matplotlib.axes
    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "hlines",
                        lambda self, y, *a, **k: drawn.append(y))
    spec = _spec(tmp_path)
    for run in spec.runs():
        _write(run, _results(0.05, real=0.01, noise_floor=0.008))
    key, title, get, _ = next(m for m in table.METRICS if m[0] == "energy_drift")
    assert report._bar_chart(spec, table.collect(spec), key, title, get,
                             str(tmp_path / "e.png"))
    assert drawn == [0.01]


def test_the_header_states_the_grid_asked_for(tmp_path):
    spec = _spec(tmp_path, iters=123, batch_size=8, frames=6, resolution=32, train_traj=40,
                 test_traj=9, traj_frames=20, data_seed=3, train_args=("--amp",))
    text = report.write_compare(spec, {"command": "python -m hgan.experiments table1",
                                       "device": "CPU x", "commit": "abc", "wall_s": 61.4})
    assert "- every run: 123 iterations asked, batch 8, 6 frames, 32 px, extra train.py flags " \
           "`--amp`" in text
    assert "- data: 40 train / 9 test trajectories of 20 frames per system (seed 3)" in text
    assert "- wall time of the invocation: 61 s" in text
    assert "- device: CPU x; commit abc;" in text
    assert open(tmp_path / "compare.md").read() == text


@pytest.mark.parametrize("systems", [("pendulum",), ("pendulum", "mass_spring")])
def test_the_bar_charts_title_fits_inside_the_figure(tmp_path, monkeypatch, systems):
    # Wrapped at 70 characters whatever the figure's width, a one- or two-system chart's
    # title ran past its right edge.
    import matplotlib.figure
    extents = []
    savefig = matplotlib.figure.Figure.savefig

    def save(fig, path, *a, **k):
        fig.canvas.draw()
        extents.append((fig.axes[0].title.get_window_extent(), fig.bbox))
        return savefig(fig, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", save)
    spec = _spec(tmp_path, systems=systems)
    for run in spec.runs():
        _write(run, _results(0.05))
    for key, title, get, _ in table.METRICS:
        report._bar_chart(spec, table.collect(spec), key, title, get, str(tmp_path / f"{key}.png"))
    assert extents
    for text, fig in extents:
        assert 0 <= text.x0 and text.x1 <= fig.x1, (text, fig)


def test_each_metric_title_says_lower_is_better_except_the_ratios_to_real(tmp_path):
    # the flagged fraction (more flagged videos: worse) reads "lower is better"; the mass and
    # motion ratios, best at 1 rather than low, must not
    spec = _spec(tmp_path)
    for run in spec.runs():
        res = _results(0.05, mass_ratio=1.0)
        res["appearance"].update(motion_ratio=0.9, spread_ratio=1.1)
        _write(run, res)
    heads = [line for line in table.metric_sections(spec, table.collect(spec))
             if line.startswith("### ")]
    assert "### Fraction of generated videos flagged for appearance (lower is better)" in heads
    ratios = [h for h in heads if h.startswith(("### Foreground pixel mass", "### Object motion",
                                                "### Spread of generated videos"))]
    assert len(ratios) == 3 and not any("lower is better" in h for h in ratios)
    assert all(h.endswith("(lower is better)") for h in heads if h not in ratios), heads


def test_one_seed_against_several_gets_no_seed_spread_wording(tmp_path):
    # a single-seed cell has no spread (std 0 of one value): "outside the seed spread"
    # would claim a separation nobody measured
    spec = _spec(tmp_path, seeds=(0, 1))
    for run in spec.runs():
        if run.model == "hgan" and run.seed == 1:
            _write(run, None)
        else:
            _write(run, _results(0.05 if run.model == "hgan" else [0.2, 0.4][run.seed]))
    assert _check_row(_checks(spec)) == ["holds", "0.05 (100 it, 12 s)",
                                         "0.3 ± 0.1 (100 it, 12 s)"]


def test_the_true_dof_column_is_the_systems_degrees_of_freedom(tmp_path):
    # two_body: 2 bodies in the plane, 4 degrees of freedom (q = 2 x 2 coordinates)
    spec = _spec(tmp_path, systems=("two_body",), models=("hgan",))
    run, = spec.runs()
    _write(run, _results(0.05, active=3))
    assert "| two_body | hgan | 0 | 3 of 10 | 4 | 0.02 | n/a | 100 it, 12 s |" in _checks(spec)


def test_fvd_enters_the_table_and_the_checks_only_where_it_was_computed(tmp_path):
    spec = _spec(tmp_path)
    for run in spec.runs():
        res = _results(0.05)
        res["fvd"] = {"fvd_mean": 80.0 if run.model == "hgan" else 120.0, "fvd_std": 1.0}
        _write(run, res)
    rows = table.collect(spec)
    text = "\n".join(table.metric_sections(spec, rows))
    assert "| hgan | 80 (100 it, 12 s) |" in text and "| mocogan | 120 (100 it, 12 s) |" in text
    assert _check_row(_checks(spec), metric="fvd") == ["holds", "80 (100 it, 12 s)",
                                                       "120 (100 it, 12 s)"]
    # without --i3d hgan.evaluate skips FVD: no FVD section, no FVD claim
    for run in spec.runs():
        res = _results(0.05)
        res["fvd"] = {"skipped": "no detector"}
        _write(run, res)
    rows = table.collect(spec)
    assert not any(line.startswith("### FVD") for line in table.metric_sections(spec, rows))
    assert "on fvd" not in _checks(spec)


def test_the_header_says_no_fvd_only_without_a_detector(tmp_path):
    meta = {"command": "x", "device": "d", "commit": "c"}
    without = report.write_compare(_spec(tmp_path / "a"), meta)
    assert "- evaluation: `physics,cyclic,appearance`; no --i3d detector given, so no FVD" \
        in without
    with_i3d = report.write_compare(_spec(tmp_path / "b", i3d="/x/i3d.pt"), meta)
    assert "- evaluation: `fvd,physics,cyclic,appearance`\n" in with_i3d
    assert "no FVD" not in with_i3d


def test_only_hgans_pendulum_count_is_checked_against_the_papers_one(tmp_path):
    # the paper claims one active momentum for HGAN (with L_cyc), not for the HNN-GAN baseline
    spec = _spec(tmp_path, models=("hgan", "hnn_gan"))
    for run in spec.runs():
        _write(run, _results(0.05, active=1))
    text = _checks(spec)
    assert "| pendulum | hgan | 0 | 1 of 10 | 1 | 0.02 | holds |" in text
    assert "| pendulum | hnn_gan | 0 | 1 of 10 | 1 | 0.02 | n/a |" in text


def test_the_bar_charts_error_bars_are_the_seed_spread(tmp_path, monkeypatch):
    import matplotlib.axes
    bars = {}
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, x, y, w, yerr=None, label=None,
                        **k: bars.setdefault(label, (list(y), list(yerr))) and
                        real_bar(self, x, y, w, yerr=yerr, label=label, **k))
    spec = _seeds(tmp_path, {"hgan": [0.1, 0.3], "mocogan": [0.5, 0.9]})
    key, title, get, _ = next(m for m in table.METRICS if m[0] == "energy_drift")
    assert report._bar_chart(spec, table.collect(spec), key, title, get,
                             str(tmp_path / "e.png"))
    assert bars == {"hgan": ([pytest.approx(0.2)], [pytest.approx(0.1)]),
                    "mocogan": ([pytest.approx(0.7)], [pytest.approx(0.2)])}


def test_a_run_states_failure_before_its_first_iteration_and_ignores_a_late_eval_signal(
        tmp_path):
    spec = _spec(tmp_path, models=("hgan",), iters=10)
    run, = spec.runs()
    # crashed before any iteration was saved: "failed", not "not run"
    _write(run, None, iteration=0, segments=[
        {"from": 0, "to": 0, "seconds": 2.0, "returncode": 1}])
    assert "| pendulum | hgan | 0 | 0 / 10 | 2 | n/a | n/a | failed |" in \
        "\n".join(table.runs_section(table.collect(spec)))
    # its results.json of this iteration was written before the stop ended the evaluation
    # process: evaluated, neither interrupted nor failed
    for rc, interrupted in ((143, True), (1, False)):
        _write(run, _results(0.05, iteration=10), iteration=10,
               ev={"seconds": 3.0, "returncode": rc, "interrupted": interrupted,
                   "iteration": 10})
        text = "\n".join(table.runs_section(table.collect(spec)))
        assert "| pendulum | hgan | 0 | 10 / 10 | 12 | 8.5 | 3 | evaluated |" in text, text


def test_the_montage_puts_real_first_even_when_the_first_run_lacks_a_real_strip(tmp_path):
    from PIL import Image
    spec = _spec(tmp_path, models=("hgan", "mocogan"))
    for run in spec.runs():
        res = _results(0.05)
        res["figures"] = {f"samples_{run.model}": "mine.png"}
        if run.model == "mocogan":
            res["figures"]["samples_real"] = "real.png"
        _write(run, res)
        Image.new("RGB", (8, 4), (255, 0, 0)).save(run.path("eval", "mine.png"))
        Image.new("RGB", (8, 4), (0, 0, 255)).save(run.path("eval", "real.png"))
    _, labels = report._samples_montage(spec, table.collect(spec), "pendulum",
                                        str(tmp_path / "m.png"))
    assert labels == ["real", "hgan", "mocogan"]


def test_a_run_interrupted_once_then_resumed_to_the_end_is_not_interrupted(tmp_path):
    # Only the last segment says how a run stands: a stop the grid resumed from is history.
    spec = _spec(tmp_path, models=("hgan",), iters=10)
    run, = spec.runs()
    _write(run, _results(0.05, iteration=10), iteration=10, segments=[
        {"from": 0, "to": 4, "seconds": 5.0, "returncode": 143, "interrupted": True},
        {"from": 4, "to": 10, "seconds": 9.0, "returncode": 0, "it_per_s_logged": 6.5}])
    text = "\n".join(table.runs_section(table.collect(spec)))
    assert "| pendulum | hgan | 0 | 10 / 10 | 14 | 6.5 | n/a | evaluated |" in text, text


def test_only_the_claimed_metrics_get_a_verdict(tmp_path):
    # "lower is better" is the paper's claim for FVD, energy drift, state distance and
    # appearance; the flagged fraction and the mass ratio (best at 1, not low) are shown in
    # the table but no verdict is drawn from them.
    spec = _spec(tmp_path)
    for run in spec.runs():
        _write(run, _results(0.05 if run.model == "hgan" else 0.2, mass_ratio=1.0))
    claims = [line.split(" | ")[0] for line in _checks(spec).splitlines()
              if line.startswith("| hgan < mocogan")]
    assert claims == ["| hgan < mocogan on energy drift", "| hgan < mocogan on appearance"]


def test_a_degenerate_seed_other_than_the_first_withholds_the_verdict(tmp_path):
    # hgan's seed 1 draws nothing (mass 0.1 x real's): its near-zero drift pulls the mean
    # down, and the claim may not "hold" on it
    spec = _spec(tmp_path, seeds=(0, 1))
    for run in spec.runs():
        mass = 0.1 if (run.model, run.seed) == ("hgan", 1) else 1.0
        _write(run, _results(0.05 if run.model == "hgan" else 0.2, mass_ratio=mass))
    assert _check_row(_checks(spec))[0] == "n/a (hgan: foreground mass 0.1 x real's)"


def test_the_header_counts_the_grid_and_states_its_evaluation_flags_and_note(tmp_path):
    spec = _spec(tmp_path, systems=("pendulum",), models=("hgan", "mocogan"), seeds=(0, 1, 2),
                 eval_args=("--physics-videos", "64"))
    hgan0 = spec.runs()[0]
    _write(hgan0, _results(0.05))          # the only evaluated run
    meta = {"command": "x", "device": "d", "commit": "c", "wall_s": 61.4, "wall_s_total": 61.6,
            "note": "Stopped by its deadline."}
    text = report.write_compare(spec, meta)
    lines = text.splitlines()
    assert lines[0] == "# Table 1 grid: 1 system x 2 models x 3 seeds"
    assert "- evaluation: `physics,cyclic,appearance`, flags `--physics-videos 64`; no --i3d " \
           "detector given, so no FVD" in lines
    assert "Stopped by its deadline." in lines
    # this invocation was the grid's only one (its total is its own time, rounded)
    assert "- wall time of the invocation: 61 s" in lines
    text = report.write_compare(spec, {**meta, "wall_s_total": 200.0})
    assert "- wall time of the invocation: 61 s; of every invocation on this grid: 200 s" \
        in text.splitlines()
    # links to the reports of evaluated runs only (the others have none to open)
    links = next(line for line in lines if line.startswith("Each run's own report"))
    assert links == ("Each run's own report (t-SNE, momenta, energy figures): "
                     "[pendulum-hgan-s0](runs/pendulum-hgan-s0/eval/report.md)")


def test_a_chart_draws_no_bar_for_seeds_of_different_lengths(tmp_path, monkeypatch):
    # Such a cell has no mean: a bar of height 0 would read as a perfect score. Its seeds
    # are dots; the other model's cell is a bar of its mean.
    import matplotlib.axes
    bars, dots = {}, []
    real_bar, real_plot = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.plot

    def bar(self, x, y, w, yerr=None, label=None, **k):
        bars[label] = list(y)
        return real_bar(self, x, y, w, yerr=yerr, label=label, **k)

    def plot(self, x, y, *a, **k):
        dots.append(list(y))
        return real_plot(self, x, y, *a, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    spec = _spec(tmp_path, seeds=(0, 1))
    for run in spec.runs():
        it = 40 if (run.model, run.seed) == ("hgan", 1) else 100
        _write(run, _results(0.1 + run.seed if run.model == "hgan" else 0.5, iteration=it),
               iteration=it)
    key, title, get, _ = next(m for m in table.METRICS if m[0] == "energy_drift")
    assert report._bar_chart(spec, table.collect(spec), key, title, get, str(tmp_path / "e.png"))
    assert bars == {"mocogan": [pytest.approx(0.5)]}
    assert dots == [[pytest.approx(0.1), pytest.approx(1.1)]]


def test_a_cells_training_time_is_the_mean_over_its_seeds(tmp_path):
    # seeds trained for 10 s and 20 s: the cell says 15 s (their mean), not one seed's time
    spec = _spec(tmp_path, models=("hgan",), seeds=(0, 1))
    for run in spec.runs():
        _write(run, _results(0.1), segments=[{"from": 0, "to": 100, "seconds": [10.0, 20.0][run.seed],
                                              "returncode": 0}])
    text = "\n".join(table.metric_sections(spec, table.collect(spec)))
    assert "| hgan | 0.1 ± 0 (100 it, 15 s) |" in text, text


def test_a_metric_table_stays_when_one_model_was_not_evaluated(tmp_path):
    # mocogan not evaluated: its cell reads n/a, hgan's value is still shown
    spec = _spec(tmp_path)
    hgan, moco = spec.runs()
    _write(hgan, _results(0.05))
    _write(moco, None)
    text = "\n".join(table.metric_sections(spec, table.collect(spec)))
    assert "| hgan | 0.05 (100 it, 12 s) |" in text and "| mocogan | n/a |" in text, text


def test_no_claim_is_drawn_without_the_baseline_in_the_grid(tmp_path):
    # a grid of hgan and hnn_gan only: nothing to compare them with, so no "< mocogan" rows
    spec = _spec(tmp_path, models=("hgan", "hnn_gan"))
    for run in spec.runs():
        _write(run, _results(0.05))
    assert "< mocogan" not in _checks(spec)


def test_each_hnn_run_has_one_active_momenta_row_under_its_own_system(tmp_path):
    # two systems, one hgan run each: two rows, pendulum's with 1 dof, mass_spring's with 1
    # (no run listed again under the other system)
    spec = _spec(tmp_path, systems=("pendulum", "two_body"), models=("hgan",))
    for run in spec.runs():
        _write(run, _results(0.05, active={"pendulum": 1, "two_body": 3}[run.system]))
    rows = [line for line in _checks(spec).splitlines()
            if line.startswith(("| pendulum | hgan |", "| two_body | hgan |"))]
    assert rows == ["| pendulum | hgan | 0 | 1 of 10 | 1 | 0.02 | holds | 100 it, 12 s |",
                    "| two_body | hgan | 0 | 3 of 10 | 4 | 0.02 | n/a | 100 it, 12 s |"], rows


def test_the_appearance_and_flagged_real_rows_are_real_datas_values(tmp_path):
    # generated 0.01 / 0.5 flagged, real 0.003 / 0.125 flagged: the italic rows show real's
    spec = _spec(tmp_path, models=("hgan",))
    run, = spec.runs()
    res = _results(0.05)
    res["appearance"].update(generated_flagged=0.5, real_flagged=0.125)
    _write(run, res)
    text = "\n".join(table.metric_sections(spec, table.collect(spec)))
    assert text.count("| *real held-out videos* | 0.003 |") == 1, text
    assert "| *real held-out videos* | 0.125 |" in text, text


def test_the_real_data_row_has_three_significant_digits_like_the_cells(tmp_path):
    spec = _spec(tmp_path, models=("hgan",))
    run, = spec.runs()
    _write(run, _results(0.0456, real=0.0123, noise_floor=0.00789))
    text = "\n".join(table.metric_sections(spec, table.collect(spec)))
    assert "| hgan | 0.0456 (100 it, 12 s) |" in text
    assert "| *real held-out videos (probe noise floor)* | 0.0123 (0.00789) |" in text, text


def test_a_run_whose_evaluation_failed_reads_failed(tmp_path):
    # trained to the end, its evaluation exited 1 with no results: the run failed (not "not
    # evaluated", which reads as waiting for its turn)
    spec = _spec(tmp_path, models=("hgan",), iters=10)
    run, = spec.runs()
    _write(run, None, iteration=10, ev={"seconds": 3.0, "returncode": 1, "iteration": 10})
    assert "| pendulum | hgan | 0 | 10 / 10 | 12 | 8.5 | 3 | failed |" in \
        "\n".join(table.runs_section(table.collect(spec)))


def test_every_metric_table_puts_each_runs_own_value_in_its_own_cell(tmp_path):
    # Two systems x two models, every number distinct: a cell from another system's column
    # (systems reordered), another metric's key (the real value for the generated one) or
    # another reference (the generated-vs-real distance for real half vs half) shows.
    spec = _spec(tmp_path, systems=("pendulum", "mass_spring"))
    values = {  # drift, appearance, flagged, mass ratio, state distance
        ("pendulum", "hgan"): (0.05, 0.011, 0.25, 0.9, 1.5),
        ("pendulum", "mocogan"): (0.2, 0.012, 0.5, 1.1, 2.5),
        ("mass_spring", "hgan"): (0.3, 0.013, 0.75, 1.2, 3.5),
        ("mass_spring", "mocogan"): (0.1, 0.014, 1.0, 1.3, 4.5)}
    real_half = {"pendulum": 0.7, "mass_spring": 0.8}
    for run in spec.runs():
        drift, look, flagged, mass, fsd = values[run.system, run.model]
        r = _results(drift, mass_ratio=mass)
        r["system"] = run.system
        r["appearance"].update(generated={"median": look}, generated_flagged=flagged)
        r["physics"]["frechet_state_distance"] = {
            "generated_half_vs_real_half": fsd, "real_half_vs_half": real_half[run.system],
            "angles": "cos, sin"}
        _write(run, r)
    lines = "\n".join(table.metric_sections(spec, table.collect(spec))).splitlines()

    def cells(model, i):
        return (f"| {model} | {values['pendulum', model][i]:g} (100 it, 12 s) | "
                f"{values['mass_spring', model][i]:g} (100 it, 12 s) |")
    assert "| model | pendulum | mass_spring |" in lines
    for i in range(5):
        for model in ("hgan", "mocogan"):
            assert cells(model, i) in lines, (i, model)
    assert "| *real: half vs half* | 0.7 | 0.8 |" in lines


def test_each_hamiltonian_model_is_checked_against_mocogan(tmp_path):
    # docs/experiments.md: the checks compare every Hamiltonian model with MoCoGAN, hnn_gan too
    spec = _spec(tmp_path, models=("hgan", "hnn_gan", "mocogan"))
    drift = {"hgan": 0.05, "hnn_gan": 0.3, "mocogan": 0.2}
    for run in spec.runs():
        _write(run, _results(drift[run.model]))
    text = _checks(spec)
    assert _check_row(text) == ["holds", "0.05 (100 it, 12 s)", "0.2 (100 it, 12 s)"]
    assert _check_row(text, model="hnn_gan") == ["does not hold", "0.3 (100 it, 12 s)",
                                                 "0.2 (100 it, 12 s)"]
