"""Equation discovery: sparse regression (SINDy) that turns a learned term into an equation.

A candidate library ``Theta(X)`` (polynomials, user functions, their sums and products)
and sequentially thresholded least squares (STLSQ) in pure JAX with fixed shapes, so one
fit, a sweep over thresholds with AICc/BIC, or thousands of posterior draws at once are
each one compiled computation.
"""

from ._library import AbstractLibrary as AbstractLibrary
from ._library import ConcatLibrary as ConcatLibrary
from ._library import FunctionLibrary as FunctionLibrary
from ._library import PolynomialLibrary as PolynomialLibrary
from ._library import TensorLibrary as TensorLibrary
from ._library import default_feature_names as default_feature_names
from ._sindy import BatchedSweep as BatchedSweep
from ._sindy import SINDyResult as SINDyResult
from ._sindy import SweepResult as SweepResult
from ._sindy import sindy as sindy
from ._sindy import stlsq as stlsq
from ._sindy import stlsq_batched as stlsq_batched
from ._sindy import sweep as sweep
from ._sindy import sweep_batched as sweep_batched

__all__ = [
    "AbstractLibrary",
    "BatchedSweep",
    "ConcatLibrary",
    "FunctionLibrary",
    "PolynomialLibrary",
    "SINDyResult",
    "SweepResult",
    "TensorLibrary",
    "default_feature_names",
    "sindy",
    "stlsq",
    "stlsq_batched",
    "sweep",
    "sweep_batched",
]
