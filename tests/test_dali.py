"""The DALI stream (CPU operators here) yields exactly the torch stream's batches, and a bad
file fails it with open_h5's own error."""
import gc
import re
import shutil
import weakref

import pytest
import torch

import hgan.data as hdata

pytest.importorskip("nvidia.dali", reason="DALI extra not installed (pip install -e '.[dali]')")
if not hasattr(hdata, "window_plan"):
    pytest.skip("hgan.data.window_plan is not available yet", allow_module_level=True)

from hgan.data import dali  # noqa: E402
from hgan.data.loader import build_loader  # noqa: E402

BATCH, FRAMES = 2, 4


@pytest.fixture(scope="module")
def frames_h5(noisy_generated_h5):
    """A generated (open_h5-valid) file, 12 trajectories x 16 frames of 8x8 noise."""
    return noisy_generated_h5(12, 16, 8, seed=11)[0]


def take(path, n, kind, **kw):
    stream = build_loader(path, batch_size=BATCH, frames=FRAMES, kind=kind, **kw)
    out = [b.clone() for _, b in zip(range(n), stream)]
    stream.close()
    return stream, out


@pytest.mark.parametrize("rank, start_batch", [(0, 0), (1, 0), (0, 4), (1, 7)])
def test_dali_equals_torch_over_epochs_shards_and_resume(frames_h5, rank, start_batch):
    kw = dict(seed=7, rank=rank, world_size=2, start_batch=start_batch)
    ref_stream, ref = take(frames_h5, 9, "torch", num_workers=0, **kw)
    # Several epochs: 9 batches span more than two epochs of a shard.
    assert ref_stream.batches_per_epoch * 2 < 9
    stream, got = take(frames_h5, 9, "dali", num_workers=2, **kw)
    assert stream.kind == "dali" and stream.position == start_batch + 9
    assert len(got) == len(ref) == 9
    for g, (x, y) in enumerate(zip(ref, got)):
        assert y.shape == x.shape and y.dtype == torch.float32 and y.is_contiguous()
        assert torch.equal(x, y), f"batch {start_batch + g} differs"


def test_dali_without_workers_matches_too(frames_h5):
    _, ref = take(frames_h5, 4, "torch", num_workers=0)
    stream, got = take(frames_h5, 4, "dali", num_workers=0)
    assert len(got) == len(ref) == 4 and stream.position == 4   # an empty stream would pass zip
    assert all(torch.equal(x, y) for x, y in zip(ref, got))


def test_dali_channels_last_matches_torch(frames_h5):
    _, ref = take(frames_h5, 3, "torch", num_workers=0)
    stream, got = take(frames_h5, 3, "dali", num_workers=1, channels_last=True)
    assert len(got) == len(ref) == 3 and stream.position == 3   # an empty stream would pass zip
    for x, y in zip(ref, got):
        assert torch.equal(x, y)
        assert y.transpose(1, 2).is_contiguous(memory_format=torch.channels_last_3d)


def test_iterating_again_releases_the_previous_pipeline_and_continues(frames_h5):
    _, ref = take(frames_h5, 5, "torch", num_workers=0)
    stream = build_loader(frames_h5, batch_size=BATCH, frames=FRAMES, kind="dali",
                          num_workers=0)
    first = iter(stream)
    got = [next(first).clone() for _ in range(2)]
    old = weakref.ref(stream._pipe)
    second = iter(stream)
    gc.collect()
    # the suspended first iterator kept the old pipeline alive until it was collected
    assert old() is None and first is not None
    got += [next(second).clone() for _ in range(3)]
    assert len(got) == 5 and all(torch.equal(x, y) for x, y in zip(ref, got))
    current = weakref.ref(stream._pipe)
    stream.close()
    gc.collect()
    assert current() is None


def test_available_reports_import():
    assert dali.available()


def test_without_dali_the_dali_kind_says_how_to_install_it(frames_h5, monkeypatch):
    monkeypatch.setattr(dali, "_IMPORT_ERROR", ImportError("No module named 'nvidia.dali'"))
    assert not dali.available()
    with pytest.raises(ValueError, match=re.escape("needs NVIDIA DALI, the dali extra: pip "
                                                   "install -e '.[dali]' (No module named")):
        build_loader(frames_h5, batch_size=BATCH, frames=FRAMES, kind="dali", num_workers=0)


