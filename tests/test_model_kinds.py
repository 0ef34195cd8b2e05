"""hgan.model_kinds: the table of --model kinds says what each model's modules do, and a kind
added to it (with its motion module, nothing else) trains, samples and plans in a grid."""
import pytest
import torch
from torch import nn

from hgan import model_kinds
from hgan.model_kinds import KINDS, ModelKind, model_kind
from hgan.models import ModelConfig, build_models
from hgan.models.config import batch_refusal
from hgan.train.config import build_parser, parse_command_line
from hgan.train.loop import Trainer
from test_train_run import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


class DriftMotion(nn.Module):
    """A motion model of one line: y_t = a + t b, (a, b) a linear map of one noise vector."""

    def __init__(self, cfg):
        super().__init__()
        self.noise_dim = cfg.motion_dim
        self.map = nn.Linear(cfg.motion_dim, 2 * cfg.motion_dim)

    @staticmethod
    def batch_refusal(cfg, videos):
        return f"drift wants an even batch, got {videos}" if videos % 2 else None

    def forward(self, n, frames, *, dt=None, generator=None, device=None):
        if dt is not None:
            raise ValueError("drift has no time step")
        eps = torch.randn(n, self.noise_dim, generator=generator, device=device)
        a, b = self.map(eps).chunk(2, -1)
        t = torch.arange(frames, dtype=eps.dtype, device=eps.device)[None, :, None]
        return {"y": a[:, None] + t * b[:, None]}


@pytest.fixture
def drift(monkeypatch):
    monkeypatch.setitem(KINDS, "drift", ModelKind("drift", "linear drift", f"{__name__}:DriftMotion",
                                                  hamiltonian=False))


@pytest.fixture
def hnn_cyc(monkeypatch):
    # a Hamiltonian kind of another mix: no configuration map, but L_cyc
    monkeypatch.setitem(KINDS, "hnn_cyc", ModelKind(
        "hnn_cyc", "HNN, no map, L_cyc", "hgan.models.motion:HamiltonianMotion",
        hamiltonian=True, cyclic_loss=True))


def _real(seed=0):
    return torch.rand(4, 6, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kinds_flags_describe_its_modules(name):
    # The trainer, sampler and grid act on the flags; the modules must be what they say.
    kind = KINDS[name]
    cfg = ModelConfig(model=name, ngf=4, ndf=4, clip_frames=4, k=3,
                      motion_dim=20 if kind.config_map or not kind.hamiltonian else 6)
    torch.manual_seed(0)
    mm = build_models(cfg).generator.motion_module
    assert isinstance(mm, kind.motion_class())
    mot = mm(3, 5, generator=torch.Generator().manual_seed(0))
    assert mot["y"].shape == (3, 5, cfg.latent_dim - cfg.content_dim)
    assert ("dHdq" in mot) == kind.hamiltonian
    if kind.hamiltonian:
        assert mot["y"].shape[-1] == 2 * cfg.k
        assert (getattr(mm, "config_map", None) is not None) == kind.config_map
    else:
        assert mot["y"].shape[-1] == cfg.motion_dim
    assert [k.name for k in KINDS.values() if k.baseline] == [model_kinds.baseline_model()]


def test_the_table_names_a_bad_model_and_wants_one_baseline(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown model 'gru'; choose one of hgan, hnn_gan, "
                                         r"mocogan$"):
        model_kind("gru")
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        ModelConfig(model="gru")
    assert model_kinds.hamiltonian_models() == ("hgan", "hnn_gan")
    monkeypatch.setitem(KINDS, "mocogan2", ModelKind("mocogan2", "GRU", KINDS["mocogan"].motion,
                                                     hamiltonian=False, baseline=True))
    with pytest.raises(ValueError, match=r"one baseline model, marks \['mocogan', 'mocogan2'\]"):
        model_kinds.baseline_model()


def test_a_kind_added_to_the_table_takes_the_flag_trains_and_samples(drift, tiny_pendulum_h5,
                                                                       tmp_path, capsys):
    # train.py's --model, its help and the config take the new name; the generator renders
    # its motion_dim-wide latents; one step trains its motion module; no L_cyc is added.
    cfg, _, _ = parse_command_line(["--model", "drift", "--motion-dim", "7"])
    assert cfg.model.model == "drift" and cfg.model.latent_dim == cfg.model.content_dim + 7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "drift (linear drift)" in " ".join(capsys.readouterr().out.split())
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, "drift", motion_dim=7))
    w = tr.G.motion_module.map.weight.detach().clone()
    stats = tr.step(_real())
    assert float(stats["loss/L_cyc"]) == 0.0
    assert (tr.G.motion_module.map.weight - w).abs().max() > 0.99 * tr.cfg.lr
    videos = tr.G.sample(2, 5, generator=torch.Generator().manual_seed(0))
    assert videos.shape == (2, 5, 3, 32, 32) and videos.isfinite().all()
    # its own batch rule reaches the trainer's check
    assert batch_refusal(cfg.model, 3) == "drift wants an even batch, got 3"
    assert batch_refusal(cfg.model, 4) is None


