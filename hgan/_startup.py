"""A stop while an hgan command is still importing torch (its first seconds).

Raised inside that import, Ctrl-C gave a screen of traceback through torch's internals, or an
abort from C++ ("terminate called ... KeyboardInterrupt"). hgan/__init__.py calls `defer()`
first thing: for the commands below only (never for `import hgan` in someone's program), SIGINT
and SIGTERM are noted instead of raised until the command's main() starts and calls
`release(prog)`, which says it in one line and exits 128 + the signal's number, as train.py
does for itself (train.py defers them before it imports hgan).
"""
import os
import signal
import sys

# Every module of hgan that runs as `python -m <name>`, and the console scripts
# (pyproject.toml); the main() each runs calls release() first (tests/test_cli_startup.py).
ENTRY_POINTS = ("hgan.data", "hgan.data.cli", "hgan.evaluate", "hgan.experiments",
                "hgan.sample", "hgan.train.cli", "hgan.train.pack")
SCRIPTS = ("hgan-data", "hgan-evaluate", "hgan-sample", "hgan-train")

_noted = []
_saved = {}


def _module_run():
    """The module named by the interpreter's own -m, while runpy is still locating it (Python
    sets sys.argv[0] to "-m" until then); None otherwise."""
    if not sys.argv or sys.argv[0] != "-m":
        return None
    args = iter(getattr(sys, "orig_argv", [])[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None)
        if arg.startswith("-m"):
            return arg[2:]
        if arg in ("-X", "-W"):      # the interpreter's options that take a value
            next(args, None)
        elif not arg.startswith("-"):
            return None
    return None


def defer():
    """Note SIGINT and SIGTERM instead of acting on them, when one of ENTRY_POINTS or SCRIPTS
    is being started and the signal has its default handler (one a parent set to ignore
    stays so)."""
    # A console script is the program this process was started with (sys.orig_argv), not
    # only sys.argv's first word: a multiprocessing spawn child of one (DALI's workers) keeps
    # the parent's sys.argv and re-runs the script as __mp_main__, but never its main(), so
    # it would keep the signals noted for good and outlive terminate().
    script = sys.argv[0] if sys.argv and sys.argv[0] in getattr(sys, "orig_argv", []) else ""
    if _saved or (_module_run() not in ENTRY_POINTS
                  and os.path.basename(script) not in SCRIPTS):
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL):
            _saved[s] = signal.signal(s, lambda signum, _: _noted.append(signum))


def release(prog):
    """Restore the handlers defer() replaced; after a stop noted meanwhile, one line on stderr
    (from a torchrun node's first rank only) and exit 128 + its number."""
    while _saved:
        s, handler = _saved.popitem()
        signal.signal(s, handler)
    if _noted:
        signum = _noted[0]
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"{prog}: stopped by {signal.Signals(signum).name} while starting; nothing "
                  "was written", file=sys.stderr)
        sys.exit(128 + signum)
