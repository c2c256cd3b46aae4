"""Covariate terms (``--covariate "cl~WT:power,v~WT:power"``) and omega blocks, from the
command line and the Python API, against R nlme's fits of the same models to its own
Phenobarb data (tests/reference/phenobarbital_nlme.R: Lindstrom-Bates, ML).

Our ``lb`` method is the same algorithm as nlme's, so it must agree to the optimiser's
tolerance; FOCEI is a different approximation of the same likelihood, so it must agree
within the FOCE-vs-LB difference (measured here: typical values 1.0-1.1 %, exponents 0.003,
omega variances 1-3.4 %, residual SD 0.02 %)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayes_ude import cli, datasets, nlme
from bayes_ude.nlme._covariate_terms import CovariateTerm, parse_covariate_terms

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
POWER = "cl~WT:power,v~WT:power"


def _reference(form: str) -> dict:
    ref = pd.read_csv(REFERENCE_DIR / "phenobarbital_nlme.csv", comment="#")
    ref = ref[ref["form"] == form].pivot(index="name", columns="max_iter", values="value")
    # the midpoint of nlme's last two iterates and half their distance (a 2-cycle for the
    # exponential form; 0 where it converged)
    return {k: (row.mean(), abs(row.iloc[0] - row.iloc[1]) / 2) for k, row in ref.iterrows()}


def _ours(estimates: pd.Series) -> dict:
    """Our estimates in nlme's parametrisation (log typical values, SDs)."""
    return {"lcl": estimates["tcl"], "lv": estimates["tv"],
            "sd_lcl": np.sqrt(estimates["omega_eta_cl"]),
            "sd_lv": np.sqrt(estimates["omega_eta_v"]), "sigma": estimates["add_sd"]}


@pytest.fixture(scope="module")
def phenobarbital():
    return nlme.read_nonmem(datasets.data_path("phenobarbital.csv"))


def test_command_line_lb_reproduces_r_nlme(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["pk", "fit", "phenobarbital", "--model", "iv1cmt", "--eta", "cl,v",
                     "--covariate", POWER, "--method", "lb", "--no-plots", "--quiet",
                     "--out", str(out)]) == 0
    est = pd.read_csv(out / "estimates.csv", index_col="parameter")
    ref = _reference("power")
    got = _ours(est["estimate"]) | {"lcl_wt": est.loc["cl_WT", "estimate"],
                                     "lv_wt": est.loc["v_WT", "estimate"]}
    for name, value in got.items():
        assert value == pytest.approx(ref[name][0], rel=2e-4, abs=1e-5), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["minus2ll"] == pytest.approx(-2 * ref["loglik"][0], abs=1e-3)
    # the table a reviewer reads: 95 % intervals, omega rows as variances with their SD
    assert est.loc["cl_WT", "ci95_lo"] == pytest.approx(
        est.loc["cl_WT", "estimate"] - 1.959964 * est.loc["cl_WT", "se"], rel=1e-6)
    assert est.loc["omega_eta_cl", "kind"] == "omega variance"
    assert est.loc["omega_eta_cl", "sd_corr"] == pytest.approx(ref["sd_lcl"][0], rel=2e-4)
    assert est.loc["tcl", "back_ci95_hi"] == pytest.approx(np.exp(est.loc["tcl", "ci95_hi"]))


def test_focei_within_the_foce_vs_lb_difference(phenobarbital):
    model = nlme.builtin_model("iv1cmt", phenobarbital, "additive", eta=["cl", "v"],
                               covariates=POWER)
    fit = nlme.fit(model, phenobarbital, "focei", progress=False)
    ref = _reference("power")
    got = _ours(fit.estimates)
    for name in ("lcl", "lv"):
        assert got[name] == pytest.approx(ref[name][0], abs=0.02), name  # 2 % on CL, V
    assert fit.estimates["cl_WT"] == pytest.approx(ref["lcl_wt"][0], abs=0.02)
    assert fit.estimates["v_WT"] == pytest.approx(ref["lv_wt"][0], abs=0.02)
    for name in ("sd_lcl", "sd_lv"):
        assert got[name] ** 2 == pytest.approx(ref[name][0] ** 2, rel=0.1), name
    assert got["sigma"] == pytest.approx(ref["sigma"][0], rel=0.01)
    # one full block holds the diagonal model: its -2LL can only be lower
    block = nlme.fit(nlme.builtin_model("iv1cmt", phenobarbital, "additive", eta=["cl", "v"],
                                        covariates=POWER, omega="block"),
                     phenobarbital, "focei", progress=False)
    assert "omega_eta_cl_eta_v" in block.estimates
    assert block.minus2ll < fit.minus2ll
    corr = block.table().loc["omega_eta_cl_eta_v", "sd_corr"]
    assert 0 < corr < 1


