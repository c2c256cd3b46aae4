"""Data that used to be read or fitted silently wrong (issue 20, items 1, 5, 6 and 10):
every case is a small table written here, and the test asserts the clear error, the
warning naming the rows, or the correct reading. No fits: the checks run before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import cli, nlme
from bayes_ude.nlme._command_data import _load, build_model
from bayes_ude.nlme._data import NonmemDataError, NonmemDataWarning
from bayes_ude.nlme._read import read_nonmem

HEADER = "ID,TIME,DV,AMT,EVID,CMT"
# Two oral subjects: a dose into the depot (CMT 1), concentrations in the central (CMT 2).
ORAL = [
    "1,0,.,100,1,1",  # row 1
    "1,1,5.0,.,0,2",  # row 2
    "1,2,4.0,.,0,2",  # row 3
    "2,0,.,200,1,1",  # row 4
    "2,1,9.0,.,0,2",  # row 5
    "2,3,7.0,.,0,2",  # row 6
]


def _csv(tmp_path, lines, header=HEADER, name="data.csv", sep=","):
    path = tmp_path / name
    path.write_text("\n".join([header.replace(",", sep), *(x.replace(",", sep) for x in lines)])
                    + "\n")
    return path


def _read(tmp_path, lines, header=HEADER, **options):
    """Read without any warning (a warning here would be a false alarm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonmemDataWarning)
        return read_nonmem(_csv(tmp_path, lines, header), **options)


def _with(lines, row, column, value, header=HEADER):
    out = [x.split(",") for x in lines]
    out[row - 1][header.split(",").index(column)] = value
    return [",".join(x) for x in out]


# ---- item 1: every CMT checked against the model's compartments ------------------------


def test_dose_into_a_compartment_the_model_lacks_is_an_error(tmp_path):
    pop = _read(tmp_path, _with(ORAL, 4, "CMT", "5"))
    with pytest.raises(ValueError) as info:
        nlme.OneCompartmentOral().check_population(pop)
    message = str(info.value)
    assert "row 4 (subject 2): dose into CMT 5" in message
    assert "oral1cmt" in message and "1 (depot) and 2 (central)" in message
    assert "doses go into 1 (absorbed, first order) or 2 (IV bolus or infusion)" in message


def test_observation_in_a_compartment_the_model_lacks_is_an_error(tmp_path):
    pop = _read(tmp_path, _with(ORAL, 6, "CMT", "9"))
    with pytest.raises(ValueError, match=r"row 6 \(subject 2\): observation in CMT 9, a "
                                         r"compartment the model does not have"):
        nlme.OneCompartmentOral().check_population(pop)
    # an observation in the depot: the closed form predicts the central concentration
    pop = _read(tmp_path, _with(ORAL, 2, "CMT", "1"))
    with pytest.raises(ValueError, match=r"must be 2[\s\S]*row 2 \(subject 1\): "
                                         r"observation in CMT 1, the depot compartment"):
        nlme.OneCompartmentOral().check_population(pop)


def test_valid_compartments_pass_and_a_dose_into_central_is_an_iv_bolus(tmp_path):
    pop = _read(tmp_path, _with(ORAL, 4, "CMT", "2"))  # IV bolus into central: allowed
    nlme.OneCompartmentOral().check_population(pop)
    nlme.TwoCompartmentOral().check_population(pop)
    pop = _read(tmp_path, [x[:-1] + "1" for x in ORAL])  # IV data: all in CMT 1
    nlme.OneCompartmentIV().check_population(pop)
    nlme.TwoCompartmentIV().check_population(pop)


def test_iv1cmt_on_oral_data_says_use_an_oral_model(tmp_path):
    """Item 10: Theophylline-like data (observations in CMT 2) under iv1cmt."""
    pop = _read(tmp_path, ORAL)
    with pytest.raises(ValueError) as info:
        nlme.builtin_model("iv1cmt", pop)
    message = str(info.value)
    assert "rows 2, 3, 5, 6 (subjects 1, 2): observation in CMT 2" in message
    assert "one compartment, 1 (central)" in message
    assert "use an oral model (oral1cmt or oral2cmt)" in message
    with pytest.raises(ValueError, match="observation in CMT 2, the peripheral compartment"):
        nlme.builtin_model("iv2cmt", pop)


