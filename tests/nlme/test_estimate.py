"""Population estimation against independent references: R's nlme on Theophylline (stored
reference, `benchmarks/r/theoph_nlme.R`), the exact marginal likelihood of a linear mixed
model, finite differences, and parameter recovery on data simulated from known truth with
numpy (not with the package)."""

import dataclasses
import re
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from bayes_ude import datasets, nlme
from bayes_ude.nlme._estimate import setup_problem

REF = Path(__file__).resolve().parents[1] / "reference" / "theoph_nlme.csv"


def nlme_reference() -> dict:
    return dict(pd.read_csv(REF).itertuples(index=False, name=None))


def theoph_mg_per_kg():
    """Theophylline with doses in mg/kg, as in R's `Theoph` (nlme's SSfol model)."""
    df = datasets.load_theophylline_nonmem()
    df["AMT"] = np.where(df["EVID"] == 1, df["DOSE"], 0.0)
    return nlme.read_nonmem(df)


def ssfol_model(theta, omega, sigma):
    """nlme's `SSfol(Dose, Time, lKe, lKa, lCl)` with random effects on lKa and lCl."""

    def individual(th, eta, cov):
        cl = jnp.exp(th["lCl"] + eta["eta_cl"])
        return {"ka": jnp.exp(th["lKa"] + eta["eta_ka"]), "cl": cl, "v": cl / jnp.exp(th["lKe"])}

    return nlme.PopulationModel(nlme.OneCompartmentOral(), individual, theta=theta,
                                omega=omega, sigma=sigma, error=nlme.Additive())


def test_foce_objective_equals_nlme_loglik_at_nlme_estimates():
    """The likelihood itself: at nlme's estimates our FOCE −2LL is nlme's −2 logLik."""
    ref = nlme_reference()
    model = ssfol_model({k: ref[k] for k in ("lKe", "lKa", "lCl")},
                        {"eta_ka": ref["sd_lKa"] ** 2, "eta_cl": ref["sd_lCl"] ** 2},
                        {"add_sd": ref["sigma"]})
    pop = theoph_mg_per_kg()
    ofv = float(nlme.objective(model, pop, "foce"))
    minus2ll = ofv + pop.n_obs * np.log(2 * np.pi)
    assert minus2ll == pytest.approx(-2 * ref["loglik"], abs=1e-5)
    # additive error: FOCE and FOCEI are the same approximation
    assert float(nlme.objective(model, pop, "focei")) == pytest.approx(ofv, abs=1e-8)


@pytest.fixture(scope="module")
def theoph_fits():
    pop = theoph_mg_per_kg()
    model = ssfol_model({"lKe": -2.4, "lKa": 0.45, "lCl": -3.2},
                        {"eta_ka": 0.4, "eta_cl": 0.07}, {"add_sd": 0.7})
    return {m: nlme.fit(model, pop, m, progress=False) for m in ("lb", "foce")}


def test_lindstrom_bates_reproduces_nlme(theoph_fits):
    ref = nlme_reference()
    fit = theoph_fits["lb"]
    est = fit.estimates
    for k in ("lKe", "lKa", "lCl"):
        assert est[k] == pytest.approx(ref[k], abs=1e-3), k
    assert np.sqrt(est["omega_eta_ka"]) == pytest.approx(ref["sd_lKa"], abs=1e-3)
    assert np.sqrt(est["omega_eta_cl"]) == pytest.approx(ref["sd_lCl"], abs=1e-3)
    assert est["add_sd"] == pytest.approx(ref["sigma"], abs=1e-3)
    assert -0.5 * fit.minus2ll == pytest.approx(ref["loglik"], abs=0.05)
    # standard errors: nlme's come from the linearised GLS step, ours from the observed
    # information of the FOCE likelihood; they agree to a few per cent
    for k in ("lKe", "lKa", "lCl"):
        assert fit.se[k] == pytest.approx(ref[f"se_{k}"], rel=0.05), k