def test_exponential_and_categorical_forms_reproduce_r_nlme(phenobarbital, tmp_path):
    model = nlme.builtin_model("iv1cmt", phenobarbital, "additive", eta=["cl", "v"],
                               covariates="cl~WT:exponential,v~WT:exponential")
    fit = nlme.fit(model, phenobarbital, "lb", progress=False)
    ref = _reference("exponential")
    got = _ours(fit.estimates) | {"lcl_wt": fit.estimates["cl_WT"],
                                   "lv_wt": fit.estimates["v_WT"]}
    for name, value in got.items():  # within nlme's own 2-cycle (and 2e-4)
        assert abs(value - ref[name][0]) <= ref[name][1] + 2e-4 * abs(ref[name][0]), name

    # Apgar score < 5 as a category: nlme's treatment contrast has "< 5" as reference
    table = datasets.load_phenobarbital()
    table["APGARLOW"] = (table["APGAR"] < 5).astype(int)
    path = tmp_path / "pheno_apgar.csv"
    table.to_csv(path, index=False)
    pop = nlme.read_nonmem(path)
    model = nlme.builtin_model("iv1cmt", pop, "additive", eta=["cl", "v"],
                               covariates=POWER + ",v~APGARLOW:categorical:1")
    fit = nlme.fit(model, pop, "lb", progress=False)
    ref = _reference("categorical")
    assert fit.estimates["v_APGARLOW_0"] == pytest.approx(ref["lv_apgar_ge5"][0], abs=2e-4)
    for name, value in _ours(fit.estimates).items():
        assert value == pytest.approx(ref[name][0], rel=2e-4, abs=1e-5), name


def test_covariate_terms_text_and_errors(phenobarbital, tmp_path, capsys):
    assert parse_covariate_terms("CL~WT, v~WT:linear:1.5 ,cl~SEX:categorical") == [
        CovariateTerm("cl", "WT", "power"), CovariateTerm("v", "WT", "linear", 1.5),
        CovariateTerm("cl", "SEX", "categorical")]
    for text, match in (("cl=WT", "expected PARAMETER~COLUMN"),
                        ("cl~WT:cubic", "the form must be one of"),
                        ("cl~WT:power:seventy", "reference 'seventy' is not a number"),
                        ("cl~WT,cl~WT:linear", "given twice")):
        with pytest.raises(ValueError, match=match):
            parse_covariate_terms(text)
    with pytest.raises(ValueError, match=r"no covariate column 'HT'.*covariates there: WT, "
                                         r"APGAR"):
        nlme.builtin_model("iv1cmt", phenobarbital, covariates="cl~HT")
    with pytest.raises(ValueError, match="the model has no parameter 'ka'"):
        nlme.builtin_model("iv1cmt", phenobarbital, covariates="ka~WT")
    with pytest.raises(ValueError, match="omega blocks name \\['ka'\\]"):
        nlme.builtin_model("iv1cmt", phenobarbital, omega=[["cl", "ka"]])
    # a weight that changes within a subject: named, with the subject
    table = datasets.load_phenobarbital()
    table.loc[(table["ID"] == 3) & (table["TIME"] > 50), "WT"] += 0.2
    path = tmp_path / "varying.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"cl~WT: WT changes within subject\(s\) \[3\]"):
        nlme.builtin_model("iv1cmt", nlme.read_nonmem(path), covariates="cl~WT")
    # two terms naming one fixed effect (APGAR's level 2 and a column APGAR_2: cl_APGAR_2)
    # shared it without a word; a reference that is not finite gave a NaN objective
    both = nlme.read_nonmem(datasets.load_phenobarbital().assign(APGAR_2=lambda d: d.WT))
    with pytest.raises(ValueError, match=r"cl~APGAR and cl~APGAR_2 both name the fixed "
                                         r"effect 'cl_APGAR_2'"):
        nlme.builtin_model("iv1cmt", both, covariates="cl~APGAR:categorical,cl~APGAR_2")
    zero = nlme.read_nonmem(datasets.load_phenobarbital().assign(
        WT=lambda d: d.WT.where(d.ID != 3, 0.0)))
    with pytest.raises(ValueError, match=r"cl~WT: the power form needs positive values; WT "
                                         r"has 1 subject\(s\) with values <= 0 \(3\)"):
        nlme.builtin_model("iv1cmt", zero, covariates="cl~WT")
    for reference in ("nan", "inf"):
        with pytest.raises(ValueError, match="cl~WT: the reference must be a finite number"):
            nlme.builtin_model("iv1cmt", phenobarbital, covariates=f"cl~WT:linear:{reference}")
    # the command says it before any compilation, naming the option
    for args, match in ((["--covariate", "cl~WT:cubic"], "--covariate: covariate term"),
                        (["--omega", "cl;"], "--omega must be diagonal, block or blocks"),
                        (["--covariate", "cl~HT"], "no covariate column 'HT'")):
        with pytest.raises(SystemExit, match=match):
            cli.main(["pk", "fit", "phenobarbital", "--model", "iv1cmt",
                      "--out", str(tmp_path / "x"), *args])
