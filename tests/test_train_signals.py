"""Stop signals sent to the whole process group, as `timeout`, job schedulers, container
runtimes and Ctrl-C send them: train.py with loader workers saves a checkpoint and exits
cleanly, and the run resumes from it exactly."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from hgan.train import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--system", "pendulum", "--batch-size", "4", "--frames", "6", "--clip-frames", "4",
        "--rollout-frames", "8",
        "--ngf", "4", "--ndf", "4", "--k", "2", "--hidden", "8", "--motion-dim", "4",
        "--content-dim", "4", "--integrator", "analytic", "--device", "cpu", "--loader", "torch",
        "--num-workers", "2", "--log-every", "1", "--sample-every", "100000",
        "--ckpt-every", "100000", "--n-samples", "2", "--no-progress"]


def _default_sigint():
    # As from a terminal: a test suite started in the background of a non-interactive shell
    # ignores SIGINT, the child inherits that, and train.py rightly keeps ignoring it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_py(*args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY, *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint, **popen)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def start(proc, out):
    """Wait until the run is training (its first sample is written after iteration 1, then
    it is in the middle of later iterations); returns its loader workers' pids."""
    first = out / "samples" / "iter_0000001.png"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, finish(proc)
    time.sleep(0.3)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                             text=True).stdout.split()
    assert len(workers) == 2, workers   # the loader really has its worker processes
    return workers


def weights(path):
    ck = load_checkpoint(path)
    return {f"{n}.{k}": v for n in ("generator", "image_disc", "video_disc")
            for k, v in ck[n].items()}, ck


def test_group_signal_checkpoints_then_resumes_exactly(data_root, tmp_path):
    # The two signals' runs side by side, then their resumes side by side: each process's
    # start-up is most of this test's time.
    sigs = (signal.SIGTERM, signal.SIGINT)
    procs = {sig: train_py("--data", data_root, "--out", str(tmp_path / sig.name), "--iters",
                           "100000", start_new_session=True) for sig in sigs}
    workers = {sig: start(procs[sig], tmp_path / sig.name) for sig in sigs}
    reached = {}
    for sig in sigs:
        os.killpg(procs[sig].pid, sig)   # the whole group: the trainer and its loader workers
    for sig in sigs:
        out = tmp_path / sig.name
        rc, stdout, stderr = finish(procs[sig])
        assert rc == 0, stderr
        assert "Traceback" not in stderr and "Error" not in stderr, stderr
        m = re.search(rf"{sig.name}: checkpoint saved at iteration (\d+)", stdout)
        assert m, stdout
        it = int(m.group(1))
        _, ck = weights(str(out / "checkpoints" / "last.pt"))
        assert it >= 1 and ck["iteration"] == it and ck["loader_position"] == it
        for pid in workers[sig]:   # no worker outlives the trainer
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
        reached[sig] = it

    # Exact resume: each stopped run, resumed to N + 2 iterations, equals a straight run.
    total = max(reached.values()) + 2
    straight = tmp_path / "straight"
    resumes = {sig: train_py("--resume", str(tmp_path / sig.name), "--iters", str(it + 2))
               for sig, it in reached.items()}
    rc, _, err = finish(train_py("--data", data_root, "--out", str(straight), "--iters",
                                 str(total), "--ckpt-every", "1",
                                 "--keep-every", "1"))
    assert rc == 0, err
    for sig, it in reached.items():
        rc, _, err = finish(resumes[sig])
        assert rc == 0, err
        got, ck = weights(str(tmp_path / sig.name / "checkpoints" / "last.pt"))
        ref, _ = weights(str(straight / "checkpoints" / f"iter_{it + 2:07d}.pt"))
        assert ck["iteration"] == it + 2 and got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (sig.name, k)


