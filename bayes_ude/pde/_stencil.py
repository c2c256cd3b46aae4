"""Finite-difference stencils as convolutions, and a learnable stencil.

A finite difference on a uniform grid is a convolution: ``u_xx ~ (u[i-1] - 2 u[i] +
u[i+1]) / dx^2`` is the kernel ``[1, -2, 1] / dx^2`` slid along the grid. Here kernels are
applied as correlations, ``out[i] = sum_j kernel[j] u[i + j - w]`` (``w`` the half-width),
after padding the grid with ghost nodes for its boundary condition
(:meth:`bayes_ude.pde.Grid.pad`). They are written as a sum of shifted slices, which XLA
fuses into one loop: for the 3- and 5-point kernels of the method of lines this is faster
than a general convolution primitive, and differentiable in both the values and the
weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._grid import Grid, _check_axis


def fd_weights(derivative: int, offsets: Sequence[float]) -> np.ndarray:
    """Finite-difference weights for ``d^derivative u / dx^derivative`` at 0 on unit spacing.

    Solves the moment conditions ``sum_j w_j o_j^m / m! = [m == derivative]`` for
    ``m = 0 .. len(offsets) - 1`` (the weights exact for polynomials of that degree; the
    same weights as Fornberg's algorithm). Divide by ``dx**derivative`` for spacing ``dx``.

    Parameters
    ----------
    derivative : order of the derivative (``0 <= derivative < len(offsets)``).
    offsets : distinct node offsets, in units of the spacing.

    Examples
    --------
    >>> fd_weights(2, [-1, 0, 1])
    array([ 1., -2.,  1.])
    """
    o = np.asarray(offsets, dtype=float)
    if o.ndim != 1 or o.size < 1 or len(set(o.tolist())) != o.size:
        raise ValueError(f"offsets must be distinct numbers, got {offsets!r}")
    if not isinstance(derivative, (int, np.integer)) or not 0 <= derivative < o.size:
        raise ValueError(f"derivative must be an integer in [0, {o.size - 1}] for "
                         f"{o.size} offsets, got {derivative!r}")
    m = np.arange(o.size)
    vander = o[None, :] ** m[:, None] / np.array([math.factorial(k) for k in m])[:, None]
    rhs = (m == derivative).astype(float)
    return np.linalg.solve(vander, rhs)


def central_stencil(derivative: int, points: int = 3) -> np.ndarray:
    """Centred ``points``-point weights of the ``derivative``-th derivative (unit spacing).

    ``central_stencil(2, 3)`` is ``[1, -2, 1]`` (second order); ``central_stencil(2, 5)``
    is ``[-1, 16, -30, 16, -1] / 12`` (fourth order); ``central_stencil(1, 3)`` is
    ``[-1/2, 0, 1/2]``.
    """
    _check_size(points, "points")
    w = points // 2
    return fd_weights(derivative, np.arange(-w, w + 1))


def convolve(u: ArrayLike, kernel: ArrayLike, grid: Grid, *, axis: int | None = None) -> Array:
    """Apply a stencil: ``out[i] = sum_j kernel[j] u[i + j - w]`` with the grid's boundary.

    Parameters
    ----------
    u : values on the grid, shape ``grid.shape``.
    kernel : odd-sized weights; 1-D along ``axis`` (default axis 0 of a 1-D grid), or of
        ``grid.ndim`` dimensions for a full 2-D stencil (e.g. a 3 x 3 kernel).
    grid : the :class:`Grid` (its boundary condition fills the ghost nodes).
    axis : the axis of a 1-D kernel on a 2-D grid.

    Returns
    -------
    Array of ``grid.shape``. Not divided by any spacing: divide by ``dx**k`` yourself, or
    use :func:`derivative` / :func:`laplacian`.
    """
    kernel = jnp.asarray(kernel)
    u = jnp.asarray(u)
    if kernel.ndim == 1 and (axis is not None or grid.ndim == 1):
        axis = 0 if axis is None else axis
        _check_axis(axis, grid.ndim)
        _check_size(kernel.shape[0], "kernel")
        w = kernel.shape[0] // 2
        padded = grid.pad(u, w, axes=(axis,))
        n = grid.shape[axis]
        out = jnp.zeros(grid.shape, jnp.result_type(u, kernel))
        for j in range(kernel.shape[0]):
            out = out + kernel[j] * jax.lax.slice_in_dim(padded, j, j + n, axis=axis)
        return out
    if kernel.ndim != grid.ndim:
        raise ValueError(f"kernel must be 1-D (with axis=... on a 2-D grid) or "
                         f"{grid.ndim}-D like the grid, got shape {kernel.shape}")
    if axis is not None:
        raise ValueError("axis is only for a 1-D kernel on a 2-D grid")
    for size in kernel.shape:
        _check_size(size, "kernel")
    widths = tuple(k // 2 for k in kernel.shape)
    padded = grid.pad(u, widths)
    out = jnp.zeros(grid.shape, jnp.result_type(u, kernel))
    for index in np.ndindex(*kernel.shape):
        window = padded[tuple(slice(i, i + n) for i, n in zip(index, grid.shape, strict=True))]
        out = out + kernel[index] * window
    return out


def derivative(u: ArrayLike, grid: Grid, order: int = 1, *, axis: int = 0,
               points: int = 3) -> Array:
    """The ``order``-th derivative along ``axis`` by a centred ``points``-point stencil."""
    weights = central_stencil(order, points)
    _check_axis(axis, grid.ndim)
    return convolve(u, weights, grid, axis=axis) / grid.spacing[axis] ** order


def laplacian(u: ArrayLike, grid: Grid, *, points: int = 3) -> Array:
    """``sum_axes d^2 u / dx_axis^2``: the 3-point (second order) or 5-point (fourth order
    in the interior) centred stencil along each axis."""
    weights = central_stencil(2, points)
    return sum(convolve(u, weights, grid, axis=a) / grid.spacing[a] ** 2
               for a in range(grid.ndim))


class LearnableStencil(eqx.Module):
    """A stencil whose weights are parameters: ``conv(u)`` of a PDE right-hand side.

    With ``zero_sum=True`` the weights used are ``raw - mean(raw)``, which sum to zero
    exactly: the stencil then annihilates constants, like every derivative stencil, and a
    pointwise network next to it cannot trade a multiple of ``u`` with the stencil's
    centre weight (the split between the two becomes identifiable).

    Attributes
    ----------
    raw : the free weights, shape ``(k,)`` or ``(kx, ky)``, every size odd (3, 5, ...).
    zero_sum : whether the weights are projected to sum to zero.

    Examples
    --------
    >>> stencil = LearnableStencil(3, zero_sum=True, key=jax.random.key(0))
    >>> du = stencil(u, grid)                    # conv(u) with the current weights
    """

    raw: Array
    zero_sum: bool = eqx.field(static=True)

    def __init__(self, size: int | Sequence[int] = 3, *, key: PRNGKeyArray | None = None,
                 init: ArrayLike | None = None, zero_sum: bool = False,
                 scale: float = 1.0):
        """Build the stencil.

        Parameters
        ----------
        size : points of the kernel: an odd int >= 3 (1-D) or a pair (2-D, e.g. ``(3, 3)``).
        key : PRNG key for random weights ``N(0, scale^2)`` (when ``init`` is not given).
        init : initial weights (of shape ``size``) instead of random ones.
        zero_sum : project the weights to sum to zero (see the class notes).
        scale : standard deviation of the random initial weights.
        """
        shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(shape) not in (1, 2):
            raise ValueError(f"size must be an odd int or a pair of odd ints, got {size!r}")
        for s in shape:
            _check_size(s, "size")
        if init is not None:
            raw = jnp.asarray(init, dtype=jnp.result_type(float))
            if raw.shape != shape:
                raise ValueError(f"init must have shape {shape} (size), got {raw.shape}")
        elif key is not None:
            if not scale > 0:
                raise ValueError(f"scale must be positive, got {scale!r}")
            raw = scale * jax.random.normal(key, shape, jnp.result_type(float))
        else:
            raise ValueError("give key (random weights) or init (initial weights)")
        self.raw = raw
        self.zero_sum = bool(zero_sum)

    @property
    def weights(self) -> Array:
        """The weights applied (``raw`` projected to zero sum when ``zero_sum``)."""
        return self.raw - jnp.mean(self.raw) if self.zero_sum else self.raw

    def __call__(self, u: ArrayLike, grid: Grid, *, axis: int | None = None) -> Array:
        """``convolve(u, self.weights, grid)`` (a 1-D stencil on a 2-D grid needs
        ``axis``; without it, it is applied along every axis and summed, as a Laplacian)."""
        weights = self.weights
        if weights.ndim == 1 and grid.ndim > 1 and axis is None:
            return sum(convolve(u, weights, grid, axis=a) for a in range(grid.ndim))
        return convolve(u, weights, grid, axis=axis)


def _check_size(size, name: str) -> None:
    if not isinstance(size, (int, np.integer)) or size < 3 or size % 2 == 0:
        raise ValueError(f"{name} must be an odd number of points >= 3 (3-point, 5-point, "
                         f"...), got {size!r}")
