"""Run the grid's jobs, K at a time: dataset generation, training, evaluation.

Training and evaluation run as subprocesses (``train.py``, ``python -m hgan.evaluate``): one
small run leaves most of a large GPU idle, so K of them share it, each in its own process
and CUDA context. With ``pack`` > 1, up to that many training runs share one process
(``python -m hgan.train.pack``), each in a thread with its own CUDA stream, so that their
kernels overlap on the GPU without MPS; a pack takes one of the K slots. Datasets are
generated in threads of this process (numpy and zlib release the GIL, and a subprocess
would pay the torch import again). A stop (Ctrl-C, SIGTERM) ends those threads too, and the
grid waits for them: the interpreter must not finalize h5py or torch under a thread still
using them (it hung on h5py's lock, or aborted in C++).

Order: a run's training waits for its system's data, its evaluation for its training.
Evaluations go first when a slot frees (their results are what people wait for). The first
evaluation of a system runs alone: it trains the physics probe and caches it beside the
data; the system's other evaluations then load it, side by side.
"""
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

from tqdm import tqdm

from hgan.experiments import datasets
from hgan.experiments.grid import GridError

# tqdm's status in a pipe: "... 530/2000 [00:11<00:30, 48.21it/s, ...]" (or "2.5s/it").
_PROGRESS = re.compile(rb"(\d+)/(\d+) \[[^,\]]*,\s*(?:([\d.]+)(it/s|s/it))?")
# Exit codes of a process that a stop ended: 128 + SIGINT/SIGTERM, or killed by a signal.
STOP_CODES = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM,
              -signal.SIGKILL}
# Exit codes of a training run that the deadline's SIGTERM ended before it saved anything.
DEADLINE_CODES = {128 + signal.SIGTERM, -signal.SIGTERM}
STOP_GRACE_S = 120  # a training run checkpoints within one iteration of SIGTERM
# hgan.train.run._StopFlag's: a second SIGINT sooner than this after the first is the same
# stop delivered twice (`timeout -s INT` signals its child, then the child's group); later,
# it is a second Ctrl-C, which kills the running processes instead of waiting for them.
SECOND_AFTER_S = 1.0
# hgan.train.pack.PEER_FAILED_CODE (that module imports torch; this one need not): a packed
# run stopped, with a checkpoint, because another run of its process failed to capture.
PEER_FAILED_CODE = 75


