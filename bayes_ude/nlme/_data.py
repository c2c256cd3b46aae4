"""NONMEM-style data tables -> a padded, masked :class:`Population` of arrays.

A NONMEM table has one row per *record* (event) of a subject::

    ID, TIME, DV, AMT, EVID, MDV, CMT, RATE, II, ADDL, SS  [, DVID]  [, covariates...]

:func:`~bayes_ude.nlme.read_nonmem` validates such a table (collecting every problem into
one :class:`NonmemDataError`) and converts it into a :class:`Population`: for each kind of
record (observations, doses, resets, covariate change points) a ``(subjects, records)``
array padded to the largest subject and a boolean mask, so that a model evaluates all
subjects at once with :func:`jax.vmap` over axis 0 -- never a Python loop over subjects.

This module is the end of the data layer (reading, ``_table.py`` -> record checks,
``_read_checks.py`` -> subjects, warnings and assembly, ``_assemble.py`` ->
:class:`Population`, here; :func:`read_nonmem` in ``_read.py`` runs the steps): the
result, its errors and warnings, the table's vocabulary (column names, missing-value
spellings) and :func:`split_subjects` (a held-out split of a population); the helpers the
messages share are in ``_data_text.py``. It imports nothing from the reader.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, ArrayLike

from ._data_text import describe_dvids

__all__ = ["NonmemDataError", "NonmemDataWarning", "Population", "covariates_at",
           "split_subjects"]

# Columns with a NONMEM meaning; everything else is a covariate (or ignored, see
# ``read_nonmem(covariates=...)``).
_REQUIRED = ("ID", "TIME", "DV")
_OPTIONAL = ("AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS", "DVID")
_RESERVED = _REQUIRED + _OPTIONAL
# Columns that mark observations below the limit of quantification (flag 1) or give that
# limit (``DV < LLOQ``): read into ``Population.obs_lloq`` (``_read_censoring.py``), fitted
# with Beal's M3 likelihood; they are never covariates.
_CENSORING_FLAGS = ("BLQ", "BQL", "CENS", "CENSORED")
_CENSORING_LIMITS = ("LLOQ", "LOQ")

# Values read as "missing" in a cell (NONMEM writes ``.``).
_MISSING_STRINGS = frozenset({"", ".", "NA", "NAN", "NAN.", "NULL"})

# How many problems the error message lists (all are in ``NonmemDataError.problems``).
_MAX_SHOWN = 20
# A decimal comma ("0,5"), accepted in semicolon-separated files.
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?")


class NonmemDataError(ValueError):
    """A NONMEM table is malformed.

    The message lists every problem found (up to 20; all of them are in
    :attr:`problems`), one per line, each naming the subject (``ID``), the row and the
    column, and what was expected. Rows are numbered 1, 2, ... over the *data* rows of
    the table: the header is not counted (row 1 is the first record; for a DataFrame,
    row ``k`` is ``df.iloc[k - 1]``).

    Attributes
    ----------
    problems : list[str]
        One line per problem.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        shown = self.problems[:_MAX_SHOWN]
        lines = [
            f"{n} problem{'s' if n != 1 else ''} in the NONMEM table "
            "(rows are 1-based data rows, header excluded):"
        ]
        lines += [f"  - {p}" for p in shown]
        if n > _MAX_SHOWN:
            lines.append(f"  ... and {n - _MAX_SHOWN} more (see NonmemDataError.problems)")
        super().__init__("\n".join(lines))


class NonmemDataWarning(UserWarning):
    """A NONMEM table is readable but probably not what was meant.

    Issued by :func:`read_nonmem` for duplicate records, dose records with ``AMT`` 0,
    subjects without doses (while others have them) or without observations, and a
    file read with a separator other than the comma; the message names the rows.
    """


# --------------------------------------------------------------------------------------
# The Population pytree
# --------------------------------------------------------------------------------------