def test_a_hamiltonian_kind_without_a_map_takes_2k_noise_and_its_cyclic_loss(hnn_cyc,
                                                                              tiny_pendulum_h5,
                                                                              tmp_path):
    cfg, _, _ = parse_command_line(["--model", "hnn_cyc", "--k", "3"])
    assert cfg.model.motion_dim == 6
    with pytest.raises(ValueError, match=r"hnn_cyc uses eps_m as \(q0, p0\): motion_dim \(5\) "
                                         r"must equal 2\*k \(6\)"):
        ModelConfig(model="hnn_cyc", k=3, motion_dim=5)
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, "hnn_cyc", k=3, motion_dim=6,
                          cyc_lambda=0.5))
    assert tr.G.motion_module.config_map is None
    seen = []
    tr.G.motion_module.register_forward_hook(lambda m, i, out: seen.append(out["dHdq"].detach()))
    stats = tr.step(_real())
    b = seen[0].shape[0]
    want = 0.5 / b * float(seen[0].double().abs().sum())      # lambda / B sum |dH/dq|
    assert want > 0 and float(stats["loss/L_cyc"]) == pytest.approx(want, rel=1e-6)


def test_the_grid_and_compare_read_the_table(drift, hnn_cyc, tmp_path):
    from hgan.experiments import table
    from hgan.experiments.grid import GridError, GridSpec
    from hgan.experiments.runner import check_ready
    from test_experiments_table import _check_row, _results, _write
    check_ready(GridSpec(str(tmp_path), systems=("pendulum",), models=("drift", "hnn_cyc"),
                         iters=1))
    with pytest.raises(GridError, match=r"unknown models \['gru'\]; valid: .*, drift, hnn_cyc"):
        check_ready(GridSpec(str(tmp_path), systems=("pendulum",), models=("gru",), iters=1))
    assert model_kinds.hamiltonian_models() == ("hgan", "hnn_gan", "hnn_cyc")
    # compare.md's claims set the new Hamiltonian kind against the baseline, not the drift
    spec = GridSpec(str(tmp_path), systems=("pendulum",), models=("hnn_cyc", "drift", "mocogan"),
                    iters=100, eval_metrics="physics,cyclic,appearance")
    for run in spec.runs():
        _write(run, _results({"hnn_cyc": 0.1, "drift": 0.2, "mocogan": 0.3}[run.model]))
    text = "\n".join(table.checks_section(spec, table.collect(spec)))
    assert _check_row(text, model="hnn_cyc")[0].startswith("holds"), text
    assert "drift <" not in text


