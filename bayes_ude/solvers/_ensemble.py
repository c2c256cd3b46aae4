"""Ensembles: many solves of one model as one vmapped computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree

from .._batching import batch_map, resolve_devices
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

    _check_members(u0 if batch_u0 else None, args if batch_args else None)

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


def _check_members(u0, args) -> None:
    """One member count for the batched inputs, named in the error (on several devices
    the shorter input's last member used to be repeated, silently)."""
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path({"u0": u0, "args": args})[0]:
        where = path[0].key + jax.tree_util.keystr(path[1:])
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(f"solve_ensemble: {where} is batched (batch_{path[0].key}=True) "
                             f"but has no leading member axis (a scalar)")
        sizes.setdefault(int(shape[0]), where)
    if len(sizes) > 1:
        found = ", ".join(f"{where} has {size}" for size, where in sizes.items())
        raise ValueError(f"solve_ensemble: the batched inputs need one member count along "
                         f"their leading axis; {found} (use batch_u0=False or "
                         f"batch_args=False for an input shared by every member)")
