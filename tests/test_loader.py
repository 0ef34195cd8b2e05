"""Batch streams: windows follow window_plan exactly, all kinds agree, resume is exact, and a
bad file fails with open_h5's own error."""
import multiprocessing
import os
import re
import shutil
import traceback

import h5py
import numpy as np
import pytest
import torch

import hgan.data as hdata

if not hasattr(hdata, "window_plan"):
    pytest.skip("hgan.data.window_plan is not available yet", allow_module_level=True)

from hgan.data.loader import build_loader  # noqa: E402

N_TRAJ, TRAJ_LEN, SIZE, FRAMES, BATCH = 6, 20, 8, 4, 3


@pytest.fixture(scope="module")
def frames_h5(noisy_generated_h5):
    """A generated (open_h5-valid) file with noise frames: every window differs, so a wrong
    index cannot go unnoticed."""
    return noisy_generated_h5(N_TRAJ, TRAJ_LEN, SIZE)


def release_workers(excinfo):
    """Clear the frames of a loader error's traceback (and of the errors it chains). They hold
    the DataLoader iterator (the stream's generator frame, torch's own), in a cycle through
    the test's frame: left to the cyclic collector, which finalizes in an arbitrary order, its
    workers waited out their 5 s join timeout each, at whichever later test the collector ran
    (10 s after 2 workers: tests/test_loader.py alone spent 15 s in those stalls). Freed here
    the iterator shuts its workers down at once."""
    err = excinfo.value
    while err is not None:
        traceback.clear_frames(err.__traceback__)
        err = err.__context__


def take(path, n, **kw):
    kw = {"batch_size": BATCH, "frames": FRAMES, **kw}
    stream = build_loader(path, **kw)
    out = []
    for batch in stream:
        out.append(batch.clone(memory_format=torch.preserve_format))
        if len(out) == n:
            break
    stream.close()
    return stream, out


def oracle(data, g, bpe, *, seed=0, rank=0, world_size=1, batch=BATCH):
    """float64 reference for global batch g, straight from window_plan."""
    epoch, b = divmod(g, bpe)
    plan = np.asarray(hdata.window_plan(N_TRAJ, TRAJ_LEN, FRAMES, seed=seed, epoch=epoch,
                                        rank=rank, world_size=world_size))
    rows = plan[b * batch:(b + 1) * batch]
    win = np.stack([data[t, s:s + FRAMES] for t, s in rows]).astype(np.float64)
    return torch.from_numpy(win / 127.5 - 1.0).permute(0, 1, 4, 2, 3)


@pytest.mark.parametrize("rank", [0, 1])
def test_torch_stream_follows_window_plan_across_epochs(frames_h5, rank):
    path, data = frames_h5
    stream = build_loader(path, batch_size=BATCH, frames=FRAMES, seed=3, rank=rank,
                          world_size=2, kind="torch", num_workers=0)
    bpe = stream.batches_per_epoch
    assert bpe >= 1
    for g, batch in zip(range(2 * bpe + 1), stream):   # crosses two epoch boundaries
        assert batch.dtype == torch.float32 and batch.shape == (BATCH, FRAMES, 3, SIZE, SIZE)
        assert batch.is_contiguous()
        ref = oracle(data, g, bpe, seed=3, rank=rank, world_size=2)
        # Two float32 roundings (the constant 1/127.5 and the product), each <= 2^-24 of
        # a value in [-1, 1]; a wrong window or layout is off by ~1e-2 or more.
        torch.testing.assert_close(batch.double(), ref, rtol=0, atol=2 ** -23)
        assert batch.min() >= -1 and batch.max() <= 1
    assert stream.position == 2 * bpe + 1


