"""After the fit, from the command line: the sdtab and the bootstrap beside a fit's CSVs,
``pk compare`` (its likelihood-ratio test against scipy's chi-square) and ``pk simulate``
(a new regimen's typical profile against the closed-form one-compartment superposition)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayes_ude import cli, datasets


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """Theophylline, combined error: random effects on ka, cl, v (with a 12-replicate
    bootstrap) and on cl, v only."""
    root = tmp_path_factory.mktemp("postfit")
    full, reduced = root / "full", root / "reduced"
    assert cli.main(["pk", "fit", "theophylline", "--error", "combined", "--no-plots",
                     "--quiet", "--bootstrap", "12", "--out", str(full)]) == 0
    assert cli.main(["pk", "fit", "theophylline", "--error", "combined", "--eta", "cl,v",
                     "--no-plots", "--quiet", "--out", str(reduced)]) == 0
    return full, reduced


def test_sdtab_and_bootstrap_beside_the_fit(fits):
    full, _ = fits
    sd = pd.read_csv(full / "sdtab.csv")
    diag = pd.read_csv(full / "diagnostics.csv")
    assert len(sd) == 132
    assert {"ID", "TIME", "DV", "PRED", "IPRED", "CWRES", "NPDE", "ETA_KA", "ETA_CL",
            "ETA_V"} <= set(sd.columns)
    np.testing.assert_allclose(sd["CWRES"], diag["CWRES"])
    ebe = pd.read_csv(full / "ebe.csv")
    first = sd.groupby("ID")["ETA_CL"].first().to_numpy()
    np.testing.assert_allclose(np.sort(first), np.sort(ebe["eta_cl"]), rtol=1e-10)
    ci = pd.read_csv(full / "bootstrap_ci.csv", index_col="parameter")
    assert len(pd.read_csv(full / "bootstrap.csv")) == 12
    est = pd.read_csv(full / "estimates.csv", index_col="parameter")["estimate"]
    assert (ci["p2.5"] <= ci["p97.5"]).all()
    for name in ("tcl", "tv"):  # well-determined: the estimate inside its interval
        assert ci.loc[name, "p2.5"] <= est[name] <= ci.loc[name, "p97.5"], name
    summary = json.loads((full / "summary.json").read_text())
    assert summary["bootstrap"]["n"] == 12 and summary["bootstrap"]["success_rate"] > 0.5
    assert summary["options"]["error"] == "combined" and summary["n_censored"] == 0


def test_compare_is_a_likelihood_ratio_test(fits, tmp_path, capsys):
    full, reduced = fits
    out = tmp_path / "cmp.csv"
    assert cli.main(["pk", "compare", str(full), str(reduced), "--csv", str(out)]) == 0
    assert "Likelihood-ratio tests" in capsys.readouterr().out
    ofv = {p.name: json.loads((p / "summary.json").read_text())["ofv"] for p in fits}
    tests = pd.read_csv(tmp_path / "cmp_tests.csv")
    row = tests.iloc[0]
    assert (row["reduced"], row["full"], row["df"]) == ("reduced", "full", 1)
    assert row["delta_ofv"] == pytest.approx(ofv["reduced"] - ofv["full"], rel=1e-9)
    assert row["p_value"] == pytest.approx(stats.chi2.sf(row["delta_ofv"], 1), rel=1e-9)
    table = pd.read_csv(out, index_col="name")
    assert table.loc["full", "aic"] < table.loc["reduced", "aic"]


def test_simulate_a_new_regimen(fits, tmp_path):
    full, _ = fits
    out = tmp_path / "sim"
    times = [0.5, 1, 2, 6, 12, 12.5, 14, 24]
    assert cli.main(["pk", "simulate", str(full), "--n", "20", "--doses", "0:320,12:160",
                     "--times", ",".join(map(str, times)), "--subjects", "5", "--quiet",
                     "--out", str(out)]) == 0
    tab = pd.read_csv(out / "simtab.csv")
    assert len(tab) == 20 * 5 * len(times) and tab["REP"].max() == 20
    theta = json.loads((full / "summary.json").read_text())["theta"]
    ka, cl, v = (np.exp(theta[k]) for k in ("tka", "tcl", "tv"))
    k = cl / v
    t = np.asarray(times)
    pred = sum(amt * ka / (v * (ka - k)) * (np.exp(-k * (t - t0)) - np.exp(-ka * (t - t0)))
               * (t >= t0) for t0, amt in ((0.0, 320.0), (12.0, 160.0)))
    np.testing.assert_allclose(tab["PRED"].to_numpy()[:len(times)], pred, rtol=1e-8)
    assert (out / "simulation.png").stat().st_size > 10_000
    # on the fitted data's own design
    assert cli.main(["pk", "simulate", str(full), "--n", "3", "--quiet", "--out",
                     str(tmp_path / "sim2")]) == 0
    assert len(pd.read_csv(tmp_path / "sim2" / "simtab.csv")) == 3 * 132


def test_post_fit_commands_check_their_options(fits, tmp_path):
    full, _ = fits
    for argv, match in (
            (["simulate", str(tmp_path)], "is not the --out folder of a `bayes-ude pk fit`"),
            (["simulate", str(full), "--doses", "0:100"], "--doses and --times go together"),
            (["simulate", str(full), "--doses", "0:-1", "--times", "1"], "AMT > 0"),
            # --out replaces its folder: naming the fit's own deleted the fit
            (["simulate", str(full), "--out", str(full)], "is the fit folder FIT_DIR"),
            (["compare", str(full)], "two or more FIT_DIR"),
            (["compare", str(full), str(full), "--nested", "a:b"], "--nested names"),
            (["fit", "theophylline", "--method", "nuts", "--bootstrap", "10"],
             "--bootstrap refits by maximum likelihood")):
        with pytest.raises(SystemExit, match=match):
            cli.main(["pk", *argv])


def test_censored_data_from_the_command_line(tmp_path, capsys):
    """A BLQ flag column with an LLOQ column: the command fits them by M3 (FOCEI), says
    how many, leaves their residuals out; FOCE is refused before any work; --drop fits
    the values as measured."""
    table = pd.read_csv(datasets.data_path("theophylline.csv"), na_values=".")
    obs = table["EVID"] == 0
    table["LLOQ"] = np.where(obs, 1.0, np.nan)
    table["BLQ"] = (obs & (table["DV"] < 1.0)).astype(int)
    table.loc[table["BLQ"] == 1, "DV"] = 1.0  # NONMEM coding: DV holds the limit
    path = tmp_path / "theo_blq.csv"
    table.to_csv(path, index=False, na_rep=".")
    n_blq = int(table["BLQ"].sum())
    assert n_blq >= 10
    out = tmp_path / "m3"
    assert cli.main(["pk", "fit", str(path), "--no-plots", "--out", str(out)]) == 0
    assert f"({n_blq} below the LLOQ: M3)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_censored"] == n_blq and summary["converged"]
    diag = pd.read_csv(out / "diagnostics.csv")
    assert diag["CENS"].sum() == n_blq and diag.loc[diag["CENS"] == 1, "CWRES"].isna().all()
    with pytest.raises(SystemExit, match="method 'foce' linearises the observations"):
        cli.main(["pk", "fit", str(path), "--method", "foce", "--out", str(tmp_path / "x")])
    assert cli.main(["pk", "fit", str(path), "--drop", "BLQ,LLOQ", "--no-plots", "--quiet",
                     "--out", str(tmp_path / "measured")]) == 0
    assert json.loads((tmp_path / "measured" / "summary.json").read_text())["n_censored"] == 0
