"""Inter-occasion variability (``nlme._occasions``): predictions against an ODE solve by
scipy with the parameters switched at the occasion boundaries, and recovery of a known IOV
variance by FOCEI and NUTS on simulated data."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from bayes_ude import nlme
from bayes_ude.nlme import Omega, PopulationModel
from bayes_ude.nlme._occasions import predict_by_occasion, propagator
from bayes_ude.nlme._pk import (
    OneCompartmentIV,
    OneCompartmentOral,
    TwoCompartmentIV,
    TwoCompartmentOral,
)

PARAMS = {"iv1cmt": dict(cl=2.0, v=10.0), "oral1cmt": dict(ka=1.3, cl=2.0, v=10.0),
          "iv2cmt": dict(cl=2.0, v=10.0, q=3.0, vp=20.0),
          "oral2cmt": dict(ka=1.3, cl=2.0, v=10.0, q=3.0, vp=20.0)}
MODELS = {"iv1cmt": OneCompartmentIV, "oral1cmt": OneCompartmentOral,
          "iv2cmt": TwoCompartmentIV, "oral2cmt": TwoCompartmentOral}


@pytest.mark.parametrize("name", list(MODELS))
def test_propagator_is_the_matrix_exponential(name):
    model = MODELS[name]()
    p = {k: jnp.asarray(v) for k, v in PARAMS[name].items()}
    lam, coef = model.exponents(p)
    K = np.asarray(model.rate_matrix(p))
    P = np.asarray(propagator(jnp.asarray(K), lam))
    for t in (0.3, 1.7, 9.0):
        np.testing.assert_allclose(np.einsum("oik,k->oi", P, np.exp(-np.asarray(lam) * t)),
                                   expm(K * t), atol=1e-13)
    # the closed form's central-concentration coefficients are the central row over V
    np.testing.assert_allclose(P[model.central_compartment - 1] / PARAMS[name]["v"],
                               np.asarray(coef), atol=1e-15)


def _rhs(name, p, infusion):
    """dA/dt of the model written out (independent of rate_matrix); ``infusion``: rate
    into each compartment."""
    k = p["cl"] / p["v"]

    def f(t, a):
        if name == "iv1cmt":
            d = [-k * a[0]]
        elif name == "oral1cmt":
            d = [-p["ka"] * a[0], p["ka"] * a[0] - k * a[1]]
        else:
            k12, k21 = p["q"] / p["v"], p["q"] / p["vp"]
            c, q = (0, 1) if name == "iv2cmt" else (1, 2)
            d = [0.0] * len(a)
            if name == "oral2cmt":
                d[0] = -p["ka"] * a[0]
                d[c] = p["ka"] * a[0]
            d[c] += -(k + k12) * a[c] + k21 * a[q]
            d[q] = k12 * a[c] - k21 * a[q]
        return np.asarray(d) + infusion
    return f


def _reference(name, params, doses, obs):
    """Concentrations at ``obs`` (time, occasion) by scipy. A new piece starts at each
    record whose occasion differs from the record before; each piece integrates with its
    occasion's parameters from the amounts the last one left; doses (time, amount, rate,
    occasion) go into compartment 1 with their occasion's ``f`` and ``tlag``; each
    observation is over its own occasion's volume."""
    n = {"iv1cmt": 1, "oral1cmt": 2, "iv2cmt": 2, "oral2cmt": 3}[name]
    central = 1 if name.startswith("oral") else 0
    records = sorted([(d[0], d[3]) for d in doses] + list(obs))
    pieces = [records[0]]
    for t, occ in records[1:]:
        if occ != pieces[-1][1]:
            pieces.append((t, occ))
    inputs = []  # (arrival, amount, rate)
    for t, amt, rate, occ in doses:
        p = params[occ]
        inputs.append((t + p.get("tlag", 0.0), amt * p.get("f", 1.0), rate))
    events = sorted({0.0, *[a for a, _, _ in inputs], *[a + m / r for a, m, r in inputs if r],
                     *[s for s, _ in pieces], *[t for t, _ in obs]})
    a = np.zeros(n)
    out = {}
    for t0, t1 in zip(events[:-1], events[1:], strict=True):
        a[0] += sum(amt for arrival, amt, rate in inputs if rate == 0 and arrival == t0)
        occ = [o for s, o in pieces if s <= t0][-1] if t0 >= pieces[0][0] else pieces[0][1]
        infusion = np.zeros(n)
        infusion[0] = sum(rate for arrival, amt, rate in inputs
                          if rate and arrival <= t0 < arrival + amt / rate)
        sol = solve_ivp(_rhs(name, params[occ], infusion), (t0, t1), a, method="DOP853",
                        rtol=1e-12, atol=1e-12)
        a = sol.y[:, -1].copy()
        out[t1] = a[central]
    return np.asarray([out[t] / params[occ]["v"] for t, occ in obs])


