"""Data-parallel training with 2 CPU processes under gloo, launched by torchrun."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    from hgan.models import ModelConfig
    from hgan.train import RunConfig, train
    from hgan.train import dist as hdist

    # torch 2.11's DDP bumps the buffers' version counters when it broadcasts them before a
    # forward (later releases preserve them). Do as 2.11 does on every torch, so that a
    # broadcast between a forward and its backward fails here as it does there.
    import contextlib
    torch.autograd._unsafe_preserve_version_counter = lambda *a, **k: contextlib.nullcontext()
    data, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    grads, batches = [], []
    import hgan.train.loop as loop
    from torch.nn.parallel import DistributedDataParallel
    orig_init = loop.Trainer.__init__

    def init(self, *a, **kw):
        # A tensor hook on a parameter sees this rank's own gradient before DDP's reducer
        # replaces .grad with the cross-rank mean; the optimizer step then sees the mean.
        orig_init(self, *a, **kw)
        assert isinstance(self.DI_ddp, DistributedDataParallel)
        local = {}
        for m in (self.G, self.D_I, self.D_V):
            for p in m.parameters():
                p.register_hook(lambda g, p=p: local.__setitem__(p, g.detach().clone()))
        for opt in (self.opt_di, self.opt_dv, self.opt_g):
            def step(*a, _opt=opt, _step=opt.step, **kw):
                ps = [p for g in _opt.param_groups for p in g["params"] if p.grad is not None]
                grads.append(([local.pop(p) for p in ps], [p.grad.clone() for p in ps]))
                return _step(*a, **kw)
            opt.step = step

    loop.Trainer.__init__ = init
    cfg = RunConfig(system="pendulum", data=data, iters=2, batch_size=4, frames=6, device="cpu",
                    out=out, log_every=1, sample_every=1000, ckpt_every=1000, n_samples=2,
                    num_workers=0, progress=False, loader="torch", r1_gamma=10.0,
                    model=ModelConfig(ngf=8, ndf=8, clip_frames=4, rollout_frames=8,
                                      integrator="reference"))
    import hgan.data.loader as L
    build = L.build_loader
    def spy_loader(*a, **kw):
        s = build(*a, **kw)
        it = iter(s)
        class Wrapped:
            position = property(lambda self: s.position)
            def __iter__(self):
                for b in it:
                    batches.append(b.clone())
                    yield b
            def close(self):
                s.close()
        return Wrapped()
    import hgan.train.run as R
    R.build_loader = spy_loader
    polls = []
    any_rank = hdist.any_rank
    def counting_any_rank(*a, **kw):
        polls.append(1)
        return any_rank(*a, **kw)
    hdist.any_rank = counting_any_rank
    res = train(cfg)
    tr = res["trainer"]
    state = {n: p.detach().clone() for m in (tr.G, tr.D_I, tr.D_V) for n, p in m.named_parameters()}
    torch.save({"params": state, "grads": grads, "batches": batches, "stats": res["stats"],
                "local_batch": tr.local_batch, "polls": len(polls),
                "noise": tr.noise.get_state()},
               os.path.join(out, f"rank{rank}.pt"))
    # test_ranks_agree_on_the_first_non_finite_loss_and_stop_together's checks, in this
    # launch's group (a torchrun launch of its own cost ~6 s): its own file, its own errors
    import json, traceback
    try:
        flushed = FLUSH(rank)
    except Exception:
        flushed = {"error": traceback.format_exc()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(flushed, f)
    hdist.leave(clean=True)  # as train.py does: exiting with the group up can abort,
    hdist.exit_process(0)    # and so can the interpreter's finalization after it
""")


@pytest.fixture(scope="module")
def gloo_pair(tiny_pendulum_h5, tmp_path_factory):
    """One torchrun launch of WORKER (2 gloo ranks: 2 training iterations, then FLUSHER's
    checks): (the finished process, its output directory)."""
    tmp_path = tmp_path_factory.mktemp("gloo_pair")
    script = tmp_path / "worker.py"
    script.write_text(FLUSHER + WORKER)
    data = os.path.dirname(os.path.dirname(tiny_pendulum_h5))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    # --standalone: a local rendezvous on a free port, so parallel test runs cannot collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), data, str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240), out


