"""Loaders for the data sets shipped with bayes_ude (see ``datasets/README.md``).

Each returns a fresh :class:`pandas.DataFrame`; ``.`` in the files is read as missing.
The files are found inside the installed package (``bayes_ude/_datasets``, put there by
the wheel build) or, in a source checkout, in the repository's ``datasets/`` folder.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = [
    "data_path",
    "load_lynx_hare",
    "load_phenobarbital",
    "load_theophylline",
    "load_theophylline_nonmem",
    "load_warfarin",
]


def data_path(name: str) -> Path:
    """Path of a shipped data file, e.g. ``data_path("theoph.csv")``."""
    here = Path(__file__).resolve().parent
    for folder in (here / "_datasets", here.parent / "datasets"):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"data file {name!r} is not shipped with bayes_ude; available: "
        f"theoph.csv, theophylline.csv, warfarin_pkpd.csv, phenobarbital.csv, "
        f"hudson_bay_lynx_hare.csv"
    )


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(data_path(name), na_values=["."])


def load_theophylline() -> pd.DataFrame:
    """Theophylline PK as in R's ``Theoph``: ``Subject, Wt`` (kg), ``Dose`` (mg/kg),
    ``Time`` (h), ``conc`` (mg/L); 12 subjects, 132 rows."""
    return _read("theoph.csv")


def load_theophylline_nonmem() -> pd.DataFrame:
    """Theophylline as a NONMEM table ``ID, TIME, DV, AMT, EVID, MDV, CMT, WT, DOSE``:
    one oral dose record per subject (``AMT = Dose x Wt`` mg into CMT 1), observations in
    CMT 2 (mg/L); 144 rows."""
    return _read("theophylline.csv")


def load_warfarin() -> pd.DataFrame:
    """Warfarin PK/PD: ``id, time, amt, dv, dvid, wt, sex, age``; ``dvid`` 1 is the plasma
    concentration (mg/L), 2 the prothrombin complex activity (%); 515 rows."""
    return _read("warfarin_pkpd.csv")


def load_lynx_hare() -> pd.DataFrame:
    """Hudson's Bay Company lynx and hare pelts (thousands), ``Year, Lynx, Hare``,
    1900-1920."""
    return _read("hudson_bay_lynx_hare.csv")


def load_phenobarbital() -> pd.DataFrame:
    """Phenobarbital in 59 preterm neonates (R nlme's ``Phenobarb``) as a NONMEM table:
    ``ID, TIME, AMT, DV, MDV, EVID, CMT, WT, APGAR`` (IV doses in CMT 1)."""
    return _read("phenobarbital.csv")
