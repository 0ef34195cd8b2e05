"""hgan.experiments without subprocesses: run states, commands, data checks, progress, checks."""
import io
import re
import json
import os

import pytest
from tqdm import tqdm

from hgan.experiments import datasets, table
from hgan.experiments.grid import GridError, GridSpec, resumable_args
from hgan.experiments.runner import OutputPump


def _spec(tmp_path, **kw):
    base = dict(out=str(tmp_path), systems=("pendulum",), models=("hgan", "mocogan"), seeds=(0,),
                iters=10, eval_metrics="physics,cyclic")
    base.update(kw)
    return GridSpec(**base)


def _fake_run(run, iteration, *, results_iter=None, metrics=("physics", "cyclic"), config=None):
    os.makedirs(run.path("checkpoints"), exist_ok=True)
    open(run.checkpoint, "wb").close()
    with open(run.path("summary.json"), "w") as f:
        json.dump({"iteration": iteration, "stopped": None}, f)
    with open(run.path("config.json"), "w") as f:
        json.dump(config or {"system": run.system, "seed": run.seed, "batch_size": 16,
                             "frames": 16, "model": {"model": run.model, "resolution": 32}}, f)
    if results_iter is not None:
        os.makedirs(run.path("eval"), exist_ok=True)
        with open(run.path("eval", "results.json"), "w") as f:
            json.dump({"iteration": results_iter, "metrics": list(metrics),
                       "settings": _eval_settings(run)}, f)


def _eval_settings(run):
    """results.json's settings as hgan.evaluate writes them for the grid's flags."""
    from hgan.evaluate.cli import build_parser, settings
    return settings(build_parser().parse_args(run.eval_flags()), run.system)


def test_results_whose_drift_divided_by_the_energy_scale_are_evaluated_again(tmp_path):
    # Before "relative_to" the drift of every system was floored at its energy scale: such a
    # result counted as up to date, and compare.md showed its drift as n/a for good.
    spec = _spec(tmp_path, systems=("two_body", "double_pendulum"), models=("hgan",))
    for run in spec.runs():
        _fake_run(run, 10, results_iter=10)
        path = run.path("eval", "results.json")
        with open(path) as f:
            r = json.load(f)
        r["system"], r["physics"] = run.system, {"energy_drift": {"generated": {"median": 0.1}}}
        with open(path, "w") as f:
            json.dump(r, f)
    two, double = spec.runs()
    assert not two.evaluated() and double.evaluated()  # the double pendulum kept its floor
    r["system"] = "two_body"
    r["physics"]["energy_drift"]["relative_to"] = "|mean H|"
    with open(two.path("eval", "results.json"), "w") as f:
        json.dump({**r, "settings": _eval_settings(two)}, f)
    assert two.evaluated()


def test_n_body_results_of_an_older_probe_are_evaluated_again_and_left_out(tmp_path):
    # Probe version 3 reads n-body states by colour: a three_body result without it measured
    # a probe that read nothing, so the grid evaluates it again and compare.md leaves its
    # probed numbers out meanwhile; a pendulum result, whose probe is unchanged, stays.
    from hgan.evaluate.probe import PROBE_VERSION
    spec = _spec(tmp_path, systems=("pendulum", "three_body"), models=("hgan",))
    pendulum, three = spec.runs()
    for run in (pendulum, three):
        _fake_run(run, 10, results_iter=10)
    assert "probe_version" not in _eval_settings(pendulum)
    assert _eval_settings(three)["probe_version"] == PROBE_VERSION
    assert pendulum.evaluated() and three.evaluated()
    with open(three.path("eval", "results.json")) as f:
        r = json.load(f)
    del r["settings"]["probe_version"]                           # an older evaluation
    with open(three.path("eval", "results.json"), "w") as f:
        json.dump(r, f)
    assert pendulum.evaluated() and not three.evaluated()
    physics = {"energy_drift": {**{k: {"median": v} for k, v in
                                   (("generated", 0.3), ("real", 0.2), ("noise_floor", 0.1))},
                                "relative_to": "|mean H|"},
               "frechet_state_distance": {"generated_half_vs_real_half": 3.5,
                                          "real_half_vs_half": 1.0}}
    old = {"system": "three_body", "settings": {}, "physics": physics}
    new = {"system": "three_body", "settings": {"probe_version": 3}, "physics": physics}
    for key in ("energy_drift", "state_distance"):
        get = next(m[2] for m in table.METRICS if m[0] == key)
        assert get(old) is None and get(new) is not None
        assert table.REAL[key][1](old) is None and table.REAL[key][1](new) is not None
    pend = {**old, "system": "pendulum", "physics": {**physics, "frechet_state_distance": {
        **physics["frechet_state_distance"], "angles": "cos, sin"}}}
    drift = next(m[2] for m in table.METRICS if m[0] == "energy_drift")
    assert drift(pend) == 0.3
    # Before "relative_to", every system's drift divided by max(|mean H|, energy scale):
    # another metric, except where H crosses zero (the double pendulum kept that floor).
    floored = {**pend, "physics": {**pend["physics"], "energy_drift": {
        k: v for k, v in physics["energy_drift"].items() if k != "relative_to"}}}
    assert drift(floored) is None and table.REAL["energy_drift"][1](floored) is None
    assert drift({**floored, "system": "double_pendulum"}) == 0.3


