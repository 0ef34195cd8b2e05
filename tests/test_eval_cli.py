"""`python -m hgan.evaluate`: one checkpoint end to end (untrained tiny models), and `compare`."""
import copy
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from hgan.evaluate import cli, fvd, report, structure
from hgan.models import ModelConfig, build_models


def _checkpoint(tmp_path, model, data_path, iteration):
    cfg = ModelConfig(model=model, k=3, motion_dim=6, content_dim=8, hidden=16, ngf=8, ndf=8)
    torch.manual_seed(0)
    g = build_models(cfg).generator
    path = tmp_path / f"{model}.pt"
    torch.save({"config": {"model": cfg.to_dict(), "data_path": str(data_path), "system": "pendulum"},
                "generator": g.state_dict(), "iteration": iteration}, path)
    return str(path), g


class _StandIn(torch.nn.Module):
    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = videos.float() / 127.5 - 1.0
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


@pytest.fixture(scope="module")
def data_copy(tiny_pendulum_h5, tmp_path_factory):
    # A private copy: the probe cache is written beside the data file.
    dst = tmp_path_factory.mktemp("eval_data") / "train.h5"
    shutil.copy(tiny_pendulum_h5, dst)
    return dst


def test_evaluate_checkpoint_end_to_end(tmp_path, data_copy, monkeypatch, capsys):
    ckpt, _ = _checkpoint(tmp_path, "hgan", data_copy, iteration=7)
    det = tmp_path / fvd.I3D_FILENAME
    torch.jit.script(_StandIn()).save(str(det))
    monkeypatch.setenv(fvd.I3D_ENV, str(det))
    out = tmp_path / "eval"
    res = cli.main(["--checkpoint", ckpt, "--out", str(out), "--physics-videos", "4",
                    "--probe-steps", "5", "--tsne-samples", "40", "--tsne-iters", "250", "--rollout-steps",
                    "12", "--rollout-videos", "4", "--momenta-videos", "8",
                    "--fvd-videos", "4", "--seeds", "0,1", "--device", "cpu",
                    "--no-progress"])
    assert "%|" not in capsys.readouterr().err  # no probe or I3D progress bar
    saved = json.loads((out / "results.json").read_text())
    assert saved["iteration"] == 7 and saved["model"] == "hgan" and saved["system"] == "pendulum"
    assert saved["fvd"]["num_videos"] == 4 and not saved["fvd"]["canonical"]
    assert len(saved["fvd"]["fvd_per_seed"]) == 2 and saved["fvd"]["fvd_mean"] >= 0
    ph = saved["physics"]
    assert len(ph["probe_rmse"]) == 2 and ph["num_videos"] == 4
    for key in ("noise_floor", "real", "shuffled_real", "generated"):
        assert np.isfinite(ph["energy_drift"][key]["median"])
    for key in ("generated", "shuffled_real", "real_half_vs_half",  # 4 videos: halves of 2
                "generated_half_vs_real_half"):
        assert np.isfinite(ph["frechet_state_distance"][key])
    assert saved["cyclic"]["active_momenta"]["k"] == 3
    ap = saved["appearance"]
    assert ap["num_generated"] == 4 and ap["real"]["median"] < ap["flag_threshold"]
    assert 1 <= saved["cyclic"]["active_momenta"]["active_dims"] <= 3
    assert res["figures"] == saved["figures"] and res["checkpoint"] == saved["checkpoint"]
    for path in res["figures"].values():
        assert os.path.dirname(path) == ""  # figures sit beside results.json
        assert os.path.getsize(out / path) > 0
    assert {"samples_real", "samples_hgan", "tsne", "active_momenta", "energy_rollout"} <= set(res["figures"])
    assert (out / "samples_hgan.gif").exists()
    text = (out / "report.md").read_text()
    assert "iteration 7" in text and "Active momentum dimensions" in text
    # Paths are relative to the results directory and still lead to the right files.
    assert_no_absolute_paths(saved)
    assert str(tmp_path) not in (out / "results.json").read_text() and str(tmp_path) not in text
    assert os.path.samefile(out / saved["checkpoint"], ckpt)
    assert os.path.samefile(out / saved["data"], data_copy)
    assert os.path.samefile(out / saved["real_data"], data_copy)  # no test.h5 beside it
    assert saved["real_seen_in_training"] and "the GAN saw them" in text
    assert os.path.samefile(out / saved["physics"]["probe_cache"],
                            str(data_copy).replace(".h5", ".probe.pt"))
    assert saved["config"]["data_path"] == saved["data"]  # absolute in the checkpoint's config


def assert_no_absolute_paths(obj, where="results"):
    if isinstance(obj, str):
        assert not os.path.isabs(obj) and not obj.startswith("/"), f"{where} = {obj!r}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            assert_no_absolute_paths(v, f"{where}[{k!r}]")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            assert_no_absolute_paths(v, f"{where}[{i}]")


def test_portable_paths_relative_to_the_results_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = {"checkpoint": "/runs/a/checkpoints/last.pt", "data": "data/pendulum/train.h5",
               "real_data": "/data/pendulum/test.h5", "model": "hgan", "metrics": ["fvd"],
               "figures": {"tsne": "/runs/a/eval/tsne_hgan.png"},
               "physics": {"probe_cache": "/data/pendulum/train.probe.pt", "frames": 16},
               "config": {"out": "/runs/a", "data": "data", "model": {"dt": 0.05}}}
    got = cli.portable_paths(results, "/runs/a/eval")
    assert got["checkpoint"] == "../checkpoints/last.pt"
    # relative to the working directory as this process sees it
    assert os.path.normpath(os.path.join("/runs/a/eval", got["data"])) == \
        os.path.join(str(tmp_path), "data/pendulum/train.h5")
    assert got["real_data"] == "../../../data/pendulum/test.h5"
    assert got["figures"] == {"tsne": "tsne_hgan.png"}
    assert got["physics"] == {"probe_cache": "../../../data/pendulum/train.probe.pt", "frames": 16}
    assert got["config"] == {"out": "..", "data": "data", "model": {"dt": 0.05}}
    assert got["model"] == "hgan" and got["metrics"] == ["fvd"]
    assert results["checkpoint"] == "/runs/a/checkpoints/last.pt"  # the input is not modified
    assert_no_absolute_paths(got)


def test_committed_results_have_no_absolute_paths():
    root = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "results")
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
             if f.endswith((".json", ".md"))]
    assert any(f.endswith(".json") for f in files)
    for path in files:
        text = open(path).read()
        assert "/tmp/" not in text and "/home/" not in text and "/work/" not in text, path
        if path.endswith(".json"):
            assert_no_absolute_paths(json.loads(text), os.path.basename(path))


def test_fvd_missing_detector_is_skipped_or_fatal(tmp_path, data_copy, monkeypatch, capsys):
    ckpt, _ = _checkpoint(tmp_path, "mocogan", data_copy, iteration=3)
    # $HGAN_I3D names a file that is not there: skipped, and its path stays out of the results
    monkeypatch.setenv(fvd.I3D_ENV, str(tmp_path / "nowhere" / fvd.I3D_FILENAME))
    res = cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / "e"), "--metrics", "fvd,cyclic"])
    assert_no_absolute_paths(json.loads((tmp_path / "e" / "results.json").read_text()))
    assert fvd.I3D_FILENAME in res["fvd"]["skipped"] and "nowhere" not in res["fvd"]["skipped"]
    monkeypatch.delenv(fvd.I3D_ENV)
    assert res["cyclic"]["active_momenta"] is None  # GRU motion: no Hamiltonian
    with pytest.raises(SystemExit) as e:  # asked for explicitly: one error line, exit 2
        cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / "e2"), "--metrics", "fvd",
                  "--i3d", str(tmp_path / "missing.pt")])
    assert e.value.code == 2 and "i3d_torchscript.pt" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()
    # FVD alone with no detector anywhere: an evaluation of nothing exited 0, "Not computed"
    monkeypatch.setenv(fvd.I3D_ENV, str(tmp_path / "nowhere" / fvd.I3D_FILENAME))
    with pytest.raises(SystemExit) as e:
        cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / "e3"), "--metrics", "fvd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert "--metrics fvd: " in err[0] and fvd.I3D_FILENAME in err[0]
    assert not (tmp_path / "e3").exists()


