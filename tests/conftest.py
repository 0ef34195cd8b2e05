import contextlib
import os
import signal

import pytest
import torch

# CI has no GPU: run the Triton kernels through the interpreter on CPU tensors. This must be
# set before triton.jit decorates anything, hence here, before any test module imports hgan.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# README's test command runs the suite in pytest-xdist workers, about one per core: each takes
# its share of the cores, so that the workers' intra-op threads do not oversubscribe them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

if os.environ.get("PYTEST_XDIST_WORKER") and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # xdist's workers start with SIGINT ignored, and an ignored signal is inherited by every
    # process a test starts: the tests of Ctrl-C handling would see their children ignore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _interpreter_patches_triton_language_once_per_launch():
    """Triton's interpreter (3.x) swaps triton.language's builtins for interpreted ones when
    a kernel launches (restoring them when it ends), and again on every call of a @triton.jit
    helper inside the kernel: inspect.getmembers over tl, tl.tensor and tl.math, ~2 ms a call,
    which was ~40% of the kernel tests' time (the leapfrog kernels call helpers per step and
    per layer). A helper's patch finds the builtins already swapped (a swapped one is no
    longer a builtin, so it is left alone) and re-sets the same stateless replacements, so
    within one launch only the first patch of each set of language modules does anything;
    this skips the others. The kernels run the same interpreted operations either way."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import inspect
    import threading
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    patch, grid_call = (getattr(interpreter, "_patch_lang", None),
                        getattr(getattr(interpreter, "GridExecutor", None), "__call__", None))
    if patch is None or grid_call is None:   # another Triton: leave it as it is
        return
    launch = threading.local()

    class _AlreadyPatched:
        def restore(self):
            pass

    def _patch_lang(fn):
        patched = getattr(launch, "langs", None)
        langs = frozenset(id(v) for v in fn.__globals__.values()
                          if inspect.ismodule(v) and v in (tl, tl.core))
        if patched is None or not langs or not langs <= patched:
            scope = patch(fn)
            if patched is not None:
                launch.langs = patched | langs
            return scope
        return _AlreadyPatched()

    def __call__(self, *args, **kwargs):
        outer, launch.langs = getattr(launch, "langs", None), frozenset()
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            launch.langs = outer

    interpreter._patch_lang, interpreter.GridExecutor.__call__ = _patch_lang, __call__


_interpreter_patches_triton_language_once_per_launch()


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_under_pytest(tmp_path_factory):
    """The temporary files of the suite and of every process it starts (torchrun's
    torchelastic_* folders, multiprocessing's pymp-*, compiler scratch) go under pytest's
    own folder, which keeps the last three runs: the system's temp folder kept hundreds."""
    import tempfile
    folder = tmp_path_factory.mktemp("tmp")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), None
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_pendulum_h5(tmp_path_factory):
    """Path of a small generated pendulum train.h5: 24 trajectories x 40 frames, 32x32, seed 0."""
    from hgan.data import generate_dataset
    out = generate_dataset("pendulum", tmp_path_factory.mktemp("tiny_pendulum"), train=24,
                           test=0, frames=40, seed=0, resolution=32, progress=False)
    return out["train"]


@pytest.fixture
def data_root(tiny_pendulum_h5, tmp_path):
    """A --data directory holding tiny_pendulum_h5 as <root>/pendulum/train.h5."""
    root = tmp_path / "data"
    (root / "pendulum").mkdir(parents=True)
    os.symlink(tiny_pendulum_h5, root / "pendulum" / "train.h5")
    return str(root)


