"""Bayesian population fits (NUTS, SG-MCMC over subjects) against independent references:
the log joint density computed with scipy, the exact marginal likelihood of a linear mixed
model, the FOCEI estimates on Theophylline (themselves checked against nlmixr2 in
test_command.py), and NUTS itself for the SG-MCMC posterior."""

import json
from pathlib import Path

import arviz as az
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.infer.util import log_density
from scipy import stats

from bayes_ude import cli, inference, nlme
from bayes_ude.nlme._command_bayes import omega_prior
from tests.nlme.test_estimate import Line, _linear_population


def _line_model(omega="diagonal", l2=None, extra_theta=None):
    theta = {"ta": 1.7, "tb": -0.4} | (extra_theta or {})
    init = np.array([0.5, 0.2]) if omega == "diagonal" else np.array([[0.5, 0.1], [0.1, 0.2]])
    return nlme.PopulationModel(
        Line(), lambda th, eta, cov: {"a": th["ta"] + eta["eta_a"],
                                      "b": th["tb"] + eta["eta_b"]},
        theta=theta, omega=nlme.Omega(("eta_a", "eta_b"), init, omega),
        sigma={"add_sd": 0.5}, error=nlme.Additive(), l2=l2 or {})


def test_log_joint_density_matches_scipy():
    """The NumPyro model's log joint at given values, term by term with scipy (subjects
    have different numbers of observations, so padding must not count)."""
    pop, df = _linear_population()
    model = _line_model()
    rng = np.random.default_rng(1)
    values = {"ta": 1.9, "tb": -0.3, "omega_sd": np.array([0.6, 0.35]), "add_sd": 0.45,
              "eta_z": rng.normal(size=(pop.n_subjects, 2))}
    lp, _ = log_density(nlme.numpyro_model(model, pop), (), {}, values)
    ref = (stats.norm(1.7, 2.0).logpdf(1.9) + stats.norm(-0.4, 2.0).logpdf(-0.3)
           + stats.halfnorm(scale=1.0).logpdf(values["omega_sd"]).sum()
           + stats.halfnorm(scale=2.5).logpdf(0.45)
           + stats.norm().logpdf(values["eta_z"]).sum())
    for i, (_, g) in enumerate(df.groupby("ID", sort=False)):
        a = 1.9 + 0.6 * values["eta_z"][i, 0]
        b = -0.3 + 0.35 * values["eta_z"][i, 1]
        ref += stats.norm(a + b * g["TIME"], 0.45).logpdf(g["DV"]).sum()
    assert float(lp) == pytest.approx(ref, rel=1e-12)


def test_centred_random_effects_log_joint_matches_scipy():
    """Centred effects are sampled centred on their typical value: a = ta + eta_a, so the
    site is each subject's own a_i ~ N(ta, omega_a). A diagonal omega with one effect
    centred and one not, term by term with scipy; a full omega centred as one block (a
    MultivariateNormal) against its non-centred form at eta = L z: the two log joints
    differ by the change of variables alone, -n log|L|."""
    pop, df = _linear_population()
    n = pop.n_subjects
    rng = np.random.default_rng(2)
    values = {"ta": 1.9, "tb": -0.3, "omega_sd": np.array([0.6, 0.35]), "add_sd": 0.45,
              "eta_c": 1.9 + 0.6 * rng.normal(size=(n, 1)), "eta_z": rng.normal(size=(n, 1))}
    fn = nlme.numpyro_model(_line_model(), pop, centred=("eta_a",))
    lp, _ = log_density(fn, (), {}, values)
    ref = (stats.norm(1.7, 2.0).logpdf(1.9) + stats.norm(-0.4, 2.0).logpdf(-0.3)
           + stats.halfnorm(scale=1.0).logpdf(values["omega_sd"]).sum()
           + stats.halfnorm(scale=2.5).logpdf(0.45)
           + stats.norm(1.9, 0.6).logpdf(values["eta_c"]).sum()
           + stats.norm().logpdf(values["eta_z"]).sum())
    for i, (_, g) in enumerate(df.groupby("ID", sort=False)):
        a = values["eta_c"][i, 0]
        b = -0.3 + 0.35 * values["eta_z"][i, 0]
        ref += stats.norm(a + b * g["TIME"], 0.45).logpdf(g["DV"]).sum()
    assert float(lp) == pytest.approx(ref, rel=1e-12)

    full = _line_model(omega="full")
    corr = np.array([[1.0, 0.0], [0.3, np.sqrt(1 - 0.09)]])
    chol = values["omega_sd"][:, None] * corr
    z = rng.normal(size=(n, 2))
    shared = {k: values[k] for k in ("ta", "tb", "omega_sd", "add_sd")} | {"omega_corr_0": corr}
    lp_nc, _ = log_density(nlme.numpyro_model(full, pop), (), {}, shared | {"eta_z": z})
    lp_c, _ = log_density(nlme.numpyro_model(full, pop, centred=("eta_a", "eta_b")), (), {},
                          shared | {"eta_c": z @ chol.T + np.array([1.9, -0.3])})
    assert float(lp_c) == pytest.approx(float(lp_nc) - n * np.log(np.diag(chol)).sum(),
                                        rel=1e-12)


