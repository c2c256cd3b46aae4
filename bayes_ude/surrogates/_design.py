"""Parameter boxes and space-filling designs: where a surrogate is trained and valid.

A surrogate is trained on a box ``lower <= p <= upper`` of a parameter vector. Inside it,
parameters are mapped to the unit cube -- on a log scale by default, since rate constants
vary over orders of magnitude and trajectories depend smoothly on ``log k`` -- and all
interpolation happens in unit-cube coordinates, so every parameter counts alike whatever
its units. Designs (Sobol, Latin hypercube, uniform) are drawn with scipy on the host: a
design is a few hundred points, drawn once.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float
from scipy.stats import qmc

DESIGNS = ("sobol", "lhs", "uniform")

#: A point may lie this far outside the unit cube (in unit-cube coordinates) and still
#: count as inside: the round-off of mapping a bound through log/exp and back.
INSIDE_TOL = 1e-9


class ParameterBox(eqx.Module):
    """The box ``lower <= p <= upper`` (element-wise), on a log scale when ``log``."""

    lower: Float[Array, " d"]
    upper: Float[Array, " d"]
    log: bool = eqx.field(static=True)

    def __init__(self, lower: ArrayLike, upper: ArrayLike, log: bool = True):
        lo = np.atleast_1d(np.asarray(lower, float))
        hi = np.atleast_1d(np.asarray(upper, float))
        if lo.ndim != 1 or lo.shape != hi.shape:
            raise ValueError(f"lower and upper must be 1-D of one shape, got {lo.shape} and "
                             f"{hi.shape}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError("lower and upper must be finite")
        bad = np.flatnonzero(~(hi > lo))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"upper must exceed lower for every parameter; parameter {i}: "
                             f"lower={lo[i]:g}, upper={hi[i]:g}")
        if log and np.any(lo <= 0):
            i = int(np.flatnonzero(lo <= 0)[0])
            raise ValueError(f"a log-scale box needs positive bounds; parameter {i} has "
                             f"lower={lo[i]:g} (pass log_params=False for a linear scale)")
        self.lower, self.upper, self.log = jnp.asarray(lo), jnp.asarray(hi), bool(log)

    @property
    def dim(self) -> int:
        return int(self.lower.shape[0])

    def _g(self, x):
        return jnp.log(x) if self.log else x

    def to_unit(self, p: ArrayLike) -> Array:
        """Unit-cube coordinates of ``p`` (any leading batch axes)."""
        lo, hi = self._g(self.lower), self._g(self.upper)
        return (self._g(jnp.asarray(p)) - lo) / (hi - lo)

    def from_unit(self, u: ArrayLike) -> Array:
        lo, hi = self._g(self.lower), self._g(self.upper)
        x = lo + jnp.asarray(u) * (hi - lo)
        return jnp.exp(x) if self.log else x

    def inside(self, p: ArrayLike) -> Array:
        """``True`` where ``p`` (last axis: parameters) lies in the box."""
        return unit_inside(self.to_unit(p))

    def describe_outside(self, p: np.ndarray) -> str:
        """The first parameter of concrete ``p`` that lies outside, as a sentence."""
        p = np.atleast_2d(np.asarray(p, float))
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        u = np.asarray(self.to_unit(p))
        bad = (u < -INSIDE_TOL) | (u > 1 + INSIDE_TOL)  # the test of unit_inside
        row, col = (int(x[0]) for x in np.nonzero(bad))
        where = f"point {row}, " if p.shape[0] > 1 else ""
        return (f"{where}parameter {col} = {p[row, col]:g} lies outside the training box "
                f"[{lo[col]:g}, {hi[col]:g}]")


def unit_inside(u: ArrayLike) -> Array:
    """``True`` where unit-cube coordinates ``u`` (last axis) lie in the cube."""
    u = jnp.asarray(u)
    # coordinate by coordinate, not jnp.all over the axis: elementwise operations that XLA
    # fuses into whatever consumes the test, where a reduction would be a pass of its own
    inside = jnp.ones(u.shape[:-1], bool)
    for j in range(u.shape[-1]):
        inside = inside & (u[..., j] >= -INSIDE_TOL) & (u[..., j] <= 1 + INSIDE_TOL)
    return inside


def design(n: int, dim: int, kind: str = "sobol", key: jax.Array | None = None) -> np.ndarray:
    """``n`` points in the unit cube ``[0, 1]^dim``: a scrambled Sobol sequence (default; a
    power of two keeps its balance), a Latin hypercube, or independent uniform draws.
    Seeded from ``key`` (default ``jax.random.key(0)``)."""
    if kind not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {kind!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of design points must be a positive integer, got {n!r}")
    key = jax.random.key(0) if key is None else key
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    if kind == "sobol":
        with warnings.catch_warnings():  # "balance properties ... n=2^m": a non-power of 2
            warnings.simplefilter("ignore", UserWarning)  # is fine for a training design
            return qmc.Sobol(dim, scramble=True, seed=seed).random(n)
    if kind == "lhs":
        return qmc.LatinHypercube(dim, seed=seed).random(n)
    return np.random.default_rng(seed).random((n, dim))
