"""Reader (and a small writer, for tests) of the suite's TFRecord files, without TensorFlow.

TFRecord framing, per record: uint64 length, uint32 masked crc32c(length), data,
uint32 masked crc32c(data); masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32.
tf.Example protobuf: Example{1: Features}, Features{1: map entry{1: key, 2: Feature}},
Feature{1: BytesList, 2: FloatList, 3: Int64List}, each list {1: repeated value}.
The suite stores one Example per trajectory: `x` and `dx_dt` (float64 bit-cast into int64),
`image` (one PNG of the frames stacked vertically) and `other/<name>` entries; features.txt
beside the records lists `key, shape, dtype`.
"""
import io
import os
import re
import struct

import numpy as np

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """A TFRecord file or tf.Example that cannot be parsed."""


def read_records(path, verify_data=False):
    """Yield the raw records of a TFRecord file. The length CRC is always checked; the data
    CRC (pure Python, ~1 MB/s) only with verify_data."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise TFRecordError(f"{path}: truncated record header")
            length, crc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != crc:
                raise TFRecordError(f"{path}: corrupt record header (length CRC mismatch)")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise TFRecordError(f"{path}: truncated record")
            if verify_data and masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise TFRecordError(f"{path}: corrupt record (data CRC mismatch)")
            yield data


def write_records(path, records):
    with open(path, "wb") as f:
        for data in records:
            head = struct.pack("<Q", len(data))
            f.write(head + struct.pack("<I", masked_crc(head)) + data +
                    struct.pack("<I", masked_crc(data)))


# ---- protobuf wire format --------------------------------------------------------------
def _varint(buf, i):
    shift = result = 0
    while True:
        if i >= len(buf):
            raise TFRecordError("truncated protobuf varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf):
    """Yield (field number, wire type, value) of a message; value is bytes for type 2."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wt == 5:
            val, i = buf[i:i + 4], i + 4
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        else:
            raise TFRecordError(f"unsupported protobuf wire type {wt}")
        if i > len(buf):  # a slice past the end is silently short: fewer values, no error
            raise TFRecordError(f"truncated protobuf field {num} (wire type {wt})")
        yield num, wt, val


def _packed_varints(buf):
    out, i = [], 0
    while i < len(buf):
        v, i = _varint(buf, i)
        out.append(v)
    return out


def parse_example(data):
    """tf.Example bytes -> {key: list of bytes | float32 array | int64 array}."""
    out = {}
    for num, _, features in _fields(data):
        if num != 1:
            continue
        for fnum, _, entry in _fields(features):
            if fnum != 1:
                continue
            key, feature = None, b""
            for enum, _, v in _fields(entry):
                if enum == 1:
                    key = bytes(v).decode()
                elif enum == 2:
                    feature = v
            out[key] = _parse_feature(feature)
    return out


def _parse_feature(feature):
    for kind, _, lst in _fields(feature):
        if kind == 1:
            return [bytes(v) for n, _, v in _fields(lst) if n == 1]
        if kind == 2:
            vals = []
            for n, wt, v in _fields(lst):
                vals.append(np.frombuffer(bytes(v), "<f4") if wt == 2 else
                            np.frombuffer(bytes(v), "<f4")[:1])
            return np.concatenate(vals) if vals else np.zeros(0, np.float32)
        if kind == 3:
            vals = []
            for n, wt, v in _fields(lst):
                vals.extend(_packed_varints(v) if wt == 2 else [v])
            # Protobuf int64 is two's complement in a 64-bit varint.
            return np.array(vals, dtype=np.uint64).view(np.int64)
    return []


def _enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_field(num, payload):
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def encode_example(features):
    """{key: bytes | list of bytes | float32 array | int64 array} -> tf.Example bytes."""
    entries = b""
    for key, v in features.items():
        if isinstance(v, (bytes, list)):
            vals = [v] if isinstance(v, bytes) else v
            feat = _enc_field(1, b"".join(_enc_field(1, b) for b in vals))
        elif np.asarray(v).dtype == np.float32:
            feat = _enc_field(2, _enc_field(1, np.asarray(v, "<f4").tobytes()))
        else:
            ints = np.asarray(v, np.int64).view(np.uint64)
            feat = _enc_field(3, _enc_field(1, b"".join(_enc_varint(int(i)) for i in ints)))
        entries += _enc_field(1, _enc_field(1, key.encode()) + _enc_field(2, feat))
    return _enc_field(1, entries)


# ---- the suite's schema ----------------------------------------------------------------
def read_features(path):
    """features.txt -> {key: (shape tuple, dtype str)}; lines like `x, (257, 2), float64`."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            m = re.match(r"^\s*([^,]+?)\s*,\s*\(?([\d,\s]*)\)?\s*,\s*(\w+)\s*$", line)
            if m is None:
                raise TFRecordError(f"{path}: cannot parse line {line!r}")
            shape = tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s)
            out[m.group(1)] = (shape, m.group(3))
    return out


def decode_trajectory(example, features):
    """One parsed Example -> dict of numpy arrays (image as uint8 [T, R, R, 3])."""
    from PIL import Image
    out = {}
    for key, (shape, dtype) in features.items():
        if key not in example:
            raise TFRecordError(f"record lacks feature {key!r} listed in features.txt")
        v = example[key]
        if key == "image":
            img = np.asarray(Image.open(io.BytesIO(v[0])).convert("RGB"))
            r = img.shape[1]
            out[key] = img.reshape(img.shape[0] // r, r, r, 3)
            continue
        if isinstance(v, list):
            raise TFRecordError(f"feature {key!r}: unexpected bytes")
        if dtype == "float64" and v.dtype == np.int64:
            v = v.view(np.float64)  # the suite bit-casts float64 into int64 lists
        out[key] = np.asarray(v).astype(dtype).reshape(shape)
    return out


def iter_split(directory, split):
    """Yield decoded trajectories of <directory>/<split>.tfrecord."""
    features = read_features(os.path.join(directory, "features.txt"))
    path = os.path.join(directory, split + ".tfrecord")
    for i, data in enumerate(read_records(path)):
        try:
            traj = decode_trajectory(parse_example(data), features)
        except (ValueError, OSError, SyntaxError) as e:
            # The record's data has no CRC check (docs/data.md): damage surfaces here, as
            # PIL's "broken data stream" and the like, which name neither file nor record.
            raise TFRecordError(f"{path}: record {i}: {e}") from None
        yield traj
