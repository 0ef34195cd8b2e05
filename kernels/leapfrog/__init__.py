"""The leapfrog integrator: reference (autograd), analytic (hand-written VJP, plain torch) and
fused (Triton) backends behind one dispatcher, ``dispatch.leapfrog``."""
