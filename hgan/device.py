"""The --device flag of every command, checked in one place: before any work, one error that
names what this machine lacks (a CUDA device, or the N of cuda:N)."""
import torch


def check_device(name: str) -> torch.device:
    """torch.device for `name`: auto (cuda when available, else cpu), cpu, cuda or cuda:N.
    ValueError naming the problem when the name is unknown or this machine has no such device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: CUDA is not available on this machine "
                             "(use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s)")
    return dev
