"""What every batch stream shares: the window schedule, the window reader, the base class.

`hgan.data.loader` (torch, GPU-resident) and `hgan.data.dali` both build on this module, so
neither imports the other at module level.
"""
import weakref

import numpy as np
import torch

import hgan.data as hdata
from hgan.data.h5io import DataFormatError, open_h5

SCALE = 1.0 / 127.5


class TooFewWindows(ValueError):
    """The batch is larger than an epoch's windows (a caller may add how to get more)."""


class WindowSchedule:
    """Which (trajectory, start) windows make up global batch g of this rank's shard."""

    def __init__(self, path, *, batch_size, frames, seed, rank, world_size):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        # Validation is open_h5's: the same DataFormatError, word for word, as every reader.
        with open_h5(path) as f:
            self.shape = tuple(f.frames.shape)
        n_traj, traj_len = self.shape[:2]
        if not 1 <= frames <= traj_len:
            raise ValueError(f"frames={frames} does not fit trajectories of {traj_len} frames "
                             f"in {path}")
        self.path, self.batch_size, self.frames = path, batch_size, frames
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._epoch, self._plan = None, None
        if n_traj < world_size:
            raise ValueError(
                f"{path} has {n_traj} trajector{'y' if n_traj == 1 else 'ies'}, fewer than the "
                f"{world_size} ranks that share them (each reads trajectories of its own); "
                f"generate at least {world_size} or run fewer ranks")
        n_windows = len(self.plan(0))
        self.batches_per_epoch = n_windows // batch_size
        if self.batches_per_epoch == 0:
            raise TooFewWindows(
                f"batch size {batch_size} exceeds the {n_windows} windows per epoch of "
                f"{path} (rank {rank} of {world_size}); generate more trajectories or lower it")

    def plan(self, epoch: int) -> np.ndarray:
        # One epoch's plan is cached: consecutive batches almost always share the epoch.
        if epoch != self._epoch:
            n_traj, traj_len = self.shape[:2]
            self._plan = np.asarray(hdata.window_plan(
                n_traj, traj_len, self.frames, seed=self.seed, epoch=epoch,
                rank=self.rank, world_size=self.world_size), dtype=np.int64)
            self._epoch = epoch
        return self._plan

    def window(self, sample: int) -> tuple:
        """(traj, start) of global sample number `sample` (= g * B + i)."""
        g, i = divmod(sample, self.batch_size)
        epoch, b = divmod(g, self.batches_per_epoch)
        traj, start = self.plan(epoch)[b * self.batch_size + i]
        return int(traj), int(start)


def open_checked(schedule: WindowSchedule):
    """A validated handle (`open_h5`) whose frames still have the schedule's shape."""
    f = open_h5(schedule.path)
    if tuple(f.frames.shape) != schedule.shape:
        shape = tuple(f.frames.shape)
        f.close()
        raise DataFormatError(f"{schedule.path}: frames are {shape} now but were "
                              f"{schedule.shape} when the loader was built; the file was "
                              "replaced while in use")
    return f


class WindowReader:
    """Reads the uint8 [T, H, W, 3] window of a global sample; one h5 handle per process.

    The handle is a validated `open_h5` file, opened lazily and dropped when pickled, so
    every DataLoader / DALI worker opens (and validates) its own: h5py handles must not
    cross a fork. Validation is a one-off per worker (attributes and two probe chunks);
    each read is then a plain h5py slice of one chunk."""

    def __init__(self, schedule: WindowSchedule):
        self.schedule = schedule
        self._file = None

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def __call__(self, sample: int) -> np.ndarray:
        if self._file is None:
            self._file = open_checked(self.schedule)
        traj, start = self.schedule.window(sample)
        # a damaged chunk open_h5's probe did not reach: DataFormatError naming the file (h5io)
        return self._file.frames[traj, start:start + self.schedule.frames]


class BatchStream:
    """Base of the batch streams: schedule, target device, position (next global batch).

    One iteration at a time: iterating again continues from `position` and ends the previous
    iterator (its next() raises StopIteration), and close() ends the current one. Ending it
    releases what it holds -- DataLoader workers, a DALI pipeline and its workers -- at once;
    a suspended generator would otherwise keep them until it is garbage-collected. Subclasses
    write their batches as the generator `_batches`."""

    def __init__(self, schedule, device, start_batch, channels_last=False):
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.channels_last = channels_last
        self.schedule = schedule
        self.batch_size = schedule.batch_size
        self.batches_per_epoch = schedule.batches_per_epoch
        self.device = torch.device(device)
        self.position = start_batch
        self._active = None

    def _batches(self):
        raise NotImplementedError

    def __iter__(self):
        self._end()
        batches = self._batches()
        # Held weakly: the generator's frame holds the stream, and a strong reference back
        # made the pair a cycle that only the cyclic collector frees, in an arbitrary order
        # that left a DataLoader's workers waiting out their 5 s join timeout each (an
        # iterator dropped unclosed: 10 s with 2 workers, against 0.04 s freed at once).
        self._active = weakref.ref(batches)
        return batches

    def _end(self):
        active, self._active = self._active, None
        active = active() if active is not None else None
        if active is not None:
            active.close()

    def close(self):
        self._end()
