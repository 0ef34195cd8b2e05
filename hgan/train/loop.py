"""The trainer: one iteration is one D update and one G update (Trainer.step), MoCoGAN style;
also the run's dataset checks and its mixed-precision policy. The loop over iterations,
with logging, samples and checkpoints, is hgan.train.run.

Every random draw of training (latent noise, frame and clip positions) comes from one
dedicated torch.Generator whose state is checkpointed with the networks, optimisers, scaler,
the global RNGs and the loader position, so a resumed CPU run is bit-identical to a straight one.
On CUDA the step is replayed as two CUDA graphs where the configuration allows
(hgan.train.capture); the eager step below is the reference it is tested against.
"""
import contextlib
import os
import random
import sys
import warnings

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from hgan.device import check_device
from hgan.kernels import cyclic_loss
from hgan.model_kinds import model_kind
from hgan.models import build_models
from hgan.models.config import batch_refusal
from hgan.train import capture as hcapture
from hgan.train import dist as hdist
from hgan.train.checkpoint import capture_rng, load_weights, restore_rng, save_checkpoint
from hgan.train.config import RunConfig
from hgan.train.losses import accuracy, d_loss, g_loss, r1_penalty
from hgan.train.profiling import stage

class NonFiniteLoss(RuntimeError):
    """A loss that is NaN or inf. Under torchrun every rank raises it at the same flush;
    `reporter` is False on the ranks whose message only repeats another rank's finding."""

    def __init__(self, message, reporter=True):
        super().__init__(message)
        self.reporter = reporter


def defers_checks(device: torch.device) -> bool:
    """Whether the non-finite loss check waits for the next host sync instead of making one.

    On CUDA, reading a loss on the host stalls the step: the CPU cannot queue the backward
    until the GPU has caught up, and a small step is launch-bound. On CPU it costs nothing.
    """
    return device.type == "cuda"


def resolve_device(name: str, info: hdist.DistInfo) -> torch.device:
    """The training device; ValueError naming the problem when this machine has no such device."""
    dev = check_device(name)
    if dev.type == "cuda" and (info.enabled or dev.index is None):
        dev = torch.device("cuda", info.local_rank if info.enabled else 0)
    return dev


def ddp_finds_unused(mcfg) -> bool:
    """Whether G has parameters without gradient, which G's DDP wrapper must then look for:
    the Hamiltonian's output biases under the reference integrator (see Trainer.__init__)."""
    return model_kind(mcfg.model).hamiltonian and mcfg.integrator == "reference"


def cpu_has_fast_bf16() -> bool:
    """Native bf16 arithmetic: AVX512-BF16 or AMX. (oneDNN's own "bf16 supported" probe also
    says yes on plain AVX512 CPUs, where bf16 is emulated and slow.)"""
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if p is not None)


