"""Checkpoint safety and completeness: weights_only refuses code, atomic writes, RNG states."""
import os
import pickle
import random
import re

import numpy as np
import pytest
import torch

from hgan.train.checkpoint import (CheckpointError, capture_rng, load_checkpoint, restore_rng,
                                   save_checkpoint)

MARKER = "/tmp/hgan_checkpoint_pwned_{}".format(os.getpid())


class _Exploit:
    # Unpickling this object calls os.system: what a hostile "checkpoint" would do.
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"generator": _Exploit()}, f, protocol=2)
    if os.path.exists(MARKER):
        os.remove(MARKER)
    with pytest.raises(RuntimeError, match="refusing to load"):
        load_checkpoint(str(path))
    assert not os.path.exists(MARKER)
    # the oracle: a plain pickle load of the same file does run the payload
    with open(path, "rb") as f:
        pickle.load(f)
    assert os.path.exists(MARKER)
    os.remove(MARKER)


def test_malicious_torch_save_is_refused(tmp_path):
    path = tmp_path / "evil_zip.pt"
    torch.save({"iteration": 3, "payload": _Exploit()}, path)
    with pytest.raises(RuntimeError, match="refusing to load"):
        load_checkpoint(str(path))
    assert not os.path.exists(MARKER)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"iteration": 1, "w": torch.ones(3)}, str(path))
    # a save that fails while pickling must leave the previous checkpoint intact
    with pytest.raises(Exception):
        save_checkpoint({"iteration": 2, "bad": lambda: 0}, str(path))
    ck = load_checkpoint(str(path))
    assert ck["iteration"] == 1 and torch.equal(ck["w"], torch.ones(3))
    assert os.listdir(path.parent) == ["last.pt"]  # the temporary file was cleaned up
    save_checkpoint({"iteration": 3}, str(path))
    assert load_checkpoint(str(tmp_path))["iteration"] == 3  # a run directory also works
    assert os.listdir(path.parent) == ["last.pt"]


def test_save_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    # A rename before the data reaches the disk can leave a complete-looking empty file after a
    # power cut; the folder's fsync makes the rename itself durable.
    calls, fsync, replace = [], os.fsync, os.replace

    def record_fsync(fd):
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(a, b):
        calls.append(("replace", os.path.basename(a)))
        replace(a, b)
    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"iteration": 1}, str(path))
    tmp = f"last.pt.tmp{os.getpid()}"
    folder = os.path.realpath(path.parent)
    assert calls == [("fsync", os.path.join(folder, tmp)), ("replace", tmp), ("fsync", folder)]


def test_a_file_that_is_no_torch_save_file_is_named_so(tmp_path, tiny_pendulum_h5):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00 not a checkpoint" * 20)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (tiny_pendulum_h5, str(junk), str(empty)):
        with pytest.raises(RuntimeError) as exc:
            load_checkpoint(path)
        assert str(exc.value) == f"{path} is not a checkpoint (not a torch.save file)"


def test_refusal_gives_no_advice_to_turn_the_safety_check_off(tmp_path):
    path = tmp_path / "numpy.pt"
    torch.save({"iteration": 3, "w": np.zeros(3)}, path)  # a real torch file, not tensors only
    with pytest.raises(RuntimeError, match="refusing to load") as exc:
        load_checkpoint(str(path))
    msg = str(exc.value)
    assert "weights_only" not in msg and "False" not in msg and len(msg.splitlines()) == 1, msg
    assert "numpy" in msg  # what it holds instead


