"""window_plan and the ToyPhysicsWindows dataset."""
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hgan.data import ToyPhysicsWindows, window_plan


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
])
def test_plan_errors(kw, match):
    args = {**dict(n_traj=23, traj_len=40, frames=16, seed=0, epoch=0), **kw}
    with pytest.raises(ValueError, match=match):
        window_plan(args.pop("n_traj"), args.pop("traj_len"), args.pop("frames"), **args)


def test_dataset_items_follow_the_plan(tiny_pendulum_h5):
    ds = ToyPhysicsWindows(tiny_pendulum_h5, 16, seed=5)
    assert (ds.n_traj, ds.traj_len, ds.resolution, len(ds)) == (24, 40, 32, 24)
    ds.set_epoch(3)
    plan = window_plan(24, 40, 16, seed=5, epoch=3)
    with h5py.File(tiny_pendulum_h5) as f:
        for i in (0, 7, 23):
            t, s = plan[i]
            raw = torch.from_numpy(f["frames"][t, s:s + 16]).permute(0, 3, 1, 2)
            x = ds[i]
            assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
            torch.testing.assert_close(x, raw.float() / 127.5 - 1, rtol=0, atol=0)
    u8 = ToyPhysicsWindows(tiny_pendulum_h5, 16, seed=5, uint8=True)
    u8.set_epoch(3)
    t, s = plan[0]
    with h5py.File(tiny_pendulum_h5) as f:
        raw = torch.from_numpy(f["frames"][t, s:s + 16]).permute(0, 3, 1, 2)
    assert u8[0].dtype == torch.uint8 and torch.equal(u8[0], raw)
    assert -1 <= ds[0].min() and ds[0].max() <= 1
    shard = ToyPhysicsWindows(tiny_pendulum_h5, 16, seed=5, rank=1, world_size=5)
    assert len(shard) == 4


def test_workers_match_single_process_and_pickle(tiny_pendulum_h5):
    ds = ToyPhysicsWindows(tiny_pendulum_h5, 8, seed=2)
    _ = ds[0]  # open a handle in this process; pickling must not carry it
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    ref = torch.stack([ds[i] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=6, num_workers=2)
    torch.testing.assert_close(torch.cat(list(loader)), ref, rtol=0, atol=0)