def test_two_gloo_ranks_train_in_sync(gloo_pair):
    proc, out = gloo_pair
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert r0["local_batch"] == r1["local_batch"] == 2  # global batch 4 split over 2 ranks
    # each rank reads its own shard of the data
    assert not torch.equal(r0["batches"][0], r1["batches"][0])
    # and draws its own noise (the same draws on both would make the same fakes twice)
    assert not torch.equal(r0["noise"], r1["noise"])
    # the update is the mean of the per-rank gradients (R1's double backward included) ...
    assert len(r0["grads"]) == len(r1["grads"]) == 6  # (D_I, D_V, G) x 2 iterations
    for (b0, a0), (b1, a1) in zip(r0["grads"], r1["grads"]):
        assert any(not torch.equal(x, y) for x, y in zip(b0, b1))  # local gradients differ
        for x, y, u, v in zip(b0, b1, a0, a1):
            torch.testing.assert_close(u, (x + y) / 2, rtol=1e-6, atol=0)
            assert torch.equal(u, v)
    # ... so the replicas stay bit-identical
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert all(torch.isfinite(torch.tensor(v)) for v in r0["stats"].values())
    assert (out / "checkpoints" / "last.pt").exists()
    # the stop flag's all-reduce (a GPU sync on NCCL) ran on the last iteration only, not on
    # both: the ranks poll every STOP_POLL_EVERY iterations and at the end
    assert r0["polls"] == r1["polls"] == 1


def _parameters_without_gradient(trainer, steps=2):
    seen = set()
    for n, p in trainer.G.named_parameters():
        p.register_hook(lambda g, n=n: seen.add(n))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        trainer.step(torch.rand(2, 4, 3, 32, 32, generator=g) * 2 - 1)
    return [n for n, _ in trainer.G.named_parameters() if n not in seen]


