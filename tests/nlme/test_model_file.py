"""Models in a user's file (``bayes-ude pk fit DATA --model mymodel.py``): nlmixr2's
Theophylline model written by hand must give nlmixr2's published FOCEi estimates, and the
same file must serve the Bayesian methods; a broken file is a clear error naming it."""

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from bayes_ude import cli, nlme

REF = Path(__file__).resolve().parents[1] / "reference" / "theoph_nlmixr2.csv"

MODEL = '''
"""nlmixr2's Theophylline model: one compartment, first-order absorption, log-normal
between-subject variability on ka, CL and V, additive error."""
import jax.numpy as jnp

from bayes_ude import nlme


def individual(theta, eta, covariates):
    return {"ka": jnp.exp(theta["tka"] + eta["eta_ka"]),
            "cl": jnp.exp(theta["tcl"] + eta["eta_cl"]),
            "v": jnp.exp(theta["tv"] + eta["eta_v"])}


def model(population):
    return nlme.PopulationModel(
        nlme.OneCompartmentOral(), individual,
        theta={"tka": 0.45, "tcl": 1.0, "tv": 3.45},
        omega={"eta_ka": 0.6, "eta_cl": 0.3, "eta_v": 0.1},
        sigma={"add_sd": 0.7}, error=nlme.Additive())
'''


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "theoph_model.py"
    path.write_text(MODEL)
    return path


def test_model_file_reproduces_nlmixr2_and_serves_every_method(model_file, tmp_path):
    out = tmp_path / "focei"
    assert cli.main(["pk", "fit", "theophylline", "--model", str(model_file), "--no-plots",
                     "--quiet", "--out", str(out)]) == 0
    table = pd.read_csv(out / "estimates.csv", index_col="parameter")
    ref = pd.read_csv(REF, comment="#", index_col="parameter")
    for name, row in ref.iterrows():  # nlmixr2 prints 3 significant digits
        assert table.loc[name, "estimate"] == pytest.approx(row["estimate"], abs=0.006), name
        if pd.notna(row["bsv_cv_pct"]):
            assert table.loc[name, "bsv_cv_pct"] == pytest.approx(row["bsv_cv_pct"], abs=0.1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(model_file) and summary["error_model"] is None
    # the same file, sampled (tiny runs: that it runs and writes the posterior)
    for method, extra in (("sgld", ["--samples", "50"]),
                          ("nuts", ["--warmup", "30", "--samples", "30"])):
        out = tmp_path / method
        assert cli.main(["pk", "fit", "theophylline", "--model", str(model_file), "--method",
                         method, "--chains", "1", *extra, "--no-plots", "--quiet",
                         "--out", str(out)]) == 0, method
        assert (out / "posterior.nc").stat().st_size > 1000
        post = pd.read_csv(out / "estimates.csv", index_col="parameter")
        assert {"tka", "tcl", "tv", "add_sd"} <= set(post.index)


def test_a_broken_model_file_is_a_clear_error(tmp_path):
    pop = nlme.load_theophylline_population()

    def write(text):
        path = tmp_path / "m.py"
        path.write_text(textwrap.dedent(text))
        return path

    with pytest.raises(ValueError, match=r"m.py' defines no `model`.*it defines x"):
        nlme.load_model_file(write("x = 1\n"), pop)
    with pytest.raises(ValueError, match=r"`model` must be a bayes_ude.nlme.PopulationModel, "
                                         r"got int"):
        nlme.load_model_file(write("model = 3\n"), pop)
    with pytest.raises(ValueError, match=r"m.py', line 2: SyntaxError"):
        nlme.load_model_file(write("a = 1\nmodel = (\n"), pop)
    with pytest.raises(ValueError, match=r"m.py', line 3: ZeroDivisionError"):
        nlme.load_model_file(write("def model(population):\n    x = 1\n    return x / 0\n"),
                             pop)
    with pytest.raises(ValueError, match="expected a Python file ending in .py"):
        nlme.load_model_file(tmp_path / "m.txt", pop)
    # the package's own ValueError from the file's code names the file and line too
    with pytest.raises(ValueError, match=r"m.py', line 2: ValueError: sigma must give "
                                         r"exactly"):
        nlme.load_model_file(write("""\
            from bayes_ude import nlme
            model = nlme.PopulationModel(
                nlme.OneCompartmentOral(), lambda th, eta, cov: {}, theta={"tka": 0.0},
                omega={"eta_cl": 0.1}, sigma={"sd": 0.5}, error=nlme.Additive())
            """), pop)
    # a key individual() reads that its inputs lack: a KeyError from inside the trace
    # before; a parameter it does not return: a KeyError inside the fit
    base = """\
        from bayes_ude import nlme
        model = nlme.PopulationModel(
            nlme.OneCompartmentOral(), lambda th, eta, cov: {BODY},
            theta={"tka": 0.0, "tcl": 1.0, "tv": 3.0}, omega={"eta_cl": 0.1},
            sigma={"add_sd": 0.5}, error=nlme.Additive())
        """
    for body, match in (
            ('"ka": th["tka"], "cl": th["TCL"] + eta["eta_cl"], "v": th["tv"]',
             r"individual\(theta, eta, cov\) reads 'TCL', which none of its inputs has"),
            ('"ka": th["tka"] + th["tcl"] + eta["eta_cl"], "v": th["tv"]',
             r"individual\(\) does not return 'cl', which OneCompartmentOral needs")):
        with pytest.raises(SystemExit, match=match):
            cli.main(["pk", "fit", "theophylline", "--model",
                      str(write(base.replace("BODY", body))), "--out", str(tmp_path / "o")])
    path = write("model = 3\n")
    for args, match in ((["--error", "proportional"], "--error: options of the built-in"),
                        (["--covariate", "cl~WT"], "--covariate: options of the built-in")):
        with pytest.raises(SystemExit, match=match):
            cli.main(["pk", "fit", "theophylline", "--model", str(path), *args])
    with pytest.raises(SystemExit, match="--model must be a built-in model"):
        cli.main(["pk", "fit", "theophylline", "--model", "threecmt"])
    with pytest.raises(SystemExit, match="`model` must be a bayes_ude.nlme.PopulationModel"):
        cli.main(["pk", "fit", "theophylline", "--model", str(path), "--out",
                  str(tmp_path / "o")])


@pytest.mark.heavy
def test_warfarin_pk_and_pd_from_the_command_line(tmp_path):
    """The joint warfarin PK/PD model (both DVIDs) from the command line: each figure per
    observation type, axes in the data's units, every subject in individual.pdf (heavy:
    ~50-110 s, mostly compiling the transit/turnover model's FOCEI)."""
    out = tmp_path / "out"
    code = cli.main(["pk", "fit", "warfarin", "--model", "warfarin_pkpd", "--max-iter", "2",
                     "--quiet", "--out", str(out)])
    assert code == 0
    est = pd.read_csv(out / "estimates.csv", index_col="parameter")
    assert {"tic50", "tkout", "pk_add_sd", "pd_add_sd"} <= set(est.index)
    vpc = pd.read_csv(out / "vpc.csv")
    assert sorted(vpc["DVID"].unique()) == [1, 2]
    diag = pd.read_csv(out / "diagnostics.csv")
    assert diag["DVID"].value_counts().sort_index().to_list() == [251, 232]
    pdf = (out / "individual.pdf").read_bytes()
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 6  # 32 subjects x 2
    with pytest.raises(SystemExit, match="--error: options of the built-in models; the model "
                                         "'warfarin_pkpd' defines its own"):
        cli.main(["pk", "fit", "warfarin", "--model", "warfarin_pkpd", "--error", "additive"])
