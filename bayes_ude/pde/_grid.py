"""Uniform 1-D and 2-D grids for the method of lines, and their boundary padding.

Conventions (node-centred grids, spacing ``dx`` along each axis):

* ``"periodic"``: ``n`` nodes ``origin + i dx``, ``i = 0..n-1``; node ``n`` is node ``0``
  again (period ``n dx``).
* ``"neumann"``: zero flux. The nodes ``origin + i dx``, ``i = 0..n-1``, include both
  boundary nodes; ghost values mirror the interior (``u[-k] = u[k]``), which makes the
  centred first difference vanish at the boundary.
* ``"dirichlet"``: the boundary value ``value`` is known at ``origin`` and at
  ``origin + (n + 1) dx``; the ``n`` unknowns are the interior nodes ``origin + i dx``,
  ``i = 1..n``. The first ghost node is the boundary itself (exactly ``value``); further
  ghost nodes (stencils wider than 3 points) are extrapolated by the polynomial through the
  boundary value and the nearest interior nodes (degree ``2 w - 1`` for a half-width
  ``w``), so that the ghost error ``O(dx^{2w})`` divided by ``dx^2`` keeps a second
  derivative second-order accurate next to the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

BOUNDARIES = ("periodic", "neumann", "dirichlet")


class Grid(eqx.Module):
    """A uniform 1-D or 2-D grid with one boundary condition on every side.

    Attributes
    ----------
    shape : number of unknowns along each axis, ``(n,)`` or ``(nx, ny)``.
    spacing : node spacing along each axis, ``(dx,)`` or ``(dx, dy)``.
    boundary : ``"periodic"``, ``"neumann"`` (zero flux) or ``"dirichlet"``; see the module
        notes for where the nodes lie in each case.
    origin : coordinate of node 0 (periodic, Neumann) or of the left boundary (Dirichlet).
    value : the boundary value for ``"dirichlet"`` (the same on every side).

    Examples
    --------
    The Fisher--KPP grid: 26 periodic nodes ``0, 0.04, ..., 1.0``:

    >>> grid = Grid(26, 0.04, "periodic")
    >>> grid.x.shape
    (26,)
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    spacing: tuple[float, ...] = eqx.field(static=True)
    boundary: str = eqx.field(static=True)
    origin: tuple[float, ...] = eqx.field(static=True)
    value: float = eqx.field(static=True)

    def __init__(self, shape: int | Sequence[int], spacing: float | Sequence[float],
                 boundary: str = "periodic", *, origin: float | Sequence[float] = 0.0,
                 value: float = 0.0):
        """Build the grid.

        Parameters
        ----------
        shape : unknowns per axis (an int for 1-D); at least 3 per axis (the smallest grid
            a 3-point stencil fits on).
        spacing : positive node spacing, one number (used on every axis) or one per axis.
        boundary : one of :data:`BOUNDARIES`.
        origin : see the attributes; one number or one per axis.
        value : the Dirichlet boundary value.

        Raises
        ------
        ValueError
            Naming the argument: a shape that is not 1-D or 2-D or has fewer than 3 nodes
            on an axis, a non-positive spacing, an unknown boundary.
        """
        shape_t = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if len(shape_t) not in (1, 2):
            raise ValueError(f"shape must describe a 1-D or 2-D grid, got {shape!r}")
        if any(not isinstance(s, (int, np.integer)) or s < 3 for s in shape_t):
            raise ValueError(f"shape must have at least 3 nodes per axis (a 3-point stencil "
                             f"needs them), got {shape!r}")
        spacing_t = _per_axis(spacing, len(shape_t), "spacing")
        if any(not np.isfinite(h) or h <= 0 for h in spacing_t):
            raise ValueError(f"spacing must be positive, got {spacing!r}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        self.shape = tuple(int(s) for s in shape_t)
        self.spacing = spacing_t
        self.boundary = boundary
        self.origin = _per_axis(origin, len(shape_t), "origin")
        self.value = float(value)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coordinates(self, axis: int = 0) -> np.ndarray:
        """Node coordinates of the unknowns along ``axis``."""
        _check_axis(axis, self.ndim)
        first = 1 if self.boundary == "dirichlet" else 0
        i = np.arange(first, first + self.shape[axis])
        return self.origin[axis] + i * self.spacing[axis]

    @property
    def x(self) -> np.ndarray:
        """Coordinates along the first axis."""
        return self.coordinates(0)

    @property
    def y(self) -> np.ndarray:
        """Coordinates along the second axis (2-D grids)."""
        if self.ndim < 2:
            raise ValueError("a 1-D grid has no y coordinates")
        return self.coordinates(1)

    def mesh(self) -> tuple[np.ndarray, ...]:
        """Coordinate arrays of the grid's shape (``indexing="ij"``)."""
        return tuple(np.meshgrid(*(self.coordinates(a) for a in range(self.ndim)),
                                 indexing="ij"))

    def pad(self, u: Array, width: int | Sequence[int], axes: Sequence[int] | None = None
            ) -> Array:
        """``u`` with ``width`` ghost nodes on both sides of each axis in ``axes``.

        Parameters
        ----------
        u : values on the grid, shape :attr:`shape`.
        width : ghost nodes per side (the half-width of a stencil); one per axis padded.
        axes : axes to pad (default all).
        """
        u = jnp.asarray(u)
        if u.shape != self.shape:
            raise ValueError(f"u must have the grid's shape {self.shape}, got {u.shape}")
        axes = tuple(range(self.ndim)) if axes is None else tuple(axes)
        widths = (width,) * len(axes) if isinstance(width, (int, np.integer)) else tuple(width)
        if len(widths) != len(axes):
            raise ValueError(f"width must give one width per padded axis {axes}, got {width!r}")
        for axis, w in zip(axes, widths, strict=True):
            _check_axis(axis, self.ndim)
            u = self._pad_axis(u, int(w), axis)
        return u

    def _pad_axis(self, u: Array, w: int, axis: int) -> Array:
        if w < 0:
            raise ValueError(f"width must be >= 0, got {w}")
        if w == 0:
            return u
        n = u.shape[axis]
        need = {"periodic": w, "neumann": w + 1, "dirichlet": max(2 * w - 1, 1)}[self.boundary]
        if n < need:
            raise ValueError(
                f"grid too small: {n} nodes along axis {axis} cannot take {w} ghost nodes "
                f"per side with {self.boundary} boundaries (need at least {need}); enlarge "
                f"shape or use a narrower stencil")
        if self.boundary == "periodic":
            return _pad_with(u, jnp.take(u, jnp.arange(n - w, n), axis),
                             jnp.take(u, jnp.arange(w), axis), axis)
        if self.boundary == "neumann":
            # Mirror image about the boundary node: u[-k] = u[k], k = 1..w.
            left = jnp.take(u, jnp.arange(w, 0, -1), axis)
            right = jnp.take(u, jnp.arange(n - 2, n - 2 - w, -1), axis)
            return _pad_with(u, left, right, axis)
        # Dirichlet: ghost k (k = 1..w, k = 1 the boundary) from the polynomial through the
        # boundary value (position -1) and interior nodes 0..2w-2 (positions 0..2w-2).
        weights = _extrapolation_weights(w)  # (w, 2w): rows ghost k, columns [g, u_0...]
        m = weights.shape[1] - 1
        inner_left = jnp.take(u, jnp.arange(m), axis)
        inner_right = jnp.take(u, jnp.arange(n - 1, n - 1 - m, -1), axis)

        def ghosts(inner):
            # weights[:, 0] multiplies the boundary value, the rest the interior nodes.
            inner = jnp.moveaxis(inner, axis, 0)
            g = (weights[:, 0].reshape((w,) + (1,) * (inner.ndim - 1)) * self.value
                 + jnp.tensordot(weights[:, 1:], inner, axes=1))
            return jnp.moveaxis(g, 0, axis)

        left = jnp.flip(ghosts(inner_left), axis)   # farthest ghost first
        right = ghosts(inner_right)
        return _pad_with(u, left, right, axis)


def _pad_with(u, left, right, axis):
    return jnp.concatenate([left, u, right], axis=axis)


def _extrapolation_weights(w: int) -> np.ndarray:
    """Lagrange weights: ghost ``k`` (position ``-k``, ``k = 1..w``) from the values at
    positions ``-1, 0, 1, ..., 2w - 2`` (boundary first). Row ``k - 1`` of the result."""
    if w == 1:
        return np.ones((1, 1))
    nodes = np.arange(-1, 2 * w - 1, dtype=float)
    out = np.zeros((w, nodes.size))
    for k in range(1, w + 1):
        target = -float(k)
        for j, xj in enumerate(nodes):
            others = np.delete(nodes, j)
            out[k - 1, j] = np.prod((target - others) / (xj - others))
    return out


def _per_axis(value, ndim: int, name: str) -> tuple[float, ...]:
    if np.ndim(value) == 0:
        return (float(value),) * ndim
    out = tuple(float(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} must be one number or one per axis ({ndim}), got {value!r}")
    return out


def _check_axis(axis, ndim: int) -> None:
    if not isinstance(axis, (int, np.integer)) or not 0 <= axis < ndim:
        raise ValueError(f"axis must be an integer in [0, {ndim - 1}], got {axis!r}")
