"""Record-level checks of a parsed NONMEM table: cells, ``EVID``, dose items.

The data layer turns a table into arrays in steps, one module each: reading
(``_table.py``) -> record checks (this module) -> censored observations
(``_read_censoring.py``) -> subject checks, warnings and assembly (``_assemble.py``) ->
:class:`~bayes_ude.nlme._data.Population` (``_data.py``).
:func:`read_nonmem` (``_read.py``) runs the phases in order.

Every phase here returns what it found wrong as a list of lines, in the order found;
:func:`read_nonmem` raises one :class:`~bayes_ude.nlme._data.NonmemDataError` listing
them all once the subject checks are done too.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._data_text import _MAX_CELLS, _fmt, _rows_text
from ._read_censoring import flagged_with_limit
from ._table import _Records


class _Events(NamedTuple):
    """What each record is: observation, dose, reset (from ``EVID``, or derived)."""

    evid: np.ndarray  # int64; -1 where unknown
    derived: bool  # no EVID column: derived from AMT and MDV
    is_dose: np.ndarray
    is_reset: np.ndarray
    is_obs: np.ndarray
    amt: np.ndarray  # 0 where absent
    amt_present: np.ndarray


class _DoseItems(NamedTuple):
    """The per-record items with defaults filled in (``CMT`` 0 read as 1)."""

    rate: np.ndarray
    ii: np.ndarray
    addl: np.ndarray
    ss: np.ndarray
    cmt: np.ndarray
    dvid: np.ndarray


def _check_cells(rec: _Records, table: pd.DataFrame) -> list[str]:
    """Problems with single cells: not a number, ``ID``/``TIME`` missing, ``MDV`` not 0/1."""
    problems: list[str] = []
    upper, dvid_key, cov_names = rec.columns.upper, rec.columns.dvid_key, rec.columns.cov_names
    display, where = rec.display, rec.where
    raw_cells = {k: table[upper[dvid_key if k == "DVID" else k]] for k in rec.cols}
    raw_cells.update({n: table[n] for n in cov_names})
    for key, mask in rec.bad.items():
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
                "; for a value below the limit of quantification give DV = the limit and "
                "1 in a column BLQ (or BLQ 1 and the limit in a column LLOQ): it is fitted "
                "as censored, Beal's M3"
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
                f"{_rows_text(rec.rows[idx])}) ({hint})"
            )

    for r in np.nonzero(~rec.ok("ID") & ~rec.bad["ID"])[0]:
        problems.append(f"{where(r)}, column {display['ID']}: ID is missing")
    for r in np.nonzero(~rec.ok("TIME") & ~rec.bad["TIME"])[0]:
        problems.append(f"{where(r)}, column {display['TIME']}: TIME is missing")
    mdv = rec.col("MDV", 0.0)
    for r in np.nonzero(rec.ok("MDV") & ~np.isin(mdv, (0.0, 1.0)))[0]:
        problems.append(
            f"{where(r)}, column {display['MDV']}: MDV must be 0 or 1, got {_fmt(mdv[r])}"
        )
    return problems


# ---- EVID ----------------------------------------------------------------------------


def _events(rec: _Records) -> tuple[_Events, list[str]]:
    """Each record's kind from ``EVID`` (or ``AMT``/``MDV``); checks ``AMT`` and ``DV``."""
    problems: list[str] = []
    display, where = rec.display, rec.where
    amt_present = rec.ok("AMT")
    amt = rec.col("AMT", 0.0)
    mdv_present = "MDV" in rec.cols
    mdv = rec.col("MDV", 0.0)
    if "EVID" in rec.cols:
        evid = rec.cols["EVID"]
        for r in np.nonzero(~rec.ok("EVID") & ~rec.bad["EVID"])[0]:
            problems.append(
                f"{where(r)}, column {display['EVID']}: EVID is missing (expected 0-4)"
            )
        known = np.isin(evid, (0.0, 1.0, 2.0, 3.0, 4.0))
        for r in np.nonzero(rec.ok("EVID") & ~known)[0]:
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

    if is_dose.any() and "AMT" not in rec.cols:
        problems.append(
            f"column AMT: required column is missing (the table has dose records, EVID 1 "
            f"or 4, e.g. {where(int(np.argmax(is_dose)))})"
        )
    elif "AMT" in rec.cols:
        for r in np.nonzero(is_dose & ~amt_present & ~rec.bad["AMT"])[0]:
            problems.append(
                f"{where(r)}, column {display['AMT']}: dose record (EVID {evid[r]}) without "
                "AMT (expected the amount given)"
            )
        for r in np.nonzero(amt_present & (amt < 0))[0]:
            problems.append(
                f"{where(r)}, column {display['AMT']}: negative AMT {_fmt(amt[r])} "
                "(expected >= 0)"
            )

    if derived:
        hint = " (EVID derived as 0: no AMT; set MDV=1 for a non-observation record)"
    else:
        hint = " (set MDV=1 or EVID=2 for a non-observation record)"
    no_dv = is_obs & ~rec.ok("DV") & ~rec.bad["DV"] & ~flagged_with_limit(rec)
    for r in np.nonzero(no_dv)[0]:
        problems.append(
            f"{where(r)}, column {display['DV']}: observation record without DV{hint}"
        )
    events = _Events(evid, derived, is_dose, is_reset, is_obs, amt, amt_present)
    return events, problems