@pytest.mark.parametrize("kind", ["torch", "gpu-resident"])
@pytest.mark.parametrize("start_batch", [0, 3])
def test_an_epochs_last_windows_short_of_a_batch_are_dropped_by_every_kind(frames_h5, kind,
                                                                           start_batch):
    # Batches of 4 from 6 windows an epoch: one batch per epoch (plan rows 0-3), rows 4 and 5
    # dropped, each epoch its own plan. The other tests' batches divide their epochs, so a
    # stream that ran on into the next epoch's plan instead (rows 4, 5 of epoch 0 then rows
    # 0, 1 of epoch 1, or a short batch) matched them too.
    path, data = frames_h5
    stream, got = take(path, 3, kind=kind, num_workers=0, seed=8, batch_size=4,
                       start_batch=start_batch)
    assert stream.batches_per_epoch == 1 and len(got) == 3
    for g, batch in enumerate(got, start_batch):
        assert batch.shape == (4, FRAMES, 3, SIZE, SIZE)
        torch.testing.assert_close(batch.double(), oracle(data, g, 1, seed=8, batch=4),
                                   rtol=0, atol=2 ** -23)


def test_epochs_reshuffle_and_shards_are_disjoint(frames_h5):
    path, _ = frames_h5
    epoch_batches = {}
    for rank in (0, 1):
        stream = build_loader(path, batch_size=1, frames=FRAMES, rank=rank, world_size=2,
                              kind="gpu-resident")
        bpe = stream.batches_per_epoch
        it = iter(stream)
        epoch_batches[rank] = [torch.stack([next(it) for _ in range(bpe)]) for _ in range(2)]
    # Same shard, next epoch: a different order (the plan reshuffles per epoch).
    assert not torch.equal(epoch_batches[0][0], epoch_batches[0][1])
    # Two ranks in one epoch never share a window.
    a = {w.numpy().tobytes() for w in epoch_batches[0][0]}
    b = {w.numpy().tobytes() for w in epoch_batches[1][0]}
    assert not a & b


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_resident_batch_is_one_gather_and_one_conversion(frames_h5, channels_last):
    # The captured step is device-bound at ~4 ms and pays the loader's launches on every
    # iteration (bench/gpu/data_wait.py): within an epoch a batch is one index_select and a
    # subtract-and-scale, no advanced indexing, no contiguous copy, no host transfer.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    path, data = frames_h5
    stream = build_loader(path, batch_size=1, frames=FRAMES, seed=4, kind="gpu-resident",
                          channels_last=channels_last)
    it = iter(stream)
    next(it)                                    # the epoch's frame rows are made here
    with Ops() as ops:
        batch = next(it)
    stream.close()
    launching = [n for n in ops.names
                 if n not in ("view", "slice", "permute", "empty_like", "alias", "detach")]
    assert sorted(launching) == ["index_select", "mul_", "sub"], ops.names
    assert batch.is_contiguous() != channels_last
    torch.testing.assert_close(batch.double(), oracle(data, 1, stream.batches_per_epoch,
                                                      seed=4, batch=1), rtol=0, atol=2 ** -23)


@pytest.mark.parametrize("kind", ["torch", "gpu-resident"])
def test_start_batch_resumes_exactly(frames_h5, kind):
    path, _ = frames_h5
    _, full = take(path, 9, kind=kind, num_workers=0, seed=1)
    resumed, tail = take(path, 4, kind=kind, num_workers=0, seed=1, start_batch=5)
    assert resumed.position == 9
    for x, y in zip(full[5:], tail):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kind", ["torch", "gpu-resident"])
def test_iterating_again_continues_and_ends_the_previous_iterator(frames_h5, kind):
    path, _ = frames_h5
    _, full = take(path, 5, kind=kind, num_workers=0, seed=4)
    stream = build_loader(path, batch_size=BATCH, frames=FRAMES, kind=kind, num_workers=0,
                          seed=4)
    first = iter(stream)
    got = [next(first), next(first)]
    second = iter(stream)
    with pytest.raises(StopIteration):   # two live iterators would share `position`
        next(first)
    got += [next(second) for _ in range(3)]
    assert stream.position == 5
    assert all(torch.equal(x, y) for x, y in zip(full, got))
    stream.close()
    with pytest.raises(StopIteration):
        next(second)
    if kind == "gpu-resident":   # close() freed its frames: one clear error, not a TypeError
        with pytest.raises(RuntimeError, match="gpu-resident stream is closed"):
            next(iter(stream))
    else:                        # a torch stream starts new workers where it stopped
        assert torch.equal(next(iter(stream)), take(path, 6, kind=kind, num_workers=0,
                                                    seed=4)[1][5])