def test_run_states_and_commands(tmp_path):
    spec = _spec(tmp_path)
    fresh, other = spec.runs()
    assert not fresh.trained() and not fresh.resumable()
    cmd = fresh.train_command()
    assert cmd[1].endswith("train.py") and "--resume" not in cmd
    assert cmd[cmd.index("--out") + 1] == fresh.dir and cmd[cmd.index("--iters") + 1] == "10"
    _fake_run(other, 4)  # interrupted at 4 of 10: resumes from its checkpoint
    assert not other.trained() and other.resumable()
    cmd = other.train_command()
    assert cmd[2:4] == ["--resume", other.dir] and "--system" not in cmd
    _fake_run(other, 10, results_iter=4)  # evaluated before it finished: evaluate again
    assert other.trained() and not other.evaluated()
    _fake_run(other, 10, results_iter=10)
    assert other.evaluated()
    _fake_run(other, 10, results_iter=10, metrics=("physics",))  # a metric missing
    assert not other.evaluated()


def test_a_result_of_other_evaluation_settings_is_evaluated_again(tmp_path, monkeypatch):
    monkeypatch.delenv("HGAN_I3D", raising=False)
    run, = _spec(tmp_path, models=("hgan",), iters=10, eval_metrics="fvd,physics").runs()
    _fake_run(run, 10, results_iter=10, metrics=("fvd", "physics"))
    assert run.evaluated()
    # --eval-args changed: the numbers answer another question
    for args in (("--physics-videos", "3"), ("--frames", "6"), ("--seeds", "0"),
                 ("--probe-steps", "5")):
        assert not _spec(tmp_path, models=("hgan",), iters=10, eval_metrics="fvd,physics",
                         eval_args=args).runs()[0].evaluated(), args
    # FVD skipped for want of a detector, which the grid now has
    res = json.load(open(run.path("eval", "results.json")))
    res["fvd"] = {"skipped": "no detector"}
    json.dump(res, open(run.path("eval", "results.json"), "w"))
    assert run.evaluated()
    detector = tmp_path / "i3d_torchscript.pt"
    detector.write_bytes(b"")
    monkeypatch.setenv("HGAN_I3D", str(detector))
    assert not run.evaluated()


@pytest.mark.parametrize("eval_args, frames", [((), 6), (("--frames", "12"), 12),
                                               (("--frames=9",), 9)])
def test_evaluation_clips_are_the_grids_frames_unless_eval_args_say(tmp_path, eval_args, frames):
    from hgan.evaluate.cli import build_parser
    run = _spec(tmp_path, frames=6, eval_args=eval_args).runs()[0]
    assert build_parser().parse_args(run.eval_command()[3:]).frames == frames


def test_resumed_runs_get_only_resumable_flags():
    args = ("--amp", "--log-every", "5", "--compile", "--ckpt-every=100", "--no-progress", "--ngf", "8")
    assert resumable_args(args) == ["--log-every", "5", "--ckpt-every=100", "--no-progress"]


def test_run_trained_with_other_settings_is_an_error(tmp_path):
    spec = _spec(tmp_path, batch_size=8)
    run = spec.runs()[0]
    _fake_run(run, 3)
    with pytest.raises(GridError, match="batch_size = 16, the grid asks for 8"):
        run.check_config()


