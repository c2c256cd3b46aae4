"""A universal PDE: a pointwise network plus a learned stencil, ``u_t = NN(u) + D conv(u)``."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._grid import Grid


class UniversalPDE(eqx.Module):
    """``du/dt = reaction(u) + diffusion * stencil(u)`` on a grid (method of lines).

    ``reaction`` acts pointwise (the same function at every node: a network mapping one
    value to one value, e.g. ``nn.MLP(1, 1, ...)``); ``stencil`` is a
    :class:`LearnableStencil` (or any ``stencil(u, grid)``) and ``diffusion`` a trainable
    scalar. Only the product ``diffusion * stencil.weights`` enters the equation; with a
    3-point stencil, the diffusion coefficient it represents is
    :attr:`effective_diffusion`. The module is the parameter pytree: use it as the model
    of the :mod:`bayes_ude.ude` losses (``model(t, u)``) or in
    ``solvers.solve(lambda t, u, m: m(t, u), u0, ts, model)``, with an explicit or a stiff
    solver.

    Attributes
    ----------
    grid : the :class:`Grid` (static: shape, spacing, boundary).
    reaction : pointwise term, ``reaction(u_i[None]) -> (1,)``; ``None`` for none. A plain
        function (no parameters) is kept as a static field.
    stencil : the learned discrete operator, ``stencil(u, grid)`` (a plain function is
        kept fixed, e.g. ``lambda u, grid: pde.laplacian(u, grid)``).
    diffusion : scalar ``D0`` multiplying the stencil.
    """

    grid: Grid
    reaction: Callable | None
    stencil: Callable
    diffusion: Array

    def __init__(self, grid: Grid, reaction: Callable | None, stencil: Callable,
                 diffusion: ArrayLike = 1.0):
        if not isinstance(grid, Grid):
            raise ValueError(f"grid must be a bayes_ude.pde.Grid, got {type(grid).__name__}")
        if not callable(stencil):
            raise ValueError(f"stencil must be callable stencil(u, grid), got {stencil!r}")
        if reaction is not None and not callable(reaction):
            raise ValueError(f"reaction must be callable or None, got {reaction!r}")
        diffusion = jnp.asarray(diffusion, dtype=jnp.result_type(float))
        if diffusion.ndim != 0:
            raise ValueError(f"diffusion must be a scalar, got shape {diffusion.shape}")
        self.grid = grid
        self.reaction = _as_module(reaction)
        self.stencil = _as_module(stencil)
        self.diffusion = diffusion

    def __call__(self, t, u: Array, args=None) -> Array:
        del t, args
        if u.shape != self.grid.shape:
            raise ValueError(f"u must have the grid's shape {self.grid.shape}, got {u.shape}")
        return self.reaction_term(u) + self.diffusion * self.stencil(u, self.grid)

    def reaction_term(self, u: ArrayLike) -> Array:
        """The pointwise term at every value of ``u`` (any shape): what SINDy is fitted to."""
        u = jnp.asarray(u)
        if self.reaction is None:
            return jnp.zeros_like(u)
        flat = jax.vmap(lambda v: jnp.reshape(self.reaction(v[None]), ()))(jnp.ravel(u))
        return flat.reshape(u.shape)

    @property
    def effective_diffusion(self) -> Array:
        """The ``D`` of ``D u_xx`` that the learned 3-point operator stands for.

        A 3-point stencil ``[w_0, w_1, w_2]`` is ``(w_0 + w_2) / 2 [1, -2, 1]`` (a second
        difference) plus ``(w_2 - w_0) / 2 [-1, 0, 1]`` (a first difference) plus
        ``(w_0 + w_1 + w_2) [0, 1, 0]`` (a multiple of ``u``, which trades with the
        pointwise network). So ``D = diffusion * (w_0 + w_2) / 2 * dx^2``, from the side
        weights: the centre weight alone (``-diffusion * w_1 * dx^2 / 2``, the same for a
        zero-sum symmetric stencil) gave 0.015 for ``[1, -3, 1]`` at ``D = 0.01``, the
        extra ``-u`` counted as diffusion (1-D grids, 3-point stencils)."""
        weights = getattr(self.stencil, "weights", None)
        if weights is None or weights.shape != (3,) or self.grid.ndim != 1:
            raise ValueError("effective_diffusion needs a 3-point LearnableStencil on a "
                             "1-D grid")
        return self.diffusion * (weights[0] + weights[2]) / 2 * self.grid.spacing[0] ** 2


class _Fixed(eqx.Module):
    """A plain function (no parameters) as a module: static, so that ``jit`` and
    ``solvers.solve`` see no non-array leaves."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _as_module(fn):
    if fn is None or isinstance(fn, eqx.Module):
        return fn
    return _Fixed(fn)


def normalised_stencil(weights: ArrayLike) -> Array:
    """Weights divided by ``-weights[centre] / 2``: a Laplacian-like stencil becomes
    ``[1, -2, 1]`` (3 points), so two stencils can be compared up to their scale."""
    weights = jnp.asarray(weights)
    centre = weights[tuple(s // 2 for s in weights.shape)]
    return weights / (-centre / 2)
