"""Data-parallel plumbing for torchrun: process group and shard identity.

Gradient averaging is DistributedDataParallel's (the trainer wraps G, D_I and D_V). Each
discriminator sees two forwards (fake, real) before its one backward, and R1 takes an input
gradient with create_graph inside the wrapper before that backward: DDP's reducer fires once
per parameter per backward, which tests/test_train_ddp.py checks against the mean of the
per-rank gradients. BatchNorm statistics stay per rank (DDP broadcasts rank 0's buffers).
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        # NCCL collectives run on the current device: without this every rank would use GPU 0.
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(rank, world, local)


def any_rank(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank when the flag is set on any rank (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
