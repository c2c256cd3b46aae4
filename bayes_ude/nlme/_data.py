"""NONMEM-style data tables -> a padded, masked :class:`Population` of arrays.

A NONMEM table has one row per *record* (event) of a subject::

    ID, TIME, DV, AMT, EVID, MDV, CMT, RATE, II, ADDL, SS  [, DVID]  [, covariates...]

:func:`read_nonmem` validates such a table (collecting every problem into one
:class:`NonmemDataError`) and converts it into a :class:`Population`: for each kind of
record (observations, doses, resets, covariate change points) a ``(subjects, records)``
array padded to the largest subject and a boolean mask, so that a model evaluates all
subjects at once with :func:`jax.vmap` over axis 0 -- never a Python loop over subjects.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, ArrayLike

__all__ = [
    "NonmemDataError",
    "NonmemDataWarning",
    "Population",
    "covariates_at",
    "load_theophylline_population",
    "load_warfarin_population",
    "read_nonmem",
]

# Columns with a NONMEM meaning; everything else is a covariate (or ignored, see
# ``read_nonmem(covariates=...)``).
_REQUIRED = ("ID", "TIME", "DV")
_OPTIONAL = ("AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS", "DVID")
_RESERVED = _REQUIRED + _OPTIONAL
# Columns that mark observations below the limit of quantification (a non-zero flag) or
# give that limit (``DV < LLOQ``). Censored likelihoods (Beal's M3) are not implemented,
# so flagged observations are an error; they are never covariates.
_CENSORING_FLAGS = ("BLQ", "BQL", "CENS", "CENSORED")
_CENSORING_LIMITS = ("LLOQ", "LOQ")

# Values read as "missing" in a cell (NONMEM writes ``.``).
_MISSING_STRINGS = frozenset({"", ".", "NA", "NAN", "NAN.", "NULL"})

# How many problems the error message lists (all are in ``NonmemDataError.problems``).
_MAX_SHOWN = 20
# How many rows a message lists before "... (N in all)"; and how many non-numeric cells
# of one column get a line each before they are summarised in one line for the column.
_MAX_ROWS = 10
_MAX_CELLS = 3
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
        (time non-decreasing). Padding: time = the subject's last observation time (so a
        solver never has to go backwards; the first record's time for a subject without
        observations), dv = 0.
    obs_mask : (S, No) bool
    obs_cmt, obs_dvid : (S, No) int64
        Compartment (``CMT``, default 1) and observation type (``DVID``, default 1);
        padding 1.
    obs_row : (S, No) int64
        The observation's 1-based data row in the table (-1 for padding), for
        diagnostics.
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
        subject has many more than the rest (every subject is computed at that size)."""
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
                          cmt_given=self.cmt_given, **leaves)

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
            input table) and then the covariates at the observation; subjects in order,
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
    if name not in ("ids", "covariate_names", "cmt_given")
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


# --------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------


_SEPARATORS = {";": "semicolon", "\t": "tab"}


def _first_line(path) -> str | None:
    """The header line of a CSV file (first line with something before any ``#``)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            text = line.split("#", 1)[0]
            if text.strip():
                return text.rstrip("\r\n")
    return None


def _read_table(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The table and, for a file that is not comma-separated, the separator's name."""
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), None
    empty = NonmemDataError(
        ["the file is empty: no header and no rows (expected a CSV table with a header "
         "line such as ID,TIME,DV,AMT,EVID,CMT)"]
    )
    sep, sep_name = ",", None
    if isinstance(source, str | Path):
        header = _first_line(source)
        if header is None:
            raise empty
        if "," not in header:
            # A one-column reading would report "required column is missing" for a table
            # that is merely not comma-separated: read it with its own separator.
            for candidate, name in _SEPARATORS.items():
                if candidate in header:
                    sep, sep_name = candidate, name
                    break
            else:
                if len(header.split()) > 1:
                    sep, sep_name = r"\s+", "whitespace"
    # Everything as text, so that a non-numeric cell is reported rather than silently
    # turning its whole column into strings or NaN.
    try:
        table = pd.read_csv(
            source, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
            comment="#",
        )
    except pd.errors.EmptyDataError:
        raise empty from None
    return table, sep_name


