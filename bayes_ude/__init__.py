"""bayes_ude: Bayesian universal differential equations and NLME population models in JAX."""

__version__ = "0.1.0"

from . import datasets as datasets
from . import solvers as solvers

__all__ = ["datasets", "solvers", "__version__"]
