"""The shipped data sets: contents, the NONMEM conversion, and packaging in the wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayes_ude import datasets

ROOT = Path(__file__).resolve().parent.parent


def test_theophylline_raw():
    df = datasets.load_theophylline()
    assert list(df.columns) == ["Subject", "Wt", "Dose", "Time", "conc"]
    assert len(df) == 132 and df["Subject"].nunique() == 12
    # Spot values from R's datasets::Theoph.
    first = df.iloc[0]
    assert (first["Subject"], first["Wt"], first["Dose"], first["conc"]) == (1, 79.6, 4.02, 0.74)


def test_theophylline_nonmem_matches_raw():
    raw = datasets.load_theophylline()
    nm = datasets.load_theophylline_nonmem()
    assert list(nm.columns) == ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "WT", "DOSE"]
    doses = nm[nm["EVID"] == 1]
    obs = nm[nm["EVID"] == 0]
    assert len(doses) == 12 and len(obs) == 132
    assert (doses["TIME"] == 0).all() and (doses["MDV"] == 1).all() and doses["DV"].isna().all()
    per_subject = raw.groupby("Subject")[["Wt", "Dose"]].first()
    expected_amt = (per_subject["Wt"] * per_subject["Dose"]).to_numpy()
    np.testing.assert_allclose(doses["AMT"].to_numpy(), expected_amt, rtol=1e-6)
    np.testing.assert_allclose(obs["DV"].to_numpy(), raw["conc"].to_numpy())
    np.testing.assert_allclose(obs["TIME"].to_numpy(), raw["Time"].to_numpy())
    assert (obs[obs["TIME"] == 0]["DV"].notna()).all()  # time-0 concentrations kept


def test_nonmem_file_is_reproducible(tmp_path):
    sys.path.insert(0, str(ROOT / "datasets"))
    try:
        import make_theoph_nonmem
    finally:
        sys.path.pop(0)
    built = make_theoph_nonmem.build()
    pd.testing.assert_frame_equal(built, datasets.load_theophylline_nonmem(), check_dtype=False)


def test_warfarin_and_lynx_hare():
    w = datasets.load_warfarin()
    assert len(w) == 515 and w["id"].nunique() == 32
    assert w["amt"].notna().sum() == 32
    assert (w["dvid"][w["dv"].notna()].value_counts().sort_index().to_list()) == [251, 232]
    lh = datasets.load_lynx_hare()
    assert list(lh.columns) == ["Year", "Lynx", "Hare"]
    assert lh["Year"].tolist() == list(range(1900, 1921))


def test_phenobarbital_is_r_nlmes_phenobarb():
    """Counts as R's ``Phenobarb`` (Pinheiro & Bates 2000, 6.4): 744 records of 59
    neonates, 155 concentrations, each record a dose or a concentration."""
    p = datasets.load_phenobarbital()
    assert len(p) == 744 and p["ID"].nunique() == 59
    assert (p["MDV"] == 0).sum() == 155 and (p["EVID"] == 1).sum() == 589
    assert ((p["EVID"] == 1) != (p["MDV"] == 0)).all()
    assert p.groupby("ID")["WT"].nunique().max() == 1  # weight constant within a subject
    assert p["WT"].between(0.6, 3.6).all() and p["APGAR"].between(1, 10).all()


def test_unknown_file():
    with pytest.raises(FileNotFoundError, match="available"):
        datasets.data_path("iris.csv")


@pytest.mark.slow
def test_wheel_ships_data_and_loads_outside_the_source_tree(tmp_path):
    """Build the wheel, unpack it elsewhere, and load every data set from there."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("bayes_ude-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "bayes_ude/_datasets/theophylline.csv" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import bayes_ude.datasets as d, bayes_ude; "
            "assert 'site' in bayes_ude.__file__; "
            "print(len(d.load_theophylline_nonmem()), len(d.load_warfarin()), "
            "len(d.load_lynx_hare()), len(d.load_theophylline()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(site),
                                                              "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["144", "515", "21", "132"]