def test_active_momenta_oracle(tmp_path, data_copy):
    # mean |dp/dt| must equal mean |dH/dq| recomputed by autograd (float64) at every state
    # the rollout steps from, (q_t, p_t) for t < frames - 1, and at no other.
    _, g = _checkpoint(tmp_path, "hgan", data_copy, iteration=0)
    am = structure.active_momenta(g, n=8, frames=5, seed=2)
    out = g.motion(8, 5, generator=torch.Generator().manual_seed(2))
    h = copy.deepcopy(g.motion_module.hamiltonian).double()

    def mean_abs_dhdq(q, p):
        q = q.detach().double().requires_grad_(True)
        dhdq, = torch.autograd.grad(h(q.flatten(0, 1), p.detach().double().flatten(0, 1)).sum(),
                                    q)
        return dhdq.abs().mean(dim=(0, 1)).numpy()
    want = mean_abs_dhdq(out["q"][:, :-1], out["p"][:, :-1])
    np.testing.assert_allclose(am["mean_abs_dpdt"], want, rtol=1e-5)
    # the states matter at this tolerance: those one step later give another mean
    shifted = mean_abs_dhdq(out["q"][:, 1:], out["p"][:, 1:])
    assert np.abs(shifted / want - 1).max() > 1e-4


def test_energy_rollouts_run_both_ways_from_one_state():
    # Oracle: the learned H along rollouts of the module's own integrator from the state the
    # motion draws for that seed, at +dt and at -dt, relative to H at that state.
    torch.manual_seed(0)
    cfg = ModelConfig(model="hgan", k=3, motion_dim=6, content_dim=8, hidden=16, ngf=8, ndf=8)
    g = build_models(cfg).generator
    # A stiffer H: at initialisation these 6 steps change H by float32 rounding only (<= 3e-7,
    # the atol's size), which rollouts from another state matched to within 3x. Here the
    # change is ~4e-4, and another seed's state misses by 1e3 x the atol.
    with torch.no_grad():
        g.motion_module.hamiltonian.layers[-1].weight *= 30
    out = structure.energy_rollouts(g, n=4, steps=6, seed=3)
    assert min(np.abs(out[key]).max() for key in ("forward", "backward")) > 1e-4
    y0 = g.motion(4, 1, generator=torch.Generator().manual_seed(3))
    h = g.motion_module.hamiltonian
    for key, dt in (("forward", 0.05), ("backward", -0.05)):
        with torch.enable_grad():
            q, p, _ = h.rollout(y0["q"][:, 0], y0["p"][:, 0], 7, dt=dt)
            e = h(q.flatten(0, 1), p.flatten(0, 1)).detach().double().view(4, 7)
        want = ((e - e[:, :1]) / e[:, :1].abs()).numpy()
        np.testing.assert_allclose(out[key], want, rtol=1e-4, atol=1e-7)
    assert not np.allclose(out["forward"], out["backward"])
    assert out["summary"]["dt"] == 0.05 and out["summary"]["steps"] == 6


def test_active_momenta_count_what_the_hamiltonian_uses(tmp_path, data_copy):
    # H made independent of q_1 and q_2 (their columns of the first layer zeroed): dp_1/dt and
    # dp_2/dt are exactly 0, so one dimension is active; a flat H (all of q ignored) has none.
    _, g = _checkpoint(tmp_path, "hgan", data_copy, iteration=0)
    w = g.motion_module.hamiltonian.layers[0].weight
    k = g.motion_module.k
    with torch.no_grad():
        w[:, 1:k] = 0
        w[:, 0] *= 10
    am = structure.active_momenta(g, n=8, frames=5, seed=2)
    assert am["mean_abs_dpdt"][1:] == [0.0] * (k - 1) and am["active_dims"] == 1
    with torch.no_grad():
        w[:, :k] = 0
    am = structure.active_momenta(g, n=8, frames=5, seed=2)
    assert am["mean_abs_dpdt"] == [0.0] * k and am["active_dims"] == 0   # not "1 of k"


def test_active_count_needs_the_floor_and_finite_rates():
    count = structure.count_active
    assert count([1e-9, 1e-10, 0.0], p_spread=1.0, duration=0.75)["active_dims"] == 0
    assert count([0.5, 0.01, 0.2], p_spread=1.0, duration=0.75)["active_dims"] == 2
    assert count([0.5, 0.01, 0.2], p_spread=1.0, duration=0.75)["threshold"] == 0.05
    assert count([0.02, 0.001, 0.0], p_spread=1.0, duration=0.75)["active_dims"] == 1  # floor 0.0133
    nan = count([float("nan"), 0.3, 0.1], p_spread=1.0, duration=0.75)
    assert nan["active_dims"] is None and "non-finite" in nan["note"]
    assert structure.active_text({"k": 3, **nan}).startswith("not counted (non-finite")


def test_compare_table_carries_iterations(tmp_path, capsys):
    def run(name, model, system, it, drift):
        d = tmp_path / name / "eval"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "model": model, "system": system, "iteration": it, "fvd": {"skipped": "no detector"},
            "physics": {"energy_drift": {"generated": {"median": drift}, "relative_to": "|mean H|"},
                        "frechet_state_distance": {"generated": 2.5}},
            "cyclic": {"active_momenta": None, "energy_rollout": None}}))
        return str(tmp_path / name)

    dirs = [run("a", "hgan", "pendulum", 1200, 0.05), run("b", "mocogan", "pendulum", 900, 0.3)]
    text = cli.main(["compare", *dirs, "--out", str(tmp_path / "t.md")])
    assert "| hgan | 0.05 (1200 it) |" in text and "| mocogan | 0.3 (900 it) |" in text
    assert "FVD" not in text.split("###")[1]  # a metric no run has is left out
    assert (tmp_path / "t.md").read_text() == text
    # pendulum results without "angles" predate (cos, sin) angles: marked, not silently mixed
    assert text.count("n/a (raw angles: older results, not comparable)") == 2
    assert "(2.5)" not in text
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", str(tmp_path)])
    assert e.value.code == 2 and "results.json" in capsys.readouterr().err


def test_compare_cells_show_each_value_where_its_column_says():
    # Every number distinct, so a cell showing a neighbour's value cannot pass.
    r = {"model": "hgan", "system": "pendulum", "iteration": 100,
         "fvd": {"fvd_mean": 123.45, "fvd_std": 6.78},
         "cyclic": {"active_momenta": {"active_dims": 1, "k": 3},
                    "energy_rollout": {"forward_max_abs_rel_drift": 0.0123,
                                       "backward_max_abs_rel_drift": 0.456}}}
    text = report.compare_table([r])
    fvd_table, active, energy = text.split("### ")[1:]
    assert fvd_table.startswith("FVD") and "| hgan | 123.5 ± 6.8 (100 it) |" in fvd_table
    assert "| hgan | 1 of 3 (100 it) |" in active
    assert energy.startswith("learned-energy drift over the rollout, forward / backward")
    assert "| hgan | 0.0123 / 0.456 (100 it) |" in energy


def test_fvd_on_clips_the_gan_trained_on_is_not_canonical(tmp_path, data_copy, tiny_pendulum_h5,
                                                           monkeypatch):
    monkeypatch.setitem(fvd.PROTOCOL, "num_videos", 4)   # the protocol's count, at test size
    ckpt, _ = _checkpoint(tmp_path, "hgan", data_copy, iteration=7)
    det = tmp_path / fvd.I3D_FILENAME
    torch.jit.script(_StandIn()).save(str(det))
    canonical, rows = {}, {}
    real_stats = fvd.real_stats
    monkeypatch.setattr(fvd, "real_stats", lambda frames_ds, det, **kw: rows.update(
        {name: (list(kw["rows"]), frames_ds.shape[0])}) or real_stats(frames_ds, det, **kw))
    # no test.h5 beside the training file: its last 20%; then another file as --real
    for name, real in (("seen", []), ("held_out", ["--real", str(tiny_pendulum_h5)])):
        out = tmp_path / name
        cli.main(["--checkpoint", ckpt, "--out", str(out), "--metrics", "fvd", "--i3d", str(det),
                  "--fvd-videos", "4", "--seeds", "0", "--device", "cpu", *real])
        saved = json.loads((out / "results.json").read_text())
        canonical[name] = (saved["real_seen_in_training"], saved["fvd"]["canonical"])
        assert ("NOT the canonical" in (out / "report.md").read_text()) == (name == "seen")
    assert canonical == {"seen": (True, False), "held_out": (False, True)}
    # the rows the real statistics (and their cache key) are taken from: the training file's
    # last 20% (rounded: 5 of 24), or every trajectory of --real
    with h5py.File(data_copy) as f:
        n = len(f["frames"])
    held = round(n / 5)
    assert rows == {"seen": (list(range(n - held, n)), held), "held_out": (list(range(n)), n)}