@pytest.mark.parametrize("kw", [
    dict(model="hgan", integrator="reference"),
    dict(model="hnn_gan", integrator="reference", hamiltonian="separable"),
    dict(model="hgan", integrator="analytic"),
    dict(model="hgan", integrator="analytic", hamiltonian="separable", scheme="official"),
    dict(model="hnn_gan", integrator="analytic", activation="tanh", rollout_frames=0),
    dict(model="mocogan", gru_input="feedback"),
    dict(model="mocogan", gru_input="noise"),
], ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_g_looks_for_unused_parameters_exactly_when_it_has_some(kw):
    # G's DDP wrapper skips the per-step search for parameters without gradient unless the
    # model has some (a missing one would stop DDP at the next step; a needless search costs
    # host time every step): the oracle is which parameters a plain step leaves without one
    from hgan.models import ModelConfig
    from hgan.train import RunConfig
    from hgan.train import dist as hdist
    from hgan.train.loop import Trainer, ddp_finds_unused
    mcfg = ModelConfig(ngf=8, ndf=8, clip_frames=4, hidden=16, **kw)
    trainer = Trainer(RunConfig(batch_size=2, frames=4, device="cpu", model=mcfg),
                      hdist.DistInfo())
    missing = _parameters_without_gradient(trainer)
    assert bool(missing) == ddp_finds_unused(mcfg), missing
    if missing:  # the Hamiltonian's output biases, nothing else
        assert all(n.startswith("motion_module.hamiltonian.") and n.endswith(".2.bias")
                   for n in missing), missing


def _trainer_under_stubbed_ddp(monkeypatch, made, rank=0, **model):
    """A Trainer as rank `rank` of 2 builds it, DistributedDataParallel stubbed to record its
    arguments into `made` (no process group here)."""
    import hgan.train.loop as loop
    from hgan.models import ModelConfig
    from hgan.train import RunConfig
    from hgan.train import dist as hdist
    monkeypatch.setattr(loop, "DistributedDataParallel",
                        lambda module, **kw: made.append((module, kw)) or module)
    mcfg = ModelConfig(ngf=8, ndf=8, clip_frames=4, hidden=16, **model)
    return loop.Trainer(RunConfig(batch_size=4, frames=4, device="cpu", model=mcfg),
                        hdist.DistInfo(rank=rank, world_size=2))


@pytest.mark.parametrize("integrator, searches", [("reference", True), ("analytic", False)])
def test_the_ddp_wrappers_take_that_rule_and_no_forward_buffer_sync(monkeypatch, integrator,
                                                                    searches):
    # G's wrapper searches for unused parameters by ddp_finds_unused, and the
    # discriminators' never broadcast buffers at a forward.
    from hgan.train import dist as hdist
    made = []
    trainer = _trainer_under_stubbed_ddp(monkeypatch, made, integrator=integrator)
    (g, g_kw), (di, di_kw), (dv, dv_kw) = made
    assert g is trainer.G and di is trainer.D_I and dv is trainer.D_V
    assert g_kw == {"device_ids": None, "find_unused_parameters": searches}
    assert di_kw == dv_kw == {"device_ids": None, **hdist.NO_FORWARD_BUFFER_SYNC}


def test_the_gathered_noise_states_go_into_the_checkpoint_of_their_iteration_only(monkeypatch):
    # Rank 0 keeps every rank's noise state, in rank order, for the checkpoint of the
    # iteration they were gathered at; a checkpoint of a later iteration (not gathered again)
    # must not carry them, or a resume would replay stale noise.
    trainer = _trainer_under_stubbed_ddp(monkeypatch, [])
    own = trainer.noise.get_state()
    other = torch.Generator().manual_seed(99).get_state()

    def all_gather(parts, tensor):
        assert torch.equal(tensor, own)
        parts[0].copy_(tensor)
        parts[1].copy_(other)
    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    trainer.iteration = 3
    trainer.gather_noise()
    assert torch.equal(trainer.state_dict()["rank_noise_rng"], torch.stack([own, other]))
    trainer.iteration = 4
    assert "rank_noise_rng" not in trainer.state_dict()


@pytest.mark.parametrize("saved", ["3 ranks", "CUDA generators"])
def test_every_ranks_noise_states_that_do_not_fit_this_run_are_reseeded(monkeypatch, saved):
    # Every rank's state, but from 3 ranks (resumed on 2) or from CUDA generators (5056-byte
    # CPU states here): no rank can take its own, so each reseeds from (seed, rank,
    # iteration), as from a checkpoint without them.
    states = (torch.stack([torch.Generator().manual_seed(i).get_state() for i in range(3)])
              if saved == "3 ranks" else torch.zeros(2, 16, dtype=torch.uint8))
    trainer = _trainer_under_stubbed_ddp(monkeypatch, [], rank=1)
    trainer.load_state_dict({**trainer.state_dict(), "iteration": 5,
                             "world_size": len(states), "rank_noise_rng": states})
    seed = trainer.cfg.seed
    want = torch.Generator().manual_seed(seed * 1_000_003 + 1 + 7919 * 5).get_state()
    assert torch.equal(trainer.noise.get_state(), want)


LEAVER = textwrap.dedent("""
    import json, os, sys, time, warnings
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    # torch 2.13 warns at every DDP construction under DDP's old buffer keyword
    warnings.simplefilter("error", FutureWarning)
    import hgan.train.loop as loop
    from hgan.train.cli import main
    from hgan.train import dist as hdist
    # --amp on a CPU without native bf16, whatever this one has: one line says fp32
    loop.cpu_has_fast_bf16 = lambda: False
    rank = int(os.environ["RANK"])
    if rank == 0:  # the checkpoint writer is slow: rank 1 must still wait for it
        save = loop.Trainer.save
        def slow_save(self, *a, **kw):
            time.sleep(1.0)
            return save(self, *a, **kw)
        loop.Trainer.save = slow_save
    rc = main(sys.argv[3:])
    with open(os.path.join(sys.argv[2], f"left{rank}.json"), "w") as f:
        json.dump({"rc": rc, "in_group": dist.is_initialized(), "at": time.time(),
                   "exits_at_once": hdist.left_a_group}, f)
    hdist.exit_process(0)
""")


def test_train_py_ranks_leave_together_after_the_checkpoint(tiny_pendulum_h5, tmp_path):
    # A rank that exits with the process group still up can abort in C++ ("terminate called
    # without an active exception"), and torchrun then kills rank 0 before it has saved.
    script = tmp_path / "leaver.py"
    script.write_text(LEAVER)
    data = os.path.dirname(os.path.dirname(tiny_pendulum_h5))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    args = ["--system", "pendulum", "--batch-size", "4", "--frames", "6", "--clip-frames", "4",
            "--ngf", "4", "--ndf", "4", "--hidden", "8", "--device", "cpu", "--loader", "torch",
            "--num-workers", "0", "--iters", "2", "--n-samples", "2", "--no-progress",
            "--amp", "--data", data, "--out", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), data, str(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 4 (2 per rank)," in proc.stdout   # the batch is global: said at the start
    # the run's lines come from rank 0 alone: --amp's fall-back to fp32 is said once, not
    # once per rank
    assert proc.stderr.count("[hgan] --amp: this CPU has no native bf16") == 1, proc.stderr
    import json
    left = [json.loads((tmp_path / f"left{r}.json").read_text()) for r in (0, 1)]
    assert [x["rc"] for x in left] == [0, 0]
    assert not any(x["in_group"] for x in left)
    assert all(x["exits_at_once"] for x in left)  # train.py's entry then skips finalization
    # rank 1 left only once rank 0 had written its checkpoint and summary
    assert left[1]["at"] >= os.path.getmtime(out / "summary.json")


DATA_WAITER = textwrap.dedent("""
    import json, os, sys, time
    from datetime import timedelta
    import torch.distributed as dist
    from hgan.models import ModelConfig
    from hgan.train import RunConfig
    from hgan.train import dist as hdist
    import hgan.train.loop as loop

    data, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    # Both ranks reach the group's start together: a peer later than 2 s fails its set-up,
    # and the imports above take seconds per rank on a loaded machine.
    open(os.path.join(out, f"ready{rank}"), "w").close()
    deadline = time.monotonic() + 120
    while not all(os.path.exists(os.path.join(out, f"ready{r}")) for r in (0, 1)):
        assert time.monotonic() < deadline, "the other rank never started"
        time.sleep(0.01)
    # the default group's timeout made short, so that the test outlasts it
    dist.init_process_group("gloo", timeout=timedelta(seconds=2))
    generate = loop._generate

    def slow(cfg):
        time.sleep(5)
        generate(cfg)
    loop._generate = slow
    cfg = RunConfig(system="pendulum", data=data, batch_size=2, frames=4, device="cpu",
                    out=out, gen_train=4, gen_test=2, gen_frames=6, progress=False,
                    model=ModelConfig(ngf=4, ndf=4, clip_frames=2, resolution=32))
    t0 = time.monotonic()
    try:
        loop.ensure_dataset(cfg, hdist.DistInfo(rank, 2, rank))
        res = {"ok": True, "waited": time.monotonic() - t0}
    except Exception as err:
        res = {"ok": False, "error": repr(err)[:300]}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    hdist.leave(clean=res["ok"])
    hdist.exit_process(0)
""")


def test_ranks_wait_out_a_generation_longer_than_the_groups_timeout(tmp_path):
    # Rank 0 generates a missing dataset while the others wait: a paper-size set takes longer
    # than the default group's timeout (30 min under gloo, 10 under NCCL), which ended the
    # wait with an error. Here the group's timeout is 2 s and the generation 5 s.
    script = tmp_path / "waiter.py"
    script.write_text(DATA_WAITER)
    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(data), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    res = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["ok"] for r in res), res
    assert res[1]["waited"] >= 5           # rank 1 went on only after the generation
    assert (data / "pendulum" / "train.h5").exists()


def test_a_rank_that_left_its_group_exits_without_finalizing(monkeypatch, capsys):
    # A gloo worker thread may still be freeing the last collective's tensors when the
    # interpreter finalizes; Python 3.11 then kills that thread under a C++ frame and the rank
    # aborts (seen in a core dump). So train.py's entry ends such a rank with os._exit, after
    # flushing what it printed; any other process exits as usual with main's code.
    import hgan.train.cli as cli
    from hgan.train import dist as hdist
    exits = []
    monkeypatch.setattr(cli, "main", lambda argv=None: 0)
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(hdist, "left_a_group", False)
    assert cli.entry([]) == 0 and exits == []
    monkeypatch.setattr(cli, "main", lambda argv=None: print("last line", end="") or 1)
    monkeypatch.setattr(hdist, "left_a_group", True)
    cli.entry([])
    assert exits == [1]
    assert capsys.readouterr().out == "last line"
    # train.py and the hgan-train script both go through it
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "train.py")) as f:
        assert "sys.exit(entry())" in f.read()
    with open(os.path.join(root, "pyproject.toml")) as f:
        assert 'hgan-train = "hgan.train.cli:entry"' in f.read()


