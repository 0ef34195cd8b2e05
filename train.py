"""Train HGAN or a baseline: `python train.py --system three_body --amp` (see --help)."""
import os
import signal
import sys

# Ctrl-C or SIGTERM while torch is being imported (the first seconds) is noted and acted on
# once the import is done: raised inside it, the KeyboardInterrupt gave a traceback, or an
# abort from C++ ("terminate called ... KeyboardInterrupt"). One line instead, the same as a
# stop later in the setup, from each node's first rank only.
_signals = []
_handlers = {s: signal.signal(s, lambda signum, _: _signals.append(signum))
             for s in (signal.SIGINT, signal.SIGTERM)
             if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL)}
from hgan.train.cli import entry  # noqa: E402
for _s, _h in _handlers.items():
    signal.signal(_s, _h)
if _signals:
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"train.py: stopped by {signal.Signals(_signals[0]).name} before the first "
              "iteration; nothing of the run was written", file=sys.stderr)
    sys.exit(128 + _signals[0])

if __name__ == "__main__":
    sys.exit(entry())
