"""Hamiltonian GAN: video generation of physical systems with a Hamiltonian motion model.

The package reads as the path of the data: ``hgan.data`` (Toy Physics generation and
loading) -> ``hgan.models`` (generator, discriminators, motion modules; the ``--model`` kinds
in ``hgan.model_kinds``) -> ``hgan.kernels`` (the leapfrog integrator, also usable on its own)
-> ``hgan.train`` -> ``hgan.evaluate``.
"""
import importlib.util as _ilu
import os as _os
import sys as _sys

from hgan import _startup

__version__ = "0.1.0"
_startup.defer()   # before anything imports torch; only when an hgan command is starting


def _map_kernels_from_source_tree():
    # pyproject maps the top-level kernels/ folder to hgan.kernels for installed copies.
    # A source checkout (PYTHONPATH=., the marker: hgan's pyproject.toml beside hgan/) maps its own
    # kernels/ here, also when an editable install of another checkout would map that one's:
    # hgan from this tree with kernels from another would test the wrong kernels silently.
    if "hgan.kernels" in _sys.modules:
        return
    top = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    root = _os.path.join(top, "kernels")
    init = _os.path.join(root, "__init__.py")
    if not (_os.path.exists(init) and _os.path.isdir(_os.path.join(root, "leapfrog"))
            and _names_hgan(_os.path.join(top, "pyproject.toml"))):
        return  # an installed copy: its own mapping (or a real hgan/kernels) stands
    spec = _ilu.spec_from_file_location("hgan.kernels", init, submodule_search_locations=[root])
    module = _ilu.module_from_spec(spec)
    _sys.modules["hgan.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module  # `import hgan.kernels; hgan.kernels.X`, as an import would



def _names_hgan(pyproject):
    # This project's pyproject.toml, not a stray one another package left in site-packages.
    try:
        with open(pyproject) as f:
            return any(line.replace(" ", "").strip() == 'name="hgan"' for line in f)
    except OSError:
        return False


_map_kernels_from_source_tree()
