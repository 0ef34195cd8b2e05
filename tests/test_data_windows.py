"""window_plan and the window reader every batch stream uses."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from hgan.data import window_plan
from hgan.data.h5io import open_h5
from hgan.data.loader import build_loader
from hgan.data.stream import WindowReader, WindowSchedule


def test_plan_is_a_seeded_permutation_with_valid_starts():
    p = window_plan(50, 40, 16, seed=3, epoch=0)
    assert p.dtype == np.int64 and p.shape == (50, 2)
    assert sorted(p[:, 0]) == list(range(50))
    assert p[:, 1].min() >= 0 and p[:, 1].max() <= 24 and len(set(p[:, 1])) > 5
    np.testing.assert_array_equal(p, window_plan(50, 40, 16, seed=3, epoch=0))
    assert not np.array_equal(p, window_plan(50, 40, 16, seed=3, epoch=1))
    assert not np.array_equal(p, window_plan(50, 40, 16, seed=4, epoch=0))
    rng = np.random.default_rng([3, 0])  # the documented recipe
    order = rng.permutation(50)
    np.testing.assert_array_equal(p, np.stack([order, rng.integers(0, 25, 50)], 1))
    assert (window_plan(5, 16, 16, seed=0, epoch=0)[:, 1] == 0).all()


def test_shards_disjoint_equal_and_drop_remainder():
    full = window_plan(23, 40, 16, seed=1, epoch=2)
    shards = [window_plan(23, 40, 16, seed=1, epoch=2, rank=r, world_size=4) for r in range(4)]
    assert {len(s) for s in shards} == {5}
    rows = np.concatenate(shards)
    assert len(set(rows[:, 0])) == 20
    np.testing.assert_array_equal(np.stack(shards, 1).reshape(-1, 2), full[:20])


@pytest.mark.parametrize("kw,match", [
    (dict(frames=41), "do not fit"), (dict(rank=4, world_size=4), "outside world_size"),
    (dict(seed=-1), "seed must be"), (dict(n_traj=2, world_size=3), "cannot be shared"),
    (dict(frames=0), "frames must be an integer >= 1"),
    (dict(epoch=-1), "epoch must be an integer >= 0"),
    (dict(traj_len=40.0), "traj_len must be an integer >= 1"),
    (dict(n_traj=True), "n_traj must be an integer >= 1"),
])
def test_plan_errors(kw, match):
    args = {**dict(n_traj=23, traj_len=40, frames=16, seed=0, epoch=0), **kw}
    with pytest.raises(ValueError, match=match):
        window_plan(args.pop("n_traj"), args.pop("traj_len"), args.pop("frames"), **args)


def test_window_reader_items_follow_the_plan(tiny_pendulum_h5):
    # batch 1: global sample g of epoch e is plan(e)[g - e * batches_per_epoch]
    sched = WindowSchedule(tiny_pendulum_h5, batch_size=1, frames=16, seed=5, rank=0,
                           world_size=1)
    assert sched.shape[:3] == (24, 40, 32) and sched.batches_per_epoch == 24
    reader = WindowReader(sched)
    plan = window_plan(24, 40, 16, seed=5, epoch=3)
    with h5py.File(tiny_pendulum_h5) as f:
        for i in (0, 7, 23):
            t, s = plan[i]
            x = reader(3 * 24 + i)
            assert x.shape == (16, 32, 32, 3) and x.dtype == np.uint8
            np.testing.assert_array_equal(x, f["frames"][t, s:s + 16])
    shard = WindowSchedule(tiny_pendulum_h5, batch_size=1, frames=16, seed=5, rank=1,
                           world_size=5)
    assert shard.batches_per_epoch == 4


def test_a_reader_validates_one_handle_and_reads_every_window_through_it(tiny_pendulum_h5,
                                                                         monkeypatch):
    # one validated handle per process (open_h5 probes chunks: a one-off, not a cost per read)
    import hgan.data.stream as stream
    opened = []
    monkeypatch.setattr(stream, "open_checked", lambda s: opened.append(s) or open_h5(s.path))
    schedule = WindowSchedule(tiny_pendulum_h5, batch_size=6, frames=8, seed=2, rank=0,
                              world_size=1)
    reader = WindowReader(schedule)
    with h5py.File(tiny_pendulum_h5, "r") as f:
        for sample in range(5):
            t, s = schedule.window(sample)
            np.testing.assert_array_equal(reader(sample), f["frames"][t, s:s + 8])
    assert opened == [schedule]


def test_more_ranks_than_trajectories_is_said_in_the_users_terms(tiny_pendulum_h5):
    # was "window_plan: 24 trajectories cannot be shared by 25 ranks" (an internal name)
    with pytest.raises(ValueError, match=r"has 24 trajectories, fewer than the 25 ranks that "
                                         r"share them .*generate at least 25 or run fewer ranks"):
        WindowSchedule(tiny_pendulum_h5, batch_size=1, frames=16, seed=5, rank=0,
                       world_size=25)


def test_workers_match_single_process_and_pickle(tiny_pendulum_h5):
    reader = WindowReader(WindowSchedule(tiny_pendulum_h5, batch_size=6, frames=8, seed=2,
                                         rank=0, world_size=1))
    _ = reader(0)  # open a handle in this process; pickling must not carry it
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._file is None
    np.testing.assert_array_equal(clone(5), reader(5))
    ref = [b for _, b in zip(range(6), build_loader(tiny_pendulum_h5, batch_size=6, frames=8,
                                                   seed=2, kind="torch", num_workers=0))]
    got = [b for _, b in zip(range(6), build_loader(tiny_pendulum_h5, batch_size=6, frames=8,
                                                   seed=2, kind="torch", num_workers=2))]
    for x, y in zip(ref, got):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_as_many_trajectories_as_ranks_gives_each_rank_one():
    # n_traj == world_size is the smallest shareable set, not an error: one row per rank.
    shards = [window_plan(4, 10, 4, seed=2, epoch=1, rank=r, world_size=4) for r in range(4)]
    assert [s.shape for s in shards] == [(1, 2)] * 4
    assert sorted(int(s[0, 0]) for s in shards) == [0, 1, 2, 3]
    assert all(0 <= s[0, 1] <= 6 for s in shards)


def test_a_schedule_with_as_many_ranks_as_trajectories_gives_each_rank_its_own_window(
        tiny_pendulum_h5):
    # 24 trajectories over 24 ranks is the smallest shareable set, not an error: rank r's one
    # batch of one is row r of the epoch's plan, computed here from the documented recipe.
    rng = np.random.default_rng([5, 0])
    order, starts = rng.permutation(24), rng.integers(0, 40 - 16 + 1, 24)
    for rank in (0, 13, 23):
        sched = WindowSchedule(tiny_pendulum_h5, batch_size=1, frames=16, seed=5, rank=rank,
                               world_size=24)
        assert sched.batches_per_epoch == 1
        assert sched.window(0) == (order[rank], starts[rank])