def test_iterating_again_or_closing_ends_the_previous_loaders_workers_at_once(frames_h5):
    # A suspended generator held its DataLoader, and with it the worker processes, until it
    # was garbage-collected: here `first` stays referenced.
    def workers():
        return len(multiprocessing.active_children())

    base = workers()
    stream = build_loader(frames_h5[0], batch_size=BATCH, frames=FRAMES, num_workers=2)
    first = iter(stream)
    next(first)
    assert workers() == base + 2
    second = iter(stream)
    assert workers() == base
    next(second)
    assert workers() == base + 2
    stream.close()
    assert workers() == base and first is not None


def test_an_iterator_dropped_unclosed_ends_its_workers_at_once(frames_h5):
    # The stream held its generator, whose frame holds the stream: a cycle, freed only by
    # the cyclic collector, whose finalisation order left each worker waiting out a 5 s
    # join timeout (a 10 s stall at some later allocation). Dropped, it now ends at once.
    import gc

    base = len(multiprocessing.active_children())
    stream = build_loader(frames_h5[0], batch_size=BATCH, frames=FRAMES, num_workers=2)
    batches = iter(stream)
    next(batches)
    assert len(multiprocessing.active_children()) == base + 2
    gc.disable()   # no collection may free the pair: only reference counting
    try:
        del batches, stream
        left = len(multiprocessing.active_children()) - base
    finally:
        gc.enable()
    assert left == 0


def test_gpu_resident_equals_torch_with_workers(frames_h5):
    path, _ = frames_h5
    for rank in (0, 1):
        _, a = take(path, 7, kind="torch", num_workers=2, seed=2, rank=rank, world_size=2)
        _, b = take(path, 7, kind="gpu-resident", seed=2, rank=rank, world_size=2)
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_matches_h5py_windows_on_generated_data(tiny_pendulum_h5):
    """Real rendered frames read and scaled independently (h5py, float64) are the oracle."""
    stream = build_loader(tiny_pendulum_h5, batch_size=5, frames=8, seed=4, kind="torch",
                          num_workers=0)
    bpe = stream.batches_per_epoch
    assert bpe == 24 // 5
    with h5py.File(tiny_pendulum_h5) as f:
        frames = f["frames"][...]
    for g, batch in zip(range(bpe + 2), stream):
        epoch, b = divmod(g, bpe)
        rows = hdata.window_plan(24, 40, 8, seed=4, epoch=epoch)[b * 5:b * 5 + 5]
        win = np.stack([frames[t, s:s + 8] for t, s in rows]).astype(np.float64)
        ref = torch.from_numpy(win / 127.5 - 1.0).permute(0, 1, 4, 2, 3)
        torch.testing.assert_close(batch.double(), ref, rtol=0, atol=2 ** -23)


def test_every_uint8_value_converts_with_the_documented_float32_arithmetic():
    # hgan.data.loader: (x - 127.5) * (1 / 127.5) in float32, an exact subtraction and one
    # rounded multiply, which DALI's pipeline repeats so that the kinds agree bit for bit. The
    # oracle is numpy's float32 arithmetic; the stream tests' float64 tolerance (2^-23) would
    # pass another rounding, e.g. (x - 127.5) / 127.5 differs at 126 of the 256 values.
    from hgan.data.loader import to_unit_range
    v = np.arange(256, dtype=np.uint8)
    want = (v.astype(np.float32) - np.float32(127.5)) * np.float32(1 / 127.5)
    u8 = torch.from_numpy(np.broadcast_to(v.reshape(1, 1, 16, 16, 1), (1, 1, 16, 16, 3)).copy())
    got = to_unit_range(u8)
    assert got.dtype == torch.float32 and got.shape == (1, 1, 3, 16, 16)
    for c in range(3):
        np.testing.assert_array_equal(got[0, 0, c].numpy().ravel(), want)
    assert want[0] == -1 and want[255] == 1


