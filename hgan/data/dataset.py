"""Torch Dataset of random windows of consecutive frames from a Toy Physics HDF5 file."""
import numpy as np
import torch
from torch.utils.data import Dataset

from hgan.data.h5io import open_h5
from hgan.data.windows import window_plan


class ToyPhysicsWindows(Dataset):
    """Item i of epoch e is window_plan(...)[i]: [T, 3, H, W] float32 in [-1, 1]
    (x / 127.5 - 1) or uint8 with uint8=True.

    The HDF5 handle is opened lazily in the process that reads, so DataLoader workers each
    get their own and nothing open is pickled. Call set_epoch(e) before each epoch (in the
    main process; workers started afterwards see the new plan).
    """

    def __init__(self, path, frames=16, *, seed=0, rank=0, world_size=1, uint8=False):
        self.path = str(path)
        with open_h5(self.path) as f:  # validate once, up front
            self.n_traj, self.traj_len = f.frames.shape[:2]
            self.resolution = f.frames.shape[2]
        self.frames, self.seed, self.rank, self.world_size = frames, seed, rank, world_size
        self.uint8 = uint8
        self._file = None
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.plan = window_plan(self.n_traj, self.traj_len, self.frames, seed=self.seed,
                                epoch=epoch, rank=self.rank, world_size=self.world_size)

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i):
        if self._file is None:
            self._file = open_h5(self.path)
        traj, start = (int(v) for v in self.plan[i])
        clip = torch.from_numpy(np.ascontiguousarray(
            self._file.frames[traj, start:start + self.frames]))  # [T, H, W, 3] uint8
        clip = clip.permute(0, 3, 1, 2).contiguous()
        if self.uint8:
            return clip
        return clip.to(torch.float32) / 127.5 - 1.0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles must not cross process boundaries
        return state

    def __del__(self):
        f = getattr(self, "_file", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # interpreter shutdown may have torn h5py down already
                pass