def test_auto_centres_the_random_effects_the_data_inform():
    """``omega^2 I`` (I: a subject's Fisher information about its effect) in closed form
    for the line a + b t: n / sigma^2 for a, sum t^2 / sigma^2 for b. Centred where the
    median subject's is >= 1; with a residual SD of 5 neither is; a correlated block goes
    as a whole."""
    from bayes_ude.nlme._parameterisation import _information_ratio, choose_centred

    pop, df = _linear_population()
    model = _line_model().specialised(pop)
    got = np.asarray(_information_ratio(model, pop, jnp.asarray(model.initial_vector())))
    sizes = df.groupby("ID", sort=False)["TIME"]
    ref = np.column_stack([0.5 * sizes.size() / 0.25,
                           0.2 * sizes.apply(lambda t: np.sum(t ** 2)) / 0.25])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert choose_centred(model, pop) == ("eta_a", "eta_b")
    assert choose_centred(model, pop, {"add_sd": 5.0}) == ()
    # residual SD 1.7: the median subject's omega^2 I is below 1 for a, above for b
    median = np.median(ref, axis=0) * 0.25 / 1.7 ** 2
    assert median[0] < 1 <= median[1], median
    assert choose_centred(model, pop, {"add_sd": 1.7}) == ("eta_b",)
    full = _line_model(omega="full").specialised(pop)
    assert choose_centred(full, pop, {"add_sd": 1.7}) == ()  # one block: all or none
    with pytest.raises(ValueError, match="correlated: centre all of them or none"):
        nlme.fit(full, pop, "nuts", random_effects=("eta_a",))
    with pytest.raises(ValueError, match=r"not random effects of omega \['eta_a', 'eta_b'\]"):
        nlme.fit(model, pop, "nuts", random_effects=("eta_c",))
    with pytest.raises(ValueError, match="random_effects must be 'auto', 'centred'"):
        nlme.fit(model, pop, "nuts", random_effects="central")
    with pytest.raises(ValueError, match="random_effects is a NUTS setting"):
        nlme.fit(model, pop, "sgld", random_effects="centred")


def test_held_out_log_density_is_exact_for_a_linear_mixed_model():
    """The Laplace marginal used for held-out subjects is exact for a linear model."""
    pop, df = _linear_population(n=5, seed=3)
    model = _line_model(omega="full")
    u = model.initial_vector()
    got = nlme.subject_log_density(model, u, pop)
    omega = np.array([[0.5, 0.1], [0.1, 0.2]])
    for i, (_, g) in enumerate(df.groupby("ID", sort=False)):
        z = np.column_stack([np.ones(len(g)), g["TIME"]])
        ref = stats.multivariate_normal(z @ [1.7, -0.4],
                                        z @ omega @ z.T + 0.25 * np.eye(len(g))).logpdf(g["DV"])
        assert got[i] == pytest.approx(ref, rel=1e-10)


