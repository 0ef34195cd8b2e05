"""Data-parallel plumbing for torchrun: process group and shard identity.

Gradient averaging is DistributedDataParallel's (the trainer wraps G, D_I and D_V). Each
discriminator sees two forwards (fake, real) before its one backward, and R1 takes an input
gradient with create_graph inside the wrapper before that backward: DDP's reducer fires once
per parameter per backward, which tests/test_train_ddp.py checks against the mean of the
per-rank gradients. BatchNorm statistics stay per rank (DDP broadcasts rank 0's buffers).
"""
import inspect
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# DDP keyword that stops the buffer broadcast at every forward. torch 2.13 renamed it and warns
# at every construction under the old name; the new one still syncs buffers once at
# construction, which changes nothing here (every rank builds or loads the same weights).
NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(
                              DistributedDataParallel.__init__).parameters
                          else {"broadcast_buffers": False})


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


def from_main(value, info: DistInfo):
    """Rank 0's `value` (picklable) on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_flagged(iteration, info: DistInfo, device):
    """(iteration, rank) of the smallest iteration any rank flags, the lowest such rank, on
    every rank; None when no rank flags one (iteration None)."""
    if not info.enabled:
        return None if iteration is None else (iteration, info.rank)
    none = float(2 ** 62)
    key = none if iteration is None else float(iteration * info.world_size + info.rank)
    t = torch.tensor([key], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    if t.item() == none:
        return None
    return divmod(int(t.item()), info.world_size)


# What a collective's error says when the other side is gone: gloo's TCP pair (a plain
# RuntimeError), a socket, and NCCL's ncclRemoteError ("remote process exited or there was a
# network error").
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "remote process exited")


def lost_peer(err: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (it exited or was killed).

    The rendezvous store's network and store errors always are (the store lives in rank 0);
    a backend error only when its text says so: an NCCL "unhandled cuda error" or "invalid
    usage" is this rank's own failure and keeps its traceback."""
    if isinstance(err, (dist.DistNetworkError, dist.DistStoreError)):
        return True
    return any(s in str(err) for s in _PEER_GONE)


# How long the other ranks wait while rank 0 generates a missing dataset: a paper-size set
# takes hours, and the default group's timeout (30 minutes under gloo, 10 under NCCL) would
# end that wait with an error.
DATA_WAIT = timedelta(hours=24)


class LongWait:
    """A barrier with its own timeout, on a gloo group made for it (the default group's
    timeout stays as it is for the training collectives). Every rank builds it -- new_group
    is collective -- before the work the others wait for, and waits with wait()."""

    def __init__(self, timeout: timedelta = DATA_WAIT):
        self.group = dist.new_group(backend="gloo", timeout=timeout)

    def wait(self):
        try:
            dist.barrier(group=self.group)
        finally:
            dist.destroy_process_group(self.group)


def leave(clean: bool) -> None:
    """Leave the process group before the interpreter exits (train.py's last step, when its
    setup joined the group; a group the caller set up is the caller's to leave).

    clean: every rank ended normally, so they wait for each other first: no rank exits while
    rank 0 still writes its checkpoint (a rank that exits early, or aborts, makes torchrun
    kill the others). After an error a peer may never arrive, and this rank leaves at once.
    The process then ends through exit_process."""
    if not dist.is_initialized():
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()
    global left_a_group
    left_a_group = True


# Set once this process has left a torchrun group: its process entry then ends it with
# os._exit. A gloo worker thread may still be freeing the last collective's tensors (which
# takes the GIL) when the interpreter starts finalizing; Python 3.11 then exits that thread
# under a C++ frame that must not unwind, and the rank aborts ("terminate called without an
# active exception", SIGABRT; seen in a core dump, about 1 run in 10 on 2 loaded cores).
left_a_group = False


def exit_process(code: int) -> int:
    """End a process that left a torchrun group without finalizing the interpreter (see
    left_a_group); any other process gets its exit code back, to exit as usual."""
    if not left_a_group:
        return code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
