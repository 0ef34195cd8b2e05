"""The leapfrog integrator: reference (autograd), analytic (hand-written VJP, plain torch) and
fused (Triton) backends behind one dispatcher, ``dispatch.leapfrog``."""
import sys
import types


class _Package(types.ModuleType):
    """This package, whose every submodule is also bound on the function of the same name.

    hgan.kernels exports the *function* `leapfrog`, which hides this package from attribute
    lookup: `import hgan.kernels.leapfrog.analytic as A` (resolved attribute by attribute)
    failed with "cannot import name 'analytic' from 'leapfrog' (unknown location)". The import
    system binds each submodule it loads on this package; the binding is repeated on the
    function, once hgan.kernels has it."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if isinstance(value, types.ModuleType):
            fn = getattr(sys.modules.get(self.__name__.rpartition(".")[0]), "leapfrog", None)
            if isinstance(fn, types.FunctionType):
                setattr(fn, name, value)


sys.modules[__name__].__class__ = _Package
