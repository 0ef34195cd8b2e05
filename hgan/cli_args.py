"""What every command line of the package shares: errors in one line, `<name>: error: ...`
with exit code 2 and no usage block, and integer flags with a lower bound. argparse only:
hgan.data's tools import this without importing torch."""
import argparse
import os
import sys


def prog(script, otherwise):
    """A command's name in its usage line: the console script (`hgan-data`) when run as that
    script, `otherwise` (`python -m hgan.data`, `train.py`) when not."""
    return script if os.path.basename(sys.argv[0] or "") == script else otherwise


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line. `error_name` (a class attribute, so that
    subparsers made with parser_class inherit it) names the command; default: its prog.
    `script`: the console script it is also installed as; run as that, errors are named
    after it (`hgan-data: error: ...`, as its usage line is), else after error_name."""
    error_name = None
    script = None

    def name(self):
        base = self.error_name or self.prog
        return prog(self.script, base) if self.script else base

    def error(self, message):
        self.exit(2, f"{self.name()}: error: {message}\n")


def int_at_least(low, why=""):
    """argparse type: an integer >= low (`why` says where the bound comes from)."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}{why}, got {v}")
        return v
    return parse
