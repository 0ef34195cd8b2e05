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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# HGAN_BENCH_RESULTS=DIR sends a trial run's medians there: bench/results/ is tracked, and a
# run of one case (-k) would otherwise leave the checkout modified
RESULTS_DIR = os.environ.get("HGAN_BENCH_RESULTS") or os.path.join(REPO_ROOT, "bench", "results")
WRITTEN = set()   # results files this process wrote (bench/conftest.py names them at the end)
# the ratios (keys X_over_Y) this process recorded, by (section, entry, key):
# bench/conftest.py prints them at the end, so that a run shows what it paired
RATIOS = {}
# How a ratio reads, from its key: X_over_Y is a speed-up, Y's time / X's (above 1: X is
# faster), but X_over_Y_time is a time ratio, X's time / Y's (below 1: X is faster).
RATIO_KINDS = {"speed-up": ("X_over_Y", "Y's time / X's, above 1 when X is faster"),
               "time ratio": ("X_over_Y_time", "X's time / Y's, below 1 when X is faster")}


def ratio_kind(key):
    return "time ratio" if key.endswith("_time") else "speed-up"


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
    root = REPO_ROOT
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


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:          # not every platform has one
        return None


# NVML's clock-event reasons (nvml.h, nvmlClocksEventReason*): why the SM clock is under its
# maximum when a figure is recorded.
_CLOCK_REASONS = {0x1: "idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
                  0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
                  0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
                  0x100: "display_clock_setting"}
_NVML = {}   # "lib": the initialised pynvml module, or "error": why there is none


def _nvml_handle(nvml):
    """The NVML handle of torch's current CUDA device (by UUID: NVML numbers the devices
    without regard to CUDA_VISIBLE_DEVICES); index 0 where NVML sees only one."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = str(getattr(props, "uuid", ""))
    for name in (uuid, "GPU-" + uuid):
        try:   # bytes: older nvidia-ml-py takes nothing else, newer ones take either
            return nvml.nvmlDeviceGetHandleByUUID(name.encode())
        except nvml.NVMLError:
            continue
    if nvml.nvmlDeviceGetCount() == 1:
        return nvml.nvmlDeviceGetHandleByIndex(0)
    raise RuntimeError(f"NVML finds no device with torch's UUID {uuid!r}")


def gpu_state():
    """The card's SM and memory clocks, power, temperature, performance state and the reasons
    its clocks are held down, read through NVML (nvidia-ml-py; reads only: METHOD.md, measure
    the card as you find it), so that a figure taken under a power cap or a thermal slowdown
    says so. None without CUDA or NVML; {"error": ...} where NVML fails."""
    if not torch.cuda.is_available():
        return None
    if not _NVML:
        try:
            import pynvml
            pynvml.nvmlInit()
            _NVML["lib"] = pynvml
        except Exception as err:   # noqa: BLE001 - not installed, or no driver library
            _NVML["error"] = f"{type(err).__name__}: {err}"
    nvml = _NVML.get("lib")
    if nvml is None:
        return None if _NVML["error"].startswith(("ImportError", "ModuleNotFound")) \
            else {"error": _NVML["error"]}
    try:
        h = _nvml_handle(nvml)
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = reasons(h)
        return {
            "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
            "power_w": nvml.nvmlDeviceGetPowerUsage(h) / 1000,
            "power_limit_w": nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
            "temperature_c": nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            "pstate": nvml.nvmlDeviceGetPerformanceState(h),
            "clock_reasons": [n for bit, n in _CLOCK_REASONS.items() if mask & bit]
            + ([f"other 0x{mask & ~sum(_CLOCK_REASONS):x}"] if mask & ~sum(_CLOCK_REASONS)
               else []),
        }
    except Exception as err:   # noqa: BLE001 - a figure is still worth recording without it
        return {"error": f"{type(err).__name__}: {err}"}


def gpu_state_line(state):
    """One line of gpu_state() for a script's log."""
    if not state:
        return "GPU state: not read (no NVML)"
    if "error" in state:
        return f"GPU state: not read ({state['error']})"
    return (f"GPU state: SM {state['sm_clock_mhz']}/{state['sm_clock_max_mhz']} MHz, memory "
            f"{state['mem_clock_mhz']} MHz, {state['power_w']:.0f}/{state['power_limit_w']:.0f}"
            f" W, {state['temperature_c']} C, P{state['pstate']}, clocks held by: "
            f"{', '.join(state['clock_reasons']) or 'nothing'}")