def test_compare_and_report_mark_drift_against_the_energy_scale_as_older(tmp_path):
    def run(name, system, drift):
        d = tmp_path / name / "eval"
        d.mkdir(parents=True)
        r = {"model": "hgan", "system": system, "iteration": 10, "fvd": {"skipped": "none"},
             "physics": {"energy_drift": {"generated": {"median": drift}},
                         "frechet_state_distance": {"generated": 2.5, "angles": "cos, sin"}},
             "settings": {"probe_version": 3}}
        (d / "results.json").write_text(json.dumps(r))
        return str(tmp_path / name)

    # no "relative_to": written when every system's drift was floored at its energy scale
    text = cli.main(["compare", run("a", "two_body", 0.0116), run("b", "double_pendulum", 0.25)])
    drift = text.split("###")[1]
    assert "n/a (drift against the energy scale: older results, not comparable)" in drift
    assert "0.0116" not in drift and "0.25 (10 it)" in drift  # the double pendulum kept its floor
    r = _results_with_distinct_numbers()
    assert "energy drift = std/|mean H| of" in report.checkpoint_report(r)
    del r["physics"]["energy_drift"]["relative_to"]
    assert "energy drift = std/max(|mean H|, energy scale) of" in report.checkpoint_report(r)


def _results_with_distinct_numbers():
    """A results.json dict whose every reported number differs from every other."""
    return {"model": "hgan", "system": "pendulum", "checkpoint": "c.pt", "iteration": 100,
            "data": "train.h5", "device": "cpu", "real_seen_in_training": False,
            "physics": {"probe_rmse": [0.011, 0.022], "probe_rel_rmse": [0.033, 0.044],
                        "num_videos": 8, "frames": 16,
                        "energy_drift": {**{k: {"median": v} for k, v in (
                            ("noise_floor", 0.101), ("real", 0.202), ("shuffled_real", 0.303),
                            ("generated", 0.404))}, "relative_to": "|mean H|"},
                        "frechet_state_distance": {"real_half_vs_half": 1.11, "shuffled_real": 2.22,
                                                   "generated": 3.33,
                                                   "generated_half_vs_real_half": 4.44,
                                                   "angles": "cos, sin"}},
            "appearance": {"object_mass_pixels": 55.5, "flag_threshold": 0.123,
                           "real": {"median": 0.0061}, "generated": {"median": 0.0072},
                           "real_flagged": 0.0625, "generated_flagged": 0.875, "mass_ratio": 0.93,
                           "real_blank": 0.0, "generated_blank": 0.125,
                           "motion": {"real": {"median": 0.777}, "generated": {"median": 0.0388}},
                           "motion_ratio": 0.0499,
                           "spread": {"real": 9.87, "generated": 0.123}, "spread_ratio": 0.0125},
            "cyclic": {"active_momenta": {"active_dims": 1, "k": 3, "threshold": 0.0456,
                                          "floor": 0.0078},
                       "energy_rollout": {"steps": 512, "dt": 0.05, "n": 64,
                                          "forward_max_abs_rel_drift": 0.0123,
                                          "backward_max_abs_rel_drift": 0.456}}}


def test_the_checkpoint_report_puts_each_number_in_its_row():
    text = report.checkpoint_report(_results_with_distinct_numbers())
    assert "| probe noise floor (true states + probe error) | 0.101 | |" in text
    assert "| real, held-out | 0.202 | 1.11 (half vs half) |" in text
    assert "| real, frames shuffled in time | 0.303 | 2.22 |" in text
    assert "| generated | 0.404 | 3.33; 4.44 (half vs half, to set beside real's) |" in text
    assert "| real, held-out | 0.0061 | 6% | 0% | 1 | 0.777 | 9.87 |" in text
    assert "| generated | 0.0072 | 88% | 12% | 0.93 | 0.0388 (0.05 x real) | 0.123 (0.013 x real) |" \
        in text
    # results from before the blank count and the motion metric: n/a, not a crash
    old = _results_with_distinct_numbers()
    for k in ("real_blank", "generated_blank", "motion", "motion_ratio", "spread",
              "spread_ratio"):
        del old["appearance"][k]
    assert "| generated | 0.0072 | 88% | n/a | 0.93 | n/a | n/a |" in report.checkpoint_report(old)
    assert "forward 0.0123, backward 0.456." in text and "**1 of 3**" in text


def test_the_checkpoint_report_states_the_active_rule_it_counted_with(monkeypatch):
    # the rule's percentages come from the constants the count uses, not a copy of them
    text = report.checkpoint_report(_results_with_distinct_numbers())
    assert "the larger of 10% of the largest and 0.0078" in text
    assert "moves a momentum by 1% of the momenta's spread" in text
    monkeypatch.setattr(structure, "ACTIVE_FRACTION", 0.25)
    monkeypatch.setattr(structure, "ACTIVE_FLOOR", 0.05)
    text = report.checkpoint_report(_results_with_distinct_numbers())
    assert "the larger of 25% of the largest" in text and "by 5% of the momenta's" in text


def test_compare_cells_show_the_half_vs_half_state_distance_first():
    text = report.compare_table([_results_with_distinct_numbers()])
    assert "| hgan | 4.44 (3.33) (100 it) |" in text