def _catches(pid, sig):
    """Whether process `pid` has a handler installed for `sig` (SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (sig - 1) & 1)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_loader_workers_die_with_a_killed_trainer(data_root, tmp_path):
    out = tmp_path / "killed"
    proc = train_py("--data", data_root, "--out", str(out), "--iters", "100000")
    workers = start(proc, out)
    proc.kill()                      # SIGKILL: no handler runs, nothing is cleaned up
    finish(proc)
    deadline = time.monotonic() + 30  # a liveness bound, not a timing: they die at once
    while time.monotonic() < deadline and not all(
            not os.path.exists(f"/proc/{p}") or _zombie(p) for p in workers):
        time.sleep(0.1)
    assert all(not os.path.exists(f"/proc/{p}") or _zombie(p) for p in workers), workers


def test_a_process_left_holding_loader_workers_still_exits(tiny_pendulum_h5):
    # At interpreter exit multiprocessing terminate()s daemonic workers (SIGTERM) and joins
    # them: a worker that ignored SIGTERM hung its parent's exit forever. Here a process
    # takes one batch from a 2-worker loader and exits without closing it.
    script = (
        "import sys\n"
        "from hgan.data.loader import build_loader\n"
        f"s = build_loader({str(tiny_pendulum_h5)!r}, batch_size=4, frames=6, num_workers=2,"
        " kind='torch')\n"
        "it = iter(s)\n"
        "next(it)\n"
        "print('got a batch', flush=True)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process did not exit: its loader workers blocked interpreter exit")
    assert "got a batch" in out, err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_dataset_generation_ends_cleanly(tmp_path, sig, code):
    # A dataset far too large to finish before the signal: it is stopped while being written.
    data = tmp_path / "data"
    partial = data / "pendulum" / "train.h5.partial"
    proc = train_py("--data", str(data), "--out", str(tmp_path / "run"), "--gen-train", "100000",
                    "--gen-frames", "8", start_new_session=True)
    deadline = time.monotonic() + 120
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert partial.exists(), finish(proc)
    os.killpg(proc.pid, sig)  # the whole group, as Ctrl-C or `timeout` send it
    rc, _, stderr = finish(proc)
    assert rc == code, stderr
    assert stderr.strip().splitlines() == [
        f"train.py: generation of {data}/pendulum/train.h5 was interrupted ({sig.name}); "
        "no partial file or half-made dataset was kept"], stderr
    # neither a partial nor a half-made dataset, nor the data/pendulum/ folders made for them
    assert not data.exists()
    assert not (tmp_path / "run").exists()


_SIGNAL_IN_SETUP = """
import os, signal, sys, time
import hgan.train.run as run

def trainer(*args, **kwargs):  # the models are being built: the setup's longest part on a GPU
    os.kill(os.getpid(), signal.{sig})
    time.sleep(60)
    raise AssertionError("the signal did not stop the setup")

run.Trainer = trainer
from hgan.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig, code, local_rank", [(signal.SIGINT, 130, "0"),
                                                   (signal.SIGTERM, 143, "0"),
                                                   (signal.SIGINT, 130, "1")])
def test_signal_during_setup_ends_in_one_line(data_root, tmp_path, sig, code, local_rank):
    # Before the loop's own handlers exist: no traceback (SIGINT), no silent exit (SIGTERM).
    # Under torchrun a Ctrl-C reaches every rank: only each node's first rank says so.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "LOCAL_RANK": local_rank}
    args = [*TINY, "--data", data_root, "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_IN_SETUP.format(sig=sig.name), *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=_default_sigint)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"train.py: stopped by {sig.name} before the first iteration; "
        "nothing of the run was written"][:1 if local_rank == "0" else 0], proc.stderr
    assert not (tmp_path / "run").exists()


_SIGNAL_AFTER_SETUP = """
import os, signal, sys
import torch.utils.tensorboard as tb

real = tb.SummaryWriter
def writer(*args, **kwargs):  # the run directory is being written; TensorBoard's import is slow
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

tb.SummaryWriter = writer
from hgan.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_after_the_setup_saves_a_checkpoint_at_iteration_0(data_root, tmp_path):
    # Between the setup and the loop's first step: not a silent SIGTERM exit, nor a traceback.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_SETUP, *TINY, "--num-workers",
                           "0", "--data", data_root, "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"[hgan] SIGTERM: checkpoint saved at iteration 0 -> {out}" in proc.stdout
    assert load_checkpoint(str(out))["iteration"] == 0


def test_a_loader_failing_after_a_signal_stops_the_run_for_the_signal(data_root, tmp_path):
    from hgan.train.config import parse_command_line
    from hgan.train.run import prepare, run

    class Stop:
        signum = None

    class Stream:  # as a loader whose spawned worker the group's SIGINT killed while starting
        position = 0

        def __init__(self, signal_first):
            self.signal_first = signal_first

        def __iter__(self):
            if self.signal_first:
                Stop.signum = signal.SIGINT
            raise RuntimeError("DataLoader worker (pid(s) 1234) exited unexpectedly")
            yield

        def close(self):
            pass

    for signal_first in (True, False):
        cfg, _, given = parse_command_line([*TINY, "--num-workers", "0", "--data", data_root,
                                            "--out", str(tmp_path / f"run-{signal_first}")])
        setup = prepare(cfg, given=given)
        setup.stream.close()
        setup.stream, Stop.signum = Stream(signal_first), None
        if signal_first:
            res = run(setup, stop=Stop)
            assert res["stopped"] == "SIGINT" and res["iteration"] == 0
            assert load_checkpoint(res["checkpoint"])["iteration"] == 0
        else:  # without a signal the loader's failure is the error it is
            with pytest.raises(RuntimeError, match="exited unexpectedly"):
                run(setup, stop=Stop)


def test_a_second_ctrl_c_aborts_but_one_stop_delivered_twice_does_not(monkeypatch):
    # `timeout -s INT` signals its child, then the child's group: two SIGINTs microseconds
    # apart are one stop; a second Ctrl-C a second or more later aborts.
    from hgan.train.run import _StopFlag
    clock = [100.0]
    monkeypatch.setattr("hgan.train.run.time.monotonic", lambda: clock[0])
    flag = _StopFlag()
    flag._handle(signal.SIGINT, None)
    clock[0] += 0.001
    flag._handle(signal.SIGINT, None)
    flag._handle(signal.SIGTERM, None)
    assert flag.signum == signal.SIGINT
    clock[0] += _StopFlag.SECOND_AFTER_S
    with pytest.raises(KeyboardInterrupt):
        flag._handle(signal.SIGINT, None)
    term = _StopFlag()
    term._handle(signal.SIGTERM, None)
    clock[0] += 10
    term._handle(signal.SIGTERM, None)  # SIGTERM never aborts: the checkpoint is still saved
    assert term.signum == signal.SIGTERM


def _rank_pids(launcher_pid):
    """{RANK: pid} of torchrun's worker processes."""
    pids = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True,
                          text=True).stdout.split()
    ranks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = int(pid)
    return ranks


