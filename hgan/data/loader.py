"""Batch streams for training: torch DataLoader, DALI, and a GPU-resident array.

All kinds draw windows from `hgan.data.window_plan` through one `WindowSchedule`, so for a
seed they yield the same batches in the same order: global batch g (counted from the first
batch of epoch 0) is rows [b*B, (b+1)*B) of the plan of epoch g // batches_per_epoch, with
b = g % batches_per_epoch. `start_batch` resumes a stream exactly where a checkpoint left it
(`stream.position` is the number of the next batch).

Every kind moves uint8 frames and converts on the target device with the same arithmetic,
`(x - 127.5) * (1 / 127.5)` in float32 (exact subtraction, one rounded multiply), so the
kinds agree bit for bit, not only within a tolerance.

Every kind opens the file through the project's validating reader, `hgan.data.open_h5`, so a
missing, corrupt, incomplete or wrongly shaped file fails `build_loader` with the same
`DataFormatError` (a ValueError) that `open_h5` raises, before any worker starts. Each
worker process (DataLoader or DALI external_source) opens its own validated handle.
"""
import itertools
import os
import traceback

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hgan.data.h5io import DataFormatError, error_line
from hgan.data.stream import SCALE, BatchStream, WindowReader, WindowSchedule
from hgan.data.stream import open_checked as _open_checked
from hgan.data.workers import WorkerInit
from hgan.device import check_device

KINDS = ("auto", "torch", "dali", "gpu-resident")
# Under "auto" on CUDA the frames are kept on the GPU when they take at most this share of
# its memory (the rest is for the networks, the step's activations and the CUDA graphs).
RESIDENT_MEMORY_FRACTION = 0.25
# Runs that share one GPU (hgan.train.pack's threads, the grid's parallel processes) share
# that quarter: each weighs its frames times this many (hgan.train.pack and
# hgan.experiments set it; default 1). 16 packed runs of the paper's 9.8 GB sets would
# otherwise each take a quarter of an H200's 141 GB.
GPU_RUNS_ENV = "HGAN_GPU_RUNS"


def runs_sharing_gpu() -> int:
    """How many training runs share this process's GPU (environment HGAN_GPU_RUNS)."""
    text = os.environ.get(GPU_RUNS_ENV, "1")
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{GPU_RUNS_ENV}={text!r}: expected a positive integer") from None
    if n < 1:
        raise ValueError(f"{GPU_RUNS_ENV}={text!r}: expected a positive integer")
    return n
# The gpu-resident stream uploads the window plans of this many epochs at once (at most
# PLAN_WINDOWS_PER_UPLOAD windows): the host computes plans once per block, never per step.
PLAN_EPOCHS_PER_UPLOAD = 64
PLAN_WINDOWS_PER_UPLOAD = 1 << 20
# How the torch loader starts its workers: None is multiprocessing's default (fork on Linux).
# hgan.train.pack sets "spawn": a fork from a process whose other threads may hold locks
# (HDF5's, an output lock) at that moment can leave the worker waiting on them forever.
# (Not "forkserver": a worker's parent would be the server, and hgan.data.workers ends a
# worker whose parent is not the process that made it.)
WORKER_START_METHOD = None


