"""Universal PDEs and DAEs: method-of-lines grids, stencils as convolutions, learned stencils,
and single shooting for mass-matrix (DAE) models.

* Grids: :class:`Grid` (1-D or 2-D; periodic, Neumann or Dirichlet boundaries) and its
  ghost-node padding.
* Stencils: :func:`fd_weights`, :func:`central_stencil`, :func:`convolve`,
  :func:`derivative`, :func:`laplacian`; :class:`LearnableStencil` (weights as parameters,
  optionally summing to zero).
* Models: :class:`UniversalPDE` -- ``u_t = NN(u) + D0 conv(u)``, a vector field for
  :func:`bayes_ude.solvers.solve` and the :mod:`bayes_ude.ude` losses.
* DAEs: :class:`MassMatrixShooting` -- the single-shooting loss of ``M u' = f(t, u)`` with a
  singular mass matrix (algebraic constraints kept exactly by the Rosenbrock solvers),
  per-species scaling and a start time before the first observation.
"""

from ._dae import MassMatrixShooting as MassMatrixShooting
from ._grid import BOUNDARIES as BOUNDARIES
from ._grid import Grid as Grid
from ._model import UniversalPDE as UniversalPDE
from ._model import normalised_stencil as normalised_stencil
from ._stencil import LearnableStencil as LearnableStencil
from ._stencil import central_stencil as central_stencil
from ._stencil import convolve as convolve
from ._stencil import derivative as derivative
from ._stencil import fd_weights as fd_weights
from ._stencil import laplacian as laplacian

__all__ = [
    "BOUNDARIES",
    "Grid",
    "LearnableStencil",
    "MassMatrixShooting",
    "UniversalPDE",
    "central_stencil",
    "convolve",
    "derivative",
    "fd_weights",
    "laplacian",
    "normalised_stencil",
]
