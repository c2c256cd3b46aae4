"""Ensembles: many solves of one model as one vmapped computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jaxtyping import ArrayLike, PyTree

from .._batching import batch_map, check_batch_sizes, resolve_devices
from ._solve import Solution, solve


def solve_ensemble(
    vector_field: Callable,
    u0: ArrayLike,
    saveat: ArrayLike,
    args: PyTree = None,
    *,
    batch_u0: bool = True,
    batch_args: bool = True,
    devices=None,
    **kwargs: Any,
) -> Solution:
    """Solve one model for a batch of initial states and/or parameters at once.

    ``u0`` has a leading batch axis when ``batch_u0``; every array leaf of ``args`` has
    one when ``batch_args``. This is ``jax.vmap(solve)``: one compiled program, all
    members stepping together (each with its own step sizes; the batch runs until its
    slowest member finishes, so batch members of similar cost together). Keyword
    arguments go to :func:`solve`. Returns a :class:`Solution` whose fields have the batch
    axis first; failed members have ``success=False`` without affecting the others.

    ``devices`` (``"all"``, a count or a list of devices; default, as everywhere: every
    local GPU, one CPU device) splits the members evenly over several devices
    (``shard_map`` over a 1-D mesh, members padded to a multiple of the device count),
    each device stepping its own members (see :func:`bayes_ude._batching.batch_map`).
    """
    if not (batch_u0 or batch_args):
        raise ValueError("solve_ensemble needs batch_u0 or batch_args (or both) to be True")

    check_batch_sizes({"u0": u0 if batch_u0 else None, "args": args if batch_args else None},
                      "solve_ensemble", " (use batch_u0=False or batch_args=False for an "
                      "input shared by every member)")

    def one(u, a):
        return solve(vector_field, u, saveat, a, **kwargs)

    devices = resolve_devices(devices)
    if len(devices) == 1:
        return jax.vmap(one, in_axes=(0 if batch_u0 else None, 0 if batch_args else None))(
            u0, args)
    # members split over the devices (one vectorised block each); the unbatched input is
    # shared by all of them
    batched = (u0 if batch_u0 else None, args if batch_args else None)
    shared = (None if batch_u0 else u0, None if batch_args else args)
    return batch_map(lambda b, s: one(b[0] if batch_u0 else s[0], b[1] if batch_args else s[1]),
                     batched, shared, block=None, devices=devices,
                     # no copy of the shared input per member (it may be a network's
                     # weights, shared by 100,000 members)
                     copy_args=False)