def test_a_signal_to_one_torchrun_rank_stops_every_rank_with_a_checkpoint(data_root, tmp_path):
    # SIGTERM to rank 1 alone: the ranks all-reduce their stop flags every STOP_POLL_EVERY
    # iterations, so both stop at the same one, rank 0 saves the checkpoint, and all exit 0.
    from hgan.train.run import STOP_POLL_EVERY
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", os.path.join(ROOT, "train.py"), *TINY,
                             "--num-workers", "0", "--data", data_root, "--out", str(out),
                             "--iters", "100000"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    ranks = {}
    try:
        first = out / "samples" / "iter_0000001.png"
        deadline = time.monotonic() + 120
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks = _rank_pids(proc.pid)
        assert proc.poll() is None and sorted(ranks) == [0, 1], finish(proc)
        os.kill(ranks[1], signal.SIGTERM)
        rc, stdout, stderr = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:  # torchrun starts each rank in a session of its own
            for pid in [proc.pid, *ranks.values()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
    assert rc == 0, stderr[-3000:]
    m = re.search(r"peer signal: checkpoint saved at iteration (\d+)", stdout)
    assert m, stdout
    it = int(m.group(1))
    _, ck = weights(str(out / "checkpoints" / "last.pt"))
    assert it >= 1 and it % STOP_POLL_EVERY == 0 and ck["iteration"] == it
    assert ck["world_size"] == 2 and ck["rank_noise_rng"].shape[0] == 2


_LOADER_DIES_ON_RANK_1 = """
import json, os, signal, sys, time
from hgan.train import dist as hdist
from hgan.train.config import parse_command_line
from hgan.train.run import prepare, run

rank = int(os.environ["RANK"])


class Stop:
    signum = None


time.strftime = lambda fmt: f"20261201-12000{rank}"  # the ranks' clocks a second apart
cfg, _, given = parse_command_line(sys.argv[2:])
setup = prepare(cfg, given=given)
stream, batches, starts = setup.stream, setup.stream._batches, []


def failing_first():  # rank 1: the group's SIGINT killed a worker while it was starting
    starts.append(stream.position)
    if rank == 1 and len(starts) == 1:
        Stop.signum = signal.SIGINT
        raise RuntimeError("DataLoader worker (pid(s) 1234) exited unexpectedly")
    for i, batch in enumerate(batches()):
        if rank == 1 and i == 2 and os.environ.get("FAIL_AGAIN"):
            raise RuntimeError("DataLoader worker (pid(s) 5678) exited unexpectedly")
        yield batch


stream._batches = failing_first
res = run(setup, stop=Stop)
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"stopped": res["stopped"], "iteration": res["iteration"], "starts": starts,
               "out": res["out"]}, f)
hdist.leave(clean=True)
hdist.exit_process(0)
"""


def test_a_loader_dying_of_a_signal_on_one_torchrun_rank_stops_every_rank_together(data_root,
                                                                                   tmp_path):
    # That rank stopped at once and called the checkpoint's collective while the other was
    # in a step's: the ranks' collectives no longer matched. Its loader now starts again at
    # the same batch and it steps on to the agreed poll, where both stop. The run's default
    # --out is rank 0's on every rank (each rank named one by its own clock).
    import json

    from hgan.train.run import STOP_POLL_EVERY
    script = tmp_path / "rank.py"
    out = tmp_path / "runs" / "pendulum-hgan-20261201-120000"
    script.write_text(_LOADER_DIES_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "TMPDIR": str(tmp_path)}
    again = tmp_path / "again"
    again.mkdir()

    def launch(results, *args, **extra):
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node", "2", str(script), str(results), *TINY,
                                 "--num-workers", "0", "--data", data_root, "--iters", "100000",
                                 *args], env={**env, **extra}, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # The two launches side by side (each one's start-up is most of its time): the second
    # has its loader fail again, with results and --out of its own.
    procs = [launch(tmp_path), launch(again, "--out", str(again / "run"), FAIL_AGAIN="1")]
    try:
        done = [p.communicate(timeout=120) for p in procs]   # before the fix: the ranks hung
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (_, err), (_, err_again) = done
    assert procs[0].returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["stopped"] for r in ranks] == ["peer signal", "SIGINT"]
    assert [r["iteration"] for r in ranks] == [STOP_POLL_EVERY] * 2
    assert ranks[0]["starts"] == [0] and ranks[1]["starts"] == [0, 0]  # the same batch again
    assert [r["out"] for r in ranks] == [str(out)] * 2
    assert load_checkpoint(str(out))["iteration"] == STOP_POLL_EVERY
    # Its loader failing again: that rank stopped alone, into the same mismatch (a hang);
    # now its error ends the process group.
    assert procs[1].returncode != 0 and "pid(s) 5678) exited unexpectedly" in err_again