class Population(eqx.Module):
    """Subjects of a NONMEM table as padded, masked arrays (a pytree).

    Every array field has the subjects on axis 0 (``S`` of them, in order of first
    appearance in the table) and that subject's records on axis 1, padded to the largest
    subject; ``*_mask`` says which entries are real. ``jax.vmap(f)(population)`` hands
    ``f`` one subject (axis 0 removed from every array). ``ids`` and
    ``covariate_names`` are static (not leaves).

    Attributes
    ----------
    ids : tuple
        The original ``ID`` of each subject (``int`` where integral; the text for IDs
        read with ``read_nonmem(..., character_ids=True)``).
    covariate_names : tuple[str, ...]
        Covariate column names as spelled in the table; index of the last axis of the
        ``*_cov`` arrays.
    obs_time, obs_dv : (S, No) float64
        Observation times and values (``EVID 0`` and ``MDV`` not 1), in table order
        (time non-decreasing); a censored observation's value is its limit. Padding: time
        = the subject's last observation time (so a solver never has to go backwards; the
        first record's time for a subject without observations), dv = 0.
    obs_mask : (S, No) bool
    obs_cmt, obs_dvid : (S, No) int64
        Compartment (``CMT``, default 1) and observation type (``DVID``, default 1);
        padding 1.
    obs_row : (S, No) int64
        The observation's 1-based data row in the table (-1 for padding), for
        diagnostics.
    obs_lloq, obs_limit : (S, No) float64
        ``obs_lloq``: NaN for a measured observation (and padding); for one below the limit
        of quantification, the limit: all that is known is ``DV < obs_lloq`` (Beal's M3).
        ``obs_limit``: each observation's limit where the data give one (its ``LLOQ``
        cell, or the limit it is censored at; NaN else), what the censored VPC censors at.
    obs_cov : (S, No, C) float64
        Covariates at each observation record (last observation carried forward).
    dose_time, dose_amt, dose_rate, dose_ii : (S, Nd) float64
        Doses (``EVID`` 1 and 4) after ``ADDL``/``II`` expansion, sorted by time (stable:
        ties keep table order, expanded doses after the table's). ``dose_rate`` 0 is a
        bolus; ``> 0`` a zero-order infusion of duration ``amt / rate``. ``dose_ii`` is
        the record's interdose interval (used with ``dose_ss``). Padding: time = the
        subject's first record time, amt, rate and ii 0.
    dose_cmt : (S, Nd) int64
        Dose compartment (``CMT``, default 1).
    dose_ss : (S, Nd) bool
        ``SS = 1``: the dose record puts the system at steady state (of doses ``amt``
        every ``ii``, or of a constant infusion ``rate`` when ``amt = 0``) at its time;
        handling is the model's job. Doses expanded from ``ADDL`` are not flagged.
    dose_mask : (S, Nd) bool
    dose_row : (S, Nd) int64
        The 1-based data row the dose comes from (expanded doses: their record's row;
        -1 for padding).
    dose_cov : (S, Nd, C) float64
        Covariates at each dose time (last observation carried forward).
    reset_time : (S, Nr) float64
        Times of reset records (``EVID`` 3 and 4; for 4 the dose follows the reset).
        Models treat a reset as returning every compartment to its initial state at
        that time. ``Nr`` may be 0. Padding: the subject's first record time.
    reset_mask : (S, Nr) bool
    cov_baseline : (S, C) float64
        Covariates at each subject's first record (after filling).
    cov_time : (S, Nc) float64
        Change points of the (piecewise-constant) covariates: the subject's first record
        time, then each record time where any covariate changes. Padding: the last
        change point.
    cov_value : (S, Nc, C) float64
        Covariate values from each change point on (padding repeats the last).
    cov_mask : (S, Nc) bool
        Use :func:`covariates_at` for the value at any time ``t``.
    has_censored : bool
        Whether any ``obs_lloq`` is a limit (static: the likelihoods compile the M3 terms
        only then; kept by :meth:`take`, so minibatches share one program).
    cmt_given : bool
        Whether the table had a ``CMT`` column (static). Without one every record has
        ``CMT`` 1, which the structural models read as "the model's own dosing and
        observation compartments" (see ``StructuralModel.check_population``).
    """

    ids: tuple = eqx.field(static=True)
    covariate_names: tuple[str, ...] = eqx.field(static=True)
    obs_time: ArrayLike
    obs_dv: ArrayLike
    obs_mask: ArrayLike
    obs_cmt: ArrayLike
    obs_dvid: ArrayLike
    obs_row: ArrayLike
    obs_lloq: ArrayLike
    obs_limit: ArrayLike
    obs_cov: ArrayLike
    dose_time: ArrayLike
    dose_amt: ArrayLike
    dose_rate: ArrayLike
    dose_ii: ArrayLike
    dose_cmt: ArrayLike
    dose_ss: ArrayLike
    dose_mask: ArrayLike
    dose_row: ArrayLike
    dose_cov: ArrayLike
    reset_time: ArrayLike
    reset_mask: ArrayLike
    cov_baseline: ArrayLike
    cov_time: ArrayLike
    cov_value: ArrayLike
    cov_mask: ArrayLike
    has_censored: bool = eqx.field(static=True, default=False)
    cmt_given: bool = eqx.field(static=True, default=False)

    # ---- convenience (outside jit: these read concrete arrays) -------------------------

    @property
    def n_subjects(self) -> int:
        """Number of subjects ``S``."""
        return len(self.ids)

    @property
    def n_obs(self) -> int:
        """Total number of real observations."""
        return int(np.sum(np.asarray(self.obs_mask)))

    @property
    def n_doses(self) -> int:
        """Total number of real doses (after ``ADDL`` expansion)."""
        return int(np.sum(np.asarray(self.dose_mask)))

    @property
    def padding_efficiency(self) -> float:
        """Real observations over the padded observation slots (``S`` times the largest
        subject's count): 1 when every subject has as many observations, small when one
        subject has many more than the rest (the fits then use size groups, ``_buckets``)."""
        mask = np.asarray(self.obs_mask)
        return float(mask.sum() / max(mask.size, 1))

    def take(self, indices: Sequence[int] | ArrayLike) -> Population:
        """The subjects at positions ``indices`` (e.g. a minibatch or held-out subjects).

        The padded widths are kept, so every subset of the same size has the same array
        shapes (one compilation serves all minibatches).

        Parameters
        ----------
        indices : sequence of int
            Positions (0-based, along axis 0), not ``ID`` values.

        Returns
        -------
        Population
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.n_subjects
        if np.any((idx < -n) | (idx >= n)):
            raise IndexError(f"subject positions {idx.tolist()} out of range for {n} subjects")
        ids = tuple(self.ids[int(i)] for i in idx)
        leaves = {name: np.asarray(getattr(self, name))[idx] for name in _ARRAY_FIELDS}
        return Population(ids=ids, covariate_names=self.covariate_names,
                          cmt_given=self.cmt_given, has_censored=self.has_censored, **leaves)

    def observed_dvids(self) -> dict[int, int]:
        """The observation types (``DVID``) of the real observations, each with its count,
        in increasing order."""
        values, counts = np.unique(np.asarray(self.obs_dvid)[np.asarray(self.obs_mask)],
                                   return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def covariate_changes(self, name: str) -> list:
        """The IDs of the subjects whose covariate ``name`` changes over their records
        (a time-varying covariate), in the data's order; empty if it is constant within
        every subject."""
        c = list(self.covariate_names).index(name)
        value = np.asarray(self.cov_value)[:, :, c]
        changes = (np.asarray(self.cov_mask) & ~np.isclose(value, value[:, :1])).any(axis=1)
        return [self.ids[i] for i in np.flatnonzero(changes)]

    def select_dvid(self, dvid: int) -> Population:
        """The population with only the observations of type ``dvid`` (the others
        masked, as ``MDV = 1`` would; doses and covariates kept, as are the padded
        widths). What a model describing one kind of observation is fitted to (the
        command's ``--dvid``)."""
        kinds = self.observed_dvids()
        if int(dvid) not in kinds:
            raise ValueError(f"no observations with DVID {dvid} (the data hold DVID "
                             f"{describe_dvids(kinds)})")
        keep = np.asarray(self.obs_mask) & (np.asarray(self.obs_dvid) == int(dvid))
        censored = bool((keep & np.isfinite(np.asarray(self.obs_lloq))).any())
        return dataclasses.replace(self, obs_mask=keep, has_censored=censored)

    def subject(self, i: int) -> Population:
        """A one-subject population: the subject at position ``i`` (0-based)."""
        return self.take([i])

    def index(self, subject_id) -> int:
        """Position (0-based) of the subject with ``ID == subject_id``."""
        for k, sid in enumerate(self.ids):
            if sid == subject_id:
                return k
        raise KeyError(f"no subject with ID {subject_id!r}")

    def to_frame(self) -> pd.DataFrame:
        """The real observations as a long table, for diagnostics.

        Returns
        -------
        pandas.DataFrame
            Columns ``ID, TIME, DV, CMT, DVID, ROW`` (``ROW``: 1-based data row in the
            input table), with censored observations ``BLQ`` (1: below ``LLOQ``) and
            ``LLOQ``, then the covariates at the observation; subjects in order,
            observations in table order.
        """
        mask = np.asarray(self.obs_mask, dtype=bool)
        s_idx, _ = np.nonzero(mask)
        ids = np.array(self.ids, dtype=object)[s_idx] if len(self.ids) else np.array([])
        frame = pd.DataFrame(
            {
                "ID": list(ids),
                "TIME": np.asarray(self.obs_time)[mask],
                "DV": np.asarray(self.obs_dv)[mask],
                "CMT": np.asarray(self.obs_cmt)[mask],
                "DVID": np.asarray(self.obs_dvid)[mask],
                "ROW": np.asarray(self.obs_row)[mask],
            }
        )
        if self.has_censored:
            frame["BLQ"] = np.isfinite(np.asarray(self.obs_lloq)[mask]).astype(np.int64)
            frame["LLOQ"] = np.asarray(self.obs_limit)[mask]
        cov = np.asarray(self.obs_cov)[mask]
        for c, name in enumerate(self.covariate_names):
            frame[name] = cov[:, c]
        return frame

    def __repr__(self) -> str:
        try:
            n_obs, n_doses = self.n_obs, self.n_doses
            n_resets = int(np.sum(np.asarray(self.reset_mask)))
        except Exception:  # traced (inside jit/vmap): no concrete counts
            return f"Population(subjects={self.n_subjects}, traced)"
        covs = ", ".join(self.covariate_names) or "none"
        shape = np.shape(self.obs_time)
        return (
            f"Population(subjects={self.n_subjects}, observations={n_obs}, "
            f"doses={n_doses}, resets={n_resets}, covariates=[{covs}], "
            f"padded obs/subject={shape[-1] if shape else 0})"
        )


_ARRAY_FIELDS = tuple(
    name
    for name in Population.__dataclass_fields__
    if name not in ("ids", "covariate_names", "cmt_given", "has_censored")
)


def covariates_at(time: ArrayLike, value: ArrayLike, mask: ArrayLike, t: ArrayLike) -> Array:
    """Covariate values at time ``t`` for one subject (last observation carried forward).

    Works under :func:`jax.jit`/:func:`jax.vmap`; call it per subject, e.g.
    ``jax.vmap(lambda p: covariates_at(p.cov_time, p.cov_value, p.cov_mask, 5.0))(pop)``.

    Parameters
    ----------
    time : (Nc,) array
        A subject's ``Population.cov_time``.
    value : (Nc, C) array
        Its ``Population.cov_value``.
    mask : (Nc,) bool array
        Its ``Population.cov_mask``.
    t : scalar
        Time; before the first record the first values are returned.

    Returns
    -------
    (C,) array
    """
    time = jnp.asarray(time)
    n_before = jnp.sum(jnp.asarray(mask) & (time <= t))
    return jnp.asarray(value)[jnp.maximum(n_before - 1, 0)]


def split_subjects(population, test_fraction: float = 0.2, seed: int = 0, *,
                   keep_shape: bool = False):
    """``(train, test)``: a random ``test_fraction`` of the subjects held out (numpy
    ``default_rng(seed)``; at least one subject on each side).

    ``keep_shape=True``: ``train`` is the whole population with the held-out subjects'
    observations masked out instead of removed. A subject without observations adds
    exactly nothing to the FOCEI/Laplace likelihood (its EBE is 0 and the two log
    determinants cancel; under NUTS its random effects are drawn from their prior), and
    the arrays keep the shapes of the full data, so a fit reuses the programs compiled
    for it (a FOCEI program with an ODE inside takes minutes to compile).
    """
    n = population.n_subjects
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    test = population.take(test_idx)
    if not keep_shape:
        return population.take(train_idx), test
    mask = np.array(population.obs_mask, copy=True)
    mask[test_idx] = False
    return eqx.tree_at(lambda q: q.obs_mask, population, mask), test
