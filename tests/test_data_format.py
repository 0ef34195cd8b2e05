"""HDF5 round trip, determinism and every bad-file case of the reader."""
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from hgan.data import DataFormatError, generate_dataset, get_system, open_h5
from hgan.data.generate import render_states
from hgan.data.simulate import simulate_split


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    a = generate_dataset("double_pendulum_colors", root / "a", train=5, test=2, frames=12,
                         seed=7, progress=False, chunk=5)
    b = generate_dataset("double_pendulum_colors", root / "b", train=5, test=2, frames=12,
                         seed=7, progress=False, chunk=2)
    return root, a, b


def test_round_trip(made):
    _, a, _ = made
    system = get_system("double_pendulum_colors")
    sim = simulate_split(system, 7, "train", np.arange(5), 12)
    with open_h5(a["train"]) as f:
        assert f.frames.shape == (5, 12, 32, 32, 3) and f.frames.dtype == np.uint8
        assert f.frames.chunks == (1, 12, 32, 32, 3) and f.frames.compression == "gzip"
        assert f.states.dtype == np.float32
        np.testing.assert_array_equal(f.states[()], sim["states"].astype(np.float32))
        np.testing.assert_array_equal(f.color_index, sim["color_index"])
        np.testing.assert_array_equal(f.offset, sim["offset"])
        for k in ("m", "g", "l"):
            np.testing.assert_array_equal(f.params[k], sim["params"][k])
        want = render_states(system, sim["states"], sim["params"], sim["color_index"],
                             sim["offset"], 32)
        np.testing.assert_array_equal(f.frames[()], want)
        at = f.attrs
        assert (at["system"], at["dt"], at["resolution"], at["seed"], at["split"]) == \
            ("double_pendulum_colors", 0.05, 32, 7, "train")
        assert at["format_version"] == 2 and at["rejected"] >= 0 and "recipe" in at
        assert at["substeps"] == 10  # the spec's 10 internal steps per dt
        # Canvas half-size 2 l_max + sqrt(m_max / pi), widened by the offset's 0.4 of it.
        half = 1.4 * (2 * 1.0 + np.sqrt(0.6 / np.pi))
        np.testing.assert_allclose([at["canvas_min"], at["canvas_max"]], [-half, half])
    with open_h5(a["test"]) as f:  # the test split draws other trajectories
        assert len(f) == 2
        assert not np.array_equal(f.states[0], sim["states"][0].astype(np.float32))


def test_same_seed_byte_identical_whatever_the_chunking(made, tmp_path):
    _, a, b = made
    for split in ("train", "test"):
        with h5py.File(a[split]) as fa, h5py.File(b[split]) as fb:
            for name in ("frames", "states", "color_index", "offset", "params/m", "params/l"):
                assert fa[name][()].tobytes() == fb[name][()].tobytes(), name
    c = generate_dataset("double_pendulum_colors", tmp_path, train=2, test=0, frames=12,
                         seed=8, progress=False)
    with h5py.File(a["train"]) as fa, h5py.File(c["train"]) as fc:
        assert not np.array_equal(fa["states"][:2], fc["states"][()])


def _copy(made, tmp_path):
    dst = tmp_path / "x.h5"
    shutil.copy(made[1]["train"], dst)
    return dst


def test_train_and_test_share_no_trajectory():
    # The spec: the test split is drawn independently of train, with no shared trajectory.
    # The starts of the first 50 trajectories of both splits are 100 different states (a
    # test split drawn from train's streams, even shifted by one index, shares 49).
    system = get_system("pendulum_colors")
    starts = [simulate_split(system, 0, split, np.arange(50), 1)["states"][:, 0]
              for split in ("train", "test")]
    assert len(np.unique(np.concatenate(starts), axis=0)) == 100


def test_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        open_h5(tmp_path / "nope.h5")


