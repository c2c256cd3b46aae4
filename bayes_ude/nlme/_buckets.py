"""Subjects grouped by size, so that a few long subjects do not pad every other one.

A :class:`~bayes_ude.nlme.Population` pads every subject to the largest: one subject with
200 observations among 1,000 with 5 makes every subject cost (and, on a GPU, hold) 200
observations' worth, 3 % of it real. Here the subjects are sorted into a few size groups
("buckets"), each cut to its own largest subject's widths (observations, doses, resets,
covariate change points), and the per-subject work (:func:`map_subjects`) runs once per
bucket; the results come back in the population's order, per-observation ones padded
again to the population's width.

Buckets are formed only where they pay: when the padded observation slots are more than
twice the slots the subjects use (:data:`MAX_WASTE`), as few buckets as bring the waste
under that (at most :data:`MAX_BUCKETS`; each one is compiled as a program of its own, so
more buckets cost compile time). A subject's size is the position of its last record
of the table (``obs_row``): observations masked since (``select_dvid``,
``split_subjects(keep_shape=True)``) keep their slots, so masking never changes the plan,
and a held-out split reuses the programs compiled for the full data. The grouping
minimises the padded slots for the number of buckets (dynamic programming over the
distinct sizes, the subjects sorted by size).

Results agree with the padded computation to rounding: a subject's padding adds exactly
nothing, but vectors of other lengths are summed in other orders (1e-13 relative on an
objective). ODE models agree to their solver's tolerance where a subject is observed
before its first dose: padded doses sit at the first record time, and the solver's grid
(``FixedStepODEModel``) or steps (``ODEModel``) see them (1e-9 relative on predictions).
The plan is made from concrete arrays, outside ``jit``, and passed to the compiled
functions as a static argument; work on subsets of subjects chosen while
running (SG-MCMC minibatches, bootstrap replicates) stays padded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._batching import batch_map
from ._data import _ARRAY_FIELDS, Population

__all__ = ["BucketPlan", "map_subjects", "padding_report", "subject_buckets"]

#: Bucket when the padded observation slots exceed this multiple of the used ones.
MAX_WASTE = 2.0
#: At most this many buckets (each a program of its own: compile time).
MAX_BUCKETS = 4

# The axis-1 width each array field is padded to: observations, doses, resets, covariate
# change points (``cov_baseline`` has none).
_KINDS = ("obs", "dose", "reset", "cov")


def _kind(name: str) -> str | None:
    if name == "cov_baseline":
        return None
    kind = name.split("_", 1)[0]
    if kind not in _KINDS:  # a new field must be given its width here
        raise AssertionError(f"Population field {name!r} has no known padded axis")
    return kind


_FIELD_KIND = {name: _kind(name) for name in _ARRAY_FIELDS}


def _extent(mask) -> np.ndarray:
    """Per subject, one past the position of its last real record (0 if none)."""
    mask = np.asarray(mask, bool)
    if mask.shape[1] == 0:
        return np.zeros(mask.shape[0], np.int64)
    last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0)


def _present(population, kind: str) -> np.ndarray:
    """The slots that hold a record of the table: real ones, and observations or doses
    masked out since (``select_dvid``, ``split_subjects(keep_shape=True)``), so that
    masking never changes the plan (and the programs compiled for it)."""
    present = np.asarray(getattr(population, f"{kind}_mask"), bool)
    if kind in ("obs", "dose"):
        present = present | (np.asarray(getattr(population, f"{kind}_row")) >= 0)
    return present


class BucketPlan:
    """Which subjects go together, and the widths each group is cut to (hashable: a
    static argument of compiled functions).

    Attributes
    ----------
    groups : tuple of tuple of int
        Subject positions of each bucket, in the population's order within it.
    widths : tuple of dict
        Per bucket, the width of each record kind (``obs``, ``dose``, ``reset``, ``cov``).
    """

    def __init__(self, groups, widths, full: dict[str, int]):
        self.groups = tuple(tuple(int(i) for i in g) for g in groups)
        self.widths = tuple(dict(w) for w in widths)
        self.full = dict(full)
        self._key = (self.groups, tuple(tuple(sorted(w.items())) for w in self.widths),
                     tuple(sorted(self.full.items())))
        self._hash = hash(self._key)
        order = np.concatenate([np.asarray(g, np.int64) for g in self.groups])
        self.inverse = np.argsort(order, kind="stable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, BucketPlan) and self._key == other._key

    def __repr__(self) -> str:
        parts = ", ".join(f"{len(g)}x{w['obs']}" for g, w in zip(self.groups, self.widths,
                                                                 strict=True))
        return f"BucketPlan(subjects x observation width: {parts})"

    def slots(self) -> int:
        """Padded observation slots computed with this plan."""
        return sum(len(g) * w["obs"] for g, w in zip(self.groups, self.widths, strict=True))


def _best_split(sizes: np.ndarray, counts: np.ndarray, k: int) -> tuple[int, list[int]]:
    """Minimal padded slots of ``k`` contiguous groups of the sorted distinct ``sizes``
    (``counts`` subjects each), and the group ends (indices into ``sizes``)."""
    u = sizes.size
    cum = np.concatenate([[0], np.cumsum(counts)])
    # cost[j]: best slots for the sizes 0..j-1 in the groups so far; a group (i, j]
    # costs (subjects in it) x sizes[j - 1]
    cost = np.where(np.arange(u + 1) == 0, 0.0, np.inf)
    back = []
    for _ in range(k):
        new = np.full(u + 1, np.inf)
        arg = np.zeros(u + 1, np.int64)
        new[0] = 0.0
        for j in range(1, u + 1):
            cand = cost[:j] + (cum[j] - cum[:j]) * sizes[j - 1]
            arg[j] = int(np.argmin(cand))
            new[j] = cand[arg[j]]
        back.append(arg)
        cost = new
    ends, j = [], u
    for arg in reversed(back):
        if j == 0:
            break
        ends.append(j)
        j = int(arg[j])
    return int(cost[u]), sorted(ends)


def subject_buckets(population, *, max_waste: float | None = None,
                    max_buckets: int | None = None) -> BucketPlan | None:
    """The size groups of ``population``'s subjects, or ``None`` where one padded group
    wastes at most ``max_waste`` (default :data:`MAX_WASTE`) times the slots used (or
    the arrays are traced); at most ``max_buckets`` (:data:`MAX_BUCKETS`) groups."""
    max_waste = MAX_WASTE if max_waste is None else float(max_waste)
    max_buckets = MAX_BUCKETS if max_buckets is None else int(max_buckets)
    if not isinstance(population, Population):
        return None
    try:
        extents = {kind: _extent(_present(population, kind)) for kind in _KINDS}
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None  # traced: no plan (the padded computation)
    obs = np.maximum(extents["obs"], 1)
    n = obs.size
    full = {kind: int(np.shape(getattr(population, f"{kind}_mask"))[1]) for kind in _KINDS}
    used = int(obs.sum())
    if n < 2 or n * full["obs"] <= max_waste * used:
        return None
    sizes, counts = np.unique(obs, return_counts=True)
    # k = 1: every subject cut to the largest one's size (subjects taken from a larger
    # population, whose widths ``take`` keeps)
    for k in range(1, min(max_buckets, sizes.size) + 1):
        slots, ends = _best_split(sizes, counts, k)
        if slots <= max_waste * used:
            break
    groups, widths, start = [], [], 0
    for end in ends:
        members = np.flatnonzero((obs > (sizes[start - 1] if start else 0))
                                 & (obs <= sizes[end - 1]))
        start = end
        if members.size == 0:
            continue
        groups.append(members)
        # a kind the population has no slot of (no resets) keeps width 0
        widths.append({kind: (max(int(extents[kind][members].max()), 1) if full[kind]
                              else 0) for kind in _KINDS})
    if len(groups) == 1 and widths[0] == full:
        return None
    return BucketPlan(groups, widths, full)


def padding_report(population) -> dict:
    """How much of the computed observation slots are real: ``padding_efficiency``
    (every subject padded to the largest), ``computed_padding_efficiency`` (in the size
    groups the fits use) and ``size_groups`` (their number; 1 without)."""
    real = int(np.asarray(population.obs_mask).sum())
    plan = subject_buckets(population)
    slots = plan.slots() if plan is not None else int(np.size(population.obs_mask))
    return {"padding_efficiency": population.padding_efficiency,
            "computed_padding_efficiency": real / max(slots, 1),
            "size_groups": 1 if plan is None else len(plan.groups)}


def take_bucket(population, members, widths) -> Population:
    """The subjects at ``members`` cut to ``widths`` (works on traced arrays)."""
    idx = np.asarray(members, np.int64)
    leaves = {}
    for name in _ARRAY_FIELDS:
        a = jnp.asarray(getattr(population, name))[idx]
        kind = _FIELD_KIND[name]
        leaves[name] = a if kind is None else a[:, :widths[kind]]
    # the population's static fields carried as they are (has_censored, cmt_given, ...)
    return dataclasses.replace(population, ids=tuple(population.ids[int(i)] for i in idx),
                               **leaves)


def _pad_obs(a, width: int):
    a = jnp.asarray(a)
    return jnp.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2))


def map_subjects(fn: Callable, population, extra: Any = None, args: Any = (), *,
                 buckets: BucketPlan | None = None, obs_outputs: Any = False,
                 **batch: Any) -> Any:
    """:func:`bayes_ude._batching.batch_map` of ``fn`` over the subjects of
    ``population`` (``fn((subject, extra_i), args)``, or ``fn(subject, args)`` without
    ``extra``), one bucket of ``buckets`` after another (``None``: all at once).

    ``obs_outputs``: which outputs have the subject's observations on their axis 1 (a
    prefix of the output tree: ``True`` for all, ``(False, True)`` for the second of a
    pair); they are padded with zeros back to the population's width. Results are in
    the population's order. ``batch``: ``batch_map``'s keywords.
    """
    def items(pop, idx=None):
        if extra is None:
            return pop
        return pop, (extra if idx is None else jax.tree.map(lambda a: a[idx], extra))

    if buckets is None:
        return batch_map(fn, items(population), args, **batch)
    width = buckets.full["obs"]

    def repad(flag, o):
        return jax.tree.map(lambda a: _pad_obs(a, width), o) if flag else o

    outs = []
    for members, widths in zip(buckets.groups, buckets.widths, strict=True):
        idx = np.asarray(members, np.int64)
        out = batch_map(fn, items(take_bucket(population, idx, widths), idx), args, **batch)
        outs.append(jax.tree.map(repad, obs_outputs, out))
    inverse = buckets.inverse
    return jax.tree.map(lambda *parts: jnp.concatenate(parts)[inverse], *outs)