def cache_probes(spec):
    """Each system's physics probe for the grid's evaluation settings, trained at once in
    threads of this process (a small network each: the GPU overlaps them) and cached beside
    the data; returns the systems that failed. Nothing to do where the evaluations compute
    no physics metric."""
    from hgan.evaluate.cli import build_parser, cache_probe
    from hgan.evaluate.inputs import resolve_device
    jobs = {}
    for system in spec.systems:
        run = next(r for r in spec.runs() if r.system == system)
        args = build_parser().parse_args(run.eval_flags())
        if "physics" in args.metrics:
            jobs[system] = args
    failed, t0 = [], time.time()

    def one(system, args):
        try:
            cache_probe(args.data, probe_steps=args.probe_steps, probe_width=args.probe_width,
                        device=resolve_device(args.device))
        except Exception as err:   # noqa: BLE001 - reported; the evaluation would retrain it
            failed.append(system)
            print(f"[grid] physics probe for {system} failed: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)
    threads = [threading.Thread(target=one, args=item, daemon=True) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if jobs:
        print(f"[grid] physics probes cached for {len(jobs) - len(failed)} of {len(jobs)} "
              f"systems in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return failed


class OutputPump:
    """A child's output, for its log: tqdm's carriage-return updates collapse to the last one
    of each line; the latest "it/total" and rate are kept for the status line."""

    def __init__(self):
        self.buf, self.it, self.total, self.rate = b"", None, None, None

    def feed(self, chunk):
        self.buf += chunk
        for m in _PROGRESS.finditer(self.buf):
            self.it, self.total = int(m.group(1)), int(m.group(2))
            if m.group(3):
                r = float(m.group(3))
                self.rate = r if m.group(4) == b"it/s" else (1.0 / r if r else None)
        *lines, self.buf = self.buf.split(b"\n")
        if b"\r" in self.buf:  # an unfinished line: only its latest update matters
            self.buf = self.buf.rsplit(b"\r", 1)[-1]
        return b"".join(line.rstrip(b"\r").rsplit(b"\r", 1)[-1] + b"\n" for line in lines)

    def close(self):
        rest, self.buf = self.buf, b""
        return rest + b"\n" if rest.strip() else b""


class Job:
    def __init__(self, kind, system, run=None, deps=()):
        self.kind, self.system, self.run, self.deps = kind, system, run, list(deps)
        self.state = "queued"  # queued, running, done, failed, skipped
        self.proc = self.thread = self.error = None
        self.started = self.ended = None
        self.it = self.total = self.rate = None
        self.returncode = None
        self.packed = False    # one of several runs of an hgan.train.pack process
        self.pack_code = None  # the run's own exit code, from that process's output

    @property
    def name(self):
        return self.run.name if self.run else self.system

    def label(self):
        if self.kind == "train" and self.state == "running" and self.it is not None:
            rate = f" {self.rate:.1f}it/s" if self.rate else ""
            return f"{self.name} {self.it}/{self.total}{rate}"
        return f"{self.kind} {self.name}"


def pack_command(train_commands, python=sys.executable):
    """One `hgan.train.pack` process for several runs' train.py command lines."""
    cmd = [python, "-m", "hgan.train.pack", "--tagged"]
    for c in train_commands:
        cmd += ["--", *c[2:]]  # c = [python, train.py, flags...]
    return cmd


def _child_env(parallel):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # K processes with one intra-op pool per core each would oversubscribe the CPU K times.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    return env


class GridRunner:
    def __init__(self, spec, *, parallel=1, deadline_s=None, status_every_s=60.0, progress=True,
                 log=None, inline_eval=False, pack=1):
        self.spec, self.parallel, self.deadline_s = spec, max(1, int(parallel)), deadline_s
        self.pack = max(1, int(pack))
        self.inline_eval = inline_eval
        self.status_every_s, self.progress = status_every_s, progress
        self.log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
        self.jobs, self.stopping, self.deadline_hit = [], False, False
        self.aborting, self._stopped_at = False, None  # a second Ctrl-C (see _on_signal)
        # Set on a stop: data generation ends at its next block, an inline evaluation not yet
        # begun does not begin, one under way finishes. No signal reaches a thread, and an
        # exception raised into one (PyThreadState_SetAsyncExc) could land in a library's
        # critical section: it left tqdm's lock held and the grid hung on it.
        self._halt = threading.Event()
        self._probes_ready = set()  # systems whose probe cache fits their evaluations
        self.packs = []  # hgan.train.pack processes: a slot until they exit, runs reaped or not
        self.env = _child_env(self.parallel)                  # evaluations
        self.train_env = _child_env(self.parallel * self.pack)
        # as many training runs share the GPU: each keeps its frames there only within its
        # share (hgan.data.loader.runs_sharing_gpu); a user's own value is kept
        from hgan.data.loader import GPU_RUNS_ENV
        self._gpu_runs_given = GPU_RUNS_ENV in self.train_env
        self.train_env.setdefault(GPU_RUNS_ENV, str(self.parallel * self.pack))

    def plan(self, data_only=False):
        """Jobs still to do; GridError before anything starts when data or runs mismatch
        (data_only: the datasets alone, whatever the runs hold). Each call plans afresh."""
        self.jobs, data_jobs = [], {}
        for system in self.spec.systems:
            todo = datasets.missing_splits(self.spec, system)
            if todo:
                data_jobs[system] = Job("data", system)
                data_jobs[system].splits = todo
        if data_only:
            self.jobs = list(data_jobs.values())
            return self.jobs
        for run in self.spec.runs():
            run.check_config()
            run.check_length()
            dep = [data_jobs[run.system]] if run.system in data_jobs else []
            if not run.trained():
                train = Job("train", run.system, run, dep)
                self.jobs.append(train)
                self.jobs.append(Job("eval", run.system, run, [train]))
            elif not run.evaluated():
                self.jobs.append(Job("eval", run.system, run, dep))
        self.jobs = list(data_jobs.values()) + self.jobs
        if not self._gpu_runs_given:
            # No more than the runs to train share the GPU (--parallel 15 --pack 15 holds 15,
            # not 225): a count too high keeps their frames off it (loader.auto_kind).
            from hgan.data.loader import GPU_RUNS_ENV
            n = sum(j.kind == "train" for j in self.jobs)
            self.train_env[GPU_RUNS_ENV] = str(max(1, min(self.parallel * self.pack, n)))
        return self.jobs

    # -- starting and reaping --------------------------------------------------------------
    def _ready(self, job):
        if job.state != "queued" or any(d.state != "done" for d in job.deps):
            return False
        if job.kind == "eval":
            evals = [j for j in self.jobs if j.kind == "eval" and j is not job]
            if self.inline_eval:  # threads of this process: one at a time (GIL)
                return not any(j.state == "running" for j in evals)
            # The first evaluation of a system trains and caches its probe; the others wait
            # for it, then run side by side.
            mine = [j for j in evals if j.system == job.system]
            return (any(j.state == "done" for j in mine) or self._probe_cached(job)
                    or not any(j.state == "running" for j in mine))
        return not (job.kind == "train" and self.deadline_hit)

    def _probe_cached(self, job):
        """A probe cached for this evaluation's settings and data (a stale file would be
        retrained by each evaluation at once, and on a GPU not necessarily alike)."""
        if job.system in self._probes_ready:
            return True
        from hgan.data import get_system
        from hgan.evaluate.cli import build_parser, probe_settings
        from hgan.evaluate.probe import probe_is_cached
        args = build_parser().parse_args(job.run.eval_flags())
        ready = probe_is_cached(args.data, **probe_settings(get_system(job.system),
                                                            args.probe_steps, args.probe_width))
        if ready:
            self._probes_ready.add(job.system)
        return ready

    def _start(self, job):
        job.state, job.started = "running", time.time()
        if job.kind == "data":
            def work():
                try:
                    datasets.generate(self.spec, job.system, job.splits, self._halt)
                except BaseException as e:  # reported by the main thread
                    job.error = e
            # Not a daemon: an exit waits for it (see the module's docstring).
            job.thread = threading.Thread(target=work, name=f"data-{job.system}")
            job.thread.start()
            return
        run = job.run
        cmd = run.train_command() if job.kind == "train" else run.eval_command()
        if job.kind == "eval" and self.inline_eval and not (self.progress and _tty()):
            # its bars would go to this process's stderr: into a log file, hundreds of lines
            cmd = cmd + ["--no-progress"]
        log_path = self._begin(job, cmd)
        # A session of its own: a Ctrl-C on the terminal reaches this process only, which
        # then stops the children with SIGTERM (training saves a checkpoint first).
        if job.kind == "eval" and self.inline_eval:
            return self._eval_inline(job, cmd, log_path)
        job.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=self.train_env if job.kind == "train" else self.env,
                                    start_new_session=True)
        job.thread = threading.Thread(target=self._pump, args=(job, log_path), daemon=True)
        job.thread.start()

    def _begin(self, job, cmd, note=""):
        """A run's job starts: its directory, where its iterations start, the command in its
        log; returns the log's path."""
        job.state, job.started = "running", time.time()
        os.makedirs(job.run.dir, exist_ok=True)
        job.iter_before, job.total = job.run.iteration(), self.spec.iters
        log_path = job.run.path(f"{job.kind}.log")
        with open(log_path, "ab") as f:
            f.write(f"\n$ {' '.join(cmd)}\n{note}".encode())
        return log_path

    def _start_pack(self, jobs):
        """Several training jobs in one `hgan.train.pack` process (one slot)."""
        cmd = pack_command([job.run.train_command() for job in jobs])
        for i, job in enumerate(jobs):
            job.packed = True
            self._begin(job, cmd, f"(run {i} of this process)\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self.train_env, start_new_session=True)
        self.packs.append(proc)
        thread = threading.Thread(target=self._pump_pack, args=(jobs, proc), daemon=True)
        for job in jobs:
            job.proc, job.thread = proc, thread
        thread.start()

    def _pump_pack(self, jobs, proc):
        """Split a packed process's tagged output (hgan.train.pack) into each run's log."""
        pumps = [OutputPump() for _ in jobs]
        logs = [open(job.run.path("train.log"), "ab") for job in jobs]
        try:
            for line in proc.stdout:
                body = line[:-1] if line.endswith(b"\n") else line
                # Untagged output (a C++ warning, say) may be glued before a tagged line.
                cut = body.find(b"\x1e")
                m = re.fullmatch(rb"\x1e(\d+)([nrx])(.*)", body[cut:], re.S) if cut >= 0 else None
                i = int(m.group(1)) if m else -1
                if not 0 <= i < len(jobs):
                    cut = len(body)
                if cut > 0:  # not a run's own: the process's, for every log
                    for log in logs:
                        log.write(body[:cut] + b"\n")
                        log.flush()
                if not 0 <= i < len(jobs):
                    continue
                job, kind, text = jobs[i], m.group(2), m.group(3)
                if kind == b"x":
                    job.pack_code = int(text)
                    continue
                logs[i].write(pumps[i].feed(text + (b"\n" if kind == b"n" else b"\r")))
                logs[i].flush()
                job.it, job.total, job.rate = pumps[i].it, pumps[i].total or job.total, pumps[i].rate
        finally:
            for pump, log in zip(pumps, logs):
                log.write(pump.close())
                log.close()

    def _pump(self, job, log_path):
        """Copy a child's output to its log and keep its latest progress."""
        out = OutputPump()
        with open(log_path, "ab") as log:
            while True:
                chunk = job.proc.stdout.read1(1 << 16)
                if not chunk:
                    break
                log.write(out.feed(chunk))
                job.it, job.total, job.rate = out.it, out.total or job.total, out.rate
            log.write(out.close())

    def _eval_inline(self, job, cmd, log_path):
        """Evaluate in a thread of this process (training processes run on meanwhile): no
        process start or torch import per run, which on a small CPU costs more than the
        evaluation of a tiny run itself. Its output goes to this process's stderr."""
        from hgan.evaluate.cli import main as evaluate

        def work():
            # cmd = [python, -m, hgan.evaluate, flags...]
            job.error = _inline_evaluation(evaluate, cmd[3:], self._halt)
            if job.error is not None:
                with open(log_path, "a") as f:
                    f.write(f"{type(job.error).__name__}: {job.error}\n")
        # Not a daemon: an exit waits for it (see the module's docstring).
        job.thread = threading.Thread(target=work, name=f"eval-{job.name}")
        job.thread.start()

    def _reap(self, job):
        if job.proc is None:  # a thread: data generation, or an inline evaluation
            if job.thread.is_alive():
                return False
            job.ended = time.time()
            job.state = self._ended(job, "failed" if job.error else "done")
            if job.kind == "eval":
                job.returncode = 1 if job.error else 0
                self._record(job)
            elif job.error:
                self.log(f"[grid] data {job.system} {job.state}: {job.error}")
            return True
        if job.packed and job.pack_code is not None and job.proc.poll() is None:
            # This run has ended (its exit line came); the others of its process go on.
            job.ended, job.returncode = time.time(), job.pack_code
            job.state = self._ended(job, "done" if job.returncode == 0 else "failed")
            self._record(job)
            return True
        if job.proc.poll() is None:
            return False
        job.thread.join()
        job.ended, job.returncode = time.time(), job.proc.returncode
        if job.packed:
            # The run's own code; none: the process ended before the run did (a crash).
            job.returncode = job.pack_code if job.pack_code is not None else (job.returncode or 1)
        job.state = self._ended(job, "done" if job.returncode == 0 else "failed")
        self._record(job)
        return True

    def _ended(self, job, state):
        """A job that ended as a stop ends it, during the grid's stop, was stopped, not
        failed (a training stopped before its first iteration exits 143, an evaluation 130
        or 143, a killed one -9); another failure stays one. So was a training run that the
        deadline's SIGTERM ended before it could checkpoint (a packed run still waiting for
        its turn to be set up exits 143, a process still starting is killed by it): the
        deadline stopped it, as it stops the others, which are evaluated where they
        stopped. An evaluation whose results are written is done, whatever came after them."""
        if job.kind == "eval" and job.run.evaluated():
            return "done"
        if state != "failed":
            return state
        if (job.kind == "train" and self.deadline_hit and not self.stopping
                and job.returncode in DEADLINE_CODES):
            return "stopped"
        if not self.stopping:
            return state
        if job.proc is None:
            return "stopped" if isinstance(job.error, KeyboardInterrupt) else state
        return "stopped" if job.returncode in STOP_CODES else state

    def _record(self, job):
        run, seconds = job.run, round(job.ended - job.started, 2)
        rec = run.record()
        if job.kind == "train":
            summary = run.summary() or {}
            rec["segments"].append({"from": job.iter_before, "to": run.iteration(),
                                    "seconds": seconds, "returncode": job.returncode,
                                    "interrupted": job.state == "stopped",
                                    "stopped": summary.get("stopped"),
                                    "it_per_s_logged": (summary.get("stats") or {}).get("speed/it_per_s")})
            done = run.iteration() - job.iter_before
            msg = (f"{done} it in {seconds:.0f} s" if job.returncode == 0
                   else f"stopped after {done} it (exit {job.returncode}); the next grid "
                        f"command resumes it" if job.state == "stopped"
                   else f"FAILED (exit {job.returncode}), see {run.path('train.log')}")
            if job.returncode == PEER_FAILED_CODE and job.packed:
                msg = (f"stopped after {done} it: another run of its pack failed to capture "
                       f"(see the pack's failed run); checkpoint saved, the next grid command "
                       f"resumes it")
        else:
            rec["eval"] = {"seconds": seconds, "returncode": job.returncode,
                           "iteration": run.iteration(), "interrupted": job.state == "stopped"}
            msg = (f"{seconds:.0f} s" if job.returncode == 0
                   else "stopped; the next grid command evaluates it again"
                   if job.state == "stopped"
                   else f"FAILED (exit {job.returncode}), see {run.path('eval.log')}")
        run.save_record(rec)
        self.log(f"[grid] {job.kind} {run.name}: {msg}")

    # -- the loop ----------------------------------------------------------------------------
    def _skip_blocked(self):
        changed = True
        while changed:
            changed = False
            for job in self.jobs:
                blocked = any(d.state in ("failed", "stopped", "skipped") for d in job.deps)
                late = job.kind == "train" and self.deadline_hit
                if job.state == "queued" and (blocked or late or self.stopping):
                    job.state, changed = "skipped", True

    def _stop_children(self, why):
        self.log(f"[grid] {why}: stopping running jobs (training saves a checkpoint)")
        self._halt.set()
        procs = list({id(p): p for p in [j.proc for j in self.jobs
                                          if j.state == "running" and j.proc is not None]
                      + self._live_packs()}.values())
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return procs

    def status_line(self):
        counts = {s: sum(j.state == s for j in self.jobs) for s in ("done", "running", "failed")}
        running = ", ".join(j.label() for j in self.jobs if j.state == "running")
        return (f"{counts['done']}/{len(self.jobs)} jobs done, {counts['running']} running"
                + (f", {counts['failed']} failed" if counts["failed"] else "")
                + (f": {running}" if running else ""))

    @contextlib.contextmanager
    def signals(self):
        """SIGINT and SIGTERM stop the grid within this context (see _on_signal); the
        handlers before it are restored after."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                # None: not installed from Python; SIG_DFL is the best guess
                signal.signal(s, signal.SIG_DFL if h is None else h)

    def execute(self):
        """Run every planned job; returns the jobs (states: done, failed, stopped by a stop
        of the grid, skipped)."""
        with self.signals():
            self._run_jobs()
        self._wait_packs()
        return self.jobs

    def _run_jobs(self):
        t0 = time.time()
        # A live bar on a terminal; in a log file the periodic status lines say the same.
        bar = tqdm(total=len(self.jobs), desc="grid", unit="job", dynamic_ncols=True,
                   disable=not (self.progress and sys.stderr.isatty()), file=sys.stderr)
        last_status = time.time()
        try:
            while True:
                for job in self.jobs:
                    if job.state == "running":
                        self._reap(job)
                bar.n = sum(j.state in ("done", "failed", "stopped", "skipped")
                            for j in self.jobs)
                if self.deadline_s is not None and not self.deadline_hit and \
                        time.time() - t0 > self.deadline_s:
                    self.deadline_hit = True
                    for p in {id(j.proc): j.proc for j in self.jobs
                              if j.kind == "train" and j.state == "running"}.values():
                        p.send_signal(signal.SIGTERM)
                    self.log(f"[grid] training deadline ({self.deadline_s:.0f} s) reached: "
                             "running training jobs checkpoint and stop; evaluation goes on")
                if self.stopping:
                    self._stop_children("interrupted")
                    self._wait_all()
                    break
                self._skip_blocked()
                order = sorted((j for j in self.jobs if self._ready(j)),
                               key=lambda j: {"data": 0, "eval": 1, "train": 2}[j.kind])
                self._start_ready(order)
                if not any(j.state in ("queued", "running") for j in self.jobs):
                    break
                bar.set_postfix_str(self.status_line(), refresh=False)
                bar.refresh()
                if time.time() - last_status > self.status_every_s:
                    self.log(f"[grid] {time.time() - t0:.0f} s: {self.status_line()}")
                    last_status = time.time()
                time.sleep(0.25)
        finally:
            if any(j.state == "running" for j in self.jobs):  # left by an exception
                self._halt.set()
            bar.close()

    def _live_packs(self):
        return [p for p in self.packs if p.poll() is None]

    def slots_used(self):
        """Processes and threads running: a packed process counts once, until it exits
        (its runs may all have ended while it still tears down, holding GPU memory)."""
        return len({id(j.proc) if j.proc is not None else id(j.thread)
                    for j in self.jobs if j.state == "running"}
                   | {id(p) for p in self._live_packs()})

    def _start_ready(self, order):
        free = self.parallel - self.slots_used()
        for job in order:
            if free <= 0:
                break
            if not self._ready(job):  # two evals of one system in `order`: only one starts
                continue
            if job.kind == "train" and self.pack > 1:
                # A pack waits until it is full, or holds every training run still queued,
                # unless a deadline runs: its clock started with the grid, data included.
                ready = [j for j in order if j.kind == "train" and self._ready(j)]
                queued = sum(j.kind == "train" and j.state == "queued" for j in self.jobs)
                if len(ready) < min(self.pack, queued) and self.deadline_s is None:
                    continue
                self._start_pack(ready[:self.pack])
            else:
                self._start(job)
            free -= 1

    def _wait_packs(self):
        """Packed processes whose runs have all ended: wait for them to exit."""
        end = time.time() + STOP_GRACE_S
        for p in self._live_packs():
            try:
                p.wait(timeout=max(1.0, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _wait_all(self):
        """After a stop: every running job ends and is reaped (its record written). Processes
        get STOP_GRACE_S, or until a second Ctrl-C, then are killed; threads (data
        generation stops at its next block, an inline evaluation finishes) are waited for
        to the end: given up, one left its job running and unrecorded while compare.md was
        written, and the interpreter's exit waited for it outside the grid's handlers."""
        end, killed, told = time.time() + STOP_GRACE_S, False, False
        while any(j.state == "running" for j in self.jobs) or self._live_packs():
            if not killed and (self.aborting or time.time() > end):
                self._kill_processes("a second Ctrl-C" if self.aborting
                                     else f"not stopped within {STOP_GRACE_S} s")
                killed = True
            for job in self.jobs:
                if job.state == "running":
                    self._reap(job)
            if time.time() > end and not told:
                for job in (j for j in self.jobs if j.state == "running" and j.proc is None):
                    self.log(f"[grid] {job.kind} {job.name} still running after {STOP_GRACE_S} "
                             f"s: waiting for it to end (a thread cannot be stopped from outside)")
                told = True
            time.sleep(0.05)
        self._skip_blocked()

    def _kill_processes(self, why):
        procs = {id(j.proc): j.proc for j in self.jobs if j.state == "running" and j.proc}
        procs.update({id(p): p for p in self._live_packs()})
        self.log(f"[grid] {why}: killing the running processes (training loses the iterations "
                 f"since its last checkpoint)")
        for p in procs.values():
            if p.poll() is None:
                p.kill()

    def _on_signal(self, signum, frame):
        """Record the stop; the loop acts on it. Raising here (a KeyboardInterrupt out of a
        wait) lost the running jobs' records and compare.md."""
        now = time.monotonic()
        if not self.stopping:
            self.stopping, self._stopped_at = True, now
        elif signum == signal.SIGINT and now - self._stopped_at >= SECOND_AFTER_S:
            self.aborting = True


def _inline_evaluation(evaluate, argv, halt):
    """hgan.evaluate's main(argv) in this thread, unless `halt` is set (then
    KeyboardInterrupt, not raised); returns the error that ended it, or None."""
    if halt.is_set():  # the grid stopped before this thread began
        return KeyboardInterrupt()
    try:
        evaluate(argv)
    except SystemExit as e:
        # The command line's one-line reason (an InputError) is the exit's context.
        return (None if e.code in (None, 0) else
                e.__context__ or RuntimeError(f"exit code {e.code}"))
    except BaseException as e:  # reported by the main thread as a failed job
        return e
    return None


def _tty():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False




def check_ready(spec):
    """Fail early (GridError) on settings that would only fail inside every subprocess."""
    from hgan.data import SYSTEMS
    from hgan.model_kinds import model_names
    bad = [s for s in spec.systems if s not in SYSTEMS]
    if bad:
        raise GridError(f"unknown systems {bad}; valid: {', '.join(SYSTEMS)}")
    bad = [m for m in spec.models if m not in model_names()]
    if bad:
        raise GridError(f"unknown models {bad}; valid: {', '.join(model_names())}")
    if spec.iters < 1:
        raise GridError(f"--iters must be >= 1, got {spec.iters}")
    if spec.i3d and not os.path.exists(spec.i3d):
        raise GridError(f"--i3d {spec.i3d} does not exist")