def test_dali_reads_with_as_many_worker_processes_as_asked(frames_h5, monkeypatch):
    # num_workers reader processes, none of them this one: the parallel reads are the
    # point of the DALI stream.
    import os

    import numpy as np

    from hgan.data import stream as hstream

    def pid_frames(self, sample):   # each sample says which process read it
        pid = os.getpid()
        return np.broadcast_to(np.array([pid & 255, pid >> 8 & 255, pid >> 16 & 255],
                                        np.uint8), (FRAMES, 8, 8, 3)).copy()

    monkeypatch.setattr(hstream.WindowReader, "__call__", pid_frames)
    stream = build_loader(frames_h5, batch_size=BATCH, frames=FRAMES, kind="dali",
                          num_workers=2)
    pids = set()
    for _, b in zip(range(8), stream):
        px = torch.round(b[:, 0, :, 0, 0] * 127.5 + 127.5).long()     # [B, 3 channels]
        pids.update((px[:, 0] + (px[:, 1] << 8) + (px[:, 2] << 16)).tolist())
    stream.close()
    assert len(pids) == 2 and os.getpid() not in pids


def test_dali_corrupt_file_raises_the_open_h5_error(corrupt_h5):
    with pytest.raises(hdata.DataFormatError) as want:
        hdata.open_h5(corrupt_h5)
    with pytest.raises(hdata.DataFormatError) as got:
        build_loader(corrupt_h5, batch_size=1, frames=FRAMES, kind="dali", num_workers=2)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dali_file_replaced_under_a_running_stream_is_named(noisy_generated_h5, tmp_path,
                                                            num_workers):
    # Each external_source worker opens and validates its own handle; DALI's wrapped worker
    # exception comes back as the DataFormatError it was.
    path = tmp_path / "train.h5"
    shutil.copy(noisy_generated_h5(12, 16, 8, seed=11)[0], path)
    stream = build_loader(str(path), batch_size=BATCH, frames=FRAMES, kind="dali",
                          num_workers=num_workers)
    shutil.copy(noisy_generated_h5(14, 16, 8, seed=11)[0], path)
    with pytest.raises(hdata.DataFormatError) as e:
        next(iter(stream))
    stream.close()
    # The whole message, as open_checked words it: not the worker's traceback, nor its
    # trailing newline (which a `$` in a match lets through).
    assert str(e.value) == (f"{path}: frames are (14, 16, 8, 8, 3) now but were "
                            "(12, 16, 8, 8, 3) when the loader was built; the file was "
                            "replaced while in use")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dali_sources_set_up_their_workers_and_leave_the_main_process_alone(frames_h5,
                                                                           monkeypatch,
                                                                           num_workers):
    # hgan.data.workers via WorkerInit.once: a parallel source's worker leads its own process
    # group, ignores SIGINT and dies with its parent; without workers the source runs in the
    # main process, whose group and SIGINT handler must stay as they were.
    import ctypes
    import os
    import signal
    import sys

    import numpy as np

    from hgan.data import stream as hstream
    if not sys.platform.startswith("linux"):
        pytest.skip("process groups and PR_SET_PDEATHSIG as on Linux")

    def state():
        deathsig = ctypes.c_int(-1)
        ctypes.CDLL(None).prctl(2, ctypes.byref(deathsig), 0, 0, 0)   # PR_GET_PDEATHSIG
        return (1 * (os.getpgid(0) == os.getpid())
                + 2 * (signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
                + 4 * (deathsig.value == signal.SIGKILL))

    def probe(self, sample):
        return np.full((FRAMES, 8, 8, 3), state(), np.uint8)

    monkeypatch.setattr(hstream.WindowReader, "__call__", probe)
    if not num_workers:   # a worker's setup run here would end pytest itself, with status 0
        def no_exit(code):
            raise AssertionError(f"the main process ran a worker's setup (os._exit({code}))")
        monkeypatch.setattr(os, "_exit", no_exit)
    # pytest started in the background of a script inherits SIGINT ignored, and may or may not
    # lead its group: the main process's own state is the expectation, with SIGINT handled so
    # that a setup ignoring it there would show.
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        group, handler, main_state = os.getpgid(0), signal.getsignal(signal.SIGINT), state()
        stream = build_loader(frames_h5, batch_size=BATCH, frames=FRAMES, kind="dali",
                              num_workers=num_workers)
        flags = torch.round(next(iter(stream)) * 127.5 + 127.5).unique().tolist()
        stream.close()
        after = os.getpgid(0), signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, saved)
    assert main_state & 2 == 0
    assert flags == ([7.0] if num_workers else [float(main_state)])
    assert after[0] == group and after[1] is handler