def test_l2_penalty_is_a_gaussian_prior_on_theta():
    pop, _ = _linear_population()
    w = np.array([0.3, -0.2, 0.5])
    plain = _line_model(extra_theta={"w": w})
    pen = _line_model(extra_theta={"w": w}, l2={"w": 0.7})
    diff = float(nlme.objective(pen, pop)) - float(nlme.objective(plain, pop))
    assert diff == pytest.approx(0.7 * np.sum(w**2), rel=1e-12)
    # ... whose Bayesian default is the prior that penalty is the -2 log density of, so
    # that FOCEI-with-L2 is the MAP: N(0, 1/lambda) (it was N(0, 1/(2 lambda)), twice as
    # tight). Checked as a difference of -2 log densities between two points, against
    # the OFV's.
    prior = nlme.Priors().theta_dist(pen, "w")
    lp = float(prior.log_prob(jnp.asarray(w)))
    assert lp == pytest.approx(stats.norm(0, np.sqrt(1 / 0.7)).logpdf(w).sum(), rel=1e-12)
    assert -2 * (lp - float(prior.log_prob(jnp.zeros(3)))) == pytest.approx(diff, rel=1e-12)
    res = nlme.fit(pen, pop, "focei", progress=False, covariance=False)
    est_w = np.asarray(res.theta["w"])
    assert np.all(np.abs(est_w) < 1e-4)  # w does not enter the likelihood: the prior wins
    assert res.ofv - res.minus2ll == pytest.approx(
        -pop.n_obs * np.log(2 * np.pi) + 0.7 * float(np.sum(est_w**2)), abs=1e-9)


def test_bad_bayesian_inputs_are_clear_errors():
    pop, _ = _linear_population()
    model = _line_model()
    with pytest.raises(ValueError, match="unknown theta names"):
        nlme.fit(model, pop, "nuts", priors=nlme.Priors(theta={"tc": None}))
    with pytest.raises(ValueError, match="random effects"):
        nlme.fit(model, pop, "nuts", priors=nlme.Priors(omega_sd={"eta_c": None}))
    with pytest.raises(ValueError, match="fixed parameters"):
        nlme.fit(model, pop, "nuts", fixed=["ta"])
    with pytest.raises(TypeError, match="only the Bayesian methods"):
        nlme.fit(model, pop, "focei", num_samples=10)
    with pytest.raises(ValueError, match="Bayesian method|method must be"):
        nlme.fit(model, pop, "hmc")
    with pytest.raises(ValueError, match=r"metric must be one of \('adapt', 'laplace'\)"):
        nlme.fit(model, pop, "nuts", metric="fisher")
    with pytest.raises(TypeError, match=r"unknown sampler options \['num_smples'\]"):
        nlme.fit(model, pop, "nuts", num_smples=10)
    with pytest.raises(ValueError, match="SamplerOptions.num_chains must be an integer >= 1"):
        nlme.fit(model, pop, "nuts", options=inference.SamplerOptions(num_chains=0))
    with pytest.raises(ValueError, match=r"target_accept must be in \(0, 1\)"):
        nlme.fit(model, pop, "sgld", target_accept=1.5)
    with pytest.raises(ValueError, match="metric='laplace' is a NUTS metric"):
        nlme.fit(model, pop, "sgld", metric="laplace")
    # the other family's settings, and maximum-likelihood ones, were ignored without a word
    with pytest.raises(ValueError, match=r"\['num_samples', 'target_accept'\] are NUTS settings"):
        nlme.fit(model, pop, "sgld", num_samples=40, target_accept=0.99)
    with pytest.raises(ValueError, match=r"\['num_steps', 'thin'\] are SG-MCMC settings"):
        nlme.fit(model, pop, "nuts", thin=5, num_steps=7)
    with pytest.raises(TypeError, match=r"\['max_iter', 'chunk'\] are maximum-likelihood"):
        nlme.fit(model, pop, "nuts", max_iter=1, chunk=3)
    # SG-MCMC moves theta on the real line: a bounded prior stopped every chain
    with pytest.raises(ValueError, match=r"the priors of \['tb'\] have a narrower support"):
        nlme.fit(model, pop, "sgld", priors=nlme.Priors(theta={"tb": dist.Uniform(0.0, 1.0)}))
    with pytest.raises(ValueError, match="diagonal omega"):
        nlme.fit(_line_model(omega="full"), pop, "sgld")
    with pytest.raises(ValueError, match="l2 names"):
        _line_model(l2={"nope": 1.0})
    with pytest.raises(ValueError, match="l2 penalties"):
        nlme.fit(_line_model(l2={"ta": 1.0}), pop, "lb")


