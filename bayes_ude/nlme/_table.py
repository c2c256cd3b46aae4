"""A NONMEM table as text and as numbers: the file, its columns, its cells.

The data layer turns a table into arrays in steps, one module each: reading (this module:
the file and its separator, the column names, every cell parsed) -> record checks
(``_read_checks.py``) -> censored observations (``_read_censoring.py``: the censoring
columns matched here) -> subject checks, warnings and assembly (``_assemble.py``) ->
:class:`~bayes_ude.nlme._data.Population` (``_data.py``). :func:`read_nonmem`
(``_read.py``) runs the phases in order.

The result of this module is :class:`_Records`, the parsed table that every later phase
reads. Non-numeric cells are not reported here but kept in ``_Records.bad`` for
``_read_checks._check_cells``; only :func:`_columns` raises, at once, since without the
required columns nothing after it can be read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._data import (
    _CENSORING_FLAGS,
    _CENSORING_LIMITS,
    _DECIMAL_COMMA,
    _MISSING_STRINGS,
    _REQUIRED,
    _RESERVED,
    NonmemDataError,
)
from ._data_text import _id_value


class _Columns(NamedTuple):
    """The table's columns, matched case-insensitively (after ``drop``)."""

    names: list[str]  # as spelled (blanks stripped), dropped ones removed
    upper: dict[str, str]  # upper-case name -> name as spelled
    dvid: str | None  # the ``dvid`` argument, as given (shown in messages)
    dvid_key: str  # upper-case name of the observation-type column
    cov_names: list[str]  # covariate columns, as spelled
    censoring: list[str]  # censoring columns present (BLQ, ..., LLOQ), as spelled


@dataclasses.dataclass(frozen=True, eq=False)
class _Records:
    """Every record (row) of the table as numbers: the state the later phases read."""

    columns: _Columns
    cols: dict[str, np.ndarray]  # NONMEM items (DVID under "DVID") and censoring columns
    bad: dict[str, np.ndarray]  # per column: the cells that are not numbers
    cov_cols: dict[str, np.ndarray]  # covariates, as spelled; NaN where missing
    labels: list  # character IDs: the text of subject k + 1
    character_ids: bool
    display: dict[str, str]  # column key -> name shown in messages
    rows: np.ndarray  # 1-based data row numbers

    @property
    def n_rows(self) -> int:
        """Number of data rows."""
        return len(self.rows)

    @property
    def ids(self) -> np.ndarray:
        """``ID`` of every record (subject number for character IDs; NaN if missing)."""
        return self.cols["ID"]

    def label(self, x: float):
        """A subject's ID as shown (its text for character IDs)."""
        return self.labels[int(x) - 1] if self.character_ids else _id_value(x)

    def where(self, r: int) -> str:
        """``"row 4 (subject 2)"`` for the record at position ``r``."""
        sid = "?" if not math.isfinite(self.ids[r]) else str(self.label(self.ids[r]))
        return f"row {self.rows[r]} (subject {sid})"

    def ok(self, key: str) -> np.ndarray:
        """Cells present and numeric (bad cells were reported already)."""
        if key not in self.cols:
            return np.zeros(self.n_rows, dtype=bool)
        return np.isfinite(self.cols[key])

    def col(self, key: str, default: float) -> np.ndarray:
        """Column ``key`` with ``default`` where it is absent or missing."""
        if key not in self.cols:
            return np.full(self.n_rows, default)
        return np.where(np.isfinite(self.cols[key]), self.cols[key], default)


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



# ---- columns -------------------------------------------------------------------------


def _columns(
    table: pd.DataFrame,
    covariates: Sequence[str] | None,
    dvid: str | None,
    drop: Sequence[str] | None,
) -> _Columns:
    """Match the column names (strips ``table``'s header); raises on a missing column."""
    problems: list[str] = []
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
    return _Columns(names, upper, dvid, dvid_key, cov_names, censoring)


# ---- numbers -------------------------------------------------------------------------


def _parse_records(
    table: pd.DataFrame, columns: _Columns, character_ids: bool, decimal_comma: bool
) -> _Records:
    """Every used column as float64 (NaN for missing), with its non-numeric cells."""
    upper, dvid_key, cov_names = columns.upper, columns.dvid_key, columns.cov_names
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
    for name in columns.censoring:
        cols[name.upper()], bad[name.upper()] = _parse(table[name], decimal_comma)
    dvid = columns.dvid
    display = {k: (dvid if k == "DVID" and dvid is not None else upper.get(k, k)) for k in cols}
    display.update({n: n for n in cov_names})
    return _Records(
        columns=columns, cols=cols, bad=bad, cov_cols=cov_cols, labels=labels,
        character_ids=character_ids, display=display, rows=np.arange(1, len(table) + 1),
    )
