"""A design :class:`Population` from a dose regimen: new doses to simulate, no data.

:func:`design` writes the NONMEM table of ``n_subjects`` identical subjects (the same doses
and sampling times; covariates may differ) and reads it with :func:`read_nonmem`, so a
design follows every convention of real data (``ADDL``/``II`` expansion, infusions,
steady state, covariates, ``CMT``). The observations' ``DV`` is 0: a design is simulated
(:func:`bayes_ude.nlme.simulate`, :func:`bayes_ude.nlme.simtab`), never fitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ._data import Population
from ._read import read_nonmem

__all__ = ["design"]

_DOSE_FIELDS = ("TIME", "AMT", "CMT", "RATE", "II", "ADDL", "SS")


def _dose_records(doses) -> list[dict]:
    """Each dose as ``{column: value}``: a tuple ``(time, amt[, cmt[, rate]])`` or a
    mapping with (any case) keys among ``time, amt, cmt, rate, ii, addl, ss``."""
    out = []
    for k, dose in enumerate(doses):
        if isinstance(dose, Mapping):
            rec = {str(key).upper(): float(v) for key, v in dose.items()}
            unknown = sorted(set(rec) - set(_DOSE_FIELDS))
            if unknown or not {"TIME", "AMT"} <= set(rec):
                raise ValueError(f"dose {k}: a mapping needs time and amt, and may have "
                                 f"{', '.join(f.lower() for f in _DOSE_FIELDS[2:])}; got "
                                 f"{sorted(dose)}")
        else:
            values = tuple(dose)
            if not 2 <= len(values) <= 4:
                raise ValueError(f"dose {k}: a tuple (time, amt[, cmt[, rate]]), got {dose!r}")
            rec = dict(zip(_DOSE_FIELDS[:len(values)], map(float, values), strict=True))
        out.append(rec)
    return out


def design(n_subjects: int = 1, doses: Sequence = ((0.0, 100.0),),
           times: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 12.0, 24.0), *,
           covariates: Mapping[str, float | Sequence[float]] | None = None,
           obs_cmt: int | None = None, ids: Sequence | None = None) -> Population:
    """A :class:`Population` of ``n_subjects`` subjects given ``doses`` and sampled at
    ``times`` (``DV`` 0): the design of a simulation of a new regimen.

    Parameters
    ----------
    n_subjects : number of subjects (each with the same doses and times).
    doses : the regimen, each dose a tuple ``(time, amt[, cmt[, rate]])`` or a mapping
        with keys ``time, amt`` and optionally ``cmt, rate`` (``> 0``: an infusion of
        ``amt / rate``), ``ii, addl`` (``addl`` more doses every ``ii``), ``ss`` (1:
        steady state), as in a NONMEM table. For built-in oral models the depot is
        ``cmt`` 1 and the central compartment 2; without any ``cmt`` the model's own
        dosing compartment is used.
    times : observation times (each subject's).
    covariates : ``{column: value}``, one value for everyone or one per subject
        (constant in time): the covariates a model reads (e.g. ``{"WT": [55, 70, 90]}``).
    obs_cmt : the observations' ``CMT``; needed when a dose gives a ``cmt`` (then the
        table has a ``CMT`` column; e.g. 2 for the central compartment of an oral model).
    ids : subject IDs (default 1, 2, ...).

    Returns
    -------
    Population, read by :func:`read_nonmem` from the table this builds.
    """
    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    n_subjects = int(n_subjects)
    records = _dose_records(doses)
    times = np.atleast_1d(np.asarray(times, float))
    if not records or not times.size:
        raise ValueError("a design needs at least one dose and one observation time")
    with_cmt = any("CMT" in r for r in records)
    if with_cmt and obs_cmt is None:
        raise ValueError("a dose gives a cmt: give obs_cmt too, the observations' "
                         "compartment (e.g. 2, the central compartment of an oral model)")
    ids = list(range(1, n_subjects + 1)) if ids is None else list(ids)
    if len(ids) != n_subjects:
        raise ValueError(f"{len(ids)} ids for {n_subjects} subjects")
    cov = {}
    for name, value in dict(covariates or {}).items():
        v = np.broadcast_to(np.asarray(value, float), (n_subjects,)) if np.ndim(value) == 0 \
            else np.asarray(value, float)
        if v.shape != (n_subjects,):
            raise ValueError(f"covariate {name!r}: one value or {n_subjects}, got {v.size}")
        cov[name] = v
    rows = []
    for i, sid in enumerate(ids):
        subject = [{"EVID": 1, "MDV": 1, "DV": 0.0, **rec} for rec in records]
        subject += [{"TIME": t, "EVID": 0, "MDV": 0, "DV": 0.0, "AMT": 0.0,
                     **({"CMT": float(obs_cmt)} if obs_cmt is not None else {})}
                    for t in times]
        subject.sort(key=lambda r: (r["TIME"], r["EVID"] == 0))  # stable: doses first
        rows += [{"ID": sid, **r, **{k: v[i] for k, v in cov.items()}} for r in subject]
    table = pd.DataFrame(rows)
    for column in ("RATE", "II", "ADDL", "SS", "CMT"):
        if column in table:  # a dose without a cmt: NONMEM's default compartment, 1
            table[column] = table[column].fillna(1.0 if column == "CMT" else 0.0)
    return read_nonmem(table, character_ids=any(isinstance(s, str) for s in ids))