@pytest.mark.parametrize("kind", ["torch", "gpu-resident"])
def test_channels_last_stream_has_same_values_in_clip_friendly_memory(frames_h5, kind):
    path, _ = frames_h5
    _, ref = take(path, 3, kind=kind, num_workers=0)
    _, got = take(path, 3, kind=kind, num_workers=0, channels_last=True)
    for x, y in zip(ref, got):
        assert torch.equal(x, y)
        # The trainer gathers one frame per video by advanced indexing, which keeps layout.
        frame = y[torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long)]
        assert frame.is_contiguous(memory_format=torch.channels_last)
        assert y.transpose(1, 2).is_contiguous(memory_format=torch.channels_last_3d)


def test_auto_is_torch_without_cuda(frames_h5):
    if torch.cuda.is_available():
        pytest.skip("auto picks DALI on a CUDA machine")
    stream = build_loader(frames_h5[0], batch_size=BATCH, frames=FRAMES, kind="auto")
    assert stream.kind == "torch"


def test_windows_as_long_as_the_trajectories_are_whole_trajectories(frames_h5):
    # --frames equal to the trajectory length is valid (--gen-frames must be at least
    # --frames): every window starts at 0 and a batch is whole trajectories in plan order.
    path, data = frames_h5
    stream = build_loader(path, batch_size=BATCH, frames=TRAJ_LEN, seed=6, kind="torch",
                          num_workers=0)
    assert stream.batches_per_epoch == N_TRAJ // BATCH
    order = np.random.default_rng([6, 0]).permutation(N_TRAJ)   # window_plan's recipe
    batch = next(iter(stream))
    ref = torch.from_numpy(data[order[:BATCH]].astype(np.float64) / 127.5 - 1.0)
    torch.testing.assert_close(batch.double(), ref.permute(0, 1, 4, 2, 3), rtol=0,
                               atol=2 ** -23)


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_auto_weighs_the_whole_frame_array(frames_h5, monkeypatch, rank, world_size):
    # gpu-resident copies every trajectory to the device on every rank, so "auto" must
    # compare the bytes of the whole uint8 frames array (not a trajectory's, not a shard's)
    # with RESIDENT_MEMORY_FRACTION of the GPU.
    # (and whether DALI is there to fall back on)
    import hgan.data.loader as loader
    from hgan.data import dali
    path, data = frames_h5
    seen = []

    def spy(device, data_bytes, dali_available, device_memory=None):
        seen.append((data_bytes, dali_available))
        return "torch"

    monkeypatch.setattr(loader, "auto_kind", spy)
    for available in (True, False):
        monkeypatch.setattr(dali, "available", lambda a=available: a)
        build_loader(path, batch_size=1, frames=FRAMES, rank=rank, world_size=world_size,
                     kind="auto", num_workers=0).close()
    assert N_TRAJ * TRAJ_LEN * SIZE * SIZE * 3 == data.nbytes
    assert seen == [(data.nbytes, True), (data.nbytes, False)]


@pytest.mark.parametrize("kw, match", [
    ({"kind": "tfrecord"}, "unknown loader kind"),
    ({"batch_size": 1000}, "exceeds"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"frames": TRAJ_LEN + 1}, "does not fit"),
    ({"rank": 2, "world_size": 2}, "outside world_size"),
    ({"rank": 1, "world_size": 1}, "^rank 1 is outside world_size 1$"),   # not window_plan's
    ({"frames": 0}, "does not fit"),
    ({"start_batch": -1}, "start_batch"),
])
def test_bad_arguments_raise_one_clear_error(frames_h5, kw, match):
    kw = {"batch_size": BATCH, "frames": FRAMES, "kind": "torch", **kw}
    with pytest.raises(ValueError, match=match):
        build_loader(frames_h5[0], **kw)