def record(section: str, name: str, payload: dict, device: str = "cuda",
           partial: bool = False) -> str:
    """Merge ``payload`` under results[section][name] in bench/results/<device>.json.

    Each entry carries what it was measured with (commit, torch, triton, date, the machine's
    1-minute load average, and on a GPU its clocks, power and temperature just after: see
    gpu_state): the file's top-level environment is only its last writer's.
    partial=True is for entries that pair figures of one run (speed-ups): keys this run did
    not measure stay, each listed under "earlier" with the commit and date it came from,
    instead of vanishing when a run (-k) timed only some of the variants.
    """
    env = environment(device)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, env["device"] + ".json")
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(env)
    stamp = {"commit": env["commit"], "torch": env.get("torch"), "triton": env.get("triton"),
             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "load_average_1min": _load_average()}
    if device.startswith("cuda"):
        state = gpu_state()
        if state is not None:
            stamp["gpu_state"] = state
    entries = data.setdefault("results", {}).setdefault(section, {})
    old = entries.get(name, {})
    entry = {**payload, **stamp}
    if partial and old:
        earlier = dict(old.get("earlier", {}))
        for key, value in old.items():
            if key in payload or key in stamp or key == "earlier":
                continue
            entry[key] = value
            earlier.setdefault(key, {"commit": old.get("commit"),
                                     "measured": old.get("measured")})
        for key in payload:
            earlier.pop(key, None)
        if earlier:
            entry["earlier"] = earlier
    entries[name] = entry
    WRITTEN.add(path)
    for key, value in payload.items():
        if "_over_" in key and isinstance(value, (int, float)):
            RATIOS[(section, name, key)] = value
    return write_json(path, data)


def write_json(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def merge(paths, out_dir=RESULTS_DIR):
    """Merge results files written by separate calls on one device (bench/gpu/run.sh stages)
    into out_dir/<device>.json, on top of what that file already holds: later files win per
    (section, name); the top-level environment is the last file's. Refuses files from
    different devices."""
    if not paths:
        raise ValueError("no results files given")
    files = []
    for p in paths:
        try:
            with open(p) as f:
                files.append((p, json.load(f)))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {p}: {err}") from None
    device = files[0][1].get("device")
    for p, data in files:
        if not data.get("device"):  # it would be merged into "None.json" or ".json"
            raise ValueError(f"{p} names no device: not a results file of bench/_results.py")
        if data.get("device") != device:
            raise ValueError(f"{p} is from {data.get('device')!r}, not {device!r}: one device "
                             f"per results file")
    target = os.path.join(out_dir, device + ".json")
    if os.path.exists(target) and not any(os.path.exists(p) and os.path.samefile(p, target)
                                          for p, _ in files):
        with open(target) as f:
            files.insert(0, (target, json.load(f)))
    merged = {}
    for _, data in files:
        results = merged.get("results", {})
        for section, entries in data.get("results", {}).items():
            results.setdefault(section, {}).update(entries)
        merged.update({k: v for k, v in data.items() if k != "results"})
        merged["results"] = results
    os.makedirs(out_dir, exist_ok=True)
    return write_json(target, merged)


if __name__ == "__main__":
    import sys
    usage = ("usage: python bench/_results.py merge FILE.json [FILE.json ...]\n"
             "merges results files of one device into bench/results/<device>.json, keeping "
             "the entries it already holds (later files win per entry)")
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(usage)
        raise SystemExit(0)
    if len(sys.argv) < 3 or sys.argv[1] != "merge":
        raise SystemExit(usage)
    try:
        print(merge(sys.argv[2:]))
    except ValueError as err:
        raise SystemExit(f"error: {err}")
