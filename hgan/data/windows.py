"""The window plan shared by every training input path (torch DataLoader, DALI).

window_plan(n_traj, traj_len, frames, seed=s, epoch=e) is a pure function of its arguments:
    rng    = numpy.random.default_rng([s, e])
    order  = rng.permutation(n_traj)                       # trajectory order of the epoch
    starts = rng.integers(0, traj_len - frames + 1, n_traj)  # start of the i-th window
    plan   = stack([order, starts], 1)                     # one window per trajectory
Sharding: the first (n_traj // world_size) * world_size rows are dealt round-robin, rank r
taking rows r, r + world_size, ...; the remainder is dropped so every rank has the same
length, and the shards are disjoint. Batch b of every rank therefore holds consecutive rows
of the global plan.
"""
import numpy as np


def _int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"window_plan: {name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def window_plan(n_traj, traj_len, frames, *, seed, epoch, rank=0, world_size=1):
    """int64 [n_traj // world_size, 2] of (trajectory index, start frame) for this rank."""
    n_traj = _int("n_traj", n_traj, 1)
    traj_len = _int("traj_len", traj_len, 1)
    frames = _int("frames", frames, 1)
    seed, epoch = _int("seed", seed, 0), _int("epoch", epoch, 0)
    world_size = _int("world_size", world_size, 1)
    rank = _int("rank", rank, 0)
    if frames > traj_len:
        raise ValueError(f"window_plan: windows of {frames} frames do not fit in trajectories "
                         f"of {traj_len} frame{'' if traj_len == 1 else 's'}")
    if rank >= world_size:
        raise ValueError(f"window_plan: rank {rank} is outside world_size {world_size}")
    if n_traj < world_size:
        raise ValueError(f"window_plan: {n_traj} trajector{'y' if n_traj == 1 else 'ies'} "
                         f"cannot be shared by {world_size} ranks")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_traj)
    starts = rng.integers(0, traj_len - frames + 1, size=n_traj)
    plan = np.stack([order, starts], 1).astype(np.int64)
    per_rank = n_traj // world_size
    return np.ascontiguousarray(plan[:per_rank * world_size][rank::world_size])