def test_real_clips_keep_each_trajectorys_frames_states_and_parameters_together():
    # Every frame's pixels and first state coordinate are 10 * trajectory + frame index, and
    # the parameter m is the trajectory index: a clip decodes back to where it came from.
    from types import SimpleNamespace
    n, t = 6, 9
    code = 10 * np.arange(n)[:, None] + np.arange(t)[None, :]
    frames = np.broadcast_to(code[:, :, None, None, None], (n, t, 2, 2, 3)).astype(np.uint8)
    states = np.stack([code, -code], -1).astype(np.float32)
    ds = SimpleNamespace(frames=frames, states=states, params={"m": np.arange(n) * 1.0})
    idx = np.array([4, 1, 5])
    vids, st, params = cli._real_videos(ds, idx, 5, seed=0)
    assert vids.shape == (3, 5, 2, 2, 3) and st.shape == (3, 5, 2)
    v = vids[:, :, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(v // 10, np.repeat(idx[:, None], 5, 1))  # one trajectory
    np.testing.assert_array_equal(np.diff(v % 10, axis=1), 1)               # consecutive frames
    np.testing.assert_array_equal(st[..., 0], v)                            # states aligned
    np.testing.assert_array_equal(params["m"], idx)


def test_physics_metrics_feed_each_measure_the_states_it_is_defined_on(monkeypatch):
    # A stand-in probe reads a frame's code (10 * trajectory + frame) off its pixels and adds
    # a known error of 0.5, so true, probed, shuffled and generated states all differ: each
    # measure is checked for the states it was handed.
    from types import SimpleNamespace
    from hgan.evaluate import probe as hprobe
    n, t, frames = 8, 10, 6
    code = 10 * np.arange(n)[:, None] + np.arange(t)[None, :]
    frames_u8 = np.broadcast_to(code[:, :, None, None, None], (n, t, 2, 2, 3)).astype(np.uint8)
    ds = SimpleNamespace(frames=frames_u8, states=code[..., None].astype(np.float32),
                         params={"m": np.arange(n) * 1.0}, color_index=np.zeros((n, 1), np.int32))

    class CodeProbe:
        angular = ()

        def states(self, videos):
            return np.asarray(videos)[:, :-1, 0, 0, :1].astype(np.float64) + 0.5

    gen_videos = 100 + frames_u8[:n, :frames]                # codes 100..179
    drifts, fsds, floors = [], [], []
    monkeypatch.setattr(hprobe, "load_or_train_probe", lambda *a, **k: CodeProbe())
    monkeypatch.setattr(cli, "_generated_videos", lambda *a, **k: gen_videos)
    monkeypatch.setattr(hprobe, "energy_drift",
                        lambda system, s, params: drifts.append(np.array(s)) or np.zeros(len(s)))
    monkeypatch.setattr(hprobe, "noise_floor", lambda system, s, params, rmse, seed:
                        floors.append((np.array(s), rmse)) or np.zeros(len(s)))
    monkeypatch.setattr(hprobe, "frechet_state_distance",
                        lambda a, b, angular=(): fsds.append((np.array(a), np.array(b))) or 0.0)
    from hgan.data import get_system
    out = cli.physics_metrics(None, ds, get_system("pendulum"), "/nowhere/train.h5",
                              (ds, np.arange(n)),
                              n=n, frames=frames, seed=3, probe_steps=1, probe_width=8)
    np.testing.assert_allclose(out["probe_rmse"], [0.5])
    real_p, shuffled_p, gen_p = drifts                       # real, shuffled real, generated
    assert np.all(gen_p >= 100) and np.all(real_p < 100)
    # real videos: probed states (true + 0.5), frames consecutive within each video
    assert np.all((real_p - 0.5) % 10 < t) and np.all(np.diff(real_p[..., 0], axis=1) == 1)
    assert not np.array_equal(shuffled_p, real_p)
    # frames of each video's own window, in another order
    np.testing.assert_array_equal((shuffled_p - 0.5) // 10,
                                  np.broadcast_to((real_p[:, :1] - 0.5) // 10, shuffled_p.shape))
    assert np.all(np.abs(shuffled_p - real_p[:, :1]) <= frames - 1)
    # the noise floor: the true states of the frames the probe read (t, not t + 1), its rmse
    [(floor_states, rmse)] = floors
    np.testing.assert_array_equal(floor_states, real_p - 0.5)
    np.testing.assert_allclose(rmse, [0.5])
    # Frechet: generated against the real videos in order, then the shuffled, then halves
    (a, b), (c, d), (e, f), (g, h) = fsds
    np.testing.assert_array_equal(a, real_p)
    np.testing.assert_array_equal(b, gen_p)
    np.testing.assert_array_equal(c, real_p)
    np.testing.assert_array_equal(d, shuffled_p)
    np.testing.assert_array_equal(e, real_p[:4])
    np.testing.assert_array_equal(f, real_p[4:])
    np.testing.assert_array_equal(g, real_p[4:])
    np.testing.assert_array_equal(h, gen_p[:4])


def test_physics_metrics_list_n_body_states_and_masses_by_colour(monkeypatch, tmp_path):
    # The probe's targets, the held-out true states (the noise floor's), the real videos'
    # masses and the generated videos' (median) masses all list bodies by colour, as the probe
    # reads them: in two_body_colors each trajectory draws its colours and its masses per body.
    from hgan.data import generate_dataset, open_h5
    from hgan.evaluate import probe as hprobe
    path = generate_dataset("two_body_colors", tmp_path, train=10, test=0, frames=8, seed=2,
                            progress=False)["train"]
    ds = open_h5(path)
    system, n, frames = ds.system, 6, 5
    got = {}

    class ZeroProbe:
        angular = ()

        def states(self, videos):
            return np.zeros((len(videos), videos.shape[1] - 1, 8))

    def fake_train(data_path, frames_, states, **kw):
        got["targets"] = states[:]
        return ZeroProbe()

    monkeypatch.setattr(hprobe, "load_or_train_probe", fake_train)
    monkeypatch.setattr(cli, "_generated_videos",
                        lambda g, n_, f, seed: np.zeros((n_, f, 32, 32, 3), np.uint8))
    monkeypatch.setattr(hprobe, "noise_floor", lambda system, s, params, rmse, seed: got.update(
        floor=(np.array(s), params)) or np.zeros(len(s)))
    drift_params = []
    monkeypatch.setattr(hprobe, "energy_drift", lambda system, s, params: drift_params.append(
        params) or np.zeros(len(s)))
    idx = np.arange(2, 2 + n)
    cli.physics_metrics(None, ds, system, path, (ds, idx), n=n, frames=frames, seed=1,
                        probe_steps=1, probe_width=8)
    ci = ds.color_index
    swap = ci[:, 0] > ci[:, 1]                 # trajectories whose body 2 has the lower colour
    assert swap[idx].any() and (~swap[idx]).any()

    def by_colour(a, rows):                    # states [N, ..., 8] or masses [N, 2]
        a = np.asarray(a)
        perm = [2, 3, 0, 1, 6, 7, 4, 5] if a.shape[-1] == 8 else [1, 0]
        flip = swap[rows].reshape((-1,) + (1,) * (a.ndim - 1))
        return np.where(flip, a[..., perm], a)

    everyone = np.arange(len(ds))
    np.testing.assert_array_equal(got["targets"], by_colour(ds.states[()], everyone))
    _, true_states, _ = cli._real_videos(ds, idx, frames, 1)  # the same windows
    floor_states, floor_params = got["floor"]
    np.testing.assert_array_equal(floor_states, by_colour(true_states[:, :-1], idx))
    np.testing.assert_array_equal(floor_params["m"], by_colour(ds.params["m"][idx], idx))
    real_params, _, gen_params = drift_params
    np.testing.assert_array_equal(real_params["m"], by_colour(ds.params["m"][idx], idx))
    np.testing.assert_array_equal(gen_params["m"][0],
                                  np.median(by_colour(ds.params["m"], everyone), 0))


def _physics(gen, real, floor, rel=(0.1, 0.2)):
    return {"probe_rmse": [0.01] * len(rel), "probe_rel_rmse": list(rel), "num_videos": 8,
            "frames": 16,
            "energy_drift": {"generated": {"median": gen}, "real": {"median": real},
                             "noise_floor": {"median": floor}, "shuffled_real": {"median": 1.0},
                             "relative_to": "|mean H|"},
            "frechet_state_distance": {"generated": 2.5, "shuffled_real": 9.0, "angles": None,
                                       "real_half_vs_half": 1.0,
                                       "generated_half_vs_real_half": 3.5}}


def _result(system, model, physics, **settings):
    return {"model": model, "system": system, "iteration": 70, "checkpoint": "c", "data": "d",
            "device": "cpu", "physics": physics,
            "settings": {"physics_videos": 64, "probe_steps": 600, "probe_version": 3,
                         **settings}}


def test_the_report_says_when_the_physics_numbers_cannot_order_anything():
    fine = report.checkpoint_report(_result("mass_spring", "hgan", _physics(0.3, 0.1, 0.05)))
    assert "reads the state poorly" not in fine and "drift no more than real" not in fine
    poor = report.checkpoint_report(_result("mass_spring", "hgan",
                                            _physics(0.3, 0.1, 0.05, rel=(0.2, 0.51))))
    assert "**The probe reads the state poorly here** (relative RMSE up to 0.51" in poor
    low = report.checkpoint_report(_result("mass_spring", "hgan", _physics(0.1, 0.08, 0.1)))
    assert "Generated videos drift no more than real ones (0.1 <= 0.1, the larger of real's " \
           "and the noise floor)" in low and "reads the state poorly" not in low


def test_compare_marks_drifts_at_real_level_old_n_body_results_and_differing_settings():
    runs = [_result("three_body", "hgan", _physics(0.05, 0.2, 0.1)),
            _result("three_body", "mocogan", _physics(0.5, 0.2, 0.1), probe_steps=3000),
            _result("two_body", "hgan", _physics(0.5, 0.2, 0.1)),
            _result("two_body", "mocogan", _physics(0.7, 0.2, 0.1))]
    del runs[3]["settings"]["probe_version"]               # from before bodies by colour
    text = report.compare_table(runs)
    drift = text.split("### ")[1]
    assert "| hgan | 0.05 (at or below the real level 0.2) (70 it) | 0.5 (70 it) |" in drift
    assert "| mocogan | 0.5 (70 it) | n/a (n-body states in index order: older results, not " \
           "comparable) (70 it) |" in drift
    fsd = text.split("### ")[2]
    assert fsd.count("older results, not comparable") == 1 and "3.5 (2.5)" in fsd
    settings = text.split("### ")[-1]
    assert settings.startswith("Evaluation settings that differ between these runs")
    assert "| model | system | probe_steps | probe_version |" in settings
    assert "| mocogan | three_body | 3000 | 3 |" in settings
    assert "| mocogan | two_body | 600 | n/a |" in settings and "physics_videos" not in settings
    same = report.compare_table(runs[:1] + runs[2:3])
    assert "settings that differ" not in same


def test_compare_flags_a_setting_only_between_runs_whose_metrics_it_changes():
    # An appearance-only evaluation stores probe_steps too (the parser's default): beside a
    # physics run with other probe steps it was flagged "not comparable", for a metric it
    # never computed.
    physics = _result("pendulum", "hgan", _physics(0.3, 0.1, 0.05), probe_steps=3000)
    looks = _result("pendulum", "mocogan", None, probe_steps=600)
    looks["appearance"] = {"generated": {"median": 0.1}, "generated_flagged": 0.0}
    assert "settings that differ" not in report.compare_table([physics, looks])
    both = _result("pendulum", "mocogan", _physics(0.3, 0.1, 0.05), probe_steps=600)
    table = report.compare_table([physics, both, looks]).split("### ")[-1]
    assert "| model | system | probe_steps |" in table
    assert "| hgan | pendulum | 3000 |" in table
    assert "| mocogan (run 2) | pendulum | 600 |" in table
    assert "| mocogan (run 3) | pendulum | (not computed) |" in table


def test_compare_counts_a_skipped_fvd_as_not_computed():
    # A run whose FVD was skipped (no detector) stores {"skipped": ...} under "fvd" and the
    # parser's fvd_videos: beside a run with FVD at other --fvd-videos, fvd_videos was flagged
    # with the skipped run's count, for an FVD it never computed.
    scored = _result("pendulum", "hgan", _physics(0.3, 0.1, 0.05), fvd_videos=256)
    scored["fvd"] = {"fvd_mean": 10.0, "fvd_std": 1.0, "canonical": False}
    skipped = _result("pendulum", "mocogan", _physics(0.3, 0.1, 0.05), fvd_videos=2048)
    skipped["fvd"] = {"skipped": "the TorchScript I3D detector was not found"}
    assert "settings that differ" not in report.compare_table([scored, skipped])
    other = _result("pendulum", "hnn_gan", _physics(0.3, 0.1, 0.05), fvd_videos=2048)
    other["fvd"] = {"fvd_mean": 9.0, "fvd_std": 1.0, "canonical": True}
    table = report.compare_table([scored, skipped, other]).split("### ")[-1]
    assert "| mocogan | pendulum | (not computed) |" in table
    assert "| hnn_gan | pendulum | 2048 |" in table


def test_compare_leaves_runs_that_scored_nothing_against_real_clips_out_of_the_real_data():
    # An evaluation of the learned structure alone (--metrics cyclic) reads no real videos,
    # so its results.json has no real_identity: beside a physics run it was listed as
    # "not recorded (older results)" under "Real data that differs between runs".
    physics = _result("pendulum", "hgan", _physics(0.3, 0.1, 0.05))
    physics["real_identity"] = {"split": "test", "seed": 0, "trajectories": 64, "of": 64,
                                "frames": 64, "resolution": 32}
    structure_only = {"model": "mocogan", "system": "pendulum", "iteration": 70,
                      "metrics": ["cyclic"], "figures": {},
                      "cyclic": {"active_momenta": None, "energy_rollout": None},
                      "settings": {"physics_videos": 64, "probe_steps": 600}}
    assert "Real data that differs" not in report.compare_table([physics, structure_only])
    skipped = _result("pendulum", "hnn_gan", None)   # FVD skipped: no number either
    skipped["fvd"] = {"skipped": "no detector"}
    assert "Real data that differs" not in report.compare_table([physics, skipped])


def test_compare_names_runs_scored_against_other_real_data_and_non_canonical_fvd():
    # Two runs of one system evaluated against different held-out sets (another seed, the
    # training set's own clips) sat side by side in compare's table, unmarked.
    def run(model, seed=0, seen=False, **kw):
        r = _result("pendulum", model, _physics(0.3, 0.1, 0.05))
        r["real_identity"] = {"split": "test", "seed": seed, "trajectories": 64, "of": 64,
                              "frames": 64, "resolution": 32, **kw}
        r["real_seen_in_training"] = seen
        return r
    same = report.compare_table([run("hgan"), run("mocogan"), run("hgan") | {"system": "two_body"}])
    assert "Real data that differs" not in same
    text = report.compare_table([run("hgan"), run("mocogan", seed=3)])
    section = text.split("### ")[-1]
    assert section.startswith("Real data that differs between runs of one system")
    assert "| hgan | pendulum | test split, seed 0: 64 of 64 trajectories x 64 frames, 32 px |" \
        in section
    assert "| mocogan | pendulum | test split, seed 3: 64 of 64 trajectories x 64 frames" in section
    seen = report.compare_table([run("hgan"), run("mocogan", seen=True)])
    assert "x 64 frames, 32 px, seen in training |" in seen.split("### ")[-1]
    older = run("mocogan")
    del older["real_identity"]
    # an older result may share the data: not flagged beside one record, listed beside two
    assert "Real data that differs" not in report.compare_table([run("hgan"), older])
    assert "| mocogan (run 3) | pendulum | not recorded (older results) |" in \
        report.compare_table([run("hgan"), run("mocogan", seed=3), older])

    def fvd(canonical):
        return {"fvd_mean": 12.0, "fvd_std": 1.0, "canonical": canonical}
    table = report.compare_table([run("hgan") | {"fvd": fvd(True)},
                                  run("mocogan") | {"fvd": fvd(False)}])
    assert "| hgan | 12.0 ± 1.0 (70 it) |" in table
    assert "| mocogan | 12.0 ± 1.0 (not canonical) (70 it) |" in table
    # 2048 videos of 32 frames is off the protocol too (fvd.fvd_over_seeds): the heading
    # said "fewer than the protocol's 2048 videos", which such a run does not have
    assert "other than the protocol's 2048 videos of 16 frames" in table


def test_fewer_held_out_trajectories_than_physics_videos_is_said(tmp_path, capsys):
    from types import SimpleNamespace
    from hgan.evaluate import inputs
    held = (SimpleNamespace(frames=np.zeros((5, 20, 1, 1, 3), np.uint8)), np.arange(5), "t.h5")
    args = SimpleNamespace(metrics=["appearance"], frames=16, physics_videos=256)
    inputs._check_counts(args, held, None)
    assert "--physics-videos 256, but t.h5 holds out 5 trajectories" in capsys.readouterr().err
    inputs._check_counts(SimpleNamespace(metrics=["samples"], frames=16, physics_videos=256),
                         held, None)
    inputs._check_counts(SimpleNamespace(metrics=["appearance"], frames=16, physics_videos=5),
                         held, None)
    assert capsys.readouterr().err == ""


def test_real_clips_from_the_training_set_are_known_under_any_path_or_as_a_copy(
        tmp_path, tiny_pendulum_h5):
    # A copy of the training set, or the file through a link, was "not seen in training"
    # (the check compared path strings), and its FVD counted as canonical.
    from types import SimpleNamespace

    from hgan.data import generate_dataset, open_h5
    from hgan.evaluate import inputs
    from hgan.train.loop import dataset_identity
    link, copy = tmp_path / "link.h5", tmp_path / "copy.h5"
    os.symlink(tiny_pendulum_h5, link)
    shutil.copy(tiny_pendulum_h5, copy)
    test_split = generate_dataset("pendulum", tmp_path / "d", train=1, test=24, frames=40, seed=0,
                                  resolution=32, progress=False)["test"]
    ident = dataset_identity(str(tiny_pendulum_h5))

    def seen(real, trained=ident, data_path=str(tiny_pendulum_h5)):
        run = SimpleNamespace(config={"data_path": data_path}, trained_dataset=trained,
                              real_path=str(real), held_out=(open_h5(real), None))
        return inputs.seen_in_training(run)

    assert seen(tiny_pendulum_h5) and seen(link) and seen(copy)
    assert seen(copy, data_path="moved/train.h5")            # by the identity the run kept
    assert not seen(copy, trained=None, data_path="moved/train.h5")  # an older checkpoint
    # an attribute the identity holds as None (its file had none) is not compared
    assert seen(copy, trained={**ident, "seed": None}, data_path="moved/train.h5")
    assert not seen(test_split)                      # same system, seed and size: the test split
    assert not seen(copy, trained={**ident, "seed": ident["seed"] + 1}, data_path="moved/train.h5")


def test_an_explicit_real_equal_to_data_says_its_last_fifth_is_used(tmp_path, data_copy, capsys):
    ckpt, _ = _checkpoint(tmp_path, "hgan", data_copy, iteration=3)
    out = tmp_path / "e"
    cli.main(["--checkpoint", ckpt, "--out", str(out), "--metrics", "cyclic,physics",
              "--physics-videos", "4", "--probe-steps", "2", "--device", "cpu",
              "--real", str(data_copy)])
    assert "--real is --data: the real clips are its last 20%" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["real_seen_in_training"]


def test_compare_cells_give_flagged_and_blank_fractions_as_percentages():
    text = report.compare_table([_results_with_distinct_numbers()])
    appearance = next(t for t in text.split("### ") if t.startswith("appearance variation"))
    # 0.875 of the videos flagged, 0.125 blank: percentages, not "1" and "0"
    assert "| hgan | 0.0072 (flagged 88%, blank 12%) (100 it) |" in appearance, appearance


def test_compare_marks_a_drift_equal_to_the_real_level_as_at_it():
    # equal to real's drift: the probe cannot tell it from real motion either
    text = report.compare_table([_result("mass_spring", "hgan", _physics(0.2, 0.2, 0.1))])
    assert "| hgan | 0.2 (at or below the real level 0.2) (70 it) |" in text.split("### ")[1]


def test_the_active_count_is_strictly_above_a_floor_per_unit_time():
    count = structure.count_active
    # largest 1.0: 10% is exactly 0.1; a dimension at exactly the threshold is not active
    assert count([1.0, 0.1, 0.0], p_spread=1.0, duration=0.75)["active_dims"] == 1
    # floor = 1% of the spread over the rollout's duration: 0.01 / 0.75 = 0.01333 (a rate);
    # 0.012 lies under it (it would pass a floor that forgot to divide by the duration)
    got = count([0.012], p_spread=1.0, duration=0.75)
    assert got["active_dims"] == 0 and got["floor"] == pytest.approx(0.01 / 0.75)
    assert count([0.012], p_spread=1.0, duration=-0.75)["active_dims"] == 0  # dt < 0 rollouts


def test_the_checkpoint_report_gives_flagged_and_blank_fractions_as_percentages():
    # fractions of the videos, as compare gives them: a "blank 1" beside 32 videos reads as
    # one blank video when every one of them is blank
    text = report.checkpoint_report(_results_with_distinct_numbers())
    assert "| flagged (% of videos) | blank (% of videos) |" in text
    assert "| real, held-out | 0.0061 | 6% | 0% | 1 |" in text
    assert "| generated | 0.0072 | 88% | 12% | 0.93 |" in text
    old = _results_with_distinct_numbers()   # from before the blank count
    for k in ("real_blank", "generated_blank"):
        del old["appearance"][k]
    assert "| generated | 0.0072 | 88% | n/a | 0.93 |" in report.checkpoint_report(old)


def test_the_tsne_colour_bar_names_what_it_colours_by(tmp_path, monkeypatch):
    # HNN models embed q after one leapfrog step (docs/evaluation.md): the colour is |q|;
    # mocogan embeds the GRU's first output y
    pytest.importorskip("sklearn")
    import matplotlib.figure
    labels = []
    colorbar = matplotlib.figure.Figure.colorbar

    def rec(self, mappable, *a, label="", **k):
        labels.append(label)
        return colorbar(self, mappable, *a, label=label, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", rec)
    for model in ("hnn_gan", "mocogan"):
        ckpt, _ = _checkpoint(tmp_path, model, tmp_path / "absent.h5", iteration=1)
        cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / model), "--metrics", "tsne",
                  "--tsne-samples", "12", "--tsne-iters", "250", "--device", "cpu"])
    assert labels == ["|q|", "|y|"]


def test_settings_keep_every_flag_that_changes_the_numbers():
    # every value distinct: a flag left out, or stored under another's name, cannot pass
    args = cli.build_parser().parse_args(
        ["--checkpoint", "c.pt", "--out", "o", "--frames", "12", "--seeds", "4,5",
         "--fvd-videos", "30", "--physics-videos", "31", "--probe-steps", "32",
         "--probe-width", "33", "--tsne-samples", "34", "--tsne-iters", "350",
         "--momenta-videos", "36", "--rollout-videos", "37", "--rollout-steps", "38"])
    assert cli.settings(args, "pendulum") == {
        "frames": 12, "seeds": [4, 5], "fvd_videos": 30, "physics_videos": 31,
        "probe_steps": 32, "probe_width": 33, "tsne_samples": 34, "tsne_iters": 350,
        "momenta_videos": 36, "rollout_videos": 37, "rollout_steps": 38}


def test_portable_paths_rewrite_paths_given_relative_to_the_working_directory(tmp_path,
                                                                               monkeypatch):
    # --out, --real and the data named relative to the working directory (as typed): each
    # known path field is rewritten relative to --out, and an absolute path in a list too
    monkeypatch.chdir(tmp_path)
    results = {"checkpoint": "runs/a/checkpoints/last.pt", "data": "data/train.h5",
               "real_data": "data/test.h5", "figures": {"tsne": "runs/a/eval/tsne_hgan.png"},
               "physics": {"probe_cache": "data/train.probe.pt"},
               "config": {"files": ["/elsewhere/x.h5", "y.h5"]}}
    got = cli.portable_paths(results, "runs/a/eval")
    assert got["checkpoint"] == "../checkpoints/last.pt"
    assert got["data"] == "../../../data/train.h5" and got["real_data"] == "../../../data/test.h5"
    assert got["figures"] == {"tsne": "tsne_hgan.png"}
    assert got["physics"] == {"probe_cache": "../../../data/train.probe.pt"}
    absolute, relative = got["config"]["files"]
    assert relative == "y.h5" and not os.path.isabs(absolute)
    assert os.path.normpath(os.path.join(tmp_path, "runs/a/eval", absolute)) == "/elsewhere/x.h5"


def _coded_clips(n, t):
    """n trajectories of t blank frames whose state is 100 * trajectory + frame index."""
    from types import SimpleNamespace
    code = 100 * np.arange(n)[:, None] + np.arange(t)[None, :]
    return SimpleNamespace(frames=np.zeros((n, t, 1, 1, 3), np.uint8),
                           states=code[..., None].astype(np.float32), params={})


def test_real_clips_as_long_as_the_trajectories_are_the_whole_trajectories():
    ds = _coded_clips(3, 5)
    _, states, _ = cli._real_videos(ds, np.array([2, 0]), 5, seed=0)
    np.testing.assert_array_equal(states[..., 0], ds.states[[2, 0], :, 0])


def test_real_clip_windows_follow_the_seed():
    ds, idx = _coded_clips(6, 30), np.arange(6)
    starts = {seed: tuple(cli._real_videos(ds, idx, 4, seed)[1][:, 0, 0] % 100)
              for seed in (0, 1, 2)}
    assert len(set(starts.values())) == 3
    assert tuple(cli._real_videos(ds, idx, 4, 1)[1][:, 0, 0] % 100) == starts[1]


def test_generated_videos_follow_the_seed(tmp_path):
    _, g = _checkpoint(tmp_path, "hgan", tmp_path / "absent.h5", iteration=0)
    a, b, c = (cli._generated_videos(g, 3, 4, seed) for seed in (5, 5, 6))
    assert a.shape == (3, 4, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # one random stream over every batch: 130 videos are 130 different ones (re-seeded per
    # batch of 64, the third batch repeated the first's first two)
    many = cli._generated_videos(g, 130, 2, 0)
    assert len(np.unique(many.reshape(130, -1), axis=0)) == 130


def test_held_out_rows_index_the_file_by_the_held_out_trajectories():
    ds = np.arange(10 * 4).reshape(10, 4)          # row r holds 4 r .. 4 r + 3
    rows = cli._Rows(ds, [7, 3, 5])
    assert rows.shape == (3, 4)
    np.testing.assert_array_equal(rows[1], [12, 13, 14, 15])
    np.testing.assert_array_equal(rows[2, 1:3], [21, 22])


def test_physics_metrics_relate_the_probe_error_to_each_dimensions_spread(monkeypatch):
    # Two state dimensions, the second 3x the first (a frame's code, 10 * trajectory +
    # frame), read back by a stand-in probe with error 0.5 in both: relative RMSE 0.5 / std
    # per dimension. 9 videos: halves of 4, the odd one left out of both.
    from types import SimpleNamespace
    from hgan.data import get_system
    from hgan.evaluate import probe as hprobe
    n, t, frames = 9, 10, 6
    code = 10 * np.arange(n)[:, None] + np.arange(t)[None, :]
    ds = SimpleNamespace(
        frames=np.broadcast_to(code[:, :, None, None, None], (n, t, 2, 2, 3)).astype(np.uint8),
        states=np.stack([code, 3 * code], -1).astype(np.float32),
        params={"m": np.ones(n)}, color_index=np.zeros((n, 1), np.int32))

    class CodeProbe:
        angular = ()

        def states(self, videos):
            c = np.asarray(videos)[:, :-1, 0, 0, 0].astype(np.float64)
            return np.stack([c, 3 * c], -1) + 0.5

    drifts, fsds = [], []
    monkeypatch.setattr(hprobe, "load_or_train_probe", lambda *a, **k: CodeProbe())
    monkeypatch.setattr(cli, "_generated_videos", lambda *a, **k: 100 + ds.frames[:, :frames])
    monkeypatch.setattr(hprobe, "energy_drift",
                        lambda system, s, params: drifts.append(np.array(s)) or np.zeros(len(s)))
    monkeypatch.setattr(hprobe, "noise_floor", lambda *a: np.zeros(n))
    monkeypatch.setattr(hprobe, "frechet_state_distance",
                        lambda a, b, angular=(): fsds.append((len(a), len(b))) or 0.0)
    out = cli.physics_metrics(None, ds, get_system("pendulum"), "/nowhere/train.h5",
                              (ds, np.arange(n)), n=n, frames=frames, seed=3, probe_steps=1,
                              probe_width=8)
    real_p, shuffled_p, _ = drifts
    # each window's codes: the probed frames' (less 0.5) and the last frame's, one more
    window = np.concatenate([real_p[:, :, 0] - 0.5, real_p[:, -1:, 0] + 0.5], axis=1)
    assert np.all(np.diff(window, axis=1) == 1)
    np.testing.assert_allclose(out["probe_rmse"], [0.5, 0.5])
    np.testing.assert_allclose(out["probe_rel_rmse"],
                               [0.5 / window.std(), 0.5 / (3 * window.std())], rtol=1e-6)
    assert fsds == [(9, 9), (9, 9), (4, 4), (4, 4)]
    assert out["frechet_state_distance"]["angles"] is None      # the probe reads no angle
    assert out["energy_drift"]["relative_to"] == hprobe.drift_relative_to(get_system("pendulum"))
    assert out["num_videos"] == 9 and out["frames"] == 6
    # each video's frames in an order of its own: not one permutation (a reversal) for all
    offsets = shuffled_p[:, :, 0] - real_p[:, :1, 0]
    assert len({tuple(o) for o in offsets}) > 1


def test_each_metric_gets_the_counts_seeds_and_lengths_its_flags_name(tmp_path, data_copy,
                                                                     monkeypatch):
    # Every flag distinct, so a call handed another flag's value (or a constant) cannot
    # pass. The held-out clips are data_copy's last 20%: 5 trajectories.
    from types import SimpleNamespace
    from hgan.evaluate import appearance, figures
    ckpt, _ = _checkpoint(tmp_path, "hgan", data_copy, iteration=1)
    real_videos, generated_videos = cli._real_videos, cli._generated_videos
    clips, physics, looks, grids, calls = [], {}, [], {}, {}

    def real_spy(ds, idx, frames, seed):
        out = real_videos(ds, idx, frames, seed)
        clips.append(("real", len(idx), frames, seed, out[0]))
        return out

    def generated_spy(generator, n, frames, seed):
        out = generated_videos(generator, n, frames, seed)
        clips.append(("generated", n, frames, seed, out))
        return out

    def record(owner, name):
        f = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: calls.update({name: k}) or f(*a, **k))

    monkeypatch.setattr(cli, "_real_videos", real_spy)
    monkeypatch.setattr(cli, "_generated_videos", generated_spy)
    monkeypatch.setattr(cli, "physics_metrics",
                        lambda *a, **k: physics.update(k) or _physics(0.3, 0.1, 0.05))
    consistency, save = appearance.appearance_consistency, figures.save_sample_grid
    monkeypatch.setattr(appearance, "appearance_consistency",
                        lambda real, gen, c: looks.append((real, gen, c)) or consistency(real, gen, c))
    # the system's palette size reaches the appearance metric: a pendulum given 3 colours
    # here, so that a constant 1 (pendulum's own) cannot pass
    import dataclasses
    import hgan.data
    get_system = hgan.data.get_system
    monkeypatch.setattr(hgan.data, "get_system",
                        lambda name: dataclasses.replace(get_system(name), num_colors=3))
    monkeypatch.setattr(figures, "save_sample_grid", lambda v, png, gif: grids.update(
        {os.path.basename(png): v}) or save(v, png, gif))
    for owner, name in ((structure, "motion_points"), (structure, "active_momenta"),
                        (structure, "energy_rollouts"), (figures, "tsne_embedding"),
                        (figures, "plot_tsne")):
        record(owner, name)
    monkeypatch.setattr(cli, "time", SimpleNamespace(time=iter([100.0, 112.34]).__next__))
    res = cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / "e"), "--metrics",
                    "physics,appearance,samples,tsne,cyclic", "--frames", "6", "--seeds", "5,6",
                    "--physics-videos", "3", "--probe-steps", "7", "--probe-width", "9",
                    "--tsne-samples", "12", "--tsne-iters", "260", "--momenta-videos", "5",
                    "--rollout-videos", "4", "--rollout-steps", "11", "--device", "cpu",
                    "--no-progress"])
    assert {k: physics[k] for k in ("n", "frames", "seed", "probe_steps", "probe_width")} == \
        {"n": 3, "frames": 6, "seed": 5, "probe_steps": 7, "probe_width": 9}
    # appearance: the physics metrics' clips (--seeds' first); the sample grids: 8 of each
    # (the 5 held-out real ones), seed 0
    assert [c[:4] for c in clips] == [("real", 3, 6, 5), ("generated", 3, 6, 5),
                                      ("real", 5, 6, 0), ("generated", 8, 6, 0)]
    [(real, gen, colours)] = looks
    assert real is clips[0][4] and gen is clips[1][4] and colours == 3
    assert grids["samples_real.png"] is clips[2][4] and grids["samples_hgan.png"] is clips[3][4]
    assert calls["motion_points"] == {"n": 12, "seed": 0}
    assert calls["tsne_embedding"] == {"iterations": 260}
    assert calls["plot_tsne"]["title"] == "hgan: motion t-SNE (12 samples)"
    assert calls["active_momenta"] == {"n": 5, "frames": 6}
    assert calls["energy_rollouts"] == {"n": 4, "steps": 11}
    assert res["cyclic"]["energy_rollout"]["steps"] == 11 and res["real_trajectories"] == 5
    assert res["seconds"] == 12.3  # the faked clock above: 12.34 s, kept to 0.1 s


