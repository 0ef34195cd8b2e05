"""Experiments: the paper's Table 1 as one resumable command.

    python -m hgan.experiments table1 [--systems ...] [--models hgan,hnn_gan,mocogan]
        [--seeds 0] [--iters N] [--parallel K] --out DIR
    python -m hgan.experiments export DIR --to docs/results/table1

``grid`` lays out the runs and reads their state, ``datasets`` generates the data,
``runner`` runs the jobs K at a time, ``table`` and ``report`` write compare.md.
"""
