"""train.py's setup phase: bad input ends in one line `train.py: error: ...` with exit code 2
before anything is written, a resumed run keeps its checkpoint's configuration except for the
flags given, and a new run never overwrites an old one."""
import json
import os
import re
import signal
from types import SimpleNamespace

import pytest
import torch

from hgan.train import load_checkpoint, train
from hgan.train.cli import main
from hgan.train.config import parse_command_line
from hgan.train.run import prepare, run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--system", "pendulum", "--batch-size", "4", "--frames", "6", "--clip-frames", "4",
        "--rollout-frames", "8",
        "--ngf", "4", "--ndf", "4", "--k", "2", "--hidden", "16", "--motion-dim", "4",
        "--content-dim", "4", "--integrator", "analytic", "--device", "cpu", "--loader", "torch",
        "--num-workers", "0", "--log-every", "1", "--sample-every", "1000", "--n-samples", "2",
        "--no-progress"]



def tiny(model):
    """TINY for `model`, without the flags of a learned Hamiltonian where it has none
    (train.py refuses a flag that does not apply to the model)."""
    from hgan.model_kinds import HAMILTONIAN_OPTIONS, model_kind
    if model_kind(model).hamiltonian:
        return list(TINY)
    drop = {"--" + f.replace("_", "-") for f in HAMILTONIAN_OPTIONS}
    return [a for i, a in enumerate(TINY) if a not in drop and TINY[i - 1] not in drop]


