"""`python -m hgan.data`: generate, show, import-dm (a tfrecord the test writes itself)."""
import io
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from hgan.data import generate_dataset, open_h5
from hgan.data.cli import import_dm, main
from hgan.data.tfrecord import (crc32c, encode_example, parse_example, read_records,
                                write_records)


def _fails(argv, capsys, match):
    capsys.readouterr()  # drop earlier progress bars
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    # before the error, the bars of what was imported or begun
    *bars, last = [line for line in err.strip().splitlines() if line.strip()]
    assert all("%|" in bar for bar in bars) and "Traceback" not in err, err
    assert last.startswith("hgan.data: error:") and match in last, err


@pytest.mark.parametrize("argv,match", [
    (["generate", "--system", "pendulm"], "valid systems: mass_spring, pendulum"),
    (["generate", "--system", "pendulum", "--train", "-3"], "integer >= 0"),
    (["generate", "--system", "pendulum", "--frames", "abc"], "expected an integer"),
    (["generate", "--system", "pendulum", "--resolution", "1"], "unsupported resolution 1"),
    # the file is named: "file does not exist" alone left the reader to guess which
    (["show", "missing.h5", "--out", "x.png"], "error: missing.h5: file does not exist"),
    (["frobnicate"], "invalid choice"),
    (["generate"], "--system"),
    # named by its choices, not by argparse's dest ("required: cmd")
    ([], "the following arguments are required: {generate,show,import-dm}"),
    (["show", "missing.h5", "--out", "x.png", "--n", "0"], "integer >= 1, got 0"),
])
def test_invalid_values_one_line_exit_2(argv, match, capsys):
    _fails(argv, capsys, match)


def test_generate_and_show(tmp_path, capsys):
    main(["generate", "--system", "two_body", "--train", "3", "--test", "0", "--frames", "6",
          "--seed", "4", "--out", str(tmp_path), "--resolution", "64"])
    path = tmp_path / "two_body" / "train.h5"
    with open_h5(path) as f:
        assert f.frames.shape == (3, 6, 64, 64, 3) and f.attrs["seed"] == 4
    main(["show", str(path), "--out", str(tmp_path / "s.png"), "--n", "2", "--scale", "1"])
    assert np.asarray(Image.open(tmp_path / "s.png")).shape == (128, 6 * 64, 3)
    capsys.readouterr()
    main(["show", str(path), "--out", str(tmp_path / "s.png"), "--n", "9", "--scale", "1"])
    assert np.asarray(Image.open(tmp_path / "s.png")).shape == (3 * 64, 6 * 64, 3)
    assert capsys.readouterr().err.splitlines() == [  # asked for more than the file holds
        f"hgan.data: {path} holds 3 trajectories: showing all of them",
        f"hgan.data: {path} has 6 frames per trajectory: showing all of them"]
    main(["show", str(path), "--out", str(tmp_path / "new" / "dir" / "a.gif")])  # made, as
    gif = Image.open(tmp_path / "new" / "dir" / "a.gif")                          # sample does
    assert gif.n_frames == 6 and gif.size == (3 * 64 * 2, 64 * 2)
    gif.seek(1)
    assert gif.info["duration"] == 50  # real time: dt = 0.05 s per frame
    _fails(["show", str(path), "--out", str(tmp_path / "a.jpg")], capsys, ".png or .gif")
    # an existing split is kept unless --overwrite says otherwise; 0 and 0 is nothing to do
    before = path.read_bytes()
    again = ["generate", "--system", "two_body", "--train", "2", "--test", "0", "--frames", "6",
             "--out", str(tmp_path), "--resolution", "64"]
    _fails(again, capsys, f"{path} exists; --overwrite replaces it, --train 0 keeps it")
    assert path.read_bytes() == before
    _fails(again[:3] + ["--train", "0", "--test", "0"], capsys, "nothing to generate")
    main(again + ["--overwrite"])
    with open_h5(path) as f:
        assert f.frames.shape[0] == 2


def _solid_colour_file(tmp_path, n=2, t=7, r=16):
    """A valid file whose frame t of trajectory i is one colour, (40 i + 20, 30 t, 200)."""
    path = generate_dataset("pendulum", tmp_path / "src", train=n, test=0, frames=t, seed=0,
                            resolution=r, progress=False)["train"]
    colours = np.zeros((n, t, 1, 1, 3), np.uint8)
    colours[..., 0] = (40 * np.arange(n) + 20)[:, None, None, None]
    colours[..., 1] = (30 * np.arange(t))[None, :, None, None]
    colours[..., 2] = 200
    with h5py.File(path, "a") as f:
        f["frames"][...] = np.broadcast_to(colours, (n, t, r, r, 3))
    return path, colours[:, :, 0, 0]


def test_show_png_rows_are_trajectories_and_columns_evenly_spread_frames(tmp_path, capsys):
    path, colour = _solid_colour_file(tmp_path)          # 2 trajectories of 7 frames, 16 px
    main(["show", str(path), "--out", str(tmp_path / "s.png"), "--frames", "3", "--scale", "2"])
    img = np.asarray(Image.open(tmp_path / "s.png"))
    assert img.shape == (2 * 16 * 2, 3 * 16 * 2, 3)
    for i in range(2):
        for c, t in enumerate((0, 3, 6)):                 # first, middle and last frame
            block = img[i * 32:(i + 1) * 32, c * 32:(c + 1) * 32]
            assert (block == colour[i, t]).all(), (i, t)
    capsys.readouterr()
    main(["show", str(path), "--out", str(tmp_path / "s.png"), "--n", "3", "--frames", "2"])
    assert capsys.readouterr().err.splitlines() == [  # one more than the file holds
        f"hgan.data: {path} holds 2 trajectories: showing all of them"]