# ---- dose items ----------------------------------------------------------------------


def _dose_items(rec: _Records, events: _Events) -> tuple[_DoseItems, list[str]]:
    """``RATE, II, ADDL, SS, CMT, DVID`` with defaults; checks their values."""
    problems: list[str] = []
    display, where, upper = rec.display, rec.where, rec.columns.upper
    is_dose, amt = events.is_dose, events.amt
    rate = rec.col("RATE", 0.0)
    for r in np.nonzero(rec.ok("RATE") & np.isin(rate, (-1.0, -2.0)))[0]:
        what = "rate" if rate[r] == -1 else "duration"
        problems.append(
            f"{where(r)}, column {display['RATE']}: RATE {_fmt(rate[r])} (modelled infusion "
            f"{what}) is not supported; give the rate (> 0) or 0 for a bolus"
        )
    for r in np.nonzero(rec.ok("RATE") & (rate < 0) & ~np.isin(rate, (-1.0, -2.0)))[0]:
        problems.append(
            f"{where(r)}, column {display['RATE']}: negative RATE {_fmt(rate[r])} "
            "(expected >= 0)"
        )
    ii = rec.col("II", 0.0)
    addl = rec.col("ADDL", 0.0)
    ss = rec.col("SS", 0.0)
    for r in np.nonzero(rec.ok("II") & (ii < 0))[0]:
        problems.append(f"{where(r)}, column {display['II']}: negative II {_fmt(ii[r])}")
    for r in np.nonzero(rec.ok("ADDL") & ((addl < 0) | (addl != np.round(addl))))[0]:
        problems.append(
            f"{where(r)}, column {display['ADDL']}: ADDL {_fmt(addl[r])} is not a "
            "non-negative integer"
        )
    for r in np.nonzero(is_dose & (addl > 0) & (ii <= 0))[0]:
        problems.append(
            f"{where(r)}, column {upper.get('II', 'II')}: ADDL {_fmt(addl[r])} additional "
            "doses need an interdose interval II > 0"
        )
    for r in np.nonzero(rec.ok("SS") & ~np.isin(ss, (0.0, 1.0)))[0]:
        problems.append(
            f"{where(r)}, column {display['SS']}: SS {_fmt(ss[r])} is not supported "
            "(expected 0, or 1 for steady state)"
        )
    for r in np.nonzero(is_dose & (ss == 1) & (ii <= 0) & ~((amt == 0) & (rate > 0)))[0]:
        problems.append(
            f"{where(r)}, column {upper.get('II', 'II')}: a steady-state dose (SS 1) needs "
            "II > 0 (or AMT 0 with RATE > 0 for a constant infusion)"
        )
    for r in np.nonzero(is_dose & (ss == 1) & (ii > 0) & (amt == 0) & (rate > 0))[0]:
        problems.append(
            f"{where(r)}, column {upper.get('II', 'II')}: AMT 0 with RATE > 0 and SS 1 is a "
            f"constant infusion at steady state, which has no interdose interval: II must "
            f"be 0, got {_fmt(ii[r])} (as it was, the record gave no drug)"
        )
    cmt = rec.col("CMT", 1.0)
    for r in np.nonzero(rec.ok("CMT") & ((cmt < 0) | (cmt != np.round(cmt))))[0]:
        problems.append(
            f"{where(r)}, column {display['CMT']}: CMT {_fmt(cmt[r])} is not a positive "
            "integer"
        )
    cmt = np.where(cmt == 0, 1.0, cmt)
    dvid = rec.col("DVID", 1.0)
    for r in np.nonzero(rec.ok("DVID") & ((dvid < 1) | (dvid != np.round(dvid))))[0]:
        problems.append(
            f"{where(r)}, column {display['DVID']}: DVID {_fmt(dvid[r])} is not a "
            "positive integer"
        )
    return _DoseItems(rate, ii, addl, ss, cmt, dvid), problems


# ---- nothing to fit ------------------------------------------------------------------


def _check_fittable(rec: _Records, events: _Events) -> list[str]:
    """Problems: no observation at all (censored ones: ``_read_censoring.py``)."""
    if events.is_obs.any():
        return []
    return ["the table has no observation records (EVID 0, or no EVID column, with MDV not "
            "1 and a DV): there is nothing to fit"]
