"""Observations below the limit of quantification: the censoring columns of a table.

A reader phase of the data layer (``_table.py`` -> ``_read_checks.py`` -> this module ->
``_assemble.py``): from the flag columns (``BLQ, BQL, CENS, CENSORED``) and the limit
columns (``LLOQ, LOQ``) found by ``_table._columns``, each record's limit of
quantification where its observation is censored (NaN elsewhere), the problems (each
naming the row and the column) and the warnings. The likelihoods use it as Beal's M3:
a censored observation contributes ``P(y < LLOQ)``.

The coding read (only observation records count; a column given in ``drop=`` is absent,
so its rows are fitted as measured values, as before censoring was supported):

* **a flag column**: 1 marks an observation below the limit, 0 (or missing) a measured
  one; anything else is an error (``CENS -1``, above an upper limit, is not supported).
  Several flag columns: censored where any is 1.
* **the limit** of a flagged observation: the ``LLOQ`` (or ``LOQ``) column when there is
  one (the record's ``DV`` may then be missing), else its ``DV``, as NONMEM M3 data sets
  are coded (``DV = LLOQ`` on flagged records). It must be a number > 0.
* **a limit column without a flag column**: an observation with ``DV < LLOQ`` is censored
  at ``LLOQ`` (its ``DV`` is then not used); ``LLOQ`` missing means no limit.
* with both, an observation with flag 0 and ``DV < LLOQ`` is fitted as measured, with a
  warning; a negative ``LLOQ`` on an observation and two limit columns are errors.
"""

from __future__ import annotations

import numpy as np

from ._data import _CENSORING_FLAGS, _CENSORING_LIMITS
from ._data_text import _MAX_CELLS, _fmt, _rows_text
from ._table import _Records

_NOT_FLAG = "expected 1 for an observation below the limit of quantification, 0 otherwise"


def _flag_and_limit(rec: _Records) -> tuple[list[str], str | None]:
    """The flag columns and the limit column (the first of ``LLOQ, LOQ``) present."""
    names = rec.columns.censoring
    flags = [n for n in names if n.upper() in _CENSORING_FLAGS]
    limits = [n for n in names if n.upper() in _CENSORING_LIMITS]
    return flags, (limits[0] if limits else None)


def _flagged(rec: _Records, flags: list[str]) -> np.ndarray:
    """Records with a flag 1 in any flag column."""
    out = np.zeros(rec.n_rows, dtype=bool)
    for name in flags:
        out |= rec.cols[name.upper()] == 1
    return out


def flagged_with_limit(rec: _Records) -> np.ndarray:
    """Records flagged as censored that have a limit column value: their ``DV`` is not
    needed (``_read_checks._events`` does not ask for it)."""
    flags, limit = _flag_and_limit(rec)
    if not flags or limit is None:
        return np.zeros(rec.n_rows, dtype=bool)
    return _flagged(rec, flags) & rec.ok(limit.upper())


def _each(rec: _Records, idx: np.ndarray, column: str, text) -> list[str]:
    """One line per record (``text(r)``: what is wrong), or one for the column when more
    than a few records share the problem."""
    idx = np.asarray(idx)
    if len(idx) <= _MAX_CELLS:
        return [f"{rec.where(r)}, column {column}: {text(r)}" for r in idx]
    return [f"column {column}: {len(idx)} records ({_rows_text(rec.rows[idx])}), e.g. "
            f"{rec.where(idx[0])}: {text(idx[0])}"]


def _flag_problems(rec: _Records, flags: list[str], is_obs: np.ndarray) -> list[str]:
    problems = []
    for name in flags:
        v = rec.cols[name.upper()]
        bad = is_obs & np.isfinite(v) & ~np.isin(v, (0.0, 1.0))

        def text(r, v=v, name=name):
            upper = " (-1, above an upper limit, is not supported)" if v[r] == -1 else ""
            return f"{name} {_fmt(v[r])} is not 0 or 1{upper}; {_NOT_FLAG}"

        problems += _each(rec, np.nonzero(bad)[0], rec.display[name.upper()], text)
    return problems


def censoring_limits(rec: _Records, is_obs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Each record's limit where its observation is censored (NaN elsewhere), each
    observation's limit where the data give one (the limit column's positive values, and
    the censored ones'; NaN elsewhere), the problems and the warnings (see the module
    docstring for the rules)."""
    lloq = np.full(rec.n_rows, np.nan)
    flags, limit = _flag_and_limit(rec)
    if not flags and limit is None:
        return lloq, lloq.copy(), [], []
    problems: list[str] = []
    notes: list[str] = []
    names = rec.columns.censoring
    extra = [n for n in names if n.upper() in _CENSORING_LIMITS and n != limit]
    for n in extra:
        problems.append(f"column {n}: a second limit column besides {limit} (expected "
                        f"one; leave one out with drop=[{n!r}], command line --drop {n})")
    dv = rec.cols["DV"]
    flag_text = "/".join(flags)
    if limit is not None:
        lim = rec.cols[limit.upper()]
        neg = is_obs & np.isfinite(lim) & (lim < 0)
        problems += _each(rec, np.nonzero(neg)[0], limit, lambda r: (
            f"negative {limit} {_fmt(lim[r])} (expected the limit of quantification, > 0, "
            "or missing)"))
    if flags:
        problems += _flag_problems(rec, flags, is_obs)
        censored = is_obs & _flagged(rec, flags)
        if limit is None:
            value, column = dv, rec.display["DV"]
            what = ("(without an LLOQ column the limit is taken from DV: expected DV = "
                    "the limit, > 0, or an LLOQ column)")
        else:
            value, column = lim, limit
            what = f"(expected the limit of quantification, > 0, in {limit})"
            below = is_obs & ~censored & np.isfinite(lim) & (dv < lim)
            if below.any():
                notes.append(
                    f"column {limit}: {int(below.sum())} observation(s) with DV below "
                    f"{limit} but not flagged ({flag_text} 0; {_rows_text(rec.rows[below])}) "
                    f"are fitted as measured values; set {flag_text} to 1 to fit them as "
                    "censored")
            above = censored & np.isfinite(lim) & np.isfinite(dv) & (dv > lim)
            if above.any():
                notes.append(
                    f"column {limit}: {int(above.sum())} observation(s) flagged as censored "
                    f"({flag_text} 1; {_rows_text(rec.rows[above])}) have a DV above "
                    f"{limit}; they are fitted as below {limit} (their DV is not used): "
                    f"set {flag_text} to 0 to fit them as measured values")
        # without a limit column, a missing DV is reported by _read_checks._events
        missing = censored & ~np.isfinite(value) & (limit is not None)
        problems += _each(rec, np.nonzero(missing)[0], column, lambda r: (
            f"{column} is missing on an observation flagged as censored ({flag_text} 1) "
            f"{what}"))
        small = censored & np.isfinite(value) & (value <= 0)
        problems += _each(rec, np.nonzero(small)[0], column, lambda r: (
            f"{column} {_fmt(value[r])} on an observation flagged as censored "
            f"({flag_text} 1) {what}"))
        lloq = np.where(censored & np.isfinite(value) & (value > 0), value, np.nan)
    else:
        censored = is_obs & np.isfinite(lim) & np.isfinite(dv) & (dv < lim) & (lim > 0)
        lloq = np.where(censored, lim, np.nan)
    known = np.full(rec.n_rows, np.nan) if limit is None else np.where(
        is_obs & np.isfinite(lim) & (lim > 0), lim, np.nan)
    return lloq, np.where(np.isfinite(lloq), lloq, known), problems, notes