def test_without_a_cmt_column_the_default_1_means_the_models_own_compartments(tmp_path):
    """Warfarin-style: no CMT column, so every record reads CMT 1."""
    lines = [x.rsplit(",", 1)[0] for x in ORAL]
    pop = _read(tmp_path, lines, header="ID,TIME,DV,AMT,EVID")
    assert not pop.cmt_given
    for name in ("iv1cmt", "oral1cmt", "iv2cmt", "oral2cmt"):
        nlme.builtin_model(name, pop)
    assert nlme.load_theophylline_population().cmt_given
    assert not nlme.load_warfarin_population().cmt_given
    assert not pop.take([1]).cmt_given


def test_ode_model_compartments_are_its_states(tmp_path):
    ode = nlme.ODEModel(lambda t, a, p: -a, 2, observe=lambda a, p: a[1])
    ode.check_population(_read(tmp_path, ORAL))
    with pytest.raises(ValueError, match=r"1 \(state 0\) and 2 \(state 1\)[\s\S]*"
                                         r"row 1 \(subject 1\): dose into CMT 3"):
        ode.check_population(_read(tmp_path, _with(ORAL, 1, "CMT", "3")))


def test_observation_types_the_model_does_not_tell_apart_are_an_error(tmp_path):
    """Two DVIDs (a parent and a metabolite, say) met by a model that predicts one
    quantity under one error model, or by an ``observe`` mapping that lacks one of them:
    each record would silently get another type's prediction."""
    header = HEADER + ",DVID"
    lines = [x + ",1" for x in ORAL]
    lines[2] = lines[2][:-1] + "2"  # row 3: DVID 2
    lines[5] = lines[5][:-1] + "3"  # row 6: DVID 3
    pop = _read(tmp_path, lines, header)

    def model(observe, error=None):
        error = nlme.Proportional() if error is None else error
        return nlme.PopulationModel(
            nlme.ODEModel(lambda t, a, p: -p["k"] * a, 2, observe=observe),
            lambda th, eta, cov: {"k": th["k"] * jnp.exp(eta["eta_k"])},
            theta={"k": 1.0}, omega={"eta_k": 0.1}, error=error,
            sigma={n: 0.1 for em in (error.values() if isinstance(error, dict) else [error])
                   for n in em.sigma_names})

    one = lambda a, p: a[1]  # noqa: E731
    with pytest.raises(ValueError, match=r"3 kinds of observation, DVID 1 \(2 observations\), "
                                         r"2 \(1\), 3 \(1\); model ODEModel predicts one "
                                         r"quantity.*observe=\{dvid: ...\}"):
        model(one).check(pop)
    with pytest.raises(ValueError, match=r"observations of DVID 3 \(1 observation\), which "
                                         r"model ODEModel does not predict \(it predicts DVID "
                                         r"1, 2\).*prediction of DVID 1"):
        model({1: one, 2: lambda a, p: a[0]}).check(pop)
    model({1: one, 2: lambda a, p: a[0], 3: one}).check(pop)  # every type predicted
    # one quantity measured three ways (an error model per DVID) is the user's statement
    model(one, {k: nlme.Proportional(f"prop_sd_{k}") for k in (1, 2, 3)}).check(pop)
    # the closed-form models predict one quantity too, built-in or not
    with pytest.raises(ValueError, match="predicts one quantity"):
        nlme.PopulationModel(nlme.OneCompartmentOral(), lambda th, eta, cov: th,
                             theta={"ka": 1.0, "cl": 1.0, "v": 10.0}, omega={"eta": 0.1},
                             sigma={"add_sd": 0.5}, error=nlme.Additive()).check(pop)


