"""Independent oracles for data-parallel training (2 gloo ranks under torchrun, train.py's
own command line), beside tests/test_train_ddp.py (which checks the reducer from inside DDP):

- the update: each rank's optimizer steps equal those of two plain single-process Trainers,
  one per rank (its half of the global batch, its noise), whose gradients are averaged by
  hand before every step. BatchNorm statistics are per rank (docs/training.md), so a 2-rank
  step cannot equal a 1-process step on the whole batch; this is the exact property that
  holds instead (a "ghost batch" of B / world_size per normalisation).
- the data: at every iteration the ranks' windows are disjoint and together are the batch a
  single process with the same global --batch-size reads at that iteration.
- the noise: it differs between ranks, and a run stopped and resumed under torchrun draws
  on every rank the noise an uninterrupted run draws, and ends with the same weights.

One torchrun launch trains straight (4 iterations) and the first half (2) of an interrupted
run; a second launch resumes it. Each rank records, before every step, its real batch and
its noise generator's state.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERS = 4
TINY = ["--system", "pendulum", "--batch-size", "4", "--frames", "6", "--clip-frames", "4",
        "--rollout-frames", "8", "--ngf", "4", "--ndf", "4", "--k", "2", "--hidden", "8",
        "--motion-dim", "4", "--content-dim", "4", "--integrator", "analytic",
        "--device", "cpu", "--loader", "torch", "--num-workers", "0", "--log-every", "1",
        "--sample-every", "100000", "--ckpt-every", "100000", "--n-samples", "2",
        "--no-progress", "--r1-gamma", "10", "--seed", "3"]

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import hgan.train.loop as loop
    import hgan.train.run as R
    from hgan.train.cli import main

    rank = int(os.environ["RANK"])
    out, runs = sys.argv[1], json.loads(sys.argv[2])
    records, finals = [], []
    step = loop.Trainer.step

    def recording_step(self, real, want_stats=False):
        records[-1].append({"iteration": self.iteration, "real": real.clone(),
                            "noise": self.noise.get_state().clone()})
        return step(self, real, want_stats)

    # One process group for all the runs: train.py's main leaves a group only if it joined it
    # (a group re-created under torchrun's store would hang at its rendezvous).
    import torch.distributed as dist
    from hgan.train import dist as hdist
    dist.init_process_group("gloo")
    loop.Trainer.step = recording_step
    run = R.run

    def keeping_run(*a, **kw):
        res = run(*a, **kw)
        tr = res["trainer"]
        finals[-1] = {m: {k: v.detach().clone() for k, v in getattr(tr, m).state_dict().items()}
                      for m in ("G", "D_I", "D_V")}
        return res

    R.run = keeping_run
    for name, argv in runs:
        records.append([])
        finals.append(None)
        torch.manual_seed(1000 + rank)  # what an earlier run left in the global RNG: not used
        rc = main(argv)
        assert rc == 0, (name, rc)
    torch.save({name: {"records": r, "final": f} for (name, _), r, f in zip(runs, records, finals)},
               os.path.join(out, f"rank{rank}.pt"))
    hdist.leave(clean=True)
    hdist.exit_process(0)  # as train.py's entry: no finalization with gloo threads about
""")