def test_a_hamiltonian_kind_with_a_map_and_no_cyclic_loss(monkeypatch, tiny_pendulum_h5,
                                                          tmp_path):
    # hgan without L_cyc: the map is built and trained, the loss has no cyclic term.
    monkeypatch.setitem(KINDS, "hgan_nocyc", ModelKind(
        "hgan_nocyc", "map + HNN", "hgan.models.motion:HamiltonianMotion", hamiltonian=True,
        config_map=True))
    cfg, _, _ = parse_command_line(["--model", "hgan_nocyc", "--k", "3"])
    assert cfg.model.motion_dim == 20    # the map takes any noise width
    tr = Trainer(tiny_cfg(tiny_pendulum_h5, tmp_path, "hgan_nocyc", cyc_lambda=0.5))
    f = tr.G.motion_module.config_map
    w = f[0].weight.detach().clone()
    stats = tr.step(_real())
    assert float(stats["loss/L_cyc"]) == 0.0
    assert (f[0].weight - w).abs().max() > 0.99 * tr.cfg.lr


def test_a_name_that_cannot_be_a_key_is_the_same_clear_error():
    """An unhashable --model value (a list from a JSON config) is the ValueError naming the
    valid kinds, written out, not a TypeError from the table's dict."""
    msg = r"^unknown model \['hgan'\]; choose one of hgan, hnn_gan, mocogan$"
    with pytest.raises(ValueError, match=msg):
        model_kind(["hgan"])
    with pytest.raises(ValueError, match=msg):
        ModelConfig(model=["hgan"])


def test_a_table_without_a_baseline_is_named(monkeypatch):
    """compare.md needs exactly one baseline: none marked is an error that says "none"."""
    monkeypatch.setitem(KINDS, "mocogan", ModelKind("mocogan", "GRU", KINDS["mocogan"].motion,
                                                    hamiltonian=False))
    with pytest.raises(ValueError, match=r"^hgan.model_kinds.KINDS must mark one baseline "
                                         r"model, marks none$"):
        model_kinds.baseline_model()


def test_the_generator_tells_a_kinds_motion_module_its_device(drift):
    """The motion contract (docs/training.md): forward(n, frames, *, dt, generator, device):
    a module that draws its noise on `device` (drift does) draws it where the generator is
    (the meta device here: no memory, any machine)."""
    m = build_models(ModelConfig(model="drift", ngf=4, ndf=4, clip_frames=4), device="meta")
    assert m.generator.motion(2, 3)["y"].device.type == "meta"
    assert m.generator(2, 3)[0].shape == (2, 3, 3, 32, 32)


class _Broken(DriftMotion):
    """DriftMotion's y, handed back in the way `how` names (a new kind's slips)."""

    how = None

    def forward(self, n, frames, *, dt=None, generator=None, device=None):
        y = super().forward(n, frames, generator=generator, device=device)["y"]
        return {"tensor": lambda: y, "key": lambda: {"z": y},
                "wide": lambda: {"y": torch.cat([y, y[..., :1]], -1)},
                "short": lambda: {"y": y[:, 1:]}, "time_first": lambda: {"y": y.transpose(0, 1)},
                "no_dhdq": lambda: {"y": y, "q": y[..., :3], "p": y[..., 3:6]}}[self.how]()


@pytest.mark.parametrize("how, hamiltonian, problem", [
    # before: TypeError "new(): invalid data type 'str'", KeyError 'y', a reshape error in
    # G_I, IndexErrors in the window slicing, KeyError 'dHdq' in the cyclic loss
    ("tensor", False, r"returned a Tensor, not a dict"),
    ("key", False, r"returned a dict without 'y' \(its keys: 'z'\)"),
    ("wide", False, r"returned 'y' of shape \(2, 3, 8\), expected \(2, 3, 7\)"),
    ("short", False, r"returned 'y' of shape \(2, 2, 7\), expected \(2, 3, 7\)"),
    ("time_first", False, r"returned 'y' of shape \(3, 2, 7\), expected \(2, 3, 7\)"),
    ("no_dhdq", True, r"returned a dict without 'dHdq' \(its keys: 'y', 'q', 'p'\)"),
])
def test_a_motion_module_that_breaks_the_contract_is_named(monkeypatch, how, hamiltonian,
                                                           problem):
    monkeypatch.setattr(_Broken, "how", how)
    monkeypatch.setitem(KINDS, "broken", ModelKind("broken", "broken", f"{__name__}:_Broken",
                                                   hamiltonian=hamiltonian))
    # a Hamiltonian kind without a map takes 2k = 6 wide noise, which DriftMotion keeps as y
    g = build_models(ModelConfig(model="broken", ngf=4, ndf=4, clip_frames=4, k=3,
                                 motion_dim=6 if hamiltonian else 7)).generator
    with pytest.raises(ValueError, match=r"^model 'broken': its motion module _Broken "
                                         + problem + r" for n=2, frames=3; it must return a "
                                         r"dict with 'y' \[2, 3, (7|6)\]"):
        g(2, 3)    # the trainer's path, through VideoGenerator.motion


