"""The capture protocol of hgan.train.capture.StaticStep, on CPU: stand-ins for torch.cuda's
streams and graphs record what the step does around its two updates (the arithmetic of those
updates is tests/test_train_capture.py's, against the eager step and a hand-written one)."""
import pytest
import torch

from hgan.train import capture as hcapture
from hgan.train.loop import Trainer
from test_train_capture import batches, params, run, small_cfg, static_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class _FakeCuda:
    """Stand-ins for the torch.cuda calls of hgan.train.capture, recording what it does.

    A stand-in capture runs its body (a real capture would record it without running it)
    and a replay runs nothing; the calls are checked against torch.cuda.graph's own
    signature, so the test sees the protocol (warm-up on a side stream, two captures sharing
    one pool on that stream, the noise generator registered with both, replays in order
    after the batch is in the static buffer), not the arithmetic."""

    def __init__(self, monkeypatch, fail_capture=None):
        import inspect
        fake = self
        self.log, self.graphs, self.fail_capture = [], [], fail_capture
        self.trainer = None
        signature = inspect.signature(torch.cuda.graph)

        class Stream:
            def __init__(self, name):
                self.name = name

            def wait_stream(self, other):
                fake.log.append(("wait", self.name, other.name))

            def __repr__(self):
                return f"Stream({self.name})"

        self.Stream = Stream
        self.devices = []                 # the torch.cuda.device contexts entered

        class device_ctx:
            def __init__(self, d):
                self.d = str(d)

            def __enter__(self):
                fake.devices.append(self.d)

            def __exit__(self, *exc):
                fake.devices.pop()
                return False
        self.default = Stream("default")
        self.current = [self.default]

        class Graph:
            def __init__(self):
                self.index, self.generators, self.captured = len(fake.graphs), [], None
                fake.graphs.append(self)

            def register_generator_state(self, generator):
                assert self.captured is None, "registered after its capture"
                # torch allocates the generator's graph-safe state on the current device
                assert fake.devices[-1:] == [str(fake.trainer.device)], \
                    f"registered on device {fake.devices[-1:]}, not the run's"
                self.generators.append(generator)

            def pool(self):
                return ("pool of", self.index)

            def replay(self):
                fake.log.append(("replay", self.index, fake.trainer.static.real.clone(),
                                 hcapture.CAPTURE_LOCK._is_owned()))

        class graph:
            def __init__(self, *args, **kw):
                bound = signature.bind(*args, **kw)    # a wrong argument fails here
                bound.apply_defaults()
                self.args = dict(bound.arguments)
                self.cuda_graph = self.args["cuda_graph"]

            def __enter__(self):
                g = self.cuda_graph
                if fake.fail_capture == g.index:
                    raise RuntimeError("operation not permitted when stream is capturing")
                g.captured = {k: v for k, v in self.args.items() if k != "cuda_graph"}
                g.captured["locked"] = hcapture.CAPTURE_LOCK._is_owned()
                fake.current.append(self.args["stream"])
                fake.log.append(("capture", g.index))

            def __exit__(self, *exc):
                fake.current.pop()
                fake.log.append(("end", self.cuda_graph.index))
                return False

        class stream_ctx:
            def __init__(self, s):
                self.s = s

            def __enter__(self):
                fake.current.append(self.s)

            def __exit__(self, *exc):
                fake.current.pop()
                return False

        for name, value in (("current_stream", lambda device=None: self.current[-1]),
                            ("default_stream", lambda device=None: self.default),
                            ("Stream", lambda device=None: Stream(f"side{len(self.log)}")),
                            ("stream", stream_ctx), ("CUDAGraph", Graph), ("graph", graph),
                            ("device", device_ctx)):
            monkeypatch.setattr(torch.cuda, name, value)


def _graph_trainer(fake, monkeypatch, cfg=None):
    """A CPU trainer in "graph" mode whose updates log the stream they run on and whether they
    hold the capture lock."""
    t = Trainer(cfg or small_cfg(), device="cpu")
    t.static_mode = "graph"
    fake.trainer = t
    for name in ("_d_update", "_g_update"):
        def spy(*a, _real=getattr(t, name), _name=name):
            fake.log.append((_name, fake.current[-1].name, hcapture.CAPTURE_LOCK._is_owned()))
            return _real(*a)
        monkeypatch.setattr(t, name, spy)
    return t


