"""One process writes a run directory: the claim that the setup takes on it.

Two runs started together with the default --out (runs/<system>-<model>-<second>) got the
same directory, and one removed the other's events and samples as a stopped attempt's; an
explicit --out given to a second run while the first had not written its first checkpoint
did the same. The setup now claims the directory with an exclusive lock (flock on the
directory itself, released by the kernel when the process ends, however it ends), before
anything of the run is written: a default --out already taken becomes <out>-2, -3, ... (as
`hgan.train.pack` numbers its runs'), and an explicit one in use is refused.
"""
import os

try:
    import fcntl
except ImportError:  # not POSIX: no lock (and no process group signals to stop runs with)
    fcntl = None


class RunDirLock:
    """The claim on `path`; `created`: this process made the directory."""

    def __init__(self, path, fd, created):
        self.path, self._fd, self.created = path, fd, created

    def release(self, discard=False):
        """Unlock; discard: remove the directory if this process made it and left it empty
        (a setup that failed after the claim)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if discard and self.created:
            try:
                os.rmdir(self.path)
            except OSError:
                pass

    def __del__(self):
        self.release()


def claim(out: str, *, numbered: bool) -> RunDirLock:
    """Make `out` (parents too) and lock it; numbered: `out` is a default name, so an existing
    directory of that name is left to its run and the next free <out>-N is taken instead.
    ValueError, one line, when the directory cannot be made or another process holds it."""
    base, n = out, 1
    while True:
        try:
            os.makedirs(out)
            created = True
        except FileExistsError:
            created = False
        except OSError as e:
            raise ValueError(f"--out {out}: the run directory cannot be made "
                             f"({e.strerror or e})") from None
        if created or not numbered:
            break
        n += 1
        out = f"{base}-{n}"
    if not os.path.isdir(out):  # a file made since the setup's check
        raise ValueError(f"--out {out} is not a directory")
    fd = os.open(out, os.O_RDONLY)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(f"--out {out} is in use by another run that is still running: "
                             f"let it finish (or stop it), or choose another --out") from None
    return RunDirLock(out, fd, created)
