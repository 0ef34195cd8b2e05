"""bench/gpu/data_wait.py's arithmetic and verdict, with a stand-in step and a fake clock
(the real measurement needs a CUDA device)."""
import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench", "gpu"))
import data_wait  # noqa: E402


def _fake(monkeypatch, next_s, launch_s, device_s, run=(4.0, 0.5)):
    """A step whose next() takes next_s of host time, whose launches take launch_s and whose
    device work ends device_s after them; run_of_steps returns `run` (wall, time in next)."""
    clock = [0.0]

    def batches():
        while True:
            clock[0] += next_s
            yield "batch"

    def step(real):
        clock[0] += launch_s
        return {}
    trainer = SimpleNamespace(iteration=0, step=step)
    for module in (data_wait, data_wait.sys.modules["_trainstep"]):   # drained_steps' too
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
        monkeypatch.setattr(module, "sync", lambda: clock.__setitem__(0, clock[0] + device_s))
    monkeypatch.setattr(data_wait, "run_of_steps", lambda step, n: run)
    monkeypatch.setattr(data_wait, "data_cost", lambda step, n, rounds: (0.040, 0.039))
    return _Step(batches=batches(), trainer=trainer, warmup_steps=0, stats=None)


class _Step(SimpleNamespace):
    def __call__(self):   # a synchronised warm-up step: nothing to time
        return 0.0


@pytest.mark.parametrize("next_s, launch_s, verdict", [
    (0.001, 0.002, "device-bound"),   # host 3 ms of a 40 ms step (n = 100: 4.0 s)
    (0.02, 0.015, "host-bound"),      # host 35 ms of 40
])
def test_measure_splits_host_time_and_says_which_side_bounds_the_step(monkeypatch, next_s,
                                                                     launch_s, verdict):
    step = _fake(monkeypatch, next_s, launch_s, device_s=0.03)
    out = data_wait.measure(step, 100)
    assert out["run_step_ms"] == pytest.approx(40.0)
    assert out["run_next_ms"] == pytest.approx(5.0) and out["run_data_wait_share"] == 0.125
    assert out["drained_next_ms"] == pytest.approx(1e3 * next_s)
    assert out["drained_launch_ms"] == pytest.approx(1e3 * launch_s)
    assert out["drained_tail_ms"] == pytest.approx(30.0)
    assert out["loader_share_of_run_step"] == pytest.approx(1e3 * next_s / 40.0)
    assert out["verdict"].startswith(verdict)
    assert out["data_cost_share"] == pytest.approx(0.025)
    assert step.trainer.iteration == 100


def test_without_cuda_it_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(data_wait, "DEVICE", "cpu")
    assert data_wait.main(["--steps", "2"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
