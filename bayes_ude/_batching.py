"""One function over a leading batch axis (subjects, ensemble members): blocks and devices.

Two facts decide how a batch of independent, adaptive computations (inner Newton solves of
the EBEs, adaptive ODE solves) should run:

* **A vectorised loop runs as long as its slowest member.** ``jax.vmap`` of a
  ``while_loop`` iterates until every member is done, so the cost of N members is N times
  the *largest* iteration count among them, and the largest of N grows with N. Measured on
  the FOCEI objective + gradient of a simulated oral population (2-core CPU): 129 us per
  subject at N = 300 and 941 us at N = 3,000 with one ``vmap``; with blocks of 8 subjects
  (``lax.map`` over blocks, ``vmap`` inside) 111 and 124 us. On a CPU, blocks make the cost
  linear in N. On a GPU the members of one block run in parallel, so one block holding all
  of them is fastest (the H200 evaluated the same objective for 1,000 and 10,000 subjects
  in the same time).
* **Independent members need no communication**, so splitting the batch over devices
  (``shard_map`` over a 1-D mesh) costs one reduction of whatever the caller sums.

:func:`batch_map` does both. The batch is padded (by repeating its last member) to a
multiple of ``devices x block``; the padded members' outputs are dropped, so callers see
exactly ``n`` results and never a padding artefact in a sum.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["batch_map", "default_block", "replicated_sharding", "resolve_devices"]

#: Block size on a CPU: small enough that a block's slowest member costs little more than
#: the median (8-32 measured equally good), large enough for vectorised arithmetic.
CPU_BLOCK = 16


def resolve_devices(devices: int | str | Sequence | None = None) -> list:
    """The devices a batch is split over.

    ``None``: every local device on a GPU or TPU, one on a CPU (extra CPU devices from
    ``--xla_force_host_platform_device_count`` share the same cores); ``"all"``: every
    local device; an ``int`` k: the first k local devices; or a sequence of devices.
    Under several processes (:mod:`bayes_ude._distributed`) the same choice is made on
    every process and the devices of all of them are returned, process by process.
    """
    local = jax.local_devices()
    take = _every_process if jax.process_count() > 1 else local.__getitem__
    if devices is None:
        return take(slice(1) if local[0].platform == "cpu" else slice(None))
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be None, 'all', a count or a list of devices, "
                             f"got {devices!r}")
        return _checked_cpu(take(slice(None)))
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices={devices}: this process has {len(local)} local "
                             f"device(s) ({local[0].platform})")
        return _checked_cpu(take(slice(int(devices))))
    devices = list(devices)
    if not devices:
        raise ValueError("devices: an empty list")
    return _checked_cpu(devices)


_said_oversubscribed = False


def _checked_cpu(devices: list) -> list:
    """``devices``, with a warning (once) where this process would run more CPU devices
    than it has cores: XLA runs each device's share on a thread of its own and gathers
    the shares with a collective that waits for all of them, and with fewer cores than
    devices that wait can last forever (4 devices on 2 cores: the diagnostics of a
    population with a 200-observation subject never returned)."""
    global _said_oversubscribed
    mine = [d for d in devices if d.platform == "cpu" and d.process_index == jax.process_index()]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if len(mine) > max(cores, 1) and not _said_oversubscribed:
        _said_oversubscribed = True
        warnings.warn(f"{len(mine)} CPU devices on {cores} core(s): XLA's gather of the "
                      "devices' shares waits for all of them and can wait forever when "
                      f"there are more devices than cores; use at most {cores}",
                      RuntimeWarning, stacklevel=3)
    return devices


def _every_process(which: slice) -> list:
    """``which`` of each process's devices, for every process (a mesh over all of them:
    each process computes its own devices' share of the batch)."""
    by_process: dict[int, list] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    return [d for p in sorted(by_process) for d in by_process[p][which]]


def default_block(devices: Sequence) -> int | None:
    """Members per block: :data:`CPU_BLOCK` on a CPU, ``None`` (one block) elsewhere."""
    return CPU_BLOCK if devices[0].platform == "cpu" else None


