"""Atomic, code-free checkpoints with every RNG state needed for an exact resume.

Everything stored is a tensor or a plain Python container, so `load_checkpoint` can use
`torch.load(weights_only=True)`: a checkpoint cannot run code when it is opened.
"""
import os
import pickle
import random
import re
import struct
import zipfile

import numpy as np
import torch


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state holds an ndarray, which weights_only refuses; store it as a tensor.
    state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw: a run saved on an 8-GPU node resumes on
        # a machine with fewer (set_rng_state_all would index past the last device).
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


# Temporary files being written now (a packed process abandoned by a second Ctrl-C removes
# them before it exits: hgan.train.pack.entry).
WRITING = set()


def save_checkpoint(state: dict, path: str) -> str:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    WRITING.add(tmp)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        WRITING.discard(tmp)
    return path


def _fsync_dir(folder):
    """Make the rename itself durable: without it a power cut can bring back the previous
    checkpoint (never a torn one). Not possible on every platform or file system."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointError(RuntimeError):
    """A file that cannot be loaded as a checkpoint, with the reason."""


# What a torch.save file starts with: a zip archive (torch >= 1.6) or a pickle (the legacy
# format, whose first opcode is PROTO).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def checkpoint_file(path: str) -> str:
    """The file a --checkpoint names: itself, or a run directory's checkpoints/last.pt."""
    return os.path.join(path, "checkpoints", "last.pt") if os.path.isdir(path) else path


def _folder_hint(missing: str) -> str:
    """For a missing DIR/checkpoints/last.pt where DIR holds last.pt itself: DIR is a run's
    checkpoints folder, given where its run directory was expected (the path that failed,
    ".../checkpoints/checkpoints/last.pt", left the reader to spot the doubled folder)."""
    folder = os.path.dirname(os.path.dirname(missing))
    if os.path.basename(os.path.dirname(missing)) != "checkpoints":
        return ""
    if os.path.isfile(os.path.join(folder, "last.pt")):
        return (f": {folder} holds last.pt itself; give the run directory "
                f"{os.path.dirname(folder) or '.'} or the file {os.path.join(folder, 'last.pt')}")
    # a folder of runs (`runs`, where train.py puts them): name the newest run, as an example
    try:
        runs = [e for e in os.scandir(folder) if e.is_dir()
                and os.path.isfile(os.path.join(e.path, "checkpoints", "last.pt"))]
    except OSError:
        return ""
    if not runs:
        return ""
    newest = max(runs, key=lambda e: os.path.getmtime(os.path.join(e.path, "checkpoints", "last.pt")))
    return (f": {folder} holds {len(runs)} run director{'y' if len(runs) == 1 else 'ies'}; give "
            f"one of them, such as {newest.path}")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    path = checkpoint_file(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}{_folder_hint(path)}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{path} is not a checkpoint (not a torch.save file)")
    if head.startswith(b"PK"):  # the zip format (not the legacy pickle one)
        _check_records(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not head.startswith(b"PK") and _cut_inside_global(path, str(e)):
            raise CheckpointError(f"{path} is truncated or corrupt (it ends inside the name of "
                                  f"a class it refers to)") from None
        # torch's message advises weights_only=False, which is what lets such a file run code:
        # only its diagnosis is kept.
        raise CheckpointError(f"refusing to load {path}: {_refusal(str(e))}") from None
    # IndexError and struct.error: a legacy (non-zip) file cut short inside a pickle opcode
    except (RuntimeError, EOFError, OSError, UnicodeDecodeError, IndexError, struct.error) as e:
        reason = _first_sentence(str(e))
        raise CheckpointError(f"{path} is truncated or corrupt ({reason})") from None


def _check_records(path):
    """torch.save writes a zip archive with a CRC-32 per record, which torch.load does not
    verify: changed bytes inside a tensor would load as silently wrong weights. Checked here
    (one read of the file, milliseconds for this project's checkpoints)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            # torch.save writes no folders; torch.load reads a record whose directory bit a
            # changed byte set as empty, and the tensor in it as uninitialized memory
            folders = [i.filename for i in z.infolist() if i.external_attr & 0x10]
    # Any error of zipfile's: besides BadZipFile, a changed byte of a header raised
    # RuntimeError ("encrypted"), NotImplementedError (another compression), zlib.error,
    # ValueError, EOFError, OverflowError
    except Exception as e:  # noqa: BLE001 - whatever zipfile raises, the archive is damaged
        raise CheckpointError(f"{path} is truncated or corrupt (not a complete archive: "
                              f"{_first_sentence(str(e))})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt (its record {bad} fails its CRC check)")
    if folders:
        raise CheckpointError(f"{path} is corrupt (its record {folders[0]} is marked as a folder)")


def _refusal(message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"it holds objects other than tensors and plain containers ({found.group(1)})"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    return ("it is not a pickle of tensors and plain containers"
            + (f" ({detail.group(1).strip()})" if detail else ""))


def _cut_inside_global(path, message) -> bool:
    """Whether a legacy (pickle) file ends inside the GLOBAL opcode it was refused at. The
    opcode is `c<module>\\n<name>\\n`; cut short, the unpickler reads the rest of the file as
    the module or the name (less its last byte, taken for the newline), so a truncated
    checkpoint would be refused as one that refers to a class (`torch._utils._re`)."""
    found = re.search(r"GLOBAL ([\w.]*)", message)
    if not found:
        return False
    name = found.group(1).rpartition(".")[2]
    if not name:  # cut inside the module: the name was read as empty
        return True
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - len(name) - 2))
        tail = f.read()
    return tail[:-1].endswith(b"\n" + name.encode())


def _first_sentence(message: str) -> str:
    message = re.sub(r"^\[enforce fail[^\]]*\][\s.]*", "", message.strip())
    return message.split(". ")[0].splitlines()[0] if message else "unexpected end of file"


def load_weights(module, state: dict, what: str) -> None:
    """module.load_state_dict(state), with a mismatch as one CheckpointError line: the
    weights of a checkpoint written by another version of the models (or edited) do not fit
    the model its config builds, and torch's message spans a line per key."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        lines = [" ".join(line.split()).rstrip(".") for line in str(e).splitlines()[1:]
                 if line.strip()]
        detail = "; ".join(lines) or str(e)
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise CheckpointError(f"the checkpoint's {what} weights do not fit the model its config "
                              f"builds ({detail}): was it written by another version of hgan?"
                              ) from None