def call(argv, capsys):
    """(exit code, stdout, stderr) of train.py's main in this process."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def stopped_run(data_root, tmp_path, capsys):
    """A run of --iters 3 with non-default resumable flags, stopped by SIGINT at iteration 1
    (as a Ctrl-C would); returns (its directory, what train.py printed)."""
    out = tmp_path / "run"
    cfg, _, _ = parse_command_line(TINY + ["--data", data_root, "--out", str(out), "--iters", "3",
                                           "--ckpt-every", "7", "--keep-every", "2"])

    def stop(trainer):
        if trainer.iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)

    res = train(cfg, callback=stop)
    assert res["stopped"] == "SIGINT" and res["iteration"] == 1
    return out, capsys.readouterr().out


def test_resume_without_flags_keeps_the_checkpoints_configuration(stopped_run, capsys):
    out, printed = stopped_run
    hint = printed.strip().splitlines()[-1]
    assert hint.endswith(f"resume with --resume {out}"), hint
    # The printed hint, as given: no flag, so nothing may change.
    setup = prepare(*parse_command_line(["--resume", str(out)]))
    cfg = setup.cfg
    assert (cfg.iters, cfg.ckpt_every, cfg.keep_every, cfg.log_every) == (3, 7, 2, 1)
    assert cfg.n_samples == 2
    assert (cfg.num_workers, cfg.loader, cfg.progress, cfg.device) == (0, "torch", False, "cpu")
    capsys.readouterr()
    assert run(setup)["iteration"] == 3
    # start-up: where, what, and from where a resumed run goes on (config.json has the rest)
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"[hgan] run directory {out}",
        "[hgan] hgan on pendulum: resumed at iteration 1 of 3, batch 4, 6 frames at 32 px, "
        "seed 0 (every setting: config.json)",
        "[hgan] device cpu, world size 1, autocast off (fp32)"]
    assert json.loads((out / "config.json").read_text())["iters"] == 3
    assert load_checkpoint(str(out))["iteration"] == 3
    # a flag that is given does change a resumable setting
    setup = prepare(*parse_command_line(["--resume", str(out), "--iters", "4", "--log-every", "2"]))
    assert (setup.cfg.iters, setup.cfg.log_every, setup.cfg.ckpt_every) == (4, 2, 7)
    setup.stream.close()


@pytest.mark.parametrize("flags, needle", [
    (["--batch-size", "8"], "--batch-size cannot change on resume (the run has 4, got 8)"),
    (["--system", "three_body"], "--system cannot change on resume (the run has pendulum, "
                                 "got three_body)"),
    (["--k", "3"], "--k cannot change on resume (the run has 2, got 3)"),
    (["--lr", "0.001"], "--lr cannot change on resume"),
    # an on/off flag and a model choice are settings too: resumed without autocast, or as
    # the hgan it is, while the command line said otherwise (a refusal that skipped booleans
    # passed before)
    (["--amp"], "--amp cannot change on resume (the run has False, got True)"),
    (["--model", "mocogan"], "--model cannot change on resume (the run has hgan, got mocogan)"),
])
def test_resume_refuses_a_changed_setting(stopped_run, capsys, flags, needle):
    out, _ = stopped_run
    before = (out / "config.json").read_text()
    # --iters 2: were the flag ignored, the run would end at once (and this test fail)
    code, _, err = call(["--resume", str(out), "--iters", "2"] + flags, capsys)
    assert_one_error_line(code, err, needle)
    assert (out / "config.json").read_text() == before


def test_resume_accepts_the_runs_own_values(stopped_run, capsys):
    out, _ = stopped_run
    # --amp-dtype auto repeats a run without --amp's value (and the default): no refusal;
    # nor is the run's own --gen-frames said to go unused, as a new run's would be
    code, stdout, err = call(TINY + ["--resume", str(out), "--out", str(out), "--iters", "2",
                                     "--amp-dtype", "auto", "--gen-frames", "64"], capsys)
    assert code == 0, err
    assert "not used" not in stdout
    assert load_checkpoint(str(out))["iteration"] == 2


def test_resume_past_iters_does_nothing(stopped_run, capsys):
    out, _ = stopped_run
    before = (out / "config.json").read_text()
    code, stdout, err = call(["--resume", str(out), "--iters", "1"], capsys)
    assert code == 0, err
    assert stdout.strip().splitlines() == [
        f"[hgan] {out} is already at iteration 1 >= --iters 1: nothing to do"]
    assert (out / "config.json").read_text() == before
    assert load_checkpoint(str(out))["iteration"] == 1


def test_resume_of_a_run_killed_before_its_first_checkpoint_says_how_to_start_it_again(
        data_root, tmp_path, capsys):
    # kill -9 before the first checkpoint leaves config.json, tb/ and no checkpoint: --resume
    # said only "no checkpoint at", though a new run may start in that --out
    import shutil
    out = tmp_path / "run"
    flags = TINY + ["--data", data_root, "--out", str(out), "--iters", "1"]
    assert call(flags, capsys)[0] == 0
    shutil.rmtree(out / "checkpoints")
    (out / "summary.json").rename(tmp_path / "summary.json")   # now as if killed
    code, _, err = call(["--resume", str(out)], capsys)
    assert_one_error_line(code, err, f"no checkpoint at {out / 'checkpoints' / 'last.pt'}: the "
                          f"run in {out} stopped before it saved one; start it again with --out "
                          f"{out} and its settings (in {out / 'config.json'})")
    code, _, err = call(flags, capsys)                          # as the hint says
    assert code == 0, err
    assert load_checkpoint(str(out))["iteration"] == 1
    # a finished run whose checkpoints are gone cannot start again there: no such hint
    shutil.rmtree(out / "checkpoints")
    code, _, err = call(["--resume", str(out)], capsys)
    assert_one_error_line(code, err, f"no checkpoint at {out / 'checkpoints' / 'last.pt'}")
    assert "start it again" not in err


def test_new_run_never_overwrites_a_run(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "1"], capsys)
    assert code == 0, err
    ckpt = out / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "2"], capsys)
    assert_one_error_line(code, err, f"--out {out} already holds a run",
                          f"--resume {out}")
    assert ckpt.read_bytes() == before
    # an existing but empty directory is a fine place for a new run
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = call(TINY + ["--data", data_root, "--out", str(empty), "--iters", "1"], capsys)
    assert code == 0, err
    assert load_checkpoint(str(empty))["iteration"] == 1


def test_out_that_is_a_file_is_one_line(data_root, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = call(TINY + ["--data", data_root, "--out", str(afile)], capsys)
    assert_one_error_line(code, err, f"--out {afile} is a file, not a run directory")
    assert afile.read_text() == "x"


def test_two_runs_set_up_together_never_share_a_run_directory(data_root, tmp_path, capsys,
                                                              monkeypatch):
    # Both passed the setup's checks (neither had a checkpoint yet) and wrote one directory:
    # the default --out names the second, and one run took the other's events and samples
    # for a stopped attempt's and removed them.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hgan.train.config.time.strftime", lambda fmt: "20261201-120000")
    setups = []
    for seed in ("0", "1"):
        cfg, resume, given = parse_command_line(TINY + ["--data", data_root, "--seed", seed,
                                                        "--iters", "1"])
        setups.append(prepare(cfg, resume=resume, given=given))
    first, second = (s.cfg.out for s in setups)
    assert first == str(tmp_path / "runs" / "pendulum-hgan-20261201-120000")
    assert second == first + "-2"
    # an explicit --out that another process holds is refused, and that run keeps it
    import subprocess
    import sys
    held = tmp_path / "held"
    held.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); time.sleep(60)",
                               str(held)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        cfg, resume, given = parse_command_line(TINY + ["--data", data_root, "--out", str(held)])
        with pytest.raises(ValueError, match=f"--out {held} is in use by another run that is "
                                             "still running"):
            prepare(cfg, resume=resume, given=given)
    finally:
        holder.kill()
        holder.wait()
    assert held.is_dir()
    assert run(setups[0])["iteration"] == 1
    assert load_checkpoint(first)["config"]["seed"] == 0
    setups[1].stream.close()
    setups[1].lock.release()
    # run() released its claim: the directory resumes (the early check only reads files)
    cfg, resume, given = parse_command_line(TINY + ["--resume", first, "--iters", "2"])
    again = prepare(cfg, resume=resume, given=given)
    assert again.cfg.out == first and again.lock is not None
    # a second setup of one directory in one process is named as such
    with pytest.raises(ValueError, match="held by an earlier setup in this process"):
        prepare(cfg, resume=resume, given=given)
    again.stream.close()
    again.lock.release()


def test_a_setup_that_fails_after_claiming_its_directory_removes_it(data_root, tmp_path,
                                                                   monkeypatch):
    def broken(*a, **k):
        raise ValueError("no loader today")
    monkeypatch.setattr("hgan.train.run.build_loader", broken)
    out = tmp_path / "new" / "run"
    cfg, resume, given = parse_command_line(TINY + ["--data", data_root, "--out", str(out)])
    with pytest.raises(ValueError, match="no loader today"):
        prepare(cfg, resume=resume, given=given)
    assert not out.exists()
    out.mkdir()   # a directory it did not make stays
    with pytest.raises(ValueError, match="no loader today"):
        prepare(cfg, resume=resume, given=given)
    assert out.is_dir()


def test_an_out_that_cannot_be_made_is_one_line(data_root, tmp_path, capsys):
    # /proc accepts os.access's question and refuses the mkdir: a FileNotFoundError traceback
    code, _, err = call(TINY + ["--data", data_root, "--out", "/proc/hgan-run"], capsys)
    assert_one_error_line(code, err, "--out /proc/hgan-run: the run directory cannot be made")


def test_keep_every_keeps_snapshots_whatever_ckpt_every(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "5",
                                "--keep-every", "2", "--ckpt-every", "3"], capsys)
    assert code == 0, err
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == ["iter_0000002.pt", "iter_0000004.pt", "last.pt"], names
    for name, it in (("iter_0000002.pt", 2), ("iter_0000004.pt", 4), ("last.pt", 5)):
        assert load_checkpoint(str(out / "checkpoints" / name))["iteration"] == it


def test_a_snapshot_writes_last_pt_too(data_root, tmp_path):
    # A run that dies after a snapshot (out of memory, a lost node) resumes from it with
    # --resume RUN: last.pt is never older than the newest snapshot.
    out = tmp_path / "run"
    cfg, _, _ = parse_command_line(TINY + ["--data", data_root, "--out", str(out), "--iters", "9",
                                           "--keep-every", "2", "--ckpt-every", "100"])

    def die(trainer):
        if trainer.iteration == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, callback=die)
    assert sorted(os.listdir(out / "checkpoints")) == ["iter_0000002.pt", "last.pt"]
    assert load_checkpoint(str(out))["iteration"] == 2


def test_an_older_snapshot_resumes_into_a_new_directory_only(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = call(TINY + ["--data", data_root, "--out", str(run), "--iters", "4",
                                "--keep-every", "2"], capsys)
    assert code == 0, err
    snap = run / "checkpoints" / "iter_0000002.pt"
    last = (run / "checkpoints" / "last.pt").read_bytes()
    code, _, err = call(["--resume", str(snap), "--iters", "3"], capsys)
    assert_one_error_line(code, err, f"{snap} is at iteration 2, but its run's last.pt is at 4",
                          f"--resume {snap} --out NEW_DIR")
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    # The branch continues exactly: at iteration 4 it has the original run's weights.
    branch = tmp_path / "branch"
    code, _, err = call(["--resume", str(snap), "--iters", "4", "--out", str(branch)], capsys)
    assert code == 0, err
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    a, b = load_checkpoint(str(run)), load_checkpoint(str(branch))
    assert b["iteration"] == 4 and b["config"]["out"] == str(branch)
    for k, v in a["generator"].items():
        assert torch.equal(v, b["generator"][k]), k
    # Nothing to do is said first: a snapshot at --iters writes nothing, so it is no refusal.
    code, stdout, err = call(["--resume", str(snap), "--iters", "2"], capsys)
    assert code == 0 and "already at iteration 2 >= --iters 2: nothing to do" in stdout, err
    # A branch never lands on another run.
    code, _, err = call(["--resume", str(snap), "--iters", "4", "--out", str(branch)], capsys)
    assert_one_error_line(code, err, f"--out {branch} already holds a run")


def test_a_run_shorter_than_log_every_logs_its_last_iteration(data_root, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "2",
                                "--log-every", "50"], capsys)
    assert code == 0, err
    stats = json.loads((out / "summary.json").read_text())["stats"]
    assert {"loss/D_I", "loss/G", "speed/it_per_s"} <= set(stats), stats
    # Off the grid, the last iteration logs its losses; its speed only when no full window
    # was timed (the short last window would hold the boundary's samples and checkpoint).
    out = tmp_path / "run3"
    code, stdout, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "3",
                                     "--log-every", "2"], capsys)
    assert code == 0, err
    # without a progress bar (--no-progress: a batch job's log) a line at each log, and the
    # end says where the results are
    lines = [ln for ln in stdout.splitlines() if ln.startswith("[hgan] iteration ")]
    assert [ln.split(":")[0] for ln in lines] == ["[hgan] iteration 2/3", "[hgan] iteration 3/3"]
    assert all(re.search(r"D_I [-\d.]+, D_V [-\d.]+, G [-\d.]+, L_cyc [-\d.]+, [\d.]+ it/s$",
                         ln) for ln in lines), lines
    assert stdout.strip().splitlines()[-1] == (
        f"[hgan] done at iteration 3: {out / 'checkpoints' / 'last.pt'}; samples in "
        f"{out / 'samples'}, curves: tensorboard --logdir {out / 'tb'}")
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/G")] == [2, 3]
    assert [e.step for e in acc.Scalars("speed/it_per_s")] == [2]
    assert json.loads((out / "summary.json").read_text())["stats"]["speed/it_per_s"] == \
        pytest.approx(acc.Scalars("speed/it_per_s")[0].value, rel=1e-6)


def test_a_fused_precision_that_a_cpu_run_cannot_use_is_said(data_root, tmp_path, capsys):
    # --integrator auto on a CPU runs the analytic backend (fp32): the run goes on, as the
    # same command does on a GPU, and says that its --fused-precision changes nothing
    argv = [a if a != "analytic" else "auto" for a in TINY] + [
        "--data", data_root, "--iters", "1"]
    code, stdout, err = call(argv + ["--fused-precision", "tf32x3", "--out", str(tmp_path / "a")],
                             capsys)
    assert code == 0, err
    said = [ln for ln in stdout.splitlines() if "--fused-precision" in ln]
    assert said == ["[hgan] --fused-precision tf32x3 sets the fused kernels' dot products; on "
                    "cpu --integrator auto runs the analytic backend in fp32, so it changes "
                    "nothing in this run"], stdout
    # not said where the flag is the default, or fp32 anyway
    for flags in ([], ["--fused-precision", "ieee"]):
        code, stdout, err = call(argv + ["--out", str(tmp_path / f"b{len(flags)}")] + flags,
                                 capsys)
        assert code == 0 and "--fused-precision" not in stdout, (flags, stdout, err)


@pytest.mark.parametrize("model", ["hnn_gan", "mocogan"])
def test_baselines_log_no_cyclic_loss(model, data_root, tmp_path, capsys):
    # hgan alone has L_cyc; a baseline's log line showed "L_cyc 0.000", as if it were computed
    out = tmp_path / "run"
    code, stdout, err = call(tiny(model) + ["--model", model, "--data", data_root,
                                            "--out", str(out), "--iters", "1"], capsys)
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if ln.startswith("[hgan] iteration ")]
    assert len(lines) == 1 and "L_cyc" not in lines[0], lines
    assert re.search(r"D_I [-\d.]+, D_V [-\d.]+, G [-\d.]+, [\d.]+ it/s$", lines[0]), lines


def test_a_second_ctrl_c_aborts_in_one_line(data_root, tmp_path, capsys, monkeypatch):
    from hgan.train import run as hrun
    monkeypatch.setattr(hrun._StopFlag, "SECOND_AFTER_S", 0.0)
    monkeypatch.setattr(hrun, "_write_samples", _twice_interrupted(hrun._write_samples))
    out = tmp_path / "run"
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "3"], capsys)
    assert code == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"train.py: aborted by a second Ctrl-C; the run keeps its last checkpoint, if one was "
        f"written (resume with --resume {out})"]


def _twice_interrupted(write_samples):
    """_write_samples that, at iteration 1, is interrupted by Ctrl-C twice (the second
    raises KeyboardInterrupt from the stop flag's handler)."""
    def wrapped(trainer, *args):
        if trainer.iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return write_samples(trainer, *args)
    return wrapped


def test_gen_frames_limits_only_a_dataset_to_generate(data_root, tmp_path, capsys):
    # the data has 40-frame trajectories: --frames 20 fits whatever --gen-frames says
    code, out, err = call(TINY + ["--data", data_root, "--out", str(tmp_path / "a"), "--iters",
                                  "1", "--frames", "20", "--gen-frames", "8"], capsys)
    assert code == 0, err
    h5 = os.path.join(data_root, "pendulum", "train.h5")
    assert (f"[hgan] {h5} exists: --gen-frames is for a dataset to generate, not used "
            f"(delete {h5} to generate it again)") in out   # it was ignored without a word
    # a batch larger than the file's windows: more --gen-train alone would not help
    code, _, err = call(TINY + ["--data", data_root, "--out", str(tmp_path / "c"),
                                "--batch-size", "4000", "--gen-train", "5000"], capsys)
    assert_one_error_line(code, err, "batch size 4000 exceeds the",
                          f"delete {h5} to generate it again")
    assert not (tmp_path / "c").exists()
    # an imported file is not for deleting
    import shutil

    import h5py
    imported = tmp_path / "imported"
    (imported / "pendulum").mkdir(parents=True)
    shutil.copy(h5, imported / "pendulum" / "train.h5")
    with h5py.File(imported / "pendulum" / "train.h5", "a") as f:
        f.attrs["generator_version"] = "imported from dm_hamiltonian_dynamics_suite"
    code, _, err = call(TINY + ["--data", str(imported), "--out", str(tmp_path / "d"),
                                "--batch-size", "4000"], capsys)
    assert_one_error_line(code, err, "was imported (hgan.data import-dm): import it again")
    # no data: --gen-frames 8 cannot make 20-frame videos, and nothing is generated
    missing = tmp_path / "nodata"
    code, _, err = call(TINY + ["--data", str(missing), "--out", str(tmp_path / "b"),
                                "--frames", "20", "--gen-frames", "8"], capsys)
    assert_one_error_line(code, err, "--gen-frames (8) must be >= --frames (20)")
    assert not missing.exists()
    # nor --gen-train 3 a batch of 4: it was generated, then refused by the loader, and had
    # to be deleted before another try
    code, _, err = call(TINY + ["--data", str(missing), "--out", str(tmp_path / "b"),
                                "--gen-train", "3", "--gen-test", "2", "--gen-frames", "8"],
                        capsys)
    assert_one_error_line(code, err, "--gen-train (3) must be >= --batch-size (4) to generate "
                                     f"{missing / 'pendulum' / 'train.h5'}")
    assert not missing.exists() and not (tmp_path / "b").exists()
    # as many as the batch is enough
    code, _, err = call(TINY + ["--data", str(missing), "--out", str(tmp_path / "b"), "--iters",
                                "1", "--gen-train", "4", "--gen-test", "2", "--gen-frames", "8"],
                        capsys)
    assert code == 0, err


def test_autocast_flags_this_device_refuses_generate_no_data(tmp_path, capsys):
    # --amp-dtype fp16 on a CPU was refused by the trainer, after the missing dataset had
    # been generated (at the paper's sizes, hours of it)
    missing = tmp_path / "nodata"
    code, _, err = call(TINY + ["--data", str(missing), "--out", str(tmp_path / "run"),
                                "--amp", "--amp-dtype", "fp16", "--gen-train", "8",
                                "--gen-test", "2", "--gen-frames", "8"], capsys)
    assert_one_error_line(code, err, "--amp-dtype fp16 is for CUDA")
    assert not missing.exists() and not (tmp_path / "run").exists()


def _bad_input(case, data_root, tiny_h5, tmp_path, monkeypatch):
    """(extra train.py flags, what the error line must say) of one kind of bad input."""
    h5 = os.path.join(data_root, "pendulum", "train.h5")
    if case == "device_cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        return ["--device", "cuda"], ["--device cuda: CUDA is not available"]
    if case == "device_tpu":
        return ["--device", "tpu"], ["--device 'tpu': expected auto, cpu, cuda"]
    if case == "dt_nan":
        return ["--dt", "nan"], ["--dt must be a finite number > 0, got nan"]
    if case == "fused_on_cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        return ["--integrator", "fused"], ["--integrator fused cannot run", "CUDA"]
    if case == "amp_fp16_on_cpu":
        return ["--amp", "--amp-dtype", "fp16"], ["--amp-dtype fp16 is for CUDA"]
    if case in ("truncated_h5", "junk_h5"):
        data = open(tiny_h5, "rb").read()
        bad = tmp_path / "bad" / "pendulum" / "train.h5"
        bad.parent.mkdir(parents=True)
        bad.write_bytes(data[:len(data) // 3] if case == "truncated_h5" else b"not hdf5" * 100)
        return ["--data", str(tmp_path / "bad")], ["truncated or corrupt HDF5 file"]
    if case == "frames_48":
        return ["--frames", "48"], [f"{h5} has trajectories of 40 frames, fewer than --frames 48"]
    if case == "resolution_64":
        return ["--resolution", "64"], [f"{h5} has 32x32 frames but --resolution is 64"]
    if case == "other_system":
        os.makedirs(os.path.join(data_root, "mass_spring"))
        os.symlink(tiny_h5, os.path.join(data_root, "mass_spring", "train.h5"))
        return ["--system", "mass_spring"], ["holds pendulum trajectories, not --system "
                                             "mass_spring"]
    if case == "batch_too_big":
        return ["--batch-size", "400"], ["batch size 400 exceeds",
                                         "(--gen-train sets how many a generated dataset has"]
    if case == "data_is_the_h5_file":
        return ["--data", h5], [f"--data is the dataset root (holding pendulum/train.h5), not a "
                                f"file: got {h5}; use --data {data_root}"]
    if case == "data_is_the_system_folder":
        folder = os.path.join(data_root, "pendulum")
        return ["--data", folder], [f"--data {folder} holds train.h5 itself",
                                    f"use --data {data_root}"]
    if case == "resume_missing":
        return ["--resume", str(tmp_path / "nope")], ["no checkpoint at"]
    if case == "resume_dir_without_checkpoint":
        (tmp_path / "empty").mkdir()
        return ["--resume", str(tmp_path / "empty")], ["no checkpoint at"]
    if case == "resume_h5":
        return ["--resume", h5], [f"{h5} is not a checkpoint (not a torch.save file)"]
    if case == "resume_junk":
        junk = tmp_path / "junk.pt"
        junk.write_bytes(b"\x00garbage" * 50)
        return ["--resume", str(junk)], [f"{junk} is not a checkpoint (not a torch.save file)"]
    if case == "resume_not_a_run":
        path = str(tmp_path / "weights.pt")
        torch.save({"w": torch.ones(2)}, path)
        return ["--resume", path], [f"{path} is not a training checkpoint"]
    if case == "resume_incomplete":
        path = str(tmp_path / "partial.pt")
        torch.save({"config": {}, "iteration": 3, "rng": {}}, path)
        return ["--resume", path], [f"{path} is not a complete training checkpoint (it has no "
                                    "generator, image_disc,"]
    if case == "out_is_a_file":
        (tmp_path / "afile").write_text("x")
        return ["--out", str(tmp_path / "afile" / "run")], [f"{tmp_path / 'afile'} is a file"]
    if case == "out_is_a_broken_link":
        os.symlink(tmp_path / "gone", tmp_path / "link")
        return ["--out", str(tmp_path / "link")], [f"--out {tmp_path / 'link'} is a broken "
                                                   "symbolic link"]
    if case == "amp_dtype_without_amp":
        return ["--amp-dtype", "bf16"], ["--amp-dtype chooses autocast's dtype and autocast is "
                                         "off: add --amp"]
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "device_cuda", "device_tpu", "dt_nan", "fused_on_cpu", "amp_fp16_on_cpu", "truncated_h5",
    "junk_h5", "frames_48", "resolution_64", "other_system", "batch_too_big",
    "data_is_the_h5_file", "data_is_the_system_folder", "resume_missing",
    "resume_dir_without_checkpoint", "resume_h5", "resume_junk", "resume_not_a_run",
    "resume_incomplete", "out_is_a_file", "out_is_a_broken_link", "amp_dtype_without_amp"])
def test_bad_input_is_one_line_and_exit_2(case, data_root, tiny_pendulum_h5, tmp_path, capsys,
                                          monkeypatch):
    out = tmp_path / "run"
    extra, needles = _bad_input(case, data_root, tiny_pendulum_h5, tmp_path, monkeypatch)
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "2"] + extra,
                        capsys)
    assert_one_error_line(code, err, *needles)
    assert not out.exists()  # nothing was written


