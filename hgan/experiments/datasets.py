"""The grid's datasets: ``<out>/data/<system>/{train,test}.h5``, generated when missing.

An existing file is reused only when it holds what the grid asks for (trajectories, frames,
resolution, seed); otherwise the grid stops with the difference, rather than training on
data of another size than compare.md would state.
"""
import os

from hgan.experiments.grid import GridError


# the table1 flag that sets each attribute _wanted compares (n_trajectories: --{split}-traj)
_FLAGS = {"frames": "--traj-frames", "resolution": "--resolution", "seed": "--data-seed"}


def _wanted(spec, split):
    n = spec.train_traj if split == "train" else spec.test_traj
    return {"n_trajectories": n, "frames": spec.traj_frames, "resolution": spec.resolution,
            "seed": spec.data_seed}


def missing_splits(spec, system):
    """Splits of `system` still to generate; GridError when a present file differs."""
    from hgan.data import DataFormatError, open_h5
    if spec.traj_frames < spec.frames:
        raise GridError(f"--traj-frames {spec.traj_frames} is shorter than the training clips "
                        f"(--frames {spec.frames})")
    todo = []
    for split in ("train", "test"):
        path = spec.data_path(system, split)
        if not os.path.exists(path):
            todo.append(split)
            continue
        try:
            attrs = open_h5(path).attrs
        except DataFormatError as e:
            raise GridError(f"{path} is not usable ({e}); delete it to regenerate") from None
        for key, value in _wanted(spec, split).items():
            if int(attrs[key]) != value:
                flag = _FLAGS[key] if key != "n_trajectories" else f"--{split}-traj"
                have = int(attrs[key])
                raise GridError(f"{path} has {key} = {have}, the grid asks for {value}: to "
                                f"continue this grid, pass {flag} {have} as before; else delete "
                                f"it or use another --out")
    return todo


def generate(spec, system, splits, stop_event=None):
    """Write the missing splits (each into ``<name>.partial``, renamed when complete); once
    `stop_event` is set, GenerationInterrupted ends it with no `.partial` left."""
    from hgan.data.generate import generate_split
    for split in splits:
        w = _wanted(spec, split)
        generate_split(system, spec.data_path(system, split), split, w["n_trajectories"],
                       frames=w["frames"], seed=w["seed"], resolution=w["resolution"], progress=False,
                       stop_event=stop_event)