@pytest.mark.parametrize("case,match", [
    ("version", "unknown format version 99"),
    ("version0", "unknown format version 0"),      # not only versions above the newest
    ("dataset", "missing dataset 'color_index'"),
    ("param", "missing dataset 'params/g'"),
    ("shape", r"dataset 'states' has shape \(5, 12, 3\), expected \(5, 12, 4\)"),
    ("incomplete", "incomplete file"),
    ("no_complete", "incomplete file"),            # no 'complete' attribute is not complete
    ("system", "unknown system 'pendulum_x'"),
    ("attribute", "missing attribute 'frames'"),  # was: frames "expected (5, -1, 32, 32, 3)"
    ("offset", r"dataset 'offset' has shape \(5, 3\), expected \(5, 2\)"),
])
def test_bad_contents(made, tmp_path, case, match):
    path = _copy(made, tmp_path)
    with h5py.File(path, "a") as f:
        if case == "version":
            f.attrs["format_version"] = 99
        elif case == "version0":
            f.attrs["format_version"] = 0
        elif case == "no_complete":
            del f.attrs["complete"]
        elif case == "dataset":
            del f["color_index"]
        elif case == "param":
            del f["params/g"]
        elif case == "shape":
            del f["states"]
            f.create_dataset("states", (5, 12, 3), np.float32)
        elif case == "incomplete":
            f.attrs["complete"] = False
        elif case == "attribute":
            del f.attrs["frames"]
        elif case == "offset":
            del f["offset"]
            f.create_dataset("offset", data=np.zeros((5, 3)))
        else:
            f.attrs["system"] = "pendulum_x"
    with pytest.raises(DataFormatError, match=match):
        open_h5(path)


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_file(made, tmp_path, keep):
    path = _copy(made, tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        open_h5(path)


def test_constant_set_canvas_is_not_widened(tiny_pendulum_h5):
    with open_h5(tiny_pendulum_h5) as f:  # pendulum: l + sqrt(m / pi), no random offset
        half = 1.0 + np.sqrt(0.5 / np.pi)
        np.testing.assert_allclose([f.attrs["canvas_min"], f.attrs["canvas_max"]], [-half, half])


def _spoil_frames_chunk(path, coord):
    """Overwrite the stored bytes of the frames chunk holding `coord` with 0xff."""
    with h5py.File(path, "r") as f:
        info = f["frames"].id.get_chunk_info_by_coord(coord)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)