def _parse(series: pd.Series, decimal_comma: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Column -> (float64 values with NaN for missing, bool 'not a number' mask)."""
    n = len(series)
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = pd.to_numeric(series, errors="coerce")
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isinf(values)
        return values, bad
    values = np.full(n, np.nan)
    bad = np.zeros(n, dtype=bool)
    for k, raw in enumerate(series.tolist()):
        if raw is None or raw is pd.NA or (isinstance(raw, float) and math.isnan(raw)):
            continue
        text = str(raw).strip()
        if text.upper() in _MISSING_STRINGS:
            continue
        if decimal_comma and _DECIMAL_COMMA.fullmatch(text):
            text = text.replace(",", ".")
        try:
            x = float(text)
        except ValueError:
            bad[k] = True
            continue
        if not math.isfinite(x):
            bad[k] = True
            continue
        values[k] = x
    return values, bad


def _rows_text(rows: Sequence[int], limit: int = _MAX_ROWS) -> str:
    """``"row 4"``, ``"rows 4, 9, 12"``, ``"rows 4, 9, ... (37 in all)"``."""
    rows = [int(r) for r in rows]
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(map(str, rows[:limit]))
    return f"rows {shown}" + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def _id_value(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _fmt(x: float) -> str:
    return str(_id_value(x)) if math.isfinite(x) else "missing"


def read_nonmem(
    source: str | Path | pd.DataFrame,
    *,
    covariates: Sequence[str] | None = None,
    dvid: str | None = None,
    drop: Sequence[str] | None = None,
    character_ids: bool = False,
) -> Population:
    """Read and validate a NONMEM-style table into a :class:`Population`.

    Parameters
    ----------
    source : str, Path or pandas.DataFrame
        A CSV file (``.`` or an empty cell is missing; lines starting with ``#`` are
        skipped) or a DataFrame. Column names are matched case-insensitively. A file
        whose header has no comma but a semicolon, a tab or spaces is read with that
        separator (with a :class:`NonmemDataWarning`; in a semicolon-separated file a
        decimal comma, ``0,5``, is read as ``0.5``).
    covariates : sequence of str, optional
        The covariate columns (any case). Default: every column that is not one of
        ``ID, TIME, DV, AMT, EVID, MDV, CMT, RATE, II, ADDL, SS, DVID`` (nor ``dvid``, nor
        a censoring column ``BLQ, BQL, CENS, CENSORED, LLOQ, LOQ``). Given explicitly,
        other extra columns are ignored (so a text column need not be numeric).
    dvid : str, optional
        Name of the column holding the observation type; default ``DVID`` when present
        (otherwise every observation has type 1).
    drop : sequence of str, optional
        Columns (any case) to ignore as if absent: e.g. a text column that is not a
        covariate, or a censoring column whose flagged observations should be fitted as
        measured values. ``ID``, ``TIME`` and ``DV`` cannot be dropped.
    character_ids : bool
        Read ``ID`` as text (e.g. ``"A01"``): subjects are told apart by the text (after
        stripping blanks) and numbered 1, 2, ... in order of first appearance, their
        position in the :class:`Population`; ``Population.ids`` keeps the text, so
        tables of results show it. Default ``False``: ``ID`` must be numeric.

    Returns
    -------
    Population

    Raises
    ------
    NonmemDataError
        Listing every problem found (subject, row, column, what was expected): a missing
        required column (``ID, TIME, DV``; ``AMT`` when there are dose records), a
        non-numeric value, decreasing ``TIME`` within a subject, a dose without ``AMT``,
        an observation without ``DV``, an unknown ``EVID``, a negative ``AMT`` or
        ``RATE``, ``RATE = -1/-2`` (modelled rate/duration, not supported), ``ADDL > 0``
        without ``II > 0``, ``SS`` other than 0/1, a subject whose covariate is missing
        on every record; an empty file, a table without rows or without any observation;
        observations flagged by a censoring column (``BLQ``, ``BQL``, ``CENS``,
        ``CENSORED`` non-zero, or ``DV`` below ``LLOQ``/``LOQ``): censored (M3)
        likelihoods are not implemented, so they would be fitted as measured values.

    Warns
    -----
    NonmemDataWarning
        (a ``UserWarning``) naming the rows: for a subject without observations (kept:
        it contributes no likelihood); subjects without a dose record when others have
        one (a PK model predicts 0 for them); dose records with ``AMT`` 0 (they add
        nothing; a steady-state constant infusion, ``AMT 0, RATE > 0, SS 1``, is not
        warned about); duplicate records (two identical doses are both given; an
        observation repeated with the same ``ID, TIME, CMT, DVID`` and ``DV`` counts
        twice); a file read with a separator other than the comma. Observations with the
        same ``ID, TIME, CMT, DVID`` but different ``DV`` are replicate measurements,
        fitted as independent ones without a warning.

    Notes
    -----
    * **Records.** ``EVID`` 0 is an observation (unless ``MDV = 1``: then it is an
      "other" record and ignored), 1 a dose, 2 other (ignored, but its covariates count),
      3 a reset, 4 a reset followed by a dose. Without an ``EVID`` column: a record with
      ``AMT`` present and non-zero is a dose, else one with ``MDV = 1`` is "other", else
      an observation.
    * **Subjects** are taken in order of first appearance of their ``ID``; the rows of a
      subject need not be contiguous (they are gathered stably). ``TIME`` must not
      decrease within a subject (the table is never re-sorted silently; this holds
      across resets too).
    * **Defaults:** ``CMT`` 1 (for doses and observations alike; missing or 0 also mean
      1), ``DVID`` 1, ``RATE``, ``II``, ``ADDL``, ``SS`` 0.
    * **ADDL/II:** a dose with ``ADDL = n`` is followed by ``n`` more at ``II, 2 II,
      ...`` after it (same amount, rate and compartment; not steady-state flagged). They
      are kept as scheduled even past a later reset.
    * **Covariates** must be numeric; a missing value is filled with the subject's last
      value before it (last observation carried forward), leading missing ones with the
      first value present. A text column that is not needed: ``drop=[name]``, or name
      the covariates to keep with ``covariates=[...]``.
    * **CMT** is kept as given; whether it fits a model is the model's question
      (``StructuralModel.check_population``, called by every fit).
    """
    table, sep_name = _read_table(source)
    problems: list[str] = []
    notes: list[str] = []  # warnings, issued once the table has no errors
    if sep_name is not None:
        notes.append(
            f"the file's header has no comma: read as {sep_name}-separated"
            + (" (a decimal comma, 0,5, reads as 0.5)" if sep_name == "semicolon" else "")
            + "; save it comma-separated to silence this"
        )

    # ---- columns ---------------------------------------------------------------------
    names = [str(c).strip() for c in table.columns]
    table.columns = names
    if len(table) == 0:
        raise NonmemDataError(
            [f"the table has a header ({', '.join(names)}) but no data rows"]
        )
    upper: dict[str, str] = {}
    for name in names:
        key = name.upper()
        if key in upper:
            problems.append(
                f"column {name}: appears twice (as {upper[key]!r} and {name!r}; column "
                "names are case-insensitive)"
            )
        else:
            upper[key] = name
    for c in drop or ():
        key = str(c).strip().upper()
        if key in _REQUIRED:
            problems.append(
                f"column {upper.get(key, c)}: a required column (ID, TIME, DV) cannot be "
                "dropped"
            )
        elif key not in upper:
            problems.append(
                f"column {c}: given to drop, but the table has no such column (columns "
                f"found: {', '.join(names)})"
            )
        else:
            names.remove(upper.pop(key))
    dvid_key = dvid.strip().upper() if dvid is not None else "DVID"
    if dvid is not None and dvid_key not in upper:
        problems.append(f"column {dvid}: the observation-type column given as dvid is missing")
    for req in _REQUIRED:
        if req not in upper:
            problems.append(
                f"column {req}: required column is missing (columns found: {', '.join(names)})"
            )
    reserved = set(_RESERVED) | {dvid_key}
    censoring = [upper[k] for k in (*_CENSORING_FLAGS, *_CENSORING_LIMITS) if k in upper]
    if covariates is None:
        cov_names = [
            n for n in names if n.upper() not in reserved and n not in censoring
        ]
    else:
        cov_names = []
        for c in covariates:
            key = str(c).strip().upper()
            if key not in upper:
                problems.append(f"column {c}: covariate column is missing")
            elif key in reserved:
                problems.append(f"column {c}: a NONMEM data item cannot be a covariate")
            else:
                cov_names.append(upper[key])
    if problems:
        raise NonmemDataError(problems)

    n_rows = len(table)
    rows = np.arange(1, n_rows + 1)

    # ---- numbers -----------------------------------------------------------------------
    decimal_comma = sep_name == "semicolon"
    cols: dict[str, np.ndarray] = {}
    bad: dict[str, np.ndarray] = {}
    for key in [*(k for k in _RESERVED if k != "DVID"), "DVID"]:
        col_key = dvid_key if key == "DVID" else key
        if col_key in upper:
            cols[key], bad[key] = _parse(table[upper[col_key]], decimal_comma)
    labels: list = []  # character IDs: the text of subject k + 1
    if character_ids:
        text = table[upper["ID"]].map(
            lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x))
            else str(x).strip()
        )
        missing = text.str.upper().isin(_MISSING_STRINGS).to_numpy()
        codes, uniques = pd.factorize(text.where(~missing))  # order of first appearance
        labels = list(uniques)
        cols["ID"] = np.where(codes >= 0, codes + 1.0, np.nan)
        bad["ID"] = np.zeros(len(table), dtype=bool)
    cov_cols = {}
    for name in cov_names:
        cov_cols[name], bad[name] = _parse(table[name], decimal_comma)
    for name in censoring:
        cols[name.upper()], bad[name.upper()] = _parse(table[name], decimal_comma)

    ids = cols["ID"]

    def label(x: float):
        """A subject's ID as shown (its text for character IDs)."""
        return labels[int(x) - 1] if character_ids else _id_value(x)

    def where(r: int) -> str:
        sid = "?" if not math.isfinite(ids[r]) else str(label(ids[r]))
        return f"row {rows[r]} (subject {sid})"

    display = {k: (dvid if k == "DVID" and dvid is not None else upper.get(k, k)) for k in cols}
    display.update({n: n for n in cov_names})
    raw_cells = {k: table[upper[dvid_key if k == "DVID" else k]] for k in cols}
    raw_cells.update({n: table[n] for n in cov_names})
    for key, mask in bad.items():
        hint = "use '.' for missing"
        values = [str(raw_cells[key].iloc[r]).strip() for r in np.nonzero(mask)[0]]
        if key == "ID":
            hint += (
                "; for IDs that are text, read with character_ids=True (command line: "
                "--character-ids)"
            )
        elif key in cov_names:
            hint += (
                f"; covariates must be numbers: recode the column, or leave it out with "
                f"drop=[{key!r}] (command line: --drop {key}) or keep only the covariates "
                "you need with covariates=[...] (--covariates)"
            )
        elif key == "DV" and any(
            v.startswith("<") or re.search("BLQ|BQL|LOQ", v.upper()) for v in values
        ):
            hint += (
                "; values below the limit of quantification cannot be fitted yet (M3 is "
                "not implemented): set MDV=1 on those records, or delete them"
            )
        idx = np.nonzero(mask)[0]
        if len(idx) <= _MAX_CELLS:
            for r, v in zip(idx, values, strict=True):
                problems.append(
                    f"{where(r)}, column {display[key]}: {v!r} is not a number ({hint})"
                )
        else:
            examples = ", ".join(repr(v) for v in list(dict.fromkeys(values))[:3])
            problems.append(
                f"column {display[key]}: {len(idx)} values are not numbers ({examples}, ...; "
                f"{_rows_text(rows[idx])}) ({hint})"
            )

    def ok(key: str) -> np.ndarray:
        """Cells present and numeric (bad cells were reported already)."""
        if key not in cols:
            return np.zeros(n_rows, dtype=bool)
        return np.isfinite(cols[key])

    for r in np.nonzero(~ok("ID") & ~bad["ID"])[0]:
        problems.append(f"{where(r)}, column {display['ID']}: ID is missing")
    for r in np.nonzero(~ok("TIME") & ~bad["TIME"])[0]:
        problems.append(f"{where(r)}, column {display['TIME']}: TIME is missing")

    def col(key: str, default: float) -> np.ndarray:
        if key not in cols:
            return np.full(n_rows, default)
        return np.where(np.isfinite(cols[key]), cols[key], default)

    amt_present = ok("AMT")
    amt = col("AMT", 0.0)
    mdv_present = "MDV" in cols
    mdv = col("MDV", 0.0)
    for r in np.nonzero(ok("MDV") & ~np.isin(mdv, (0.0, 1.0)))[0]:
        problems.append(
            f"{where(r)}, column {display['MDV']}: MDV must be 0 or 1, got {_fmt(mdv[r])}"
        )

    # ---- EVID --------------------------------------------------------------------------
    if "EVID" in cols:
        evid = cols["EVID"]
        for r in np.nonzero(~ok("EVID") & ~bad["EVID"])[0]:
            problems.append(
                f"{where(r)}, column {display['EVID']}: EVID is missing (expected 0-4)"
            )
        known = np.isin(evid, (0.0, 1.0, 2.0, 3.0, 4.0))
        for r in np.nonzero(ok("EVID") & ~known)[0]:
            problems.append(
                f"{where(r)}, column {display['EVID']}: unknown EVID {_fmt(evid[r])} "
                "(expected 0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose)"
            )
        evid = np.where(known, evid, -1.0).astype(np.int64)
        derived = False
    else:
        evid = np.where(
            amt_present & (amt != 0), 1, np.where(mdv_present & (mdv == 1), 2, 0)
        ).astype(np.int64)
        derived = True

    is_dose = (evid == 1) | (evid == 4)
    is_reset = (evid == 3) | (evid == 4)
    is_obs = (evid == 0) & (mdv != 1)

    if is_dose.any() and "AMT" not in cols:
        problems.append(
            f"column AMT: required column is missing (the table has dose records, EVID 1 "
            f"or 4, e.g. {where(int(np.argmax(is_dose)))})"
        )
    elif "AMT" in cols:
        for r in np.nonzero(is_dose & ~amt_present & ~bad["AMT"])[0]:
            problems.append(
                f"{where(r)}, column {display['AMT']}: dose record (EVID {evid[r]}) without "
                "AMT (expected the amount given)"
            )
        for r in np.nonzero(amt_present & (amt < 0))[0]:
            problems.append(
                f"{where(r)}, column {display['AMT']}: negative AMT {_fmt(amt[r])} "
                "(expected >= 0)"
            )

    dv_present = ok("DV")
    if derived:
        hint = " (EVID derived as 0: no AMT; set MDV=1 for a non-observation record)"
    else:
        hint = " (set MDV=1 or EVID=2 for a non-observation record)"
    for r in np.nonzero(is_obs & ~dv_present & ~bad["DV"])[0]:
        problems.append(
            f"{where(r)}, column {display['DV']}: observation record without DV{hint}"
        )

    # ---- dose items --------------------------------------------------------------------
    rate = col("RATE", 0.0)
    for r in np.nonzero(ok("RATE") & np.isin(rate, (-1.0, -2.0)))[0]:
        what = "rate" if rate[r] == -1 else "duration"
        problems.append(
            f"{where(r)}, column {display['RATE']}: RATE {_fmt(rate[r])} (modelled infusion "
            f"{what}) is not supported; give the rate (> 0) or 0 for a bolus"
        )
    for r in np.nonzero(ok("RATE") & (rate < 0) & ~np.isin(rate, (-1.0, -2.0)))[0]:
        problems.append(
            f"{where(r)}, column {display['RATE']}: negative RATE {_fmt(rate[r])} "
            "(expected >= 0)"
        )
    ii = col("II", 0.0)
    addl = col("ADDL", 0.0)
    ss = col("SS", 0.0)
    for r in np.nonzero(ok("II") & (ii < 0))[0]:
        problems.append(f"{where(r)}, column {display['II']}: negative II {_fmt(ii[r])}")
    for r in np.nonzero(ok("ADDL") & ((addl < 0) | (addl != np.round(addl))))[0]:
        problems.append(
            f"{where(r)}, column {display['ADDL']}: ADDL {_fmt(addl[r])} is not a "
            "non-negative integer"
        )
    for r in np.nonzero(is_dose & (addl > 0) & (ii <= 0))[0]:
        problems.append(
            f"{where(r)}, column {upper.get('II', 'II')}: ADDL {_fmt(addl[r])} additional "
            "doses need an interdose interval II > 0"
        )
    for r in np.nonzero(ok("SS") & ~np.isin(ss, (0.0, 1.0)))[0]:
        problems.append(
            f"{where(r)}, column {display['SS']}: SS {_fmt(ss[r])} is not supported "
            "(expected 0, or 1 for steady state)"
        )
    for r in np.nonzero(is_dose & (ss == 1) & (ii <= 0) & ~((amt == 0) & (rate > 0)))[0]:
        problems.append(
            f"{where(r)}, column {upper.get('II', 'II')}: a steady-state dose (SS 1) needs "
            "II > 0 (or AMT 0 with RATE > 0 for a constant infusion)"
        )
    cmt = col("CMT", 1.0)
    for r in np.nonzero(ok("CMT") & ((cmt < 0) | (cmt != np.round(cmt))))[0]:
        problems.append(
            f"{where(r)}, column {display['CMT']}: CMT {_fmt(cmt[r])} is not a positive "
            "integer"
        )
    cmt = np.where(cmt == 0, 1.0, cmt)
    dvid_v = col("DVID", 1.0)
    for r in np.nonzero(ok("DVID") & ((dvid_v < 1) | (dvid_v != np.round(dvid_v))))[0]:
        problems.append(
            f"{where(r)}, column {display['DVID']}: DVID {_fmt(dvid_v[r])} is not a "
            "positive integer"
        )

    # ---- nothing to fit, or censored observations fitted as measured -------------------
    if not is_obs.any():
        problems.append(
            "the table has no observation records (EVID 0, or no EVID column, with MDV not "
            "1 and a DV): there is nothing to fit"
        )
    for name in censoring:
        v = cols[name.upper()]
        if name.upper() in _CENSORING_FLAGS:
            flagged = is_obs & np.isfinite(v) & (v != 0)
            what = f"flagged as censored ({name} not 0)"
        else:
            flagged = is_obs & dv_present & np.isfinite(v) & (cols["DV"] < v)
            what = f"with DV below {name}"
        if flagged.any():
            problems.append(
                f"column {name}: {int(flagged.sum())} observation(s) {what} "
                f"({_rows_text(rows[flagged])}): censored likelihoods (Beal's M3) are not "
                "implemented, so they would be fitted as measured values. Exclude them "
                "(MDV=1 on those records, or delete them), or, to fit DV as given, drop the "
                f"column (drop=[{name!r}], command line --drop {name})"
            )

    # ---- subjects: grouping, time order, covariate fill --------------------------------
    valid_id = ok("ID")
    subject_ids: list[float] = list(dict.fromkeys(ids[valid_id].tolist()))
    groups = [np.nonzero(ids == sid)[0] for sid in subject_ids]  # ascending: stable
    time = cols["TIME"]
    for g in groups:
        tg = time[g]
        have = np.isfinite(tg)
        last = -np.inf
        for r, t, h in zip(g, tg, have, strict=True):
            if not h:
                continue
            if t < last:
                problems.append(
                    f"{where(r)}, column {display['TIME']}: TIME {_fmt(t)} is before the "
                    f"subject's previous record ({_fmt(last)}); TIME must not decrease "
                    "within a subject (sort the table)"
                )
            last = max(last, t)

    cov_filled = np.full((n_rows, len(cov_names)), np.nan)
    for c, name in enumerate(cov_names):
        v = cov_cols[name]
        for g in groups:
            vg = pd.Series(v[g]).ffill().bfill().to_numpy()
            if np.isnan(vg).all() and not bad[name][g].any():
                problems.append(
                    f"{where(int(g[0]))}, column {name}: covariate is missing on every "
                    "record of the subject"
                )
            cov_filled[g, c] = vg

    if problems:
        raise NonmemDataError(problems)

    # ---- readable, but probably not what was meant: warnings naming the rows -----------
    group_of = dict(zip(subject_ids, groups, strict=True))

    def subjects_text(sids) -> str:
        parts = [
            f"{label(sid)} (rows {rows[group_of[sid][0]]}-{rows[group_of[sid][-1]]})"
            for sid in sids[:_MAX_ROWS]
        ]
        more = f", ... ({len(sids)} in all)" if len(sids) > _MAX_ROWS else ""
        return ", ".join(parts) + more

    def same_records(select: np.ndarray, keys: dict[str, np.ndarray], value: np.ndarray):
        """Groups (rows, differ) of selected records equal in ``keys``; ``differ``:
        whether their ``value`` differs."""
        idx = np.nonzero(select)[0]
        frame = pd.DataFrame({k: v[idx] for k, v in keys.items()})
        dup = frame.duplicated(keep=False).to_numpy()
        if not dup.any():
            return []
        frame = frame[dup].assign(_value=value[idx[dup]], _row=rows[idx[dup]])
        return [
            (grp["_row"].tolist(), grp["_value"].nunique(dropna=False) > 1, grp.iloc[0])
            for _, grp in frame.groupby(list(keys), sort=False)
        ]

    def listing(found) -> str:
        parts = [
            f"{_rows_text(r)} (subject {label(first['id'])}, TIME {_fmt(first['time'])})"
            for r, _, first in found[:_MAX_ROWS]
        ]
        more = f"; ... ({len(found)} sets in all)" if len(found) > _MAX_ROWS else ""
        return "; ".join(parts) + more

    obs_keys = {"id": ids, "time": time, "cmt": cmt, "dvid": dvid_v}
    # Observations at one ID, TIME, CMT and DVID with different DV are replicate
    # measurements (warfarin's subject 8 has four pairs): fitted as independent, no warning.
    copies = [f for f in same_records(is_obs, obs_keys, cols["DV"]) if not f[1]]
    if copies:
        notes.append(
            "duplicate observation records (same ID, TIME, CMT, DVID and DV): "
            f"{listing(copies)}; each is fitted as a separate measurement, so a copied "
            "record counts twice: delete the copies"
        )
    dose_keys = {"id": ids, "time": time, "cmt": cmt, "evid": evid.astype(np.float64),
                 "amt": amt, "rate": rate, "ii": ii, "addl": addl, "ss": ss}
    found = same_records(is_dose, dose_keys, amt)
    if found:
        notes.append(
            f"identical dose records: {listing(found)}; every one is given, so the subject "
            "gets the dose more than once: delete the copies if they are copies"
        )
    zero = is_dose & (amt == 0) & ~((ss == 1) & (rate > 0))
    if zero.any():
        notes.append(
            f"dose records with AMT 0 give no drug: {_rows_text(rows[zero])} (subject(s) "
            f"{', '.join(str(label(x)) for x in dict.fromkeys(ids[zero].tolist()))}); give "
            "the amount, or use EVID 2 for a record that only carries covariates, EVID 3 "
            "for a reset alone"
        )
    if is_dose.any():
        dosed = set(ids[is_dose].tolist())
        undosed = [sid for sid in subject_ids if sid not in dosed]
        if undosed:
            notes.append(
                f"{len(undosed)} subject(s) without a dose record while others have one: "
                f"{subjects_text(undosed)}; a PK model predicts 0 for them (doses before "
                "the first observation must be in the table, e.g. SS=1 for steady state)"
            )
    no_obs = [sid for sid in subject_ids if not is_obs[group_of[sid]].any()]
    if len(no_obs) == 1:
        g = group_of[no_obs[0]]
        notes.append(
            f"subject {label(no_obs[0])} (rows {rows[g[0]]}-{rows[g[-1]]}) has no "
            "observations; it is kept but contributes no likelihood"
        )
    elif no_obs:
        notes.append(
            f"{len(no_obs)} subjects have no observations: {subjects_text(no_obs)}; they "
            "are kept but contribute no likelihood"
        )
    for note in notes:
        warnings.warn(note, NonmemDataWarning, stacklevel=2)

    # ---- assemble per subject (data preparation; the model never loops) ---------------
    n_cov = len(cov_names)
    per_subject = []
    for sid, g in zip(subject_ids, groups, strict=True):
        tg = time[g]
        obs = g[is_obs[g]]
        dose_items = []  # (time, order, amt, rate, ii, cmt, ss, row)
        for order, r in enumerate(g[is_dose[g]]):
            dose_items.append((time[r], 0, order, amt[r], rate[r], ii[r], cmt[r], ss[r] == 1, r))
            for k in range(1, int(addl[r]) + 1):
                dose_items.append(
                    (time[r] + k * ii[r], 1, order, amt[r], rate[r], ii[r], cmt[r], False, r)
                )
        dose_items.sort(key=lambda d: (d[0], d[1], d[2]))
        resets = g[is_reset[g]]
        cg = cov_filled[g]
        change = [0] + [
            k for k in range(1, len(g)) if not np.array_equal(cg[k], cg[k - 1])
        ]
        dose_times = np.array([d[0] for d in dose_items], dtype=np.float64)
        # Covariates at a dose: a table dose record's own (filled) values; an ADDL dose
        # takes those of the subject's last record at or before its time (LOCF).
        pos = np.searchsorted(tg, dose_times, side="right") - 1
        dose_cov = np.array(
            [
                cov_filled[d[8]] if d[1] == 0 else cg[max(p, 0)]
                for d, p in zip(dose_items, pos, strict=True)
            ]
        ).reshape(len(dose_items), n_cov)
        per_subject.append(
            dict(
                id=label(sid),
                first_time=float(tg[0]),
                obs=obs,
                doses=dose_items,
                dose_cov=dose_cov,
                resets=resets,
                cov_rows=g[change],
            )
        )

    n_sub = len(per_subject)
    n_o = max((len(p["obs"]) for p in per_subject), default=0)
    n_d = max((len(p["doses"]) for p in per_subject), default=0)
    n_r = max((len(p["resets"]) for p in per_subject), default=0)
    n_c = max((len(p["cov_rows"]) for p in per_subject), default=0)

    out = dict(
        obs_time=np.zeros((n_sub, n_o)),
        obs_dv=np.zeros((n_sub, n_o)),
        obs_mask=np.zeros((n_sub, n_o), dtype=bool),
        obs_cmt=np.ones((n_sub, n_o), dtype=np.int64),
        obs_dvid=np.ones((n_sub, n_o), dtype=np.int64),
        obs_row=np.full((n_sub, n_o), -1, dtype=np.int64),
        obs_cov=np.zeros((n_sub, n_o, n_cov)),
        dose_time=np.zeros((n_sub, n_d)),
        dose_amt=np.zeros((n_sub, n_d)),
        dose_rate=np.zeros((n_sub, n_d)),
        dose_ii=np.zeros((n_sub, n_d)),
        dose_cmt=np.ones((n_sub, n_d), dtype=np.int64),
        dose_ss=np.zeros((n_sub, n_d), dtype=bool),
        dose_mask=np.zeros((n_sub, n_d), dtype=bool),
        dose_row=np.full((n_sub, n_d), -1, dtype=np.int64),
        dose_cov=np.zeros((n_sub, n_d, n_cov)),
        reset_time=np.zeros((n_sub, n_r)),
        reset_mask=np.zeros((n_sub, n_r), dtype=bool),
        cov_baseline=np.zeros((n_sub, n_cov)),
        cov_time=np.zeros((n_sub, n_c)),
        cov_value=np.zeros((n_sub, n_c, n_cov)),
        cov_mask=np.zeros((n_sub, n_c), dtype=bool),
    )
    for s, p in enumerate(per_subject):
        obs, k = p["obs"], len(p["obs"])
        pad_time = time[obs[-1]] if k else p["first_time"]
        pad_cov = cov_filled[obs[-1]] if k else cov_filled[p["cov_rows"][0]]
        out["obs_time"][s] = pad_time
        out["obs_time"][s, :k] = time[obs]
        out["obs_dv"][s, :k] = cols["DV"][obs]
        out["obs_mask"][s, :k] = True
        out["obs_cmt"][s, :k] = cmt[obs].astype(np.int64)
        out["obs_dvid"][s, :k] = dvid_v[obs].astype(np.int64)
        out["obs_row"][s, :k] = rows[obs]
        out["obs_cov"][s] = pad_cov
        out["obs_cov"][s, :k] = cov_filled[obs]

        doses, k = p["doses"], len(p["doses"])
        out["dose_time"][s] = p["first_time"]
        if k:
            out["dose_time"][s, :k] = [d[0] for d in doses]
            out["dose_amt"][s, :k] = [d[3] for d in doses]
            out["dose_rate"][s, :k] = [d[4] for d in doses]
            out["dose_ii"][s, :k] = [d[5] for d in doses]
            out["dose_cmt"][s, :k] = [int(d[6]) for d in doses]
            out["dose_ss"][s, :k] = [d[7] for d in doses]
            out["dose_row"][s, :k] = [rows[d[8]] for d in doses]
            out["dose_cov"][s, :k] = p["dose_cov"]
        out["dose_mask"][s, :k] = True
        out["dose_cov"][s, k:] = pad_cov

        resets, k = p["resets"], len(p["resets"])
        out["reset_time"][s] = p["first_time"]
        out["reset_time"][s, :k] = time[resets]
        out["reset_mask"][s, :k] = True

        crow, k = p["cov_rows"], len(p["cov_rows"])
        out["cov_baseline"][s] = cov_filled[crow[0]]
        out["cov_time"][s] = time[crow[-1]]
        out["cov_time"][s, :k] = time[crow]
        out["cov_value"][s] = cov_filled[crow[-1]]
        out["cov_value"][s, :k] = cov_filled[crow]
        out["cov_mask"][s, :k] = True

    return Population(
        ids=tuple(p["id"] for p in per_subject),
        covariate_names=tuple(cov_names),
        cmt_given="CMT" in upper,
        **out,
    )


# --------------------------------------------------------------------------------------
# Shipped data sets
# --------------------------------------------------------------------------------------


def load_theophylline_population() -> Population:
    """Theophylline (``datasets/theophylline.csv``) as a :class:`Population`.

    12 subjects, one oral dose each at time 0 (``AMT = Dose x Wt`` mg into CMT 1, the
    depot), 11 concentrations each (mg/L, CMT 2; 132 in all). Covariates ``WT`` (kg) and
    ``DOSE`` (mg/kg).
    """
    from .. import datasets

    return read_nonmem(datasets.load_theophylline_nonmem())


def load_warfarin_population() -> Population:
    """Warfarin PK/PD (``datasets/warfarin_pkpd.csv``) as a :class:`Population`.

    32 subjects, one oral dose each (``amt`` mg, CMT 1); observations with ``dvid`` 1 the
    plasma concentration (mg/L, 251) and 2 the prothrombin complex activity (%, 232), all
    with CMT 1 (the file has no CMT; map ``obs_dvid`` to the model's outputs). The file
    has no EVID: records with ``amt`` are doses. Covariates ``wt`` (kg), ``sex`` (1 male),
    ``age`` (y).
    """
    from .. import datasets

    return read_nonmem(datasets.load_warfarin())
