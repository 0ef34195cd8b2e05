"""`train.py` / `hgan-train`: the command line of training (flags: hgan.train.config).

Exit codes: 0 done (or stopped by a signal after saving a checkpoint); 1 a non-finite loss,
or a failed CUDA-graph capture (one line: `train.py: error: capturing ...`);
2 bad input, in one line `train.py: error: ...` (`hgan-train: error: ...` as hgan-train),
also data found unreadable mid-run (after its checkpoint is saved);
130 / 143 SIGINT / SIGTERM during the setup (while the dataset was generated: nothing of it
kept; later: nothing of the run written yet). Once the setup is done, a signal saves a
checkpoint (at iteration 0, or the resumed one, if no step ran yet) and the exit code is 0;
a second Ctrl-C before that checkpoint aborts without it (130)."""
import os
import signal
import sys

from hgan import _startup
from hgan.train.config import parse_command_line, prog, reports_bad_input


def bad_input(e: BaseException) -> int:
    """train.py's one-line report of bad input (under torchrun, from each node's first rank
    only); its exit code."""
    if reports_bad_input():
        print(f"{prog()}: error: {str(e).strip()}".replace("\n", " "), file=sys.stderr)
    return 2


def main(argv=None) -> int:
    _startup.release(prog())
    try:
        from hgan.data import GenerationInterrupted
        from hgan.data.h5io import DataFormatError, error_line
        from hgan.data.interrupt import raise_interrupted
        from hgan.train import dist as hdist
        from hgan.train.capture import CaptureFailed
        from hgan.train.checkpoint import CheckpointError
        from hgan.train.loop import NonFiniteLoss
        from hgan.train.run import prepare, run
    except KeyboardInterrupt:
        # Ctrl-C while the model stack is imported, before any handler of ours: the setup's
        # one line (a Ctrl-C later in the setup is reported the same way below).
        return _stopped_before_start(signal.SIGINT)
    cfg, resume, given = parse_command_line(argv)
    # Only the setup phase's errors are bad input (hgan.data's DataFormatError is a ValueError);
    # one raised by training itself is a bug and keeps its traceback, but for data found
    # unreadable mid-run (a DataFormatError again).
    # Until the loop installs its own handlers, SIGTERM ends the setup as Ctrl-C does, with
    # one line instead of a silent exit (or a traceback); one the parent ignores stays ignored.
    sigterm = signal.getsignal(signal.SIGTERM)
    if sigterm == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_interrupted)
    import torch.distributed as dist
    own_group = not dist.is_initialized()  # a group the caller set up stays up for it
    try:
        try:
            setup = prepare(cfg, resume=resume, given=given)
        except (ValueError, FileNotFoundError, CheckpointError) as e:
            return bad_input(e)
        except RuntimeError as e:
            if not (int(os.environ.get("WORLD_SIZE", "1")) > 1 and hdist.lost_peer(e)):
                raise
            # A rank gone while the others waited for it in the setup (rank 0 killed while
            # it generated the dataset): one line from each rank left, as in training.
            print(f"{prog()}: error (rank {os.environ.get('RANK', '?')}): lost contact with "
                  "another rank during the setup, which stopped or failed (its message, if it "
                  "left one, is above); training did not start", file=sys.stderr)
            return 1
        # A Ctrl-C under torchrun reaches every rank: these lines, as bad input's, come from
        # each node's first rank only.
        except GenerationInterrupted as e:
            if reports_bad_input():
                print(f"{prog()}: generation of {cfg.data_path} was interrupted "
                      f"({signal.Signals(e.signum).name}); no partial file or half-made "
                      "dataset was kept",
                      file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt as e:
            return _stopped_before_start(getattr(e, "signum", signal.SIGINT))
        try:
            run(setup)  # its own handlers first: a signal from here on saves a checkpoint
        except NonFiniteLoss as e:
            # under torchrun, said once: by the rank that met the first non-finite loss
            if e.reporter:
                rank = f" (rank {setup.info.rank})" if setup.info.enabled else ""
                print(f"[hgan] error{rank}: {e}", file=sys.stderr)
            return 1
        except DataFormatError as e:  # a damaged chunk met in training
            # Said by the rank that met it, whichever: under torchrun only that rank reads the
            # chunk, and bad input is otherwise reported by each node's first rank alone.
            # There the others wait for it in a collective, so no stop checkpoint can be
            # gathered: the run keeps its last periodic one.
            if setup.info.enabled:
                print(f"{prog()}: error (rank {setup.info.rank}): {error_line(e)}; the other "
                      f"ranks stop too, and {_kept(setup.cfg.out)}", file=sys.stderr)
            else:
                print(f"{prog()}: error: {error_line(e)}", file=sys.stderr)
            return 2
        except CaptureFailed as e:
            # Not a bug of the run's: a configuration torch could not capture (its error is
            # in the line). The process's CUDA state may be unusable, so no checkpoint is
            # attempted; the steps before the capture were its warm-up, a few iterations.
            out = setup.cfg.out
            again = (f"resume with --resume {out} --no-cuda-graph"
                     if os.path.isfile(os.path.join(out, "checkpoints", "last.pt")) else
                     f"no checkpoint was written: start again with --no-cuda-graph --out {out}")
            why = " ".join(str(e.__cause__ or e).split())
            print(f"{prog()}: error: capturing the training step into CUDA graphs failed "
                  f"({why}); {again}", file=sys.stderr)
            return 1
        except RuntimeError as e:
            if not (setup.info.enabled and hdist.lost_peer(e)):
                raise
            # Another rank stopped or died (its own message says why): one line here, not
            # the collective's traceback.
            return _lost_contact(setup)
        except KeyboardInterrupt:  # a second Ctrl-C while the first one's stop was pending
            if reports_bad_input():
                print(f"{prog()}: aborted by a second Ctrl-C; the run keeps its last "
                      f"checkpoint, if one was written (resume with --resume {setup.cfg.out})",
                      file=sys.stderr)
            return 128 + signal.SIGINT
        return _leave_together(setup) if own_group else 0
    finally:
        # SIGTERM's default first: torchrun sends it to the ranks left when one fails, which
        # have said why they stop already (or stop for it)
        if sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, sigterm)
        if own_group:
            # under torchrun; nothing otherwise, or when _leave_together left already
            hdist.leave(clean=False)