def test_fit_and_the_command_check_compartments_before_any_work(tmp_path):
    path = _csv(tmp_path, _with(ORAL, 4, "CMT", "5"))
    pop = read_nonmem(path)
    model = nlme.PopulationModel(
        nlme.OneCompartmentOral(),
        lambda th, eta, cov: {"ka": th["tka"], "cl": th["tcl"], "v": th["tv"]},
        theta={"tka": 1.0, "tcl": 1.0, "tv": 10.0}, omega={"eta_cl": 0.1},
        sigma={"add_sd": 0.5}, error=nlme.Additive())
    for method in ("fo", "focei", "nuts"):
        with pytest.raises(ValueError, match=r"row 4 \(subject 2\): dose into CMT 5"):
            nlme.fit(model, pop, method, progress=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"row 4 \(subject 2\): dose into CMT 5"):
        cli.main(["pk", "fit", str(path), "--quiet", "--out", str(out)])
    assert not out.exists()


def test_a_pk_model_without_any_dose_is_an_error(tmp_path):
    lines = [x for x in ORAL if ",1,1" not in x[-4:]]
    pop = _read(tmp_path, lines)
    with pytest.raises(ValueError, match="no doses, so every prediction of oral1cmt"):
        nlme.OneCompartmentOral().check_population(pop)


# ---- item 5: empty, header-only, text IDs and covariates, other separators -------------


def test_empty_and_header_only_files_and_no_observations(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(NonmemDataError, match="the file is empty"):
        read_nonmem(empty)
    with pytest.raises(NonmemDataError, match=r"header \(ID, TIME, DV, AMT, EVID, CMT\) but "
                                              r"no data rows"):
        read_nonmem(_csv(tmp_path, []))
    with pytest.raises(NonmemDataError, match="no observation records"):
        read_nonmem(_csv(tmp_path, [ORAL[0], ORAL[3]]))
    # all observations left out (e.g. --dvid): said as such, not "sigma values must be > 0"
    pop = _read(tmp_path, ORAL)
    none = eqx.tree_at(lambda p: p.obs_mask, pop, np.zeros_like(pop.obs_mask))
    with pytest.raises(ValueError, match="no observations"):
        nlme.builtin_model("oral1cmt", none)


def test_character_ids_error_names_the_option_and_the_option_reads_them(tmp_path):
    lines = [x.replace("1,", "A01,", 1) if x.startswith("1,") else
             x.replace("2,", "B02,", 1) for x in ORAL]
    lines = [lines[3], lines[0], lines[4], lines[1], lines[5], lines[2]]  # interleaved
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, lines))
    message = str(info.value)
    assert "column ID: 6 values are not numbers ('B02', 'A01', ...; rows 1, 2, 3, 4, 5, 6)" \
        in message
    assert "character_ids=True" in message and "--character-ids" in message
    pop = _read(tmp_path, lines, character_ids=True)
    assert pop.ids == ("B02", "A01")  # order of first appearance; the text is kept
    np.testing.assert_array_equal(pop.obs_dv, [[9, 7], [5, 4]])
    assert pop.index("A01") == 1
    assert list(pop.to_frame().ID) == ["B02", "B02", "A01", "A01"]
    # messages name the text ID
    bad = _with(lines, 5, "TIME", "0.5")
    with pytest.raises(NonmemDataError, match=r"row 5 \(subject B02\), column TIME"):
        read_nonmem(_csv(tmp_path, bad), character_ids=True)


def test_text_covariate_error_suggests_drop_and_drop_or_covariates_read_it(tmp_path):
    header = HEADER + ",WT,SEX"
    lines = [x + (",70,M" if x.startswith("1,") else ",80,F") for x in ORAL]
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, lines, header))
    message = str(info.value)
    assert "column SEX: 6 values are not numbers ('M', 'F', ...;" in message
    assert "drop=['SEX'] (command line: --drop SEX)" in message
    assert "--covariates" in message
    assert "WT" not in message  # the numeric covariate is fine
    assert _read(tmp_path, lines, header, drop=["sex"]).covariate_names == ("WT",)
    assert _read(tmp_path, lines, header, covariates=["WT"]).covariate_names == ("WT",)
    # the command line: --drop / --covariates reach the reader
    path = _csv(tmp_path, lines, header)
    args = argparse.Namespace(drop="SEX", covariates=None, character_ids=False)
    assert _load(str(path), args).covariate_names == ("WT",)
    args = argparse.Namespace(drop=None, covariates="WT", character_ids=False)
    assert _load(str(path), args).covariate_names == ("WT",)
    with pytest.raises(NonmemDataError, match="column SEX"):
        _load(str(path), argparse.Namespace(drop=None, covariates=None, character_ids=False))


