"""NVIDIA DALI batch stream (optional extra: `pip install -e ".[dali]"`).

The HDF5 file holds raw uint8 frames, so there is nothing for DALI to decode: its job is
reading windows in parallel worker processes (`fn.external_source(parallel=True)`, each
worker with its own h5 handle), moving uint8 to the GPU (4x fewer bytes than float32) and
doing the cast, the scaling to [-1, 1] and the FHWC -> FCHW layout change there. Without
CUDA the same pipeline runs on CPU operators (`device_id=None`), which is how CI checks that
it yields exactly the torch stream's batches.

The source never ends an epoch: sample k of the stream is global sample
start_batch * B + k, mapped to a window by the shared `WindowSchedule`, so epochs, shards and
resumption behave exactly as in the torch stream.
"""

import torch

from hgan.data.h5io import DataFormatError
from hgan.data.stream import SCALE, BatchStream, WindowReader, WindowSchedule
from hgan.data.workers import WorkerInit

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    _IMPORT_ERROR = None
except ImportError as err:  # DALI is an optional extra
    _IMPORT_ERROR = err


def available() -> bool:
    return _IMPORT_ERROR is None


class _SampleSource:
    """Per-sample callback for external_source; picklable so spawned workers get a copy."""

    def __init__(self, schedule: WindowSchedule, first_sample: int):
        self.reader = WindowReader(schedule)
        self.first_sample = first_sample
        self.worker_init = WorkerInit()

    def __call__(self, info):
        self.worker_init.once()  # workers ignore stop signals: see hgan.data.workers
        # idx_in_epoch keeps counting because the source never raises StopIteration.
        return self.reader(self.first_sample + info.idx_in_epoch)


# How a DataFormatError raised in a worker process ends DALI's traceback text.
_WORKER_ERROR = f"{DataFormatError.__module__}.{DataFormatError.__qualname__}: "


def _reraise_worker_error(err: Exception):
    """DALI re-raises a parallel source's exception as a plain Exception holding the worker's
    traceback; give a file problem back its type and its own message, as torch does."""
    text = str(err)
    if not isinstance(err, DataFormatError) and _WORKER_ERROR in text:
        raise DataFormatError(text.rsplit(_WORKER_ERROR, 1)[1].strip()) from err
    raise err


def _build_pipeline(source, *, batch_size, gpu, device_id, num_workers, prefetch, transpose):
    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=device_id,
                  py_num_workers=max(num_workers, 1),
                  # fork is cheap but unsafe once CUDA is initialised in this process.
                  py_start_method="spawn" if torch.cuda.is_initialized() else "fork",
                  prefetch_queue_depth=prefetch, exec_dynamic=True)
    def pipe():
        u8 = fn.external_source(source=source, batch=False, parallel=num_workers > 0,
                                dtype=types.UINT8, ndim=4, layout="FHWC")
        if gpu:
            u8 = u8.gpu()
        x = fn.cast(u8, dtype=types.FLOAT)
        # Same arithmetic as hgan.data.loader.to_unit_range, so both agree bit for bit.
        x = (x - types.Constant(127.5, dtype=types.FLOAT)) * types.Constant(SCALE,
                                                                             dtype=types.FLOAT)
        # channels-last training wants FHWC memory: then the layout change is a torch view.
        return fn.transpose(x, perm=[0, 3, 1, 2], output_layout="FCHW") if transpose else x

    return pipe()


class DaliBatchStream(BatchStream):
    """Endless float32 [B, T, 3, H, W] batches in [-1, 1] from a DALI pipeline."""

    kind = "dali"

    def __init__(self, schedule, *, device="cpu", num_workers=2, start_batch=0, prefetch=2,
                 channels_last=False):
        if not available():
            # a ValueError: train.py reports it as bad input, in one line (exit 2)
            raise ValueError(f"loader kind 'dali' (--loader dali) needs NVIDIA DALI, the dali "
                             f"extra: pip install -e '.[dali]' ({_IMPORT_ERROR})")
        super().__init__(schedule, device, start_batch, channels_last)
        self.num_workers = num_workers
        self.prefetch = prefetch
        self._pipe = None

    def _start(self):
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None
                     else torch.cuda.current_device()) if gpu else None
        source = _SampleSource(self.schedule, self.position * self.batch_size)
        self._pipe = _build_pipeline(source, batch_size=self.batch_size, gpu=gpu,
                                     device_id=device_id, num_workers=self.num_workers,
                                     prefetch=self.prefetch, transpose=not self.channels_last)
        if self.num_workers > 0:
            # Workers must start before the pipeline builds (and before CUDA use with fork).
            self._pipe.start_py_workers()
        self._pipe.build()
        return DALIGenericIterator(self._pipe, ["frames"], size=-1)

    def _batches(self):
        try:
            it = self._start()
            for out in it:
                self.position += 1
                # The iterator reuses its output buffers ring-wise: hand out a private copy.
                x = out[0]["frames"].to(self.device, non_blocking=True).clone()
                yield x.permute(0, 1, 4, 2, 3) if self.channels_last else x
        except Exception as err:  # e.g. the file was replaced or damaged while in use
            _reraise_worker_error(err)

    def _end(self):
        super()._end()      # the iterator first: it holds the pipeline too
        self._pipe = None


__all__ = ["available", "DaliBatchStream"]