def test_a_truncated_checkpoint_is_named_so_at_any_length(tmp_path):
    # torch.load alone raises OSError, UnicodeDecodeError or RuntimeError depending on where
    # the file ends
    path = save_checkpoint({"iteration": 1, "w": torch.randn(4000), "g": torch.randn(300, 7)},
                           str(tmp_path / "last.pt"))
    data = open(path, "rb").read()
    for n in range(4, len(data), max(1, len(data) // 150)):
        with open(path, "wb") as f:
            f.write(data[:n])
        with pytest.raises(RuntimeError, match="is truncated or corrupt"):
            load_checkpoint(path)


def test_changed_bytes_inside_a_checkpoint_are_caught_not_loaded(tmp_path):
    # torch.load does not check the archive's CRCs: a changed tensor byte would load as a
    # silently wrong weight. Oracle: the weights saved.
    w = torch.randn(4000)
    path = save_checkpoint({"iteration": 1, "w": w}, str(tmp_path / "last.pt"))
    data = open(path, "rb").read()
    at = data.index(w.numpy().tobytes()[:64])   # inside the tensor's record
    for i in range(at, at + 4000 * 4, 997):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with open(path, "wb") as f:
            f.write(bytes(bad))
        with pytest.raises(RuntimeError, match="is corrupt .*fails its CRC check"):
            load_checkpoint(path)
    with open(path, "wb") as f:
        f.write(data)
    assert torch.equal(load_checkpoint(path)["w"], w)


def test_sample_reports_a_non_checkpoint_in_one_line(tiny_pendulum_h5, tmp_path, capsys):
    from hgan.sample import main
    assert main(["--checkpoint", tiny_pendulum_h5, "--out", str(tmp_path / "s.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hgan.sample: error: {tiny_pendulum_h5} is not a checkpoint (not a torch.save "
                   "file)"], err


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "nope.pt"))


def test_a_runs_checkpoints_folder_given_as_the_run_is_named_in_the_error(tmp_path, capsys):
    # `--resume RUN/checkpoints` (or --checkpoint) looked for RUN/checkpoints/checkpoints/last.pt
    # and said only that it was missing
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    save_checkpoint({"iteration": 1}, str(folder / "last.pt"))
    hint = (f": {folder} holds last.pt itself; give the run directory {tmp_path / 'run'} or "
            f"the file {folder / 'last.pt'}")
    with pytest.raises(FileNotFoundError) as e:
        load_checkpoint(str(folder))
    assert str(e.value) == f"no checkpoint at {folder / 'checkpoints' / 'last.pt'}{hint}"
    from hgan.sample import main
    assert main(["--checkpoint", str(folder), "--out", str(tmp_path / "s.gif")]) == 2
    assert capsys.readouterr().err.strip().endswith(hint)
    # a folder without last.pt, and a missing file, keep the plain message
    (tmp_path / "empty").mkdir()
    for path, missing in ((tmp_path / "empty", tmp_path / "empty" / "checkpoints" / "last.pt"),
                          (tmp_path / "nope.pt", tmp_path / "nope.pt")):
        with pytest.raises(FileNotFoundError) as e:
            load_checkpoint(str(path))
        assert str(e.value) == f"no checkpoint at {missing}"


def test_a_folder_of_runs_given_as_a_run_names_the_newest(tmp_path, capsys):
    # `--checkpoint runs` (the folder train.py puts its runs in) said only that
    # runs/checkpoints/last.pt was missing
    for name, when in (("a-new", 2000), ("b-old", 1000)):
        path = tmp_path / "runs" / name / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True)
        save_checkpoint({"iteration": 1}, str(path))
        os.utime(path, (when, when))
    (tmp_path / "runs" / "c-killed").mkdir()          # no checkpoint: not a run to give
    runs = tmp_path / "runs"
    hint = f": {runs} holds 2 run directories; give one of them, such as {runs / 'a-new'}"
    with pytest.raises(FileNotFoundError) as e:
        load_checkpoint(str(runs))
    assert str(e.value) == f"no checkpoint at {runs / 'checkpoints' / 'last.pt'}{hint}"
    from hgan.sample import main
    assert main(["--checkpoint", str(runs), "--out", str(tmp_path / "s.gif")]) == 2
    assert capsys.readouterr().err.strip().endswith(hint)
    import shutil
    shutil.rmtree(runs / "b-old")
    with pytest.raises(FileNotFoundError, match=r"holds 1 run directory; give one of them, "
                                                 r"such as .*a-new$"):
        load_checkpoint(str(runs))


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)           # and in Python's (gauss draws in pairs, keeping the second)
    state = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.gauss(0, 1), random.random(),
                np.random.standard_normal())
    path = save_checkpoint({"rng": state}, str(tmp_path / "rng.pt"))
    torch.rand(10), np.random.rand(10), random.random(), random.gauss(0, 1)
    restore_rng(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.gauss(0, 1), random.random(),
           np.random.standard_normal())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_cuda_rng_states_of_more_gpus_than_this_machine_has_resume(monkeypatch):
    # A single-process run saved on a node with 2 visible GPUs, resumed where 1 is visible.
    state = {**capture_rng(), "cuda": [torch.zeros(16, dtype=torch.uint8),
                                       torch.ones(16, dtype=torch.uint8)]}
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: seen.append(list(states)))
    restore_rng(state)
    assert len(seen) == 1 and len(seen[0]) == 1 and torch.equal(seen[0][0], state["cuda"][0])