def test_drop_of_a_required_or_unknown_column_is_an_error(tmp_path):
    path = _csv(tmp_path, ORAL)
    with pytest.raises(NonmemDataError, match=r"column DV: a required column"):
        read_nonmem(path, drop=["dv"])
    with pytest.raises(NonmemDataError, match=r"column AGE: given to drop, but the table has "
                                              r"no such column"):
        read_nonmem(path, drop=["AGE"])


@pytest.mark.parametrize("sep, name", [(";", "semicolon"), ("\t", "tab"), ("  ", "whitespace")])
def test_other_separators_are_detected_with_a_warning(tmp_path, sep, name):
    reference = _read(tmp_path, ORAL)
    path = _csv(tmp_path, ORAL, name="other.csv", sep=sep)
    with pytest.warns(NonmemDataWarning, match=f"read as {name}-separated"):
        pop = read_nonmem(path)
    for field in ("obs_time", "obs_dv", "obs_cmt", "dose_amt", "dose_cmt"):
        np.testing.assert_array_equal(getattr(pop, field), getattr(reference, field))


def test_semicolon_file_with_decimal_commas(tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text("ID;TIME;DV;AMT;EVID;CMT\n1;0;.;100;1;1\n1;0,5;4,25;.;0;2\n")
    with pytest.warns(NonmemDataWarning, match="decimal comma"):
        pop = read_nonmem(path)
    assert pop.obs_time[0, 0] == 0.5 and pop.obs_dv[0, 0] == 4.25


# ---- item 6: accepted without a word --------------------------------------------------


def test_duplicate_observation_and_dose_records_warn_naming_the_rows(tmp_path):
    lines = [*ORAL[:3], ORAL[2], *ORAL[3:]]  # row 4 repeats row 3
    with pytest.warns(NonmemDataWarning, match=r"duplicate observation records .*rows 3, 4 "
                                               r"\(subject 1, TIME 2\).*counts twice"):
        pop = read_nonmem(_csv(tmp_path, lines))
    assert pop.n_obs == 5  # kept: the warning says what the fit does with them
    lines = [ORAL[0], ORAL[0], *ORAL[1:]]
    with pytest.warns(NonmemDataWarning, match=r"identical dose records: rows 1, 2 "
                                               r"\(subject 1, TIME 0\)"):
        read_nonmem(_csv(tmp_path, lines))
    # replicate measurements (same time, different DV, as in warfarin's subject 8): silent
    _read(tmp_path, [*ORAL[:3], "1,2,4.5,.,0,2", *ORAL[3:]])


def test_amt_zero_dose_records_warn_but_a_steady_state_infusion_does_not(tmp_path):
    with pytest.warns(NonmemDataWarning, match=r"dose records with AMT 0 give no drug: row 4 "
                                               r"\(subject\(s\) 2\)"):
        read_nonmem(_csv(tmp_path, [*ORAL[:3], "2,0,.,0,1,1", *ORAL[4:]]))
    header = HEADER + ",RATE,SS,II"
    lines = [x + ",0,0,0" for x in ORAL]
    lines[3] = "2,0,.,0,1,2,5,1,0"  # AMT 0, RATE 5, SS 1: a constant infusion at steady state
    _read(tmp_path, lines, header)


def test_subject_without_a_dose_warns_naming_it(tmp_path):
    lines = [*ORAL, "3,1,2.0,.,0,2", "3,2,1.0,.,0,2"]
    with pytest.warns(NonmemDataWarning, match=r"1 subject\(s\) without a dose record while "
                                               r"others have one: 3 \(rows 7-8\); a PK model "
                                               r"predicts 0"):
        read_nonmem(_csv(tmp_path, lines))


def test_a_covariate_that_changes_within_a_subject_warns_that_the_baseline_is_used(
        tmp_path, capsys):
    header = HEADER + ",WT"
    lines = [x + ",70" for x in ORAL]
    lines[5] = lines[5][:-2] + "80"  # subject 2 weighs 80 at its last record
    pop = _read(tmp_path, lines, header)
    assert pop.covariate_changes("WT") == [2]

    def model(covariates):
        return nlme.PopulationModel(
            nlme.OneCompartmentOral(),
            lambda th, eta, cov: {"ka": th["tka"], "cl": th["tcl"] * cov["WT"] / 70,
                                  "v": th["tv"]},
            theta={"tka": 1.0, "tcl": 1.0, "tv": 10.0}, omega={"eta_cl": 0.1},
            sigma={"add_sd": 0.5}, error=nlme.Additive(), covariates=covariates)

    # declared, or read without being declared (that was silent)
    for declared in (["WT"], []):
        with pytest.warns(NonmemDataWarning, match=r"covariate WT changes within 1 of 2 "
                                                   r"subjects \(2\); the model's `individual` "
                                                   r"function receives each subject's first"):
            model(declared).check(pop)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonmemDataWarning)
        model(["WT"]).check(_read(tmp_path, [x + ",70" for x in ORAL], header))
    # a design without the column it reads: said, not a KeyError from inside the trace
    with pytest.raises(ValueError, match=r"individual\(theta, eta, cov\) reads 'WT', which "
                                         r"none of its inputs has: .* cov \(the data's "
                                         r"covariates\) \[\]"):
        model([]).check(_read(tmp_path, ORAL))
    # the command says it in its own words, and keeps it for summary.json
    path = tmp_path / "model.py"
    path.write_text("from bayes_ude import nlme\n\n"
                    "def model(population):\n"
                    "    return nlme.PopulationModel(nlme.OneCompartmentOral(),\n"
                    "        lambda th, eta, cov: {'ka': th['tka'], 'v': th['tv'],\n"
                    "            'cl': th['tcl'] * cov['WT'] / 70 * (1 + eta['eta_cl'])},\n"
                    "        theta={'tka': 1.0, 'tcl': 1.0, 'tv': 10.0}, omega={'eta_cl': 0.1},\n"
                    "        sigma={'add_sd': 0.5}, error=nlme.Additive(), covariates=['WT'])\n")
    notes: list[str] = []
    build_model(argparse.Namespace(model=str(path)), pop, notes)
    err = capsys.readouterr().err
    assert "bayes-ude pk fit: warning: covariate WT changes within 1 of 2 subjects (2)" in err
    assert notes and notes[0].startswith("data: covariate WT changes")
    # ... once: the fit's own check of the model does not say it again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["pk", "fit", str(_csv(tmp_path, lines, header)), "--model", str(path),
                  "--method", "fo", "--no-plots", "--quiet", "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.count("covariate WT changes") == 1
    assert not [w for w in caught if issubclass(w.category, NonmemDataWarning)]