def test_show_without_out_writes_a_png_strip_beside_the_file(tmp_path, capsys):
    path, colour = _solid_colour_file(tmp_path)          # <tmp>/src/pendulum/train.h5
    capsys.readouterr()
    main(["show", str(path), "--n", "1", "--frames", "2", "--scale", "1"])
    out = os.path.splitext(str(path))[0] + ".png"
    assert capsys.readouterr().out.strip() == out         # the path it wrote, as with --out
    img = np.asarray(Image.open(out))
    assert img.shape == (16, 2 * 16, 3)
    assert (img[:, :16] == colour[0, 0]).all() and (img[:, 16:] == colour[0, 6]).all()


def test_show_gif_plays_every_frame_with_trajectories_side_by_side(tmp_path):
    path, colour = _solid_colour_file(tmp_path, t=3)
    main(["show", str(path), "--out", str(tmp_path / "a.gif"), "--scale", "1"])
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 3
    for t in range(3):
        gif.seek(t)
        frame = np.asarray(gif.convert("RGB"))
        assert frame.shape == (16, 2 * 16, 3)
        assert (frame[:, :16] == colour[0, t]).all() and (frame[:, 16:] == colour[1, t]).all()


def test_show_gif_frames_are_the_first_n_in_real_time(tmp_path, capsys):
    # --frames 2 in a GIF: frames 0 and 1 (it was ignored: every frame played); more than the
    # file holds: all of them, said
    path, colour = _solid_colour_file(tmp_path, t=5)
    main(["show", str(path), "--out", str(tmp_path / "a.gif"), "--scale", "1", "--frames", "2"])
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 2
    for t in range(2):
        gif.seek(t)
        assert (np.asarray(gif.convert("RGB"))[:, :16] == colour[0, t]).all()
        assert gif.info["duration"] == 50
    capsys.readouterr()
    main(["show", str(path), "--out", str(tmp_path / "b.gif"), "--frames", "9"])
    assert Image.open(tmp_path / "b.gif").n_frames == 5
    assert f"{path} has 5 frames per trajectory: showing all of them" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hgan.data", "generate", "--system", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "valid systems" in r.stderr


def test_crc32c_and_hand_encoded_example():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    # Example{features{feature{key: "a", value{int64_list{value: [1]}}}}}, encoded by hand.
    assert parse_example(b"\n\x0c\n\n\n\x01a\x12\x05\x1a\x03\n\x01\x01")["a"].tolist() == [1]


def _write_suite_dir(d, frames, states, other, n_split, dx_dt=None):
    """The suite's schema: float64 bit-cast to int64, one vertical PNG strip, and `other/`
    entries of shape (1, ...) (its generator makes one trajectory at a time)."""
    t, r = frames.shape[1], frames.shape[2]
    lines = [f"x, ({t}, {states.shape[-1]}), float64", f"image, ({t * r}, {r}, 3), uint8"]
    if dx_dt is not None:
        lines.append(f"dx_dt, ({t}, {states.shape[-1]}), float64")
    for k, v in other.items():
        shape = ", ".join(map(str, (1,) + v.shape[1:]))
        lines.append(f"other/{k}, ({shape}), {'int64' if v.dtype.kind == 'i' else 'float64'}")
    (d / "features.txt").write_text("\n".join(lines) + "\n")
    for split, sl in (("train", slice(0, n_split)), ("test", slice(n_split, None))):
        recs = []
        for j in range(len(frames))[sl]:
            buf = io.BytesIO()
            Image.fromarray(frames[j].reshape(t * r, r, 3)).save(buf, format="PNG")
            ex = {"x": states[j].astype(np.float64).view(np.int64).ravel(), "image": buf.getvalue()}
            if dx_dt is not None:
                ex["dx_dt"] = dx_dt[j].astype(np.float64).view(np.int64).ravel()
            for k, v in other.items():
                ex["other/" + k] = (v[j].astype(np.int64) if v.dtype.kind == "i" else
                                    v[j].astype(np.float64).view(np.int64)).ravel()
            recs.append(encode_example(ex))
        write_records(d / f"{split}.tfrecord", recs)


def test_import_dm_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 5, 32, 32, 3), dtype=np.uint8)
    states = rng.standard_normal((3, 5, 8))
    states[0, 0, 0] = -1e-300  # negative and tiny: bit-cast must survive the varints
    m = np.array([[1.25, 0.5], [0.75, 1.5], [1.0, 1.1]])  # n_body.py: one mass per body
    g = np.array([0.7, 1.2, 0.5])
    ci = np.array([[0, 3], [5, 1], [2, 4]])
    off = np.zeros((3, 2))  # two_body_colors: no random canvas location
    d = tmp_path / "two_body_colors"
    d.mkdir()
    _write_suite_dir(d, frames, states, dict(m=m, g=g, offset=off, color_index=ci), 2)
    main(["import-dm", str(d), "--out", str(tmp_path / "out")])
    for split, sl in (("train", slice(0, 2)), ("test", slice(2, 3))):
        with open_h5(tmp_path / "out" / "two_body_colors" / f"{split}.h5") as f:
            np.testing.assert_array_equal(f.frames[()], frames[sl])
            np.testing.assert_array_equal(f.states[()], states[sl].astype(np.float32))
            np.testing.assert_array_equal(f.params["m"], m[sl])
            np.testing.assert_array_equal(f.params["g"], g[sl])
            np.testing.assert_array_equal(f.color_index, ci[sl])
            np.testing.assert_array_equal(f.offset, off[sl])
    assert len(list(read_records(d / "train.tfrecord", verify_data=True))) == 2
    raw = bytearray((d / "train.tfrecord").read_bytes())
    raw[3] ^= 0xFF  # corrupt the first length field
    (d / "train.tfrecord").write_bytes(bytes(raw))
    _fails(["import-dm", str(d), "--out", str(tmp_path / "o2")], capsys, "length CRC mismatch")
    _fails(["import-dm", str(tmp_path / "nowhere")], capsys, "not a directory")