def _leave_together(setup) -> int:
    """Under torchrun, once this rank's training ended normally: wait for the others (rank 0
    may still be writing its last checkpoint) and leave the group; the exit code.

    A SIGINT or SIGTERM in that wait (Ctrl-C to torchrun, which signals every rank) asks for
    what is already under way: the rank goes on waiting, and exits 0 without a word (rank 0
    says how the run ended). A rank lost in that wait (rank 0 killed during its save) is one
    line, as in training."""
    import torch.distributed as dist

    from hgan.train import dist as hdist
    if not dist.is_initialized():   # not under torchrun, or nothing was left to train
        return 0
    held = {sig: signal.signal(sig, lambda *_: None)
            for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        hdist.leave(clean=True)
    except RuntimeError as e:
        if not hdist.lost_peer(e):
            raise
        return _lost_contact(setup)
    finally:
        for sig, old in held.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
    return 0


def _lost_contact(setup) -> int:
    """A collective failed because another rank is gone: one line, exit code 1."""
    # "if it left one": a rank killed by SIGKILL (or the OOM killer) says nothing itself;
    # torchrun's own line names the signal
    print(f"{prog()}: error (rank {setup.info.rank}): lost contact with another rank, which "
          f"stopped or failed (its message, if it left one, is above); {_kept(setup.cfg.out)}",
          file=sys.stderr)
    return 1


def _stopped_before_start(signum) -> int:
    """A signal during the setup: one line (from each node's first rank), 128 + signum."""
    if reports_bad_input():
        print(f"{prog()}: stopped by {signal.Signals(signum).name} before the first "
              "iteration; nothing of the run was written", file=sys.stderr)
    return 128 + signum


def _kept(out):
    """What a run stopped without its stop checkpoint still has (rank 0 writes checkpoints:
    a rank on another node without a shared disk does not see them)."""
    import os
    last = os.path.join(out, "checkpoints", "last.pt")
    if os.path.exists(last):
        return f"the run keeps its last checkpoint, {last} (resume with --resume {out})"
    return f"no checkpoint of the run is in {out} on this machine (rank 0 writes them)"


def entry(argv=None) -> int:
    """train.py's and hgan-train's process entry: main's exit code; a torchrun rank that left
    its process group exits here, without the interpreter's finalization (hgan.train.dist)."""
    from hgan.train import dist as hdist
    return hdist.exit_process(main(argv))


if __name__ == "__main__":
    sys.exit(entry())
