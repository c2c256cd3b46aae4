"""Ensembles: many solves of one model as one vmapped computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jaxtyping import ArrayLike, PyTree

from ._solve import Solution, solve


def solve_ensemble(
    vector_field: Callable,
    u0: ArrayLike,
    saveat: ArrayLike,
    args: PyTree = None,
    *,
    batch_u0: bool = True,
    batch_args: bool = True,
    **kwargs: Any,
) -> Solution:
    """Solve one model for a batch of initial states and/or parameters at once.

    ``u0`` has a leading batch axis when ``batch_u0``; every array leaf of ``args`` has
    one when ``batch_args``. This is ``jax.vmap(solve)``: one compiled program, all
    members stepping together (each with its own step sizes; the batch runs until its
    slowest member finishes, so batch members of similar cost together). Keyword
    arguments go to :func:`solve`. Returns a :class:`Solution` whose fields have the batch
    axis first; failed members have ``success=False`` without affecting the others.
    """
    if not (batch_u0 or batch_args):
        raise ValueError("solve_ensemble needs batch_u0 or batch_args (or both) to be True")

    def one(u, a):
        return solve(vector_field, u, saveat, a, **kwargs)

    return jax.vmap(one, in_axes=(0 if batch_u0 else None, 0 if batch_args else None))(u0, args)
