"""Toy Physics data: systems, ground-truth simulation, renderer, HDF5 files, windows."""
from hgan.data.generate import generate_dataset
from hgan.data.h5io import DataFormatError, open_h5
from hgan.data.interrupt import GenerationInterrupted
from hgan.data.systems import SYSTEMS, get_system
from hgan.data.windows import window_plan

__all__ = ["SYSTEMS", "get_system", "generate_dataset", "open_h5", "DataFormatError",
           "window_plan", "GenerationInterrupted"]
