"""Files written whole or not at all: the evaluation's results, report and caches, and the
grid's grid.json and experiment.json records."""
import os
import threading


def write_atomically(path, write, mode="wb"):
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path`.

    Readers (the grid, a later evaluation, another one in parallel sharing a cache) see the
    old file or the whole new one, never a partial one; the temporary file, named for this
    process and thread so that parallel writers do not share it, is removed on any failure
    (a Ctrl-C included)."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
