"""bayes_ude: Bayesian universal differential equations and NLME population models in JAX."""

__version__ = "0.1.0"

import importlib

from . import _precision, _xla

_xla.apply()  # before any submodule can start the JAX backend
_precision.apply()  # float64 for the whole process; opt out with BAYES_UDE_X64=0

# Submodules load on first use (``bayes_ude.pde``, ``from bayes_ude import nlme``): a
# population-PK script then does not pay for importing the PDE, UDE and SINDy code.
_SUBMODULES = ("crnn", "datasets", "discovery", "examples", "inference", "nlme", "nn", "pde",
               "solvers", "surrogates", "ude")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES])
