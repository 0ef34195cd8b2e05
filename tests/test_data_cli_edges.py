"""`python -m hgan.data` at its edges: stop signals, resolutions, directories, --help, plurals."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hgan.data.cli import build_parser, main

# Far more than can be written before the signal: the run is always stopped mid-split.
_GENERATE = ["generate", "--system", "pendulum", "--train", "100000", "--test", "0",
             "--frames", "64"]
# The library path (what train.py calls), reporting what reached it.
_LIBRARY = """
import sys
from hgan.data import GenerationInterrupted, generate_dataset
try:
    generate_dataset("pendulum", sys.argv[1], train=100000, test=0, frames=64, progress=False)
except GenerationInterrupted as e:
    print("interrupted", e.signum)
    sys.exit(3)
"""


def _stop_once_partial_exists(cmd, out, sig, split="train"):
    partial = os.path.join(out, "pendulum", split + ".h5.partial")
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default; a test runner
    # started in the background may have left it ignored, which the child would inherit.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(partial):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no .partial file appeared"
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr, partial


def test_stop_during_a_split_never_leaves_train_without_test(tmp_path):
    # train.py trains on train.h5 whenever it exists; evaluation then needs test.h5.
    cmd = [sys.executable, "-m", "hgan.data", "generate", "--system", "pendulum", "--train",
           "2", "--test", "100000", "--frames", "64", "--out", str(tmp_path)]
    rc, _, err, partial = _stop_once_partial_exists(cmd, tmp_path, signal.SIGINT, "test")
    assert rc == 128 + signal.SIGINT, err
    assert not os.path.exists(partial)
    assert not os.path.exists(os.path.join(tmp_path, "pendulum", "train.h5"))
    assert os.listdir(tmp_path) == []   # nor the pendulum/ folder it made for them


@pytest.mark.parametrize("sig, test", [(signal.SIGINT, 0), (signal.SIGTERM, 2)])
def test_cli_stop_signal_removes_partial_and_says_one_line(tmp_path, sig, test):
    argv = [*_GENERATE, "--out", str(tmp_path)]
    argv[argv.index("--test") + 1] = str(test)
    rc, _, err, partial = _stop_once_partial_exists(
        [sys.executable, "-m", "hgan.data"] + argv, tmp_path, sig)
    assert rc == 128 + sig, err
    assert "Traceback" not in err
    kept = (f"; {tmp_path}/pendulum/test.h5 written complete, {tmp_path}/pendulum/train.h5 "
            "not written") if test else ""  # the test split comes first
    assert err.rstrip().splitlines()[-1] == f"hgan.data: generation interrupted{kept}"
    assert not os.path.exists(partial)
    assert not os.path.exists(partial[:-len(".partial")])
    # the folder it made goes too, unless it holds the split that was finished
    assert os.listdir(tmp_path) == (["pendulum"] if test else [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_generation_function_cleans_up_and_raises_with_the_signal(tmp_path, sig):
    out_dir = tmp_path / "new" / "data"      # two folders the writer makes
    rc, out, err, partial = _stop_once_partial_exists(
        [sys.executable, "-c", _LIBRARY, str(out_dir)], out_dir, sig)
    assert (rc, out.strip()) == (3, f"interrupted {int(sig)}"), err
    assert not os.path.exists(partial)
    assert os.listdir(tmp_path) == []        # and unmakes, as the message promises


def test_a_set_stop_event_ends_generation_in_a_thread_without_a_partial_file(tmp_path):
    # Off the main thread no signal arrives: a caller (the experiments grid) stops it so.
    import threading

    from hgan.data import GenerationInterrupted
    from hgan.data.generate import generate_split
    path, stop, raised = tmp_path / "train.h5", threading.Event(), []

    def work():
        try:
            generate_split("pendulum", str(path), "train", 100_000, frames=64, seed=0,
                           progress=False, stop_event=stop)
        except GenerationInterrupted as e:
            raised.append(e)
    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 60
    while thread.is_alive() and not os.path.exists(f"{path}.partial") \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    # the stop comes while the partial file is there: its removal is what is checked below
    assert os.path.exists(f"{path}.partial"), "generation ended or never wrote its partial file"
    stop.set()
    thread.join(60)
    assert not thread.is_alive() and len(raised) == 1
    assert not os.path.exists(f"{path}.partial") and not os.path.exists(path)


def _one_line_error(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("hgan.data: error:"), err
    return err


@pytest.mark.parametrize("res", ["1", "4", "7", "8", "33", "40", "1000"])
def test_generate_refuses_resolutions_the_models_cannot_take(res, capsys, tmp_path):
    err = _one_line_error(["generate", "--system", "pendulum", "--resolution", res,
                           "--train", "1", "--test", "0", "--frames", "2",
                           "--out", str(tmp_path)], capsys)
    assert f"unsupported resolution {res}" in err
    assert not os.listdir(tmp_path)


def test_generate_resolutions_are_exactly_the_models_ones():
    from hgan.models.config import resolution_plan

    def models_take(r):
        try:
            resolution_plan(r)
            return True
        except ValueError:
            return False

    parser = build_parser()

    def generate_takes(r):
        try:
            parser.parse_args(["generate", "--system", "pendulum", "--resolution", str(r)])
            return True
        except SystemExit:
            return False

    for r in range(1, 200):
        assert generate_takes(r) == models_take(r), r
    assert {16, 24, 32, 48, 64, 96} <= {r for r in range(1, 200) if generate_takes(r)}


def test_show_on_a_directory_names_it_and_the_files_inside(tmp_path, capsys):
    (tmp_path / "pendulum").mkdir()
    (tmp_path / "pendulum" / "train.h5").write_bytes(b"")
    err = _one_line_error(["show", str(tmp_path), "--out", str(tmp_path / "s.png")], capsys)
    assert "is a directory" in err and "corrupt" not in err
    assert str(tmp_path / "pendulum" / "train.h5") in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_line_error(["show", str(empty), "--out", str(tmp_path / "s.png")], capsys)
    assert "is a directory" in err and "did you mean" not in err


def test_generate_help_shows_every_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    # One entry per option: its flag line and the help lines indented below it.
    entries = {e.split()[0]: " ".join(e.split())
               for e in re.split(r"\n(?=  -)", capsys.readouterr().out) if e.startswith("  -")}
    want = {"--train": "1000", "--test": "200", "--frames": "256", "--seed": "0",
            "--out": "data", "--resolution": "32"}
    for flag, default in want.items():
        assert f"(default: {default})" in entries[flag], entries[flag]
    assert "pendulum" in entries["--system"] and "required" in entries["--system"]


def test_one_trajectory_is_singular(tmp_path, capsys):
    from hgan.data import generate_dataset
    generate_dataset("pendulum", tmp_path, train=1, test=0, frames=2, progress=True)
    text = "".join(capsys.readouterr())
    assert "1 trajectory," in text and "trajectories" not in text


def test_window_plan_error_is_singular_for_one_trajectory():
    from hgan.data import window_plan
    with pytest.raises(ValueError, match="1 trajectory cannot be shared by 2 ranks"):
        window_plan(1, 4, 2, seed=0, epoch=0, rank=0, world_size=2)


# StopSignals in-process, each rule of its docstring on its own: which handlers it takes
# over, what a signal does where, and what `check()` and `result()` raise.

@pytest.fixture
def saved_handlers():
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def _frame_in(folder):
    """A frame whose code reads as written in `folder`, as a handler would find it there."""
    ns = {}
    exec(compile("import sys\nframe = sys._getframe()", os.path.join(folder, "x.py"), "exec"),
         ns)
    return ns["frame"]


def test_stop_signals_take_over_defaults_and_raise_interrupted_and_give_them_back(
        saved_handlers):
    from hgan.data.interrupt import StopSignals, raise_interrupted
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_interrupted)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is raise_interrupted


def test_stop_signals_leave_an_ignored_or_a_callers_handler_alone(saved_handlers):
    from hgan.data.interrupt import StopSignals

    def callers(signum, frame):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # nohup
    signal.signal(signal.SIGTERM, callers)         # a trainer's stop flag
    with StopSignals():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is callers


def test_a_signal_outside_the_package_is_recorded_and_the_first_one_wins():
    from hgan.data.interrupt import GenerationInterrupted, StopSignals
    stop = StopSignals()
    stop._handle(signal.SIGTERM, None)             # no frame: nothing to raise in
    stop._handle(signal.SIGINT, _frame_in(os.path.dirname(__file__)))  # not hgan/data: recorded
    assert stop.signum == signal.SIGTERM           # the second changes nothing
    with pytest.raises(GenerationInterrupted) as e:
        stop.check()
    assert e.value.signum == signal.SIGTERM


def test_a_signal_inside_the_package_raises_at_once():
    import hgan.data
    from hgan.data.interrupt import GenerationInterrupted, StopSignals
    here = os.path.dirname(os.path.abspath(hgan.data.__file__))
    stop = StopSignals()
    with pytest.raises(GenerationInterrupted) as e:
        stop._handle(signal.SIGTERM, _frame_in(here))
    assert e.value.signum == signal.SIGTERM and stop.signum == signal.SIGTERM
    stop._handle(signal.SIGINT, _frame_in(here))   # later ones: no second exception
    assert stop.signum == signal.SIGTERM


def test_a_set_event_stops_as_a_sigint_unless_a_signal_came_first():
    import threading

    from hgan.data.interrupt import GenerationInterrupted, StopSignals
    event = threading.Event()
    stop = StopSignals(event)
    stop.check()                                   # nothing asked yet
    event.set()
    with pytest.raises(GenerationInterrupted) as e:
        stop.check()
    assert e.value.signum == signal.SIGINT
    stop = StopSignals(event)
    stop._handle(signal.SIGTERM, None)
    with pytest.raises(GenerationInterrupted) as e:
        stop.check()
    assert e.value.signum == signal.SIGTERM


def test_waiting_for_a_result_checks_for_a_recorded_signal():
    from concurrent.futures import TimeoutError as FutureTimeout

    from hgan.data.interrupt import GenerationInterrupted, StopSignals

    class LateFuture:  # times out once, then would answer
        calls = 0

        def result(self, timeout):
            self.calls += 1
            if self.calls == 1:
                raise FutureTimeout()
            return "late"
    stop = StopSignals()
    assert stop.result(LateFuture(), poll_s=0) == "late"   # no signal: waits on
    stop._handle(signal.SIGINT, None)
    with pytest.raises(GenerationInterrupted):
        stop.result(LateFuture(), poll_s=0)


def test_interrupted_and_generation_interrupted_carry_the_signal_as_ctrl_c_would():
    from hgan.data.interrupt import GenerationInterrupted, Interrupted, raise_interrupted
    with pytest.raises(Interrupted) as e:
        raise_interrupted(signal.SIGTERM, None)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.signum == signal.SIGTERM
    g = GenerationInterrupted(signal.SIGTERM)
    assert isinstance(g, KeyboardInterrupt) and g.signum == signal.SIGTERM
    assert str(g) == "generation interrupted"   # as `hgan.data: generation interrupted` says


def test_discard_removes_the_partial_file_or_aborts_the_writer(tmp_path):
    from hgan.data.h5io import missing_folders
    from hgan.data.interrupt import discard
    path = str(tmp_path / "data" / "pendulum" / "train.h5")
    made = missing_folders(path)
    discard(None, path, made)                      # nothing written: nothing to do
    os.makedirs(os.path.dirname(path))
    with open(path + ".partial", "wb") as f:
        f.write(b"half")
    discard(None, path, made)                      # stopped inside H5Writer()
    assert os.listdir(tmp_path) == []              # the folders it made went too

    class Writer:
        aborted = False

        def abort(self):
            self.aborted = True
    w = Writer()
    discard(w, path, made)
    assert w.aborted


@pytest.mark.parametrize("where", ["File", "_set_attrs"])
def test_a_stop_inside_the_writers_setup_leaves_no_folder(tmp_path, monkeypatch, where):
    # The stop lands while H5Writer() makes its folders and lays out the file (milliseconds;
    # a signal test hit it once in a full run): there is no writer to abort yet, but neither
    # the partial file nor the data/<system>/ folders it made may stay.
    from hgan.data import h5io
    from hgan.data.generate import generate_split
    from hgan.data.interrupt import GenerationInterrupted

    def stop(*a, **k):
        raise GenerationInterrupted(signal.SIGINT)
    monkeypatch.setattr(h5io.h5py if where == "File" else h5io, where, stop)
    with pytest.raises(GenerationInterrupted):
        generate_split("pendulum", tmp_path / "data" / "pendulum" / "test.h5", "test", 2,
                       frames=4, seed=0, progress=False)
    assert os.listdir(tmp_path) == []


def test_only_one_trajectory_is_singular():
    from hgan.data.generate import _trajectories
    assert [_trajectories(n) for n in (0, 1, 2)] == ["0 trajectories", "1 trajectory",
                                                     "2 trajectories"]
