"""Evaluation: canonical FVD (``fvd``), physics-probe metrics (``probe``), the learned
structure of the motion module (``structure``), the paper's figures (``figures``), reports
(``report``) and the command line ``python -m hgan.evaluate`` (``cli``).

Submodules are imported on use, so ``import hgan.evaluate`` stays light.
"""
__all__ = ["cli", "figures", "fvd", "probe", "report", "structure"]
