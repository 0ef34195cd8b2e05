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
    split = fused.SPLIT_LATENCY_MAX_ROWS
    assert f"`SPLIT_LATENCY_MAX_ROWS` ({split}:" in text and f"up to {split} rows only" in text
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


def _parsed_defaults(parser, argv):
    """{'--flag': default} of every option the parser's command line takes after argv."""
    import argparse
    ns = vars(parser.parse_args(argv))
    out = {}
    actions = parser._actions
    sub = next((a for a in actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is not None:
        actions = sub.choices[argv[0]]._actions
    for a in actions:
        for s in a.option_strings:
            if s.startswith("--") and a.dest in ns:
                out[s] = ns[a.dest]
    return out


def _same(said, default):
    said = said.strip("`")
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return float(said.replace(",", "")) == float(default)
    return said == str(default)


def test_flag_defaults_quoted_in_prose_are_the_parsers():
    # "`--flag` (VALUE" and "`--flag` (default VALUE" in a doc name the default of that
    # doc's command; a changed default would leave the prose stating the old one
    from hgan.data.cli import build_parser as data_parser
    from hgan.evaluate.cli import build_parser as eval_parser
    from hgan.experiments.cli import build_parser as grid_parser
    from hgan.train.config import build_parser as train_parser
    said = re.compile(r"`(--[a-z0-9-]+)` \((?:default:? )?(`[^`]+`|\d[\d,.]*)(?=[);])")
    for doc, parser, argv, least in (
            ("data.md", data_parser(), ["generate", "--system", "pendulum"], 6),
            ("evaluation.md", eval_parser(), ["--checkpoint", "c", "--out", "o"], 8),
            ("experiments.md", grid_parser(), ["table1", "--out", "o"], 4),
            ("training.md", train_parser(), [], 3)):
        defaults = _parsed_defaults(parser, argv)
        with open(os.path.join(DOCS, doc)) as f:
            found = said.findall(" ".join(f.read().split()))
        assert len(found) >= least, (doc, found)
        for flag, value in found:
            assert flag in defaults, (doc, flag)
            assert _same(value, defaults[flag]), (doc, flag, value, defaults[flag])


def test_training_md_flags_table_lists_every_flag_with_its_default():
    from hgan.train.config import build_parser
    defaults = _parsed_defaults(build_parser(), [])
    with open(os.path.join(DOCS, "training.md")) as f:
        rows = [ln for ln in f.read().split("## Flags")[1].split("\n## ")[0].splitlines()
                if ln.startswith("| `--")]
    listed = set()
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        flags = re.findall(r"`(--[a-z0-9-]+)", cells[0])
        if cells[0].startswith("`--data"):   # the --gen-* defaults sit in its meaning
            gen = re.search(r"\((`--gen-[^:]+): ([^)]+)\)", cells[2])
            flags += re.findall(r"`(--[a-z0-9-]+)`", gen.group(1))
            values = [cells[1]] + gen.group(2).split(", ")
        else:
            values = re.split(r", | / ", re.sub(r" \([^)]*\)", "", cells[1]))
        listed.update(flags)
        for flag, value in zip(flags, values):
            want = defaults[flag]
            if flag == "--out":
                assert value == "runs/<system>-<model>-<time>" and want == "", row
            elif flag.startswith("--no-"):
                assert defaults[flag] is True and value in ("on", "bars on"), row
            elif isinstance(want, bool):
                assert value == ("on" if want else "off"), (flag, row)
            else:
                assert _same(value, want), (flag, value, want)
    paired = ({"--no-" + f[2:] for f in listed}
              | {"--" + f[5:] for f in listed if f.startswith("--no-")})
    assert set(defaults) - listed - paired - {"--help"} == set()


def test_training_md_names_exactly_the_flags_a_resume_may_change():
    from hgan.train.config import resumable_fields
    with open(os.path.join(DOCS, "training.md")) as f:
        text = " ".join(f.read().split())
    said = text.split("only those marked resumable in `RunConfig` may:")[1].split(". ")[0]
    said = {f[3:] if f.startswith("no-") else f for f in re.findall(r"`--([a-z0-9-]+)`", said)}
    assert said == {f.replace("_", "-") for f in resumable_fields()}


def test_readme_train_paragraph_states_train_pys_defaults():
    from hgan.train.config import build_parser
    d = _parsed_defaults(build_parser(), [])
    with open(os.path.join(os.path.dirname(DOCS), "README.md")) as f:
        text = " ".join(f.read().split())
    r = d["--resolution"]
    assert (f"at {r}x{r}, batch {d['--batch-size']}, for {d['--iters']:,} iterations"
            in text)
    assert (f"({d['--gen-train']} training and {d['--gen-test']} test trajectories of "
            f"{d['--gen-frames']} frames" in text)
    assert f"every `--log-every` iterations, {d['--log-every']} by default" in text
    assert f"samples/iter_NNNNNNN.gif {d['--n-samples']} sample videos" in text
    with open(os.path.join(DOCS, "training.md")) as f:
        text = " ".join(f.read().split())
    assert (f"`--gen-train {d['--gen-train']} --gen-test {d['--gen-test']} --gen-frames "
            f"{d['--gen-frames']}` trajectories by default" in text)
    assert f"`--iters` defaults to {d['--iters']:,}" in text


def test_readme_and_measurements_name_the_train_step_benchmarks_variants():
    # README said the suite timed "each optimisation on its own": --amp and DALI never are
    root = os.path.dirname(DOCS)
    with open(os.path.join(root, "bench", "test_bench_trainstep.py")) as f:
        src = f.read()
    alone = set(re.findall(r'\("only_(\w+)", dict\(', src))
    variants = set(re.findall(r'^    "(\w+)": ', src.split("VARIANTS = {")[1].split("}\n")[0],
                              re.M)) | {f"only_{k}" for k in alone}
    with open(os.path.join(DOCS, "measurements.md")) as f:
        section = f.read().split("## Train-step benchmark")[1].split("Per variant")[0]
    assert set(re.findall(r"\*\*(\w+)\*\*", section)) == variants
    names = {"integrator": "the integrator", "channels_last": "channels-last",
             "compile": "`torch.compile`"}   # a new only_ variant: name it here and in README
    assert alone == set(names)
    with open(os.path.join(root, "README.md")) as f:
        readme = " ".join(f.read().split())
    clause = re.search(r"time the training step \(([^)]*?) each on its own", readme)
    assert clause, "README no longer says which optimisations the train-step suite times alone"
    assert all(names[k] in clause.group(1) for k in alone) and "--amp" not in clause.group(1)
