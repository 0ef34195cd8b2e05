"""Command lines: train.py's flags come from the config dataclasses, bad values end in one
line with exit code 2, and the console scripts resolve to callables."""
import os
import subprocess
import sys
from dataclasses import fields

import pytest

from hgan.models import ModelConfig
from hgan.train import RunConfig, config_from_args
from hgan.train.config import build_parser, resumable_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_py_rejects_a_bad_value_in_one_line_with_exit_2():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--batch-size", "0"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["train.py: error: --batch-size must be >= 1, got 0"], r.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--k", "0"], "k must be a positive integer"),
    (["--model", "hnn_gan", "--motion-dim", "5"], "must equal 2*k"),
    (["--resolution", "40"], "unsupported resolution 40"),
    (["--num-workers", "-1"], "--num-workers must be >= 0"),
    (["--loader", "ftp"], "invalid choice: 'ftp'"),
])
def test_invalid_values_exit_2_naming_the_problem(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_every_config_field_is_a_flag_and_reaches_its_config():
    flags = {a.dest for a in build_parser()._actions}
    for f in fields(RunConfig) + fields(ModelConfig):
        if f.metadata.get("cli", True):
            assert f.name in flags and f.metadata["help"], f.name
    cfg, _ = config_from_args(["--k", "3", "--hidden", "24", "--depth", "3", "--motion-dim", "7",
                               "--content-dim", "9", "--n-samples", "2", "--no-progress"])
    m = cfg.model
    assert (m.k, m.hidden, m.depth, m.motion_dim, m.content_dim) == (3, 24, 3, 7, 9)
    assert (cfg.n_samples, cfg.progress) == (2, False)
    assert m.latent_dim == 9 + 2 * 3


def test_resumable_fields_are_declared_on_the_fields():
    assert set(resumable_fields()) == {
        "iters", "device", "log_every", "sample_every", "ckpt_every", "keep_every",
        "n_samples", "profile", "loader", "num_workers", "progress", "cuda_graph"}
    assert "batch_size" not in resumable_fields() and "seed" not in resumable_fields()


def test_console_scripts_resolve_to_callables():
    from importlib.metadata import entry_points
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")
               if ep.name.startswith("hgan-")}
    assert set(scripts) == {"hgan-train", "hgan-data", "hgan-evaluate", "hgan-sample"}
    for name, ep in scripts.items():
        assert callable(ep.load()), name