def test_import_dm_double_pendulum_arms_and_missing_parameter(tmp_path):
    # ideal_double_pendulum.py stores m_1, m_2, l_1, l_2 and g; the file keeps (arm 1, arm 2).
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
    states = rng.standard_normal((2, 3, 4))
    other = dict(m_1=np.array([0.41, 0.55]), m_2=np.array([0.59, 0.45]),
                 l_1=np.array([0.8, 0.95]), l_2=np.array([0.99, 0.76]), g=np.array([2.6, 3.9]),
                 offset=np.array([[0.3, -0.2], [-1.0, 0.4]]), color_index=np.array([[1, 5],
                                                                                  [0, 2]]))
    d = tmp_path / "double_pendulum_colors"
    d.mkdir()
    _write_suite_dir(d, frames, states, other, 2)
    out = main(["import-dm", str(d), "--out", str(tmp_path / "out")])
    assert out == 0
    with open_h5(tmp_path / "out" / "double_pendulum_colors" / "train.h5") as f:
        np.testing.assert_array_equal(f.params["m"], np.stack([other["m_1"], other["m_2"]], 1))
        np.testing.assert_array_equal(f.params["l"], np.stack([other["l_1"], other["l_2"]], 1))
        np.testing.assert_array_equal(f.params["g"], other["g"])
        np.testing.assert_array_equal(f.offset, other["offset"])
    del other["l_2"]
    d2 = tmp_path / "x" / "double_pendulum_colors"
    d2.mkdir(parents=True)
    _write_suite_dir(d2, frames, states, other, 2)
    with pytest.raises(ValueError, match="record lacks other/l, and double_pendulum_colors "
                                         r"draws it from \[0.75, 1.0\]"):
        import_dm(d2, tmp_path / "o3", progress=False)
    assert not (tmp_path / "o3" / "double_pendulum_colors" / "train.h5").exists()


def test_records_are_framed_as_tensorflow_frames_them(tmp_path):
    # TensorBoard's RecordWriter (TensorFlow's framing, its own masked CRC-32C) is the oracle:
    # the suite's files are written that way, and a wrong mask would refuse every one of them.
    from tensorboard.summary.writer.record_writer import RecordWriter
    recs = [b"", b"a", bytes(range(256)) * 3]
    theirs = tmp_path / "tf.tfrecord"
    with open(theirs, "wb") as f:
        w = RecordWriter(f)
        for r in recs:
            w.write(r)
        w.flush()
    assert list(read_records(theirs, verify_data=True)) == recs
    ours = tmp_path / "ours.tfrecord"
    write_records(ours, recs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_damaged_records_are_named(tmp_path, capsys):
    from hgan.data.tfrecord import TFRecordError
    path = tmp_path / "r.tfrecord"
    write_records(path, [b"x" * 40, b"y" * 40])   # each record: 12 + 40 + 4 = 56 bytes
    raw = path.read_bytes()
    assert len(raw) == 112
    bad = bytearray(raw)
    bad[12 + 5] ^= 1                                # a data byte: only the data CRC sees it
    path.write_bytes(bytes(bad))
    assert len(list(read_records(path))) == 2
    with pytest.raises(TFRecordError, match="data CRC mismatch"):
        list(read_records(path, verify_data=True))
    for cut, match in ((56 + 12 + 20, "truncated record$"), (56 + 6, "truncated record header")):
        path.write_bytes(raw[:cut])
        with pytest.raises(TFRecordError, match=f"^{path}: {match}"):
            list(read_records(path))
    # through import-dm: one line naming the file, exit 2
    rng = np.random.default_rng(2)
    d = tmp_path / "pendulum"
    d.mkdir()
    _write_suite_dir(d, rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8),
                     rng.standard_normal((2, 3, 2)), {}, 1)
    raw = (d / "train.tfrecord").read_bytes()
    for cut, match in ((len(raw) - 3, "truncated record"), (5, "truncated record header")):
        (d / "train.tfrecord").write_bytes(raw[:cut])
        _fails(["import-dm", str(d), "--out", str(tmp_path / "out"), "--overwrite"], capsys,
               f"{d / 'train.tfrecord'}: {match}")
    assert not (tmp_path / "out" / "pendulum" / "train.h5").exists()


@pytest.mark.parametrize("float_list", [
    b"\n\x08\x00\x00\xc0\x3f\x00\x00\x00\xc0",          # packed: one length-delimited field
    b"\x0d\x00\x00\xc0\x3f\x0d\x00\x00\x00\xc0",        # unpacked: one fixed32 field each
])
def test_float_list_hand_encoded(float_list):
    # Example{features{feature{key: "f", value{float_list{value: [1.5, -2.0]}}}}}, by hand:
    # little-endian IEEE floats 1.5 = 0x3fc00000, -2.0 = 0xc0000000.
    feature = b"\x12\x0a" + float_list
    entry = b"\n\x01f" + b"\x12\x0c" + feature
    data = b"\n\x13" + b"\n\x11" + entry
    got = parse_example(data)["f"]
    assert got.dtype == np.float32 and got.tolist() == [1.5, -2.0]


def _ld(num, payload):
    """A length-delimited protobuf field (wire type 2), payloads under 128 bytes."""
    assert len(payload) < 128
    return bytes([num << 3 | 2, len(payload)]) + payload


