"""CTESN surrogates against the stiff solves they replace (Rodas5P at rtol 1e-8 on held-out
parameter points drawn independently of the training design), finite differences and
closed forms, and NUTS on the surrogate against NUTS on the full solve. Training sizes are
half the defaults (256 points) to keep the suite short; benchmarks/ctesn.py reports others."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers, surrogates
from tests.helpers import robertson
from tests.solvers import pollu

K0 = np.array([0.04, 3e7, 1e4])
LOWER, UPPER = K0 / np.sqrt(10), K0 * np.sqrt(10)  # each rate over a factor of 10
TS = np.geomspace(1e-5, 1e5, 100)
Y0 = jnp.array([1.0, 0.0, 0.0])

# The accuracy the issue asks for: over 200 held-out points, per species, the largest error
# over the log grid relative to the species' largest value.
MEDIAN_MAX, P99_MAX = 0.005, 0.02


@pytest.fixture(scope="module")
def robertson_surrogate():
    return surrogates.fit_ctesn(robertson, Y0, TS, LOWER, UPPER, t0=0.0, n_train=256,
                                progress=False)


def test_robertson_accuracy_on_200_held_out_points(robertson_surrogate):
    err = surrogates.held_out_error(robertson_surrogate, robertson, Y0, t0=0.0, n=200)
    print(err.table(["y1", "y2", "y3"]))
    assert err.n_failed == 0 and err.errors.shape == (200, 3)
    assert np.all(err.median <= MEDIAN_MAX), err.table()
    assert np.all(err.p99 <= P99_MAX), err.table()
    # the held-out points fill the box (not only its middle)
    unit = np.asarray(robertson_surrogate.box.to_unit(err.params))
    assert unit.min() < 0.02 and unit.max() > 0.98


def test_robertson_benchmark_configuration_meets_the_accuracy():
    """The cheaper surrogate that benchmarks/ctesn.py times against Rodas5P (64 training
    points, weights compressed to pod_tol=1e-3: 15 modes) meets the same bounds; measured
    median 0.12 %, 99th percentile 1.06 % (y2)."""
    sur = surrogates.fit_ctesn(robertson, Y0, TS, LOWER, UPPER, t0=0.0, n_train=64,
                               pod_tol=1e-3, atol=1e-12, progress=False)
    assert sur.modes.shape[0] <= 16
    err = surrogates.held_out_error(sur, robertson, Y0, t0=0.0, n=200, atol=1e-12)
    assert err.n_failed == 0
    assert np.all(err.median <= MEDIAN_MAX), err.table()
    assert np.all(err.p99 <= P99_MAX), err.table()


def pollu_rates(t, y, k):
    """POLLU with the rate constants of reactions 1, 2, 3, 15 and 22 given by ``k``."""
    rates = jnp.asarray(pollu.RATES).at[jnp.array(POLLU_VARIED)].set(k)
    return pollu.rhs(t, y, rates, jnp)


POLLU_VARIED = [0, 1, 2, 14, 21]


def test_pollu_accuracy_on_200_held_out_points():
    k0 = pollu.RATES[POLLU_VARIED]
    ts = np.geomspace(1e-3, 60.0, 100)
    sur = surrogates.fit_ctesn(pollu_rates, jnp.asarray(pollu.Y0), ts, k0 / 2, k0 * 2, t0=0.0,
                               n_train=256, atol=1e-14, progress=False)
    err = surrogates.held_out_error(sur, pollu_rates, jnp.asarray(pollu.Y0), t0=0.0, n=200,
                                    atol=1e-14)
    print(err.table([f"y{i + 1}" for i in range(20)]))
    assert err.n_failed == 0
    assert np.all(err.median <= MEDIAN_MAX), err.table()
    assert np.all(err.p99 <= P99_MAX), err.table()


def test_nonlinear_projection_reaches_what_a_small_linear_reservoir_cannot():
    # A reservoir of 5 states spans too few functions of time for Robertson's three
    # species; radial features of the same 5-dimensional state span enough.
    kw = dict(t0=0.0, n_train=64, reservoir_size=5, progress=False)
    err = {}
    for projection in ("linear", "nonlinear"):
        sur = surrogates.fit_ctesn(robertson, Y0, TS, LOWER, UPPER, projection=projection, **kw)
        err[projection] = surrogates.held_out_error(sur, robertson, Y0, t0=0.0, n=40).median
    assert np.all(err["linear"] > 0.05), err
    assert np.all(err["nonlinear"] < 0.01), err


def test_gradient_matches_the_stiff_solves_sensitivity(robertson_surrogate):
    sur = robertson_surrogate
    p = jnp.asarray(K0 * np.array([1.7, 0.6, 2.1]))
    idx = np.array([40, 60, 80])

    def true(p):
        return solvers.solve(robertson, Y0, TS, p, t0=0.0, solver=solvers.Rodas5P(), rtol=1e-10,
                             atol=1e-14, max_steps=100_000).ys[idx]

    # d y / d log k (both in units of each species' scale): the derivative the sampler uses
    dlog_sur = jax.jacfwd(lambda q: sur(jnp.exp(q))[idx])(jnp.log(p)) / sur.scale[:, None]
    dlog_true = jax.jacfwd(lambda q: true(jnp.exp(q)))(jnp.log(p)) / sur.scale[:, None]
    assert np.all(np.isfinite(dlog_sur))
    np.testing.assert_allclose(dlog_sur, dlog_true, atol=0.01)
    # reverse mode agrees with central differences of the surrogate itself, also at a
    # training point, where |u - c|^3 sits at its centre
    f = lambda q: jnp.sum(sur(jnp.exp(q))[idx, 1]) / sur.scale[1]  # noqa: E731
    q = jnp.log(p)
    g = jax.grad(f)(q)
    h = 1e-5
    fd = np.array([(f(q.at[i].add(h)) - f(q.at[i].add(-h))) / (2 * h) for i in range(3)])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)
    centre = jnp.asarray(sur.interpolant.centres[0])
    assert np.all(np.isfinite(jax.grad(lambda u: sur.interpolant(u)[5])(centre)))


def test_batched_and_jitted_evaluation_agree(robertson_surrogate):
    sur = robertson_surrogate
    ps = jnp.asarray(surrogates.design(7, 3, "uniform", jax.random.key(3)))
    ps = sur.box.from_unit(ps)
    batched = sur(ps)
    assert batched.shape == (7, len(TS), 3)
    for other in (jax.jit(lambda q: sur(q))(ps), jax.vmap(sur)(ps), sur(ps[:1])):
        # the same sums in another order: round-off of the RBF sum, whose weights cancel
        np.testing.assert_allclose(other / sur.scale, batched[:len(other)] / sur.scale,
                                   rtol=0, atol=1e-10)


def test_other_save_times_inside_the_grid(robertson_surrogate):
    sur = robertson_surrogate
    p = jnp.asarray(K0 * np.array([0.5, 2.0, 1.2]))
    sub = sur.at(TS[10:30])
    np.testing.assert_allclose(sub(p) / sur.scale, sur(p)[10:30] / sur.scale, rtol=0, atol=1e-6)
    between = np.sqrt(TS[50:60] * TS[51:61])  # geometric midpoints of the grid
    ref = solvers.solve(robertson, Y0, between, p, t0=0.0, solver=solvers.Rodas5P(),
                        rtol=1e-10, atol=1e-14, max_steps=100_000).ys
    assert np.max(np.abs(sur.at(between)(p) - ref) / sur.scale) < 0.005
    with pytest.raises(ValueError, match="inside the training grid"):
        sur.at([1e-6, 1.0])


def test_outside_the_box(robertson_surrogate):
    sur = robertson_surrogate
    outside = jnp.asarray(K0 * np.array([1.0, 5.0, 1.0]))
    with pytest.raises(ValueError, match=r"parameter 1 = 1\.5e\+08 lies outside the training "
                                         r"box \[9\.48683e\+06, 9\.48683e\+07\]"):
        sur(outside)
    # under jit (inside a sampler) the values cannot be seen: NaN, as a failed solve
    assert np.all(np.isnan(jax.jit(lambda q: sur(q))(outside)))
    assert np.all(np.isfinite(jax.jit(lambda q: sur(q))(jnp.asarray(UPPER))))  # the edge is in
    warn = sur.__class__(**{**vars(sur), "extrapolate": "warn"})
    with pytest.warns(UserWarning, match="extrapolates"):
        assert np.all(np.isnan(warn(outside)))
    allow = sur.__class__(**{**vars(sur), "extrapolate": "allow"})
    assert np.all(np.isfinite(allow(outside)))
    # weights(p) is held to the same box (it used to extrapolate without a word)
    with pytest.raises(ValueError, match="lies outside the training box"):
        sur.weights(outside)
    assert np.all(np.isnan(jax.jit(lambda q: sur.weights(q))(outside)))


def test_held_out_error_starts_where_training_did_and_wide_gaps_warn():
    """u' = -k u from u0 = 1 at t0 = 0, saved on [1, 5]: the surrogate against exp(-k t).
    held_out_error used to solve from u0 at ts[0] = 1 unless told t0 again (median error
    63 % for a surrogate accurate to 1e-6). Six save times are 4 reservoir time units
    apart, where between them the error was 13 %: at() warns there."""
    def decay(t, u, k):
        return -k * u

    ts = np.linspace(1.0, 5.0, 6)
    sur = surrogates.fit_ctesn(decay, jnp.array([1.0]), ts, [0.5], [2.0], t0=0.0, n_train=16,
                               reservoir_size=20, time="linear", progress=False)
    k = np.array([0.6, 1.3, 1.9])
    exact = np.exp(-k[:, None] * ts)
    assert np.max(np.abs(np.asarray(sur(jnp.asarray(k[:, None])))[..., 0] - exact)) < 1e-4
    assert sur.training.t0 == 0.0
    assert surrogates.held_out_error(sur, decay, [1.0], n=8).median[0] < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sur.at(ts[1:4])  # save times of the training grid: no warning
    with pytest.warns(UserWarning, match="between training save times 4 reservoir time"):
        sur.at(np.linspace(1.0, 5.0, 41))


def _tiny(vector_field, **kw):
    return surrogates.fit_ctesn(vector_field, Y0, np.geomspace(1e-3, 1e3, 20), LOWER, UPPER,
                                t0=0.0, n_train=32, reservoir_size=20, progress=False, **kw)


def test_failed_training_solves_are_reported_and_left_out():
    def fails_for_fast_k1(t, y, k):  # non-finite rates above k1 = 0.08
        return robertson(t, y, k) * jnp.where(k[0] > 0.08, jnp.nan, 1.0)

    with pytest.warns(UserWarning, match=r"of 32 training solves failed \(.*\); they are left "
                                         r"out"):
        sur = _tiny(fails_for_fast_k1)
    rep = sur.training
    failed = np.array(rep.failed)
    assert rep.n_failed == len(failed) > 0 and np.all(failed[:, 0] > 0.08)
    assert "left out" in str(rep)
    assert sur.interpolant.centres.shape[0] == 32 - rep.n_failed
    assert np.all(np.isfinite(sur(jnp.asarray(K0))))
    with pytest.raises(RuntimeError, match="the reference solve at p = .* failed"):
        _tiny(fails_for_fast_k1, reference=K0 * np.array([3.0, 1, 1]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(ts=np.linspace(0, 1, 5)), "time='log' needs positive save times"),
    (dict(lower=UPPER, upper=LOWER), "upper must exceed lower"),
    (dict(lower=-LOWER), "a log-scale box needs positive bounds"),
    (dict(projection="quadratic"), "projection must be one of"),
    (dict(n_train=3), "n_train must be an integer >= 21"),
    (dict(reference=K0 * 100), "reference: parameter 0"),
    (dict(vector_field=lambda t, y, k: y[:2]), "must return an array of the shape of u0"),
    (dict(extrapolate="clip"), "extrapolate must be one of"),
])
def test_bad_input_is_named_before_any_solve(kwargs, match):
    args = dict(vector_field=robertson, u0=Y0, ts=TS, lower=LOWER, upper=UPPER)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        surrogates.fit_ctesn(**args, t0=0.0, progress=False)


def test_wrong_parameter_shape(robertson_surrogate):
    with pytest.raises(ValueError, match="p must have 3 parameters"):
        robertson_surrogate(jnp.ones(2))


def test_rbf_reproduces_linear_functions_and_converges():
    rng = np.random.default_rng(0)
    f = lambda u: np.sin(3 * u[:, 0]) * np.exp(u[:, 1])  # noqa: E731
    test = rng.random((500, 2))
    errs = []
    for n in (50, 200, 800):
        c = surrogates.design(n, 2, "sobol", jax.random.key(n))
        lin = surrogates.fit_rbf(c, np.stack([1 + 2 * c[:, 0] - c[:, 1]], 1))
        np.testing.assert_allclose(lin(test)[:, 0], 1 + 2 * test[:, 0] - test[:, 1], atol=1e-9)
        s = surrogates.fit_rbf(c, f(c)[:, None])
        np.testing.assert_allclose(s(c)[:, 0], f(c), atol=1e-9)  # exact at the centres
        errs.append(np.max(np.abs(s(test)[:, 0] - f(test))))
    # fill distance h ~ n^(-1/2); cubic splines converge at least like h^2 in 2-D
    rate = -np.polyfit(np.log([50, 200, 800]), np.log(errs), 1)[0] * 2
    assert rate > 2.0, (errs, rate)
    # the appended constant output is exactly 1 and leaves the others as they were
    s1 = s.with_constant()
    np.testing.assert_array_equal(s1(test)[:, -1], 1.0)
    np.testing.assert_allclose(s1(test)[:, :-1], s(test), atol=1e-8)  # other rounding
    # above _ELEMENTWISE_DIM dimensions the distances come from one matrix product
    c10 = rng.random((40, 10))
    y10 = np.sin(c10.sum(1))[:, None]
    s10 = surrogates.fit_rbf(c10, y10, "cubic")
    assert c10.shape[1] > surrogates._rbf._ELEMENTWISE_DIM
    np.testing.assert_allclose(s10(c10), y10, atol=1e-8)


def test_designs_fill_the_unit_cube():
    for kind in surrogates._design.DESIGNS:
        u = surrogates.design(256, 3, kind)
        assert u.shape == (256, 3) and u.min() >= 0 and u.max() <= 1
        # every one of the 8 octants holds about an eighth of the points
        counts = np.bincount((u > 0.5) @ np.array([1, 2, 4]), minlength=8)
        assert counts.min() > 16, (kind, counts)
    np.testing.assert_array_equal(surrogates.design(8, 2), surrogates.design(8, 2))
    box = surrogates.ParameterBox(LOWER, UPPER)
    np.testing.assert_allclose(box.from_unit(box.to_unit(K0)), K0, rtol=1e-14)
    np.testing.assert_allclose(box.to_unit(K0), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surrogates.design(100, 3, "sobol")  # not a power of two: no warning


# ------------------------------------------------------------------ inside NUTS

K_TRUE = K0 * np.array([1.5, 0.7, 1.3])
T_OBS = np.geomspace(1e-4, 1e5, 15)


def _robertson_data(scale):
    truth = solvers.solve(robertson, Y0, T_OBS, jnp.asarray(K_TRUE), t0=0.0,
                          solver=solvers.Rodas5P(), rtol=1e-10, atol=1e-14, max_steps=100_000).ys
    sigma = 0.01 * scale  # 1 % of each species' range
    return truth + sigma * jax.random.normal(jax.random.key(0), truth.shape), sigma


def _rate_model(trajectory, box, sigma, y=None):
    import numpyro
    import numpyro.distributions as dist

    u = numpyro.sample("u", dist.Uniform(0, 1).expand([3]).to_event(1))  # log-uniform rates
    k = numpyro.deterministic("k", box.from_unit(u))
    numpyro.sample("y", dist.Normal(trajectory(k), sigma).to_event(2), obs=y)


# 45-75 s, most of it compiling NUTS through Rodas5P's sensitivities: outside the default
# suite's budget; benchmarks/ctesn.py runs the same comparison at 2 x 1,000 draws.
@pytest.mark.heavy
def test_nuts_on_the_surrogate_matches_nuts_on_the_stiff_solve(robertson_surrogate):
    import arviz as az

    from bayes_ude import inference

    sur = robertson_surrogate.at(T_OBS)
    y, sigma = _robertson_data(np.asarray(sur.scale))

    def full(k):
        return solvers.solve(robertson, Y0, T_OBS, k, t0=0.0, solver=solvers.Rodas5P(),
                             rtol=1e-8, atol=1e-12, max_steps=100_000).ys

    medians, mcse = {}, {}
    for name, trajectory in (("surrogate", sur), ("full", full)):
        idata = inference.run_nuts(_rate_model, trajectory, sur.box, sigma, y=y, num_warmup=150,
                                   num_samples=150, num_chains=2, init="uniform", progress=False,
                                   posterior_predictive=False)
        u = idata.posterior["u"]
        medians[name] = np.asarray(u.median(("chain", "draw")))
        mcse[name] = np.asarray(az.mcse(idata, var_names=["u"], method="median")["u"])
        lo, hi = np.asarray(u.quantile([0.005, 0.995], ("chain", "draw")))
        truth = np.asarray(sur.box.to_unit(K_TRUE))
        assert np.all((lo < truth) & (truth < hi)), (name, lo, hi, truth)
    diff = np.abs(medians["surrogate"] - medians["full"])
    assert np.all(diff < 2 * np.hypot(mcse["surrogate"], mcse["full"])), (medians, mcse)
