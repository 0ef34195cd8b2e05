"""Statements in the docs that name code behaviour agree with that code."""
import os
import re

from hgan.data.loader import RESIDENT_MEMORY_FRACTION, auto_kind

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_fast_training_loader_auto_row_is_the_order_auto_kind_picks():
    with open(os.path.join(DOCS, "fast-training.md")) as f:
        row = next(line for line in f if line.startswith("| `auto`"))
    gpu = 16 << 30
    # What auto_kind picks, case by case, on a 16 GiB GPU and on the CPU.
    assert auto_kind("cuda", gpu // 16, dali_available=True, device_memory=gpu) == "gpu-resident"
    assert auto_kind("cuda", gpu // 2, dali_available=True, device_memory=gpu) == "dali"
    assert auto_kind("cuda", gpu // 2, dali_available=False, device_memory=gpu) == "torch"
    assert auto_kind("cpu", 1, dali_available=True) == "torch"
    order = [row.find(k) for k in ("`gpu-resident`", "`dali`", "`torch`")]
    assert -1 not in order and order == sorted(order), row
    assert RESIDENT_MEMORY_FRACTION == 0.25 and re.search(r"\ba quarter\b", row), row


def test_fast_training_profile_schedule_is_step_profilers_default():
    import inspect

    from hgan.train.profiling import step_profiler
    with open(os.path.join(DOCS, "fast-training.md")) as f:
        text = " ".join(f.read().split())
    d = {k: v.default for k, v in inspect.signature(step_profiler).parameters.items()
         if k in ("wait", "warmup", "active")}
    assert (f"`--profile` records {d['active']} steps after {d['wait']} skipped and "
            f"{d['warmup']} warm-up steps") in text
    assert f"A run of fewer than {sum(d.values())} iterations records nothing" in text


def test_readme_evaluate_example_writes_where_compare_reads(tmp_path):
    # README's example wrote to ./eval, where `compare RUN` (its next sentence) does not look
    import shlex

    from hgan.evaluate.report import results_path
    with open(os.path.join(os.path.dirname(DOCS), "README.md")) as f:
        line = next(ln for ln in f if ln.startswith("python -m hgan.evaluate --checkpoint"))
    argv = shlex.split(line)
    run, out = argv[argv.index("--checkpoint") + 1], argv[argv.index("--out") + 1]
    os.makedirs(tmp_path / out)
    (tmp_path / out / "results.json").write_text("{}")
    assert results_path(str(tmp_path / run)) == str(tmp_path / out / "results.json")


def test_integrator_regime_table_states_the_dispatch_tables_switch_point_and_row_blocks():
    # the GPU measurement (bench/gpu/leapfrog_table.py's `recommend`) moves these constants:
    # the documented regimes must move with them
    from hgan.kernels.leapfrog import fused
    with open(os.path.join(DOCS, "integrator.md")) as f:
        text = " ".join(f.read().split())
    rows = fused.LATENCY_MAX_ROWS
    assert f"`LATENCY_MAX_ROWS` ({rows})" in text and f"| B <= {rows} (training batches) |" in text
    block = fused.THROUGHPUT_BLOCK_B
    assert f"({block['fwd']} rows forward, {block['bwd']} backward)" in text


def test_training_md_model_table_states_each_kinds_fields():
    from hgan.model_kinds import KINDS
    with open(os.path.join(DOCS, "training.md")) as f:
        rows = {cells[0].strip("` "): [c.strip() for c in cells[2:]]
                for cells in (line.strip().strip("|").split("|") for line in f
                              if line.startswith("| `"))}
    with open(os.path.join(DOCS, "training.md")) as f:
        header = next(line for line in f if line.startswith("| field | meaning |"))
    assert [c.strip() for c in header.strip().strip("|").split("|")[2:]] == list(KINDS)
    for i, kind in enumerate(KINDS.values()):
        assert rows["motion"][i] == f"`{kind.motion.split(':')[1]}`"
        for field in ("hamiltonian", "cyclic_loss", "baseline"):
            said = rows[field][i].split(" ")[0]
            assert (said == "yes") == getattr(kind, field), (kind.name, field, said)
        if kind.hamiltonian:
            assert rows["config_map"][i] == ("yes" if kind.config_map else "no"), kind.name