def test_run_trained_with_older_model_forms_is_an_error(tmp_path):
    # A config saved before rollout_frames / gru_input / scheme existed was trained with the
    # old forms; resumed beside fresh runs it would mix two models in one table.
    from hgan.models.config import ModelConfig
    from hgan.train.config import parse_command_line
    run_hgan, run_moco = _spec(tmp_path).runs()
    for run, key in ((run_hgan, "scheme"), (run_moco, "gru_input"), (run_hgan, "rollout_frames")):
        model = parse_command_line(run.train_flags())[0].model.to_dict()
        cfg = {"system": run.system, "seed": run.seed, "batch_size": 16, "frames": 16,
               "model": model}
        _fake_run(run, 3, config=cfg)
        run.check_config()                          # what the grid starts: fine
        del model[key]
        _fake_run(run, 3, config=cfg)
        old = getattr(ModelConfig.from_dict(model), key)
        with pytest.raises(GridError, match=f"model.{key} = {old!r}, the grid asks for"):
            run.check_config()


def test_a_mocogan_batch_of_one_is_refused_before_any_data(tmp_path):
    from hgan.experiments.grid import check_flags
    check_flags(_spec(tmp_path, models=("hgan",), batch_size=1))      # hgan has no such limit
    with pytest.raises(GridError, match=r"needs >= 2 videos per batch, got 1 \(--batch-size\)"):
        check_flags(_spec(tmp_path, batch_size=1))
    check_flags(_spec(tmp_path, batch_size=1, train_args=("--gru-input", "noise")))
    assert not os.path.exists(tmp_path / "data")


@pytest.mark.parametrize("change, hint", [
    (dict(train_traj=4), "pass --train-traj 3 as before"),
    (dict(test_traj=5), "pass --test-traj 2 as before"),
    (dict(traj_frames=7), "pass --traj-frames 6 as before"),
    (dict(data_seed=1), "pass --data-seed 0 as before"),
])
def test_dataset_of_another_size_names_the_flag_that_continues_the_grid(tmp_path, change, hint):
    # rerunning a small grid without its size flags said only "delete it or use another --out"
    sizes = dict(train_traj=3, test_traj=2, traj_frames=6, frames=4)
    spec = _spec(tmp_path, **sizes)
    datasets.generate(spec, "pendulum", ["train", "test"])
    with pytest.raises(GridError, match=re.escape(hint)):
        datasets.missing_splits(_spec(tmp_path, **{**sizes, **change}), "pendulum")


def test_dataset_of_another_size_is_an_error(tmp_path):
    spec = _spec(tmp_path, train_traj=3, test_traj=2, traj_frames=6, frames=4)
    assert datasets.missing_splits(spec, "pendulum") == ["train", "test"]
    datasets.generate(spec, "pendulum", ["train"])
    assert datasets.missing_splits(spec, "pendulum") == ["test"]
    bigger = _spec(tmp_path, train_traj=4, test_traj=2, traj_frames=6, frames=4)
    with pytest.raises(GridError, match="n_trajectories = 3, the grid asks for 4"):
        datasets.missing_splits(bigger, "pendulum")
    with pytest.raises(GridError, match="shorter than the training clips"):
        datasets.missing_splits(_spec(tmp_path, traj_frames=6, frames=8), "pendulum")


def test_output_pump_reads_tqdm_progress_and_collapses_updates():
    stream = io.StringIO()
    bar = tqdm(total=200, initial=50, desc="hgan/pendulum", file=stream, mininterval=0, ascii=True)
    for _ in range(30):
        bar.update(1)
    bar.set_postfix({"D_I": "1.2"})
    raw = ("[hgan] run directory x\n" + stream.getvalue()).encode()
    pump = OutputPump()
    log = b"".join(pump.feed(raw[i:i + 7]) for i in range(0, len(raw), 7))  # odd chunking
    assert (pump.it, pump.total) == (80, 200) and pump.rate and pump.rate > 0
    bar.close()
    log += pump.feed(stream.getvalue().encode()[len(raw) - len("[hgan] run directory x\n"):])
    log += pump.close()
    lines = log.decode().splitlines()
    assert lines[0] == "[hgan] run directory x"
    assert len(lines) == 2 and "80/200" in lines[1]  # one line for the whole bar, its last state


def _results(drift, active, iteration=100, appearance=0.01):
    return {"iteration": iteration, "metrics": ["physics", "cyclic", "appearance"],
            "physics": {"energy_drift": {"generated": {"median": drift}, "real": {"median": 0.01},
                                         "noise_floor": {"median": 0.008},
                                         "relative_to": "|mean H|"},
                        "frechet_state_distance": {"generated": 10 * drift, "real_half_vs_half": 0.1}},
            "appearance": {"generated": {"median": appearance}, "real": {"median": 0.003},
                           "generated_flagged": 0.0, "real_flagged": 0.0},
            "cyclic": {"active_momenta": active and {"active_dims": active, "k": 10, "threshold": 0.02}}}