def amp_policy(device: torch.device, enabled: bool, dtype: str = "auto", say: bool = True):
    """(autocast dtype or None, GradScaler needed).

    say: whether this process reports the CPU fall-back (under torchrun rank 0 alone does, so
    that it is one line, not one per rank).

    bf16 keeps fp32's exponent range, so gradients cannot underflow and no loss scaling is
    needed; it is used on every CUDA device that supports it and on CPUs with native bf16.
    Older GPUs fall back to fp16, whose narrow range needs a GradScaler. A CPU without native
    bf16 (no AVX512-BF16 or AMX) runs bf16 convolutions through slow reference kernels
    (measured ~20x slower than fp32 on an AVX2 EPYC), and autocast exists for speed: there
    `--amp` runs fp32 and says so in one line; only an explicit `--amp-dtype bf16` forces it.
    Where it says bf16 on a CPU, the Trainer still checks the run's convolutions in bf16
    (hgan.train.cpu_bf16) before using it.
    """
    if dtype not in ("auto", "bf16", "fp16"):
        raise ValueError(f"unknown --amp-dtype {dtype!r}; choose auto, bf16 or fp16")
    if not enabled:
        return None, False
    if device.type == "cuda":
        if dtype == "fp16" or (dtype == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16, True
        if not torch.cuda.is_bf16_supported():
            # bad input, said in one line by the setup and the grid's checks (a RuntimeError
            # was a traceback)
            raise ValueError(f"--amp-dtype bf16: {torch.cuda.get_device_name(device)} has no "
                             "bf16; use --amp (fp16 there) or --amp-dtype fp16")
        return torch.bfloat16, False
    if dtype == "fp16":
        raise ValueError("--amp-dtype fp16 is for CUDA; on CPU autocast uses bf16")
    if cpu_has_fast_bf16():
        return torch.bfloat16, False
    if not say:
        return (None, False) if dtype == "auto" else (torch.bfloat16, False)
    if dtype == "auto":
        print("[hgan] --amp: this CPU has no native bf16 (AVX512-BF16/AMX), where bf16 runs "
              "~20x slower than fp32: training in fp32", file=sys.stderr, flush=True)
        return None, False
    warnings.warn("--amp-dtype bf16: this CPU has no native bf16 (AVX512-BF16/AMX), so bf16 "
                  "autocast runs ~20x slower than fp32 here, and its emulated kernels are not "
                  "reliable (on an AVX512 Xeon, torch 2.13, D_V's Conv3d weight gradients went "
                  "non-finite in the first update)")
    return torch.bfloat16, False


def ensure_dataset(cfg: RunConfig, info: hdist.DistInfo):
    """Generate the dataset when missing (main rank), then check that it fits cfg: ValueError
    (hgan.data.h5io.DataFormatError for a broken file) naming the mismatch."""
    check_data_root(cfg)
    done = hdist.LongWait() if info.enabled else None   # the others wait out rank 0's generation
    if not os.path.exists(cfg.data_path):
        if cfg.gen_frames < cfg.frames:
            raise ValueError(f"--gen-frames ({cfg.gen_frames}) must be >= --frames ({cfg.frames}) "
                             f"to generate {cfg.data_path}")
        # A batch takes one window of each of --batch-size trajectories (split over the ranks,
        # which it divides): fewer would be generated, then refused by the loader.
        if cfg.gen_train < cfg.batch_size:
            raise ValueError(f"--gen-train ({cfg.gen_train}) must be >= --batch-size "
                             f"({cfg.batch_size}) to generate {cfg.data_path}")
        if info.is_main:
            _generate(cfg)
    if done is not None:
        done.wait()
    check_dataset(cfg)


def check_data_root(cfg: RunConfig):
    """--data names the root above <system>/train.h5; the file itself, or the system's own
    folder, would have a dataset generated beside the one meant (or fail half-way)."""
    d = cfg.data
    if os.path.isfile(d):
        root = os.path.dirname(os.path.dirname(os.path.abspath(d)))
        raise ValueError(f"--data is the dataset root (holding {cfg.system}/train.h5), not a "
                         f"file: got {d}" + (f"; use --data {root}" if d.endswith(".h5") else ""))
    if not os.path.exists(cfg.data_path) and os.path.isfile(os.path.join(d, "train.h5")):
        raise ValueError(f"--data {d} holds train.h5 itself; --data is the root above the "
                         f"systems' folders: use --data {os.path.dirname(os.path.abspath(d))}")


def _generate(cfg: RunConfig):
    """Generate cfg's dataset. SIGINT / SIGTERM during it end in
    hgan.data.GenerationInterrupted with no partial file left (hgan.data.interrupt): this runs
    before training installs its own stop handlers, so the data package's are in force."""
    from hgan.data import GenerationInterrupted, generate_dataset
    from hgan.data.h5io import missing_folders, remove_empty
    print(f"[hgan] {cfg.data_path} not found: generating {cfg.gen_train} train / {cfg.gen_test} "
          f"test trajectories of {cfg.gen_frames} frames", flush=True)
    test_path = os.path.join(os.path.dirname(cfg.data_path), "test.h5")
    had_test = os.path.exists(test_path)
    made = missing_folders(cfg.data_path)
    try:
        generate_dataset(cfg.system, cfg.data, train=cfg.gen_train, test=cfg.gen_test,
                         frames=cfg.gen_frames, seed=cfg.seed, resolution=cfg.model.resolution,
                         progress=cfg.progress)
    except GenerationInterrupted:
        # The run's dataset is one unit: a test split this call finished goes too, so that
        # a stopped first run leaves the data directory as it found it.
        if not had_test and os.path.exists(test_path):
            os.remove(test_path)
        remove_empty(made)
        raise


def check_dataset(cfg: RunConfig):
    """ValueError when cfg.data_path cannot train this config: a broken file (DataFormatError),
    another system, resolution, or trajectories shorter than --frames."""
    from hgan.data.h5io import open_h5
    with open_h5(cfg.data_path) as f:
        system, res, frames = f.attrs.get("system"), int(f.frames.shape[2]), int(f.frames.shape[1])
    redo = (f"point --data at another directory, or delete {cfg.data_path} to generate it "
            "again")
    if system != cfg.system:
        raise ValueError(f"{cfg.data_path} holds {system} trajectories, not --system "
                         f"{cfg.system}: {redo}")
    if res != cfg.model.resolution:
        raise ValueError(f"{cfg.data_path} has {res}x{res} frames but --resolution is "
                         f"{cfg.model.resolution}: use --resolution {res}, or {redo}")
    if frames < cfg.frames:
        raise ValueError(f"{cfg.data_path} has trajectories of {frames} frames, fewer than "
                         f"--frames {cfg.frames}: use --frames {frames} or less, or {redo}")


# What of a dataset identifies it for a resume, besides its path (the file's attributes).
_IDENTITY = ("system", "resolution", "seed")


def dataset_identity(path: str) -> dict:
    """What a checkpoint remembers of its training set, so that a resume can tell whether the
    file it finds (moved, regenerated) is the one the run trained on."""
    from hgan.data.h5io import open_h5
    with open_h5(path) as f:
        n, frames = (int(x) for x in f.frames.shape[:2])
        attrs = {k: f.attrs.get(k) for k in _IDENTITY}
    return {"path": os.path.abspath(path), "trajectories": n, "frames": frames, **attrs}


def _describe(ident):
    return (f"{ident['trajectories']} trajectories of {ident['frames']} frames"
            + "".join(f", {k} {ident[k]}" for k in _IDENTITY if ident.get(k) is not None))


def check_resumed_dataset(saved: dict | None, cfg: RunConfig, now: dict | None = None):
    """ValueError when a resumed run would train on another dataset than its checkpoint's
    (`saved`: dataset_identity at the time; None for checkpoints from before it was kept).
    now: the dataset_identity of the file found; None: the file is missing, and would be
    generated from the --gen-* flags."""
    if not saved:
        return
    had = f"the run trained on {saved['path']} ({_describe(saved)})"
    keys = ("trajectories", "frames") + _IDENTITY
    if now is None:
        would = {"trajectories": cfg.gen_train, "frames": cfg.gen_frames, "system": cfg.system,
                 "resolution": cfg.model.resolution, "seed": cfg.seed}
        if any(saved.get(k) is not None and saved[k] != would[k] for k in keys):
            raise ValueError(f"{cfg.data_path} is missing and generating it would not give "
                             f"back the run's data: {had}; point --data at that dataset's root")
        return
    if any(saved.get(k) is not None and saved[k] != now[k] for k in keys):
        raise ValueError(f"{cfg.data_path} has {_describe(now)}, but {had}; point --data at "
                         f"that dataset's root")


def local_batch(cfg: RunConfig, world_size: int) -> int:
    """Each rank's share of --batch-size; ValueError when the batch cannot train on this many
    ranks (checked by the setup before a missing dataset is generated, and by Trainer)."""
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the "
                         f"{world_size} ranks")
    local = cfg.batch_size // world_size
    refusal = batch_refusal(cfg.model, local)
    if refusal:
        raise ValueError(f"{refusal} (--batch-size {cfg.batch_size}"
                         + (f" over {world_size} ranks)" if world_size > 1 else ")"))
    return local


