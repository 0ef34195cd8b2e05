"""hgan.train.rundir where the lock itself is missing: the run goes on unguarded."""
import errno
import os

from hgan.train import rundir


def test_a_file_system_without_locks_leaves_the_run_unguarded(tmp_path, monkeypatch):
    # flock's ENOLCK (no lock support there) read as "in use by another run", and the
    # directory just made was left behind
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    lock = rundir.claim(str(tmp_path / "run"), numbered=False)
    assert lock.path == str(tmp_path / "run") and lock.created
    lock.release()


def test_without_fcntl_no_directory_is_opened(tmp_path, monkeypatch):
    # Windows refuses os.open on a directory (PermissionError): every run failed there
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(rundir, "fcntl", None)
    monkeypatch.setattr(rundir.os, "open", refuse)
    first = rundir.claim(str(tmp_path / "run"), numbered=True)
    second = rundir.claim(str(tmp_path / "run"), numbered=True)
    assert (first.path, second.path) == (str(tmp_path / "run"), str(tmp_path / "run-2"))
    first.release()
    second.release(discard=True)
    assert not (tmp_path / "run-2").exists()


def test_a_claim_refused_after_making_its_directory_removes_it(tmp_path, monkeypatch):
    # Another run locked the directory between this claim's mkdir and its flock: the
    # refusal could leave the empty directory it made behind, unnoticed.
    def held(fd, op):
        raise OSError(errno.EWOULDBLOCK, "Resource temporarily unavailable")
    monkeypatch.setattr(rundir.fcntl, "flock", held)
    out = tmp_path / "run"
    import pytest
    with pytest.raises(ValueError, match="in use by another run"):
        rundir.claim(str(out), numbered=False)
    assert not out.exists()
    out.mkdir()   # one it did not make stays
    with pytest.raises(ValueError, match="in use by another run"):
        rundir.claim(str(out), numbered=False)
    assert out.is_dir()


def test_a_directory_one_process_claims_is_refused_to_another(tmp_path):
    # The claim is exclusive: a second run in another process (this module loaded on its
    # own there, without torch) is refused a directory this one holds, and a default name
    # moves on to <out>-2; once released, the directory can be claimed again.
    import subprocess
    import sys
    out = str(tmp_path / "run")
    lock = rundir.claim(out, numbered=False)
    child = ("import importlib.util, sys\n"
             f"spec = importlib.util.spec_from_file_location('rundir', {rundir.__file__!r})\n"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "try:\n"
             "    print(m.claim(sys.argv[1], numbered=sys.argv[2] == 'numbered').path)\n"
             "except ValueError as e:\n"
             "    print(e)\n")

    def other(numbered):
        return subprocess.run([sys.executable, "-c", child, out, numbered], capture_output=True,
                              text=True, check=True).stdout.strip()
    try:
        assert other("explicit") == (f"--out {out} is in use by another run that is still "
                                     "running: let it finish (or stop it), or choose another --out")
        assert other("numbered") == out + "-2"
    finally:
        lock.release()
    assert other("explicit") == out


def test_a_file_where_the_run_directory_should_be_is_one_error(tmp_path):
    # (made after the setup's own check: a claim must not lock a file and call it the run's)
    path = tmp_path / "run"
    path.write_text("x")
    import pytest
    with pytest.raises(ValueError, match=f"^--out {path} is not a directory$"):
        rundir.claim(str(path), numbered=False)
    assert path.read_text() == "x"


def test_a_claim_dropped_without_release_frees_its_directory(tmp_path):
    # A setup object lost to an exception (never released) must not hold its directory for
    # the rest of the process: the lock ends with the claim.
    import gc
    out = str(tmp_path / "run")
    lock = rundir.claim(out, numbered=False)
    del lock
    gc.collect()
    again = rundir.claim(out, numbered=False)
    assert again.path == out and not again.created
    again.release()


def test_releasing_a_claim_twice_leaves_a_later_claim_of_its_directory_alone(tmp_path):
    # The first claim's second release (explicit, or its __del__) came after a new claim of
    # the same directory in this process: it must not unlock or forget that new claim.
    import pytest
    out = str(tmp_path / "run")
    first = rundir.claim(out, numbered=False)
    first.release()
    second = rundir.claim(out, numbered=False)
    first.release(discard=True)
    assert os.path.isdir(out)
    with pytest.raises(ValueError, match="held by an earlier setup in this process"):
        rundir.claim(out, numbered=False)
    second.release()


def test_a_run_that_has_ended_lets_its_directory_go(data_root, tmp_path):
    # The Setup, and the claim it holds, may outlive its run (from Python: setup =
    # prepare(cfg); run(setup); ...): once the run has ended, its directory is free again, for
    # a resume in this process (or a run in another), not "held by an earlier setup".
    from test_train_pack import flags

    from hgan.train import load_checkpoint
    from hgan.train.config import parse_command_line
    from hgan.train.run import prepare, run
    out = str(tmp_path / "run")
    setup = prepare(parse_command_line(flags(data_root, out, iters=1))[0])
    run(setup)
    cfg, resume, given = parse_command_line(["--resume", out, "--iters", "2"])
    run(prepare(cfg, resume, given))
    assert load_checkpoint(out)["iteration"] == 2
    assert setup.lock.path == out   # the first run's claim is still referenced
