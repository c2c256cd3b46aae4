"""Subjects of a checked NONMEM table: grouping, warnings, padding into a Population.

The data layer turns a table into arrays in steps, one module each: reading
(``_table.py``) -> record checks (``_read_checks.py``) -> censored observations
(``_read_censoring.py``) -> subject checks, warnings and assembly (this module) ->
:class:`~bayes_ude.nlme._data.Population` (``_data.py``). :func:`read_nonmem`
(``_read.py``) runs the phases in order: :func:`_subjects` (its
problems join those of the record checks), then, once there are none, :func:`_warnings`
and :func:`_assemble`.

Assembly is data preparation in NumPy, a loop over subjects once; the models that use
the :class:`Population` never loop over subjects (they ``jax.vmap`` over axis 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ._data import Population
from ._data_text import _MAX_ROWS, _fmt, _rows_text
from ._read_checks import _DoseItems, _Events
from ._table import _Records


class _Subjects(NamedTuple):
    """The subjects: their IDs, their rows and their filled covariates."""

    ids: list[float]  # in order of first appearance
    groups: list[np.ndarray]  # each subject's row positions, ascending
    cov_filled: np.ndarray  # (rows, covariates): filled within each subject


# ---- subjects: grouping, time order, covariate fill ----------------------------------


def _subjects(rec: _Records) -> tuple[_Subjects, list[str]]:
    """Group the records by subject; checks time order and covariates present."""
    problems: list[str] = []
    display, where, cov_names = rec.display, rec.where, rec.columns.cov_names
    ids = rec.ids
    valid_id = rec.ok("ID")
    subject_ids: list[float] = list(dict.fromkeys(ids[valid_id].tolist()))
    groups = [np.nonzero(ids == sid)[0] for sid in subject_ids]  # ascending: stable
    time = rec.cols["TIME"]
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

    cov_filled = np.full((rec.n_rows, len(cov_names)), np.nan)
    for c, name in enumerate(cov_names):
        v = rec.cov_cols[name]
        for g in groups:
            vg = pd.Series(v[g]).ffill().bfill().to_numpy()
            if np.isnan(vg).all() and not rec.bad[name][g].any():
                problems.append(
                    f"{where(int(g[0]))}, column {name}: covariate is missing on every "
                    "record of the subject"
                )
            cov_filled[g, c] = vg
    return _Subjects(subject_ids, groups, cov_filled), problems


# ---- readable, but probably not what was meant: warnings naming the rows -------------


def _subjects_text(rec: _Records, group_of: dict, sids: list) -> str:
    """``"3 (rows 7-12), 5 (rows 20-26)"``: subjects with their rows."""
    rows = rec.rows
    parts = [
        f"{rec.label(sid)} (rows {rows[group_of[sid][0]]}-{rows[group_of[sid][-1]]})"
        for sid in sids[:_MAX_ROWS]
    ]
    more = f", ... ({len(sids)} in all)" if len(sids) > _MAX_ROWS else ""
    return ", ".join(parts) + more


def _same_records(
    rec: _Records, select: np.ndarray, keys: dict[str, np.ndarray], value: np.ndarray
) -> list:
    """Groups (rows, differ, first) of selected records equal in ``keys``; ``differ``:
    whether their ``value`` differs; ``first``: the group's first record's keys."""
    idx = np.nonzero(select)[0]
    frame = pd.DataFrame({k: v[idx] for k, v in keys.items()})
    dup = frame.duplicated(keep=False).to_numpy()
    if not dup.any():
        return []
    frame = frame[dup].assign(_value=value[idx[dup]], _row=rec.rows[idx[dup]])
    return [
        (grp["_row"].tolist(), grp["_value"].nunique(dropna=False) > 1, grp.iloc[0])
        for _, grp in frame.groupby(list(keys), sort=False)
    ]


def _listing(rec: _Records, found: list) -> str:
    """Sets of equal records found by :func:`_same_records`, with subject and time."""
    parts = [
        f"{_rows_text(r)} (subject {rec.label(first['id'])}, TIME {_fmt(first['time'])})"
        for r, _, first in found[:_MAX_ROWS]
    ]
    more = f"; ... ({len(found)} sets in all)" if len(found) > _MAX_ROWS else ""
    return "; ".join(parts) + more


def _warnings(
    rec: _Records, events: _Events, items: _DoseItems, subjects: _Subjects
) -> list[str]:
    """Warnings: duplicate records, doses of 0, subjects without doses or observations."""
    notes: list[str] = []
    ids, time, rows = rec.ids, rec.cols["TIME"], rec.rows
    is_obs, is_dose, amt = events.is_obs, events.is_dose, events.amt
    subject_ids = subjects.ids
    group_of = dict(zip(subject_ids, subjects.groups, strict=True))

    obs_keys = {"id": ids, "time": time, "cmt": items.cmt, "dvid": items.dvid}
    # Observations at one ID, TIME, CMT and DVID with different DV are replicate
    # measurements (warfarin's subject 8 has four pairs): fitted as independent, no warning.
    copies = [f for f in _same_records(rec, is_obs, obs_keys, rec.cols["DV"]) if not f[1]]
    if copies:
        notes.append(
            "duplicate observation records (same ID, TIME, CMT, DVID and DV): "
            f"{_listing(rec, copies)}; each is fitted as a separate measurement, so a copied "
            "record counts twice: delete the copies"
        )
    dose_keys = {"id": ids, "time": time, "cmt": items.cmt,
                 "evid": events.evid.astype(np.float64), "amt": amt, "rate": items.rate,
                 "ii": items.ii, "addl": items.addl, "ss": items.ss}
    found = _same_records(rec, is_dose, dose_keys, amt)
    if found:
        notes.append(
            f"identical dose records: {_listing(rec, found)}; every one is given, so the "
            "subject gets the dose more than once: delete the copies if they are copies"
        )
    zero = is_dose & (amt == 0) & ~((items.ss == 1) & (items.rate > 0))
    if zero.any():
        notes.append(
            f"dose records with AMT 0 give no drug: {_rows_text(rows[zero])} (subject(s) "
            f"{', '.join(str(rec.label(x)) for x in dict.fromkeys(ids[zero].tolist()))}); "
            "give the amount, or use EVID 2 for a record that only carries covariates, "
            "EVID 3 for a reset alone"
        )
    if is_dose.any():
        dosed = set(ids[is_dose].tolist())
        undosed = [sid for sid in subject_ids if sid not in dosed]
        if undosed:
            notes.append(
                f"{len(undosed)} subject(s) without a dose record while others have one: "
                f"{_subjects_text(rec, group_of, undosed)}; a PK model predicts 0 for them "
                "(doses before the first observation must be in the table, e.g. SS=1 for "
                "steady state)"
            )
    no_obs = [sid for sid in subject_ids if not is_obs[group_of[sid]].any()]
    if len(no_obs) == 1:
        g = group_of[no_obs[0]]
        notes.append(
            f"subject {rec.label(no_obs[0])} (rows {rows[g[0]]}-{rows[g[-1]]}) has no "
            "observations; it is kept but contributes no likelihood"
        )
    elif no_obs:
        notes.append(
            f"{len(no_obs)} subjects have no observations: "
            f"{_subjects_text(rec, group_of, no_obs)}; they are kept but contribute no "
            "likelihood"
        )
    return notes


# ---- assemble per subject (data preparation; the model never loops) ------------------


def _subject_records(
    rec: _Records, events: _Events, items: _DoseItems, subjects: _Subjects
) -> list[dict]:
    """Per subject: its observation rows, doses (``ADDL`` expanded), resets, changes."""
    time, cov_filled, n_cov = rec.cols["TIME"], subjects.cov_filled, len(rec.columns.cov_names)
    amt, rate, ii, cmt, ss, addl = events.amt, items.rate, items.ii, items.cmt, items.ss, items.addl
    per_subject = []
    for sid, g in zip(subjects.ids, subjects.groups, strict=True):
        tg = time[g]
        obs = g[events.is_obs[g]]
        dose_items = []  # (time, expanded, order, amt, rate, ii, cmt, ss, row)
        for order, r in enumerate(g[events.is_dose[g]]):
            dose_items.append((time[r], 0, order, amt[r], rate[r], ii[r], cmt[r], ss[r] == 1, r))
            for k in range(1, int(addl[r]) + 1):
                dose_items.append(
                    (time[r] + k * ii[r], 1, order, amt[r], rate[r], ii[r], cmt[r], False, r)
                )
        dose_items.sort(key=lambda d: (d[0], d[1], d[2]))
        resets = g[events.is_reset[g]]
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
                id=rec.label(sid),
                first_time=float(tg[0]),
                obs=obs,
                doses=dose_items,
                dose_cov=dose_cov,
                resets=resets,
                cov_rows=g[change],
            )
        )
    return per_subject


def _empty_arrays(n_sub: int, n_o: int, n_d: int, n_r: int, n_c: int, n_cov: int) -> dict:
    """The :class:`Population` arrays at their padded shapes, filled with padding."""
    return dict(
        obs_time=np.zeros((n_sub, n_o)),
        obs_dv=np.zeros((n_sub, n_o)),
        obs_mask=np.zeros((n_sub, n_o), dtype=bool),
        obs_cmt=np.ones((n_sub, n_o), dtype=np.int64),
        obs_dvid=np.ones((n_sub, n_o), dtype=np.int64),
        obs_row=np.full((n_sub, n_o), -1, dtype=np.int64),
        obs_lloq=np.full((n_sub, n_o), np.nan),
        obs_limit=np.full((n_sub, n_o), np.nan),
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


def _assemble(
    rec: _Records, events: _Events, items: _DoseItems, subjects: _Subjects, lloq: np.ndarray,
    limit: np.ndarray
) -> Population:
    """The :class:`Population`: every subject's records padded to the largest subject
    (``lloq``: each record's limit where it is censored, NaN elsewhere; the ``DV`` of a
    censored observation is its limit; ``limit``: each record's limit where known)."""
    time, rows, cov_filled = rec.cols["TIME"], rec.rows, subjects.cov_filled
    dv = np.where(np.isfinite(lloq), lloq, rec.cols["DV"])
    per_subject = _subject_records(rec, events, items, subjects)
    out = _empty_arrays(
        len(per_subject),
        max((len(p["obs"]) for p in per_subject), default=0),
        max((len(p["doses"]) for p in per_subject), default=0),
        max((len(p["resets"]) for p in per_subject), default=0),
        max((len(p["cov_rows"]) for p in per_subject), default=0),
        len(rec.columns.cov_names),
    )
    for s, p in enumerate(per_subject):
        obs, k = p["obs"], len(p["obs"])
        pad_time = time[obs[-1]] if k else p["first_time"]
        pad_cov = cov_filled[obs[-1]] if k else cov_filled[p["cov_rows"][0]]
        out["obs_time"][s] = pad_time
        out["obs_time"][s, :k] = time[obs]
        out["obs_dv"][s, :k] = dv[obs]
        out["obs_lloq"][s, :k] = lloq[obs]
        out["obs_limit"][s, :k] = limit[obs]
        out["obs_mask"][s, :k] = True
        out["obs_cmt"][s, :k] = items.cmt[obs].astype(np.int64)
        out["obs_dvid"][s, :k] = items.dvid[obs].astype(np.int64)
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
        covariate_names=tuple(rec.columns.cov_names),
        cmt_given="CMT" in rec.columns.upper,
        has_censored=bool(np.isfinite(out["obs_lloq"]).any()),
        **out,
    )
