"""Evaluation: canonical FVD (``fvd``), physics-probe metrics (``probe``), the learned
structure of the motion module (``structure``), appearance consistency (``appearance``), the
paper's figures (``figures``), reports (``report``) and the command line
``python -m hgan.evaluate`` (``cli``, its input checks in ``inputs``).

Submodules are imported on use, so ``import hgan.evaluate`` stays light.
"""
__all__ = ["appearance", "cli", "figures", "fvd", "inputs", "probe", "report", "structure"]