# Run in WORKER's ranks once they have trained (test_two_gloo_ranks_train_in_sync's launch).
FLUSHER = textwrap.dedent("""
    def FLUSH(rank):
        import torch
        from hgan.train import dist as hdist
        from hgan.train.loop import NonFiniteLoss, Trainer

        info = hdist.DistInfo(rank, 2, rank)
        out = {"first": [hdist.first_flagged(None, info, "cpu"),
                         hdist.first_flagged([7, 5][rank], info, "cpu"),
                         hdist.first_flagged(4, info, "cpu"),
                         hdist.first_flagged([None, 9][rank], info, "cpu")]}

        class Losses:  # what Trainer.flush_checks reads of a trainer
            static, device = None, torch.device("cpu")
            def __init__(self, pending):
                self.info, self._pending = info, pending

        nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
        # rank 1's losses are non-finite at iteration 3; rank 0's are all finite
        pending = [(2, "G loss", one), (3, "G loss", one)] if rank == 0 else \\
            [(2, "G loss", one), (3, "G loss", nan)]
        try:
            Trainer.flush_checks(Losses(pending))
            out["raised"] = None
        except NonFiniteLoss as e:
            out["raised"] = [str(e), e.reporter]
        return out
""")


def test_ranks_agree_on_the_first_non_finite_loss_and_stop_together(gloo_pair):
    # Each rank checked only its own losses: a rank whose losses were finite went on into
    # the next collective (or saved weights the other rank's NaN gradient had reached).
    proc, out = gloo_pair
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert "error" not in got[0] and "error" not in got[1], got
    # (iteration, rank) of the smallest flagged iteration, the lowest rank on a tie
    assert got[0]["first"] == got[1]["first"] == [None, [5, 1], [4, 0], [9, 1]]
    assert got[0]["raised"] == ["non-finite loss on rank 1 at iteration 3", False]
    assert got[1]["raised"] == ["non-finite G loss (nan) at iteration 3", True]