def test_a_loader_failing_after_a_signal_still_names_a_pending_non_finite_loss(data_root,
                                                                              tmp_path):
    # Where losses are checked late (CUDA), a stop by a failing loader checks them as every
    # stop does: the error is the loop's, naming the checkpoint kept, and nothing is saved.
    import torch

    from hgan.train.config import parse_command_line
    from hgan.train.loop import NonFiniteLoss
    from hgan.train.run import prepare, run

    class Stop:
        signum = None

    class Stream:
        position = 0

        def __iter__(self):
            yield torch.zeros(4, 6, 3, 32, 32)   # iteration 1 is always checked
            yield torch.full((4, 6, 3, 32, 32), float("nan"))  # a poisoned batch
            Stop.signum = signal.SIGINT
            raise RuntimeError("DataLoader worker (pid(s) 1234) exited unexpectedly")

        def close(self):
            pass

    cfg, _, given = parse_command_line([*TINY, "--num-workers", "0", "--data", data_root,
                                        "--out", str(tmp_path / "run"), "--log-every", "1000"])
    setup = prepare(cfg, given=given)
    setup.stream.close()
    setup.stream = Stream()
    setup.trainer.defer_checks = True
    with pytest.raises(NonFiniteLoss, match=r"non-finite discriminator loss \(nan\) at "
                                            r"iteration 2; stopping \(no checkpoint was "
                                            r"written yet\)"):
        run(setup, stop=Stop)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("sig, code, after_s", [(signal.SIGINT, 130, 0.5),
                                                (signal.SIGINT, 130, 1.2),
                                                (signal.SIGTERM, 143, 0.5)])
def test_a_signal_while_torch_is_imported_ends_in_one_line(data_root, tmp_path, sig, code,
                                                           after_s):
    # The first seconds of `python train.py` import torch: a Ctrl-C there gave a traceback,
    # or an abort from C++ ("terminate called ... KeyboardInterrupt", exit -6).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--data",
                             data_root, "--out", str(tmp_path / "run")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    # after_s into the start, but not before train.py's first lines have put its handlers in
    # place (~50 ms in, unloaded): a signal before them would not land in torch's import
    t_signal = time.monotonic() + after_s
    deadline = t_signal + 120
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(max(0.0, t_signal - time.monotonic()))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"train.py: stopped by {sig.name} before the first "
                                        "iteration; nothing of the run was written"], err
    assert not (tmp_path / "run").exists()


def test_the_stop_flag_gives_back_the_handlers_it_found():
    # SIG_IGN for SIGINT under nohup, a caller's own handler for SIGTERM: a run in this
    # process must not leave either at the default (which kills it).
    from hgan.train.run import _StopFlag

    def own(signum, frame):
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, own)
    try:
        with _StopFlag() as flag:
            assert signal.getsignal(signal.SIGTERM) == flag._handle
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        for sig, old in before.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