def test_unknown_protobuf_fields_are_skipped_at_every_level():
    # Protobuf readers skip fields they do not know: a fixed64 one (wire type 1, 8 bytes) and
    # length-delimited ones numbered 2 where Example, Features and BytesList use only 1.
    int64s = _ld(3, _ld(1, b"\x01\x02"))                  # int64_list{value: [1, 2]} packed
    entry_a = _ld(1, b"a") + _ld(2, int64s)
    entry_b = _ld(1, b"b") + _ld(2, _ld(1, _ld(1, b"xy") + _ld(2, b"junk")))
    features = _ld(1, entry_a) + _ld(2, _ld(1, b"z") + _ld(2, int64s)) + _ld(1, entry_b)
    example = (b"\x11" + bytes(4) + b"\x0b" * 4 + _ld(1, features)
               + _ld(2, _ld(1, _ld(1, b"y") + _ld(2, int64s))))
    got = parse_example(example)
    assert sorted(got) == ["a", "b"]
    assert got["a"].tolist() == [1, 2] and got["b"] == [b"xy"]


def test_unpacked_int64_list_with_a_negative_value():
    # int64_list{value: 1, value: -2}, one varint field each; -2 is 2**64 - 2 in ten bytes.
    ints = b"\x08\x01" + b"\x08" + b"\xfe" + b"\xff" * 8 + b"\x01"
    got = parse_example(_ld(1, _ld(1, _ld(1, b"i") + _ld(2, _ld(3, ints)))))["i"]
    assert got.dtype == np.int64 and got.tolist() == [1, -2]


def test_malformed_protobuf_is_a_tfrecord_error():
    from hgan.data.tfrecord import TFRecordError
    with pytest.raises(TFRecordError, match="truncated protobuf varint"):
        parse_example(b"\n")          # field 1, length-delimited, and no length
    with pytest.raises(TFRecordError, match="unsupported protobuf wire type 3"):
        parse_example(b"\x0b")        # a group start: not in tf.Example


@pytest.mark.parametrize("cut", [4, 1])
def test_a_protobuf_field_longer_than_its_message_is_a_tfrecord_error(cut):
    # A record's data has no CRC check by default (docs/data.md): a length that runs past the
    # end of its message is damage, and was parsed as the values that were there (the example
    # below, cut by 4 bytes, read as f = [1.5] instead of refusing it).
    from hgan.data.tfrecord import TFRecordError
    floats = b"\n\x08\x00\x00\xc0\x3f\x00\x00\x00\xc0"   # float_list{value: [1.5, -2.0]}
    entry = b"\n\x01f" + b"\x12\x0c" + b"\x12\x0a" + floats
    data = b"\n\x13" + b"\n\x11" + entry
    assert parse_example(data)["f"].tolist() == [1.5, -2.0]
    with pytest.raises(TFRecordError, match="truncated protobuf field 1 "):
        parse_example(data[:-cut])
    for short in (b"\x11" + bytes(3), b"\x0d" + bytes(2)):   # fixed64, fixed32 cut short
        with pytest.raises(TFRecordError, match="truncated protobuf field"):
            parse_example(short)


def test_features_txt_skips_blank_lines_and_refuses_trailing_words(tmp_path):
    from hgan.data.tfrecord import TFRecordError, read_features
    path = tmp_path / "features.txt"
    path.write_text("x, (2, 1), float64\n\n   \nimage, (64, 32, 3), uint8\n")
    assert read_features(path) == {"x": ((2, 1), "float64"), "image": ((64, 32, 3), "uint8")}
    path.write_text("x, (2, 1), float64 extra\n")
    with pytest.raises(TFRecordError, match="cannot parse line 'x, \\(2, 1\\), float64 extra'"):
        read_features(path)


def test_decoding_a_record_against_features_txt():
    from hgan.data.tfrecord import TFRecordError, decode_trajectory
    f32 = np.array([1.5, -2.0], np.float32)        # a float_list the schema calls float64
    got = decode_trajectory({"x": f32}, {"x": ((2, 1), "float64")})["x"]
    assert got.dtype == np.float64 and got.tolist() == [[1.5], [-2.0]]
    with pytest.raises(TFRecordError, match="feature 'x': unexpected bytes"):
        decode_trajectory({"x": [b"ab"]}, {"x": ((1,), "float64")})


def test_a_record_lacking_a_listed_feature_is_named_with_its_file_and_index(tmp_path):
    from hgan.data.tfrecord import TFRecordError, iter_split
    (tmp_path / "features.txt").write_text("x, (2,), float64\ny, (2,), float64\n")
    xy = np.array([0.5, 2.0]).view(np.int64)
    write_records(tmp_path / "train.tfrecord", [encode_example({"x": xy, "y": xy}),
                                                encode_example({"x": xy})])
    it = iter_split(tmp_path, "train")
    assert next(it)["y"].tolist() == [0.5, 2.0]
    with pytest.raises(TFRecordError, match=f"^{tmp_path / 'train.tfrecord'}: record 1: record "
                                            "lacks feature 'y' listed in features.txt$"):
        next(it)