def test_a_truncated_legacy_format_checkpoint_is_named_so_at_any_length(tmp_path):
    # The legacy (non-zip) torch.save format is accepted by its magic byte, but a truncated
    # one raised IndexError, struct.error or EOFError tracebacks instead of CheckpointError;
    # one cut inside a GLOBAL opcode (`ctorch._utils\n_rebuild_te`) was refused as holding
    # a class `torch._utils._rebuild_te`.
    import io
    buf = io.BytesIO()
    torch.save({"w": torch.arange(50), "iteration": 3, "config": {"lr": 0.5, "system": "x"}},
               buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    path = tmp_path / "old.pt"
    for n in range(1, len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))} is truncated or "
                                                  "corrupt"):
            load_checkpoint(str(path))
    path.write_bytes(data)
    assert load_checkpoint(str(path))["iteration"] == 3


class _Calls:
    def __reduce__(self):
        return print, ("opened",)


def test_a_whole_legacy_format_checkpoint_that_refers_to_a_class_is_refused_as_such(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"iteration": 3, "x": _Calls()}, str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"^refusing to load .*: it holds objects other "
                                              r"than tensors and plain containers "
                                              r"\((builtins\.)?print\)$"):
        load_checkpoint(str(path))


def test_the_resume_identity_check_compares_every_attribute_it_kept(tmp_path):
    # hgan.train.loop.check_resumed_dataset against hand-written identities: a change of any
    # one kept attribute is another dataset; an attribute the checkpoint did not keep (None,
    # an older checkpoint) is not compared; no identity at all (older still) is accepted.
    from dataclasses import replace

    from hgan.models import ModelConfig
    from hgan.train.config import RunConfig
    from hgan.train.loop import check_resumed_dataset
    saved = {"path": "/data/pendulum/train.h5", "trajectories": 24, "frames": 40,
             "system": "pendulum", "resolution": 32, "seed": 3}
    cfg = RunConfig(system="pendulum", data=str(tmp_path), seed=3, gen_train=24, gen_frames=40,
                    frames=16, model=ModelConfig(resolution=32))
    changed = {"trajectories": 12, "frames": 41, "system": "mass_spring", "resolution": 64,
               "seed": 4}
    check_resumed_dataset(saved, cfg, now=dict(saved))
    check_resumed_dataset(None, cfg, now=None)
    for key, value in changed.items():
        with pytest.raises(ValueError, match="but the run trained on /data/pendulum/train.h5"):
            check_resumed_dataset(saved, cfg, now={**saved, key: value})
        check_resumed_dataset({**saved, key: None}, cfg, now={**saved, key: value})
    # The file is missing: what the --gen-* flags, --system, --resolution and --seed would
    # generate is compared instead (trajectories: --gen-train, frames: --gen-frames).
    check_resumed_dataset(saved, cfg, now=None)
    for flags in ({"gen_train": 12}, {"gen_frames": 41}, {"system": "mass_spring"},
                  {"seed": 4}, {"model": ModelConfig(resolution=64)}):
        with pytest.raises(ValueError, match="is missing and generating it would not give"):
            check_resumed_dataset(saved, replace(cfg, **flags), now=None)
    # nor is an attribute not kept compared with what would be generated; or named
    check_resumed_dataset({**saved, "seed": None}, replace(cfg, seed=4), now=None)
    with pytest.raises(ValueError, match=r"but the run trained on /data/pendulum/train.h5 \(24 "
                                         r"trajectories of 40 frames, system pendulum, "
                                         r"resolution 32\); point --data"):
        check_resumed_dataset({**saved, "seed": None}, cfg, now={**saved, "frames": 41})