def test_weights_that_do_not_fit_the_config_are_one_line_everywhere(stopped_run, tmp_path,
                                                                     capsys):
    # A checkpoint whose generator no longer fits the model its config builds (another
    # version of the models, or an edited file): train --resume, hgan.sample and
    # hgan.evaluate each say so in one line instead of torch's multi-line traceback.
    from hgan.evaluate import cli as eval_cli
    from hgan.sample import main as sample_main
    run, _ = stopped_run
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    name = next(iter(ckpt["generator"]))
    ckpt["generator"][name] = torch.zeros(3, 5)
    bad = tmp_path / "edited.pt"
    torch.save(ckpt, bad)
    code, _, err = call(["--resume", str(bad)], capsys)
    assert_one_error_line(code, err, "generator weights do not fit", name)
    assert sample_main(["--checkpoint", str(bad), "--out", str(tmp_path / "s.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generator weights do not fit" in err[0], err
    with pytest.raises(SystemExit) as e:
        eval_cli.main(["--checkpoint", str(bad), "--out", str(tmp_path / "e"), "--metrics",
                       "cyclic"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generator weights do not fit" in err[0], err
    assert not (tmp_path / "e").exists()


def test_a_resumed_run_trains_on_the_data_it_started_with(data_root, tmp_path, capsys,
                                                          monkeypatch):
    from hgan.data import generate_dataset
    # Started with a relative --data in one directory, resumed from another: the checkpoint
    # names the data absolutely, and nothing is generated where the resume runs.
    monkeypatch.chdir(os.path.dirname(data_root))
    out = tmp_path / "run"
    code, _, err = call(TINY + ["--data", "data", "--out", str(out), "--iters", "1"], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["data"] == data_root
    assert load_checkpoint(str(out))["dataset"] == {
        "path": os.path.join(data_root, "pendulum", "train.h5"), "trajectories": 24, "frames": 40,
        "system": "pendulum", "resolution": 32, "seed": 0}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, err = call(["--resume", str(out), "--iters", "2"], capsys)
    assert code == 0, err
    assert "generating" not in stdout and os.listdir(elsewhere) == []
    # The data moved: generating 256 trajectories in its place would not be it.
    moved = tmp_path / "moved"
    os.rename(data_root, moved)
    code, _, err = call(["--resume", str(out), "--iters", "3"], capsys)
    assert_one_error_line(code, err, "is missing and generating it would not give back the "
                          "run's data", "(24 trajectories of 40 frames, system pendulum, "
                          "resolution 32, seed 0)", "point --data at")
    assert not os.path.exists(data_root)
    code, _, err = call(["--resume", str(out), "--iters", "3", "--data", str(moved)], capsys)
    assert code == 0, err
    assert load_checkpoint(str(out))["iteration"] == 3
    # Another dataset at the place given is refused.
    generate_dataset("pendulum", tmp_path / "other", train=12, test=0, frames=40, seed=1,
                     resolution=32, progress=False)
    code, _, err = call(["--resume", str(out), "--iters", "4", "--data", str(tmp_path / "other")],
                        capsys)
    assert_one_error_line(code, err, "has 12 trajectories of 40 frames, system pendulum",
                          "but the run trained on")
    # the same counts, drawn with another seed: not the run's data either
    generate_dataset("pendulum", tmp_path / "reseeded", train=24, test=0, frames=40, seed=1,
                     resolution=32, progress=False)
    code, _, err = call(["--resume", str(out), "--iters", "4", "--data",
                         str(tmp_path / "reseeded")], capsys)
    assert_one_error_line(code, err, "24 trajectories of 40 frames, system pendulum, "
                          "resolution 32, seed 1, but the run trained on")
    assert load_checkpoint(str(out))["iteration"] == 3
    # The Python API's resume (no command line): the checkpoint's data, not the default ./data
    from hgan.train.config import RunConfig
    from hgan.train.run import resume_config
    ckpt = load_checkpoint(str(out))
    assert resume_config(ckpt, RunConfig(iters=9), str(out / "checkpoints" / "last.pt")).data \
        == str(moved)
    assert resume_config(ckpt, RunConfig(iters=9, data="/x"),
                         str(out / "checkpoints" / "last.pt")).data == "/x"


def test_a_mocogan_batch_without_batch_statistics_is_refused(data_root, tmp_path, capsys):
    from hgan.train.dist import DistInfo
    from hgan.train.loop import Trainer
    args = tiny("mocogan") + ["--data", data_root, "--out", str(tmp_path / "run"),
                              "--model", "mocogan"]
    code, _, err = call(args + ["--batch-size", "1"], capsys)
    assert_one_error_line(code, err, "needs >= 2 videos per batch, got 1 (--batch-size 1)")
    assert not (tmp_path / "run").exists()
    # under DDP the batch is each rank's share
    cfg, _, _ = parse_command_line(args + ["--batch-size", "2"])
    with pytest.raises(ValueError, match=r"got 1 \(--batch-size 2 over 2 ranks\)"):
        Trainer(cfg, DistInfo(rank=0, world_size=2), device="cpu")
    Trainer(cfg, DistInfo(), device="cpu")   # two videos in one process train


@pytest.mark.parametrize("local_rank,lines", [("0", 1), ("1", 0)])
def test_under_torchrun_only_each_nodes_first_rank_reports_bad_input(local_rank, lines,
                                                                    data_root, tmp_path,
                                                                    capsys, monkeypatch):
    # Every rank meets the same bad input: one line in all, not one per rank.
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    for extra in (["--lr", "-1"], ["--bogus"], ["--batch-size", "400"]):  # parse, argparse, setup
        code, _, err = call(TINY + ["--data", data_root, "--out", str(tmp_path / "r")] + extra,
                            capsys)
        assert code == 2, (extra, err)
        assert len(err.strip().splitlines()) == lines, (extra, err)
        if lines:
            assert_one_error_line(code, err)


def test_bad_input_under_torchrun_is_one_line(data_root, tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", os.path.join(root, "train.py"), *TINY,
                           "--data", data_root, "--out", str(tmp_path / "r"),
                           "--batch-size", "5"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert ours == ["train.py: error: --batch-size 5 is not divisible by the 2 ranks"], \
        proc.stderr
    assert not (tmp_path / "r").exists()


def test_installed_as_hgan_train_its_lines_name_hgan_train(data_root, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/bin/hgan-train"])
    code, out, _ = call(["--help"], capsys)
    assert code == 0 and out.startswith("usage: hgan-train "), out[:80]
    for extra in (["--lr", "-1"], ["--bogus"]):  # our check, argparse's
        code, _, err = call(TINY + ["--data", data_root, "--out", str(tmp_path / "r")] + extra,
                            capsys)
        assert code == 2 and err.strip().splitlines()[-1].startswith("hgan-train: error: "), err
    monkeypatch.setattr("sys.argv", ["train.py"])
    code, out, _ = call(["--help"], capsys)
    assert code == 0 and out.startswith("usage: train.py "), out[:80]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_damaged_chunk_met_in_training_is_one_line_and_the_checkpoint_is_kept(
        tiny_pendulum_h5, tmp_path, capsys, workers):
    # open_h5 reads each file's first and last trajectory; one in between that cannot be
    # decoded surfaced mid-run as a 40-line loader traceback, with no checkpoint written.
    import shutil

    import h5py
    root = tmp_path / "data"
    (root / "pendulum").mkdir(parents=True)
    path = root / "pendulum" / "train.h5"
    shutil.copy(tiny_pendulum_h5, path)
    with h5py.File(path, "r") as f:
        n = f["frames"].shape[0]
        chunks = [f["frames"].id.get_chunk_info_by_coord((i, 0, 0, 0, 0)) for i in range(1, n - 1)]
    with open(path, "r+b") as f:
        for info in chunks:
            f.seek(info.byte_offset)
            f.write(b"\xff" * info.size)
    out = tmp_path / "run"
    argv = TINY + ["--data", str(root), "--out", str(out), "--iters", "5", "--num-workers", workers]
    code, _, err = call(argv, capsys)
    assert_one_error_line(code, err, f"{path}: truncated or corrupt data (dataset 'frames', "
                                     "trajectory", "the run stopped at iteration 0 with its "
                                     f"checkpoint; resume with --resume {out} once the data reads")
    assert load_checkpoint(str(out))["iteration"] == 0


def test_under_torchrun_the_rank_that_meets_a_damaged_chunk_says_so(monkeypatch, capsys):
    # Only that rank reads the chunk: reported like bad input (each node's first rank alone),
    # a second rank's damaged chunk ended the job with exit 2 and no word.
    from types import SimpleNamespace

    import hgan.train.run as hrun
    from hgan.data.h5io import DataFormatError
    monkeypatch.setenv("LOCAL_RANK", "1")
    setup = SimpleNamespace(info=SimpleNamespace(enabled=True, rank=3),
                            cfg=SimpleNamespace(out="/nonexistent/run"))
    monkeypatch.setattr(hrun, "prepare", lambda *a, **k: setup)

    def run(_):  # as a DataLoader worker's error reaches the main process
        raise DataFormatError("Caught DataFormatError in DataLoader worker process 0.\n"
                              "Original Traceback (most recent call last):\n  File ...\n"
                              "hgan.data.h5io.DataFormatError: d/train.h5: truncated or corrupt "
                              "data (dataset 'frames', trajectory 7: boom)\n")

    monkeypatch.setattr(hrun, "run", run)
    code, _, err = call(TINY, capsys)
    assert code == 2
    # the others wait for it in a collective: no stop checkpoint, and the line says so
    assert err == ("train.py: error (rank 3): d/train.h5: truncated or corrupt data (dataset "
                   "'frames', trajectory 7: boom); the other ranks stop too, and no checkpoint "
                   "of the run is in /nonexistent/run on this machine (rank 0 writes them)\n")


def _under_torchrun(monkeypatch, tmp_path, failure, rank=1):
    """train.py's main on rank `rank` of a torchrun job whose training raises `failure`."""
    from types import SimpleNamespace

    import hgan.train.run as hrun
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    setup = SimpleNamespace(info=SimpleNamespace(enabled=True, rank=rank),
                            cfg=SimpleNamespace(out=str(tmp_path / "run")))
    monkeypatch.setattr(hrun, "prepare", lambda *a, **k: setup)

    def run(_):
        raise failure
    monkeypatch.setattr(hrun, "run", run)


def test_a_rank_that_loses_its_peers_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    # gloo's "Connection closed by peer" was a 35-line traceback on the surviving rank.
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    _under_torchrun(monkeypatch, tmp_path, RuntimeError(
        "[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:20625"))
    code, _, err = call(TINY, capsys)
    assert code == 1
    assert err == (f"train.py: error (rank 1): lost contact with another rank, which stopped "
                   f"or failed (its message, if it left one, is above); the run keeps its last "
                   f"checkpoint, {ckpt} (resume with --resume {tmp_path / 'run'})\n")
    # any other RuntimeError in training is a bug: its traceback stays
    _under_torchrun(monkeypatch, tmp_path, RuntimeError("shape mismatch in conv"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(TINY)


@pytest.mark.parametrize("kind, text, lost", [
    # gloo on torch 2.13 and 2.11, a peer killed mid-all_reduce (seen): a plain RuntimeError
    ("RuntimeError", "[../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                     "[127.0.0.1]:24470. This is typically caused by a remote worker crashing.",
     True),
    # NCCL's ncclRemoteError, as torch words it
    ("DistBackendError", "NCCL error in: ProcessGroupNCCL.cpp:1347, remote process exited or "
                         "there was a network error, NCCL version 2.18.5", True),
    # the rendezvous store (in rank 0's process) gone
    ("DistNetworkError", "Failed to recv, got 0 bytes. Connection was likely closed.", True),
    ("DistStoreError", "wait timeout after 600000ms, keys: /default_pg/0//cuda//0", True),
    # this rank's own NCCL failures: not a lost peer, their traceback stays
    ("DistBackendError", "NCCL error in: ProcessGroupNCCL.cpp:1331, unhandled cuda error (run "
                         "with NCCL_DEBUG=INFO for details)", False),
    ("DistBackendError", "NCCL error in: ProcessGroupNCCL.cpp:1287, invalid usage, NCCL "
                         "version 2.17.1", False),
    ("RuntimeError", "shape mismatch in conv", False),
    # a socket to a peer that died: reset, or written to after it closed
    ("RuntimeError", "[../gloo/transport/tcp/pair.cc:589] Read error [127.0.0.1]:5271: "
                     "Connection reset by peer", True),
    ("RuntimeError", "[../gloo/transport/tcp/pair.cc:437] Write error [127.0.0.1]:5271: "
                     "Broken pipe", True),
])
def test_only_a_peer_that_is_gone_reads_as_lost_contact(kind, text, lost):
    import torch.distributed as dist

    from hgan.train import dist as hdist
    err = (RuntimeError if kind == "RuntimeError" else getattr(dist, kind))(text)
    assert hdist.lost_peer(err) is lost


@pytest.mark.parametrize("reporter", [True, False])
def test_a_non_finite_loss_under_torchrun_is_said_by_one_rank(monkeypatch, tmp_path, capsys,
                                                             reporter):
    # every rank stops at the same flush; the line came once per rank
    from hgan.train.loop import NonFiniteLoss
    _under_torchrun(monkeypatch, tmp_path, NonFiniteLoss("non-finite G loss (nan) at iteration "
                                                         "1", reporter=reporter), rank=2)
    code, _, err = call(TINY, capsys)
    assert code == 1
    assert err == ("[hgan] error (rank 2): non-finite G loss (nan) at iteration 1\n"
                   if reporter else "")


def test_a_non_finite_loss_stops_a_single_process_run_in_one_line(data_root, tmp_path, capsys):
    # --cyc-lambda inf: iteration 1's generator loss is inf; the run stops with exit 1 and
    # says so in one line (no rank to name), before any checkpoint
    out = tmp_path / "run"
    code, _, err = call(TINY + ["--data", data_root, "--out", str(out), "--iters", "2",
                                "--cyc-lambda", "inf"], capsys)
    assert code == 1
    assert err == ("[hgan] error: non-finite generator loss (inf) at iteration 1; stopping (no "
                   "checkpoint was written yet)\n")


def test_loader_dali_without_dali_is_one_line_naming_the_extra(data_root, tmp_path, capsys,
                                                               monkeypatch):
    # `pip install -e .` without the dali extra: --loader dali is bad input, not a traceback
    from hgan.data import dali
    monkeypatch.setattr(dali, "_IMPORT_ERROR", ImportError("No module named 'nvidia'"))
    out = tmp_path / "run"
    argv = [a if a != "torch" else "dali" for a in TINY]  # --loader dali
    code, _, err = call(argv + ["--data", data_root, "--out", str(out), "--iters", "1"], capsys)
    assert_one_error_line(code, err, "--loader dali", "pip install -e '.[dali]'")
    assert not out.exists()


@pytest.mark.parametrize("world,batch,needle", [
    ("1", "1", "needs >= 2 videos per batch, got 1 (--batch-size 1)"),
    ("2", "5", "--batch-size 5 is not divisible by the 2 ranks"),
])
def test_a_batch_that_cannot_train_is_refused_before_the_dataset_is_generated(
        world, batch, needle, tmp_path, capsys, monkeypatch):
    # The flags alone say that this batch cannot train: generating a missing dataset first
    # (hours for a paper-size set) only to refuse it afterwards wasted that time.
    # as torchrun sets them; refused before joining the process group
    for name, value in (("WORLD_SIZE", world), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    data = tmp_path / "data"
    code, out, err = call(tiny("mocogan") + ["--data", str(data), "--out", str(tmp_path / "run"),
                                             "--model", "mocogan", "--batch-size", batch,
                                             "--gen-train", "4", "--gen-test", "0",
                                             "--gen-frames", "8"], capsys)
    assert_one_error_line(code, err, needle)
    assert out == ""   # no "generating" line
    assert not (data / "pendulum" / "train.h5").exists()
    assert not (tmp_path / "run").exists()


def _ends_in_the_last_barrier(monkeypatch, tmp_path, barrier):
    """train.py's main on rank 1 of a torchrun job whose training ended normally and whose
    group's closing barrier (the wait for rank 0's last checkpoint) does `barrier()`."""
    import torch.distributed as dist

    import hgan.train.run as hrun
    from hgan.train import dist as hdist
    monkeypatch.setenv("LOCAL_RANK", "1")
    setup = SimpleNamespace(info=SimpleNamespace(enabled=True, rank=1),
                            cfg=SimpleNamespace(out=str(tmp_path / "run")))
    group = []   # joined in the setup, left at the end
    monkeypatch.setattr(hrun, "prepare", lambda *a, **k: group.append(1) or setup)
    monkeypatch.setattr(hrun, "run", lambda s: {})
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(group))
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barrier())
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: group.clear())
    monkeypatch.setattr(hdist, "left_a_group", False)   # main, not entry: no os._exit
    try:
        return main(TINY)
    except BaseException as e:  # noqa: BLE001 - a traceback where one line was due
        return repr(e)


def test_a_peer_lost_while_waiting_for_the_last_checkpoint_is_one_line(monkeypatch, tmp_path,
                                                                       capsys):
    # Rank 0 killed while it wrote its last checkpoint: the rank waiting for it ended in
    # gloo's "Connection closed by peer" traceback.
    def barrier():
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:20625")
    code = _ends_in_the_last_barrier(monkeypatch, tmp_path, barrier)
    assert code == 1
    assert capsys.readouterr().err == (
        f"train.py: error (rank 1): lost contact with another rank, which stopped or failed "
        f"(its message, if it left one, is above); no checkpoint of the run is in "
        f"{tmp_path / 'run'} on this machine (rank 0 writes them)\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_waiting_for_the_last_checkpoint_ends_nothing_early(sig, monkeypatch,
                                                                           tmp_path, capsys):
    # Ctrl-C to torchrun (SIGINT, then SIGTERM, to every rank) while rank 0 writes its last
    # checkpoint: the waiting rank ended in a KeyboardInterrupt traceback. Its training is
    # done and rank 0 saves and says so: it waits for that and exits 0, without a word.
    code = _ends_in_the_last_barrier(monkeypatch, tmp_path,
                                     lambda: os.kill(os.getpid(), sig))
    assert code == 0
    assert capsys.readouterr().err == ""


def test_a_peer_lost_during_the_setup_is_one_line(monkeypatch, tmp_path, capsys):
    # Rank 0 killed while it generated the missing dataset: the rank waiting for it in the
    # setup's barrier ended in gloo's "Connection closed by peer" traceback.
    import hgan.train.run as hrun
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)

    def prepare(*a, **k):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:20625")
    monkeypatch.setattr(hrun, "prepare", prepare)
    code, _, err = call(TINY, capsys)
    assert code == 1
    assert err == ("train.py: error (rank 1): lost contact with another rank during the setup, "
                   "which stopped or failed (its message, if it left one, is above); "
                   "training did not start\n")
    # any other RuntimeError of the setup is a bug: its traceback stays

    def broken(*a, **k):
        raise RuntimeError("shape mismatch in conv")
    monkeypatch.setattr(hrun, "prepare", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(TINY)


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
def test_a_seed_outside_numpys_range_is_refused_before_the_dataset_is_generated(
        seed, tmp_path, capsys):
    # The Trainer seeds numpy with it (0 .. 2**32 - 1): beyond, numpy's (or torch's) own
    # message named no flag, and came after a missing dataset had been generated.
    data = tmp_path / "data"
    code, out, err = call(TINY + ["--data", str(data), "--out", str(tmp_path / "run"),
                                  "--seed", seed, "--gen-train", "4", "--gen-test", "0",
                                  "--gen-frames", "8"], capsys)
    assert_one_error_line(code, err, f"--seed must be an integer from 0 to 2**32 - 1, got {seed}")
    assert out == "" and not (data / "pendulum" / "train.h5").exists()
    assert not (tmp_path / "run").exists()


def test_bad_input_spanning_lines_is_still_one_line(capsys):
    from hgan.train.cli import bad_input
    assert bad_input(ValueError("the dataset does not fit:\nits frames are 16 wide\n")) == 2
    assert capsys.readouterr().err == ("train.py: error: the dataset does not fit: its frames "
                                       "are 16 wide\n")


def test_a_non_finite_loss_of_a_single_process_names_no_rank(monkeypatch, tmp_path, capsys):
    import hgan.train.run as hrun
    from hgan.train.loop import NonFiniteLoss
    setup = SimpleNamespace(info=SimpleNamespace(enabled=False, rank=0),
                            cfg=SimpleNamespace(out=str(tmp_path / "run")))
    monkeypatch.setattr(hrun, "prepare", lambda *a, **k: setup)

    def run(s):
        raise NonFiniteLoss("non-finite G loss (nan) at iteration 1", reporter=True)
    monkeypatch.setattr(hrun, "run", run)
    code, _, err = call(TINY, capsys)
    assert (code, err) == (1, "[hgan] error: non-finite G loss (nan) at iteration 1\n")


def test_a_lost_peer_message_outside_torchrun_keeps_its_traceback(monkeypatch):
    # One process has no peers: a "Connection closed by peer" in its setup is some other
    # failure (a socket of its own), not a rank gone.
    import hgan.train.run as hrun
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def prepare(*a, **k):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:20625")
    monkeypatch.setattr(hrun, "prepare", prepare)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(TINY)


@pytest.mark.parametrize("local_rank, said", [("0", True), ("1", False)])
def test_a_signal_during_the_setup_is_said_by_each_nodes_first_rank(monkeypatch, capsys,
                                                                  local_rank, said):
    import hgan.train.run as hrun
    monkeypatch.setenv("LOCAL_RANK", local_rank)

    def prepare(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(hrun, "prepare", prepare)
    code, _, err = call(TINY, capsys)
    assert code == 130
    assert err == ("train.py: stopped by SIGINT before the first iteration; nothing of the run "
                   "was written\n" if said else "")


def test_sigterm_ends_the_setup_in_one_line_and_gets_its_default_back(monkeypatch, capsys):
    # Until the loop's own handlers, SIGTERM raises as Ctrl-C does (so the setup ends in one
    # line, not silently); afterwards the process's default is back.
    import hgan.train.run as hrun
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    seen = []

    def prepare(*a, **k):
        handler = signal.getsignal(signal.SIGTERM)
        seen.append(handler)
        if callable(handler):
            handler(signal.SIGTERM, None)   # what the signal would run
        raise AssertionError("SIGTERM did not stop the setup")
    monkeypatch.setattr(hrun, "prepare", prepare)
    code, _, err = call(TINY, capsys)
    assert code == 143 and callable(seen[0])
    assert err == ("train.py: stopped by SIGTERM before the first iteration; nothing of the run "
                   "was written\n")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_last_wait_gives_the_signal_handlers_back(monkeypatch, tmp_path):
    # The closing barrier holds SIGINT and SIGTERM off; main then restores what was there.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert _ends_in_the_last_barrier(monkeypatch, tmp_path, lambda: None) == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_process_group_the_caller_set_up_stays_up(monkeypatch, tmp_path):
    # main called inside a job that joined its group itself: that group is the caller's to
    # leave (no closing barrier, no destroy).
    import torch.distributed as dist

    import hgan.train.run as hrun
    setup = SimpleNamespace(info=SimpleNamespace(enabled=True, rank=0),
                            cfg=SimpleNamespace(out=str(tmp_path / "run")))
    calls = []
    monkeypatch.setattr(hrun, "prepare", lambda *a, **k: setup)
    monkeypatch.setattr(hrun, "run", lambda s: {})
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    assert main(TINY) == 0
    assert calls == []


def test_a_new_run_into_a_runs_directory_is_refused_before_its_data_is_generated(tmp_path,
                                                                                capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    missing = tmp_path / "nodata"
    code, _, err = call(TINY + ["--data", str(missing), "--out", str(out), "--gen-train", "8",
                                "--gen-test", "2", "--gen-frames", "8"], capsys)
    assert_one_error_line(code, err, f"--out {out} already holds a run")
    assert not missing.exists()


def test_a_run_finished_in_out_during_the_setup_is_not_overwritten(data_root, tmp_path,
                                                                   monkeypatch):
    # The early check passed; then another process's run wrote its checkpoint there while
    # this one set up (generated its data): the check after the claim refuses it.
    from hgan.train import run as hrun
    out = tmp_path / "run"
    ensure = hrun.ensure_dataset

    def meanwhile(*a, **kw):
        ensure(*a, **kw)
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "last.pt").write_bytes(b"theirs")
    monkeypatch.setattr(hrun, "ensure_dataset", meanwhile)
    cfg, resume, given = parse_command_line(TINY + ["--data", data_root, "--out", str(out)])
    with pytest.raises(ValueError, match=f"--out {out} already holds a run"):
        prepare(cfg, resume=resume, given=given)
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"theirs"


def test_a_resume_may_repeat_an_amp_dtype_its_run_kept_without_amp(stopped_run):
    # A run set up from Python (RunConfig(amp_dtype="bf16"), amp off: no command line to
    # refuse) keeps that --amp-dtype; repeating it on resume, as a non-resumable flag must
    # be, is no request for autocast.
    from hgan.train.checkpoint import save_checkpoint
    out, _ = stopped_run
    last = str(out / "checkpoints" / "last.pt")
    ckpt = load_checkpoint(last)
    ckpt["config"]["amp_dtype"] = "bf16"
    save_checkpoint(ckpt, last)
    setup = prepare(*parse_command_line(["--resume", str(out), "--amp-dtype", "bf16"]))
    assert (setup.cfg.amp, setup.cfg.amp_dtype) == (False, "bf16")
    setup.stream.close()
    setup.lock.release()


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_failed_capture_is_one_line_saying_how_to_go_on(monkeypatch, tmp_path, capsys,
                                                         checkpointed):
    # On CUDA a configuration torch cannot capture fails at the first capture (after the
    # warm-up steps), with no eager fallback in that process (hgan.train.capture._capture):
    # one line, exit 1, and the command that goes on from what is on disk.
    import hgan.train.run as hrun
    from hgan.train.capture import CaptureFailed
    out = tmp_path / "run"
    if checkpointed:  # a resumed run: its checkpoint is where it goes on from
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "last.pt").write_bytes(b"")
    setup = SimpleNamespace(info=SimpleNamespace(enabled=False, rank=0),
                            cfg=SimpleNamespace(out=str(out)))
    monkeypatch.setattr(hrun, "prepare", lambda *a, **k: setup)

    def run(s):
        try:
            raise RuntimeError("operation not permitted when stream is capturing\n"
                               "CUDA kernel errors might be asynchronously reported")
        except RuntimeError as err:
            raise CaptureFailed("capturing the training step into CUDA graphs failed "
                                f"({err}); train with --no-cuda-graph, in a new process") from err
    monkeypatch.setattr(hrun, "run", run)
    code, _, err = call(TINY, capsys)
    again = (f"resume with --resume {out} --no-cuda-graph" if checkpointed else
             f"no checkpoint was written: start again with --no-cuda-graph --out {out}")
    assert (code, err) == (1, "train.py: error: capturing the training step into CUDA graphs "
                              "failed (operation not permitted when stream is capturing CUDA "
                              f"kernel errors might be asynchronously reported); {again}\n")


@pytest.mark.parametrize("model, flags, needle", [
    # before: accepted, and the run trained exactly as without them
    ("hgan", ["--gru-input", "noise"], "--gru-input does not apply to --model hgan: only "
                                       "mocogan reads it"),
    ("hnn_gan", ["--gru-in=feedback"], "--gru-input does not apply to --model hnn_gan"),
    ("hgan", ["--gru-backend", "cells"], "--gru-backend does not apply to --model hgan: only "
                                         "mocogan reads it"),
    ("mocogan", ["--dt", "0.1"], "--dt does not apply to --model mocogan: mocogan has no "
                                 "learned Hamiltonian (it is for hgan and hnn_gan)"),
    ("mocogan", ["--k", "10"], "--k does not apply to --model mocogan"),
    ("mocogan", ["--integrator", "reference"], "--integrator does not apply"),
    ("mocogan", ["--scheme", "official"], "--scheme does not apply"),
    ("mocogan", ["--hamiltonian", "separable"], "--hamiltonian does not apply"),
    ("mocogan", ["--depth", "3"], "--depth does not apply"),
    ("mocogan", ["--activation", "tanh"], "--activation does not apply"),
    ("mocogan", ["--fused-precision", "ieee"], "--fused-precision does not apply"),
    ("mocogan", ["--cyc-lambda", "0.1"], "--cyc-lambda does not apply to --model mocogan: "
                                         "mocogan has no cyclic-coordinate loss to weigh "
                                         "(only hgan has one)"),
    ("hnn_gan", ["--cyc-lambda", "0"], "--cyc-lambda does not apply to --model hnn_gan"),
])
def test_a_flag_that_does_not_apply_to_the_model_is_refused(model, flags, needle, capsys):
    # by the parser, before any data is generated or anything written (and under the grid's
    # check_flags, which parses the same way)
    with pytest.raises(SystemExit) as e:
        parse_command_line(["--model", model] + flags)
    assert_one_error_line(e.value.code, capsys.readouterr().err, needle)


@pytest.mark.parametrize("model, flags", [
    ("hgan", ["--dt", "0.1", "--k", "3", "--cyc-lambda", "0", "--scheme", "official"]),
    ("hnn_gan", ["--dt", "0.1", "--k", "3", "--hamiltonian", "separable"]),
    ("mocogan", ["--gru-input", "noise", "--hidden", "8", "--motion-dim", "5"]),
    ("mocogan", ["--gru-backend", "cells"]),
])
def test_the_flags_of_a_model_stay_its_own(model, flags):
    cfg, _, _ = parse_command_line(["--model", model] + flags)
    assert cfg.model.model == model


def test_a_resume_refuses_a_flag_its_runs_model_does_not_read(stopped_run, capsys):
    # the run is hgan's; on resume the model is the checkpoint's, whatever --model defaults to
    from hgan.train.run import resume_config
    out, _ = stopped_run
    path = str(out / "checkpoints" / "last.pt")
    ckpt = load_checkpoint(path)
    cfg, _, given = parse_command_line(["--resume", str(out), "--gru-input", "feedback"])
    with pytest.raises(ValueError, match="^--gru-input does not apply to --model hgan"):
        resume_config(ckpt, cfg, path, given)
    cfg, _, given = parse_command_line(["--resume", str(out), "--dt", "0.05"])
    assert resume_config(ckpt, cfg, path, given).model.dt == 0.05    # hgan's own flag
    moco = {**ckpt, "config": {**ckpt["config"],
                               "model": {**ckpt["config"]["model"], "model": "mocogan"}}}
    with pytest.raises(ValueError, match="--dt does not apply to --model mocogan"):
        resume_config(moco, cfg, path, given)