def test_laplace_metric_samples_the_same_posterior():
    """A metric changes how NUTS moves, not where it samples: the linear mixed model's
    posterior under the Laplace metric at the FOCEI fit against the adapted diagonal
    metric (the metric itself is checked against closed forms in
    tests/inference/test_nuts.py): medians within 0.3 posterior SDs, fewer leapfrog steps
    (measured 19 per draw against 39). So does the parameterisation: the default here,
    both effects centred with a dense metric (``random_effects="auto"``), samples the
    same posterior as the non-centred ones."""
    pop, _ = _linear_population(n=12)
    model = _line_model()
    ml = nlme.fit(model, pop, "focei", progress=False, covariance=False)
    runs = {m: nlme.fit(model, pop, "nuts", init=ml, metric=m, num_warmup=300,
                        num_samples=500, num_chains=2, progress=False,
                        random_effects="noncentred")
            for m in ("adapt", "laplace")}
    runs["auto"] = nlme.fit(model, pop, "nuts", init=ml, num_warmup=300, num_samples=500,
                            num_chains=2, progress=False)
    assert runs["auto"].idata.attrs["centred"] == "eta_a,eta_b"
    assert runs["auto"].idata.attrs["dense_mass"] == 1
    assert runs["adapt"].idata.attrs["dense_mass"] == 0
    for name in ("ta", "tb", "add_sd", "omega_eta_a", "omega_eta_b"):
        ref = runs["adapt"].draws[name]
        for other in ("laplace", "auto"):
            got = runs[other].draws[name]
            assert abs(np.median(got) - np.median(ref)) < 0.3 * np.std(ref), (name, other)
    assert runs["auto"].table()["r_hat"].max() < 1.05
    assert runs["laplace"].table()["r_hat"].max() < 1.05
    # NUTS trajectories are chaotic in the last bits: 0 divergences of 1,000 on one CPU,
    # 3 on another (different vector units): at most 1 %
    assert runs["laplace"].num_divergent <= 10
    steps = {m: float(r.idata.sample_stats["n_steps"].mean()) for m, r in runs.items()}
    assert steps["laplace"] < steps["adapt"], steps


# ---------------------------------------------------------------- Theophylline by NUTS
OMEGA_PRIOR = "halfcauchy:0.1"


@pytest.fixture(scope="module")
def theoph_nuts(tmp_path_factory):
    """The main job's Bayesian branch: FOCEI, then NUTS started there, tables and plots.

    The between-subject SDs get HalfCauchy(0.1) priors (docs/bayes_nlme.md, "Prior
    sensitivity"): over these SDs (0.14-0.64) its density falls as 1/omega^2, Gelman's
    (2006) choice for few groups; the flat HalfNormal(1) default puts the 12-subject
    variance medians 24-30 % above the ML estimates (and Stan agrees with us there)."""
    out = tmp_path_factory.mktemp("nuts")
    code = cli.main(["pk", "fit", "theophylline", "--method", "nuts", "--warmup", "1000",
                     "--samples", "1000", "--omega-prior", OMEGA_PRIOR, "--out", str(out),
                     "--quiet"])
    assert code == 0
    return out


