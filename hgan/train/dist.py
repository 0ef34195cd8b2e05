"""Data-parallel plumbing for torchrun: process group, shard identity, gradient averaging.

Gradients are averaged by hand after each backward (StyleGAN2-ADA's approach) rather than
through the DistributedDataParallel wrapper: a GAN step runs each discriminator several times
per backward (real, fake, then for G) and the R1 penalty needs a double backward, two things
DDP's reducer handles badly (see pitfalls). The arithmetic is the same as DDP's all-reduce.
BatchNorm statistics stay per rank, as with DDP without SyncBatchNorm.
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


def broadcast_module(module, info: DistInfo):
    """Start every rank from rank 0's parameters and buffers."""
    if not info.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_gradients(params, info: DistInfo):
    """All-reduce the gradients of `params` in one flat bucket and divide by world size."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank when the flag is set on any rank (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
