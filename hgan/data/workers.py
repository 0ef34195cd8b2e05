"""Setup of loader worker processes (torch DataLoader and DALI external_source workers).

A stop signal sent to the whole process group (Ctrl-C in a terminal, `timeout`, a job
scheduler, a container runtime) would reach the workers too. They must not die of it: the
main process owns shutdown, saves a checkpoint and then ends them, and a worker killed first
turns that into a `DataLoader worker ... killed by signal` crash. So each worker leaves the
group for one of its own (group signals no longer reach it) and ignores SIGINT. It keeps
SIGTERM's default action, because that is how its owner ends it when the polite shutdown
does not: DataLoader's shutdown and multiprocessing's exit handler terminate() daemonic
workers and then join them, and a worker that ignored SIGTERM hung its parent's exit forever
(seen: a test run whose summary was printed never exited). If the main process itself dies
without cleaning up (SIGKILL, OOM killer), the kernel kills the workers with it (Linux
PR_SET_PDEATHSIG), instead of leaving them orphaned until torch's watchdog notices.
"""
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    if not sys.platform.startswith("linux"):
        return  # elsewhere torch's worker watchdog (parent pid check) is the only guard
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def init_worker(worker_id=None, *, parent=None):
    """worker_init_fn: out of the parent's process group, SIGINT ignored, and die with
    `parent` (the main process's pid)."""
    try:
        os.setpgid(0, 0)
    except (OSError, AttributeError):
        pass   # not POSIX: group signals are not how such a platform stops a job
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if parent is not None and os.getppid() != parent:
        os._exit(0)  # the parent died before PR_SET_PDEATHSIG was armed


class WorkerInit:
    """Picklable worker_init_fn bound to the pid of the process that creates the workers."""

    def __init__(self):
        self.parent = os.getpid()
        self._done_in = self.parent   # never set up the main process itself

    def __call__(self, worker_id=None):
        init_worker(worker_id, parent=self.parent)

    def once(self):
        """For DALI sources, which have no init hook: run in each worker's first call."""
        if self._done_in != os.getpid():
            self._done_in = os.getpid()
            init_worker(parent=self.parent)