def test_import_dm_writes_test_first_and_refuses_existing_splits(tmp_path, capsys):
    # It imported train first, so a damaged (or interrupted) test split left a train.h5
    # without its test.h5; and it replaced existing files silently, which generate refuses.
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 5, 32, 32, 3), dtype=np.uint8)
    other = dict(m=np.full((3, 2), 1.0), g=np.full(3, 1.0), offset=np.zeros((3, 2)),
                 color_index=np.array([[0, 1], [2, 3], [4, 5]]))
    d = tmp_path / "two_body_colors"
    d.mkdir()
    _write_suite_dir(d, frames, rng.standard_normal((3, 5, 8)), other, 2)
    good = (d / "test.tfrecord").read_bytes()
    raw = bytearray(good)
    raw[3] ^= 0xFF
    (d / "test.tfrecord").write_bytes(bytes(raw))
    out = tmp_path / "out"
    _fails(["import-dm", str(d), "--out", str(out)], capsys, "length CRC mismatch")
    assert not (out / "two_body_colors" / "train.h5").exists()
    (d / "test.tfrecord").write_bytes(good)
    assert main(["import-dm", str(d), "--out", str(out)]) == 0
    before = (out / "two_body_colors" / "train.h5").read_bytes()
    _fails(["import-dm", str(d), "--out", str(out)], capsys,
           f"{out / 'two_body_colors' / 'test.h5'} exists; --overwrite replaces it")
    assert (out / "two_body_colors" / "train.h5").read_bytes() == before
    assert main(["import-dm", str(d), "--out", str(out), "--overwrite"]) == 0


def test_an_interrupted_import_names_the_splits_it_finished(tmp_path):
    import time
    from types import SimpleNamespace

    from hgan.data.cli import _kept
    d = tmp_path / "pendulum"
    d.mkdir()
    for split in ("train", "test"):
        (d / f"{split}.tfrecord").write_bytes(b"")
    out = tmp_path / "out"
    (out / "pendulum").mkdir(parents=True)
    started = time.time()
    (out / "pendulum" / "test.h5").write_bytes(b"")   # finished; train.h5 was being written
    args = SimpleNamespace(cmd="import-dm", system=None, dir=str(d), out=str(out))
    assert _kept(args, started) == (f"; {out / 'pendulum' / 'test.h5'} written complete, "
                                    f"{out / 'pendulum' / 'train.h5'} not written")


def test_an_out_that_cannot_be_a_folder_is_named_in_words(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("")
    _fails(["generate", "--system", "pendulum", "--train", "1", "--test", "0", "--frames", "4",
            "--out", str(a_file)], capsys, f"{a_file / 'pendulum'}: Not a directory")


def test_a_record_with_damaged_image_bytes_is_named_with_its_file_and_index(tmp_path, capsys):
    # Record data carries no CRC check: PIL's "broken data stream when reading image file"
    # named neither the file nor the record.
    rng = np.random.default_rng(3)
    d = tmp_path / "pendulum"
    d.mkdir()
    _write_suite_dir(d, rng.integers(0, 256, (3, 3, 32, 32, 3), dtype=np.uint8),
                     rng.standard_normal((3, 3, 2)), {}, 2)
    recs = list(read_records(d / "train.tfrecord"))
    png = recs[1].index(b"\x89PNG")
    broken = bytearray(recs[1])
    broken[png + 60:png + 90] = bytes(30)   # inside the image data, past its header
    write_records(d / "train.tfrecord", [recs[0], bytes(broken)])
    _fails(["import-dm", str(d), "--out", str(tmp_path / "out")], capsys,
           f"{d / 'train.tfrecord'}: record 1: ")


def test_import_dm_mass_spring_offset_of_one_value_shifts_x_and_y_alike(tmp_path):
    # ideal_mass_spring.py: offset has shape [n, d] with d = 1 unless randomize_x adds an x
    # column (zeros [n, 1] in the constant set), and its renderer adds that one value to x and
    # y alike (particles + offset[:, None, None, :]). Reshaping it to (1, 2) refused the
    # suite's own mass_spring set.
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    other = dict(k=np.full(3, 2.0), m=np.full(3, 0.5), offset=np.array([[0.0], [0.3], [-0.2]]),
                 color_index=np.zeros((3, 1), np.int64))
    d = tmp_path / "mass_spring"
    d.mkdir()
    _write_suite_dir(d, frames, rng.standard_normal((3, 4, 2)), other, 2)
    assert main(["import-dm", str(d), "--out", str(tmp_path / "out")]) == 0
    with open_h5(tmp_path / "out" / "mass_spring" / "train.h5") as f:
        np.testing.assert_array_equal(f.offset, [[0.0, 0.0], [0.3, 0.3]])
        np.testing.assert_array_equal(f.color_index, [[0], [0]])


def _record(rng, frames, states, px=32):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (frames * px, px, 3), dtype=np.uint8)).save(buf, "PNG")
    x = rng.standard_normal((states, 2))
    return encode_example({"x": x.view(np.int64).ravel(), "image": buf.getvalue()})


@pytest.mark.parametrize("lengths,match", [
    ([(5, 6)], "record 0: x has 6 states but image has 5 frames"),
    ([(5, 5), (4, 5)], "record 1: x has 5 states but image has 4 frames"),
    ([(5, 5), (5, 5, 64)], "record 1: image of 5 frames of 64 px, record 0's of 5 of 32 px"),
])
def test_import_dm_records_of_other_sizes_are_one_line(tmp_path, capsys, lengths, match):
    # They raised h5py's TypeError "Can't broadcast (1, 6, 2) -> (1, 5, 2)" with a traceback.
    rng = np.random.default_rng(5)
    d = tmp_path / "pendulum"
    d.mkdir()
    (d / "features.txt").write_text(f"x, ({lengths[0][1]}, 2), float64\n"
                                    "image, (5, 32, 32, 3), uint8\n")
    write_records(d / "train.tfrecord", [_record(rng, *r) for r in lengths])
    _fails(["import-dm", str(d), "--out", str(tmp_path / "out")], capsys,
           f"{d / 'train.tfrecord'}: {match}")
    assert not (tmp_path / "out" / "pendulum" / "train.h5").exists()
    assert not (tmp_path / "out" / "pendulum" / "train.h5.partial").exists()


