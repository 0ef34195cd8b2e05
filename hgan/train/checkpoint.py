"""Atomic, code-free checkpoints with every RNG state needed for an exact resume.

Everything stored is a tensor or a plain Python container, so `load_checkpoint` can use
`torch.load(weights_only=True)`: a checkpoint cannot run code when it is opened.
"""
import os
import random

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
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str) -> str:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "last.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except torch.serialization.pickle.UnpicklingError as e:
        raise RuntimeError(f"refusing to load {path}: it holds objects other than tensors and plain "
                           f"containers (weights_only=True). {str(e).splitlines()[0]}") from e