@pytest.mark.slow
def test_theophylline_nuts_agrees_with_focei(theoph_nuts):
    out = theoph_nuts
    for name in ("estimates.csv", "posterior.nc", "vpc.csv", "eta_posterior_median.csv",
                 "summary.json"):
        assert (out / name).stat().st_size > 100, name
    for name in ("vpc.png", "trace.png", "gof.png", "individual.png", "individual.pdf"):
        assert (out / name).stat().st_size > 20_000, name
    table = pd.read_csv(out / "estimates.csv", index_col="parameter")
    focei = pd.read_csv(Path(__file__).resolve().parents[1] / "reference"
                        / "theoph_nlmixr2.csv", comment="#", index_col="parameter")
    # posterior medians within 10 % of the FOCEI estimates (nlmixr2's, which ours
    # reproduce): typical values, residual SD and the between-subject variances (measured
    # 2026-12-01: within 2 % and 3.6-5.2 %), and the FOCEI values inside the 95 % CrIs
    # (the command's table)
    for name in ("tka", "tcl", "tv", "add_sd"):
        assert table.loc[name, "median"] == pytest.approx(focei.loc[name, "estimate"],
                                                          rel=0.10), name
    for eta, cv in focei["bsv_cv_pct"].dropna().items():
        var = np.log(1 + (cv / 100) ** 2)  # nlmixr2 reports CV % = sqrt(exp(omega) - 1)
        row = table.loc[f"omega_eta_{eta[1:]}"]
        assert row["median"] == pytest.approx(var, rel=0.10), eta
        assert row["q2.5"] < var < row["q97.5"], eta
    assert table["r_hat"].max() <= 1.01
    assert table["ess_bulk"].min() > 200
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_divergent"] == 0
    assert summary["omega_prior"] == OMEGA_PRIOR
    # the same intervals as estimates.csv (summary.json had 90 % ones, q5/q95)
    assert summary["parameters"]["tcl"]["q2.5"] == pytest.approx(table.loc["tcl", "q2.5"])
    # omega^2 I = 25, 8, 8 at the FOCEI start: all centred, so a dense metric
    assert summary["random_effects_centred"] == ["eta_ka", "eta_cl", "eta_v"]
    assert summary["dense_mass"] is True
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior["eta"].dims == ("chain", "draw", "subject", "eta_name")
    assert idata.posterior["cl_i"].sizes["subject"] == 12
    assert idata.posterior_predictive["dv"].sizes["subject"] == 12
    loo = az.loo(idata)  # per-subject log likelihood: leave-one-subject-out
    assert np.isfinite(loo.elpd_loo)
    # posterior-predictive VPC: observed median inside the simulated median's band
    vpc = pd.read_csv(out / "vpc.csv")
    inside = (vpc["obs_q0.5"] >= vpc["sim_q0.5_lo"]) & (vpc["obs_q0.5"] <= vpc["sim_q0.5_hi"])
    assert inside.mean() >= 0.75


@pytest.mark.slow
def test_sgld_over_subjects_agrees_with_nuts(theoph_nuts):
    """SGLD on minibatches of subjects (random effects integrated out) against NUTS on
    all random effects: medians within half a posterior SD, similar widths."""
    nuts = az.from_netcdf(theoph_nuts / "posterior.nc").posterior
    pop = nlme.load_theophylline_population()
    model = nlme.builtin_model("oral1cmt", pop)
    res = nlme.fit(model, pop, "sgld", batch_size=6, num_steps=3000, num_chains=4,
                   progress=False, priors=nlme.Priors(omega_sd=omega_prior(OMEGA_PRIOR)))
    assert res.idata.attrs["num_failed_steps"] == 0
    for name in ("tka", "tcl", "tv", "add_sd", "omega_eta_ka", "omega_eta_cl",
                 "omega_eta_v"):
        ref = np.log(np.asarray(nuts[name])) if name.startswith("omega") else np.asarray(
            nuts[name])
        got = np.log(res.draws[name]) if name.startswith("omega") else res.draws[name]
        assert abs(np.median(got) - np.median(ref)) < 0.5 * np.std(ref), name
        width = np.subtract(*np.quantile(got, [0.95, 0.05]))
        width_ref = np.subtract(*np.quantile(ref, [0.95, 0.05]))
        assert 0.6 < width / width_ref < 1.5, (name, width, width_ref)
    assert res.table()["r_hat"].max() < 1.1
    # held-out style check: the posterior predictive density of the fitted subjects
    lpd = res.log_predictive_density(pop, n_draws=50)
    assert lpd.shape == (12,) and np.all(np.isfinite(lpd))
