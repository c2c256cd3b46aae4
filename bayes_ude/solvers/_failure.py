"""Turning a failed solve into a rejected sample (pure JAX; NumPyro glue is in inference)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._solve import Solution


def log_density_penalty(sol: Solution) -> Float[Array, ""]:
    """0 for a successful solve, ``-inf`` for a failed one (add it to a log density)."""
    return jnp.where(sol.success, 0.0, -jnp.inf)  # batched solutions: one entry per member


def sanitize(sol: Solution, fill: float = 1.0) -> PyTree[Float[Array, "n_save ..."]]:
    """The solution values with a failed solve's NaNs replaced by ``fill``.

    Compute a likelihood from these values and add :func:`log_density_penalty`: the log
    density is then ``-inf`` for a failed solve while its gradient stays finite (a NaN
    anywhere in the graph would otherwise poison the gradient, even when masked out;
    a loss computed from the unsanitized values of a failed solve has a NaN gradient).
    For a pytree state, every leaf of ``sol.ys`` is sanitized.
    """
    def one(ys):
        ok = sol.success.reshape(sol.success.shape + (1,) * (ys.ndim - sol.success.ndim))
        return jnp.where(ok, ys, fill)

    return jax.tree.map(one, sol.ys)