def test_checks_state_the_claims_from_the_numbers(tmp_path):
    spec = _spec(tmp_path, systems=("pendulum", "mass_spring"), models=("hgan", "mocogan"),
                 iters=100, eval_metrics="physics,cyclic,appearance")
    values = {("pendulum", "hgan"): (0.05, 1), ("pendulum", "mocogan"): (0.2, None),
              ("mass_spring", "hgan"): (0.3, 3), ("mass_spring", "mocogan"): (0.1, None)}
    for run in spec.runs():
        drift, active = values[run.system, run.model]
        _fake_run(run, 100, results_iter=100)
        with open(run.path("eval", "results.json"), "w") as f:
            json.dump(_results(drift, active), f)
        run.save_record({"segments": [{"from": 0, "to": 100, "seconds": 12.0, "returncode": 0,
                                       "it_per_s_logged": 8.5}], "eval": {"seconds": 3.0}})
    rows = table.collect(spec)
    text = "\n".join(table.checks_section(spec, rows) + table.metric_sections(spec, rows))
    assert "| hgan < mocogan on energy drift | pendulum | holds | 0.05 (100 it, 12 s) | 0.2 (100 it, 12 s) |" in text
    assert "| hgan < mocogan on energy drift | mass_spring | does not hold | 0.3 (100 it, 12 s) |" in text
    assert "| pendulum | hgan | 0 | 1 of 10 | 1 | 0.02 | holds |" in text
    assert "| mass_spring | hgan | 0 | 3 of 10 | 1 | 0.02 | n/a |" in text
    assert "*real held-out videos (probe noise floor)* | 0.01 (0.008)" in text
    # the state distance beside real's half-vs-half is the generated one at the same sizes
    res = _results(0.05, 1)
    res["physics"]["frechet_state_distance"]["generated_half_vs_real_half"] = 0.123
    assert table.METRICS[2][0] == "state_distance" and table.METRICS[2][2](res) == 0.123
    del res["physics"]["frechet_state_distance"]["generated_half_vs_real_half"]
    assert table.METRICS[2][2](res) is None   # older results: not mixed with another sample size
    # an angle system's results from before angles entered as (cos, sin): another metric
    res["physics"]["frechet_state_distance"]["generated_half_vs_real_half"] = 0.123
    for system, angles, want in (("pendulum", None, None), ("double_pendulum_colors", None, None),
                                 ("mass_spring", None, 0.123), ("pendulum", "cos, sin", 0.123)):
        res["system"] = system
        res["physics"]["frechet_state_distance"].pop("angles", None)
        if angles:
            res["physics"]["frechet_state_distance"]["angles"] = angles
        assert table.METRICS[2][2](res) == want, system


@pytest.mark.parametrize("change, verdict", [
    (dict(mass_ratio=0.01), "n/a (hgan: foreground mass 0.01 x real's)"),   # draws no object
    (dict(drift=float("nan")), "n/a (hgan: non-finite value)"),
    (dict(mass_ratio=0.9), "holds"),
    # one frozen frame per video: a drift of nearly 0 from no motion at all
    (dict(mass_ratio=0.9, motion_ratio=0.02), "n/a (hgan: still videos: object motion 0.02 x real's)"),
    (dict(mass_ratio=0.9, motion_ratio=0.3), "holds"),
    # one video whatever the noise: its drift is one trajectory's, not the generator's
    (dict(mass_ratio=0.9, motion_ratio=1.0, spread_ratio=0.03),
     "n/a (hgan: collapsed: videos 0.03 x as far apart as real ones)"),
    (dict(mass_ratio=0.9, motion_ratio=1.0, spread_ratio=0.3), "holds"),
])
def test_a_degenerate_generator_gets_no_verdict(tmp_path, change, verdict):
    # A blank generator has near-zero energy drift: "hgan < mocogan" must not read "holds".
    spec = _spec(tmp_path, systems=("pendulum",), models=("hgan", "mocogan"), iters=100,
                 eval_metrics="physics,cyclic,appearance")
    for run in spec.runs():
        _fake_run(run, 100, results_iter=100)
        res = _results(change.get("drift", 0.001) if run.model == "hgan" else 0.2, None)
        for key in ("mass_ratio", "motion_ratio", "spread_ratio"):
            if run.model == "hgan" and key in change:
                res["appearance"][key] = change[key]
        with open(run.path("eval", "results.json"), "w") as f:
            json.dump(res, f)
    text = "\n".join(table.checks_section(spec, table.collect(spec)))
    assert f"| hgan < mocogan on energy drift | pendulum | {verdict} |" in text, text


