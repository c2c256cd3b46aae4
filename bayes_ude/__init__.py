"""bayes_ude: Bayesian universal differential equations and NLME population models in JAX."""

__version__ = "0.1.0"

from . import datasets as datasets
from . import discovery as discovery
from . import nn as nn
from . import pde as pde
from . import solvers as solvers
from . import ude as ude

__all__ = ["datasets", "discovery", "nn", "pde", "solvers", "ude", "__version__"]