def to_unit_range(u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, T, 3, H, W] in [-1, 1].

    Contiguous by default; with channels_last the memory stays B, T, H, W, C (a permuted
    view), which makes every frame channels_last and D_V's [N, C, T, H, W] view of a clip
    channels_last_3d without a copy."""
    x = u8.permute(0, 1, 4, 2, 3)
    # Two kernels, not three or four (convert, subtract, multiply, a contiguous copy): the
    # subtraction converts, and reorders where asked, as it writes. Same arithmetic.
    out = torch.empty_like(x, dtype=torch.float32, memory_format=(
        torch.preserve_format if channels_last else torch.contiguous_format))
    return torch.sub(x, 127.5, out=out).mul_(SCALE)


class _SampleDataset(Dataset):
    def __init__(self, reader):
        self.reader = reader

    def __getitem__(self, sample):
        return torch.from_numpy(self.reader(sample))


class TorchBatchStream(BatchStream):
    """torch DataLoader: workers read windows, pinned uint8 batches, conversion on device.

    One DataLoader over an endless sample counter keeps the workers alive across epochs."""

    kind = "torch"

    def __init__(self, schedule, *, device="cpu", num_workers=2, start_batch=0,
                 channels_last=False):
        super().__init__(schedule, device, start_batch, channels_last)
        self.num_workers = num_workers

    def _batches(self):
        sampler = itertools.count(self.position * self.batch_size)
        loader = DataLoader(_SampleDataset(WindowReader(self.schedule)), sampler=sampler,
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.num_workers > 0 else None,
                            persistent_workers=False,
                            # workers ignore stop signals: see hgan.data.workers
                            worker_init_fn=WorkerInit() if self.num_workers > 0 else None,
                            multiprocessing_context=(WORKER_START_METHOD
                                                     if self.num_workers > 0 else None),
                            # Its own generator for the workers' base seed (they draw nothing
                            # random): the global RNG may be another packed run's weight
                            # initialisation under way (hgan.train.pack).
                            generator=torch.Generator().manual_seed(0))
        batches = iter(loader)
        try:
            while True:
                failed = None
                try:
                    u8 = next(batches)
                except BaseException as e:
                    # torch's frames in its traceback hold the iterator, in a cycle through
                    # the exception (reraise's frame holds it): cleared, the `del` below frees
                    # the iterator, and its workers end now rather than at the collector's
                    # next run, 5 s of join timeout each (the lines stay in the traceback).
                    traceback.clear_frames(e.__traceback__)
                    if not isinstance(e, DataFormatError):
                        raise
                    failed = error_line(e)   # a worker's: its message without its traceback
                if failed is not None:  # raised outside the handler: no context exception
                    raise DataFormatError(failed)   # whose frames hold the iterator
                self.position += 1
                yield to_unit_range(u8.to(self.device, non_blocking=True), self.channels_last)
        finally:
            # Released now: an error's traceback keeps this frame, and with it the iterator,
            # until the cyclic collector runs, when each worker waits out its 5 s join timeout
            # (at an arbitrary later point: another packed run's step, the next evaluation).
            del batches, loader


class ResidentBatchStream(BatchStream):
    """The whole uint8 frame array lives on the device; a batch is one gather.

    Fits small sets (50,000 x 64 frames x 32^2 x 3 bytes = 9.8 GB) and removes host reads
    and transfers from the step. The windows, their random order included, come from the
    same `window_plan` as every other stream (so all kinds yield the same batches): the host
    computes the plans of a block of epochs at once and uploads them (pinned,
    asynchronously); a step only slices the device-side plan and gathers, with no host work
    and no transfer."""

    kind = "gpu-resident"

    def __init__(self, schedule, *, device="cpu", start_batch=0, channels_last=False):
        super().__init__(schedule, device, start_batch, channels_last)
        with _open_checked(schedule) as f:
            frames = f.frames[...]  # a damaged chunk: DataFormatError naming the file (h5io)
        self.frames = torch.from_numpy(frames).to(self.device)
        # One row per frame, so that a batch is one index_select of a [B * T] index: advanced
        # indexing by (trajectory, frame) pairs costs several launches and more host time,
        # which a captured step (device-bound, ~4 ms) pays on every iteration.
        self._traj_frames = self.frames.shape[1]
        self._rows = self.frames.view(-1, *self.frames.shape[2:])
        self._offsets = torch.arange(schedule.frames, device=self.device)
        n = len(schedule.plan(0))
        self.epochs_per_upload = max(1, min(PLAN_EPOCHS_PER_UPLOAD, PLAN_WINDOWS_PER_UPLOAD // n))
        self._block = None          # (first epoch, device plans [E, n, 2])
        self._epoch_rows = None     # (epoch, device frame rows [n, T]), made once per epoch

    def _plan(self, epoch):
        first = epoch - epoch % self.epochs_per_upload
        if self._block is None or self._block[0] != first:
            plans = np.stack([self.schedule.plan(e)
                              for e in range(first, first + self.epochs_per_upload)])
            host = torch.from_numpy(plans)
            if self.device.type == "cuda":
                host = host.pin_memory()
            self._block = (first, host.to(self.device, non_blocking=True))
        return self._block[1][epoch - first]

    def _batches(self):
        if self.frames is None:
            raise RuntimeError("this gpu-resident stream is closed (its frames were freed): "
                               "build a new one with build_loader")
        while True:
            epoch, b = divmod(self.position, self.batches_per_epoch)
            if self._epoch_rows is None or self._epoch_rows[0] != epoch:
                plan = self._plan(epoch)                                 # [n, 2]: (traj, start)
                first = plan[:, :1] * self._traj_frames + plan[:, 1:]
                self._epoch_rows = (epoch, (first + self._offsets).reshape(-1))
            per_batch = self.batch_size * self.schedule.frames
            rows = self._epoch_rows[1][b * per_batch:(b + 1) * per_batch]
            u8 = self._rows.index_select(0, rows).view(
                self.batch_size, self.schedule.frames, *self._rows.shape[1:])  # [B, T, H, W, 3]
            self.position += 1
            yield to_unit_range(u8, self.channels_last)

    def close(self):
        super().close()
        self.frames = self._rows = None
        self._block = self._epoch_rows = None


def auto_kind(device, data_bytes: int, dali_available: bool, device_memory=None) -> str:
    """The stream `kind="auto"` builds: on CUDA, gpu-resident when the uint8 frames take at
    most RESIDENT_MEMORY_FRACTION of the GPU's memory (divided among the runs_sharing_gpu()),
    else DALI when installed, else torch; torch elsewhere. device_memory: the GPU's total
    bytes (read from the device if None)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return "torch"
    if device_memory is None:
        device_memory = torch.cuda.get_device_properties(dev).total_memory
    if data_bytes * runs_sharing_gpu() <= RESIDENT_MEMORY_FRACTION * device_memory:
        return "gpu-resident"
    return "dali" if dali_available else "torch"


