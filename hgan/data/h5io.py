"""The project's HDF5 format: a streaming writer and a validating reader.

Layout of `<out>/<system>/<split>.h5` (format version 2):
    frames            uint8   [N, T, R, R, 3]  one trajectory per chunk, gzip
    states            float32 [N, T, 2*dof]    q then p; n-body x1, y1, x2, y2, ...
    color_index       int32   [N, n_bodies]
    offset            float64 [N, 2]           world shift applied to every particle
    params/<name>     float64 [N] or [N, n_bodies]  physical parameters of each trajectory;
                      per body / per arm (system.body_params: m of the n-body systems, m and
                      l of the double pendulum) with the last axis
    attrs: format_version, generator_version, system, split, seed, dt, resolution, frames,
           n_trajectories, dof, n_bodies, num_colors, friction, canvas_min, canvas_max,
           recipe, rejected, inaccurate, substeps, complete
The writer fills `<name>.partial` and renames it when every trajectory is written, so an
interrupted run never leaves a file that passes validation. Metadata and the small datasets
carry checksums (LIBVER), the gzip chunks zlib's.

Version 1 stored every parameter as [N] (one mass and one length shared by all bodies and
arms); the reader still opens it and repeats such values over the bodies, which is exactly
what version-1 generation simulated.
"""
import os
import zlib

import h5py
import numpy as np

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# 2.1: text attributes fixed-length; 2.2: checksummed metadata and small datasets (LIBVER);
# the data itself as 2.0's
GENERATOR_VERSION = "hgan.data 2.2"
GZIP_LEVEL = 1  # ~same size as level 4 on these mostly-background frames, ~2x faster
COMPRESSION = dict(compression="gzip", compression_opts=GZIP_LEVEL)
# Checksums on everything but a compressed chunk's own bytes (zlib's adler32 covers those):
# the v1.10 format checksums the superblock, object headers (every attribute) and B-trees,
# and fletcher32 the small uncompressed datasets. A single flipped byte of a file written
# without them read as another mass, seed or offset at 93 of 3,193 positions (every 7th
# byte of a small pendulum file); with them, at 1 of 1,920 (in a frames chunk). HDF5 >=
# 1.10.2 (2018) reads these files.
LIBVER = ("v110", "v110")


def compress_frames(frames):
    """Deflate each trajectory of uint8 [n, T, R, R, 3] into one HDF5 gzip chunk. zlib
    releases the GIL, so worker threads compress while the main thread writes."""
    return [zlib.compress(np.ascontiguousarray(f).data, GZIP_LEVEL) for f in frames]


class DataFormatError(ValueError):
    """A Toy Physics HDF5 file that cannot be used, with the reason."""


class H5Writer:
    """Pre-allocates every dataset for n trajectories and writes them in index ranges."""

    def __init__(self, path, system, n, frames, resolution, attrs):
        self.path = os.fspath(path)
        self.tmp = self.path + ".partial"
        self.made = missing_folders(self.path)  # data/<system>: an abort leaves none behind
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.f = h5py.File(self.tmp, "w", libver=LIBVER)
        f = self.f
        r = resolution
        f.create_dataset("frames", (n, frames, r, r, 3), np.uint8,
                         chunks=(1, frames, r, r, 3), **COMPRESSION)
        f.create_dataset("states", (n, frames, 2 * system.dof), np.float32,
                         chunks=(1, frames, 2 * system.dof), **COMPRESSION)
        f.create_dataset("color_index", (n, system.n_bodies), np.int32, fletcher32=True)
        f.create_dataset("offset", (n, 2), np.float64, fletcher32=True)
        g = f.create_group("params")
        for name in system.param_names:
            g.create_dataset(name, (n,) + system.param_shape(name), np.float64, fletcher32=True)
        _set_attrs(f, dict(
            format_version=FORMAT_VERSION, generator_version=GENERATOR_VERSION,
            system=system.name, frames=frames, resolution=r, n_trajectories=n, dof=system.dof,
            n_bodies=system.n_bodies, num_colors=system.num_colors, friction=system.friction,
            canvas_min=system.full_canvas[0], canvas_max=system.full_canvas[1],
            recipe=system.recipe, complete=False))
        _set_attrs(f, attrs)

    def write(self, start, *, frames, states, color_index, offset, params):
        """frames: uint8 [n, T, R, R, 3], or the list compress_frames made of them."""
        stop = start + len(frames)
        if isinstance(frames, list):
            ds = self.f["frames"]
            for i, chunk in enumerate(frames):
                ds.id.write_direct_chunk((start + i, 0, 0, 0, 0), chunk)
        else:
            self.f["frames"][start:stop] = frames
        self.f["states"][start:stop] = states.astype(np.float32)
        self.f["color_index"][start:stop] = color_index
        self.f["offset"][start:stop] = offset
        for name, v in params.items():
            self.f["params"][name][start:stop] = v

    def close(self, **final_attrs):
        _set_attrs(self.f, final_attrs)
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
        remove_empty(self.made)