def test_momenta_that_could_not_be_counted_get_no_momenta_figure(tmp_path, data_copy,
                                                                monkeypatch):
    # non-finite rates: no threshold to draw; the energy figure is still made
    ckpt, _ = _checkpoint(tmp_path, "hgan", data_copy, iteration=1)
    rates = [float("nan"), 0.3, 0.1]
    monkeypatch.setattr(structure, "active_momenta", lambda g, n, frames: {
        "mean_abs_dpdt": rates, "k": 3, **structure.count_active(rates, 1.0, 0.75)})
    res = cli.main(["--checkpoint", ckpt, "--out", str(tmp_path / "e"), "--metrics", "cyclic",
                    "--rollout-steps", "2", "--rollout-videos", "2", "--device", "cpu"])
    assert set(res["figures"]) == {"energy_rollout"}
    assert "**not counted (non-finite" in (tmp_path / "e" / "report.md").read_text()


def test_the_probe_reads_angles_as_angles_on_angle_systems_only():
    from hgan.data import get_system
    got = cli.probe_settings(get_system("pendulum"), 7, 9)
    assert (got["steps"], got["angular"], got["width"]) == (7, (0,), 9)   # q is an angle
    assert cli.probe_settings(get_system("two_body"), 7, 9)["angular"] == ()