def test_windows_that_do_not_fit_name_the_file_and_the_numbers(frames_h5):
    # The whole message, hand-written: which file, which sizes (a run given --data of several
    # sets must say which one its --frames or --batch-size does not fit). 6 trajectories over
    # 2 ranks: 3 windows per epoch on each.
    path = frames_h5[0]
    with pytest.raises(ValueError, match=f"^frames={TRAJ_LEN + 1} does not fit trajectories "
                                         f"of {TRAJ_LEN} frames in {re.escape(path)}$"):
        build_loader(path, batch_size=BATCH, frames=TRAJ_LEN + 1, kind="torch")
    with pytest.raises(ValueError, match=f"^batch size 4 exceeds the 3 windows per epoch of "
                                         f"{re.escape(path)} \\(rank 1 of 2\\); generate more "
                                         "trajectories or lower it$"):
        build_loader(path, batch_size=4, frames=FRAMES, rank=1, world_size=2, kind="torch")


def test_an_interrupt_while_reading_stays_an_interrupt(frames_h5, monkeypatch):
    # Only the file's own errors become DataFormatError: a Ctrl-C (or any other failure)
    # during a read must reach the trainer as what it was.
    from hgan.data import stream as hstream

    def interrupted(self, sample):
        raise KeyboardInterrupt

    monkeypatch.setattr(hstream.WindowReader, "__call__", interrupted)
    stream = build_loader(frames_h5[0], batch_size=BATCH, frames=FRAMES, kind="torch",
                          num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        next(iter(stream))
    stream.close()


@pytest.mark.parametrize("kind", ["torch", "gpu-resident"])
def test_corrupt_file_raises_the_open_h5_error(corrupt_h5, kind):
    """Every way open_h5 rejects a file fails build_loader with the very same error."""
    with pytest.raises(hdata.DataFormatError) as want:
        hdata.open_h5(corrupt_h5)
    with pytest.raises(hdata.DataFormatError) as got:
        build_loader(corrupt_h5, batch_size=1, frames=FRAMES, kind=kind, num_workers=0)
    assert str(got.value) == str(want.value)
    assert isinstance(got.value, ValueError)


def test_frames_of_the_wrong_dtype_are_named(tiny_pendulum_h5, tmp_path):
    path = tmp_path / "float_frames.h5"
    shutil.copy(tiny_pendulum_h5, path)
    with h5py.File(path, "a") as f:
        data = f["frames"][()].astype(np.float32)
        del f["frames"]
        f.create_dataset("frames", data=data)
    with pytest.raises(hdata.DataFormatError, match="frames must be uint8, got float32"):
        build_loader(str(path), batch_size=1, frames=4, kind="torch")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_replaced_under_a_running_loader_is_named(noisy_generated_h5, tmp_path,
                                                       num_workers):
    # Each worker opens and validates its own handle, so it notices a different file.
    path = tmp_path / "train.h5"
    shutil.copy(noisy_generated_h5(N_TRAJ, TRAJ_LEN, SIZE)[0], path)
    stream = build_loader(str(path), batch_size=BATCH, frames=FRAMES, kind="torch",
                          num_workers=num_workers)
    shutil.copy(noisy_generated_h5(N_TRAJ + 2, TRAJ_LEN, SIZE)[0], path)
    with pytest.raises(hdata.DataFormatError, match="replaced while in use") as e:
        next(iter(stream))
    release_workers(e)


def _open_on(path):
    """This process's file descriptors open on `path`."""
    return [fd for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path)]