def test_a_count_not_made_is_no_verdict(tmp_path):
    spec = _spec(tmp_path, systems=("pendulum",), models=("hgan",), iters=100,
                 eval_metrics="physics,cyclic,appearance")
    run, = spec.runs()
    _fake_run(run, 100, results_iter=100)
    res = _results(0.05, None)
    res["cyclic"]["active_momenta"] = {"active_dims": None, "k": 10, "threshold": None,
                                       "note": "non-finite dp/dt or momenta"}
    with open(run.path("eval", "results.json"), "w") as f:
        json.dump(res, f)
    text = "\n".join(table.checks_section(spec, table.collect(spec)))
    assert "| pendulum | hgan | 0 | not counted (non-finite dp/dt or momenta) | 1 | n/a | n/a |" in text


def test_extra_flags_may_be_one_flag_starting_with_a_dash():
    # argparse alone: "--train-args: expected one argument" for a lone '--amp'
    from hgan.experiments import cli
    argv = ["table1", "--out", "g", "--train-args", "--amp", "--eval-args", "--frames=9",
            "--iters", "3"]
    a = cli.build_parser().parse_args(cli._attach_flag_strings(argv))
    assert (a.train_args, a.eval_args, a.iters) == ("--amp", "--frames=9", 3)
    a = cli.build_parser().parse_args(cli._attach_flag_strings(
        ["table1", "--out", "g", "--train-args", "--amp --compile"]))
    assert a.train_args == "--amp --compile"


def test_an_evaluation_of_an_earlier_iteration_is_not_shown_as_the_runs(tmp_path):
    spec = _spec(tmp_path, models=("hgan",), iters=10)
    run, = spec.runs()
    _fake_run(run, 4, results_iter=4)   # stopped short at 4 and evaluated there
    segs = [{"from": 0, "to": 4, "seconds": 5.0, "returncode": 0}]
    run.save_record({"segments": segs, "eval": {"seconds": 7.0, "returncode": 0, "iteration": 4}})
    row, = table.collect(spec)
    assert (row["eval_s"], row["failed"]) == (7.0, False) and row["results"]
    _fake_run(run, 10, results_iter=4)  # resumed to 10; its evaluation there failed or is due
    segs.append({"from": 4, "to": 10, "seconds": 9.0, "returncode": 0})
    for failed in (0, 1):
        run.save_record({"segments": segs,
                         "eval": {"seconds": 7.0, "returncode": failed, "iteration": 4}})
        row, = table.collect(spec)
        assert (row["eval_s"], row["failed"], row["results"]) == (None, False, None)
        assert "| pendulum | hgan | 0 | 10 / 10 | 14 | n/a | n/a | not evaluated |" in "\n".join(
            table.runs_section([row]))


def test_a_run_trained_with_other_flags_than_the_grids_is_an_error(tmp_path):
    # --train-args changed between two grid commands: the finished runs were trained without
    # them, and compare.md's header would state flags their numbers never had.
    from hgan.train.config import parse_command_line
    run, = _spec(tmp_path, models=("hgan",)).runs()
    _fake_run(run, 10, config=parse_command_line(run.train_flags())[0].to_dict())
    run.check_config()
    # flags a resumed run may change (logging, the device) are no difference
    _spec(tmp_path, models=("hgan",), train_args=("--log-every", "5", "--no-cuda-graph")
          ).runs()[0].check_config()
    for args, diff in ((("--lr", "0.5"), "lr = 0.0002, the grid asks for 0.5"),
                       (("--cyc-lambda", "0"), "cyc_lambda = 0.01, the grid asks for 0.0"),
                       (("--k", "3"), "model.k = 10, the grid asks for 3"),
                       (("--amp",), "amp = False, the grid asks for True")):
        other, = _spec(tmp_path, models=("hgan",), train_args=args).runs()
        with pytest.raises(GridError, match=re.escape(diff)):
            other.check_config()