def test_the_checkpoint_report_states_each_header_number_where_its_words_say():
    r = _results_with_distinct_numbers()
    r["physics"]["frechet_state_distance"]["real_half_vs_half"] = 1.2346   # 4 digits: 1.235
    r["fvd"] = {"fvd_mean": 123.456, "fvd_std": 6.789, "seeds": [0, 1], "num_videos": 256,
                "frames": 17, "canonical": True}
    text = report.checkpoint_report(r)
    assert "FVD = 123.46 ± 6.79 over seeds [0, 1], 256 videos x 17 frames." in text
    assert "(q..., p...): 0.011, 0.022 (relative to the state std: 0.033, 0.044)." in text
    assert "8 videos of 16 frames; energy drift" in text
    assert "(55.5 pixels). A video is flagged above 0.123 (an object" in text
    assert "Learned energy over 512 leapfrog steps (dt = +0.05), median over 64 rollouts" in text
    assert "| real, held-out | 0.202 | 1.235 (half vs half) |" in text
    assert "GAN saw them" not in text
    seen = report.checkpoint_report({k: v for k, v in r.items() if k != "physics"}
                                    | {"real_seen_in_training": True})
    assert "- real clips: from the file the run trained on (the GAN saw them)" in seen


def test_the_report_warns_of_a_poor_probe_above_the_limit_in_any_dimension():
    def text(rel):
        return report.checkpoint_report(_result("mass_spring", "hgan",
                                                _physics(0.3, 0.1, 0.05, rel=rel)))
    assert "reads the state poorly" not in text((0.2, 0.5))          # at it: not above
    assert "(relative RMSE up to 0.60" in text((0.6, 0.2))            # the worst, not the last