# What a checkpoint must hold to resume (Trainer.state_dict; hgan.train.run checks it).
TRAINING_STATE = ("generator", "image_disc", "video_disc", "opt_g", "opt_di", "opt_dv", "scaler",
                  "loader_position", "noise_rng", "rng")


class Trainer:
    def __init__(self, cfg: RunConfig, info: hdist.DistInfo | None = None, device=None):
        self.cfg, self.info = cfg, info or hdist.DistInfo()
        self.dataset = None  # dataset_identity of the training set, kept in checkpoints
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device, self.info)
        self.local_batch = local_batch(cfg, self.info.world_size)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # Nothing in training draws from these, but checkpoints store their states: seeded,
        # two runs of one seed write the same checkpoint whatever ran before in the process.
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.models = build_models(cfg.model, self.device)
        self.G, self.D_I, self.D_V = self.models.generator, self.models.image_disc, self.models.video_disc
        self._reserve_frames()
        self.amp_dtype, use_scaler = amp_policy(self.device, cfg.amp, cfg.amp_dtype,
                                                say=self.info.is_main)
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:
            self.amp_dtype = self._checked_cpu_bf16(cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        # CUDA graphs (hgan.train.capture) unless this configuration cannot be captured.
        self.graph_fallback = hcapture.fallback_reason(
            cfg, self.device, distributed=self.info.enabled, grad_scaler=use_scaler)
        self.captured = self.graph_fallback is None
        # Said on CUDA only: on a CPU nobody expects graphs, and every run would say it.
        if not self.captured and cfg.cuda_graph and self.device.type == "cuda":
            hcapture.report_fallback(self.graph_fallback, self.info.is_main)
        self.adam_fused = self.captured and hcapture.ADAM_FUSED
        adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                    capturable=self.captured,
                    fused=self.adam_fused or None)
        self.opt_g = torch.optim.Adam(self.G.parameters(), **adam)
        self.opt_di = torch.optim.Adam(self.D_I.parameters(), **adam)
        self.opt_dv = torch.optim.Adam(self.D_V.parameters(), **adam)
        if cfg.compile:
            # G_I, D_I, D_V and the motion module's noise-free part (hgan's configuration map,
            # mocogan's GRU recurrence; the leapfrog integrator stays eager, see
            # HamiltonianMotion.compile). R1 needs double backward, which torch.compile cannot
            # trace: see _eager. Compiling in place keeps the state_dict keys unchanged.
            for m in (self.G.image_generator, self.D_I, self.D_V, self.G.motion_module):
                m.compile()
        # The forwards whose gradients are averaged across ranks go through these callables:
        # DistributedDataParallel wrappers under torchrun (which also broadcast rank 0's weights
        # at construction), the bare modules otherwise. The G step calls the bare, frozen
        # discriminators, so their reducers see only the D step's single backward.
        self.G_ddp, self.DI_ddp, self.DV_ddp = self.G, self.D_I, self.D_V
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The Hamiltonian's output bias never reaches the dynamics (only dH/dx does): under
            # the reference integrator's autograd it gets no gradient, and G's reducer must
            # look for unused parameters (a graph traversal every step). The analytic and
            # fused backward give it a zero gradient, and every other parameter of every model
            # gets one (tests/test_train_ddp.py), so they skip the search.
            self.G_ddp = DistributedDataParallel(
                self.G, device_ids=ids, find_unused_parameters=ddp_finds_unused(cfg.model))
            # Each discriminator runs twice before its backward (fake, then real for R1). A
            # buffer broadcast at the second forward would overwrite the BatchNorm running
            # stats the first one saved, which torch 2.11 rejects at backward ("modified by an
            # inplace operation"). The discriminators never run in eval mode, so their running
            # stats are unused and each rank may keep its own.
            self.DI_ddp, self.DV_ddp = (DistributedDataParallel(m, device_ids=ids,
                                                                **hdist.NO_FORWARD_BUFFER_SYNC)
                                        for m in (self.D_I, self.D_V))
        # (iteration, name, loss) awaiting the non-finite check: see flush_checks.
        self._pending = []
        self.defer_checks = defers_checks(self.device)
        self.noise = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + self.info.rank)
        self._rank_noise = None  # (iteration, every rank's noise state): see gather_noise
        self.iteration = 0
        self.loader_position = 0
        # static_mode: None, the eager step; "graph", the static-buffer step captured into
        # CUDA graphs; "static", the same step uncaptured (what CPU tests compare to eager).
        # The StaticStep is built at the first step, from the iteration a resume restored.
        self.static = None
        self.static_mode = "graph" if self.captured else None

    def _static_step(self, real):
        if self.static is None:
            self.static = hcapture.StaticStep(self, capture=self.static_mode == "graph")
        return self.static(real)

    # ---------------------------------------------------------------- one iteration
    def _autocast(self):
        # No cast cache under static buffers: cached casts made during a capture would
        # outlive it (torch.cuda.make_graphed_callables asks the same).
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None,
                              cache_enabled=self.static_mode is None)

    def _eager(self):
        # R1 needs double backward, which compiled (aot_autograd) modules cannot do: run
        # compiled nets eagerly for it (same weights, same DDP wrapper). Only a compiled
        # discriminator touches the stance: it is process-wide, not per thread, so trainers
        # stepping in threads (hgan.train.pack, which never compiles) would interleave their
        # saves and restores and could leave the whole process in force_eager.
        if not any(getattr(m, "_compiled_call_impl", None) is not None
                   or isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
                   for net in (self.D_I, self.D_V) for m in net.modules()):
            return contextlib.nullcontext()
        return torch.compiler.set_stance("force_eager")

    def _check(self, name, value):
        self._pending.append((self.iteration + 1, name, value.detach()))
        if not self.defer_checks:
            self.flush_checks()

    def flush_checks(self, agree=True):
        """Raise NonFiniteLoss naming the first non-finite loss since the last flush.

        Under torchrun every rank must call it at the same iterations (agree=True: the ranks
        all-reduce what they found and stop together); agree=False checks this rank alone,
        for calls made on one rank (save, on rank 0) or on a path the others do not take.

        One host sync for all pending losses. The run loop flushes before anything that reads
        or keeps the weights (log, samples, checkpoint, exit), so a checkpoint is never
        written from weights a non-finite loss has touched.
        """
        bad = None
        if self.static is not None:
            bad = self.static.flush_checks()
        if bad is None and self._pending:
            pending, self._pending = self._pending, []
            finite = torch.stack([torch.isfinite(v).all() for _, _, v in pending]).tolist()
            bad = next(((it, name, value.item()) for ok, (it, name, value)
                        in zip(finite, pending) if not ok), None)
        if self.info.enabled and agree:
            # Every rank flushes at the same iterations: they agree here, so that all of them
            # stop together (a rank whose own losses were finite went on to a collective the
            # stopped one never joined) and only the first rank says so.
            first = hdist.first_flagged(None if bad is None else bad[0], self.info,
                                        self.device)
            if first is not None and first != (None if bad is None else bad[0],
                                               self.info.rank):
                raise NonFiniteLoss(f"non-finite loss on rank {first[1]} at iteration "
                                    f"{first[0]}", reporter=False)
        if bad is not None:
            it, name, value = bad
            raise NonFiniteLoss(f"non-finite {name} ({value}) at iteration {it}")

    def _grad_norm(self, module):
        norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
        return torch.stack(norms).norm() if norms else torch.zeros((), device=self.device)

    def _disc_logits(self, disc, fake, real):
        """(fake logits, real logits, R1 penalty or 0) of one discriminator.

        Fake before real: under --compile a compiled BatchNorm forward updates its running
        stats with a version-bumping copy_, which would invalidate the running stats that the
        eager R1 forward saved for its (double) backward.

        Without R1 the real batch enters in the fakes' dtype and memory layout: under
        autocast the first layer (a convolution) casts it to bf16/fp16 anyway, so the logits
        are the same, and a compiled discriminator then sees one input signature, not a third
        graph to compile. (R1 takes fp32 reals: its input gradient is formed outside autocast.)
        """
        fake_logits = disc(fake)
        if self.cfg.r1_gamma <= 0:
            if real.dtype != fake.dtype or real.stride() != fake.stride():
                real = torch.empty_like(fake).copy_(real)
            return fake_logits, disc(real), torch.zeros((), device=self.device)
        with self._eager():
            real_logits, r1 = r1_penalty(disc, real, self.cfg.r1_gamma, self.scaler)
        return fake_logits, real_logits, r1

    def step(self, real, want_stats=False):
        """One D update then one G update on a real batch [B, T, C, H, W]; returns metrics.

        Under CUDA graphs (see hgan.train.capture) the returned tensors are the graphs' static
        outputs: read them before the next step, or clone them."""
        if self.static_mode is not None:
            return self._static_step(real)
        self.check_batch(real)
        d = self._d_update(real, want_stats, self._check)
        return self._g_update(d, want_stats, self._check)

    def _checked_cpu_bf16(self, cfg):
        """bf16, or None (fp32) when this CPU's bf16 convolutions are wrong at this run's
        shapes (hgan.train.cpu_bf16): with --amp one line says so; an explicit --amp-dtype
        bf16 is refused rather than trained on wrong gradients."""
        from hgan.train import cpu_bf16
        bad = cpu_bf16.check(self.models, self.local_batch, cfg.frames, cfg.model.clip_frames,
                             cfg.model.channels_last)
        if bad is None:
            return torch.bfloat16
        if cfg.amp_dtype == "bf16":
            raise ValueError(f"--amp-dtype bf16: {bad}; train in fp32 (without --amp)")
        if self.info.is_main:
            print(f"[hgan] --amp: {bad}: training in fp32", file=sys.stderr, flush=True)
        return None

    def check_batch(self, real):
        t, cf = real.shape[1], self.cfg.model.clip_frames
        if t < cf:
            raise ValueError(f"training videos have {t} frames, fewer than clip_frames={cf}")

    def _set_disc_grad(self, on):
        for p in list(self.D_I.parameters()) + list(self.D_V.parameters()):
            p.requires_grad_(on)

    def _d_update(self, real, want_stats, check):
        """G forward, then the discriminators' update; returns what the G update needs.

        Shared by the eager step and the static-buffer step that CUDA graphs capture, so both
        draw the same noise in the same order and compute the same update."""
        mcfg = self.cfg.model
        b, t = real.shape[:2]
        cf = mcfg.clip_frames
        # S_1 and S_T of the paper: one random frame and one random clip per video.
        j = torch.randint(0, t, (b,), generator=self.noise, device=self.device)
        s = torch.randint(0, t - cf + 1, (b,), generator=self.noise, device=self.device)
        rows = torch.arange(b, device=self.device)
        clip_idx = s[:, None] + torch.arange(cf, device=self.device)

        # A generated video is a random t-frame window of a longer rollout, as a real one is
        # of a longer trajectory (the MoCoGAN and official HGAN code); only the window is
        # rendered. Drawn only when there is a choice, so a run without it keeps its stream.
        rollout = max(mcfg.rollout_frames, t)
        window = None
        if rollout > t:
            window = (torch.randint(0, rollout - t + 1, (b,), generator=self.noise,
                                    device=self.device), t)
        with self._autocast():
            # the generator marks its own "motion" and "generator" profiler ranges
            fake, mot = self.G_ddp(b, rollout, generator=self.noise, window=window)
        real_img, fake_img = real[rows, j], fake[rows, j]
        real_clip, fake_clip = real[rows[:, None], clip_idx], fake[rows[:, None], clip_idx]
        if mcfg.channels_last:
            real_img = real_img.contiguous(memory_format=torch.channels_last)

        self._set_disc_grad(True)
        self.opt_di.zero_grad(set_to_none=True)
        self.opt_dv.zero_grad(set_to_none=True)
        with self._autocast():
            with stage("D_I"):
                li_f, li_r, r1_i = self._disc_logits(self.DI_ddp, fake_img.detach(), real_img)
            with stage("D_V"):
                lv_f, lv_r, r1_v = self._disc_logits(self.DV_ddp, fake_clip.detach(), real_clip)
        loss_di, loss_dv = d_loss(li_r, li_f), d_loss(lv_r, lv_f)
        loss_d = loss_di + loss_dv + r1_i + r1_v
        check("discriminator loss", loss_d)
        with stage("backward"):
            self.scaler.scale(loss_d).backward()
        with stage("optimizer"):
            stats = {}
            if want_stats:
                # Under a GradScaler the gradients are still scaled here: unscaled first (the
                # documented way to read them before step(), which then does not unscale
                # again), or the norms would read the loss scale (65536) times too big.
                self.scaler.unscale_(self.opt_di)
                self.scaler.unscale_(self.opt_dv)
                stats["grad_norm/D_I"] = self._grad_norm(self.D_I)
                stats["grad_norm/D_V"] = self._grad_norm(self.D_V)
            self.scaler.step(self.opt_di)
            self.scaler.step(self.opt_dv)
        stats.update({"loss/D_I": loss_di.detach(), "loss/D_V": loss_dv.detach(),
                      "loss/R1": (r1_i + r1_v).detach(),
                      "acc/D_I": accuracy(li_r.detach(), li_f.detach()),
                      "acc/D_V": accuracy(lv_r.detach(), lv_f.detach())})
        return {"fake_img": fake_img, "fake_clip": fake_clip, "mot": mot, "stats": stats}

    def _g_update(self, d, want_stats, check):
        """The generator's update (D frozen so its weights collect no gradient); the metrics."""
        cfg, mcfg = self.cfg, self.cfg.model
        stats = d["stats"]
        self._set_disc_grad(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            with stage("D_I"):
                gi = self.D_I(d["fake_img"])
            with stage("D_V"):
                gv = self.D_V(d["fake_clip"])
        loss_g_adv = g_loss(gi) + g_loss(gv)
        l_cyc = (cyclic_loss(d["mot"]["dHdq"], lam=cfg.cyc_lambda)
                 if model_kind(mcfg.model).cyclic_loss else torch.zeros((), device=self.device))
        loss_g = loss_g_adv + l_cyc
        check("generator loss", loss_g)
        with stage("backward"):
            self.scaler.scale(loss_g).backward()
        with stage("optimizer"):
            if want_stats:
                self.scaler.unscale_(self.opt_g)         # as the discriminators' above
                stats["grad_norm/G"] = self._grad_norm(self.G)
            self.scaler.step(self.opt_g)
            self.scaler.update()
        self._set_disc_grad(True)
        stats.update({"loss/G": loss_g_adv.detach(), "loss/L_cyc": l_cyc.detach()})
        return stats

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The checkpoint: TRAINING_STATE, the config and iteration, and where it ran."""
        return {"config": self.cfg.to_dict(), "iteration": self.iteration,
                "loader_position": self.loader_position,
                "generator": self.G.state_dict(), "image_disc": self.D_I.state_dict(),
                "video_disc": self.D_V.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_di": self.opt_di.state_dict(), "opt_dv": self.opt_dv.state_dict(),
                "scaler": self.scaler.state_dict(), "noise_rng": self.noise.get_state(),
                "rng": capture_rng(), "world_size": self.info.world_size,
                "dataset": self.dataset, **self._rank_noise_state()}

    def gather_noise(self):
        """Under torchrun, collect every rank's noise generator state for the next checkpoint
        (which rank 0 alone writes): a collective, so every rank calls it at the same
        iteration. A run resumed on as many ranks then draws on each the noise it would
        have drawn without the stop."""
        if not self.info.enabled:
            return
        own = self.noise.get_state().to(self.device)
        parts = [torch.empty_like(own) for _ in range(self.info.world_size)]
        torch.distributed.all_gather(parts, own)
        self._rank_noise = (self.iteration, torch.stack([p.cpu() for p in parts]))

    def _rank_noise_state(self) -> dict:
        if self._rank_noise is None or self._rank_noise[0] != self.iteration:
            return {}
        return {"rank_noise_rng": self._rank_noise[1]}

    def _reserve_frames(self):
        """Per-frame state for every frame a step rolls out (mocogan's GRU statistics; a
        checkpoint of a run trained before this was reserved comes back with fewer rows)."""
        reserve = getattr(self.G.motion_module, "reserve_frames", None)
        if reserve is not None:
            reserve(max(self.cfg.model.rollout_frames, self.cfg.frames))

    def load_state_dict(self, ckpt: dict):
        load_weights(self.G, ckpt["generator"], "generator")
        self._reserve_frames()
        load_weights(self.D_I, ckpt["image_disc"], "image discriminator")
        load_weights(self.D_V, ckpt["video_disc"], "video discriminator")
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_di.load_state_dict(ckpt["opt_di"])
        self.opt_dv.load_state_dict(ckpt["opt_dv"])
        self.scaler.load_state_dict(ckpt["scaler"])
        for opt in (self.opt_g, self.opt_di, self.opt_dv):
            hcapture.set_capturable(opt, self.captured, self.adam_fused or None)
        # Loading replaced the optimiser state tensors a capture would have recorded.
        self.static = None
        self.iteration, self.loader_position = int(ckpt["iteration"]), int(ckpt["loader_position"])
        # A CPU generator's state is 5056 bytes, a CUDA one's 16: a checkpoint written on the
        # other device type (--device is a resumable override) cannot restore this generator,
        # and set_state would raise; it is reseeded like a multi-rank resume instead.
        same_kind = ckpt["noise_rng"].numel() == self.noise.get_state().numel()
        ranks = ckpt.get("rank_noise_rng")  # every rank's, from a run under torchrun
        if not self.info.enabled and int(ckpt.get("world_size", 1)) == 1 and same_kind:
            self.noise.set_state(ckpt["noise_rng"])
            restore_rng(ckpt["rng"])
        elif (self.info.enabled and ranks is not None and len(ranks) == self.info.world_size
              and ranks.shape[1] == self.noise.get_state().numel()):
            self.noise.set_state(ranks[self.info.rank].clone())
        else:
            # Another number of ranks or device type, or a checkpoint without every rank's
            # state: each rank reseeds from (seed, rank, iteration).
            self.noise.manual_seed(self.cfg.seed * 1_000_003 + self.info.rank + 7919 * self.iteration)
            if self.info.is_main:
                print(f"[hgan] the checkpoint's noise state does not fit this run (written by "
                      f"{int(ckpt.get('world_size', 1))} rank(s), or on another device type): "
                      f"each rank's noise is reseeded from the seed, its rank and iteration "
                      f"{self.iteration}; training goes on, not bit-identical to an unbroken "
                      f"run", file=sys.stderr, flush=True)

    def save(self, name="last.pt") -> str:
        self.flush_checks(agree=False)  # rank 0 alone; the run loop's flush agreed before
        return save_checkpoint(self.state_dict(), os.path.join(self.cfg.out, "checkpoints", name))