def test_foce_maximises_the_likelihood_nlme_reports(theoph_fits):
    """FOCE proper reaches a higher likelihood than nlme's fixed point, nearby."""
    ref = nlme_reference()
    fit = theoph_fits["foce"]
    assert fit.converged
    assert fit.minus2ll < -2 * ref["loglik"]
    assert fit.minus2ll > -2 * ref["loglik"] - 0.1
    for k in ("lKe", "lKa", "lCl"):
        assert fit.estimates[k] == pytest.approx(ref[k], abs=0.03), k
    # the optimum: the gradient of the OFV vanishes (checked by finite differences)
    u = jnp.asarray(fit.u)
    h = 1e-5
    for i in range(u.size):
        e = jnp.zeros_like(u).at[i].set(h)
        d = (float(nlme.objective(fit.model, fit.population, "foce", u + e))
             - float(nlme.objective(fit.model, fit.population, "foce", u - e))) / (2 * h)
        assert abs(d) < 1e-3, (i, d)


class Line(nlme.StructuralModel):
    """``f = a + b t``: with additive error the population model is a linear mixed model."""

    def predict(self, params, subject):
        return params["a"] + params["b"] * subject.obs_time


def _linear_population(n=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        a, b = 2.0 + rng.normal(0, 0.7), -0.5 + rng.normal(0, 0.3)
        for t in np.sort(rng.uniform(0, 4, 3 + i % 4)):
            rows.append(dict(ID=i, TIME=t, DV=a + b * t + rng.normal(0, 0.4), EVID=0))
    return nlme.read_nonmem(pd.DataFrame(rows)), pd.DataFrame(rows)


@pytest.mark.parametrize("method", ["fo", "foce", "focei", "laplace"])
def test_linear_mixed_model_likelihood_is_exact(method):
    """All four approximations are exact for a model linear in eta with additive error:
    the objective equals the marginal likelihood computed with scipy."""
    pop, df = _linear_population()
    model = nlme.PopulationModel(
        Line(), lambda th, eta, cov: {"a": th["ta"] + eta["eta_a"], "b": th["tb"] + eta["eta_b"]},
        theta={"ta": 1.7, "tb": -0.4}, omega=nlme.Omega(("eta_a", "eta_b"),
                                                        np.array([[0.5, 0.1], [0.1, 0.2]]),
                                                        "full"),
        sigma={"add_sd": 0.5}, error=nlme.Additive())
    omega = np.array([[0.5, 0.1], [0.1, 0.2]])
    ref = 0.0
    for _, g in df.groupby("ID"):
        z = np.column_stack([np.ones(len(g)), g["TIME"]])
        ref += multivariate_normal(z @ [1.7, -0.4], z @ omega @ z.T + 0.25 * np.eye(len(g))
                                   ).logpdf(g["DV"])
    ofv = float(nlme.objective(model, pop, method))
    assert ofv + pop.n_obs * np.log(2 * np.pi) == pytest.approx(-2 * ref, rel=1e-10)


def test_fo_fit_reports_posthoc_ebes():
    """FO's objective needs no EBEs; its fit reported eta = 0 (100 % shrinkage, IPRED =
    PRED). Now the conditional modes at the estimates, as NONMEM's POSTHOC: for a linear
    mixed model the BLUP ``Omega Z' V^-1 (y - Z beta)``, written out in numpy."""
    pop, df = _linear_population()
    model = nlme.PopulationModel(
        Line(), lambda th, eta, cov: {"a": th["ta"] + eta["eta_a"], "b": th["tb"] + eta["eta_b"]},
        theta={"ta": 1.7, "tb": -0.4}, omega=nlme.Omega(("eta_a", "eta_b"),
                                                        np.array([0.5, 0.2]), "diagonal"),
        sigma={"add_sd": 0.5}, error=nlme.Additive())
    fit = nlme.fit(model, pop, "fo", progress=False, covariance=False)
    est = fit.estimates
    beta = np.array([est["ta"], est["tb"]])
    omega = np.diag([est["omega_eta_a"], est["omega_eta_b"]])
    for i, g in df.groupby("ID"):
        z = np.column_stack([np.ones(len(g)), g["TIME"]])
        v = z @ omega @ z.T + est["add_sd"] ** 2 * np.eye(len(g))
        blup = omega @ z.T @ np.linalg.solve(v, g["DV"].to_numpy() - z @ beta)
        np.testing.assert_allclose(fit.eta.loc[i].to_numpy(), blup, rtol=1e-6, atol=1e-9)
    assert all(0.0 < s < 1.0 for s in fit.shrinkage.values)


def _simulate_oral(n, seed, theta, omega_sd, add_sd, prop_sd,
                   times=(0.5, 1, 2, 4, 6, 8, 12, 24)):
    """One-compartment oral data from known truth, computed with numpy."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        wt = rng.uniform(50, 100)
        dose = 4.0 * wt
        ka = np.exp(theta["tka"] + rng.normal(0, omega_sd[0]))
        cl = np.exp(theta["tcl"] + rng.normal(0, omega_sd[1]))
        v = np.exp(theta["tv"] + rng.normal(0, omega_sd[2]))
        k = cl / v
        rows.append(dict(ID=i, TIME=0.0, DV=".", AMT=dose, EVID=1, CMT=1, WT=wt))
        t = np.asarray(times, float)
        c = dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
        y = c + np.sqrt(add_sd**2 + (prop_sd * c) ** 2) * rng.normal(size=t.size)
        for tt, yy in zip(t, y, strict=True):
            rows.append(dict(ID=i, TIME=tt, DV=yy, AMT=".", EVID=0, CMT=2, WT=wt))
    return nlme.read_nonmem(pd.DataFrame(rows))


TRUTH = {"tka": np.log(1.5), "tcl": np.log(2.7), "tv": np.log(30.0)}
OMEGA_SD = (0.4, 0.3, 0.2)
SIGMA = {"add_sd": 0.2, "prop_sd": 0.1}


def _oral_model():
    def individual(th, eta, cov):
        return {p: jnp.exp(th[f"t{p}"] + eta[f"eta_{p}"]) for p in ("ka", "cl", "v")}

    return nlme.PopulationModel(
        nlme.OneCompartmentOral(), individual,
        theta={"tka": 0.0, "tcl": 0.5, "tv": 3.0},
        omega={"eta_ka": 0.1, "eta_cl": 0.1, "eta_v": 0.1},
        sigma={"add_sd": 0.5, "prop_sd": 0.2}, error=nlme.Combined())


@pytest.mark.slow
def test_focei_recovers_parameters_and_wald_intervals_cover():
    """Three replicates of 100 simulated subjects (combined error): theta within 10 %,
    omega within 35 %; the 95 % Wald intervals of theta contain the truth (all 9 here;
    the 20-replicate coverage study is in benchmarks/nlme_recovery.py)."""
    model = _oral_model()
    covered, total = 0, 0
    for seed in range(3):
        pop = _simulate_oral(100, seed, TRUTH, OMEGA_SD, **SIGMA)
        fit = nlme.fit(model, pop, "focei", progress=False)
        assert fit.converged
        for k, v in TRUTH.items():
            assert abs(np.exp(fit.estimates[k]) / np.exp(v) - 1) < 0.10, (seed, k)
            covered += abs(fit.estimates[k] - v) < 1.96 * fit.se[k]
            total += 1
        for name, sd in zip(("eta_ka", "eta_cl", "eta_v"), OMEGA_SD, strict=True):
            assert abs(fit.estimates[f"omega_{name}"] / sd**2 - 1) < 0.35, (seed, name)
        assert fit.estimates["prop_sd"] == pytest.approx(SIGMA["prop_sd"], rel=0.25)
    assert covered >= 8, f"{covered}/{total}"


@pytest.mark.slow
def test_diagnostics_on_data_from_the_model():
    """CWRES and NPDE are ~N(0, 1) and the VPC's observed median sits inside the simulated
    interval when the model is true; EBE shrinkage follows its definition."""
    pop = _simulate_oral(60, 11, TRUTH, OMEGA_SD, **SIGMA)
    fit = nlme.fit(_oral_model(), pop, "focei", progress=False)
    diag = fit.diagnostics(n_sim=400)
    assert len(diag) == pop.n_obs
    for col in ("CWRES", "NPDE"):
        assert abs(diag[col].mean()) < 0.15, col
        assert diag[col].std() == pytest.approx(1.0, abs=0.15), col
    ebe = fit.eta.to_numpy()
    shrink = 1 - ebe.std(0, ddof=1) / np.sqrt(np.diag(fit.omega.to_numpy()))
    np.testing.assert_allclose(fit.shrinkage.to_numpy(), shrink)
    table = fit.vpc(n_sim=300)
    inside = ((table["obs_q0.5"] >= table["sim_q0.5_lo"])
              & (table["obs_q0.5"] <= table["sim_q0.5_hi"]))
    assert inside.mean() >= 0.75
    params = fit.individual_parameters()
    np.testing.assert_allclose(params["cl"], np.exp(fit.estimates["tcl"] + ebe[:, 1]))


def test_gradient_of_focei_with_proportional_error():
    """Implicit differentiation through the EBEs: the gradient of the OFV against central
    differences (interaction: the residual variance depends on eta)."""
    pop = _simulate_oral(6, 3, TRUTH, OMEGA_SD, **SIGMA)
    model = _oral_model()
    u = jnp.asarray(model.initial_vector()) + 0.05
    for method in ("focei",):  # laplace's objective is checked exactly in the LMM test
        eta0 = jnp.zeros((pop.n_subjects, 3))
        from bayes_ude.nlme._likelihood import population_objective

        grad = jax.jit(jax.grad(
            lambda x, m=method, e0=eta0: population_objective(model, m, x, pop, e0)[0]))(u)
        h = 1e-5
        for i in range(u.size):
            e = jnp.zeros_like(u).at[i].set(h)
            fd = (float(nlme.objective(model, pop, method, u + e))
                  - float(nlme.objective(model, pop, method, u - e))) / (2 * h)
            assert float(grad[i]) == pytest.approx(fd, rel=1e-5, abs=1e-5), (method, i)


def test_fixed_parameters_stay_fixed():
    pop = _simulate_oral(30, 5, TRUTH, OMEGA_SD, **SIGMA)
    fit = nlme.fit(_oral_model(), pop, "foce", fixed={"tv": float(TRUTH["tv"]),
                                                      "prop_sd": 0.1}, progress=False)
    assert fit.estimates["tv"] == TRUTH["tv"]
    assert fit.estimates["prop_sd"] == pytest.approx(0.1)
    assert np.isnan(fit.se["tv"]) and np.isfinite(fit.se["tcl"])
    assert fit.n_parameters == 6  # 3 theta + 3 omega + 2 sigma, two fixed


def test_bad_inputs_are_clear_errors():
    pop = _simulate_oral(3, 0, TRUTH, OMEGA_SD, **SIGMA)
    model = _oral_model()
    with pytest.raises(ValueError, match="method must be one of"):
        nlme.fit(model, pop, "saem")
    with pytest.raises(ValueError, match="unknown parameters to fix"):
        nlme.fit(model, pop, fixed=["tk"])
    with pytest.raises(ValueError, match="covariates"):
        nlme.PopulationModel(nlme.OneCompartmentOral(), lambda t, e, c: {}, theta={"a": 0.0},
                             omega={"eta": 0.1}, sigma={"add_sd": 1.0}, error=nlme.Additive(),
                             covariates=["AGE"]).check(pop)
    with pytest.raises(ValueError, match="sigma must give exactly"):
        nlme.PopulationModel(nlme.OneCompartmentOral(), lambda t, e, c: {}, theta={"a": 0.0},
                             omega={"eta": 0.1}, sigma={"sd": 1.0}, error=nlme.Additive())
    with pytest.raises(ValueError, match="positive-definite"):
        nlme.Omega(("a", "b"), np.array([[1.0, 2.0], [2.0, 1.0]]), "full")
    negative = eqx.tree_at(lambda p: p.obs_dv, pop, np.where(pop.obs_mask, -1.0, 0.0))
    with pytest.raises(ValueError, match=r"exponential error model needs DV > 0; subject 1, row"):
        nlme.PopulationModel(nlme.OneCompartmentOral(),
                             lambda t, e, c: {"ka": t["a"], "cl": t["a"], "v": t["a"]},
                             theta={"a": 0.0},
                             omega={"eta": 0.1}, sigma={"exp_sd": 0.1},
                             error=nlme.Exponential()).check(negative)
    with pytest.raises(ValueError, match="no error model"):
        nlme.PopulationModel(nlme.OneCompartmentOral(),
                             lambda t, e, c: {"ka": t["a"], "cl": t["a"], "v": t["a"]},
                             theta={"a": 0.0},
                             omega={"eta": 0.1}, sigma={"add_sd": 0.1},
                             error={2: nlme.Additive()}).check(pop)
    # an error model for a DVID the data lack: its SD would be "estimated" at its start
    base = _oral_model()
    two = dataclasses.replace(base, error={1: nlme.Combined(), 2: nlme.Additive("pd_sd")},
                              sigma={**base.sigma, "pd_sd": 0.3})
    for method, advice in (("focei", r"fixed=\['pd_sd'\]"), ("nuts", "cannot hold")):
        with pytest.raises(ValueError, match=r"no observations of DVID 2 \(they hold DVID 1 "
                                             r"\(\d+ observations\)\).*pd_sd would stay at "
                                             r"the initial value.*" + advice):
            nlme.fit(two, pop, method, progress=False)
    setup_problem(two, pop, "focei", fixed=["pd_sd"])  # held fixed: nothing to inform
    # a fixed effect and a random effect that individual() never uses
    unused = dataclasses.replace(base, theta={**base.theta, "tq": 0.1},
                                 omega=nlme.Omega.diagonal({"eta_ka": 0.1, "eta_cl": 0.1,
                                                            "eta_v": 0.1, "eta_q": 0.1}))
    for method, advice in (("focei", r"fixed=\['tq', 'omega_eta_q'\]"), ("sgld", "cannot hold")):
        with pytest.raises(ValueError, match=r"individual\(\) never uses fixed effect tq and "
                                             r"random effect eta_q: .*informs tq, omega_eta_q.*"
                                             + advice):
            nlme.fit(unused, pop, method, progress=False)
    setup_problem(unused, pop, "focei", fixed=["tq", "omega_eta_q"])
    # an element of an omega block held alone moved with the others (its Cholesky entry
    # was held: omega_eta_v fixed at 0.1 was reported at 0.109); the whole block can be
    block = dataclasses.replace(base, omega=nlme.Omega(
        ("eta_ka", "eta_cl", "eta_v"), np.full(3, 0.1), [("eta_cl", "eta_v")]))
    with pytest.raises(ValueError, match=r"omega_eta_v is an element of the omega block "
                                         r"\['eta_cl', 'eta_v'\].*fix the whole block "
                                         r"\['omega_eta_cl', 'omega_eta_cl_eta_v', "
                                         r"'omega_eta_v'\]"):
        setup_problem(block, pop, "focei", fixed=["omega_eta_v"])
    setup_problem(block, pop, "focei", fixed=["omega_eta_ka"])
    setup_problem(block, pop, "focei",
                  fixed=["omega_eta_cl", "omega_eta_cl_eta_v", "omega_eta_v"])
    # start values: named as what they are, and finite
    with pytest.raises(ValueError, match=r"unknown parameter 'tkaa' in init"):
        nlme.fit(model, pop, init={"tkaa": 0.3}, progress=False)
    with pytest.raises(ValueError, match=r"init tka must be a finite number, got nan"):
        nlme.fit(model, pop, init={"tka": float("nan")}, progress=False)
    with pytest.raises(ValueError, match=r"init variance omega_eta_cl must be > 0"):
        nlme.fit(model, pop, "nuts", init={"omega_eta_cl": float("inf")}, progress=False)
    with pytest.raises(ValueError, match=r"theta's initial values must be finite; not "
                                         r"finite: \['tka'\]"):
        dataclasses.replace(model, theta={**model.theta, "tka": np.nan})


def test_non_identifiable_model_warns_at_the_covariance_step():
    """Two typical values that only enter as a sum: the Hessian is singular."""
    pop = _simulate_oral(10, 2, TRUTH, OMEGA_SD, **SIGMA)

    def individual(th, eta, cov):
        return {"ka": jnp.exp(th["tka"] + eta["eta_ka"]),
                "cl": jnp.exp(th["tcl_a"] + th["tcl_b"] + eta["eta_cl"]),
                "v": jnp.exp(th["tv"])}

    model = nlme.PopulationModel(nlme.OneCompartmentOral(), individual,
                                 theta={"tka": 0.4, "tcl_a": 0.5, "tcl_b": 0.5, "tv": 3.4},
                                 omega={"eta_ka": 0.1, "eta_cl": 0.1},
                                 sigma={"add_sd": 0.3, "prop_sd": 0.1}, error=nlme.Combined())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = nlme.fit(model, pop, "foce", progress=False)
    message = next(str(w.message) for w in caught if "not positive definite" in str(w.message))
    # the warning names the pair: the direction tcl_a - tcl_b, half each
    assert re.search(r"flat or curving down along tcl_[ab] \(50 %\) \+ tcl_[ab] \(50 %\);",
                     message), message
    assert fit.se.isna().all()


@pytest.mark.slow
def test_focei_with_an_ode_model_matches_the_closed_form_fit():
    """FOCEI through the adaptive ODE solver (forward sensitivities; the outer gradient in
    forward mode, see StructuralModel.outer_gradient) against the closed-form model's fit
    of the same one-compartment oral model on Theophylline: the same optimum from the
    same start, and the same standard errors."""
    pop = nlme.load_theophylline_population()
    closed = nlme.builtin_model("oral1cmt", pop)

    def field(t, a, p):
        return jnp.stack([-p["ka"] * a[0], p["ka"] * a[0] - p["cl"] / p["v"] * a[1]])

    ode = nlme.PopulationModel(
        nlme.ODEModel(field, 2, observe=lambda a, p: a[1] / p["v"]), closed.individual,
        theta=closed.theta, omega=closed.omega, sigma=closed.sigma, error=closed.error)
    ref = nlme.fit(closed, pop, "focei", progress=False)
    fit = nlme.fit(ode, pop, "focei", progress=False)
    assert fit.converged and ref.converged
    assert fit.ofv == pytest.approx(ref.ofv, abs=1e-5)
    np.testing.assert_allclose(fit.estimates.values, ref.estimates.values, atol=1e-6)
    np.testing.assert_allclose(fit.se.values, ref.se.values, rtol=1e-4)


def test_newton_returns_the_hessian_at_the_point_it_returns():
    """The EBE's implicit derivative uses the Hessian the inner search returns: it must
    be the one at the returned point, also when the search stops on a step whose
    decrease was below rounding (here forced by an offset: the second step's decrease is
    under 1e-15 |f| while the step is not negligible). It was the previous iterate's:
    1.7e-3 relative off here, and a FOCEI gradient 1e-9 relative off (which one
    depended on the last bits of the step, so 1 and 2 devices differed)."""
    from bayes_ude.nlme._likelihood import newton

    a = jnp.array([0.3, -1.2, 0.7])

    def fun(x):
        return jnp.sum(jnp.cosh(x - a) + (x - a) ** 3) + 1e9

    x, h = newton(fun, a + 0.01)
    assert float(jnp.max(jnp.abs(x - a))) < 1e-6
    np.testing.assert_allclose(h, jax.hessian(fun)(x), rtol=1e-12, atol=1e-12)