@pytest.mark.parametrize("drifts, noise_floor, verdict", [
    ((0.001, 0.005), 0.008, "n/a (both at or below real data's 0.01)"),   # real 0.01
    ((0.001, 0.02), 0.008, "holds"),
    ((0.009, 0.005), 0.008, "n/a (both at or below real data's 0.01)"),
    ((0.01, 0.005), 0.008, "n/a (both at or below real data's 0.01)"),    # at it
    ((0.009, 0.5), 0.8, "n/a (both at or below the probe's noise floor 0.8)"),
])
def test_two_values_the_probe_cannot_resolve_get_no_verdict(tmp_path, drifts, noise_floor,
                                                            verdict):
    spec = _spec(tmp_path, systems=("pendulum",), models=("hgan", "mocogan"), iters=100,
                 eval_metrics="physics,cyclic,appearance")
    for run, drift in zip(spec.runs(), drifts):
        _fake_run(run, 100, results_iter=100)
        res = _results(drift, None)
        res["physics"]["energy_drift"]["noise_floor"]["median"] = noise_floor
        with open(run.path("eval", "results.json"), "w") as f:
            json.dump(res, f)
    text = "\n".join(table.checks_section(spec, table.collect(spec)))
    assert f"| hgan < mocogan on energy drift | pendulum | {verdict} |" in text, text


def test_report_only_on_a_folder_that_is_no_grid_is_one_error(tmp_path, capsys):
    from hgan.experiments import cli
    missing = tmp_path / "typo"
    assert cli.main(["table1", "--report-only", "--out", str(missing)]) == 2
    assert capsys.readouterr().err == f"hgan.experiments: error: --report-only: no grid at {missing}\n"
    assert not missing.exists()


def test_output_pump_reads_a_slow_rate_given_in_seconds_per_iteration():
    # tqdm writes "2.50s/it" below 1 it/s: the status line's it/s is its inverse
    pump = OutputPump()
    pump.feed(b"hgan/pendulum:  3/10 [00:05<00:12,  2.50s/it, D_I=1.2]\r")
    assert (pump.it, pump.total, pump.rate) == (3, 10, 0.4)


@pytest.mark.parametrize("progress, tty, bars", [(True, True, True), (False, True, False),
                                                 (True, False, False)])
def test_inline_evaluations_draw_no_bars_under_no_progress(tmp_path, monkeypatch, progress,
                                                           tty, bars):
    # in-process evaluations write to the grid's own stderr: --no-progress reaches them, and
    # a stderr that is a file gets no bars either (hundreds of carriage-return updates)
    from hgan.experiments import runner
    monkeypatch.setattr(runner, "_tty", lambda: tty)
    spec = _spec(tmp_path, models=("hgan",))
    grid = runner.GridRunner(spec, progress=progress, inline_eval=True, log=lambda m: None)
    commands = []
    monkeypatch.setattr(grid, "_eval_inline", lambda job, cmd, log_path: commands.append(cmd))
    run, = spec.runs()
    grid._start(runner.Job("eval", "pendulum", run))
    assert commands == [run.eval_command() + ([] if bars else ["--no-progress"])]


def test_a_stopped_write_of_grid_json_or_a_runs_record_leaves_the_old_file_and_nothing_else(
        tmp_path, monkeypatch):
    # A stop while grid.json is being written (its settings, every invocation's wall time)
    # leaves the previous one, which the next invocation and --report-only read, and nothing
    # else (the hand-written tmp + rename left grid.json.tmp and experiment.json.tmp behind)
    from hgan.experiments import cli
    spec = _spec(tmp_path)
    run = spec.runs()[0]
    cli._save_grid(spec, {"wall_s_total": 12.0})
    before = open(tmp_path / "grid.json").read()
    run.save_record({"segments": [{"from": 0, "to": 4}]})
    grid_files, run_files = sorted(os.listdir(tmp_path)), sorted(os.listdir(run.dir))
    assert (grid_files, run_files) == (["grid.json", "runs"], ["experiment.json"])

    def half_then_stop(obj, f, **kw):
        f.write('{"spec": {')
        raise KeyboardInterrupt
    monkeypatch.setattr(json, "dump", half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cli._save_grid(spec, {"wall_s_total": 99.0})
    with pytest.raises(KeyboardInterrupt):
        run.save_record({"segments": []})
    monkeypatch.undo()
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(run.dir))) == (grid_files, run_files)
    assert open(tmp_path / "grid.json").read() == before
    assert cli._saved_grid(str(tmp_path))["wall_s_total"] == 12.0
    assert run.record() == {"segments": [{"from": 0, "to": 4}]}