def test_a_half_vs_half_distance_of_zero_is_a_number():
    ph = _physics(0.3, 0.1, 0.05)
    ph["frechet_state_distance"]["real_half_vs_half"] = 0.0
    assert "| real, held-out | 0.1 | 0 (half vs half) |" in \
        report.checkpoint_report(_result("mass_spring", "hgan", ph))


def test_compare_cells_against_the_noise_floor_and_without_angles():
    # a noise floor above real's drift is the level; a system of no angles needs no
    # (cos, sin) record; the cell's numbers to 3 digits
    ph = _physics(0.15, 0.1, 0.2)
    del ph["frechet_state_distance"]["angles"]
    ph["frechet_state_distance"]["generated_half_vs_real_half"] = 3.4567
    text = report.compare_table([_result("two_body", "hgan", ph)])
    assert "| hgan | 0.15 (at or below the real level 0.2) (70 it) |" in text
    assert "| hgan | 3.46 (2.5) (70 it) |" in text


def test_compare_reads_a_runs_own_results_json_before_its_eval_one(tmp_path):
    for where, model in ((tmp_path, "hgan"), (tmp_path / "eval", "mocogan")):
        where.mkdir(exist_ok=True)
        (where / "results.json").write_text(json.dumps(
            {"model": model, "system": "pendulum", "iteration": 1}))
    assert report.find_results(str(tmp_path))["model"] == "hgan"