def test_blq_and_lloq_columns_censor_unless_dropped(tmp_path):
    # (censoring itself, Beal's M3, is tested in test_censoring.py)
    header = HEADER + ",BLQ"
    lines = [x + ",0" for x in ORAL]
    lines[2] = lines[2][:-1] + "1"
    lines[5] = lines[5][:-1] + "1"
    pop = _read(tmp_path, lines, header)
    np.testing.assert_array_equal(np.isfinite(pop.obs_lloq), [[False, True], [False, True]])
    # dropped: fitted as given (the user's explicit choice)
    pop = _read(tmp_path, lines, header, drop=["BLQ"])
    assert pop.n_obs == 4 and not pop.has_censored
    # no observation flagged: read, and the flag is not a covariate
    pop = _read(tmp_path, [x + ",0" for x in ORAL], header)
    assert pop.covariate_names == () and pop.n_obs == 4 and not pop.has_censored
    lines = [x + ",4.5" for x in ORAL]  # DV 4.0 in row 3 is below the LLOQ
    pop = _read(tmp_path, lines, HEADER + ",LLOQ")
    assert pop.obs_lloq[0, 1] == 4.5 and pop.obs_dv[0, 1] == 4.5
    with pytest.raises(NonmemDataError, match=r"row 3 \(subject 1\), column DV: '<0.1' is not "
                                              r"a number .*BLQ.*Beal's M3"):
        read_nonmem(_csv(tmp_path, _with(ORAL, 3, "DV", "<0.1")))