def test_results_of_a_run_whose_checkpoint_is_gone_are_not_its_evaluation(tmp_path):
    # checkpoints/ deleted: the run trains again from the start, and the results of the
    # deleted one (of the same iteration) must not stand for the new one's evaluation
    run = _spec(tmp_path).runs()[0]
    _fake_run(run, 10, results_iter=10)
    assert run.evaluated()
    os.remove(run.checkpoint)
    assert not run.evaluated()


def test_results_of_a_later_iteration_than_the_run_are_not_its_evaluation(tmp_path):
    # results.json at iteration 10, the run now at 4 (its checkpoints were deleted and it
    # trained again, stopped by a deadline): those numbers are another run's
    run = _spec(tmp_path).runs()[0]
    _fake_run(run, 4, results_iter=10)
    assert not run.evaluated()


def test_a_physics_only_grid_evaluates_results_with_the_floored_drift_again(tmp_path):
    # the older drift metric (no "relative_to") is evaluated again whenever physics is asked
    # for, with or without the cyclic metric beside it
    spec = _spec(tmp_path, systems=("two_body",), models=("hgan",), eval_metrics="physics")
    run, = spec.runs()
    _fake_run(run, 10, results_iter=10, metrics=("physics",))
    path = run.path("eval", "results.json")
    r = json.load(open(path))
    r["system"], r["physics"] = "two_body", {"energy_drift": {"generated": {"median": 0.1}}}
    json.dump(r, open(path, "w"))
    assert not run.evaluated()
    r["physics"]["energy_drift"]["relative_to"] = "|mean H|"
    json.dump(r, open(path, "w"))
    assert run.evaluated()


def test_a_record_with_a_value_json_lacks_is_written_as_text(tmp_path):
    # a numpy float in a record (a rate read from a summary) must not end a grid that has
    # trained for hours: it is kept as its text
    import numpy as np
    run = _spec(tmp_path).runs()[0]
    run.save_record({"segments": [], "eval": {"seconds": np.float32(1.5)}})
    assert run.record() == {"segments": [], "eval": {"seconds": "1.5"}}


def test_datasets_are_generated_with_the_grids_seed_and_resolution(tmp_path):
    # --data-seed 1 --resolution 16: the files hold them, and the same grid then reuses them
    from hgan.data import open_h5
    spec = _spec(tmp_path, train_traj=3, test_traj=2, traj_frames=6, frames=4, data_seed=1,
                 resolution=16)
    datasets.generate(spec, "pendulum", ["train", "test"])
    for split in ("train", "test"):
        attrs = open_h5(spec.data_path("pendulum", split)).attrs
        assert (int(attrs["seed"]), int(attrs["resolution"])) == (1, 16), split
    assert datasets.missing_splits(spec, "pendulum") == []


def test_extra_train_flags_reach_only_the_models_they_apply_to(tmp_path, capsys):
    # --train-args go to every run; train.py refuses a flag its model does not read, so each
    # run gets those of its own model, and the grid says once which runs go without one.
    from hgan.experiments.grid import check_flags
    from hgan.train.config import parse_command_line
    spec = _spec(tmp_path, models=("hgan", "hnn_gan", "mocogan"),
                 train_args=("--gru-in=noise", "--gru-backend", "cells", "--dt", "0.1",
                             "--cyc-lambda", "0.5", "--ngf", "8", "--no-cuda-graph"))
    check_flags(spec)
    err = capsys.readouterr().err
    assert "[grid] --train-args --gru-input: not given to the hgan, hnn_gan runs (only mocogan " \
           "reads it)" in err
    assert "[grid] --train-args --dt: not given to the mocogan runs" in err
    assert "[grid] --train-args --cyc-lambda: not given to the hnn_gan, mocogan runs" in err
    cfg = {r.model: parse_command_line(r.train_flags())[0] for r in spec.runs()}
    assert cfg["mocogan"].model.gru_input == "noise" and cfg["hgan"].model.gru_input == "feedback"
    assert cfg["mocogan"].model.gru_backend == "cells" and cfg["hgan"].model.gru_backend == "auto"
    assert "[grid] --train-args --gru-backend: not given to the hgan, hnn_gan runs" in err
    assert cfg["hgan"].model.dt == cfg["hnn_gan"].model.dt == 0.1
    assert cfg["hgan"].cyc_lambda == 0.5
    assert all(c.model.ngf == 8 and not c.cuda_graph for c in cfg.values())
    # flags that apply pass as given
    run, = _spec(tmp_path, models=("hgan",), train_args=("--dt=0.1", "--ngf", "8")).runs()
    assert run.train_flags()[-3:] == ["--dt=0.1", "--ngf", "8"]
    # one that applies to none of the grid's models: said too (the same --train-args serve a
    # grid of any subset of the models)
    check_flags(_spec(tmp_path, models=("hgan",), train_args=("--gru-input", "noise")))
    assert "[grid] --train-args --gru-input: not given to the hgan runs" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "data")


