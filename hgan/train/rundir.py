"""One process writes a run directory: the claim that the setup takes on it.

Two runs started together with the default --out (runs/<system>-<model>-<second>) got the
same directory, and one removed the other's events and samples as a stopped attempt's; an
explicit --out given to a second run while the first had not written its first checkpoint
did the same. The setup now claims the directory with an exclusive lock (flock on the
directory itself, released by the kernel when the process ends, however it ends), before
anything of the run is written: a default --out already taken becomes <out>-2, -3, ...,
and an explicit one in use is refused. The lock is local to one machine (flock on a network
file system does not reach other nodes), and absent where the platform or the file system
has none.
"""
import errno
import os

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

# Directories this process holds: a second claim of one is refused as this process's own (a
# flock conflicts between two descriptors of one process too), not as "another run".
_HELD = set()


class RunDirLock:
    """The claim on `path`; `created`: this process made the directory."""

    def __init__(self, path, fd, created):
        self.path, self._fd, self.created = path, fd, created
        self._key = os.path.realpath(path)
        self._released = False
        _HELD.add(self._key)

    def release(self, discard=False):
        """Unlock; discard: remove the directory if this process made it and left it empty
        (a setup that failed after the claim)."""
        # this claim's own state, not _HELD's: a later claim of the same directory (after
        # this one's release) is not this one's to forget when this one is released again
        # (its __del__)
        if self._released:
            return
        self._released = True
        _HELD.discard(self._key)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if discard and self.created:
            try:
                os.rmdir(self.path)
            except OSError:
                pass

    def __del__(self):
        self.release()


def _make(out):
    """True when this call made `out` (its parents as needed); ValueError if it cannot."""
    try:
        os.makedirs(out)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise ValueError(f"--out {out}: the run directory cannot be made "
                         f"({e.strerror or e})") from None


def claim(out: str, *, numbered: bool) -> RunDirLock:
    """Make `out` (parents too) and lock it; numbered: `out` is a default name, so an existing
    directory of that name is left to its run and the next free <out>-N is taken instead.
    ValueError, one line, when the directory cannot be made or another run holds it."""
    base, n = out, 1
    created = _make(out)
    while numbered and not created:
        n += 1
        out = f"{base}-{n}"
        created = _make(out)
    if not os.path.isdir(out):  # a file made since the setup's check
        raise ValueError(f"--out {out} is not a directory")
    if os.path.realpath(out) in _HELD:
        raise ValueError(f"--out {out} is held by an earlier setup in this process that has "
                         f"not run or been released (hgan.train.run.Setup.lock)")
    if fcntl is None:
        return RunDirLock(out, None, created)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return RunDirLock(out, fd, created)   # no locks on this file system: unguarded
        os.close(fd)
        if created:
            os.rmdir(out)
        raise ValueError(f"--out {out} is in use by another run that is still running: "
                         f"let it finish (or stop it), or choose another --out") from None
    return RunDirLock(out, fd, created)