@pytest.mark.parametrize("change,match", [
    (dict(color_index=np.array([[3], [5]])), r"record 0: other/color_index is \[3\], pendulum "
                                             r"needs 1 index in \[0, 1\)"),
    (dict(m=np.array([0.5, 1.2])), r"record 1: other/m is \[1.2\], outside pendulum's "
                                   r"\[0.5, 0.5\]"),

    # the boundaries: a colour index equal to num_colors, below 0, or one per body too many;
    # a mass below the range, or above it by more than rounding (1e-6 of the range's end)
    (dict(color_index=np.array([[1], [0]])), r"record 0: other/color_index is \[1\]"),
    (dict(color_index=np.array([[0], [-1]])), r"record 1: other/color_index is \[-1\]"),
    (dict(color_index=np.zeros((2, 2), np.int64)),
     r"record 0: other/color_index is \[0, 0\], pendulum needs 1 index"),
    (dict(m=np.array([0.5, 0.4])), r"record 1: other/m is \[0.4\], outside"),
    (dict(m=np.array([0.5, 0.5005])), r"record 1: other/m is \[0.5005\], outside"),
    (dict(offset=np.zeros((2, 3))), r"record 0: other/offset has 3 values, not 2 \(x, y\)"),
])
def test_import_dm_refuses_values_of_another_set(tmp_path, capsys, change, match):
    # pendulum_colors records imported as pendulum: the colours made a file that open_h5 (and
    # so training) refuses after an import that said nothing; a mass of 1.2 passed as the
    # constant set's 0.5.
    rng = np.random.default_rng(6)
    other = dict(m=np.full(2, 0.5), g=np.full(2, 3.0), l=np.full(2, 1.0),
                 offset=np.zeros((2, 2)), color_index=np.zeros((2, 1), np.int64))
    other.update(change)
    d = tmp_path / "pendulum"
    d.mkdir()
    _write_suite_dir(d, rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8),
                     rng.standard_normal((2, 3, 2)), other, 2)
    _fails(["import-dm", str(d), "--out", str(tmp_path / "out")], capsys,
           f"{d / 'train.tfrecord'}: ")
    with pytest.raises(ValueError, match=match):
        import_dm(d, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "pendulum" / "train.h5").exists()


def test_import_dm_reads_the_suites_folder_name_and_refuses_another_dt(tmp_path, capsys):
    # datasets.py writes <dataset>_dt_<dt> ('.' as '_'); generate_locally.sh makes dt 0.05 and
    # 0.1. `pendulum_dt_0_05` was an unknown system, and `pendulum_dt_0_1 --system pendulum`
    # was imported as dt = 0.05: motion twice as fast as the file said.
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
    for dt in ("0_05", "0_1"):
        (tmp_path / f"pendulum_dt_{dt}").mkdir()
        _write_suite_dir(tmp_path / f"pendulum_dt_{dt}", frames, rng.standard_normal((2, 3, 2)),
                         {}, 1)
    out = tmp_path / "out"
    assert main(["import-dm", str(tmp_path / "pendulum_dt_0_05"), "--out", str(out)]) == 0
    with open_h5(out / "pendulum" / "train.h5") as f:
        assert f.attrs["system"] == "pendulum" and f.attrs["dt"] == 0.05
    for extra in ([], ["--system", "pendulum"]):
        _fails(["import-dm", str(tmp_path / "pendulum_dt_0_1"), "--out", str(tmp_path / "o2")]
               + extra, capsys, "says the suite wrote these records at dt = 0.1; this project's "
                                "data is at dt = 0.05: import the suite's pendulum_dt_0_05 folder")
    assert not (tmp_path / "o2").exists()


def _oscillating_and_wrapped(dt, t=9):
    """Two pendulum-like records written at dt with their exact derivatives: a harmonic swing
    (q = a cos wt, p = -a w sin wt) and a rotation at constant p whose angle the writer wrapped
    into [-pi, pi) once along the way."""
    ts = np.arange(t) * dt
    a, w, p = 0.8, 2.0, 9.0
    swing = np.stack([a * np.cos(w * ts), -a * w * np.sin(w * ts)], -1)
    d_swing = np.stack([swing[:, 1], -w * w * swing[:, 0]], -1)
    q = (3.0 + p * ts + np.pi) % (2 * np.pi) - np.pi
    spin = np.stack([q, np.full(t, p)], -1)
    d_spin = np.stack([np.full(t, p), np.zeros(t)], -1)
    return np.stack([swing, spin]), np.stack([d_swing, d_spin])


def test_import_dm_reads_the_time_step_from_the_states_when_the_folder_name_does_not(
        tmp_path, capsys):
    # A suite folder renamed after the system alone (`pendulum`) lost the dt its name carried:
    # records written at dt = 0.1 were imported as 0.05, motion twice as fast as the file said.
    # The suite stores each state's exact derivative, which says the step.
    from hgan.data.cli import _suite_dt
    rng = np.random.default_rng(9)
    for dt in (0.05, 0.1):
        states, deriv = _oscillating_and_wrapped(dt)
        assert np.diff(states[1, :, 0]).min() < -np.pi  # the rotation wraps within the record
        for s, d in zip(states, deriv):
            assert abs(_suite_dt(dict(x=s, dx_dt=d)) / dt - 1) < 0.01
        frames = rng.integers(0, 256, (2, 9, 16, 16, 3), dtype=np.uint8)
        d = tmp_path / str(dt) / "pendulum"
        d.mkdir(parents=True)
        _write_suite_dir(d, frames, states, {}, 1, dx_dt=deriv)
    assert main(["import-dm", str(tmp_path / "0.05" / "pendulum"), "--out",
                 str(tmp_path / "out")]) == 0
    with open_h5(tmp_path / "out" / "pendulum" / "test.h5") as f:
        np.testing.assert_array_equal(f.states[()],
                                      _oscillating_and_wrapped(0.05)[0][1:].astype(np.float32))
    _fails(["import-dm", str(tmp_path / "0.1" / "pendulum"), "--out", str(tmp_path / "o2")],
           capsys, "test.tfrecord: record 0: its states advance by dt = 0.1 (x against dx_dt); "
                   "this project's data is at dt = 0.05: import the suite's pendulum_dt_0_05 set")
    assert not (tmp_path / "o2").exists()
    # no derivative, or no motion: the step cannot be read, and nothing is refused for it
    assert _suite_dt(dict(x=states[0])) is None
    assert _suite_dt(dict(x=np.zeros((5, 2)), dx_dt=np.zeros((5, 2)))) is None