def test_compare_orders_rows_by_seed_and_columns_by_system():
    def run(system, seed=None, **kw):
        r = _result(system, "hgan", _physics(0.3, 0.1, 0.05))
        r["config"] = {"seed": seed}
        return r
    text = report.compare_table([run("pendulum", 10), run("pendulum", 2), run("mass_spring", 0)])
    drift = text.split("### ")[1]
    assert "| model | mass_spring | pendulum |\n|---|---|---|" in drift
    assert drift.index("| hgan seed 2 |") < drift.index("| hgan seed 10 |")
    # a run of no recorded seed: the runs are told apart by their directories
    text = report.compare_table([run("pendulum"), run("pendulum", 1)], names=["a", "b"])
    assert "| hgan (a) |" in text and "| hgan (b) |" in text


def test_compare_flags_each_setting_between_the_runs_whose_metrics_it_changes():
    def run(model, metric, **settings):
        r = {"model": model, "system": "pendulum", "iteration": 1, "figures": {},
             "settings": settings}
        if metric == "tsne":
            r["figures"]["tsne"] = "tsne.png"
        else:
            r[metric] = {"generated": {"median": 0.1}, "generated_flagged": 0.0}
        return r
    def flagged(*runs):
        return "settings that differ" in report.compare_table(list(runs))
    # appearance's clips are the physics metrics' --physics-videos
    assert flagged(run("a", "appearance", physics_videos=4), run("b", "appearance", physics_videos=8))
    # a t-SNE figure is computed; its settings do not concern other metrics
    assert flagged(run("a", "tsne", tsne_samples=4), run("b", "tsne", tsne_samples=8))
    assert not flagged(run("a", "appearance", tsne_iters=250), run("b", "appearance", tsne_iters=300))
    # --frames changes every metric
    assert flagged(run("a", "appearance", frames=8), run("b", "appearance", frames=16))


def test_compare_lists_real_data_for_the_runs_that_scored_against_it():
    def run(model, metric, split="test", **identity):
        r = {"model": model, "system": "pendulum", "iteration": 1, "figures": {},
             "real_identity": {"split": split, "seed": 0, "trajectories": 13, "of": 64,
                               "frames": 64, "resolution": 32, **identity}}
        r[metric] = {"generated": {"median": 0.1}, "generated_flagged": 0.0}
        return r
    text = report.compare_table([run("a", "appearance"), run("b", "appearance", seed=3)])
    assert "| a | pendulum | test split, seed 0: 13 of 64 trajectories x 64 frames, 32 px |" in text
    text = report.compare_table([run("a", "appearance"), run("b", "appearance", split=None)])
    assert "| b | pendulum | ? split, seed 0:" in text
    # the learned structure alone reads no real clips
    assert "Real data that differs" not in report.compare_table(
        [run("a", "appearance"), run("b", "cyclic", seed=3)])


def test_a_run_directory_given_as_checkpoint_is_recorded_as_its_last_pt(tmp_path, data_copy):
    # --checkpoint RUN evaluates RUN/checkpoints/last.pt; results.json and report.md recorded
    # the directory, which for the usual --out RUN/eval read as `..`
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt, _ = _checkpoint(tmp_path, "hgan", data_copy, iteration=3)
    os.replace(ckpt, run / "checkpoints" / "last.pt")
    res = cli.main(["--checkpoint", str(run), "--out", str(run / "eval"), "--metrics", "cyclic",
                    "--rollout-steps", "2", "--rollout-videos", "2", "--device", "cpu"])
    assert res["checkpoint"] == "../checkpoints/last.pt"
    assert json.loads((run / "eval" / "results.json").read_text())["checkpoint"] == \
        "../checkpoints/last.pt"
    assert "- checkpoint: `../checkpoints/last.pt` (iteration 3)" in \
        (run / "eval" / "report.md").read_text()