def test_the_dataset_identity_names_the_file_by_its_absolute_path(tiny_pendulum_h5, monkeypatch):
    # a run started with a relative --data and resumed from elsewhere finds it again
    from hgan.train.loop import dataset_identity
    monkeypatch.chdir(os.path.dirname(tiny_pendulum_h5))
    assert dataset_identity("train.h5") == {
        "path": tiny_pendulum_h5, "trajectories": 24, "frames": 40, "system": "pendulum",
        "resolution": 32, "seed": 0}


def test_load_maps_the_tensors_where_asked(tmp_path):
    path = save_checkpoint({"w": torch.ones(3)}, str(tmp_path / "last.pt"))
    assert load_checkpoint(path)["w"].device.type == "cpu"
    assert load_checkpoint(path, map_location="meta")["w"].device.type == "meta"


def test_a_refusal_names_the_object_the_file_would_have_built(tmp_path):
    # The reason is the pickle's GLOBAL (the function or class it names), whatever the path.
    path = tmp_path / "last.pt"
    torch.save({"payload": _Exploit()}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(str(path))
    assert str(exc.value) == (f"refusing to load {path}: it holds objects other than tensors "
                              f"and plain containers ({os.system.__module__}.system)")
    torch.save({"w": np.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"plain containers \(numpy\.[\w.]+\)$"):
        load_checkpoint(str(path))


def test_an_archive_torch_cannot_read_is_named_in_its_first_sentence(tmp_path):
    # A complete zip (its CRCs check) that is no torch.save archive: torch's reason, without
    # its "[enforce fail at file:line]" prefix and without what follows its first sentence.
    import zipfile
    path = tmp_path / "last.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(str(path))
    assert str(exc.value) == (f"{path} is truncated or corrupt (file in archive is not in a "
                              "subdirectory: notes.txt)")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(str(path))
    assert str(exc.value) == (f"{path} is truncated or corrupt (Expected hasRecord(\"version\") "
                              "to be true, but got false)")


def test_a_changed_byte_anywhere_is_refused_or_loads_what_was_saved(tmp_path):
    # Not only inside a tensor: a byte of a header or of the central directory made zipfile
    # or torch raise RuntimeError ("File ... is encrypted"), ValueError or zlib.error,
    # tracebacks where one CheckpointError line was due, and a record's directory bit set
    # (external attributes) loaded the tensor in it as uninitialized memory, without an
    # error. Oracle: the saved values.
    w = torch.arange(6, dtype=torch.float32)
    path = save_checkpoint({"iteration": 7, "w": w}, str(tmp_path / "last.pt"))
    data = open(path, "rb").read()
    for i in range(len(data)):
        for flip in (0x01, 0xff):
            bad = bytearray(data)
            bad[i] ^= flip
            with open(path, "wb") as f:
                f.write(bytes(bad))
            try:
                ck = load_checkpoint(path)
            except CheckpointError:
                continue
            assert ck.keys() == {"iteration", "w"} and ck["iteration"] == 7, (i, flip)
            assert torch.equal(ck["w"], w), (i, flip)


def test_weights_that_do_not_fit_are_one_line_of_torchs_reasons():
    from hgan.train.checkpoint import load_weights
    with pytest.raises(CheckpointError) as exc:
        load_weights(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 5), "bias": torch.zeros(2)},
                     "generator")
    assert str(exc.value) == (
        "the checkpoint's generator weights do not fit the model its config builds (size "
        "mismatch for weight: copying a param with shape torch.Size([3, 5]) from checkpoint, "
        "the shape in current model is torch.Size([2, 2])): was it written by another version "
        "of hgan?")
    # 80 missing keys: the reasons are cut to 300 characters, the last 3 of them "..."
    with pytest.raises(CheckpointError) as exc:
        load_weights(torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(40)]), {}, "D_V")
    head = "the checkpoint's D_V weights do not fit the model its config builds ("
    tail = "): was it written by another version of hgan?"
    msg = str(exc.value)
    assert msg.startswith(head + 'Missing key(s) in state_dict: "0.weight", "0.bias", ')
    assert msg.endswith("..." + tail) and len(msg) == len(head) + 300 + len(tail)