@pytest.mark.parametrize("change, match", [
    ("nan", "record 1: x holds a non-finite state"),
    ("inf", "record 1: x holds a non-finite state"),
    ("40px", "record 0: frames of 40 px: unsupported resolution 40: the models take 4*2^n"),
])
def test_import_dm_refuses_states_and_frames_no_run_could_use(tmp_path, capsys, change, match):
    # A non-finite state was written as it came (open_h5 probes a few trajectories, so most
    # files opened and trained on it); 40 px frames imported, then no model could be built.
    rng = np.random.default_rng(10)
    r = 40 if change == "40px" else 16
    states = rng.standard_normal((3, 4, 2))
    if change in ("nan", "inf"):
        states[1, 2, 1] = float(change)
    d = tmp_path / "pendulum"
    d.mkdir()
    _write_suite_dir(d, rng.integers(0, 256, (3, 4, r, r, 3), dtype=np.uint8), states, {}, 3)
    _fails(["import-dm", str(d), "--out", str(tmp_path / "out")], capsys, match)
    assert not list((tmp_path / "out").rglob("*.h5"))


def test_a_seed_the_file_cannot_store_is_one_line(tmp_path, capsys):
    # 2**64 and above raised h5py's "Object dtype dtype('O') has no native HDF5 equivalent"
    # with a traceback, from the file's attributes (numpy seeds from any integer).
    _fails(["generate", "--system", "pendulum", "--train", "1", "--test", "0", "--frames", "2",
            "--seed", str(2 ** 64), "--out", str(tmp_path)], capsys,
           f"seed must be an integer in [0, 2**64), got {2 ** 64}")
    assert not any(tmp_path.rglob("*.partial"))
    assert main(["generate", "--system", "pendulum", "--train", "1", "--test", "0", "--frames",
                 "2", "--seed", str(2 ** 64 - 1), "--out", str(tmp_path)]) == 0
    with open_h5(tmp_path / "pendulum" / "train.h5") as f:
        assert f.attrs["seed"] == 2 ** 64 - 1


@pytest.mark.parametrize("name, want", [
    ("pendulum_dt_0_05", ("pendulum", 0.05)),
    ("pendulum_dt_0_1", ("pendulum", 0.1)),
    ("two_body_dt_1", ("two_body", 1.0)),                # a whole-number dt has no '_'
    ("pendulum", ("pendulum", None)),
    ("pendulum_dt_0_05_old", ("pendulum_dt_0_05_old", None)),  # the whole name, or no dt
])
def test_suite_dir_name_reads_dataset_and_dt_from_the_whole_folder_name(tmp_path, name, want):
    # datasets.py: <dataset>_dt_<dt> with '.' written '_'. A partial match would take a dt
    # from a folder the suite did not name so; an integer dt would be read as part of the name.
    from hgan.data.cli import suite_dir_name
    assert suite_dir_name(str(tmp_path / name) + "/") == want


def test_import_dm_fills_a_left_out_per_body_constant_over_every_body(tmp_path):
    # two_body's m (one per body) and g are constants; records that leave them out take the
    # system's value for each body ([N, 2] masses), not one mass or an error.
    rng = np.random.default_rng(8)
    d = tmp_path / "two_body"
    d.mkdir()
    _write_suite_dir(d, rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8),
                     rng.standard_normal((2, 3, 8)),
                     dict(color_index=np.array([[0, 1], [1, 0]])), 2)
    import_dm(d, tmp_path / "out", progress=False)
    with open_h5(tmp_path / "out" / "two_body" / "train.h5") as f:
        np.testing.assert_array_equal(f.params["m"], np.ones((2, 2)))
        np.testing.assert_array_equal(f.params["g"], np.ones(2))
    with h5py.File(tmp_path / "out" / "two_body" / "train.h5", "r") as f:
        assert f["params/m"].shape == (2, 2)


def _pendulum_dir(d, n_split=1, rng=None):
    rng = rng or np.random.default_rng(11)
    d.mkdir(parents=True)
    _write_suite_dir(d, rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8),
                     rng.standard_normal((2, 3, 2)), {}, n_split)
    return d