def test_the_step_is_warmed_up_captured_once_and_replayed_in_order(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    n = hcapture.WARMUP_STEPS
    data = batches(n + 3)
    t = _graph_trainer(fake, monkeypatch)
    eager = Trainer(small_cfg(), device="cpu")
    run(eager, data[:n])
    outs = []
    for i, real in enumerate(data):
        fake.log.clear()
        outs.append(t.step(real))
        t.iteration += 1
        if i == 0:
            side = t.static.stream.name
            assert side != "default"                 # its own side stream to capture on
        if i < n:   # warm-up: an ordinary step on the side stream, under the lock
            assert fake.graphs == []
            assert fake.log == [("wait", side, "default"), ("_d_update", side, True),
                                ("_g_update", side, True), ("wait", "default", side)]
        elif i == n:   # capture of the D then the G update, then this iteration's replays
            d, g = fake.graphs
            assert d.generators == [t.noise] and g.generators == [t.noise]
            keys = ("pool", "stream", "capture_error_mode", "locked")   # (2.11 has no more)
            assert {k: d.captured[k] for k in keys} == dict(
                pool=None, stream=t.static.stream, capture_error_mode="thread_local",
                locked=True)
            assert g.captured == {**d.captured, "pool": d.pool()}   # one pool for both
            kinds = [e[:2] for e in fake.log]
            assert kinds == [("capture", 0), ("_d_update", side), ("end", 0), ("capture", 1),
                             ("_g_update", side), ("end", 1), ("replay", 0), ("replay", 1)]
        else:   # replays only
            assert [e[:2] for e in fake.log] == [("replay", 0), ("replay", 1)]
        if i >= n:   # each replay after its batch reached the static buffer, without the lock
            for e in fake.log[-2:]:
                assert torch.equal(e[2], real) and not e[3]
            assert {k: id(v) for k, v in outs[-1].items()} == \
                {k: id(v) for k, v in t.static.out.items()}   # the graphs' static outputs
        if i == n - 1:   # the warm-up steps are training steps: the eager step's
            for k, v in params(eager).items():
                torch.testing.assert_close(params(t)[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert len(fake.graphs) == 2 and sorted(outs[-1]) == sorted(outs[0])
    t.static.release()
    assert t.static.graphs is None and t.static.out is None


def test_a_packed_run_captures_on_its_own_stream(monkeypatch):
    # torch hands out pool streams round robin: a run already on a stream of its own
    # (hgan.train.pack) warms up and captures there, not on another pool stream.
    fake = _FakeCuda(monkeypatch)
    own = fake.Stream("run-3")
    fake.current.append(own)
    t = _graph_trainer(fake, monkeypatch)
    for real in batches(hcapture.WARMUP_STEPS + 1):
        t.step(real)
        t.iteration += 1
    assert t.static.stream is own
    assert [g.captured["stream"] for g in fake.graphs] == [own, own]


def test_the_graphs_keep_what_they_read_and_hand_out_their_metrics_in_a_new_dict(monkeypatch):
    # The G graph reads the D graph's outputs (the fakes) at every replay: they must outlive
    # the capture. And a caller that changes the metrics it got must not change the graphs'
    # static outputs, which the next replay hands out again.
    import gc
    import weakref
    fake = _FakeCuda(monkeypatch)
    t = _graph_trainer(fake, monkeypatch)
    read, spy = [], t._g_update

    def g_update(d, *a):
        if len(fake.graphs) == 2:                 # the capture of the G update
            read.append(weakref.ref(d["fake_img"]))
        return spy(d, *a)
    monkeypatch.setattr(t, "_g_update", g_update)
    keys = None
    for real in batches(hcapture.WARMUP_STEPS + 3):
        out = t.step(real)
        t.iteration += 1
        keys = keys or sorted(out)
        assert sorted(out) == keys
        out.clear()
    gc.collect()
    assert len(read) == 1 and read[0]() is not None


@pytest.mark.parametrize("which", [0, 1])
def test_a_failed_capture_raises_capture_failed_and_stops_the_process(monkeypatch, which):
    fake = _FakeCuda(monkeypatch, fail_capture=which)
    t = _graph_trainer(fake, monkeypatch)
    data = batches(hcapture.WARMUP_STEPS + 1)
    try:
        for real in data[:-1]:
            t.step(real)
        assert not hcapture.CAPTURE_FAILED.is_set()
        with pytest.raises(hcapture.CaptureFailed, match="train with --no-cuda-graph, in a new "
                                                         "process"):
            t.step(data[-1])
        assert hcapture.CAPTURE_FAILED.is_set()     # hgan.train.pack's other runs stop
        assert t.static.graphs is None
        assert not hcapture.CAPTURE_LOCK._is_owned()
    finally:
        hcapture.CAPTURE_FAILED.clear()


def test_a_configuration_that_captures_builds_capturable_adams_and_the_graph_step(monkeypatch):
    # Capturing Adam.step needs capturable=True (step counters on the device); CPU stands in
    # for a CUDA device whose configuration has no fallback reason.
    monkeypatch.setattr(hcapture, "fallback_reason", lambda *a, **kw: None)
    t = Trainer(small_cfg(), device="cpu")
    assert t.captured and t.static_mode == "graph"
    for opt in (t.opt_g, t.opt_di, t.opt_dv):
        assert opt.param_groups[0]["capturable"]
        assert opt.param_groups[0]["fused"] is (True if hcapture.ADAM_FUSED else None)


def _record_read(reads, name):
    """Append (name, where) to `reads` unless the read is torch.optim's eager Adam's."""
    import traceback
    stack = traceback.extract_stack()[:-2]
    if not any("/torch/optim/" in f.filename for f in stack):
        reads.append((name, [f"{f.filename}:{f.lineno}" for f in stack[-4:]]))


class _NoHostReads(torch.overrides.TorchFunctionMode):
    """Records every read of a tensor's value on the host (a device sync on CUDA, which a
    capture cannot contain), except those of torch.optim's eager Adam: on CUDA the Adams are
    capturable and keep their step counters on the device."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__,
             torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
             torch.Tensor.nonzero, torch.nonzero, torch.Tensor.numpy, torch.Tensor.cpu,
             torch.masked_select, torch.Tensor.masked_select, torch.unique}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            _record_read(self.reads, func.__name__)
        return func(*args, **(kwargs or {}))


class _NoHostReadsAten(torch.utils._python_dispatch.TorchDispatchMode):
    """The same at the operator level, where the reads of torch's composite operators and
    backward formulas show too, and an index by a boolean mask (`__getitem__` to
    _NoHostReads); again except torch.optim's eager Adam."""

    READS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "unique",
             "_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"}
    INDEXES = {"index", "index_put", "index_put_", "_index_put_impl_"}   # (self, indices, ...)

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        # repeat_interleave reads the host only without output_size; an index by a boolean
        # mask runs nonzero inside its kernel, below this recorder
        if (name in self.READS and not (name == "repeat_interleave" and
                                        (kwargs or {}).get("output_size") is not None)
                or name in self.INDEXES and len(args) > 1
                and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                        for i in args[1])):
            _record_read(self.reads, str(func))
        return func(*args, **(kwargs or {}))


def _host_reads_of_a_static_step(trainer):
    """What the graphs would record: the step after the first (which sets up the static
    buffer and the non-finite record), under both recorders."""
    data = batches(2)
    trainer.step(data[0])
    with _NoHostReads() as mode, _NoHostReadsAten() as aten:
        trainer.step(data[1])
    return mode.reads + aten.reads


@pytest.mark.parametrize("change", [dict(), dict(model="mocogan"),
                                    dict(integrator="reference", channels_last=True),
                                    dict(model="hnn_gan", motion_dim=20),
                                    dict(model="mocogan", gru_input="noise")])
def test_the_static_step_reads_nothing_on_the_host(change):
    # The D and G updates with the non-finite record and the statistics, forward and backward.
    assert _host_reads_of_a_static_step(static_trainer(small_cfg(**change))) == []


def test_the_host_read_recorders_see_a_read_hidden_in_an_index(monkeypatch):
    # The recorders above can fail: a boolean-mask index (a nonzero inside torch's index
    # kernel) put into the D loss is seen by the operator-level one.
    from hgan.train import loop as hloop
    t = static_trainer(small_cfg())
    d_loss = hloop.d_loss
    monkeypatch.setattr(hloop, "d_loss", lambda real, fake: d_loss(real[real == real], fake))
    reads = _host_reads_of_a_static_step(t)
    ops = {r[0].split(".")[1] for r in reads}
    # the forward's index and its backward's index_put (by the same mask)
    assert "index" in ops and ops - {"index"} and ops <= {"index", "index_put", "index_put_",
                                                          "_index_put_impl_"}, reads