def test_a_motion_path_that_names_no_class_is_named():
    # "a.b.C" for "a.b:C" was found only when a generator was built, as ModuleNotFoundError
    # "No module named 'hgan.models.motion.GRUMotion'; 'hgan.models.motion' is not a package"
    with pytest.raises(ValueError, match=r"^model 'gru2': motion 'hgan.models.motion.GRUMotion' "
                                         r"is not 'package.module:Class'"):
        ModelKind("gru2", "GRU", "hgan.models.motion.GRUMotion", hamiltonian=False)
    with pytest.raises(ValueError, match=r"^model 'gru2': motion <class .*GRUMotion'> is not "
                                         r"'package.module:Class'"):
        ModelKind("gru2", "GRU", KINDS["mocogan"].motion_class(), hamiltonian=False)
    with pytest.raises(ValueError, match=r"^model 'gru2': motion 'hgan.models.motio:GRUMotion': "
                                         r"there is no module 'hgan.models.motio'$"):
        ModelKind("gru2", "GRU", "hgan.models.motio:GRUMotion", hamiltonian=False).motion_class()
    with pytest.raises(ValueError, match=r"^model 'gru2': motion 'hgan.models.motion:GRU': "
                                         r"module 'hgan.models.motion' has no 'GRU'$"):
        ModelKind("gru2", "GRU", "hgan.models.motion:GRU", hamiltonian=False).motion_class()
    assert ModelKind("gru2", "GRU", KINDS["mocogan"].motion,
                     hamiltonian=False).motion_class() is KINDS["mocogan"].motion_class()


class _Steady(DriftMotion):
    """A kind's module that takes dt and ignores it, as the contract's signature allows."""

    def forward(self, n, frames, *, dt=None, generator=None, device=None):
        return super().forward(n, frames, generator=generator, device=device)


def test_a_time_step_for_a_kind_without_one_is_refused_by_the_table(monkeypatch):
    # hgan.sample --dt -0.05 wrote this kind's forward-running videos as its "backwards" ones
    monkeypatch.setitem(KINDS, "steady", ModelKind("steady", "drift, ignores dt",
                                                   f"{__name__}:_Steady", hamiltonian=False))
    g = build_models(ModelConfig(model="steady", ngf=4, ndf=4, clip_frames=4)).generator
    with pytest.raises(ValueError, match=r"^model 'steady' has no time step \(its ModelKind is "
                                         r"not hamiltonian\): dt applies to hgan, hnn_gan only$"):
        g.sample(2, 3, dt=-0.05)
    assert g.sample(2, 3).shape == (2, 3, 3, 32, 32)


@pytest.mark.parametrize("name, mapped", [("hgan", True), ("hnn_gan", False)])
def test_hgan_maps_its_noise_to_the_initial_state_and_hnn_gan_does_not(name, mapped):
    # docs/training.md: hgan draws eps_m ~ N(0, I_20) and maps it through the configuration
    # map f to y0 = (q0, p0); hnn_gan is "HGAN without the configuration map": eps_m is
    # (q0, p0) itself. The kinds' test above checks each module against the table, so a table
    # that dropped hgan's map would build an hnn_gan with L_cyc under hgan's name unseen.
    cfg = ModelConfig(model=name, ngf=4, ndf=4, clip_frames=4)    # k = 10, motion_dim = 20
    torch.manual_seed(0)
    mm = build_models(cfg).generator.motion_module
    eps = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    q0, p0 = mm.initial_state(eps)
    assert q0.shape == p0.shape == (3, 10)
    assert torch.equal(torch.cat([q0, p0], -1), eps) != mapped