def test_import_dm_keeps_an_existing_split_it_has_no_records_for(tmp_path):
    # Only test.tfrecord: an existing train.h5 is no reason to refuse, and stays as it was.
    d = _pendulum_dir(tmp_path / "pendulum", n_split=0)
    (d / "train.tfrecord").unlink()
    (tmp_path / "out" / "pendulum").mkdir(parents=True)
    (tmp_path / "out" / "pendulum" / "train.h5").write_bytes(b"kept")
    assert main(["import-dm", str(d), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "pendulum" / "train.h5").read_bytes() == b"kept"
    with open_h5(tmp_path / "out" / "pendulum" / "test.h5") as f:
        assert len(f) == 2


def test_import_dm_folders_without_features_or_records_are_named(tmp_path):
    d = tmp_path / "pendulum"
    d.mkdir()
    with pytest.raises(ValueError, match="features.txt missing"):
        import_dm(d, tmp_path / "out", progress=False)
    (d / "features.txt").write_text("x, (3, 2), float64\n")
    with pytest.raises(ValueError, match="no train.tfrecord or test.tfrecord with records"):
        import_dm(d, tmp_path / "out", progress=False)


def test_import_dm_system_option_names_a_folder_of_another_name(tmp_path):
    d = _pendulum_dir(tmp_path / "my_copy")
    assert main(["import-dm", str(d), "--system", "pendulum", "--out", str(tmp_path / "o")]) == 0
    with open_h5(tmp_path / "o" / "pendulum" / "train.h5") as f:
        assert f.attrs["system"] == "pendulum" and len(f) == 1


def test_import_dm_states_of_another_system_are_one_line(tmp_path, capsys):
    rng = np.random.default_rng(12)
    d = tmp_path / "pendulum"
    d.mkdir()
    _write_suite_dir(d, rng.integers(0, 256, (1, 3, 16, 16, 3), dtype=np.uint8),
                     rng.standard_normal((1, 3, 4)), {}, 1)     # 4 columns: a 2-dof system's
    _fails(["import-dm", str(d), "--out", str(tmp_path / "out")], capsys,
           f"{d / 'train.tfrecord'}: x has 4 columns, pendulum needs 2")


def test_a_stop_request_ends_an_import_between_records_without_a_file(tmp_path, monkeypatch):
    import threading

    from hgan.data import GenerationInterrupted, interrupt
    stopped = threading.Event()
    stopped.set()

    class StopAtOnce(interrupt.StopSignals):
        def __init__(self):
            super().__init__(event=stopped)

    monkeypatch.setattr(interrupt, "StopSignals", StopAtOnce)
    d = _pendulum_dir(tmp_path / "pendulum")
    with pytest.raises(GenerationInterrupted):
        import_dm(d, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").rglob("*.h5*"))


def test_suite_dt_ignores_a_derivative_of_another_shape_and_steps_without_motion():
    from hgan.data.cli import _suite_dt
    x = np.cumsum(np.full((5, 2), 0.05), 0)
    assert _suite_dt(dict(x=x, dx_dt=np.ones((5, 4)))) is None
    # moving at unit speed for 4 steps of dt = 0.05, then nearly still (a derivative of 1e-10,
    # steps of 1e-8): a step without motion says nothing about dt, however many there are
    d = np.zeros((10, 2))
    d[:4, 0], d[4:, 0] = 1.0, 1e-10
    steps = np.array([0.05, 0.05, 0.05, 0.025] + [1e-8] * 5)
    x = np.zeros((10, 2))
    x[1:, 0] = np.cumsum(steps)
    assert _suite_dt(dict(x=x, dx_dt=d)) == pytest.approx(0.05, rel=1e-9)


def test_generate_with_a_split_of_0_keeps_that_existing_split(tmp_path):
    # "--train 0 keeps it", as the refusal says
    (tmp_path / "pendulum").mkdir()
    (tmp_path / "pendulum" / "train.h5").write_bytes(b"kept")
    assert main(["generate", "--system", "pendulum", "--train", "0", "--test", "1", "--frames",
                 "2", "--resolution", "16", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "pendulum" / "train.h5").read_bytes() == b"kept"
    assert (tmp_path / "pendulum" / "test.h5").exists()


def test_generate_over_a_whole_dataset_names_both_splits(tmp_path, capsys):
    # Both splits there (as train.py generates them): the refusal named train.h5 alone and
    # advised "--train 0 keeps it", which was then refused for test.h5.
    argv = ["generate", "--system", "pendulum", "--train", "1", "--test", "1", "--frames", "2",
            "--resolution", "16", "--out", str(tmp_path)]
    assert main(argv) == 0
    train, test = (tmp_path / "pendulum" / "train.h5"), (tmp_path / "pendulum" / "test.h5")
    before = train.read_bytes(), test.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"hgan.data: error: {train} and {test} exist; --overwrite replaces them, or choose "
        "another --out")
    assert (train.read_bytes(), test.read_bytes()) == before
    # one split asked for: its own refusal, with the way to keep it
    _fails(argv[:6] + ["0"] + argv[7:], capsys, f"{train} exists; --overwrite replaces it, "
                                                "--train 0 keeps it")


def test_an_interrupted_run_names_only_the_files_it_wrote_itself(tmp_path):
    import os
    import time
    from types import SimpleNamespace

    from hgan.data.cli import _kept
    out = tmp_path / "out"
    (out / "pendulum").mkdir(parents=True)
    for split in ("train", "test"):
        (out / "pendulum" / f"{split}.h5").write_bytes(b"")
    started = time.time()
    gen = SimpleNamespace(cmd="generate", system="pendulum", test=1, train=1, out=str(out))
    test_h5, train_h5 = out / "pendulum" / "test.h5", out / "pendulum" / "train.h5"
    assert _kept(gen, started) == f"; {test_h5}, {train_h5} written complete"  # test first
    os.utime(train_h5, (started - 100, started - 100))   # a previous run's
    assert _kept(gen, started) == f"; {test_h5} written complete, {train_h5} not written"
    # import-dm --system: the files are the named system's, not the folder's
    d = tmp_path / "my_copy"
    d.mkdir()
    (d / "test.tfrecord").write_bytes(b"")
    imp = SimpleNamespace(cmd="import-dm", system="pendulum", dir=str(d), out=str(out))
    assert _kept(imp, started) == f"; {test_h5} written complete"


def test_an_error_of_several_lines_is_reported_on_one(tmp_path, capsys, monkeypatch):
    import hgan.data.cli as cli

    def fails(*a, **k):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cli, "show", fails)
    _fails(["show", "x.h5", "--out", str(tmp_path / "s.png")], capsys, "first line second line")
