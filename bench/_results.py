"""Shared writer for bench/results/<device>.json.

Every benchmark module records its medians here under its own section, so one file per
device holds the environment (device, torch/triton versions, commit) and all figures.
"""
import json
import os
import platform
import subprocess
import time

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device: str = "cuda") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu-" + (platform.processor() or platform.machine())
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = "cpu-" + line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name += f"-{os.cpu_count()}cores"
        # VMs name every EPYC generation "AMD EPYC": native bf16 (AVX512-BF16, AMX) changes
        # what the optimised step runs (bf16 autocast or fp32), so it gets a file of its own.
        from hgan.train.loop import cpu_has_fast_bf16
        if cpu_has_fast_bf16():
            name += "-bf16"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")


def commit() -> str:
    """HGAN_COMMIT if set (a GPU machine gets the working tree without .git), else git's:
    "unknown" unless this tree is itself the top of a git checkout (a copy without .git that
    sits inside some other repository would otherwise be given that repository's HEAD)."""
    if os.environ.get("HGAN_COMMIT"):
        return os.environ["HGAN_COMMIT"]
    root = os.path.dirname(os.path.dirname(RESULTS_DIR))
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, cwd=root).stdout.split("\n")
    except OSError:
        return "unknown"
    if len(out) < 2 or not out[0] or not os.path.isdir(out[0]) \
            or not os.path.samefile(out[0], root):
        return "unknown"
    return out[1].strip() or "unknown"


def environment(device: str = "cuda") -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": commit(),
        "python": platform.python_version(),
    }


def record(section: str, name: str, payload: dict, device: str = "cuda") -> str:
    """Merge ``payload`` under results[section][name] in bench/results/<device>.json."""
    env = environment(device)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, env["device"] + ".json")
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(env)
    # Entries are re-measured one section at a time: each carries its own commit and date.
    payload = {**payload, "commit": env["commit"],
               "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data.setdefault("results", {}).setdefault(section, {})[name] = payload
    return write_json(path, data)


def write_json(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def merge(paths, out_dir=RESULTS_DIR):
    """Merge results files written by separate calls on one device (bench/gpu/run.sh stages)
    into out_dir/<device>.json: later files win per (section, name); the environment of the
    last file is kept. Refuses files from different devices."""
    merged, device = {}, None
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        if device is not None and data.get("device") != device:
            raise ValueError(f"{p} is from {data.get('device')!r}, not {device!r}: one device "
                             f"per results file")
        device = data.get("device")
        results = merged.get("results", {})
        for section, entries in data.get("results", {}).items():
            results.setdefault(section, {}).update(entries)
        merged.update({k: v for k, v in data.items() if k != "results"})
        merged["results"] = results
    if device is None:
        raise ValueError("no results files given")
    os.makedirs(out_dir, exist_ok=True)
    return write_json(os.path.join(out_dir, device + ".json"), merged)


if __name__ == "__main__":
    import sys
    usage = ("usage: python bench/_results.py merge FILE.json [FILE.json ...]\n"
             "merges results files of one device into bench/results/<device>.json")
    if len(sys.argv) < 3 or sys.argv[1] != "merge" or {"-h", "--help"} & set(sys.argv):
        raise SystemExit(usage)
    print(merge(sys.argv[2:]))
