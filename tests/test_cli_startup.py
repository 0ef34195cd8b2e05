"""A stop while an hgan command imports torch: one line, not a traceback (hgan/_startup.py)."""
import ast
import os
import signal
import subprocess
import sys

import pytest

from hgan import _startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a command as the interpreter runs `python -m <module>` or a console script, and sends
# itself the signal at the moment torch's import starts: where a real Ctrl-C lands in the
# first seconds, without depending on when.
_HOOK = """
import os, runpy, signal, sys
kind, target, sig, args = sys.argv[1], sys.argv[2], getattr(signal, sys.argv[3]), sys.argv[4:]

class StopAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), sig)
        return None

assert "torch" not in sys.modules
sys.meta_path.insert(0, StopAtTorch())
if kind == "module":
    sys.argv = ["-m", *args]                 # what the interpreter sets while locating it
    sys.orig_argv = [sys.executable, "-m", target, *args]
    runpy._run_module_as_main(target)
else:                                        # a console script's wrapper, as pip writes it
    sys.argv = [os.path.join(os.path.dirname(sys.executable), kind), *args]
    sys.orig_argv = [sys.executable, sys.argv[0], *args]
    module, func = target.split(":")
    sys.exit(getattr(__import__(module, fromlist=[func]), func)())
"""


def _run(kind, target, sig, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-c", _HOOK, kind, target, sig.name, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _prog(module):
    return "python -m hgan.train.cli" if module == "hgan.train.cli" else \
        module.replace(".cli", "")


@pytest.mark.parametrize("module", _startup.ENTRY_POINTS)
def test_ctrl_c_while_a_command_imports_torch_is_one_line(module):
    # It was a KeyboardInterrupt traceback through torch's import (or a C++ abort), and the
    # command went on to nothing; --help shows that the command itself never ran.
    res = _run("module", module, signal.SIGINT, "--help")
    assert res.returncode == 130, res.stderr
    assert res.stderr.splitlines() == [f"{_prog(module)}: stopped by SIGINT while starting; "
                                       "nothing was written"], res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("script", _startup.SCRIPTS)
def test_sigterm_while_a_console_script_imports_torch_is_one_line(script):
    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert set(scripts) == set(_startup.SCRIPTS)
    res = _run(script, scripts[script], signal.SIGTERM, "--help")
    # named as the script the user typed, as its errors and usage line are
    assert (res.returncode, res.stderr, res.stdout) == (
        143, f"{script}: stopped by SIGTERM while starting; nothing was written\n", "")


_SPAWNING_SCRIPT = """
import multiprocessing, signal, sys
import hgan

def child(q):
    q.put((signal.getsignal(signal.SIGINT) is signal.default_int_handler,
           signal.getsignal(signal.SIGTERM) == signal.SIG_DFL))

if __name__ == "__main__":
    from hgan import _startup
    _startup.release("hgan-data")
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    print(q.get(timeout=60))
    p.join()
"""


def test_a_spawned_child_of_a_command_keeps_its_default_signals(tmp_path):
    # A spawn child (DALI's workers, on a GPU) re-runs the parent's script as __mp_main__ with
    # the parent's sys.argv but never its main(): deferring there kept SIGTERM noted for good,
    # and terminate() left the worker running.
    script = tmp_path / "hgan-data"
    script.write_text(_SPAWNING_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(True, True)", res.stdout


def test_every_command_module_is_an_entry_point():
    # A module run with -m whose main() does not release would keep Ctrl-C noted for good.
    found = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "hgan")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            if name == "__main__.py":
                found.add(module.rsplit(".", 1)[0])
            elif 'if __name__ == "__main__":' in open(path).read():
                found.add(module)
    assert found == set(_startup.ENTRY_POINTS)
    for module in found:   # each one's main() releases first
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        if not os.path.exists(path):
            path = os.path.join(ROOT, *module.split("."), "cli.py")
        mains = [f for f in ast.parse(open(path).read()).body
                 if isinstance(f, ast.FunctionDef) and f.name == "main"]
        first = mains[0].body[0].value
        assert ast.unparse(first.func) == "_startup.release", module


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    _startup._saved.clear()
    _startup._noted.clear()
    for s, h in saved.items():
        signal.signal(s, h)


def test_defer_is_for_hgan_commands_only(monkeypatch, handlers):
    # `import hgan` in a program (or under another module's -m) leaves its signals alone
    for argv, orig in ((["prog.py"], [sys.executable, "prog.py"]),
                       (["-m"], [sys.executable, "-m", "mytool"]),
                       (["-m"], [sys.executable, "-m", "hgan.kernels.leapfrog.check"]),
                       (["/bin/hgan-dataset"], [sys.executable, "/bin/hgan-dataset"])):
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(sys, "orig_argv", orig)
        _startup.defer()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, orig
    for orig in ([sys.executable, "-m", "hgan.data"], [sys.executable, "-X", "importtime",
                                                       "-mhgan.sample"]):
        monkeypatch.setattr(sys, "argv", ["-m"])
        monkeypatch.setattr(sys, "orig_argv", orig)
        _startup.defer()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, orig
        _startup.release("x")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, orig


def test_release_restores_what_it_found_and_exits_on_a_noted_stop(monkeypatch, handlers,
                                                                  capsys):
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "hgan.evaluate"])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)          # nohup-style: stays ignored
    _startup.defer()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    signal.raise_signal(signal.SIGINT)                     # noted, not raised
    with pytest.raises(SystemExit) as stop:
        _startup.release("hgan.evaluate")
    assert stop.value.code == 130
    assert capsys.readouterr().err == ("hgan.evaluate: stopped by SIGINT while starting; "
                                       "nothing was written\n")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


@pytest.mark.parametrize("local_rank, said", [(None, True), ("0", True), ("1", False)])
def test_a_stop_while_starting_is_said_by_each_nodes_first_rank_only(monkeypatch, handlers,
                                                                    capsys, local_rank, said):
    # Under torchrun a Ctrl-C reaches every rank: one line per node, not one per rank, and
    # every rank still exits 130 (a line from each rank passed every test before)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "hgan.data"])
    _startup.defer()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # noted, not raised
    signal.raise_signal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        _startup.release("hgan.data")
    assert stop.value.code == 130
    assert capsys.readouterr().err == ("hgan.data: stopped by SIGINT while starting; nothing "
                                       "was written\n" if said else "")
