"""After the fit: the sdtab, comparison of fits, the bootstrap and simulation of a new regimen,
each against an independent reference: the data file itself and the diagnostics, scipy's
chi-square, the ideal bootstrap and covariance-step standard errors of a sample mean, a
standalone fit of the same resampled data, and the closed-form superposition of a
one-compartment model written out here in numpy."""

import dataclasses
import json
import types
import warnings

import equinox as eqx
import jax
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from bayes_ude import datasets, nlme
from bayes_ude.nlme._tables import chi2_sf


def _quiet_fit(model, pop, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nlme.fit(model, pop, "focei", progress=False, **kwargs)


@pytest.fixture(scope="module")
def theoph():
    return nlme.load_theophylline_population()


@pytest.fixture(scope="module")
def nested_fits(theoph):
    """Theophylline, oral one-compartment, combined error, FOCEI: random effects on ka, cl
    and v (full) and on ka and cl (reduced: omega_eta_v = 0)."""
    full = _quiet_fit(nlme.builtin_model("oral1cmt", theoph, "combined"), theoph,
                      covariance=False)
    reduced = _quiet_fit(nlme.builtin_model("oral1cmt", theoph, "combined", eta=["ka", "cl"]),
                         theoph, covariance=False)
    return full, reduced


# ------------------------------------------------------------------------------ sdtab

def test_sdtab_is_the_diagnostics_and_ebes_in_data_order(nested_fits):
    fit = nested_fits[0]
    tab = nlme.sdtab(fit, n_sim=200)
    diag = fit.diagnostics(n_sim=200)  # the same default key: the same NPDE
    assert list(tab.columns) == ["ID", "TIME", "DV", "CMT", "PRED", "IPRED", "RES", "WRES",
                                 "IWRES", "CWRES", "NPDE", "ETA_KA", "ETA_CL", "ETA_V"]
    diag = diag.sort_values("ROW", kind="stable").reset_index(drop=True)
    for col in ("PRED", "IPRED", "RES", "WRES", "IWRES", "CWRES", "NPDE"):
        np.testing.assert_array_equal(tab[col], diag[col])
        assert diag[col].dtype == np.float64, col  # NPDE was float32 (a mean of booleans)
    # epsilon shrinkage, 1 - SD(IWRES); per observation type when there are several
    assert nlme.epsilon_shrinkage(diag) == pytest.approx(1 - np.std(diag.IWRES, ddof=1))
    two = pd.concat([diag, diag.assign(DVID=2, IWRES=diag.IWRES * 0.5)])
    with pytest.raises(ValueError, match=r"DVID \[1, 2\], each with its own error model"):
        nlme.epsilon_shrinkage(two)
    assert nlme.epsilon_shrinkage(two, 2) == pytest.approx(1 - np.std(diag.IWRES, ddof=1) / 2)
    with pytest.raises(ValueError, match="no observations with DVID 3"):
        nlme.epsilon_shrinkage(two, 3)
    # the observation records of the file itself, in its order
    raw = datasets.load_theophylline_nonmem()
    obs = raw[raw["EVID"] == 0].reset_index(drop=True)
    np.testing.assert_array_equal(tab["ID"].astype(int), obs["ID"])
    np.testing.assert_array_equal(tab["TIME"], obs["TIME"])
    np.testing.assert_array_equal(tab["DV"], obs["DV"])
    np.testing.assert_array_equal(tab["CMT"], obs["CMT"])
    pd.testing.assert_frame_equal(nlme.sdtab(fit, diagnostics=fit.diagnostics(n_sim=200)),
                                  tab)  # a table already computed is used as it is
    # ...in any order (sorted by TIME, 119 of 132 rows had another subject's ETAs)
    by_time = fit.diagnostics(n_sim=200).sort_values("TIME", kind="stable")
    pd.testing.assert_frame_equal(nlme.sdtab(fit, diagnostics=by_time), tab)
    eta = fit.eta.loc[tab["ID"]].to_numpy()  # each subject's EBE on each of its rows
    np.testing.assert_array_equal(tab[["ETA_KA", "ETA_CL", "ETA_V"]].to_numpy(), eta)
    # no random effects (an SG-MCMC result): said, not guessed
    with pytest.raises(TypeError, match="random effects"):
        nlme.sdtab(dataclasses.replace(fit, eta=None), n_sim=0)


def test_vpc_bin_edges_must_cover_the_observations(nested_fits):
    """Edges [0, 2, 6, 12] for times up to 24.65 h: the 20 observations after 12 h were
    counted in the 6-12 h bin (its median DV 4.215 where the 26 in [6, 12) give 5.075)."""
    fit = nested_fits[0]
    with pytest.raises(ValueError, match=r"20 observation times lie outside the edges "
                                         r"\[0, 12\]"):
        nlme.vpc(fit, n_sim=2, bins=np.array([0.0, 2.0, 6.0, 12.0]))
    with pytest.raises(ValueError, match="increasing edges"):
        nlme.vpc(fit, n_sim=2, bins=np.array([0.0, 12.0, 6.0, 25.0]))
    # replicates of another design: an IndexError from numpy before
    shape = np.asarray(fit.population.obs_mask).shape
    with pytest.raises(ValueError, match=r"sims: expected replicates of shape \(n, 12, "):
        nlme.vpc(fit, sims=np.zeros((2, shape[0] - 1, shape[1])))
    table = nlme.vpc(fit, n_sim=20, bins=np.array([0.0, 2.0, 6.0, 12.0, 25.0]),
                     prediction_corrected=False)
    t = np.asarray(fit.population.obs_time)[np.asarray(fit.population.obs_mask)]
    dv = np.asarray(fit.population.obs_dv)[np.asarray(fit.population.obs_mask)]
    in_bin = (t >= 6.0) & (t < 12.0)
    row = table.iloc[2]
    assert row["n"] == in_bin.sum() == 26
    assert row["obs_q0.5"] == pytest.approx(np.median(dv[in_bin]))


# ------------------------------------------------------------------------- comparison

@pytest.mark.parametrize("df", [1, 2, 3, 4, 7])
def test_chi2_sf_is_scipys(df):
    for x in (0.0, 1e-3, 0.5, 3.84, 6.5, 20.0, 80.0):
        assert chi2_sf(x, df) == pytest.approx(chi2.sf(x, df), rel=1e-12, abs=1e-300)


def _folder(tmp_path, name, fit, **changes):
    folder = tmp_path / name
    folder.mkdir()
    summary = json.loads(fit.to_json())
    summary.update({"data": "theophylline", "model": "oral1cmt", "status": "complete",
                    **changes})
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_compare_nested_fits_lrt_is_scipys(nested_fits, tmp_path):
    full, reduced = nested_fits
    comp = nlme.compare_fits([full, reduced], names=["full", "reduced"])
    stat = reduced.minus2ll - full.minus2ll
    assert stat == pytest.approx(6.53, abs=0.05)  # omega_eta_v matters, p about 0.01
    assert comp.reference == "full"  # the lowest OFV
    assert comp.table.loc["reduced", "delta_ofv"] == pytest.approx(reduced.ofv - full.ofv,
                                                                   rel=1e-12)
    assert comp.table.loc["full", "aic"] == full.aic
    assert comp.table.loc["reduced", "bic"] == reduced.bic
    assert list(comp.table["n_parameters"]) == [8, 7]
    test = comp.tests.iloc[0]
    assert len(comp.tests) == 1 and test["inferred"]  # found by parameter names
    assert (test["reduced"], test["full"], test["df"]) == ("reduced", "full", 1)
    assert test["p_value"] == pytest.approx(chi2.sf(stat, 1), rel=1e-12)
    # the same from the folders `bayes-ude pk fit --out` writes
    folders = [_folder(tmp_path, "full", full), _folder(tmp_path, "eta_ka_cl", reduced)]
    again = nlme.compare_fits(folders, nested=[("eta_ka_cl", "full")])
    assert again.tests.iloc[0]["p_value"] == pytest.approx(test["p_value"], rel=1e-12)
    assert not again.tests.iloc[0]["inferred"]
    json.dumps(again.summary())
    # fits of other data are refused
    other = _folder(tmp_path, "other", reduced, data="other.csv")
    with pytest.raises(ValueError, match="different data"):
        nlme.compare_fits([folders[0], other])
    fewer = _folder(tmp_path, "fewer", reduced, n_obs=full.n_obs - 1)
    with pytest.raises(ValueError, match="different data"):
        nlme.compare_fits([folders[0], fewer])
    # every pair is checked: a folder first (no observations to compare) let fits of
    # other data through (DV x 1.5: an LRT with p = 5e-28)
    import copy

    scaled = copy.copy(reduced)
    scaled.population = eqx.tree_at(lambda p: p.obs_dv, reduced.population,
                                     reduced.population.obs_dv * 1.5)
    with pytest.raises(ValueError, match="DV values or censoring"):
        nlme.compare_fits([folders[0], full, scaled])
    # folders: the resolved data path of the options, not the path as typed
    a, b = (_folder(tmp_path, f"in_{k}", fit, data="data.csv",
                    options={"data": f"/study/{k}/data.csv"})
            for k, fit in (("a", full), ("b", reduced)))
    with pytest.raises(ValueError, match="data '/study/b/data.csv' against '/study/a"):
        nlme.compare_fits([a, b])
    # the same values fitted as measured and as below the LLOQ (M3) are other data
    censored = _folder(tmp_path, "m3", reduced, n_censored=5)
    with pytest.raises(ValueError, match="5 observations fitted as below the LLOQ against 0"):
        nlme.compare_fits([_folder(tmp_path, "measured", full, n_censored=0), censored])


def test_nested_names_of_models_that_are_not_nested_are_not_tested(nested_fits, theoph,
                                                                   tmp_path):
    """Allometric scaling on one side only: fixing the full model's extra parameters does
    not give the reduced model, whatever the names say. The test was inferred (p = 0.036
    for an added v~DOSE with allometric weight scaling beside it)."""
    import copy

    full, reduced = nested_fits
    scaled = copy.copy(reduced)
    scaled.model = nlme.builtin_model("oral1cmt", theoph, "combined", eta=["ka", "cl"],
                                      allometric="WT")
    assert scaled.model.parameter_names() == reduced.model.parameter_names()
    with pytest.warns(UserWarning, match="nested parameter names but differ"):
        comp = nlme.compare_fits([full, scaled], names=["full", "scaled"])
    assert comp.tests.empty
    # the same from folders: the options say it (and a covariate term's form)
    opts = {"model": "oral1cmt", "allometric": None, "covariate": "cl~WT:power"}
    folders = [_folder(tmp_path, "full", full, options=opts),
               _folder(tmp_path, "reduced", reduced, options={**opts, "allometric": "WT"}),
               _folder(tmp_path, "other_form", reduced,
                       options={**opts, "covariate": "cl~WT:exponential"}),
               _folder(tmp_path, "same", reduced, options=opts)]
    with pytest.warns(UserWarning, match="nested parameter names but differ"):
        comp = nlme.compare_fits(folders)
    assert [tuple(r) for r in comp.tests[["reduced", "full"]].values] == [("same", "full")]
    # allometric scaling beside a term on its column (cl_WT names WT): the same, for fits
    powered = copy.copy(reduced)
    powered.model = nlme.builtin_model("oral1cmt", theoph, "combined", eta=["ka", "cl"],
                                       covariates="cl~WT:power")
    both = copy.copy(full)
    both.model = nlme.builtin_model("oral1cmt", theoph, "combined", allometric="WT",
                                    covariates="cl~WT:power,v~DOSE:power")
    both.n_parameters = powered.n_parameters + 2
    with pytest.warns(UserWarning, match="nested parameter names but differ"):
        assert nlme.compare_fits([powered, both]).tests.empty
    # a parameter both hold fixed, at different values: not nested (an LRT, p = 4e-11)
    at = {}
    for name, fit, value in (("reduced", reduced, 0.45), ("full", full, 1.5)):
        at[name] = copy.copy(fit)
        at[name].fixed = ("tka",)
        at[name].estimates = fit.estimates.copy()
        at[name].estimates["tka"] = value
    with pytest.warns(UserWarning, match="a parameter both hold fixed at different values"):
        assert nlme.compare_fits(at).tests.empty
    at["full"].estimates["tka"] = 0.45
    assert len(nlme.compare_fits(at).tests) == 1


# -------------------------------------------------------------------------- bootstrap

class Level(nlme.StructuralModel):
    """``f = level`` at every observation: with an additive error, ``y_ij = mu + eta_i +
    e_ij``, whose ML estimate of ``mu`` (balanced design) is the grand mean."""

    def predict(self, params, subject):
        return params["level"] + 0.0 * subject.obs_time


def _level_data(n=20, m=4, seed=1):
    rng = np.random.default_rng(seed)
    b = rng.normal(0.0, 0.8, n)
    rows = [dict(ID=i + 1, TIME=float(j), DV=3.0 + b[i] + rng.normal(0.0, 0.5))
            for i in range(n) for j in range(m)]
    df = pd.DataFrame(rows)
    model = nlme.PopulationModel(Level(), lambda th, eta, cov: {"level": th["mu"] + eta["eta"]},
                                 theta={"mu": 2.0}, omega={"eta": 0.3}, sigma={"add_sd": 0.3},
                                 error=nlme.Additive())
    return nlme.read_nonmem(df), df, model


def test_bootstrap_se_of_a_sample_mean():
    """``mu_hat`` is the mean of the subject means ``ybar_i``: resampling subjects, its
    ideal bootstrap SE is ``sqrt(sum (ybar_i - ybar)^2) / N``, which the ML covariance step
    gives too (``omega_hat + sigma_hat^2 / m`` is the ML variance of the ``ybar_i``)."""
    pop, df, model = _level_data()
    fit = _quiet_fit(model, pop)
    means = df.groupby("ID")["DV"].mean().to_numpy()
    ideal = np.sqrt(np.sum((means - means.mean()) ** 2)) / len(means)
    assert fit.estimates["mu"] == pytest.approx(means.mean(), rel=1e-6)
    assert fit.se["mu"] == pytest.approx(ideal, rel=1e-3)
    boot = nlme.bootstrap(model, pop, n=200, start=fit, progress=False)
    assert boot.success_rate == 1.0
    # Monte Carlo error of an SD from 200 replicates: 1 / sqrt(2 * 199) = 5 %
    assert boot.se["mu"] == pytest.approx(ideal, rel=0.15)
    ci = boot.ci()
    assert list(ci.columns) == ["original", "median", "se", "p2.5", "p97.5"]
    assert ci.loc["mu", "p2.5"] < fit.estimates["mu"] < ci.loc["mu", "p97.5"]
    # each replicate's mu is its resampled subjects' grand mean
    np.testing.assert_allclose(boot.replicates["mu"], means[boot.indices].mean(axis=1),
                               rtol=1e-6)
    json.dumps(boot.summary())
    # a start fitted to other data was taken as this data's original estimates and EBEs
    for other in (_level_data(seed=2)[0], _level_data(n=21)[0]):  # same IDs; other IDs
        with pytest.raises(ValueError, match="start is a fit of other data"):
            nlme.bootstrap(model, other, n=2, start=fit, progress=False)
    # start's fixed parameters are held unless fixed=() frees them (it could not before)
    held = _quiet_fit(model, pop, fixed=("add_sd",))
    for fixed, varies in ((None, False), ((), True)):
        boot = nlme.bootstrap(model, pop, n=2, start=held, fixed=fixed, progress=False)
        assert (boot.replicates["add_sd"] != 0.3).all() == varies


def test_batched_replicates_equal_standalone_fits(theoph, nested_fits):
    """The vmapped BFGS (3 replicates in groups of 2: one padded) converges where
    :func:`fit` of the same resampled subjects does."""
    full = nested_fits[0]
    boot = nlme.bootstrap(full.model, theoph, n=3, start=full, group=2, progress=False,
                          key=jax.random.key(3))
    assert boot.success.all()
    for i in (0, 2):
        ref = _quiet_fit(full.model, theoph.take(boot.indices[i]), covariance=False)
        np.testing.assert_allclose(boot.replicates.loc[i, boot.parameters].to_numpy(float),
                                   ref.estimates.to_numpy(), rtol=1e-4)
        assert boot.replicates.loc[i, "ofv"] == pytest.approx(ref.ofv, abs=1e-6)


# ------------------------------------------------------------------ a new regimen

def _one_compartment(t, doses, ka, cl, v):
    """Closed-form superposition of first-order absorption doses ``(time, amt)``."""
    k = cl / v
    c = np.zeros_like(t)
    for td, amt in doses:
        tau = np.clip(t - td, 0.0, None)
        c += amt * ka / (v * (ka - k)) * (np.exp(-k * tau) - np.exp(-ka * tau))
    return c


def test_simulated_new_regimen_is_the_closed_form(theoph, nested_fits):
    ka, cl, v = 1.5, 2.8, 32.0
    values = {"tka": np.log(ka), "tcl": np.log(cl), "tv": np.log(v), "omega_eta_ka": 1e-24,
              "omega_eta_cl": 1e-24, "omega_eta_v": 1e-24, "add_sd": 1e-9, "prop_sd": 1e-9}
    model = nested_fits[0].model  # specialised to Theophylline's single oral bolus
    typical = nlme.point_estimates(model, values)
    doses = [(0.0, 320.0), (12.0, 160.0)]
    times = [0.5, 1.0, 2.0, 6.0, 12.0, 12.5, 14.0, 24.0, 36.0]
    design = nlme.design(3, [(t, a, 1) for t, a in doses], times, obs_cmt=2)
    tab = nlme.simtab(typical, design, n=4)
    ref = _one_compartment(np.asarray(times), doses, ka, cl, v)
    assert len(tab) == 4 * 3 * len(times)
    assert list(tab.columns) == ["REP", "ID", "TIME", "CMT", "PRED", "DV"]
    np.testing.assert_allclose(tab["PRED"], np.tile(ref, 12), rtol=1e-10)
    np.testing.assert_allclose(tab["DV"], np.tile(ref, 12), rtol=1e-7)  # eta, eps ~ 0
    # an infusion into the central compartment: terms the fitted data never needed
    design = nlme.design(1, [dict(time=0.0, amt=100.0, cmt=2, rate=50.0)], [1.0, 2.0, 5.0],
                         obs_cmt=2)
    k = cl / v
    inf = 50.0 / cl * (1 - np.exp(-k * np.minimum([1.0, 2.0, 5.0], 2.0)))
    inf *= np.exp(-k * np.clip(np.asarray([1.0, 2.0, 5.0]) - 2.0, 0.0, None))
    np.testing.assert_allclose(nlme.simtab(typical, design, n=1)["PRED"], inf, rtol=1e-10)
    # nlme.simulate specialises to the design as well (it once simulated it as a bolus)
    np.testing.assert_allclose(nlme.simulate(typical, 1, jax.random.key(2), design)[0, 0],
                               inf, rtol=1e-6)
    # a fit's summary.json gives the fit's parameter vector back
    full = nested_fits[0]
    np.testing.assert_allclose(nlme.point_estimates(full.model, full.summary()).u, full.u,
                               rtol=1e-12, atol=1e-12)
    # the fitted model simulates the regimen with its variability: (n, subjects, records)
    sims = nlme.simulate(full, 50, jax.random.key(1), nlme.design(
        5, [(t, a, 1) for t, a in doses], times, covariates={"WT": 70.0}, obs_cmt=2))
    assert sims.shape == (50, 5, len(times)) and np.isfinite(sims).all()


def test_new_data_are_held_to_the_model():
    """simtab, simulate and the predictions on new data run the fit's checks of the data:
    each case below gave numbers without a word (an unseen level got the reference level's
    effect; a changing weight its baseline; DVID 2 rows the DVID 1 prediction, or DV 0
    without an error model; log 0 a saturated network)."""
    cl, v = 2.0, 20.0
    fitted = nlme.design(4, [(0.0, 100.0)], [1, 2, 4, 8, 12],
                         covariates={"SEX": [0, 0, 1, 1], "WT": [50, 60, 70, 80]})
    model = nlme.builtin_model("iv1cmt", fitted, "additive",
                               covariates="cl~SEX:categorical,cl~WT:power:70")
    values = {"tcl": np.log(cl), "tv": np.log(v), "cl_SEX_1": np.log(3.0), "cl_WT": 0.75,
              "omega_eta_cl": 0.01, "omega_eta_v": 0.01, "add_sd": 0.1}
    typical = nlme.point_estimates(model, values)
    ok = nlme.design(2, [(0.0, 100.0)], [4.0], covariates={"SEX": [0, 1], "WT": 70.0})
    pred = nlme.simtab(typical, ok, n=1)["PRED"].to_numpy()
    np.testing.assert_allclose(pred, 100 / v * np.exp(-np.array([1.0, 3.0]) * cl / v * 4),
                               rtol=1e-10)

    def table(**columns):
        base = {"ID": [1] * 3, "TIME": [0.0, 4.0, 6.0], "AMT": [100.0, 0, 0],
                "EVID": [1, 0, 0], "DV": [0.0, 1.0, 1.0], "SEX": [0] * 3, "WT": [70.0] * 3}
        return nlme.read_nonmem(pd.DataFrame(base | columns))

    for data, match in (
            (nlme.design(3, [(0.0, 100.0)], [4.0], covariates={"SEX": [0, 1, 2], "WT": 70.0}),
             r"cl~SEX: level\(s\) 2 of SEX were not in the data"),
            (nlme.design(1, [(0.0, 100.0)], [4.0], covariates={"SEX": 0, "WT": 0.0}),
             r"\(power form\) needs WT > 0"),
            (table(WT=[50.0, 50.0, 100.0]), r"cl~WT: WT changes within subject"),
            (table(DVID=[1, 1, 2]), r"predicts one quantity")):
        for run in (lambda d: nlme.simtab(typical, d, n=1),
                    lambda d: nlme.simulate(typical, 1, jax.random.key(0), d)):
            with pytest.raises(ValueError, match=match):
                run(data)
    # a covariate network's log input: log 0 saturated the network
    train = nlme.design(6, [(0.0, 100.0)], [1, 4, 8],
                        covariates={"EGFR": [30.0, 45, 60, 75, 90, 105]})
    deep = nlme.covariate_model(nlme.builtin_model("iv1cmt", train, "additive"), train,
                                ["EGFR"], log=["EGFR"], key=jax.random.key(0))
    w = np.asarray(deep.theta["w_network"])
    for data in (nlme.design(1, [(0.0, 100.0)], [4.0], covariates={"EGFR": 0.0}),
                 {"EGFR": [60.0, 0.0]}):
        with pytest.raises(ValueError, match="EGFR"):
            if isinstance(data, dict):
                deep.individual.effect.evaluate(w, data)
            else:
                nlme.population_predictions((deep, deep.theta), data)


def test_command_line_seed_drives_the_vpc(nested_fits):
    """--seed was used by the sampler and the bootstrap only: the VPC of a maximum-
    likelihood fit was the same for every seed. Seed 0 is the API's default key."""
    from bayes_ude.nlme._command_plots import vpc_tables

    fit = nested_fits[0]

    def table(seed):
        return vpc_tables(fit, types.SimpleNamespace(seed=seed, dvid=None), n_sim=50)[None]

    pd.testing.assert_frame_equal(table(0), fit.vpc(n_sim=50))
    assert not table(1).equals(table(0))