def build_loader(path, *, batch_size, frames=16, seed=0, rank=0, world_size=1, device="cpu",
                 kind="auto", num_workers=2, start_batch=0, channels_last=False):
    """An endless stream of float32 [B, T, 3, H, W] batches in [-1, 1] on `device`.

    kind: "torch", "dali" (works on CPU too), "gpu-resident", or "auto" (see `auto_kind`:
    on CUDA gpu-resident when the frames fit RESIDENT_MEMORY_FRACTION of the GPU, else DALI
    when importable, else torch; torch on CPU). The stream has `.kind`, `.position`
    (next global batch) and `.batches_per_epoch`. channels_last: batches keep B, T, H, W, C
    memory (same values; see `to_unit_range`), for --channels-last training."""
    if kind not in KINDS:
        raise ValueError(f"unknown loader kind {kind!r}; choose one of {', '.join(KINDS)}")
    if torch.device(device).type == "cuda":
        check_device(str(device))  # torch's bare AssertionError otherwise, on first use
    schedule = WindowSchedule(path, batch_size=batch_size, frames=frames, seed=seed, rank=rank,
                              world_size=world_size)
    if kind == "auto":
        from hgan.data import dali
        kind = auto_kind(device, int(np.prod(schedule.shape)), dali.available())
    if kind == "dali":
        from hgan.data import dali
        return dali.DaliBatchStream(schedule, device=device, num_workers=num_workers,
                                    start_batch=start_batch, channels_last=channels_last)
    if kind == "gpu-resident":
        return ResidentBatchStream(schedule, device=device, start_batch=start_batch,
                                   channels_last=channels_last)
    return TorchBatchStream(schedule, device=device, num_workers=num_workers,
                            start_batch=start_batch, channels_last=channels_last)


__all__ = ["build_loader", "to_unit_range", "WindowSchedule", "WindowReader", "KINDS",
           "TorchBatchStream", "ResidentBatchStream", "auto_kind"]
