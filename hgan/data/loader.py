"""Batch streams for training: a torch DataLoader path and (optionally) a DALI path.

Both draw windows from `hgan.data.window_plan`, so for a seed they yield the same batches
in the same order; `start_batch` resumes a stream exactly where a checkpoint left it.
"""
import torch
from torch.utils.data import DataLoader

from hgan.data import ToyPhysicsWindows


class TorchBatchStream:
    """Infinite iterator of float32 [B, T, 3, H, W] batches in [-1, 1] on `device`."""

    kind = "torch"

    def __init__(self, path, *, batch_size, frames=16, seed=0, rank=0, world_size=1,
                 device="cpu", num_workers=2, start_batch=0):
        self.dataset = ToyPhysicsWindows(path, frames, seed=seed, rank=rank, world_size=world_size)
        self.batch_size = batch_size
        self.batches_per_epoch = len(self.dataset) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"batch size {batch_size} exceeds the {len(self.dataset)} windows per epoch of "
                f"{path} (rank {rank} of {world_size}); generate more trajectories or lower it")
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.position = start_batch

    def _epoch_iter(self, epoch, skip):
        self.dataset.set_epoch(epoch)
        sub = torch.utils.data.Subset(self.dataset, range(skip * self.batch_size,
                                                          self.batches_per_epoch * self.batch_size))
        loader = DataLoader(sub, batch_size=self.batch_size, shuffle=False, drop_last=True,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.num_workers > 0 else None)
        return iter(loader)

    def __iter__(self):
        while True:
            epoch, skip = divmod(self.position, self.batches_per_epoch)
            for batch in self._epoch_iter(epoch, skip):
                self.position += 1
                yield batch.to(self.device, non_blocking=True)

    def close(self):
        pass


def build_loader(path, *, batch_size, frames=16, seed=0, rank=0, world_size=1, device="cpu",
                 kind="auto", num_workers=2, start_batch=0):
    if kind not in ("auto", "torch", "dali"):
        raise ValueError(f"unknown loader kind {kind!r}; choose auto, torch or dali")
    return TorchBatchStream(path, batch_size=batch_size, frames=frames, seed=seed, rank=rank,
                            world_size=world_size, device=device, num_workers=num_workers,
                            start_batch=start_batch)
