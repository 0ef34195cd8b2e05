"""What each `--model` is: the one table that the models, the trainer, the sampler, the
evaluation and the experiment grid read.

A new motion model is one `ModelKind` in `KINDS` and its motion module (an `nn.Module`; the
contract is in docs/training.md, "Adding an option or a model"). The table lives outside
`hgan.models` and imports only the standard library, so that the grid's planning and the
command lines read it without building anything; a kind's motion module is imported when a
generator is built.
"""
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    name: str
    help: str          # one phrase for `train.py --help`
    motion: str        # "package.module:Class" of the motion module, built as Class(cfg)
    # A learned Hamiltonian rolled out by the leapfrog integrator: the motion dict carries
    # "q", "p" [n, T, k] and "dHdq" [n, T-1, k], each frame's latent y is (q, p), 2k wide,
    # and --dt, --integrator, --scheme apply. Otherwise y is --motion-dim wide.
    hamiltonian: bool
    # (hamiltonian) A learned map f(eps_m) -> (q0, p0). Without one eps_m is (q0, p0) itself,
    # so --motion-dim must be 2k (and defaults to it).
    config_map: bool = False
    # The cyclic-coordinate loss L_cyc on dHdq is part of the generator's loss (and logged).
    cyclic_loss: bool = False
    # What the experiment grid's compare.md measures the other models against (one kind).
    baseline: bool = False
    # ModelConfig fields that only this kind's motion module reads (mocogan's --gru-input): a
    # flag of one is refused with any kind that does not list it (`unused_option`).
    options: tuple = ()

    def __post_init__(self):
        # "hgan.models.motion.GRUMotion" (a dot for the colon) was found only when a generator
        # was built, as "No module named 'hgan.models.motion.GRUMotion'; 'hgan.models.motion'
        # is not a package", which names neither the kind nor the format.
        module, sep, name = (self.motion.partition(":") if isinstance(self.motion, str)
                             else ("", "", ""))
        if not (sep and module and name.isidentifier()):
            raise ValueError(f"model {self.name!r}: motion {self.motion!r} is not "
                             f"'package.module:Class' (e.g. 'hgan.models.motion:GRUMotion')")

    def motion_class(self):
        module, _, name = self.motion.partition(":")
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise    # an import inside the motion module failed: its own error says which
            raise ValueError(f"model {self.name!r}: motion {self.motion!r}: there is no module "
                             f"{module!r}") from None
        if not hasattr(found, name):
            raise ValueError(f"model {self.name!r}: motion {self.motion!r}: module {module!r} "
                             f"has no {name!r}")
        return getattr(found, name)


KINDS = {kind.name: kind for kind in (
    ModelKind("hgan", "configuration map + HNN + L_cyc", "hgan.models.motion:HamiltonianMotion",
              hamiltonian=True, config_map=True, cyclic_loss=True),
    ModelKind("hnn_gan", "HNN, no map", "hgan.models.motion:HamiltonianMotion",
              hamiltonian=True),
    ModelKind("mocogan", "GRU", "hgan.models.motion:GRUMotion", hamiltonian=False,
              baseline=True, options=("gru_input", "gru_backend")),
)}

# The fields (train.py flags) of the learned Hamiltonian and its rollout: a kind that is not
# `hamiltonian` builds neither, so none of them changes what it trains.
HAMILTONIAN_OPTIONS = ("k", "depth", "hamiltonian", "activation", "dt", "integrator", "scheme",
                       "fused_precision")

MODELS = tuple(KINDS)   # the names as they stand at import; model_names() reads KINDS live


def model_names() -> tuple:
    return tuple(KINDS)


def model_kind(name) -> ModelKind:
    """The kind called `name`; ValueError naming the valid ones for any other."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of "
                         f"{', '.join(model_names())}") from None


def hamiltonian_models() -> tuple:
    return tuple(k.name for k in KINDS.values() if k.hamiltonian)


def unused_option(name, field) -> str | None:
    """Why the config field `field` (a train.py flag) changes nothing for the kind `name`:
    the end of a sentence "--FLAG does not apply to --model NAME: ..."; None where it applies.
    A flag that does nothing would let a researcher believe a run differs from another."""
    kind = model_kind(name)
    if field in HAMILTONIAN_OPTIONS and not kind.hamiltonian:
        return (f"{name} has no learned Hamiltonian (it is for "
                f"{' and '.join(hamiltonian_models())})")
    if field == "cyc_lambda" and not kind.cyclic_loss:
        with_loss = [k.name for k in KINDS.values() if k.cyclic_loss]
        return (f"{name} has no cyclic-coordinate loss to weigh"
                + (f" (only {', '.join(with_loss)} has one)" if with_loss else ""))
    readers = [k.name for k in KINDS.values() if field in k.options]
    if readers and name not in readers:
        return f"only {' and '.join(readers)} reads it"
    return None


def baseline_model() -> str:
    names = [k.name for k in KINDS.values() if k.baseline]
    if len(names) != 1:
        raise ValueError(f"hgan.model_kinds.KINDS must mark one baseline model, marks "
                         f"{names or 'none'}")
    return names[0]
