"""Reading a NONMEM table: :func:`read_nonmem`, and the shipped data sets.

The data layer turns a table into arrays in four steps, one module each:

1. reading (``_table.py``): the file or DataFrame and its separator, the column names
   (matched case-insensitively), every cell parsed as a number;
2. record checks (``_read_checks.py``): cells, ``EVID``, ``AMT``/``DV``, dose items,
   something to fit; then censored observations (``_read_censoring.py``): the limit of
   quantification of each observation below it;
3. subjects (``_assemble.py``): grouping by ``ID``, time order, covariate fill, then the
   warnings and the padding of every subject to the largest;
4. the result (``_data.py``): :class:`~bayes_ude.nlme._data.Population`, with
   :class:`~bayes_ude.nlme._data.NonmemDataError` and ``NonmemDataWarning``.

:func:`read_nonmem` (here) runs the phases in that order. Every problem found goes into
one :class:`NonmemDataError`, the first found first; warnings are issued only for a
table without errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import datasets
from ._assemble import _assemble, _subjects, _warnings
from ._data import NonmemDataError, NonmemDataWarning, Population
from ._read_censoring import censoring_limits
from ._read_checks import _check_cells, _check_fittable, _dose_items, _events
from ._table import _columns, _parse_records, _read_table

__all__ = ["load_theophylline_population", "load_warfarin_population", "read_nonmem"]


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
        measured values (their ``DV`` as given). ``ID``, ``TIME`` and ``DV`` cannot be
        dropped.
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
        a censoring flag other than 0/1 (``CENS -1``, above an upper limit, is not
        supported), a censored observation whose limit is missing or not > 0, a negative
        ``LLOQ``, two limit columns (``LLOQ`` and ``LOQ``).

    Warns
    -----
    NonmemDataWarning
        (a ``UserWarning``) naming the rows: for a subject without observations (kept:
        it contributes no likelihood); subjects without a dose record when others have
        one (a PK model predicts 0 for them); dose records with ``AMT`` 0 (they add
        nothing; a steady-state constant infusion, ``AMT 0, RATE > 0, SS 1``, is not
        warned about); duplicate records (two identical doses are both given; an
        observation repeated with the same ``ID, TIME, CMT, DVID`` and ``DV`` counts
        twice); a file read with a separator other than the comma; observations with
        ``DV`` below ``LLOQ`` whose flag is 0 (fitted as measured). Observations with the
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
    * **Below the limit of quantification** (fitted with Beal's M3 likelihood, ``P(DV <
      LLOQ)``; ``Population.obs_lloq``): an observation with 1 in a flag column ``BLQ``,
      ``BQL``, ``CENS`` or ``CENSORED`` (0 or missing: measured) is censored at the
      ``LLOQ`` (or ``LOQ``) column's value, or, without such a column, at its ``DV`` (as
      NONMEM M3 data are coded: ``DV = LLOQ``); with a limit column, its ``DV`` may be
      missing. With a limit column and no flag column, every observation with ``DV <
      LLOQ`` is censored. A censored observation's ``DV`` becomes its limit. An
      observation with flag 0 but ``DV < LLOQ`` is fitted as measured, one flagged with
      ``DV > LLOQ`` as censored, each with a warning. ``drop=`` of the flag and the limit
      columns fits the values as measured instead (the limit column alone censors ``DV <
      LLOQ``).
    * **CMT** is kept as given; whether it fits a model is the model's question
      (``StructuralModel.check_population``, called by every fit).
    """
    table, sep_name = _read_table(source)
    notes: list[str] = []  # warnings, issued once the table has no errors
    if sep_name is not None:
        notes.append(
            f"the file's header has no comma: read as {sep_name}-separated"
            + (" (a decimal comma, 0,5, reads as 0.5)" if sep_name == "semicolon" else "")
            + "; save it comma-separated to silence this"
        )
    columns = _columns(table, covariates, dvid, drop)  # raises at once: nothing to read
    records = _parse_records(table, columns, character_ids, sep_name == "semicolon")
    problems = _check_cells(records, table)
    events, found = _events(records)
    problems += found
    items, found = _dose_items(records, events)
    problems += found
    problems += _check_fittable(records, events)
    lloq, limit, found, censoring_notes = censoring_limits(records, events.is_obs)
    problems += found
    subjects, found = _subjects(records)
    problems += found
    if problems:
        raise NonmemDataError(problems)

    for note in notes + censoring_notes + _warnings(records, events, items, subjects):
        warnings.warn(note, NonmemDataWarning, stacklevel=2)
    return _assemble(records, events, items, subjects, lloq, limit)


# --------------------------------------------------------------------------------------
# Shipped data sets
# --------------------------------------------------------------------------------------


def load_theophylline_population() -> Population:
    """Theophylline (``datasets/theophylline.csv``) as a :class:`Population`.

    12 subjects, one oral dose each at time 0 (``AMT = Dose x Wt`` mg into CMT 1, the
    depot), 11 concentrations each (mg/L, CMT 2; 132 in all). Covariates ``WT`` (kg) and
    ``DOSE`` (mg/kg).
    """
    return read_nonmem(datasets.load_theophylline_nonmem())


def load_warfarin_population() -> Population:
    """Warfarin PK/PD (``datasets/warfarin_pkpd.csv``) as a :class:`Population`.

    32 subjects, one oral dose each (``amt`` mg, CMT 1); observations with ``dvid`` 1 the
    plasma concentration (mg/L, 251) and 2 the prothrombin complex activity (%, 232), all
    with CMT 1 (the file has no CMT; map ``obs_dvid`` to the model's outputs). The file
    has no EVID: records with ``amt`` are doses. Covariates ``wt`` (kg), ``sex`` (1 male),
    ``age`` (y).
    """
    return read_nonmem(datasets.load_warfarin())