def test_open_probes_the_last_trajectory(made, tmp_path):
    # A copy cut short loses its last chunks first: open_h5 must refuse it, not a late epoch.
    path = _copy(made, tmp_path)
    _spoil_frames_chunk(path, (4, 0, 0, 0, 0))  # the last of 5
    with pytest.raises(DataFormatError, match="truncated or corrupt data .*trajectory 4"):
        open_h5(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(DataFormatError, match="truncated or corrupt HDF5"):
        open_h5(path)
    assert issubclass(DataFormatError, ValueError)


def test_damage_anywhere_in_a_file_is_one_data_format_error_or_harmless(tmp_path):
    # Overwrite 64 bytes at offsets across a whole valid file: the superblock, object headers,
    # symbol tables, attribute messages, heaps and every chunk. Opening it and reading all of
    # its data either works (unused space, or the uncompressed small datasets, which carry no
    # checksum) or raises DataFormatError naming the file: h5py's KeyError and RuntimeError
    # from damaged metadata used to escape as tracebacks from every command. (Some damage
    # makes the HDF5 library loop instead, e.g. in a string attribute's bytes: not swept.)
    path = generate_dataset("pendulum", tmp_path / "ok", train=3, test=0, frames=8, seed=0,
                            progress=False)["train"]
    with open(path, "rb") as f:
        data = f.read()
    kinds = set()
    for off in range(0, len(data), 96):
        bad = tmp_path / f"at{off}.h5"
        damaged = bytearray(data)
        damaged[off:off + 64] = b"\xa5" * len(damaged[off:off + 64])
        bad.write_bytes(bytes(damaged))
        try:
            with open_h5(bad) as f:
                f.frames[:], f.states[:]
        except DataFormatError as e:
            assert str(e).startswith(f"{bad}: ")
            kinds.add(str(e).split(" (")[0].split(": ", 1)[1])
        bad.unlink()
    # The sweep reaches damaged metadata, damaged chunks and a failed open alike.
    assert {"corrupt HDF5 file", "truncated or corrupt data",
            "truncated or corrupt HDF5 file"} <= kinds, kinds


def _flipped_copies(tmp_path, data, offsets):
    for off in offsets:
        damaged = bytearray(data)
        damaged[off] ^= 0x01   # the lowest bit: a value that still looks plausible
        bad = tmp_path / f"flip{off}.h5"
        bad.write_bytes(bytes(damaged))
        yield off, bad
        bad.unlink()


def test_a_flipped_bit_in_a_parameter_offset_or_attribute_is_an_error_not_another_value(
        tmp_path):
    # Unchecksummed, a mass of 1.0 read as 1.0000000000000002 and a seed of 7 as 6: values
    # no plausibility check can refuse, simulated and trained on. Files now carry HDF5's
    # metadata checksums and fletcher32 on the small datasets.
    path = generate_dataset("pendulum", tmp_path / "ok", train=3, test=0, frames=4, seed=7,
                            progress=False)["train"]
    with open_h5(path) as f:
        want = (dict(f.attrs), f.offset.copy(), {k: v.copy() for k, v in f.params.items()})
    with h5py.File(path, "r") as f:
        starts = [f[name].id.get_offset() if f[name].chunks is None      # older files
                  else f[name].id.get_chunk_info(0).byte_offset for name in ("offset", "params/m")]
    with open(path, "rb") as f:
        data = f.read()
    seed_at = data.index(b"seed")   # the attribute's name; its value follows in the header
    offsets = [s + i for s in starts for i in range(0, 16)] + \
        [seed_at + i for i in range(0, 64)]
    errors = 0
    for off, bad in _flipped_copies(tmp_path, data, offsets):
        try:
            with open_h5(bad) as f:
                got = (dict(f.attrs), f.offset, f.params)
        except DataFormatError as e:
            assert str(e).startswith(f"{bad}: ")
            errors += 1
            continue
        assert got[0] == want[0], off            # read fine: then read right
        np.testing.assert_array_equal(got[1], want[1])
        for k in want[2]:
            np.testing.assert_array_equal(got[2][k], want[2][k])
    assert errors >= 16 + 16   # every flip in the two datasets' values was caught


def test_an_hdf5_file_of_another_kind_is_named_as_such(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DataFormatError, match="not a Toy Physics data file of this project"):
        open_h5(path)


def test_corrupt_chunks_inside_a_valid_file_name_the_file_when_read(tmp_path, capsys):
    # The header and each trajectory's ends (what open_h5 probes) are intact; the middle
    # trajectory's compressed chunk is not. h5py's own error names neither file nor dataset.
    from hgan.data.cli import main
    path = generate_dataset("pendulum", tmp_path, train=5, test=0, frames=12, seed=0,
                            progress=False)["train"]
    with h5py.File(path, "r") as f:
        ds = f["frames"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    assert len(chunks) == 5   # a chunk per trajectory
    with open(path, "r+b") as f:
        f.seek(chunks[2].byte_offset + chunks[2].size // 2)
        f.write(bytes(16))
    with open_h5(path) as f:
        assert f.frames[0].shape == (12, 32, 32, 3)      # the intact ones still read
        with pytest.raises(DataFormatError, match="dataset 'frames', trajectory 2: "):
            f.frames[2, 3:9]
        # several trajectories read at once: the first that cannot be read is named too
        with pytest.raises(DataFormatError, match=f"{path}: truncated or corrupt data "
                                                  "\\(dataset 'frames', trajectory 2: "):
            f.frames[:]
        with pytest.raises(DataFormatError, match="trajectory 2: "):
            np.asarray(f.frames)
        with pytest.raises(DataFormatError, match="trajectory 2: "):
            f.frames[1:4, :2]
        with pytest.raises(DataFormatError, match="trajectory 2: "):   # counted from the end
            f.frames[-4:]
    with pytest.raises(SystemExit):
        main(["show", str(path), "--out", str(tmp_path / "s.png")])
    # the first trajectory's chunk: open_h5's own probe finds it, and says so once
    with open(path, "r+b") as f:
        f.seek(chunks[0].byte_offset + chunks[0].size // 2)
        f.write(bytes(16))
    with pytest.raises(DataFormatError) as exc:
        open_h5(path)
    assert str(exc.value).count("truncated or corrupt") == 1, exc.value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"hgan.data: error: {path}: truncated or corrupt data (dataset 'frames'"), err


@pytest.mark.parametrize("kw,match", [
    (dict(train=-1), "train must be an integer >= 0"),
    (dict(frames=0), "frames must be an integer >= 1"),
    (dict(resolution=1), "resolution must be an integer >= 2"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(test=True), "test must be an integer >= 0, got True"),  # a bool is no count
])
def test_generate_rejects_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset("pendulum", tmp_path, **{**dict(train=1, test=0, frames=4), **kw})
    with pytest.raises(ValueError, match="valid systems"):
        generate_dataset("pendulm", tmp_path, train=1, test=0, frames=4)


def test_empty_split_skipped_and_progress_bar(tmp_path, capsys):
    out = generate_dataset("mass_spring", tmp_path, train=0, test=2, frames=4, progress=True)
    assert list(out) == ["test"] and not (tmp_path / "mass_spring" / "train.h5").exists()
    assert "mass_spring/test" in capsys.readouterr().err  # tqdm writes to stderr


def test_rejected_draws_merged_across_chunks_change_nothing():
    # simulate_chunks integrates a chunk's re-draws together with the next chunk's fresh
    # trajectories; every result is per trajectory, so it must equal one chunk of all of them.
    from hgan.data.simulate import simulate_chunks
    system = get_system("three_body")
    whole = simulate_split(system, 2, "train", np.arange(12), 256)
    parts = list(simulate_chunks(system, 2, "train",
                                 [np.arange(0, 5), np.arange(5, 9), np.arange(9, 12)], 256))
    assert whole["rejected"] > 0, "the case must exercise re-draws"
    assert [len(p["states"]) for p in parts] == [5, 4, 3]
    for key in ("states", "color_index", "offset"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    for name in whole["params"]:
        np.testing.assert_array_equal(np.concatenate([p["params"][name] for p in parts]),
                                      whole["params"][name])
    assert sum(p["rejected"] + p["inaccurate"] for p in parts) == \
        whole["rejected"] + whole["inaccurate"]


def test_the_file_records_its_rejected_and_redrawn_trajectories(tmp_path):
    # Peer projects stored 0 (or nothing): the re-draw rate is part of the data's description.
    from hgan.data.generate import generate_split
    system = get_system("three_body")
    sim = simulate_split(system, 2, "train", np.arange(12), 256)
    assert sim["rejected"] > 0, "the case must exercise re-draws"
    path = tmp_path / "train.h5"
    # In chunks of 4, re-draws fall in more than one chunk: the file must hold their sum.
    from hgan.data.simulate import simulate_chunks
    parts = simulate_chunks(system, 2, "train", np.split(np.arange(12), 3), 256)
    assert sum(p["rejected"] > 0 for p in parts) > 1, "the case must span chunks"
    stats = generate_split(system, path, "train", 12, frames=256, seed=2, chunk=4,
                           progress=False)
    assert stats == {"rejected": sim["rejected"], "inaccurate": sim["inaccurate"],
                     "nonfinite": 0}        # three_body's draws leave; none goes NaN
    with open_h5(path) as f:
        assert (f.attrs["rejected"], f.attrs["inaccurate"]) == (sim["rejected"], sim["inaccurate"])


def test_a_recipe_that_never_yields_an_accepted_draw_fails_naming_it(monkeypatch):
    # Rejection sampling must end: a system whose every draw leaves the canvas (here a canvas
    # of zero size) gives up after MAX_ROUNDS draws in a row over the split, with an error
    # naming the system and the likely causes, rather than re-drawing forever. Counted per
    # trajectory only, 256 three_body trajectories took 30 s to say so: MAX_ROUNDS rounds.
    import dataclasses
    import hgan.data.simulate as simulate
    broken = dataclasses.replace(get_system("pendulum"), canvas=0.0)
    rounds = []
    integrate = simulate.integrate
    monkeypatch.setattr(simulate, "integrate",
                        lambda *a, **k: rounds.append(1) or integrate(*a, **k))
    with pytest.raises(simulate.NoAcceptedDraw, match=r"^pendulum: none of the first 1000 draws "
                                                      r"was accepted .*left the canvas.*recipe "
                                                      r"is broken"):
        simulate_split(broken, 0, "train", np.arange(250), 8)
    assert simulate.MAX_ROUNDS == 1000 and len(rounds) == 4   # 4 x 250 = 1000, not one more
    # With a sound canvas the same draws are accepted at once: the error was the canvas's.
    assert simulate_split(get_system("pendulum"), 0, "train", np.arange(3), 8)["rejected"] == 0


def test_one_trajectory_that_never_finds_an_accepted_draw_fails_naming_it(monkeypatch):
    # The others are accepted (so the split-wide count never fires): trajectory 1 alone is
    # rejected every time, and gives up after MAX_ROUNDS draws of its own.
    import hgan.data.simulate as simulate
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 4)
    integrate, first = simulate.integrate, []

    def all_but_trajectory_1(system, x0, pr, frames):
        states, inside, accurate = integrate(system, x0, pr, frames)
        inside[1 if not first else 0] = False   # round 1: all 3 pending; then it alone
        first.append(1)
        return states, inside, accurate
    monkeypatch.setattr(simulate, "integrate", all_but_trajectory_1)
    with pytest.raises(simulate.NoAcceptedDraw, match=r"^pendulum: trajectory 1 found no "
                                                      r"accepted draw in 4 "):
        simulate_split(get_system("pendulum"), 0, "train", np.arange(3), 8)
    assert len(first) == 4


def test_the_data_cli_reports_a_generation_that_gives_up_as_one_line(monkeypatch, tmp_path,
                                                                     capsys):
    import dataclasses
    import hgan.data.simulate as simulate
    import hgan.data.systems as systems
    from hgan.data.cli import main
    monkeypatch.setattr(simulate, "MAX_ROUNDS", 4)
    monkeypatch.setitem(systems._REGISTRY, "pendulum",
                        dataclasses.replace(systems._REGISTRY["pendulum"], canvas=0.0))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--system", "pendulum", "--train", "2", "--test", "0", "--frames",
              "8", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "error: pendulum: none of the first 4 draws was accepted" in err


_FLIP_SWEEP = r"""
import sys
import numpy as np
from hgan.data.h5io import DataFormatError, open_h5
path, bad = sys.argv[1], sys.argv[2]
with open_h5(path) as f:
    want = (dict(f.attrs), f.frames[:], f.states[:])
data = open(path, "rb").read()
offsets = set()
for name in (b"system", b"split", b"recipe", b"generator_version"):
    at = data.find(name)
    while at >= 0:
        offsets.update(range(at, min(at + 96, len(data))))
        at = data.find(name, at + 1)
errors = 0
for off in sorted(offsets):
    d = bytearray(data)
    d[off] ^= 0x04
    open(bad, "wb").write(bytes(d))
    try:
        with open_h5(bad) as f:
            got = (dict(f.attrs), f.frames[:], f.states[:])
    except DataFormatError as e:
        assert str(e).startswith(bad + ": "), e
        errors += 1
        continue
    # read without an error: then read right (a flip in unused header space)
    assert got[0] == want[0], (off, got[0])
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2]), off
print("swept", len(offsets), "errors", errors)
"""


def test_a_flipped_bit_in_a_text_attribute_is_a_data_format_error_not_a_crash(tmp_path):
    # A variable-length string attribute points into a heap: one flipped bit of that pointer
    # crashed the HDF5 library (a segmentation fault) or looped it. Text is now stored inside
    # the attribute; the sweep runs in a process of its own, which a crash would end. A copy
    # that opens must read as the original did, text and arrays alike.
    path = generate_dataset("pendulum", tmp_path / "ok", train=3, test=0, frames=8, seed=0,
                            progress=False)["train"]
    r = subprocess.run([sys.executable, "-c", _FLIP_SWEEP, path, str(tmp_path / "bad.h5")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("swept "), (r.returncode, r.stderr[-2000:])
    swept, errors = int(r.stdout.split()[1]), int(r.stdout.split()[3])
    assert swept > 300
    # the header checksums catch a flip in the attributes' own bytes: most of the sweep
    assert errors > swept // 2, (errors, swept)
    with h5py.File(path, "r") as f:
        assert f.attrs["system"] == b"pendulum"  # fixed-length bytes: read back as such


def _replace(f, name, change):
    a = change(f[name][()])
    del f[name]
    f.create_dataset(name, data=a)


@pytest.mark.parametrize("change, words", [
    (lambda f: f.attrs.__setitem__("dof", 288230376151711745), "attribute dof is 288230376151711745"),
    (lambda f: f.attrs.__setitem__("num_colors", 5), "attribute num_colors is 5, but pendulum has 1"),
    (lambda f: f.attrs.__setitem__("friction", True), "attribute friction is True"),
    (lambda f: f.attrs.__setitem__("dt", -1.0), "attribute dt is -1.0"),
    # the boundaries and the remaining keys: a zero time step or length is no physics, the
    # colour index equal to num_colors (or below 0) is outside the palette, and n_bodies is
    # checked like dof
    (lambda f: f.attrs.__setitem__("dt", 0.0), "attribute dt is 0.0"),
    (lambda f: f.attrs.__setitem__("dt", np.bytes_(b"0.05")), "attribute dt is '0.05', not a"),
    (lambda f: f.attrs.__setitem__("n_bodies", 2), "attribute n_bodies is 2, but pendulum has 1"),
    (lambda f: f["params/l"].__setitem__(0, 0.0), "parameter 'l' holds 0.0"),
    (lambda f: f["color_index"].__setitem__(0, 1), "color_index holds 1"),
    (lambda f: f["color_index"].__setitem__(1, -1), "color_index holds 0 or -1"),
    (lambda f: f["params/l"].__setitem__(0, -1.1e98), "parameter 'l' holds -1.1e+98"),
    (lambda f: f["params/m"].__setitem__(1, np.inf), "parameter 'm' holds inf"),
    (lambda f: f["color_index"].__setitem__(0, 9), "color_index holds 9"),
    (lambda f: f["offset"].__setitem__(0, np.nan), "offset holds a non-finite value"),
    (lambda f: f["states"].__setitem__((1, 2, 0), np.nan),
     "states of trajectory 1 hold a non-finite value"),
    (lambda f: _replace(f, "states", lambda a: a.round().astype(np.int16)),
     "states must be floating point, got int16"),
])
def test_values_that_contradict_the_system_or_physics_are_refused(tmp_path, change, words):
    # In files before hgan.data 2.2 the small datasets and attributes carry no checksum:
    # flipped bytes there read as a length of -1e98 or a dof of 2**58, and were simulated
    # and trained on.
    src = generate_dataset("pendulum", tmp_path / "ok", train=2, test=0, frames=4, seed=0,
                           progress=False)["train"]
    path = tmp_path / "bad.h5"
    shutil.copy(src, path)
    with h5py.File(path, "a") as f:
        change(f)
    with pytest.raises(DataFormatError, match=f"^{path}: " + re.escape(words)):
        open_h5(path)
    open_h5(src).close()


def test_a_flipped_bit_in_a_colour_index_is_an_error_not_another_colour(tmp_path):
    # pendulum_colors has 6 colours: index 2 read as 3 is a plausible colour, so only the
    # dataset's checksum can tell.
    path = generate_dataset("pendulum_colors", tmp_path / "ok", train=3, test=0, frames=2,
                            seed=0, progress=False)["train"]
    with h5py.File(path, "r") as f:
        ds = f["color_index"]
        start = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
        assert ds.fletcher32
    data = bytearray(open(path, "rb").read())
    data[start] ^= 0x01   # the lowest bit of trajectory 0's little-endian int32 colour
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=f"^{bad}: "):
        open_h5(bad)


def test_writer_stores_arrays_and_precompressed_chunks_where_asked(tmp_path):
    # write() takes uint8 arrays of several trajectories or compress_frames' chunks, at any
    # start; h5py reads back exactly what was handed over.
    from hgan.data.h5io import H5Writer, compress_frames
    system = get_system("pendulum")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 4, 16, 16, 3), dtype=np.uint8)
    states = rng.standard_normal((3, 4, 2))
    params = {k: np.full(3, system.param_ranges[k][0]) for k in system.param_names}
    offset = rng.standard_normal((3, 2))
    w = H5Writer(tmp_path / "p" / "train.h5", system, 3, 4, 16, dict(dt=0.05))
    w.write(0, frames=frames[:2], states=states[:2], color_index=np.zeros((2, 1), np.int32),
            offset=offset[:2], params={k: v[:2] for k, v in params.items()})
    w.write(2, frames=compress_frames(frames[2:]), states=states[2:],
            color_index=np.zeros((1, 1), np.int32), offset=offset[2:],
            params={k: v[2:] for k, v in params.items()})
    w.close()
    assert not (tmp_path / "p" / "train.h5.partial").exists()
    with h5py.File(tmp_path / "p" / "train.h5", "r") as f:
        assert f.attrs["complete"] and f.attrs["n_trajectories"] == 3
        np.testing.assert_array_equal(f["frames"][()], frames)
        np.testing.assert_array_equal(f["states"][()], states.astype(np.float32))
        np.testing.assert_array_equal(f["offset"][()], offset)
    with open_h5(tmp_path / "p" / "train.h5") as f:
        np.testing.assert_array_equal(f.frames[()], frames)


@pytest.mark.parametrize("chunk, traj", [((4, 11, 0, 0, 0), 4), ((0, 0, 0, 0, 0), 0)])
def test_open_probes_both_ends_of_files_chunked_per_frame(made, tmp_path, chunk, traj):
    # Any chunking is readable; a file chunked frame by frame loses its last frame's chunk
    # first when cut short, and open_h5 must refuse it then, not at a late epoch. The other
    # probe ("two probe chunks" per end trajectory): the first frame's chunk of the first
    # trajectory, which no last-frame read reaches in this chunking.
    path = _copy(made, tmp_path)
    with h5py.File(path, "a") as f:
        frames = f["frames"][()]
        del f["frames"]
        f.create_dataset("frames", data=frames, chunks=(1, 1, 32, 32, 3), compression="gzip")
    open_h5(path).close()
    _spoil_frames_chunk(path, chunk)
    with pytest.raises(DataFormatError, match=f"truncated or corrupt data .*trajectory {traj}"):
        open_h5(path)


def test_a_directory_given_for_a_file_names_the_data_files_inside(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        for split in ("train", "test"):
            (tmp_path / d / f"{split}.h5").write_bytes(b"")
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(DataFormatError) as e:
        open_h5(tmp_path)
    assert str(e.value) == (f"{tmp_path}: is a directory, not an HDF5 file; did you mean "
                            f"{tmp_path / 'a' / 'train.h5'} or {tmp_path / 'a' / 'test.h5'} or "
                            f"{tmp_path / 'b' / 'train.h5'} (and 2 more)?")
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    with pytest.raises(DataFormatError, match=re.escape(f"did you mean {tmp_path / 'x.h5'}?")):
        open_h5(tmp_path)


def test_the_file_sums_the_re_draws_of_every_chunk(tmp_path, monkeypatch):
    # Hand-set counts per chunk (2 rejected, one of them gone NaN, and 3 re-drawn for
    # accuracy, in each of 3 chunks): the file and the return value hold their sums, each
    # under its own name (the file's `rejected` counts the NaN ones too).
    import hgan.data.generate as generate
    real = generate.simulate_chunks

    def counted(*a, **k):
        for sim in real(*a, **k):
            yield dict(sim, rejected=2, nonfinite=1, inaccurate=3)
    monkeypatch.setattr(generate, "simulate_chunks", counted)
    path = tmp_path / "train.h5"
    stats = generate.generate_split("pendulum", path, "train", 3, frames=2, seed=0,
                                    resolution=16, chunk=1, progress=False)
    assert stats == {"rejected": 6, "nonfinite": 3, "inaccurate": 9}
    with open_h5(path) as f:
        assert (f.attrs["rejected"], f.attrs["inaccurate"]) == (6, 9)


def test_render_blocks_of_one_trajectory_write_the_same_file(tmp_path, monkeypatch):
    # A render block smaller than one trajectory's frames is still one trajectory, never 0;
    # the file is the same whatever the blocks (the arrays are byte-identical by design).
    import hgan.data.generate as generate
    kw = dict(frames=2, seed=0, resolution=16, chunk=3, progress=False)
    generate.generate_split("pendulum", tmp_path / "a.h5", "train", 3, **kw)
    monkeypatch.setattr(generate, "RENDER_BYTES", 1)
    generate.generate_split("pendulum", tmp_path / "b.h5", "train", 3, **kw)
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        assert np.array_equal(a["frames"][:], b["frames"][:])


def test_generate_split_refuses_a_negative_seed_without_a_file(tmp_path):
    from hgan.data.generate import generate_split
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\), got -1"):
        generate_split("pendulum", tmp_path / "t.h5", "train", 1, frames=2, seed=-1,
                       progress=False)
    assert not list(tmp_path.iterdir())