def _subject(doses, obs, extra=(), counter=False):
    """One subject's table, doses before observations at one time; ``counter``: with a
    column that changes on every record (a sample number, read as a covariate)."""
    rows = [dict(ID=1, TIME=t, DV=0.0, AMT=amt, RATE=rate, EVID=1, MDV=1, OCC=occ)
            for t, amt, rate, occ in doses]
    rows += [dict(ID=1, TIME=t, DV=1.0, AMT=0.0, RATE=0.0, EVID=0, MDV=0, OCC=occ)
             for t, occ in obs]
    rows += list(extra)
    table = pd.DataFrame(rows).sort_values(["TIME", "EVID"], ascending=[True, False],
                                           kind="stable")
    if counter:
        table["SMP"] = np.arange(len(table), dtype=float)
    return nlme.read_nonmem(table)


CASES = {
    # three occasions, the third back to OCC 1; drug left over when occasion 2 starts
    "carry-over, OCC revisited": (
        "oral1cmt", {1: dict(ka=1.0, cl=2.0, v=10.0), 2: dict(ka=2.0, cl=4.0, v=15.0)},
        [(0.0, 100.0, 0.0, 1), (12.0, 80.0, 0.0, 2), (36.0, 50.0, 0.0, 1)],
        [(0.5, 1), (2, 1), (8, 1), (12, 2), (12.5, 2), (16, 2), (30, 2), (37, 1), (48, 1)]),
    # an infusion still running when occasion 2 starts
    "infusion across the boundary": (
        "iv1cmt", {1: dict(cl=2.0, v=10.0), 2: dict(cl=5.0, v=12.0)},
        [(10.0, 100.0, 20.0, 1)],
        [(11, 1), (12, 2), (13, 2), (15, 2), (20, 2)]),
    # a dose still in its lag time when occasion 2 starts; F and lag by occasion
    "lag time across the boundary": (
        "oral2cmt", {1: dict(ka=1.3, cl=2.0, v=10.0, q=3.0, vp=20.0, f=0.8, tlag=0.5),
                     2: dict(ka=0.7, cl=3.0, v=14.0, q=2.0, vp=25.0, f=0.6, tlag=0.2)},
        [(0.0, 100.0, 0.0, 1), (23.8, 100.0, 0.0, 1), (30.0, 50.0, 0.0, 2)],
        [(1, 1), (6, 1), (24, 2), (25, 2), (28, 2), (31, 2), (40, 2)]),
    # the dose that opens occasion 2 at the time of occasion 1's trough, listed before it
    "dose of a new occasion at a trough's time": (
        "oral1cmt", {1: dict(ka=1.0, cl=2.0, v=10.0, f=1.0),
                     2: dict(ka=2.0, cl=4.0, v=15.0, f=0.5)},
        [(0.0, 100.0, 0.0, 1), (24.0, 100.0, 0.0, 2)],
        [(2, 1), (4, 1), (4, 1), (24, 1), (26, 2), (30, 2)]),
}