def missing_folders(path):
    """The folders above `path` that do not exist yet, innermost first."""
    made = []
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    return made


def remove_empty(folders):
    """Remove `folders` (missing_folders' list, innermost first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:      # holds something (or went already): it and those above stay
            break


def _set_attrs(f, attrs):
    # Text as fixed-length bytes, stored inside the attribute: h5py's default variable-length
    # string points into a heap, and one damaged byte of that pointer crashes the HDF5 library
    # (a segmentation fault) or loops it when the file is opened, past any error handling.
    f.attrs.update({k: np.bytes_(v.encode()) if isinstance(v, str) else v
                    for k, v in attrs.items()})


class ToyPhysicsFile:
    """Validated read-only view: .frames/.states (h5py datasets), .params (name -> [N] or
    [N, n_bodies] as system.param_shape says, whatever the file's version), .attrs."""

    def __init__(self, path):
        from hgan.data.systems import get_system
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise DataFormatError(f"{self.path}: file does not exist")
        if os.path.isdir(self.path):
            raise DataFormatError(_directory_message(self.path))
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataFormatError(f"{self.path}: truncated or corrupt HDF5 file ({e})") from None
        try:
            f = self._f
            self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
            version = self.attrs.get("format_version")
            if version is None:
                raise DataFormatError(f"{self.path}: an HDF5 file but not a Toy Physics data "
                                      f"file of this project (it has no 'format_version' "
                                      f"attribute); make one with `python -m hgan.data "
                                      f"generate` or `import-dm`")
            if version not in READABLE_VERSIONS:
                raise DataFormatError(f"{self.path}: unknown format version {version!r} "
                                      f"(this reader understands "
                                      f"{', '.join(map(str, READABLE_VERSIONS))})")
            self.format_version = version
            if not self.attrs.get("complete", False):
                raise DataFormatError(f"{self.path}: incomplete file (generation was "
                                      "interrupted); generate it again")
            try:
                system = get_system(self.attrs.get("system"))
            except ValueError as e:
                raise DataFormatError(f"{self.path}: {e}") from None
            names = ["frames", "states", "color_index", "offset"]
            names += ["params/" + p for p in system.param_names]
            for name in names:
                if name not in f:
                    raise DataFormatError(f"{self.path}: missing dataset {name!r}")
            for key in ("n_trajectories", "frames", "resolution"):
                if key not in self.attrs:  # not a shape of -1 that no dataset has
                    raise DataFormatError(f"{self.path}: missing attribute {key!r}")
            n, t, r = (int(self.attrs[k]) for k in ("n_trajectories", "frames", "resolution"))
            expect = {"frames": (n, t, r, r, 3), "states": (n, t, 2 * system.dof),
                      "color_index": (n, system.n_bodies), "offset": (n, 2)}
            expect.update({"params/" + p: (n,) + (system.param_shape(p) if version >= 2 else ())
                           for p in system.param_names})
            for name, shape in expect.items():
                if f[name].shape != shape:
                    raise DataFormatError(f"{self.path}: dataset {name!r} has shape "
                                          f"{f[name].shape}, expected {shape} from the attributes")
            if f["frames"].dtype != np.uint8:
                raise DataFormatError(f"{self.path}: frames must be uint8, got {f['frames'].dtype}")
            if f["states"].dtype.kind != "f":  # integer positions: rounded, not a trajectory
                raise DataFormatError(f"{self.path}: states must be floating point, got "
                                      f"{f['states'].dtype}")
            self.frames = _Checked(f["frames"], self.path, "frames")
            self.states = _Checked(f["states"], self.path, "states")
            self.color_index, self.offset = f["color_index"][()], f["offset"][()]
            self.params = {p: _per_body(system, p, f["params/" + p][()])
                           for p in system.param_names}
            self._check_values(system)
            self._probe(n)
        except DataFormatError:
            self._f.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            # Damaged metadata inside a file whose superblock opens: h5py raises these from
            # the attribute, link and object-header reads above (found by overwriting bytes
            # of a valid file at every offset, and by flipping single bits in its first 10 kB;
            # tests/test_data_format.py does both): a link turned into a named datatype has
            # no .shape, a string type's damaged encoding is a TypeError. Not every damage
            # raises in files written before fixed-length text attributes (_set_attrs): a
            # variable-length string's heap pointer can crash or loop the HDF5 library.
            self._f.close()
            raise DataFormatError(f"{self.path}: corrupt HDF5 file ({e})") from None
        self.system = system

    def _check_values(self, system):
        """In files written before hgan.data 2.2 the small datasets and attributes carry no
        checksum: a damaged byte there reads as another value (a mass of -1e98, a dof of
        2**58). What contradicts the system, or physics, is refused rather than simulated or
        trained on."""
        for key in ("dof", "n_bodies", "num_colors", "friction"):
            have, want = self.attrs.get(key), getattr(system, key)
            if have is not None and have != want:
                raise DataFormatError(f"{self.path}: attribute {key} is {have!r}, but "
                                      f"{system.name} has {want!r}")
        dt = self.attrs.get("dt")
        if dt is not None and not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
            raise DataFormatError(f"{self.path}: attribute dt is {dt!r}, not a positive time step")
        for name, v in self.params.items():
            if not (np.isfinite(v).all() and (v > 0).all()):
                bad = float(v[~(np.isfinite(v) & (v > 0))].ravel()[0])
                raise DataFormatError(f"{self.path}: parameter {name!r} holds {bad!r} (every "
                                      f"physical parameter is positive and finite)")
        ci = self.color_index
        if ci.size and (ci.min() < 0 or ci.max() >= system.num_colors):
            raise DataFormatError(f"{self.path}: color_index holds {int(ci.max())} or "
                                  f"{int(ci.min())}, outside the {system.num_colors} colours")
        if not np.isfinite(self.offset).all():
            raise DataFormatError(f"{self.path}: offset holds a non-finite value")

    def _probe(self, n):
        # A file cut short keeps a readable header; its last chunks fail to decompress.
        try:
            for i in {0, n - 1} if n else ():
                self.frames[i, :1]
                self.frames[i, -1:]
                if not np.isfinite(self.states[i]).all():
                    raise DataFormatError(f"{self.path}: states of trajectory {i} hold a "
                                          f"non-finite value")
        except DataFormatError:  # _Checked's, naming the file already
            raise
        except (OSError, RuntimeError, ValueError) as e:
            raise DataFormatError(f"{self.path}: truncated or corrupt data ({e})") from None

    def __len__(self):
        return self.frames.shape[0]

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Checked:
    """An h5py dataset whose reads name the file and say it is corrupt when a chunk cannot be
    decoded: a header can be intact around changed chunk bytes (ToyPhysicsFile._probe reads
    only each trajectory's ends), and h5py's own error names neither file nor dataset."""

    def __init__(self, ds, path, name):
        self._ds, self._path, self._name = ds, path, name
        self.shape, self.dtype = ds.shape, ds.dtype

    def __len__(self):
        return len(self._ds)

    def __getitem__(self, key):
        try:
            return self._ds[key]
        except (OSError, RuntimeError) as e:
            first = key[0] if isinstance(key, tuple) and key else key
            bad = first if isinstance(first, (int, np.integer)) else self._first_bad(first)
            where = f", trajectory {int(bad)}" if bad is not None else ""
            raise DataFormatError(f"{self._path}: truncated or corrupt data (dataset "
                                  f"{self._name!r}{where}: {e})") from None

    def _first_bad(self, rows):
        """The first trajectory of a failed read of several (a slice, or all: `()`, `...`)
        whose chunk cannot be read, found one trajectory at a time; None if none fails
        alone. Only on the error path."""
        if isinstance(rows, slice):
            indices = range(*rows.indices(len(self._ds)))
        elif rows is Ellipsis or (isinstance(rows, tuple) and not rows):
            indices = range(len(self._ds))
        else:
            return None
        for i in indices:
            try:
                self._ds[i]
            except (OSError, RuntimeError):
                return i
        return None

    def __array__(self, dtype=None, copy=None):
        a = self[()]
        return a if dtype is None else a.astype(dtype)

    def __getattr__(self, name):  # the rest of h5py.Dataset (chunks, ...), unchecked
        return getattr(self._ds, name)


def _directory_message(path, shown=3):
    """What to say when a directory is given for a file, with the data files it holds."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        names = []
    found = [os.path.join(path, d, f) for d in names for f in ("train.h5", "test.h5")
             if os.path.isfile(os.path.join(path, d, f))]
    found += [os.path.join(path, f) for f in names if f.endswith(".h5")]
    if not found:
        return f"{path}: is a directory, not an HDF5 file"
    more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
    return (f"{path}: is a directory, not an HDF5 file; did you mean "
            f"{' or '.join(found[:shown])}{more}?")


def _per_body(system, name, v):
    """A version-1 [N] value of a per-body parameter, repeated over the bodies."""
    shape = system.param_shape(name)
    if shape and v.ndim == 1:
        return np.repeat(v[:, None], shape[0], axis=1)
    return v


def error_line(e: BaseException) -> str:
    """The message of a DataFormatError, also of one a DataLoader worker raised: torch re-raises
    that as "Caught DataFormatError in DataLoader worker ...", then the worker's traceback,
    ending in the original error's line."""
    text = str(e).strip()
    if "\n" not in text:
        return text
    return text.splitlines()[-1].split("DataFormatError: ", 1)[-1]


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def open_h5(path):
    """Open and validate a Toy Physics HDF5 file; DataFormatError says what is wrong."""
    return ToyPhysicsFile(path)
