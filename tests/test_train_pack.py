"""hgan.train.pack: several runs in one process's threads train exactly what each trains alone;
their output is routed per run; a bad run, a stop signal and unpackable flags are handled."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from hgan.train import cli as train_cli
from hgan.train import load_checkpoint, pack

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flags(data_root, out, model="hgan", seed=0, iters=3, extra=()):
    from hgan.model_kinds import model_kind
    # train.py refuses --integrator with a model that has no learned Hamiltonian
    integrator = ["--integrator", "reference"] if model_kind(model).hamiltonian else []
    return ["--system", "pendulum", "--model", model, "--seed", str(seed), "--data", data_root,
            "--out", str(out), "--iters", str(iters), "--batch-size", "4", "--frames", "6",
            "--device", "cpu", "--ngf", "8", "--ndf", "8", "--clip-frames", "4", "--rollout-frames", "8",
            *integrator, "--log-every", "1", "--sample-every", "1000",
            "--ckpt-every", "1000", "--n-samples", "2", "--num-workers", "0",
            "--loader", "torch", "--no-progress", *extra]


def weights(run_dir):
    ck = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    return ck["iteration"], {f"{n}.{k}": v for n in ("generator", "image_disc", "video_disc")
                             for k, v in ck[n].items()}


def test_packed_runs_train_what_each_trains_alone(data_root, tmp_path, capsys):
    runs = [("hgan", 0), ("mocogan", 1), ("hgan", 2)]
    # One run reads through a loader worker: spawned in the pack, forked alone.
    extra = {1: ("--num-workers", "1")}
    argv = ["--tagged"]
    for i, (model, seed) in enumerate(runs):
        argv += ["--", *flags(data_root, tmp_path / f"pack-{model}-{seed}", model, seed,
                              extra=extra.get(i, ()))]
    assert pack.main(argv) == 0
    out = capsys.readouterr().out
    for i in range(len(runs)):
        assert f"{pack.TAG}{i}x0\n" in out                          # each run's exit, tagged
        model, seed = runs[i]   # each run's lines under its own tag
        assert f"{pack.TAG}{i}n[hgan] run directory {tmp_path}/pack-{model}-{seed}\n" in out
    assert all(line.startswith(pack.TAG) for line in out.split("\n")[:-1])  # nothing untagged
    for i, (model, seed) in enumerate(runs):
        assert train_cli.main(flags(data_root, tmp_path / f"alone-{model}-{seed}", model, seed,
                                    extra=extra.get(i, ()))) == 0
        it_p, packed = weights(tmp_path / f"pack-{model}-{seed}")
        it_a, alone = weights(tmp_path / f"alone-{model}-{seed}")
        assert it_p == it_a == 3 and packed.keys() == alone.keys()
        for k in alone:  # bit for bit: same init, same noise, same batches
            assert torch.equal(packed[k], alone[k]), (model, seed, k)
    # different seeds really differ, so the comparison above could fail
    _, a = weights(tmp_path / "pack-hgan-0")
    _, b = weights(tmp_path / "pack-hgan-2")
    assert any(not torch.equal(a[k], b[k]) for k in a)



def test_packed_runs_of_one_seed_train_what_each_trains_alone(data_root, tmp_path, capsys,
                                                            monkeypatch):
    # The grid packs runs of one seed (pendulum-hgan-s0 beside pendulum-mocogan-s0): nothing
    # seeded may be shared between them. The runs above are of distinct seeds and each
    # trains within its first steps, one run at a time; here the run that gets past its
    # first steps first (one iteration: no capture on the CPU) waits there for the other's
    # first iteration, so that the other is set up and trains while it still has iterations
    # to go.
    from hgan.train import capture as hcapture
    from hgan.train import run as hrun
    real_run, done, cond = hrun.run, {}, threading.Condition()

    def run(setup, stop=None, callback=None):
        def cb(trainer):
            with cond:
                done[trainer.cfg.model.model] = trainer.iteration
                cond.notify_all()
                if not hcapture.CAPTURE_LOCK._is_owned():   # past its first steps
                    assert cond.wait_for(lambda: len(done) == 2, timeout=60)
        return real_run(setup, stop=stop, callback=cb)
    monkeypatch.setattr(hrun, "run", run)
    monkeypatch.setattr(hcapture, "WARMUP_STEPS", 0)
    models = ("hgan", "mocogan")
    argv = []
    for model in models:
        argv += ["--", *flags(data_root, tmp_path / f"pack-{model}", model, seed=0, iters=3)]
    assert pack.main(argv) == 0, capsys.readouterr().out
    assert done == {"hgan": 3, "mocogan": 3}
    monkeypatch.setattr(hrun, "run", real_run)
    for model in models:
        assert train_cli.main(flags(data_root, tmp_path / f"alone-{model}", model, seed=0,
                                    iters=3)) == 0
        it_p, packed = weights(tmp_path / f"pack-{model}")
        it_a, alone = weights(tmp_path / f"alone-{model}")
        assert it_p == it_a == 3 and packed.keys() == alone.keys()
        for k in alone:
            assert torch.equal(packed[k], alone[k]), (model, k)

@pytest.mark.parametrize("model, loader", [("hgan", "torch"), ("mocogan", "gpu-resident")])
def test_training_never_draws_from_the_global_rng(data_root, tmp_path, model, loader):
    # Packed runs initialise their weights from the global RNG one at a time while the others
    # train: a draw from it after setup (the DataLoader's worker base seed once did) would
    # shift another run's initial weights.
    from hgan.train.config import parse_command_line
    from hgan.train.run import prepare, run
    cfg, _, _ = parse_command_line(flags(data_root, tmp_path / "r", model, iters=2,
                                         extra=("--loader", loader, "--sample-every", "1")))
    setup = prepare(cfg)
    before = torch.get_rng_state()
    run(setup)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_holds_the_capture_lock_through_its_first_iterations(data_root, tmp_path):
    # Warm-up, capture and the first samples of one packed run never overlap another's
    # capture: the lock is held through the first WARMUP_STEPS + 1 iterations, then let go.
    from hgan.train import capture as hcapture
    from hgan.train.config import parse_command_line
    from hgan.train.run import prepare, run
    held = []
    cfg, _, _ = parse_command_line(flags(data_root, tmp_path / "r", iters=6))
    run(prepare(cfg), callback=lambda t: held.append(hcapture.CAPTURE_LOCK._is_owned()))
    n = hcapture.WARMUP_STEPS + 1
    assert held == [True] * n + [False] * (6 - n)
    assert not hcapture.CAPTURE_LOCK._is_owned()


def _gated_runs(n, until, iters, monkeypatch, fail=None, stop=None, slow=0.0):
    """n threads through the real _FirstSteps under one StartGate: [(run, iteration)] in the
    order the iterations happened. Run `fail` raises at iteration 1 (its thread arrives on
    its way out, as _train_one does); run 0 sleeps `slow` seconds per iteration."""
    from hgan.train import capture as hcapture
    from hgan.train.run import _FirstSteps
    gate = pack.StartGate(n)
    monkeypatch.setattr(hcapture, "START_GATE", gate)
    log, lock = [], threading.Lock()

    def one(i):
        try:
            with _FirstSteps(until, stop) as first:
                for it in range(1, iters + 1):
                    if i == fail:
                        raise RuntimeError("setup failed")
                    time.sleep(slow if i == 0 else 0.0)
                    with lock:
                        log.append((i, it))
                    first.passed(it)
        except RuntimeError:
            pass
        finally:
            gate.arrive()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return log


def test_packed_runs_train_on_only_once_every_run_has_passed_its_first_iterations(
        monkeypatch):
    # Run 0 is slow (its warm-up); the others must not go past iteration `until` before it
    # has done its own first `until` iterations.
    log = _gated_runs(3, until=2, iters=5, monkeypatch=monkeypatch, slow=0.05)
    assert sorted(log) == [(i, it) for i in range(3) for it in range(1, 6)]
    last_first = max(k for k, (i, it) in enumerate(log) if it <= 2)
    first_after = min(k for k, (i, it) in enumerate(log) if it > 2)
    assert last_first < first_after, log


def test_a_run_that_ends_early_or_a_stop_never_leaves_the_others_waiting(monkeypatch):
    log = _gated_runs(3, until=1, iters=3, monkeypatch=monkeypatch, fail=2)
    assert sorted(log) == [(i, it) for i in range(2) for it in range(1, 4)]
    # a stop signal ends the wait for runs that never come
    from hgan.train import capture as hcapture
    monkeypatch.setattr(hcapture, "START_GATE", pack.StartGate(5))
    waited = hcapture.START_GATE.wait(SimpleNamespace(signum=signal.SIGTERM))
    assert waited < 1


def test_a_resumed_run_holds_the_capture_lock_through_its_own_first_iterations(data_root,
                                                                             tmp_path):
    # A resumed run warms up and captures after its checkpoint's iteration, not after
    # iteration WARMUP_STEPS + 1 of the run: the lock is held for as many iterations again.
    from hgan.train import capture as hcapture
    from hgan.train.config import parse_command_line
    from hgan.train.run import prepare, run
    cfg, _, _ = parse_command_line(flags(data_root, tmp_path / "r", iters=2))
    run(prepare(cfg))
    cfg, resume, given = parse_command_line(["--resume", str(tmp_path / "r"), "--iters", "8"])
    held = []
    run(prepare(cfg, resume, given),
        callback=lambda t: held.append((t.iteration, hcapture.CAPTURE_LOCK._is_owned())))
    n = hcapture.WARMUP_STEPS + 1
    assert held == [(2 + i, i <= n) for i in range(1, 7)]


def test_packed_static_step_runs_train_what_eager_runs_train_alone(data_root, tmp_path, capsys,
                                                                   monkeypatch):
    # Each thread drives the CUDA step's static buffers (capture aside: no GPU here) through
    # the run loop; it trains what the eager step trains alone, and at its end the run's
    # static step is released under the capture lock (a graph's destruction must not
    # overlap another run's capture).
    from hgan.train import capture as hcapture
    from hgan.train.loop import Trainer
    init, release, released = Trainer.__init__, hcapture.StaticStep.release, []

    def static_init(self, *a, **kw):
        init(self, *a, **kw)
        self.static_mode = "static"

    def spy_release(self):
        released.append(hcapture.CAPTURE_LOCK._is_owned())
        release(self)
    monkeypatch.setattr(Trainer, "__init__", static_init)
    monkeypatch.setattr(hcapture.StaticStep, "release", spy_release)
    runs = [("hgan", 0), ("mocogan", 1)]
    argv = []
    for model, seed in runs:
        argv += ["--", *flags(data_root, tmp_path / f"pack-{seed}", model, seed)]
    assert pack.main(argv) == 0
    assert released == [True, True]
    monkeypatch.setattr(Trainer, "__init__", init)
    for model, seed in runs:
        assert train_cli.main(flags(data_root, tmp_path / f"alone-{seed}", model, seed)) == 0
        it_p, packed = weights(tmp_path / f"pack-{seed}")
        it_a, alone = weights(tmp_path / f"alone-{seed}")
        assert it_p == it_a == 3
        for k in alone:
            assert torch.equal(packed[k], alone[k]), (model, k)


def test_a_failed_capture_in_one_packed_run_stops_the_others_with_75(data_root, tmp_path,
                                                                     capsys, monkeypatch):
    # Run 0's capture fails at its first step (as StaticStep._capture fails: under the lock,
    # setting CAPTURE_FAILED); run 1 is either kept from starting or, past its first
    # iterations, trains on until then and stops with a checkpoint. The process returns the
    # cause's code.
    from hgan.train import capture as hcapture
    from hgan.train.loop import Trainer
    step = Trainer.step

    def capture_or_step(self, real, want_stats=False):
        if self.cfg.seed == 0:
            with hcapture.CAPTURE_LOCK:
                hcapture.CAPTURE_FAILED.set()
                raise hcapture.CaptureFailed("capturing the training step into CUDA graphs "
                                             "failed (test)")
        if self.iteration > hcapture.WARMUP_STEPS:   # the lock is free: wait for the failure
            assert hcapture.CAPTURE_FAILED.wait(30)
        return step(self, real, want_stats)
    monkeypatch.setattr(Trainer, "step", capture_or_step)
    r0, r1 = tmp_path / "r0", tmp_path / "r1"
    try:
        code = pack.main(["--", *flags(data_root, r0, seed=0, iters=50),
                          "--", *flags(data_root, r1, seed=1, iters=50)])
    finally:
        hcapture.CAPTURE_FAILED.clear()
    out = capsys.readouterr().out
    assert code == 1, out
    assert "[0] exit code 1\n" in out and "[1] exit code 75\n" in out
    assert ("[0] [hgan] error: capturing the training step into CUDA graphs failed (test); "
            "stopping every run of this process") in out
    if (r1 / "summary.json").exists():    # run 1 was set up first: stopped, resumable
        summary = json.loads((r1 / "summary.json").read_text())
        assert summary["stopped"] == pack.PEER_FAILED
        assert weights(r1)[0] == summary["iteration"] < 50
    else:
        assert f"[1] [hgan] {pack.PEER_FAILED} before this run was set up: not started" in out
        assert not r1.exists()


def test_a_non_finite_packed_run_exits_1_and_the_others_finish(data_root, tmp_path, capsys,
                                                              monkeypatch):
    # --cyc-lambda inf: iteration 1's generator loss is inf. Run 2 meets a damaged chunk of
    # its data at iteration 1 (a DataFormatError mid-run: train.py's bad input, exit 2). Each
    # is reported under its own index and ends only itself: run 1, past its first step (no
    # capture on the CPU), waits for both to have ended, then trains on to its end.
    from hgan.data.h5io import DataFormatError
    from hgan.train import capture as hcapture
    from hgan.train import run as hrun
    real_one, real_run, ended = pack._train_one, hrun.run, {0: threading.Event(),
                                                            2: threading.Event()}

    def train_one(i, argv, stop, router, codes):
        try:
            real_one(i, argv, stop, router, codes)
        finally:
            if i in ended:
                ended[i].set()

    def run(setup, stop=None, callback=None):
        def cb(trainer):
            if trainer.cfg.seed == 2:
                raise DataFormatError("train.h5: truncated or corrupt data in chunk 0 (test)")
            if trainer.cfg.seed == 1 and not hcapture.CAPTURE_LOCK._is_owned():
                assert all(e.wait(60) for e in ended.values())
        return real_run(setup, stop=stop, callback=cb)
    monkeypatch.setattr(pack, "_train_one", train_one)
    monkeypatch.setattr(hrun, "run", run)
    monkeypatch.setattr(hcapture, "WARMUP_STEPS", 0)
    bad = flags(data_root, tmp_path / "bad", iters=2, extra=("--cyc-lambda", "inf"))
    good = flags(data_root, tmp_path / "good", seed=1, iters=3)
    damaged = flags(data_root, tmp_path / "damaged", seed=2, iters=3)
    assert pack.main(["--", *bad, "--", *good, "--", *damaged]) == 1   # the first cause's
    out = capsys.readouterr().out
    assert ("[0] [hgan] error: non-finite generator loss (inf) at iteration 1; stopping (no "
            "checkpoint was written yet)") in out
    assert "[2] train.py: error: train.h5: truncated or corrupt data in chunk 0 (test)\n" in out
    assert "[0] exit code 1\n" in out and "[1] exit code 0\n" in out
    assert "[2] exit code 2\n" in out
    assert weights(tmp_path / "good")[0] == 3
    assert json.loads((tmp_path / "good" / "summary.json").read_text())["stopped"] is None


def test_the_process_exit_code_is_the_first_cause_and_a_signal_is_not_a_peer_failure():
    assert pack.process_code({0: 0, 1: 2, 2: 1, 3: 75}, 4) == 2
    assert pack.process_code({0: 75, 1: 130, 2: 1}, 3) == 130
    from hgan.train import capture as hcapture

    class Flag:
        signum = signal.SIGINT
    stop = pack.SharedStop(Flag())
    hcapture.CAPTURE_FAILED.set()
    try:   # a Ctrl-C after another run's failed capture: the run stopped for the signal
        assert stop.signum == signal.SIGINT and not stop.peer_failed and stop.reason is None
    finally:
        hcapture.CAPTURE_FAILED.clear()


def test_a_bad_run_fails_alone_with_train_py_exit_code(data_root, tmp_path, capsys):
    good = flags(data_root, tmp_path / "good", iters=1)
    bad = flags(data_root, tmp_path / "bad", iters=1, extra=("--frames", "999"))
    compiled = flags(data_root, tmp_path / "compiled", iters=1, extra=("--compile",))
    assert pack.main(["--", *good, "--", *bad, "--", *compiled]) == 2
    out = capsys.readouterr().out
    assert "[0] exit code 0" in out and "[1] exit code 2" in out and "[2] exit code 2" in out
    assert "[1] train.py: error:" in out and "fewer than --frames 999" in out
    assert "[2] train.py: error: --compile cannot run in a packed process" in out
    assert weights(tmp_path / "good")[0] == 1
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")


def test_a_resumed_checkpoint_that_cannot_be_packed_is_refused(data_root, tmp_path, capsys):
    # --compile is not a flag a resume may change: it comes from the checkpoint, which the
    # refusal must read, not the command line.
    run = tmp_path / "was-compiled"
    assert train_cli.main(flags(data_root, run, iters=1)) == 0
    path = run / "checkpoints" / "last.pt"
    ck = torch.load(path, weights_only=True)
    ck["config"]["compile"] = True
    torch.save(ck, path)
    assert pack.main(["--", "--resume", str(run), "--iters", "2", "--device", "cpu"]) == 2
    out = capsys.readouterr().out
    assert "[0] train.py: error: --compile cannot run in a packed process" in out
    assert weights(run)[0] == 1


def test_missing_data_is_generated_first_then_every_run_trains(tmp_path, capsys):
    gen = ("--gen-train", "6", "--gen-test", "2", "--gen-frames", "12", "--frames", "6")
    root = str(tmp_path / "data")
    a = flags(root, tmp_path / "a", iters=1) + list(gen)
    b = flags(root, tmp_path / "b", model="mocogan", iters=1) + list(gen)
    assert pack.main(["--", *a, "--", *b]) == 0
    out = capsys.readouterr().out
    assert out.count("not found: generating") == 1          # once, before the runs
    assert out.index("not found: generating") < out.index("[0] ")
    assert weights(tmp_path / "a")[0] == weights(tmp_path / "b")[0] == 1


def test_runs_whose_data_the_pack_generated_are_not_told_their_gen_flags_went_unused(tmp_path,
                                                                                     capsys):
    # Alone, each run generates its dataset from its --gen-* flags and says nothing more; the
    # pack generates it for them first, which must not turn into "exists: ... not used". A run
    # whose --gen-* differ from the dataset made is told, as alone after another run made it.
    gen = ["--gen-train", "6", "--gen-test", "2", "--gen-frames", "12"]
    root = str(tmp_path / "data")
    a = flags(root, tmp_path / "a", iters=1) + gen
    b = flags(root, tmp_path / "b", model="mocogan", iters=1) + gen
    c = flags(root, tmp_path / "c", seed=1, iters=1) + gen[:-1] + ["14"]
    assert pack.main(["--", *a, "--", *b, "--", *c]) == 0
    out = capsys.readouterr().out
    assert out.count("not found: generating") == 1
    unused = [line for line in out.splitlines() if "not used" in line]
    assert len(unused) == 1 and unused[0].startswith("[2] [hgan] ") \
        and "exists: --gen-train, --gen-test, --gen-frames are" in unused[0], out


def test_a_resumed_run_whose_data_is_gone_gets_it_back_first(tmp_path, capsys):
    gen = ("--gen-train", "6", "--gen-test", "2", "--gen-frames", "12", "--frames", "6")
    root = tmp_path / "data"
    run = tmp_path / "r"
    assert train_cli.main(flags(str(root), run, iters=1) + list(gen)) == 0
    before = (root / "pendulum" / "train.h5").read_bytes()
    for f in (root / "pendulum").iterdir():
        f.unlink()
    capsys.readouterr()
    assert pack.main(["--", "--resume", str(run), "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert out.index("not found: generating") < out.index("[0] ")   # in the main thread
    assert (root / "pendulum" / "train.h5").read_bytes() == before   # the same data again
    assert weights(run)[0] == 2


def test_a_run_stopped_before_its_setup_does_not_start(data_root, tmp_path, monkeypatch):
    class Flag:
        signum = signal.SIGTERM
    router, codes = pack._Router(io.StringIO(), tagged=False), {}
    monkeypatch.setattr(sys, "stdout", router)
    pack._train_one(0, flags(data_root, tmp_path / "late"), pack.SharedStop(Flag()), router, codes)
    assert codes == {0: 128 + signal.SIGTERM}
    assert "[0] [hgan] SIGTERM before this run was set up: not started" in router.out.getvalue()
    assert not os.path.exists(tmp_path / "late")


@pytest.fixture
def in_this_thread():
    """(router, codes, stop) to call pack._train_one here (sys.stdout: the router, set in the
    test: pytest's capture resets it after fixtures); no signal; capture_failed() to fail."""
    from hgan.train import capture as hcapture

    class Flag:
        signum = None
    yield pack._Router(io.StringIO(), tagged=False), {}, pack.SharedStop(Flag())
    hcapture.CAPTURE_FAILED.clear()


def capture_failed():
    from hgan.train import capture as hcapture
    hcapture.CAPTURE_FAILED.set()


def test_a_run_kept_from_starting_by_another_runs_failed_capture_exits_75(data_root, tmp_path,
                                                                        in_this_thread,
                                                                        monkeypatch):
    router, codes, stop = in_this_thread
    monkeypatch.setattr(sys, "stdout", router)
    capture_failed()
    pack._train_one(0, flags(data_root, tmp_path / "late"), stop, router, codes)
    assert codes == {0: pack.PEER_FAILED_CODE}
    assert f"[0] [hgan] {pack.PEER_FAILED} before this run was set up: not started" in \
        router.out.getvalue()
    # the process's exit code is the cause's, not its consequences'
    assert pack.process_code({0: 75, 1: 1, 2: 75}, 3) == 1
    assert pack.process_code({0: 0, 1: 75}, 2) == 75
    assert pack.process_code({0: 0, 1: 0}, 2) == 0
    assert pack.process_code({0: 0}, 2) == 1   # a run that never reported: a crash


def test_a_resumed_run_takes_its_stream_on_the_device_its_checkpoint_trains_on(
        data_root, tmp_path, in_this_thread, monkeypatch):
    # Resumed without --device, a run trains on its checkpoint's device (a run started with
    # --device cuda:1 resumes there), so its stream must be made there, not on the device
    # the command line's default names.
    router, codes, stop = in_this_thread
    monkeypatch.setattr(sys, "stdout", router)
    pack._train_one(0, flags(data_root, tmp_path / "r", iters=2), stop, router, codes)
    streams = []

    def run_stream(cfg):
        streams.append(cfg.device)
        return pack.nullcontext()
    monkeypatch.setattr(pack, "run_stream", run_stream)
    pack._train_one(1, ["--resume", str(tmp_path / "r"), "--iters", "3"], stop, router, codes)
    assert codes == {0: 0, 1: 0} and streams == ["cpu"]
    assert load_checkpoint(str(tmp_path / "r"))["iteration"] == 3


def test_command_line_errors():
    with pytest.raises(ValueError, match="expected '--' before"):
        pack.split_runs(["--system", "pendulum"])
    with pytest.raises(ValueError, match="no runs given"):
        pack.split_runs(["--", "--"])
    with pytest.raises(ValueError, match=f"at most {pack.MAX_RUNS} per process"):
        pack.split_runs(["--", "a"] * (pack.MAX_RUNS + 1))
    assert pack.split_runs(["--", "a", "--", "b", "c"]) == [["a"], ["b", "c"]]
    assert pack.main([]) == 2


def test_two_runs_never_share_a_run_directory(data_root, tmp_path, capsys, monkeypatch):
    # Both would write one directory's config, checkpoints and TensorBoard files in turn.
    a = flags(data_root, tmp_path / "same")
    b = flags(data_root, tmp_path / "x" / ".." / "same", model="mocogan")
    assert pack.main(["--", *a, "--", *b]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hgan.train.pack: error: runs 0 and 1 both train "
                                               "in "), err
    assert not (tmp_path / "same").exists()
    # two runs left to the default --out in one second: numbered, not shared
    monkeypatch.chdir(tmp_path)
    from hgan.train import config
    monkeypatch.setattr(config.time, "strftime", lambda fmt: "20261130-120000")  # one second
    default = [f for f in flags(data_root, "unused") if f not in ("--out", "unused")]
    # (docs/training.md: <out>-2, -3, ...; three seeds of one model, say)
    runs = pack.distinct_run_dirs([default, default, flags(data_root, tmp_path / "own"), default])
    outs = [r[r.index("--out") + 1] for r in runs[:2] + runs[3:]]
    assert outs == [os.path.join("runs", "pendulum-hgan-20261130-120000"),
                    os.path.join("runs", "pendulum-hgan-20261130-120000-2"),
                    os.path.join("runs", "pendulum-hgan-20261130-120000-3")]
    assert runs[2] == flags(data_root, tmp_path / "own")
    assert runs[0].count("--out") == 1


def test_a_resumed_runs_branch_is_where_it_trains(tmp_path):
    # distinct_run_dirs parses flags only: the run directory exists, its checkpoints need not.
    parent = tmp_path / "run"
    (parent / "checkpoints").mkdir(parents=True)
    snap = str(parent / "checkpoints" / "iter_0000002.pt")
    go_on = ["--resume", str(parent), "--iters", "6"]
    branch = ["--resume", snap, "--out", str(tmp_path / "branch"), "--iters", "6"]
    # a branch beside its parent run, and two branches: each in a directory of its own
    assert pack.distinct_run_dirs([go_on, branch]) == [go_on, branch]
    other = ["--resume", snap, "--out", str(tmp_path / "other"), "--iters", "6"]
    assert pack.distinct_run_dirs([branch, other]) == [branch, other]
    # a branch and a new run into one --out would write one directory in turn
    fresh = ["--system", "pendulum", "--out", str(tmp_path / "branch")]
    with pytest.raises(ValueError, match="runs 0 and 1 both train in"):
        pack.distinct_run_dirs([branch, fresh])
    # the parent run twice: as before
    with pytest.raises(ValueError, match="runs 0 and 1 both train in"):
        pack.distinct_run_dirs([go_on, ["--resume", str(parent / "checkpoints" / "last.pt")]])


def test_help_is_usage_not_an_error(capsys):
    assert pack.main(["--help"]) == 0
    assert "python -m hgan.train.pack -- <train.py flags" in capsys.readouterr().out


def test_router_tags_pieces_per_thread_and_keeps_carriage_returns():
    out = io.StringIO()
    r = pack._Router(out, tagged=True)
    r.register(3)
    r.write("train: 1/9 [00:00]\rtrain: 2/9")   # a tqdm update and half of the next
    r.write(" [00:01]\rdone\nlast, unterminated")
    r.finish(3, 0)
    assert out.getvalue().split("\n") == [
        f"{pack.TAG}3rtrain: 1/9 [00:00]", f"{pack.TAG}3rtrain: 2/9 [00:01]",
        f"{pack.TAG}3ndone", f"{pack.TAG}3nlast, unterminated", f"{pack.TAG}3x0", ""]
    plain = io.StringIO()
    r = pack._Router(plain, tagged=False)
    r.register(0)
    r.writelines(["bar\rbar\rline\n"])
    r.finish(0, 1)
    assert plain.getvalue() == "[0] line\n[0] exit code 1\n"
    r.write("no run owns this thread now, ")   # unregistered: untagged, whole lines only
    assert plain.getvalue().endswith("exit code 1\n")
    r.write("so it waits for its newline\n")
    assert plain.getvalue().endswith("exit code 1\nno run owns this thread now, so it waits for its newline\n")



def test_runs_writing_halves_of_lines_in_turn_keep_each_its_own_line():
    # print() writes its text and its newline separately, and tqdm a bar in pieces: another
    # run's write between them must not take over (or end) the unterminated part, which is
    # the run's own and goes out under its own tag, whichever run wrote last.
    import queue
    out = io.StringIO()
    r = pack._Router(out, tagged=True)
    inboxes = {i: queue.Queue() for i in (0, 1)}

    def thread(i):  # a run's thread: registered once, then writes what it is handed
        r.register(i)
        while (job := inboxes[i].get()) is not None:
            job()
            inboxes[i].task_done()
        inboxes[i].task_done()
    threads = [threading.Thread(target=thread, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()

    def on(i, job):
        inboxes[i].put(job)
        inboxes[i].join()
    on(0, lambda: r.write("run 0 starts "))
    on(1, lambda: r.write("run 1 starts "))
    on(0, lambda: r.write("its line\n"))
    on(1, lambda: r.write("its own\rrun 1 bar"))
    on(1, lambda: r.finish(1, 2))   # run 0 writes on after run 1 has ended
    on(0, lambda: r.write("run 0 tail"))
    on(0, lambda: r.finish(0, 0))
    for i in (0, 1):
        inboxes[i].put(None)
    for t in threads:
        t.join()
    assert out.getvalue().split("\n") == [
        f"{pack.TAG}0nrun 0 starts its line", f"{pack.TAG}1rrun 1 starts its own",
        f"{pack.TAG}1nrun 1 bar", f"{pack.TAG}1x2", f"{pack.TAG}0nrun 0 tail",
        f"{pack.TAG}0x0", ""]

@pytest.mark.slow
def test_sigterm_stops_every_packed_run_with_a_checkpoint(data_root, tmp_path):
    argv = [sys.executable, "-m", "hgan.train.pack", "--tagged"]
    for i in range(2):
        argv += ["--", *flags(data_root, tmp_path / f"r{i}", seed=i, iters=100000,
                              extra=("--log-every", "1"))]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    log = tmp_path / "pack.log"   # a file, not a pipe: nothing blocks while this test waits
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    # Both runs are training: each has finished its first iteration (its first sample is
    # written then). A fixed sleep instead stopped them at iteration 0 on a loaded machine.
    firsts = [tmp_path / f"r{i}" / "samples" / "iter_0000001.png" for i in range(2)]
    try:
        deadline = time.time() + 120
        while not all(f.exists() for f in firsts) and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:   # a run the signal did not stop would train on, 100,000 iterations, after the test
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out
    for i in range(2):
        assert f"{pack.TAG}{i}x0" in out
        it, _ = weights(tmp_path / f"r{i}")
        assert 0 < it < 100000
        summary = (tmp_path / f"r{i}" / "summary.json").read_text()
        assert '"stopped": "SIGTERM"' in summary


def test_a_failed_capture_anywhere_stops_every_packed_run(data_root, tmp_path):
    # Set under the capture lock by the run whose capture failed: the next holder of the
    # lock (a run about to set up, or about to take its first step) sees a stop.
    from hgan.train import capture as hcapture
    from hgan.train.config import parse_command_line
    from hgan.train.run import prepare, run

    class Flag:
        signum = None
    stop = pack.SharedStop(Flag())
    assert stop.signum is None
    hcapture.CAPTURE_FAILED.set()
    try:
        assert stop.signum == signal.SIGTERM
        cfg, _, _ = parse_command_line(flags(data_root, tmp_path / "r", iters=5))
        res = run(prepare(cfg), stop=stop)
    finally:
        hcapture.CAPTURE_FAILED.clear()
    assert res["iteration"] == 0 and res["stopped"] == pack.PEER_FAILED   # no step taken
    assert weights(tmp_path / "r")[0] == 0                                # but resumable


def test_a_run_stopped_by_another_runs_failed_capture_exits_75_and_resumes(data_root, tmp_path,
                                                                           monkeypatch,
                                                                           in_this_thread):
    # Not "done": the grid must not evaluate it as finished (hgan.experiments.runner).
    from hgan.experiments import runner
    from hgan.train import run as hrun
    router, codes, stop = in_this_thread
    monkeypatch.setattr(sys, "stdout", router)
    real_run = hrun.run

    def fail_after_two(setup, stop=None, callback=None):
        def cb(trainer):  # another run's capture fails while this one trains
            if trainer.iteration == 2:
                capture_failed()
        return real_run(setup, stop=stop, callback=cb)
    monkeypatch.setattr(hrun, "run", fail_after_two)
    pack._train_one(0, flags(data_root, tmp_path / "r", iters=6), stop, router, codes)
    from hgan.train import capture as hcapture
    hcapture.CAPTURE_FAILED.clear()   # a new process, for the resume below
    monkeypatch.setattr(hrun, "run", real_run)
    assert codes == {0: pack.PEER_FAILED_CODE} and runner.PEER_FAILED_CODE == pack.PEER_FAILED_CODE
    assert weights(tmp_path / "r")[0] == 2
    assert f"[0] [hgan] {pack.PEER_FAILED}: checkpoint saved at iteration 2" in router.out.getvalue()
    assert pack.main(["--", "--resume", str(tmp_path / "r")]) == 0
    assert weights(tmp_path / "r")[0] == 6


def test_a_warning_is_written_for_every_runs_log_naming_its_run(capsys):
    out = io.StringIO()
    router = pack._Router(out, tagged=True)
    show = pack._warning_printer(router)
    t = threading.Thread(target=lambda: (router.register(4), show(
        UserWarning("the fused backend cannot run"), UserWarning, "x.py", 7)))
    t.start()
    t.join()
    show(RuntimeWarning("from the main thread"), RuntimeWarning, "y.py", 1)
    assert out.getvalue().split("\n") == [
        "[pack] run 4: x.py:7: UserWarning: the fused backend cannot run",  # untagged: every log
        "[pack] y.py:1: RuntimeWarning: from the main thread", ""]


_SIGNAL_AT_START = """
import os, signal, sys, time
from hgan.train import pack

def generate_missing(runs):  # reading resumed checkpoints, checking for data: before the threads
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
    raise AssertionError("the signal did not stop the start-up")

pack._generate_missing = generate_missing
sys.exit(pack.main(sys.argv[1:]))
"""


def test_a_signal_before_the_runs_start_ends_the_pack_in_one_line(data_root, tmp_path):
    # SIGTERM's default would end it silently (exit -15), Ctrl-C with a traceback.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AT_START, "--",
                           *flags(data_root, tmp_path / "run")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "hgan.train.pack: stopped by SIGTERM before any run started; nothing of the runs was "
        "written"], proc.stderr
    assert not (tmp_path / "run").exists()


def test_packed_runs_weigh_their_frames_as_runs_sharing_one_gpu(data_root, tmp_path,
                                                               monkeypatch):
    # under --loader auto each of N packed runs keeps its frames on the GPU only within 1/N of
    # the resident quarter; the setting ends with the pack, and a caller's value is kept
    from hgan.data import loader
    seen = []
    monkeypatch.setattr(pack, "_train_one",
                        lambda i, argv, stop, router, codes: (
                            seen.append(loader.runs_sharing_gpu()), codes.__setitem__(i, 0)))
    monkeypatch.delenv(loader.GPU_RUNS_ENV, raising=False)
    runs = [flags(data_root, tmp_path / f"r{i}") for i in range(3)]
    assert pack.main(["--", *runs[0], "--", *runs[1], "--", *runs[2]]) == 0
    assert seen == [3, 3, 3] and loader.GPU_RUNS_ENV not in os.environ
    monkeypatch.setenv(loader.GPU_RUNS_ENV, "12")
    seen.clear()
    assert pack.main(["--", *runs[0], "--", *runs[1]]) == 0
    assert seen == [12, 12] and os.environ[loader.GPU_RUNS_ENV] == "12"


_SECOND_CTRL_C = """
import os, signal, sys, time
from hgan.train import pack
from hgan.train import run as hrun

hrun._StopFlag.SECOND_AFTER_S = 0.0   # any second SIGINT is a second Ctrl-C
marks = sys.argv[1]

def train_one(i, argv, stop, router, codes):  # a run whose iteration outlasts both signals
    router.register(i)
    open(os.path.join(marks, "started"), "w").close()
    while stop.signum is None:
        time.sleep(0.01)
    open(os.path.join(marks, "stopping"), "w").close()
    while True:
        time.sleep(0.01)

pack._train_one = train_one
sys.exit(pack.entry(sys.argv[2:]))
"""


def test_a_second_ctrl_c_aborts_the_pack_in_one_line(data_root, tmp_path):
    # As train.py: one line and exit 130, not a traceback out of the join loop (then, with
    # the runs' threads still in torch's C++ code, "terminate called ..." and SIGABRT).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", _SECOND_CTRL_C, str(tmp_path), "--",
                             *flags(data_root, tmp_path / "run")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for mark, then in (("started", signal.SIGINT), ("stopping", signal.SIGINT)):
            deadline = time.time() + 120
            while not (tmp_path / mark).exists() and proc.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None
            proc.send_signal(then)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.strip().splitlines() == [
        "hgan.train.pack: aborted by a second Ctrl-C; each run keeps its last checkpoint, if "
        "one was written (resume it with --resume <its run directory>)"], err


_SECOND_CTRL_C_WHILE_SAVING = """
import os, sys, time
import torch
from hgan.train import checkpoint, pack
from hgan.train import run as hrun

hrun._StopFlag.SECOND_AFTER_S = 0.0
marks = sys.argv[1]

def slow_save(obj, f):  # the stop checkpoint, half written when the second Ctrl-C comes
    f.write(b"x" * 1000)
    f.flush()
    open(os.path.join(marks, "saving"), "w").close()
    while True:
        time.sleep(0.01)

def train_one(i, argv, stop, router, codes):
    router.register(i)
    open(os.path.join(marks, "started"), "w").close()
    while stop.signum is None:
        time.sleep(0.01)
    checkpoint.torch.save = slow_save
    checkpoint.save_checkpoint({}, os.path.join(marks, "checkpoints", "last.pt"))

pack._train_one = train_one
sys.exit(pack.entry(sys.argv[2:]))
"""


def test_a_second_ctrl_c_during_the_stop_checkpoint_leaves_no_temporary_file(data_root,
                                                                             tmp_path):
    # The runs' threads are abandoned (os._exit): a checkpoint they were writing stayed as
    # checkpoints/last.pt.tmp<pid>, half written, which nothing ever removes (the pid is
    # another one next time). train.py's abort (a KeyboardInterrupt in save) removes it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", _SECOND_CTRL_C_WHILE_SAVING, str(tmp_path),
                             "--", *flags(data_root, tmp_path / "run")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for mark in ("started", "saving"):
            deadline = time.time() + 120
            while not (tmp_path / mark).exists() and proc.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert os.listdir(tmp_path / "checkpoints") == [], err


def test_at_most_16_runs_per_process():
    # docs/training.md: each run takes a CUDA stream from torch's pool of 32
    assert len(pack.split_runs(["--", "a"] * 16)) == 16
    with pytest.raises(ValueError) as exc:
        pack.split_runs(["--", "a"] * 17)
    assert str(exc.value) == ("17 runs given; at most 16 per process (each needs a CUDA stream "
                              "of its own from torch's pool of 32)")


def test_a_profiled_run_is_refused(data_root, tmp_path):
    from hgan.train.config import parse_command_line
    cfg = parse_command_line(flags(data_root, tmp_path / "p") + ["--profile"])[0]
    with pytest.raises(ValueError, match=r"^--profile cannot run in a packed process \(one "
                                         r"profiler per process\); train it alone$"):
        pack.refuse(cfg)
    pack.refuse(parse_command_line(flags(data_root, tmp_path / "p"))[0])   # the rest may


def test_the_pack_refuses_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pack.main(["--", "--system", "pendulum"]) == 2
    assert capsys.readouterr().err == ("hgan.train.pack: error: not under torchrun (DDP runs "
                                       "one run per process)\n")


def test_tagged_is_the_packs_flag_only_before_the_first_run(capsys):
    # After '--' it is a run's flag, which train.py does not know: that run fails alone,
    # untagged (the pack itself was not asked to tag).
    assert pack.main(["--", "--tagged"]) == 2
    out = capsys.readouterr().out
    assert "[0] exit code 2\n" in out and pack.TAG not in out, out


def test_a_runs_own_help_is_its_exit_code_0(capsys):
    # argparse's exit code, whatever it is: 0 for a run's --help (train.py's usage), not 2
    assert pack.main(["--", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[0] exit code 0\n" in out and "--batch-size" in out, out


def test_a_resumed_run_whose_flags_would_not_give_its_data_back_generates_nothing(tmp_path,
                                                                                  capsys):
    # The run trained on a set made elsewhere (6 trajectories), with --gen-train 4 recorded:
    # generating 4 would not give its data back, so the pack generates nothing and the run
    # says why in one line (docs/training.md: "a missing one that --gen-* would not generate
    # back" is an error).
    from hgan.data import generate_dataset
    root = tmp_path / "data"
    generate_dataset("pendulum", root, train=6, test=0, frames=12, seed=0, resolution=32,
                     progress=False)
    run = tmp_path / "r"
    gen = ["--gen-train", "4", "--gen-test", "0", "--gen-frames", "12"]
    assert train_cli.main(flags(str(root), run, iters=1) + gen) == 0
    (root / "pendulum" / "train.h5").unlink()
    capsys.readouterr()
    assert pack.main(["--", "--resume", str(run), "--iters", "2"]) == 2
    out = capsys.readouterr().out
    assert "not found: generating" not in out and not (root / "pendulum" / "train.h5").exists(), out
    assert "[0] train.py: error:" in out and "generating it would not give" in out, out


def test_an_unterminated_line_of_no_run_is_written_at_the_end():
    out = io.StringIO()
    r = pack._Router(out, tagged=True)
    r.write("a warning without its newline")   # no run owns this thread: held back
    assert out.getvalue() == ""
    r.close_pending()
    assert out.getvalue() == "a warning without its newline\n"
    r.close_pending()
    assert out.getvalue() == "a warning without its newline\n"


def test_a_tagged_runs_exit_is_its_own_code(capsys):
    # --frames 1 is bad input (train.py's exit code 2): the runner reads it from "x2"
    assert pack.main(["--tagged", "--", "--frames", "1"]) == 2
    out = capsys.readouterr().out
    assert out.endswith(f"{pack.TAG}0x2\n"), out