@pytest.mark.parametrize("counter", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_predictions_match_an_ode_solve_with_switched_parameters(case, counter):
    """With a column that changes on every record too: two records at one time then cut a
    piece of no length, which lost every amount carried into it (predictions 0 after
    it)."""
    name, params, doses, obs = CASES[case]
    ref = _reference(name, params, doses, obs)
    pop = _subject(doses, obs, counter=counter)
    model = MODELS[name]().specialise(pop)
    stacked = {k: jnp.asarray([params[o][k] for o in sorted(params)]) for k in params[1]}
    sub = jax.tree.map(lambda x: x[0], pop)
    got = np.asarray(predict_by_occasion(model, stacked, sub, "OCC"))[np.asarray(sub.obs_mask)]
    np.testing.assert_allclose(got, ref, rtol=1e-9)


# ------------------------------------------------------------------ estimation
TRUTH = {"tka": np.log(1.5), "tcl": np.log(2.0), "tv": np.log(10.0), "omega_eta_ka": 0.1,
         "omega_eta_cl": 0.09, "omega_eta_v": 0.04, "omega_iov_cl": 0.04, "prop_sd": 0.1}


def _table(n, gap=24.0):
    rows = []
    for i in range(1, n + 1):
        for k in range(2):
            rows.append(dict(ID=i, TIME=k * gap, DV=0.0, AMT=100.0, EVID=1, MDV=1, OCC=k + 1))
            rows += [dict(ID=i, TIME=k * gap + t, DV=0.0, AMT=0.0, EVID=0, MDV=0, OCC=k + 1)
                     for t in (0.5, 1, 2, 4, 8, 12)]
    return pd.DataFrame(rows)


def _individual(th, eta, cov):
    return {"ka": jnp.exp(th["tka"] + eta["eta_ka"]),
            "cl": jnp.exp(th["tcl"] + eta["eta_cl"] + eta["iov_cl"]),
            "v": jnp.exp(th["tv"] + eta["eta_v"])}


def _model(iov=("iov_cl",)):
    return PopulationModel(
        OneCompartmentOral(), _individual, theta={"tka": 0.0, "tcl": 0.0, "tv": 2.0},
        omega=Omega.diagonal({"eta_ka": 0.2, "eta_cl": 0.2, "eta_v": 0.2, "iov_cl": 0.2}),
        sigma={"prop_sd": 0.2}, error=nlme.Proportional(), iov=iov)


def _simulated(n, seed=1):
    table = _table(n)
    design = nlme.read_nonmem(table)
    y = nlme.point_estimates(_model(), TRUTH).simulate(1, jax.random.key(seed), design)[0]
    table.loc[table.EVID == 0, "DV"] = np.asarray(y)[np.asarray(design.obs_mask)]
    return nlme.read_nonmem(table)


@pytest.fixture(scope="module")
def iov_data():
    return _simulated(100)


def test_focei_recovers_the_occasion_variance(iov_data):
    model = _model()
    assert model.specialised(iov_data).eta_names == (
        "eta_ka", "eta_cl", "eta_v", "iov_cl_occ1", "iov_cl_occ2")
    fit = nlme.fit(model, iov_data, method="focei", progress=False)
    est, se = fit.estimates, fit.se
    for name, truth in TRUTH.items():  # every estimate within 3 standard errors of truth
        assert abs(est[name] - truth) < 3 * se[name], (name, est[name], truth, se[name])
    assert abs(est["omega_iov_cl"] / TRUTH["omega_iov_cl"] - 1) < 0.3
    table = fit.table()
    assert table.loc["omega_iov_cl", "kind"] == "iov variance"
    assert list(fit.eta.columns)[-2:] == ["iov_cl_occ1", "iov_cl_occ2"]
    # the same data without IOV: CL's occasion-to-occasion changes are left unexplained,
    # and the fit is far worse (the omega entry of iov_cl is then an unused eta)
    plain = nlme.fit(_model(iov=()), iov_data, method="focei", progress=False,
                     fixed={"omega_iov_cl": 0.01}, covariance=False)
    assert plain.minus2ll - fit.minus2ll > 20


def test_shrinkage_counts_only_the_occasions_a_subject_has():
    """Eight of 24 subjects have one occasion: their second kappa is a structural 0, not an
    estimate, and counted as one it inflated the pooled IOV shrinkage (40 % for 30 %).
    Against numpy over the kappas that exist."""
    table = _table(24)
    table = table[~((table.ID <= 8) & (table.OCC == 2))]
    design = nlme.read_nonmem(table)
    y = nlme.point_estimates(_model(), TRUTH).simulate(1, jax.random.key(3), design)[0]
    table.loc[table.EVID == 0, "DV"] = np.asarray(y)[np.asarray(design.obs_mask)]
    pop = nlme.read_nonmem(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nlme.fit(_model(), pop, "focei", progress=False, covariance=False, max_iter=40)
    kappa = fit.eta[["iov_cl_occ1", "iov_cl_occ2"]].to_numpy()
    assert np.all(kappa[:8, 1] == 0.0)
    sd_iov = np.sqrt(fit.estimates["omega_iov_cl"])
    assert fit.shrinkage["iov_cl_occ2"] == pytest.approx(
        1 - np.std(kappa[8:, 1], ddof=1) / sd_iov, rel=1e-12)
    pooled = np.concatenate([kappa[:, 0], kappa[8:, 1]])
    assert fit.table().loc["omega_iov_cl", "shrinkage_pct"] == pytest.approx(
        100 * (1 - np.std(pooled, ddof=1) / sd_iov), rel=1e-12)


def test_numpyro_log_joint_with_iov_matches_scipy():
    """The Bayesian model's log joint, term by term: priors, a N(0, 1) per whitened
    random effect (three between-subject, two occasions of iov_cl), and the data given the
    scipy solve with CL switched per occasion (every subject's own kappas)."""
    from numpyro.infer.util import log_density
    from scipy import stats

    pop = _simulated(3)
    rng = np.random.default_rng(3)
    sds = np.array([0.3, 0.25, 0.2, 0.15])  # eta_ka, eta_cl, eta_v, iov_cl
    values = {"tka": 0.3, "tcl": 0.6, "tv": 2.2, "omega_sd": sds, "prop_sd": 0.12,
              "eta_z": rng.normal(size=(3, 5))}
    lp, _ = log_density(nlme.numpyro_model(_model(), pop), (), {}, values)
    ref = (stats.norm(0.0, 2.0).logpdf(0.3) + stats.norm(0.0, 2.0).logpdf(0.6)
           + stats.norm(2.0, 2.0).logpdf(2.2) + stats.halfnorm().logpdf(sds).sum()
           + stats.halfnorm(scale=1.0).logpdf(0.12) + stats.norm().logpdf(values["eta_z"]).sum())
    table = _table(3)
    for i in range(3):
        eta = values["eta_z"][i] * sds[[0, 1, 2, 3, 3]]
        params = {occ: dict(ka=np.exp(0.3 + eta[0]), cl=np.exp(0.6 + eta[1] + eta[2 + occ]),
                            v=np.exp(2.2 + eta[2])) for occ in (1, 2)}
        rows = table[table.ID == i + 1]
        doses = [(r.TIME, r.AMT, 0.0, r.OCC) for r in rows.itertuples() if r.EVID == 1]
        obs = [(r.TIME, r.OCC) for r in rows.itertuples() if r.EVID == 0]
        f = _reference("oral1cmt", params, doses, obs)
        y = np.asarray(pop.obs_dv)[i][np.asarray(pop.obs_mask)[i]]
        ref += stats.norm(f, np.sqrt((0.12 * f) ** 2 + 1e-12)).logpdf(y).sum()
    assert float(lp) == pytest.approx(ref, rel=1e-9)

    # iov_cl centred: its two occasion columns are sampled as they are, N(0, 0.15^2) each;
    # the log joint differs from the non-centred one at eta = sd z by -log(0.15) per value
    from bayes_ude.nlme._parameterisation import eta_columns
    model = _model().specialised(pop)
    c_cols, nc_cols = eta_columns(model, ("iov_cl",))
    assert list(c_cols) == [3, 4] and list(nc_cols) == [0, 1, 2]
    # ka = exp(tka + eta_ka), ...: the centred between-subject effects are sampled as
    # log ka_i etc.; the occasion columns keep a shift of 0
    from bayes_ude.nlme._parameterisation import typical_links
    assert typical_links(model, pop, np.arange(5)) == (("ka", "log"), ("cl", "log"),
                                                       ("v", "log"), None, None)
    centred = {k: v for k, v in values.items() if k != "eta_z"}
    centred |= {"eta_z": values["eta_z"][:, :3], "eta_c": 0.15 * values["eta_z"][:, 3:]}
    lp_c, _ = log_density(nlme.numpyro_model(_model(), pop, centred=("iov_cl",)), (), {},
                          centred)
    assert float(lp_c) == pytest.approx(float(lp) - 6 * np.log(0.15), rel=1e-12)


@pytest.mark.heavy
def test_nuts_recovers_the_occasion_variance():
    data = _simulated(40, seed=2)
    post = nlme.fit(_model(), data, method="nuts", num_warmup=250, num_samples=250,
                    num_chains=2, progress=False, key=jax.random.key(0))
    draws = post.idata.posterior
    assert draws["eta"].shape[-1] == 5  # 3 between-subject + 2 occasions of iov_cl
    assert draws["omega_sd"].dims[-1] == "omega_name"
    for name in ("tcl", "tv", "omega_iov_cl", "omega_eta_cl", "prop_sd"):
        x = np.asarray(draws[name]).ravel()
        lo, hi = np.quantile(x, [0.01, 0.99])
        assert lo < TRUTH[name] < hi, (name, lo, hi, TRUTH[name])
        # the posterior median within 2.5 posterior SDs of the truth (40 subjects: the
        # IOV variance of this draw of the data is 0.057 +- 0.013 by FOCEI, truth 0.04)
        assert abs(np.median(x) - TRUTH[name]) < 2.5 * x.std(), (name, np.median(x))


# ------------------------------------------------------------------ bad input
def test_errors_name_what_is_wrong():
    pop = _simulated(3)
    with pytest.raises(ValueError, match="occasion column 'VISIT'"):
        nlme.fit(PopulationModel(
            OneCompartmentOral(), _individual, theta={"tka": 0.0, "tcl": 0.0, "tv": 2.0},
            omega=Omega.diagonal({"eta_ka": .2, "eta_cl": .2, "eta_v": .2, "iov_cl": .2}),
            sigma={"prop_sd": 0.2}, error=nlme.Proportional(), iov=("iov_cl",),
            occasion="VISIT"), pop, progress=False)
    with pytest.raises(ValueError, match=r"iov names \['iov_v'\]"):
        _model(iov=("iov_v",))
    with pytest.raises(ValueError, match="correlates occasion random effects"):
        PopulationModel(OneCompartmentOral(), _individual, theta={"tka": 0.0},
                        omega=Omega(("eta_cl", "iov_cl"), [0.1, 0.1], "full"),
                        sigma={"prop_sd": 0.2}, error=nlme.Proportional(), iov=("iov_cl",))
    with pytest.raises(ValueError, match="needs a closed-form PK model"):
        PopulationModel(nlme.ODEModel(lambda t, a, p: -a, 2, observe=lambda a, p: a[1]),
                        _individual, theta={"tka": 0.0}, omega={"eta_cl": 0.1, "iov_cl": 0.1},
                        sigma={"prop_sd": 0.2}, error=nlme.Proportional(), iov=("iov_cl",))
    with pytest.raises(ValueError, match="iov on \\['q'\\]"):
        nlme.builtin_model("oral1cmt", pop, iov=["q"])


def test_builtin_model_with_iov_fits_like_the_hand_written_one(iov_data):
    small = iov_data.take(np.arange(20))
    built = nlme.builtin_model("oral1cmt", small, "proportional", iov=["cl"])
    assert built.iov == ("iov_cl",) and "OCC" in built.covariates
    hand = PopulationModel(
        OneCompartmentOral(), lambda th, eta, cov: _individual(
            {"tka": th["tka"], "tcl": th["tcl"], "tv": th["tv"]},
            {"eta_ka": eta["eta_ka"], "eta_cl": eta["eta_cl"], "eta_v": eta["eta_v"],
             "iov_cl": eta["iov_cl"]}, cov),
        theta=built.theta, omega=built.omega, sigma=built.sigma, error=nlme.Proportional(),
        iov=("iov_cl",))
    u = jnp.asarray(built.initial_vector())
    a = nlme.objective(built, small, "focei", u)
    b = nlme.objective(hand, small, "focei", u)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_methods_without_iov_support_say_so(iov_data):
    small = iov_data.take(np.arange(4))
    with pytest.raises(ValueError, match="'lb' does not support inter-occasion"):
        nlme.fit(_model(), small, method="lb", progress=False)
    with pytest.raises(ValueError, match="SG-MCMC population fits do not support inter"):
        nlme.fit(_model(), small, method="sgld", progress=False)


def test_command_line_fits_and_simulates_iov(tmp_path, iov_data):
    from bayes_ude import cli

    data = tmp_path / "iov.csv"
    _table(100).assign(DV=np.nan).pipe(lambda t: t).to_csv(data, index=False)
    table = pd.read_csv(data)
    table.loc[table.EVID == 0, "DV"] = np.asarray(iov_data.obs_dv)[
        np.asarray(iov_data.obs_mask)]
    table[table.ID <= 30].to_csv(data, index=False)
    out = tmp_path / "fit"
    assert cli.main(["pk", "fit", str(data), "--model", "oral1cmt", "--error",
                     "proportional", "--iov", "cl", "--no-plots", "--quiet",
                     "--out", str(out)]) == 0
    est = pd.read_csv(out / "estimates.csv", index_col="parameter")
    assert est.loc["omega_iov_cl", "kind"] == "iov variance"
    assert 0.01 < est.loc["omega_iov_cl", "estimate"] < 0.1
    sdtab = pd.read_csv(out / "sdtab.csv")
    assert {"ETA_IOV_CL_OCC1", "ETA_IOV_CL_OCC2"} <= set(sdtab.columns)
    assert cli.main(["pk", "simulate", str(out), "--n", "5", "--quiet",
                     "--out", str(tmp_path / "sim")]) == 0
    assert len(pd.read_csv(tmp_path / "sim" / "simtab.csv")) == 5 * 30 * 12
    # the options are checked before anything is compiled
    for args, match in ((["--occasion", "VISIT"], "--occasion names the occasion column"),
                        (["--iov", "q"], r"iov on \['q'\]"),
                        (["--iov", "cl", "--occasion", "VISIT"], "occasion column 'VISIT'")):
        with pytest.raises(SystemExit, match=match):
            cli.main(["pk", "fit", str(data), "--model", "oral1cmt", "--quiet",
                      "--out", str(tmp_path / "x"), *args])