def replicated_sharding(devices: Sequence):
    """The sharding of :func:`batch_map`'s outputs over several ``devices`` (replicated on
    each; ``None`` for one device). Put a loop's starting state there too
    (``jax.device_put(state, replicated_sharding(devices))``): a jitted step whose inputs
    change sharding between its first and later calls is compiled twice."""
    if len(devices) == 1:
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.asarray(devices), ("batch",)), PartitionSpec())


def _pad(tree, n_to: int):
    def pad(a):
        a = jnp.asarray(a)
        extra = n_to - a.shape[0]
        if extra == 0:
            return a
        return jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, tree)


def _broadcast(args, n: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), args)


def _ordered_sum(c, lanes: int = 16):
    """``sum(c, axis=0)`` in one order whatever the compiled program around it: rows added
    ``lanes`` at a time in a loop (elementwise adds, which XLA does not reorder), then the
    ``lanes`` partial sums added one by one. ``jnp.sum`` is a reduction whose order XLA
    picks with the fusion around it."""
    m = -(-c.shape[0] // lanes)
    c = jnp.concatenate([c, jnp.zeros((m * lanes - c.shape[0],) + c.shape[1:], c.dtype)])
    acc = jax.lax.scan(lambda a, x: (a + x, None), jnp.zeros((lanes,) + c.shape[1:], c.dtype),
                       c.reshape((m, lanes) + c.shape[1:]))[0]
    out = acc[0]
    for i in range(1, lanes):
        out = out + acc[i]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _copies(args, n: int):
    """``n`` copies of ``args`` whose cotangents are summed over one materialised
    ``(n, ...)`` array (the sum XLA would otherwise fuse with how the members' cotangents
    were laid out, a layout that differs with the device count)."""
    return _broadcast(args, n)


def _copies_fwd(args, n):
    return _broadcast(args, n), None


def _copies_bwd(n, _, ct):
    def total(c):  # integer arguments have float0 cotangents, nothing to add
        if c.dtype == jax.dtypes.float0:
            return np.zeros(c.shape[1:], c.dtype)
        return _ordered_sum(c)

    return (jax.tree.map(total, ct),)


_copies.defvjp(_copies_fwd, _copies_bwd)


def check_batch_sizes(xs, caller: str = "batch_map", hint: str = "") -> int:
    """The one leading (batch) size of every leaf of ``xs``, or ``ValueError`` naming
    the leaves (a mapping's keys read as names: ``{"u0": ..., "args": ...}``). Padding
    repeats a shorter leaf's last member and the result is cut to the first leaf's size,
    so 4 initial states with 3 rates used to solve the 4th with the 3rd rate, where
    ``vmap`` raises."""
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(xs)[0]:
        head = path[:1]
        where = (str(head[0].key) + jax.tree_util.keystr(path[1:])
                 if head and isinstance(head[0], jax.tree_util.DictKey)
                 else jax.tree_util.keystr(path) or "xs")
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(f"{caller}: every batched array needs a leading batch axis; "
                             f"{where} is a scalar")
        sizes.setdefault(int(shape[0]), where)
    if len(sizes) > 1:
        found = ", ".join(f"{where} has {size}" for size, where in sizes.items())
        raise ValueError(f"{caller}: the batched inputs must all have the same leading "
                         f"(batch) size; {found}{hint}")
    return next(iter(sizes), 0)  # 0: no batched leaf


def batch_map(fn: Callable, xs: Any, args: Any = (), *, block: int | None | str = "auto",
              devices: int | str | Sequence | None = None, copy_args: bool = True,
              isolate: bool = False) -> Any:
    """``jax.vmap(fn, in_axes=(0, None))(xs, args)``, computed in blocks and over devices.

    ``fn(x, args)`` takes one member ``x`` of the pytree ``xs`` (every leaf with the same
    leading size ``n``) and the shared ``args`` (parameters; pass traced values here rather
    than closing over them, so that they reach every device); it returns a pytree. The
    result has leading size ``n``, as ``vmap`` would give, and agrees with it to rounding.

    ``block``: members per vectorised block (``"auto"``: :func:`default_block`; ``None``:
    one block per device). The batch is padded to a multiple of ``block`` times the device
    count, by repeating its last member; padded members' outputs are dropped.
    ``devices``: see :func:`resolve_devices`; with more than one, the blocks are split
    evenly over them (``shard_map``), each device running its share on its own. Works
    under ``jit`` and ``grad``.
    ``copy_args``: give each member its own copy of ``args`` (``n`` copies; default), so
    that gradients, draws and estimates are the same on 2 or 4 devices (below), and on 1
    where the members' code sits in a loop of its own (an inner Newton loop; ``isolate``).
    ``False`` for shared arguments too large to copy ``n`` times (a network's weights
    shared by 100,000 ensemble members): their gradient is then summed per device, and
    differs in the last bits between device counts.
    ``isolate`` (with ``copy_args``; a block size, not ``None``): run at least two blocks
    per device in the loop and sum the members' cotangents of ``args`` in a fixed order
    (:func:`_ordered_sum`), so that one device computes exactly what several do. Without
    it, XLA fuses straight-line member code (a closed-form model's predictions) with what
    surrounds it when the batch is not split, and one device differs from several in the
    last bits (2e-15 on predictions); NUTS turns that into other draws. Costs padding up to
    two blocks per device, a loop, and about twice the work per gradient on a CPU. Reverse
    mode and Hessians (forward over reverse) work; forward mode alone does not (the
    ordered sum is a ``custom_vjp``).
    """
    if isolate and (block is None or not copy_args):
        raise ValueError("batch_map: isolate needs a block size (not None) and copy_args")
    devices = resolve_devices(devices)
    if not jax.tree.leaves(xs):
        raise ValueError("batch_map: xs has no arrays")
    n = check_batch_sizes(xs)
    if block == "auto":
        block = default_block(devices)
    n_dev = len(devices)
    # A given block size does not depend on the device count (only on n), so that every
    # member sits in the same block at the same place on 1 device as on several (vectors
    # of other lengths round differently: 2.8e-9 apart in FOCEI estimates on 13 subjects
    # with blocks of 13 and 4; the same blocks on 2 and 4 devices agree to 1e-14).
    block = math.ceil(n / n_dev) if block is None else max(1, min(int(block), n))
    per_device = math.ceil(n / (n_dev * block)) * block
    if isolate:
        per_device = max(per_device, 2 * block)
    replicated = replicated_sharding(devices)
    # With ``copy_args``, the shared arguments go to every member as a copy of its own, and
    # members and copies are kept whole on every device before they are split: in reverse
    # mode their cotangents are then gathered, so that what the caller does with them (sum
    # the members' cotangents of ``args``, contract those of ``xs`` with a matrix) runs on
    # whole arrays in one fixed order, the same on any number of devices. Otherwise each
    # device sums its own members and the partial sums are added: on 2 and 4 devices NUTS
    # gradients 1e-14 apart, which NUTS turns into other draws.
    if copy_args:
        xs = (xs, (_copies if isolate else _broadcast)(args, n))
        args = ()
    else:
        xs = (xs, None)
    if replicated is not None:
        xs = jax.lax.with_sharding_constraint(xs, replicated)
    xs = _pad(xs, per_device * n_dev)

    def member(item, shared):
        x, own = item
        return fn(x, own if copy_args else shared)

    def local(chunk, shared):
        one_block = jax.vmap(member, in_axes=(0, None))
        if block == per_device:
            return one_block(chunk, shared)
        blocks = jax.tree.map(lambda a: a.reshape((per_device // block, block) + a.shape[1:]),
                              chunk)
        out = jax.lax.map(lambda b: one_block(b, shared), blocks)
        return jax.tree.map(lambda a: a.reshape((per_device,) + a.shape[2:]), out)

    if n_dev == 1:
        out = local(xs, args)
    else:
        from jax.sharding import Mesh, PartitionSpec

        mesh = Mesh(np.asarray(devices), ("batch",))
        out = jax.shard_map(local, mesh=mesh,
                            in_specs=(PartitionSpec("batch"), PartitionSpec()),
                            out_specs=PartitionSpec("batch"), check_vma=False)(xs, args)
        # gathered on every device: a caller's sum over the batch then adds the members
        # in the same order as on one device, not as a sum of per-device partial sums
        out = jax.lax.with_sharding_constraint(out, replicated)
    return jax.tree.map(lambda a: a[:n], out)