def _exact_bf16(conv):
    """conv in bf16 computed in fp32 and rounded to bf16 after (gradients too): a bf16
    convolution that is right on every CPU. bf16 is either the operands' dtype (explicit
    casts, as hgan.train.cpu_bf16.check runs them) or CPU autocast's (fp32 operands that the
    dispatcher would cast to bf16 below this call)."""
    def run(x, w, *args):
        lowp = torch.bfloat16 in (x.dtype, w.dtype) or (
            torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        if not lowp:
            return conv(x, w, *args)
        with torch.autocast("cpu", enabled=False):
            x, w = x.to(torch.bfloat16).float(), w.to(torch.bfloat16).float()
            args = [a.to(torch.bfloat16).float() if torch.is_tensor(a) else a for a in args]
            return conv(x, w, *args).to(torch.bfloat16)
    return run


@pytest.fixture
def exact_bf16_convolutions(monkeypatch):
    # oneDNN's bf16 convolutions are wrong at some of the tests' tiny shapes on some CPUs
    # (this one's AVX512-BF16 EPYC among them; hgan.train.cpu_bf16), which makes a bf16 test
    # skip there. Tests that are about something else than the kernels' arithmetic (that a
    # compiled bf16 step has no graph breaks, that the check leaves a layer out) run on
    # these stand-ins instead: operands rounded to bf16, products in fp32, result rounded.
    for name in ("conv2d", "conv3d", "conv_transpose2d"):
        monkeypatch.setattr(torch.nn.functional, name,
                            _exact_bf16(getattr(torch.nn.functional, name)))


@pytest.fixture
def one_thread():
    # The test shapes are tiny: on a shared 2-core machine, intra-op threads only add
    # contention (measured: a B=5, 64-frame float64 rollout took 30 s with 2 threads under
    # load, 0.3 s with one). Modules opt in with pytestmark = usefixtures("one_thread").
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_hang():
    """`with no_hang(): ...` fails the test after `seconds` instead of hanging the suite (a
    loop that cannot end, such as an integrator retrying a NaN step forever)."""
    @contextlib.contextmanager
    def guard(seconds=60):
        def stop(*_):
            raise TimeoutError(f"still running after {seconds} s")
        old = signal.signal(signal.SIGALRM, stop)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return guard


@pytest.fixture(scope="session")
def noisy_generated_h5(tmp_path_factory):
    """Factory: a real generated pendulum train.h5 (valid for `open_h5`: attributes, states,
    params) whose frames are overwritten in place with uniform uint8 noise, so that every
    window differs and a wrong index cannot go unnoticed. Returns (path, frames array)."""
    import h5py
    import numpy as np
    from hgan.data import generate_dataset

    made = {}

    def make(n_traj, traj_len, resolution, seed=0):
        key = (n_traj, traj_len, resolution, seed)
        if key not in made:
            root = tmp_path_factory.mktemp("noisy_generated")
            path = generate_dataset("pendulum", root, train=n_traj, test=0, frames=traj_len,
                                    seed=seed, resolution=resolution, progress=False)["train"]
            rng = np.random.default_rng(seed + 5)
            data = rng.integers(0, 256, (n_traj, traj_len, resolution, resolution, 3), np.uint8)
            data[0, 0, 0, 0] = (0, 255, 128)  # both ends of the range appear
            with h5py.File(path, "a") as f:
                f["frames"][...] = data
            made[key] = (path, data)
        return made[key]

    return make


# Each way open_h5 rejects a file (tests/test_data_format.py), applied to a copy of a valid one.
CORRUPTIONS = ("missing_file", "junk", "truncated_header", "truncated_data", "version",
               "incomplete", "system", "no_frames", "no_color_index", "no_param", "states_shape",
               "frames_shape", "frames_dtype", "frames_datatype")


@pytest.fixture(params=CORRUPTIONS)
def corrupt_h5(request, tiny_pendulum_h5, tmp_path):
    """Parametrized over CORRUPTIONS: the path of a copy of tiny_pendulum_h5 broken that way."""
    import shutil

    import h5py
    import numpy as np

    def make(case, src):
        path = tmp_path / f"{case}.h5"
        if case == "missing_file":
            return str(path)
        if case == "junk":
            path.write_bytes(b"not an hdf5 file at all" * 100)
            return str(path)
        shutil.copy(src, path)
        if case.startswith("truncated"):
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.truncate(int(size * (0.3 if case == "truncated_header" else 0.97)))
            return str(path)
        with h5py.File(path, "a") as f:
            if case == "version":
                f.attrs["format_version"] = 99
            elif case == "incomplete":
                f.attrs["complete"] = False
            elif case == "system":
                f.attrs["system"] = "pendulum_x"
            elif case == "no_frames":
                del f["frames"]
            elif case == "no_color_index":
                del f["color_index"]
            elif case == "no_param":
                del f["params/" + sorted(f["params"])[0]]
            elif case == "states_shape":
                shape = f["states"].shape
                del f["states"]
                f.create_dataset("states", shape[:-1] + (shape[-1] + 1,), np.float32)
            elif case == "frames_shape":
                shape = f["frames"].shape
                del f["frames"]
                f.create_dataset("frames", shape[:2] + (8, 8, 3), np.uint8)
            elif case == "frames_datatype":  # a link that now names a type, not data
                del f["frames"]
                f["frames"] = np.dtype("u1")
            elif case == "frames_dtype":
                data = f["frames"][()].astype(np.float32)
                del f["frames"]
                f.create_dataset("frames", data=data)
            else:
                raise ValueError(f"unknown corruption {case!r}")
        return str(path)

    return make(request.param, tiny_pendulum_h5)


def pytest_collection_modifyitems(config, items):
    # bench/gpu/cuda_tests.sh runs `pytest -m cuda` in a GPU session of minutes: a test that
    # skips without CUDA but lacks the mark would run on no machine at all.
    for item in items:
        for mark in item.iter_markers("skipif"):
            reason = str(mark.kwargs.get("reason", ""))
            if (("CUDA" in reason or "GPU" in reason) and "interpreter" not in reason
                    and item.get_closest_marker("cuda") is None):
                raise pytest.UsageError(f"{item.nodeid} is skipped without CUDA but has no "
                                        "@pytest.mark.cuda: cuda_tests.sh would never run it")