def torchrun(script, out, runs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), str(out), json.dumps(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_pendulum_h5):
    tmp = tmp_path_factory.mktemp("ddp_oracles")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    data = os.path.dirname(os.path.dirname(tiny_pendulum_h5))
    flags = TINY + ["--data", data]
    first = torchrun(script, tmp, [
        ["straight", flags + ["--iters", str(ITERS), "--out", str(tmp / "straight")]],
        ["first_half", flags + ["--iters", str(ITERS // 2), "--out", str(tmp / "resumed")]]])
    second = torchrun(script, tmp, [
        ["resumed", ["--resume", str(tmp / "resumed"), "--iters", str(ITERS)]]])
    ranks = [{**a, **b} for a, b in zip(first, second)]
    return {"ranks": ranks, "tmp": tmp, "data": data}


def _is_stat(key):
    return "running_" in key or "num_batches" in key   # a BatchNorm buffer


def _params(state):
    return {f"{m}.{k}": v for m, sd in state.items() for k, v in sd.items() if not _is_stat(k)}


def _buffers(state, module):
    return {k: v for k, v in state[module].items() if _is_stat(k)}


def test_update_is_the_hand_averaged_step_of_two_single_process_trainers(ddp, one_thread):
    from hgan.train import RunConfig
    from hgan.train.loop import Trainer
    ranks = ddp["ranks"]
    straight = [r["straight"] for r in ranks]
    cfg = json.load(open(ddp["tmp"] / "straight" / "config.json"))
    cfg = RunConfig.from_dict({**cfg, "batch_size": cfg["batch_size"] // 2,
                               "out": str(ddp["tmp"] / "oracle")})
    # One plain Trainer per rank: same seed, so the same initial weights as DDP's rank 0.
    trainers = [Trainer(cfg, device="cpu") for _ in range(2)]
    for tr, rec in zip(trainers, straight):
        assert len(rec["records"]) == ITERS
        tr.noise.set_state(rec["records"][0]["noise"])   # that rank's own noise stream
    barrier, grads = threading.Barrier(2), [None, None]

    def all_reduce_mean(h, opt):
        step = opt.step

        def averaged_step(*a, **kw):
            ps = [p for g in opt.param_groups for p in g["params"]]
            grads[h] = [None if p.grad is None else p.grad.clone() for p in ps]
            barrier.wait()
            for p, g0, g1 in zip(ps, *grads):
                if g0 is not None or g1 is not None:
                    assert g0 is not None and g1 is not None
                    p.grad = (g0 + g1) / 2
            barrier.wait()
            return step(*a, **kw)
        opt.step = averaged_step

    for h, tr in enumerate(trainers):
        for opt in (tr.opt_di, tr.opt_dv, tr.opt_g):
            all_reduce_mean(h, opt)
    errors = []

    def train(h):
        try:
            for rec in straight[h]["records"]:
                trainers[h].step(rec["real"])
                trainers[h].iteration += 1
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=train, args=(h,)) for h in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    tr = trainers[0]
    oracle = _params({"G": tr.G.state_dict(), "D_I": tr.D_I.state_dict(),
                      "D_V": tr.D_V.state_dict()})
    for r in range(2):
        got = _params(straight[r]["final"])
        assert got.keys() == oracle.keys()
        for k in oracle:
            assert torch.equal(got[k], oracle[k]), k
            assert torch.equal(got[k], _params(straight[0]["final"])[k]), k  # replicas agree
    # G's running statistics (which sampling uses) are rank 0's own: DDP broadcasts them
    # from rank 0 before each forward, and rank 0 writes the checkpoint.
    for k, v in _buffers(straight[0]["final"], "G").items():
        assert torch.equal(v, tr.G.state_dict()[k]), k


def test_ranks_read_disjoint_shards_whose_union_is_the_single_process_batch(ddp):
    from hgan.data.loader import build_loader
    path = os.path.join(ddp["data"], "pendulum", "train.h5")
    single = build_loader(path, batch_size=4, frames=6, seed=3, kind="torch", num_workers=0)
    batches = iter(single)
    per_rank = [[rec["real"] for rec in r["straight"]["records"]] for r in ddp["ranks"]]
    assert [len(b) for b in per_rank] == [ITERS, ITERS]
    seen = set()
    for it in range(ITERS):
        whole = next(batches)
        halves = [per_rank[r][it] for r in range(2)]
        assert [len(h) for h in halves] == [2, 2]    # the global batch 4 split over 2 ranks
        rows = [tuple(v.flatten().tolist()) for h in halves for v in h]
        assert len(set(rows[:2]) & set(rows[2:])) == 0, it   # no window on both ranks
        want = sorted(tuple(v.flatten().tolist()) for v in whole)
        assert sorted(rows) == want, it                       # together: the single batch
        seen.update(rows)
    single.close()
    # 24 trajectories, global batch 4: ITERS iterations see 4 * ITERS different windows
    assert len(seen) == 4 * ITERS


def test_noise_differs_across_ranks_and_a_resumed_run_draws_the_same(ddp):
    ranks = ddp["ranks"]
    for it in range(ITERS):
        a, b = (r["straight"]["records"][it]["noise"] for r in ranks)
        assert not torch.equal(a, b), it
    for r, rank in enumerate(ranks):
        straight = rank["straight"]["records"]
        pieces = rank["first_half"]["records"] + rank["resumed"]["records"]
        assert [p["iteration"] for p in pieces] == list(range(ITERS))
        for s, p in zip(straight, pieces):
            assert torch.equal(s["real"], p["real"]), (r, s["iteration"])
            assert torch.equal(s["noise"], p["noise"]), (r, s["iteration"])
        want, got = rank["straight"]["final"], rank["resumed"]["final"]
        for m in want:
            for k in want[m]:
                # Only rank 0's buffers are checkpointed; the discriminators' running
                # statistics on other ranks are their own and never read (docs/training.md)
                if r == 0 or m == "G" or not _is_stat(k):
                    assert torch.equal(want[m][k], got[m][k]), (r, m, k)