def test_every_train_flag_survives_the_per_model_filter():
    # where a --train-args flag does not apply to a run's model, the grid rebuilds the others
    # from their parsed values; each train.py flag must come back as the value given (a flag
    # whose name is not its dest, a list-valued one, or a value str() does not round-trip
    # would be lost or changed without a word)
    import argparse
    from hgan.experiments.grid import model_args
    from hgan.model_kinds import unused_option
    from hgan.train.config import build_parser
    parser = build_parser(defaults=False)
    checked = 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or unused_option("hgan", action.dest):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            cases = [([action.option_strings[0]], True), ([action.option_strings[1]], False)]
        elif action.choices:
            value = list(action.choices)[-1]
            cases = [([action.option_strings[0], value], value)]
        else:
            value = {int: 3, float: 0.1 + 0.2}.get(action.type, "some dir/x")
            cases = [([action.option_strings[0], str(value)], value)]
        for given, want in cases:
            out = model_args("hgan", given + ["--gru-input", "noise"])
            assert "--gru-input" not in out, out     # the filter ran: the flags were rebuilt
            got = getattr(parser.parse_args(out), action.dest)
            assert got == want and type(got) is type(want), (given, out)
            checked += 1
    assert checked > 40


def test_a_setting_a_model_never_reads_is_no_difference_of_its_run(tmp_path):
    # a mocogan run an older grid gave --train-args --k 3 trained what a fresh one trains
    from hgan.train.config import parse_command_line
    run, = _spec(tmp_path, models=("mocogan",), train_args=("--k", "3")).runs()
    cfg = parse_command_line(run.train_flags())[0]
    cfg.model.k = 3
    _fake_run(run, 3, config=cfg.to_dict())
    run.check_config()


def test_extra_evaluation_flags_of_a_metric_the_grid_does_not_run_are_refused(tmp_path):
    # every evaluation of the grid runs --eval-metrics: such a flag changes none of them
    from hgan.experiments.grid import check_flags
    with pytest.raises(GridError, match=r"^--eval-args: --probe-steps is for the physics metric, "
                                        r"which --metrics tsne does not select"):
        check_flags(_spec(tmp_path, eval_metrics="tsne", eval_args=("--probe-steps", "5")))
    check_flags(_spec(tmp_path, eval_metrics="physics", eval_args=("--probe-steps", "5")))
    assert not os.path.exists(tmp_path / "data")


@pytest.mark.parametrize("flags", [("--parallel", "4"), ("--pack", "2"), ("--deadline", "60"),
                                   ("--status-every", "5"), ("--inline-eval",),
                                   ("--inline-eval", "--parallel=2")])
def test_report_only_says_the_flags_of_how_jobs_run_change_nothing(tmp_path, capsys, flags):
    # they were accepted without a word: --report-only runs no job (a note, not a refusal:
    # bench/gpu/table1.sh's fallback report passes the grid's own flags along)
    from hgan.experiments import cli
    out = tmp_path / "grid"
    assert cli.main(["table1", "--report-only", "--out", str(out), *flags]) == 2  # no grid.json
    named = sorted({f.split("=")[0] for f in flags if f.startswith("--")},
                   key=["--parallel", "--pack", "--deadline", "--status-every",
                        "--inline-eval"].index)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"[grid] --report-only runs no job: {', '.join(named)} "
                      f"change{'s' if len(named) == 1 else ''} nothing")
    assert err[1].startswith("hgan.experiments: error: --report-only: no grid at")
    assert cli.main(["table1", "--report-only", "--out", str(out), "--systems", "pendulum"]) == 2
    assert "[grid]" not in capsys.readouterr().err   # a selection flag is no such flag
