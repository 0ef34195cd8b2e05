"""Ending generation on SIGINT and SIGTERM without leaving a `.partial` file behind.

`generate_split` and `import-dm` write inside `StopSignals`; both signals then arrive as
GenerationInterrupted once the file being written is removed.
"""
import os
import signal
import threading
from concurrent.futures import TimeoutError as FutureTimeout

_HERE = os.path.dirname(os.path.abspath(__file__))  # hgan/data: code a handler may raise in


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised as Ctrl-C raises KeyboardInterrupt (see `raise_interrupted`);
    `signum` lets a command line exit with 128 + signum, as a shell reports a signalled
    process."""

    def __init__(self, signum, what="interrupted"):
        super().__init__(what)
        self.signum = signum


def raise_interrupted(signum, frame):
    """A SIGTERM handler that ends a command's setup as Ctrl-C does, with Interrupted
    instead of SIGTERM's silent default. StopSignals takes over from it like from a default."""
    raise Interrupted(signum)


class sigterm_interrupts:
    """Context in which SIGTERM (`timeout`, a job scheduler) ends a command as Ctrl-C does,
    with Interrupted instead of a silent exit; the previous handler comes back at exit. One
    the parent ignores stays ignored, and off the main thread (hgan.experiments runs
    evaluations in threads) nothing is installed."""

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGTERM)
        self._own = (self._old == signal.SIG_DFL
                     and threading.current_thread() is threading.main_thread())
        if self._own:
            signal.signal(signal.SIGTERM, raise_interrupted)
        return self

    def __exit__(self, *exc):
        if self._own:
            signal.signal(signal.SIGTERM, self._old)
        return False


class GenerationInterrupted(Interrupted):
    """SIGINT or SIGTERM stopped generation; the split being written was discarded.
    A KeyboardInterrupt, so callers that already stop on Ctrl-C stop on it too."""

    def __init__(self, signum):
        super().__init__(signum, "generation interrupted")


class StopSignals:
    """Context in which SIGINT and SIGTERM end generation with GenerationInterrupted, so
    that the writer's cleanup runs for both: SIGTERM's default action (`timeout`, a job
    scheduler) would end the process with the `.partial` file left behind.

    The handler records the signal, and raises at once only when it interrupts this
    package's own code. Anywhere else the exception could be lost or do harm: raised inside
    a weakref callback or a __del__, Python prints "Exception ignored" and carries on (seen
    under load: generation then ran to the end), and raised inside a library's critical
    section it can leave a lock held. There `check()`, which the writing loop calls between
    blocks, raises it instead. Signals after the first change nothing, so the cleanup is
    not cut short. A handler the caller installed (a trainer's stop flag, SIG_IGN under
    nohup), other than `raise_interrupted`, is left alone, and so is everything off the main
    thread, which cannot install handlers: there a caller's `event` (a threading.Event) asks
    for the stop instead, and `check()` ends generation once it is set, as after a SIGINT."""

    def __init__(self, event=None):
        self.signum = None
        self.event = event
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig, defaults in ((signal.SIGINT, (signal.default_int_handler,)),
                                  (signal.SIGTERM, (signal.SIG_DFL, raise_interrupted))):
                if signal.getsignal(sig) in defaults:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:
            return
        self.signum = signum
        if frame is not None and os.path.dirname(frame.f_code.co_filename) == _HERE:
            raise GenerationInterrupted(signum)

    def check(self):
        if self.signum is None and self.event is not None and self.event.is_set():
            self.signum = signal.SIGINT
        if self.signum is not None:
            raise GenerationInterrupted(self.signum)

    def result(self, future, poll_s=0.2):
        """future.result(), checking for a recorded signal while it waits."""
        while True:
            try:
                return future.result(timeout=poll_s)
            except FutureTimeout:
                self.check()


def discard(writer, path, made):
    """Remove what an unfinished H5Writer for `path` wrote, and the folders it made: `made`,
    h5io.missing_folders(path) taken before the writer was created, for a stop that lands
    inside H5Writer() (laying out the file takes milliseconds), when there is no writer to
    abort yet."""
    from hgan.data.h5io import remove_empty
    if writer is not None:
        writer.abort()
        return
    if os.path.exists(path + ".partial"):
        os.remove(path + ".partial")
    remove_empty(made)
