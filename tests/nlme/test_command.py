"""`bayes-ude pk fit`: the main job end to end, against nlmixr2's published Theophylline fit."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bayes_ude import cli

REF = Path(__file__).resolve().parents[1] / "reference" / "theoph_nlmixr2.csv"


def test_a_fit_that_did_not_converge_says_so_in_summary_json(tmp_path):
    """Not converged: summary.json's warnings said nothing (only "converged": false), with
    the status "complete" and exit code 0."""
    out = tmp_path / "out"
    assert cli.main(["pk", "fit", "theophylline", "--max-iter", "3", "--no-plots", "--quiet",
                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["converged"]
    assert any(w.startswith("not converged: did not converge in 3 iterations")
               for w in summary["warnings"]), summary["warnings"]


@pytest.mark.slow
def test_theophylline_main_job_matches_nlmixr2(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["pk", "fit", "theophylline", "--model", "oral1cmt", "--method", "focei",
                     "--out", str(out), "--json", str(tmp_path / "fit.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "-2LL" in printed and "OFV" in printed and "tcl" in printed
    for name in ("estimates.csv", "diagnostics.csv", "ebe.csv", "vpc.csv", "summary.json"):
        assert (out / name).stat().st_size > 100, name
    for name in ("gof.png", "vpc.png", "individual.png"):
        assert (out / name).stat().st_size > 20_000, name
    summary = json.loads((tmp_path / "fit.json").read_text())
    for key in ("method", "minus2ll", "ofv", "aic", "bic", "theta", "omega", "sigma", "se",
                "seconds"):
        assert key in summary
    assert summary["method"] == "focei" and summary["converged"]
    assert summary["warnings"] == []  # converged, with standard errors
    assert set(summary["theta"]) == {"tka", "tcl", "tv"}
    assert set(summary["omega"]) == {"eta_ka", "eta_cl", "eta_v"}
    table = pd.read_csv(out / "estimates.csv", index_col="parameter")
    ref = pd.read_csv(REF, comment="#", index_col="parameter")
    for name, row in ref.iterrows():
        # nlmixr2 prints 3 significant digits
        assert table.loc[name, "estimate"] == pytest.approx(row["estimate"], abs=0.006), name
        if pd.notna(row["bsv_cv_pct"]):
            assert table.loc[name, "bsv_cv_pct"] == pytest.approx(row["bsv_cv_pct"], abs=0.1)
            assert table.loc[name, "shrinkage_pct"] == pytest.approx(row["shrinkage_pct"],
                                                                     abs=0.1)
    diag = pd.read_csv(out / "diagnostics.csv")
    assert len(diag) == 132
    assert {"PRED", "IPRED", "IWRES", "CWRES", "NPDE"} <= set(diag.columns)


@pytest.mark.slow
def test_warfarin_pk_with_allometric_weight(tmp_path, capsys):
    code = cli.main(["pk", "fit", "warfarin", "--dvid", "1", "--allometric", "wt", "--error",
                     "proportional", "--out", str(tmp_path), "--no-plots", "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["converged"] and summary["n_obs"] == 251 and summary["n_subjects"] == 32
    assert summary["sigma"]["prop_sd"] > 0
    assert not list(tmp_path.glob("*.png"))


def test_missing_file_and_bad_table_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["pk", "fit", str(tmp_path / "nope.csv")])
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,TIME,DV,AMT,EVID\n1,0,.,100,1\n1,2,abc,.,0\n1,1,3.0,.,0\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["pk", "fit", str(bad)])
    message = str(exc.value)
    assert "DV" in message and "TIME" in message and "row 2" in message
    with pytest.raises(SystemExit, match=r"eta on \['q'\]: model oral1cmt"):
        cli.main(["pk", "fit", "theophylline", "--eta", "cl,q"])
    with pytest.raises(SystemExit, match="allometric weight column 'WEIGHT'"):
        cli.main(["pk", "fit", "theophylline", "--allometric", "WEIGHT"])
    for bad_prior in ("halfnormal", "halfcauchy:-1", "gamma:2", "halfnormal:inf"):
        with pytest.raises(SystemExit, match="--omega-prior must be DIST:SCALE"):
            cli.main(["pk", "fit", "theophylline", "--method", "nuts", "--omega-prior",
                      bad_prior])
    with pytest.raises(SystemExit, match="--omega-prior is a prior"):
        cli.main(["pk", "fit", "theophylline", "--omega-prior", "halfcauchy:0.1"])
    with pytest.raises(SystemExit, match="--random-effects is a NUTS setting"):
        cli.main(["pk", "fit", "theophylline", "--method", "sgld", "--random-effects",
                  "centred"])


def test_omega_prior_names_its_distribution():
    from numpyro import distributions as dist

    from bayes_ude.nlme._command_bayes import omega_prior

    for text, kind, scale in (("halfnormal:1", dist.HalfNormal, 1.0),
                              ("HalfCauchy: 0.1", dist.HalfCauchy, 0.1)):
        prior = omega_prior(text)
        assert isinstance(prior, kind) and float(prior.scale) == scale