def test_the_command_prints_the_readers_warnings(tmp_path, capsys):
    path = _csv(tmp_path, [ORAL[0], ORAL[0], *ORAL[1:]])
    args = argparse.Namespace(drop=None, covariates=None, character_ids=False)
    messages = []
    pop = _load(str(path), args, messages)
    assert pop.n_doses == 3
    err = capsys.readouterr().err
    assert err.startswith("bayes-ude pk fit: warning: identical dose records: rows 1, 2")
    # and kept for summary.json's warnings
    assert len(messages) == 1 and messages[0].startswith("data: identical dose records")


def test_padding_efficiency_counts_real_over_padded_observations(tmp_path):
    # subject 1: 2 observations, subject 2: 3 -> 5 real of 2 x 3 padded slots
    pop = _read(tmp_path, [*ORAL, "2,4,6.0,.,0,2"])
    assert pop.padding_efficiency == pytest.approx(5 / 6)
    assert _read(tmp_path, ORAL).padding_efficiency == 1.0


def test_a_misspelt_individual_parameter_is_an_error(tmp_path):
    """individual() returning "lag" for "tlag" (or "F1" for "f"): the closed-form model never
    read it, the fit converged and reported tlag at its starting value. A key close to a
    parameter the model reads but is not given is an error now; any other key it does not
    read (a derived quantity) a warning."""

    pop = _read(tmp_path, ORAL)

    def model(extra):
        def individual(th, eta, cov):
            return {"ka": jnp.exp(th["tka"]), "cl": jnp.exp(th["tcl"] + eta["eta_cl"]),
                    "v": jnp.exp(th["tv"]), **{k: jnp.exp(th["tx"]) for k in extra}}

        return nlme.PopulationModel(nlme.OneCompartmentOral(), individual,
                                    theta={"tka": 0.0, "tcl": 0.0, "tv": 2.0, "tx": -1.0},
                                    omega={"eta_cl": 0.1}, sigma={"add_sd": 0.5},
                                    error=nlme.Additive())

    for key, meant in (("lag", "tlag"), ("F1", "f")):
        with pytest.raises(ValueError, match=rf"returns '{key}' \(did you mean '{meant}'\?\)"):
            model([key]).check(pop)
    with pytest.warns(NonmemDataWarning, match=r"returns \['thalf'\], which "
                                               "OneCompartmentOral does not read"):
        model(["thalf"]).check(pop)
    model(["tlag"]).check(pop)
    # a parameter the model needs, not returned: a KeyError inside the fit before
    no_cl = dataclasses.replace(model([]), individual=lambda th, eta, cov: {
        "ka": jnp.exp(th["tka"] + eta["eta_cl"]), "v": jnp.exp(th["tv"] + th["tx"])})
    with pytest.raises(ValueError, match=r"individual\(\) does not return 'cl', which "
                                         r"OneCompartmentOral needs"):
        no_cl.check(pop)
    # so are theta names that collide with an array's entries ("b[0]" twice)
    with pytest.raises(ValueError, match=r"parameter names used twice .*\['b\[0\]'\]"):
        dataclasses.replace(model([]), theta={**model([]).theta, "b": [0.0, 0.0],
                                              "b[0]": 0.0})