def test_a_schedule_leaves_its_file_closed_and_so_does_the_refusal_of_a_replaced_one(
        noisy_generated_h5, tmp_path):
    # (the refusal's error, kept here as a traceback would keep it, holds the frame that
    # opened the file)
    from hgan.data.stream import WindowSchedule, open_checked
    path = tmp_path / "train.h5"
    shutil.copy(noisy_generated_h5(N_TRAJ, TRAJ_LEN, SIZE)[0], path)
    schedule = WindowSchedule(str(path), batch_size=BATCH, frames=FRAMES, seed=0, rank=0,
                              world_size=1)
    assert _open_on(path) == []
    shutil.copy(noisy_generated_h5(N_TRAJ + 2, TRAJ_LEN, SIZE)[0], path)
    with pytest.raises(hdata.DataFormatError, match="replaced while in use") as e:
        open_checked(schedule)
    assert _open_on(path) == [], e.value


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_torch_stream_leaves_the_global_rng_alone(frames_h5, num_workers):
    # its DataLoader draws the workers' base seed from a generator of its own: the global RNG
    # may be another packed run's weight initialisation under way (hgan.train.pack)
    stream = build_loader(frames_h5[0], batch_size=BATCH, frames=FRAMES, kind="torch",
                          num_workers=num_workers)
    state = torch.get_rng_state()
    next(iter(stream))
    stream.close()
    assert torch.equal(torch.get_rng_state(), state)


def test_one_trajectory_for_two_ranks_is_said_in_the_singular(noisy_generated_h5):
    with pytest.raises(ValueError, match="has 1 trajectory, fewer than the 2 ranks"):
        build_loader(noisy_generated_h5(1, TRAJ_LEN, SIZE)[0], batch_size=1, frames=FRAMES,
                     rank=0, world_size=2, kind="torch")


