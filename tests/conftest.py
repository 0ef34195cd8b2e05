import os

import torch

# CI has no GPU: run the Triton kernels through the interpreter on CPU tensors. This must be
# set before triton.jit decorates anything, hence here, before any test module imports hgan.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
