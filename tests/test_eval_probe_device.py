"""The physics probe trains and reads on the evaluation device (frames moved there once)."""
import numpy as np
import pytest
import torch

from hgan.data import open_h5
from hgan.evaluate import probe

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(h5, device, steps=30):
    ds = open_h5(h5)
    return ds, probe.train_probe(ds.frames[:8], ds.states[:8], angular=(0,), steps=steps,
                                 batch_size=16, width=4, progress=False, device=device)


def test_states_do_not_depend_on_the_batch_split(tiny_pendulum_h5):
    ds, pr = _fit(tiny_pendulum_h5, "cpu")
    videos = np.asarray(ds.frames[8:11, :7])  # 3 videos x 7 frames: 18 pairs
    whole = pr.states(videos)
    odd = pr.states(videos, batch_size=5)  # 18 pairs in batches 5, 5, 5, 3
    assert whole.shape == (3, 6, 2) and whole.dtype == np.float64
    np.testing.assert_allclose(odd, whole, rtol=1e-5, atol=1e-6)
    # Pair k of video n is frames (k, k + 1): the same as probing that pair alone.
    one = pr.states(videos[1:2, 3:5])
    np.testing.assert_allclose(one[0, 0], whole[1, 3], rtol=1e-5, atol=1e-6)


def test_cached_probe_loads_onto_the_requested_device(tiny_pendulum_h5, tmp_path,
                                                      monkeypatch):
    import shutil
    path = tmp_path / "train.h5"
    shutil.copy(tiny_pendulum_h5, path)
    ds = open_h5(path)
    kw = dict(angular=(0,), steps=5, width=4, batch_size=8, progress=False)
    first = probe.load_or_train_probe(str(path), ds.frames, ds.states, device="cpu", **kw)
    assert not list(tmp_path.glob("*.partial"))  # written atomically, no temporary left

    def no_training(*args, **kwargs):
        raise AssertionError("the cached probe was trained again")
    monkeypatch.setattr(probe, "train_probe", no_training)
    again = probe.load_or_train_probe(str(path), ds.frames, ds.states, device="cpu", **kw)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # a cache hit is moved to the device asked for ("meta" stands in for a GPU here)
    moved = probe.load_or_train_probe(str(path), ds.frames, ds.states, device="meta", **kw)
    assert {t.device.type for t in moved.state_dict().values()} == {"meta"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probe_trains_on_cuda_and_matches_its_cpu_reading(tiny_pendulum_h5):
    ds, pr = _fit(tiny_pendulum_h5, "cuda", steps=60)
    assert all(p.device.type == "cuda" for p in pr.parameters())
    videos = np.asarray(ds.frames[8:12, :6])
    on_gpu = pr.states(videos)
    on_cpu = pr.cpu().states(videos)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)  # cuDNN convs use TF32
    err = probe.wrap_angles(on_cpu - np.asarray(ds.states[8:12, :5], np.float64), (0,))
    assert np.isfinite(err).all()


def test_a_probe_cache_write_that_fails_leaves_nothing_behind(tiny_pendulum_h5, tmp_path,
                                                              monkeypatch):
    # A stop while the cache is saved: no cache (the next evaluation trains again) and no
    # temporary file (it was left beside the data for good).
    import shutil
    path = tmp_path / "train.h5"
    shutil.copy(tiny_pendulum_h5, path)
    ds = open_h5(path)
    save = torch.save

    def interrupted(obj, f, *a, **kw):
        save(obj, f, *a, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe.load_or_train_probe(str(path), ds.frames, ds.states, device="cpu", angular=(0,),
                                  steps=5, width=4, batch_size=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]
