"""Hamiltonian GAN: video generation of physical systems with a Hamiltonian motion model.

The package reads as the path of the data: ``hgan.data`` (Toy Physics generation and
loading) -> ``hgan.models`` (generator, discriminators, motion modules) -> ``hgan.kernels``
(the leapfrog integrator, also usable on its own) -> ``hgan.train`` -> ``hgan.evaluate``.
"""
import importlib.util as _ilu
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _map_kernels_from_source_tree():
    # pyproject maps the top-level kernels/ folder to hgan.kernels for installed copies.
    # A bare source checkout (PYTHONPATH=.) has no such mapping, so make it here.
    if "hgan.kernels" in _sys.modules or _ilu.find_spec("hgan.kernels") is not None:
        return
    root = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    init = _os.path.join(root, "__init__.py")
    if not _os.path.exists(init):
        return
    spec = _ilu.spec_from_file_location("hgan.kernels", init, submodule_search_locations=[root])
    module = _ilu.module_from_spec(spec)
    _sys.modules["hgan.kernels"] = module
    spec.loader.exec_module(module)


_map_kernels_from_source_tree()