def test_a_torchrun_rank_joins_with_nccl_on_its_local_gpu_or_with_gloo(monkeypatch):
    # Rank 3 of 4, the second process on its node: NCCL collectives run on the current
    # device, which must be the node-local GPU 1 (not GPU 3, not GPU 0); a CPU run uses gloo.
    import torch.distributed as dist

    from hgan.train import dist as hdist
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    devices, backends = [], []
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    assert hdist.init_distributed("cuda") == hdist.DistInfo(rank=3, world_size=4, local_rank=1)
    assert (devices, backends) == ([1], ["nccl"])
    assert hdist.init_distributed("cpu") == hdist.DistInfo(rank=3, world_size=4, local_rank=1)
    assert (devices, backends) == ([1], ["nccl", "gloo"])


def test_the_wait_for_rank_0s_dataset_has_a_24_hour_timeout_of_its_own(monkeypatch):
    # docs/training.md: a gloo group with a 24-hour timeout (the default group's 30 minutes
    # would end the wait for a paper-size set); the group is left after the barrier.
    from datetime import timedelta

    import torch.distributed as dist

    from hgan.train import dist as hdist
    made, calls = [], []
    monkeypatch.setattr(dist, "new_group", lambda **kw: made.append(kw) or "group")
    monkeypatch.setattr(dist, "barrier", lambda group=None: calls.append(("barrier", group)))
    monkeypatch.setattr(dist, "destroy_process_group",
                        lambda group=None: calls.append(("destroy", group)))
    hdist.LongWait().wait()
    assert made == [{"backend": "gloo", "timeout": timedelta(hours=24)}]
    assert calls == [("barrier", "group"), ("destroy", "group")]


@pytest.mark.parametrize("other", [False, True])
def test_a_stop_flag_is_set_on_every_rank_only_when_some_rank_set_it(monkeypatch, other):
    # A fake all-reduce (a sum, as the real one does) adds the other rank's flag: the
    # result is set when either rank's flag is, on this rank too.
    import torch.distributed as dist

    from hgan.train import dist as hdist
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: t.add_(float(other)))
    info = hdist.DistInfo(rank=1, world_size=2, local_rank=1)
    assert hdist.any_rank(False, info, "cpu") is other
    assert hdist.any_rank(True, info, "cpu") is True


def test_from_main_gives_every_rank_rank_0s_value(monkeypatch):
    # A fake broadcast with each rank's value at hand: what it hands out is the source's.
    import torch.distributed as dist

    from hgan.train import dist as hdist
    values = {0: "runs/a", 1: "runs/a-2"}

    def broadcast(box, src):
        box[0] = values[src]
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    assert hdist.from_main("runs/a-2", hdist.DistInfo(rank=1, world_size=2, local_rank=1)) == \
        "runs/a"


def test_only_global_rank_0_is_the_main_rank_on_every_node():
    # docs/training.md: rank 0 writes the run directory; the first rank of the second node
    # (local rank 0, global rank 8) does not.
    from hgan.train.dist import DistInfo
    assert DistInfo(rank=0, world_size=16, local_rank=0).is_main
    assert not DistInfo(rank=8, world_size=16, local_rank=0).is_main
    assert DistInfo(rank=8, world_size=16, local_rank=0).enabled and not DistInfo().enabled