def _damaged_copy(src, tmp_path):
    """A copy of `src` whose third trajectory's frames chunk is overwritten (open_h5 probes
    only the first and last)."""
    path = tmp_path / "damaged.h5"
    shutil.copy(src, path)
    with h5py.File(path, "r") as f:
        info = f["frames"].id.get_chunk_info_by_coord((2, 0, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)
    return path


@pytest.mark.parametrize("kind, workers", [("torch", 0), ("torch", 1), ("gpu-resident", 0)])
def test_damaged_chunk_past_the_probe_is_named(frames_h5, tmp_path, kind, workers):
    """open_h5 probes the first and last trajectory; a damaged chunk in between still gives
    a DataFormatError naming the file and the trajectory (the third: _damaged_copy's) when a
    stream reads it, in one line also from a worker process (torch re-raised it with the
    worker's whole traceback in its message). gpu-resident reads every trajectory at once
    (frames[...]): the error still names the one whose chunk failed."""
    path = _damaged_copy(frames_h5[0], tmp_path)
    hdata.open_h5(str(path)).close()  # passes validation
    want = (f"^{re.escape(str(path))}: truncated or corrupt data "
            r"\(dataset 'frames', trajectory 2: ")
    with pytest.raises(hdata.DataFormatError, match=want) as e:
        stream = build_loader(str(path), batch_size=1, frames=FRAMES, kind=kind,
                              num_workers=workers)
        for _ in zip(range(stream.batches_per_epoch), stream):
            pass
    assert "\n" not in str(e.value)
    release_workers(e)


def test_a_stream_that_met_a_damaged_chunk_ends_its_workers_at_once(frames_h5, tmp_path):
    # torch re-raises a worker's error from frames that hold its iterator, in a cycle through
    # the exception: the workers outlived the error until the cyclic collector ran, then
    # waited out a 5 s join timeout each, wherever that was (a later test, a later run).
    import gc

    path = _damaged_copy(frames_h5[0], tmp_path)
    base = len(multiprocessing.active_children())
    gc.disable()   # no collection may free the iterator: only reference counting
    try:
        stream = build_loader(str(path), batch_size=1, frames=FRAMES, num_workers=1)
        with pytest.raises(hdata.DataFormatError) as e:
            for _ in zip(range(stream.batches_per_epoch), stream):
                assert len(multiprocessing.active_children()) == base + 1
        left = len(multiprocessing.active_children()) - base
    finally:
        gc.enable()
    assert left == 0, str(e.value)


def test_a_loader_on_a_cuda_device_this_machine_lacks_is_named(frames_h5, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kind in ("torch", "gpu-resident", "auto"):
        with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
            build_loader(frames_h5[0], batch_size=1, frames=FRAMES, kind=kind, device="cuda")


def test_gpu_resident_plan_blocks_follow_window_plan_with_no_host_work_per_step(
        frames_h5, monkeypatch):
    # Device-side sampling across upload blocks of 2 epochs: every batch is the float64
    # oracle's, and the host computes plans once per block, never per step.
    import hgan.data.loader as loader
    monkeypatch.setattr(loader, "PLAN_EPOCHS_PER_UPLOAD", 2)
    path, data = frames_h5
    stream = build_loader(path, batch_size=BATCH, frames=FRAMES, seed=5, kind="gpu-resident")
    bpe = stream.batches_per_epoch
    calls = []
    plan = stream.schedule.plan
    monkeypatch.setattr(stream.schedule, "plan", lambda e: calls.append(e) or plan(e))
    for g, batch in zip(range(5 * bpe), stream):         # epochs 0..4: blocks {0,1} {2,3} {4,5}
        ref = oracle(data, g, bpe, seed=5)
        torch.testing.assert_close(batch.double(), ref, rtol=0, atol=2 ** -23)
    assert calls == [0, 1, 2, 3, 4, 5]
    stream.close()


@pytest.mark.parametrize("device, data_bytes, dali, kind", [
    ("cpu", 1, True, "torch"),
    ("cuda", 25, True, "gpu-resident"),       # exactly the fraction still fits
    ("cuda", 26, True, "dali"),
    ("cuda", 26, False, "torch"),
])
def test_auto_kind_keeps_frames_on_the_gpu_when_they_fit(device, data_bytes, dali, kind):
    from hgan.data.loader import RESIDENT_MEMORY_FRACTION, auto_kind
    assert RESIDENT_MEMORY_FRACTION == 0.25
    assert auto_kind(device, data_bytes, dali, device_memory=100) == kind


def test_runs_sharing_the_gpu_share_its_resident_quarter(monkeypatch):
    # 10% of the GPU fits the quarter alone, and for 2 runs (20%), not for 3 (30%): packed or
    # parallel runs would otherwise each take a quarter
    from hgan.data.loader import GPU_RUNS_ENV, auto_kind
    monkeypatch.delenv(GPU_RUNS_ENV, raising=False)
    assert auto_kind("cuda", 10, True, device_memory=100) == "gpu-resident"
    monkeypatch.setenv(GPU_RUNS_ENV, "2")
    assert auto_kind("cuda", 10, True, device_memory=100) == "gpu-resident"
    monkeypatch.setenv(GPU_RUNS_ENV, "3")
    assert auto_kind("cuda", 10, True, device_memory=100) == "dali"
    for bad in ("0", "two"):
        monkeypatch.setenv(GPU_RUNS_ENV, bad)
        with pytest.raises(ValueError, match=f"HGAN_GPU_RUNS='{bad}': expected a positive"):
            auto_kind("cuda", 10, True, device_memory=100)


def test_gpu_resident_uploads_one_epoch_when_one_plan_exceeds_the_window_limit(frames_h5,
                                                                               monkeypatch):
    # A plan longer than PLAN_WINDOWS_PER_UPLOAD (a set of over 2**20 trajectories) still
    # uploads whole epochs, one at a time: not zero epochs per upload (a division by zero).
    import hgan.data.loader as loader
    monkeypatch.setattr(loader, "PLAN_WINDOWS_PER_UPLOAD", 1)
    path, data = frames_h5
    stream = build_loader(path, batch_size=BATCH, frames=FRAMES, seed=3, kind="gpu-resident")
    assert stream.epochs_per_upload == 1
    bpe = stream.batches_per_epoch
    for g, batch in zip(range(2 * bpe), stream):
        torch.testing.assert_close(batch.double(), oracle(data, g, bpe, seed=3), rtol=0,
                                   atol=2 ** -23)
    stream.close()


def test_a_loader_error_releases_the_dataloader_iterator_at_once(frames_h5, tmp_path,
                                                                 monkeypatch):
    # The error's traceback holds the stream's generator frame: holding the DataLoader
    # iterator too, it kept the workers until the cyclic collector ran, each then waiting out
    # a 5 s join timeout wherever that happened (another packed run, a later evaluation).
    import weakref

    import torch.utils.data as tud
    path = _damaged_copy(frames_h5[0], tmp_path)
    made = []
    iterate = tud.DataLoader.__iter__
    monkeypatch.setattr(tud.DataLoader, "__iter__",
                        lambda self: made.append(weakref.ref(it := iterate(self))) or it)
    stream = build_loader(str(path), batch_size=1, frames=FRAMES, kind="torch", num_workers=0)
    with pytest.raises(hdata.DataFormatError) as e:
        for _ in zip(range(stream.batches_per_epoch), stream):
            pass
    assert e.value.__traceback__ is not None and len(made) == 1
    assert made[0]() is None     # freed while the error (and its traceback) is still held


def test_loader_workers_leave_the_group_ignore_sigint_and_die_with_the_parent(frames_h5,
                                                                             monkeypatch):
    # hgan.data.workers: each worker leads a process group of its own (group stop signals do
    # not reach it), ignores SIGINT, keeps SIGTERM's default (its owner's way to end it) and
    # has PR_SET_PDEATHSIG = SIGKILL; the main process keeps its group and handlers.
    import ctypes
    import os
    import signal
    import sys

    import hgan.data.loader as loader
    if not sys.platform.startswith("linux"):
        pytest.skip("process groups and PR_SET_PDEATHSIG as on Linux")

    def probe(self, sample):   # runs in the (forked) worker
        deathsig = ctypes.c_int(-1)
        ctypes.CDLL(None).prctl(2, ctypes.byref(deathsig), 0, 0, 0)   # PR_GET_PDEATHSIG
        return torch.tensor([os.getpid(), os.getpgid(0),
                             signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                             deathsig.value])

    monkeypatch.setattr(loader, "WORKER_START_METHOD", "fork")   # the patches reach it
    monkeypatch.setattr(loader._SampleDataset, "__getitem__", probe)
    monkeypatch.setattr(loader, "to_unit_range", lambda x, channels_last=False: x)
    group, handler = os.getpgid(0), signal.getsignal(signal.SIGINT)
    stream = build_loader(frames_h5[0], batch_size=1, frames=FRAMES, kind="torch",
                          num_workers=1)
    (pid, pgid, sigint_ignored, sigterm_default, deathsig), = next(iter(stream)).tolist()
    stream.close()
    assert pid != os.getpid() and pgid == pid != group
    assert sigint_ignored and sigterm_default and deathsig == signal.SIGKILL
    assert os.getpgid(0) == group and signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize("parent_is_right", [True, False])
def test_a_worker_whose_parent_is_not_its_maker_ends_at_once(parent_is_right):
    # hgan.data.workers.init_worker: a worker whose maker died before PR_SET_PDEATHSIG was
    # armed (it was re-parented, so getppid() is no longer the maker's pid) exits with status
    # 0 rather than read batches for nobody. A forked child plays the worker; reaching the
    # line after the setup exits with 3.
    import sys

    from hgan.data.workers import init_worker
    if not sys.platform.startswith("linux"):
        pytest.skip("process groups and PR_SET_PDEATHSIG as on Linux")

    def worker(maker):
        init_worker(0, parent=maker)
        os._exit(3)

    maker = os.getpid() if parent_is_right else -1   # -1: no process's pid
    child = multiprocessing.get_context("fork").Process(target=worker, args=(maker,))
    child.start()
    child.join(30)
    assert child.exitcode == (3 if parent_is_right else 0)
