"""SINDy: agreement with pysindy's STLSQ, recovery of known equations, the threshold sweep,
batched fits over draws, and clear errors for bad input.

Data: Lorenz and Lotka--Volterra trajectories from scipy's DOP853 at rtol = atol = 1e-12
(states accurate to ~1e-10, far below the noise added), with derivatives evaluated exactly
from the known right-hand side, then Gaussian noise with a fixed seed.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import discovery
from tests.helpers import scipy_solve

# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

A, B, C, D = 1.3, 0.9, 0.8, 1.8  # du1/dt = A u1 - B u1 u2,  du2/dt = C u1 u2 - D u2


def lotka_volterra(t, u, k=None):
    return np.array([A * u[0] - B * u[0] * u[1], C * u[0] * u[1] - D * u[1]])


def lorenz(t, u, k=None):
    x, y, z = u
    return np.array([10.0 * (y - x), x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z])


def trajectory(f, u0, t_end, n):
    """States on n equally spaced times and the exact derivatives there."""
    X = scipy_solve(f, u0, np.linspace(0.0, t_end, n))
    return X, np.array([f(0.0, u) for u in X])


@pytest.fixture(scope="module")
def lv():
    return trajectory(lotka_volterra, [2.0, 1.0], 10.0, 200)


@pytest.fixture(scope="module")
def interaction(lv):
    """Only the interaction terms (what a UDE's network would learn): du1 = -0.9 u1 u2,
    du2 = 0.8 u1 u2, with 5% noise (std = 5% of each target's root mean square)."""
    X, _ = lv
    clean = np.stack([-B * X[:, 0] * X[:, 1], C * X[:, 0] * X[:, 1]], axis=1)
    scale = 0.05 * np.sqrt(np.mean(clean**2, axis=0))
    noisy = clean + scale * np.random.default_rng(1).standard_normal(clean.shape)
    return X, clean, scale, noisy


TRUE_INTERACTION = np.array([[0, 0, 0, 0, -B, 0], [0, 0, 0, 0, C, 0]])  # degree-2 order


def sklearn_refit_rcond():
    """The singular-value cutoff of pysindy's unbiasing refit: scikit-learn >= 1.9 passes
    ``LinearRegression(tol=1e-6)`` to ``scipy.linalg.lstsq`` as ``cond``; before that the
    cutoff was machine precision."""
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return 1e-6 if (major, minor) >= (1, 9) else None


# --------------------------------------------------------------------------------------
# 1. Agreement with pysindy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [2, 3])
def test_polynomial_library_matches_pysindy(lv, degree):
    ps = pytest.importorskip("pysindy")
    X = np.column_stack([lv[0], lv[0][:, :1] ** 0.5])  # three features
    ours = discovery.PolynomialLibrary(degree)
    ref = ps.PolynomialLibrary(degree=degree).fit(X)
    np.testing.assert_array_equal(np.asarray(ours(X)), ref.transform(X))
    names = ["u1", "u2", "u3"]
    assert ours.term_names(names) == [n.replace(" ", "*") for n in ref.get_feature_names(names)]


# (system, degree, noise std, threshold, alpha, max_iter, unbias). Noise makes every
# spurious coefficient non-zero, so the threshold decides; max_iter=1 stops before the
# active set settles (pysindy warns); alpha=0 is plain sequential least squares; the
# cubic Lorenz library has condition number ~1e6, where the refit's cutoff matters.
AGREEMENT_CASES = [
    ("lorenz", 2, 0.5, 0.1, 0.05, 20, True),
    ("lorenz", 2, 0.5, 0.5, 0.05, 20, False),
    ("lorenz", 2, 0.5, 1.0, 10.0, 20, True),
    ("lorenz", 2, 0.5, 0.5, 0.0, 1, True),
    ("lorenz", 3, 0.5, 0.05, 0.05, 20, True),
    ("lorenz", 3, 0.5, 0.5, 0.0, 20, True),
    ("lv", 3, 0.05, 0.05, 0.05, 20, True),
    ("lv", 3, 0.05, 0.2, 0.05, 2, False),
]


@pytest.fixture(scope="module")
def lorenz_data():
    return trajectory(lorenz, [-8.0, 8.0, 27.0], 5.0, 500)


@pytest.mark.parametrize(("system", "degree", "noise", "threshold", "alpha", "max_iter",
                          "unbias"), AGREEMENT_CASES)
def test_stlsq_matches_pysindy(lv, lorenz_data, system, degree, noise, threshold, alpha,
                               max_iter, unbias):
    ps = pytest.importorskip("pysindy")
    from sklearn.exceptions import ConvergenceWarning

    X, dX = lorenz_data if system == "lorenz" else lv
    dX = dX + noise * np.random.default_rng(0).standard_normal(dX.shape)
    theta = np.asarray(discovery.PolynomialLibrary(degree)(X))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = ps.STLSQ(threshold=threshold, alpha=alpha, max_iter=max_iter,
                       unbias=unbias).fit(theta, dX).coef_
    ref_converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    options = dict(threshold=threshold, alpha=alpha, max_iter=max_iter, unbias=unbias,
                   rcond=sklearn_refit_rcond())
    ours = np.asarray(discovery.stlsq(theta, dX, **options))
    assert 0 < np.count_nonzero(ref) < ref.size  # the threshold removed some terms, not all
    np.testing.assert_array_equal(ours != 0, ref != 0)
    # Measured max |difference| over these cases: 1.4e-11 (coefficients up to 28).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)

    # sindy() is the same fit from X, and reports non-convergence where pysindy does.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = discovery.sindy(X, dX, discovery.PolynomialLibrary(degree), **options)
    assert fit.converged == ref_converged
    assert any("did not converge" in str(w.message) for w in caught) == (not ref_converged)
    np.testing.assert_allclose(fit.coefficients, ref, rtol=0, atol=1e-6)


def test_refit_cutoff_matches_pysindy(lorenz_data):
    """With every cubic term active, Theta's condition number (~1.3e6) exceeds 1/rcond, so
    the refit's singular-value cutoff changes the answer: rcond=1e-6 reproduces pysindy
    (scikit-learn >= 1.9), rcond=None the plain least-squares solution."""
    ps = pytest.importorskip("pysindy")
    X, dX = lorenz_data
    dX = dX + 0.5 * np.random.default_rng(0).standard_normal(dX.shape)
    theta = np.asarray(discovery.PolynomialLibrary(3)(X))
    ref = ps.STLSQ(threshold=0.0, alpha=0.05).fit(theta, dX).coef_
    ours = discovery.stlsq(theta, dX, threshold=0.0, rcond=sklearn_refit_rcond())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)  # measured 2e-10
    plain = discovery.stlsq(theta, dX, threshold=0.0, rcond=None)
    np.testing.assert_allclose(plain, np.linalg.lstsq(theta, dX, rcond=None)[0].T, rtol=0,
                               atol=1e-8)


# --------------------------------------------------------------------------------------
# 2. Recovery and readable output
# --------------------------------------------------------------------------------------


def test_recovers_full_lotka_volterra_exactly(lv):
    X, dX = lv
    fit = discovery.sindy(X, dX, discovery.PolynomialLibrary(2), threshold=0.1)
    np.testing.assert_allclose(fit.coefficients, [[0, A, 0, 0, -B, 0], [0, 0, -D, 0, C, 0]],
                               atol=1e-8)
    assert fit.equations() == ["du1/dt = 1.300*u1 - 0.900*u1*u2",
                               "du2/dt = -1.800*u2 + 0.800*u1*u2"]
    assert fit.equations(precision=1)[0] == "du1/dt = 1.3*u1 - 0.9*u1*u2"
    np.testing.assert_allclose(fit.predict(X), dX, atol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.vmap(fit.predict))(X), dX, atol=1e-8)
    assert fit.converged and fit.n_active == 4


def test_recovers_interaction_terms(interaction):
    X, _, _, dX = interaction
    fit = discovery.sindy(X, dX, discovery.PolynomialLibrary(2), threshold=0.1)
    assert fit.term_names == ("1", "u1", "u2", "u1^2", "u1*u2", "u2^2")
    np.testing.assert_array_equal(fit.active, TRUE_INTERACTION != 0)
    np.testing.assert_allclose(fit.coefficients[:, 4], [-B, C], rtol=0.10)
    eq1, eq2 = fit.equations()
    assert re.fullmatch(r"du1/dt = -0\.9\d\d\*u1\*u2", eq1), eq1
    assert re.fullmatch(r"du2/dt = 0\.[78]\d\d\*u1\*u2", eq2), eq2
    table = fit.table()
    assert list(table.columns) == ["u1*u2"] and list(table.index) == ["du1/dt", "du2/dt"]
    np.testing.assert_allclose(table["u1*u2"], fit.coefficients[:, 4])


def test_function_and_product_libraries():
    # Damped pendulum: du1 = u2, du2 = -2 sin(u1) - 0.1 u2.
    def pendulum(t, u, k=None):
        return np.array([u[1], -2.0 * np.sin(u[0]) - 0.1 * u[1]])

    X, dX = trajectory(pendulum, [2.5, 0.0], 10.0, 200)
    library = discovery.PolynomialLibrary(1) + discovery.FunctionLibrary(
        [jnp.sin, jnp.cos], ["sin", "cos"])
    assert library.term_names(["x", "v"]) == ["1", "x", "v", "sin(x)", "sin(v)", "cos(x)",
                                              "cos(v)"]
    fit = discovery.sindy(X, dX, library, threshold=0.05, feature_names=["x", "v"])
    assert fit.equations() == ["dx/dt = 1.000*v", "dv/dt = -0.100*v - 2.000*sin(x)"]

    product = discovery.PolynomialLibrary(1) * discovery.FunctionLibrary([jnp.sin])
    assert product.term_names(["u1", "u2"]) == [
        "sin(u1)", "sin(u2)", "u1*sin(u1)", "u1*sin(u2)", "u2*sin(u1)", "u2*sin(u2)"]
    theta = np.asarray(product(X))
    np.testing.assert_allclose(theta[:, 3], X[:, 0] * np.sin(X[:, 1]), rtol=1e-14)
    templated = discovery.FunctionLibrary([lambda u: 1 / u], ["1/{}"])
    assert templated.term_names(["u1"]) == ["1/u1"]
    # A library is pure JAX: it maps one state or a batch, under jit and vmap.
    np.testing.assert_allclose(jax.jit(jax.vmap(library))(X), library(X), rtol=1e-15)
    assert library(X[0]).shape == (7,) and library.n_terms(2) == 7


# --------------------------------------------------------------------------------------
# 3. The threshold sweep
# --------------------------------------------------------------------------------------


def test_sweep_selects_true_model(interaction):
    X, _, _, dX = interaction
    thresholds = np.geomspace(1e-3, 3.0, 12)
    table, best = discovery.sweep(X, dX, discovery.PolynomialLibrary(2), thresholds)
    assert list(table.columns) == ["lambda", "n_active", "terms", "error", "aicc", "bic",
                                   "converged"]
    np.testing.assert_array_equal(best.active, TRUE_INTERACTION != 0)
    assert table["n_active"].iloc[0] == 12 and table["n_active"].iloc[-1] == 0
    assert best.aicc == table["aicc"].min()
    row = table.loc[table["aicc"].idxmin()]
    assert row["terms"] == "du1/dt: u1*u2; du2/dt: u1*u2"
    # The criteria follow the documented formulas.
    n, k = dX.size, 2
    rss = np.sum((dX - np.asarray(best.predict(X))) ** 2)
    assert best.aicc == pytest.approx(n * np.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1))
    assert best.bic == pytest.approx(n * np.log(rss / n) + k * np.log(n))
    assert best.error == pytest.approx(rss / n)
    _, best_bic = discovery.sweep(X, dX, discovery.PolynomialLibrary(2), thresholds,
                                  criterion="bic")
    np.testing.assert_array_equal(best_bic.active, TRUE_INTERACTION != 0)


# --------------------------------------------------------------------------------------
# 4. Batched over draws
# --------------------------------------------------------------------------------------


def test_batched_over_draws(interaction):
    X, clean, scale, _ = interaction
    n_draws = 200
    rng = np.random.default_rng(2)
    dX = clean + scale * rng.standard_normal((n_draws, *clean.shape))
    library = discovery.PolynomialLibrary(2)
    theta = np.asarray(library(X))

    coef = np.asarray(discovery.stlsq_batched(theta, dX, threshold=0.1))
    assert coef.shape == (n_draws, 2, 6)
    # Draw 6 picks up spurious terms at this threshold, draws 0 and 199 do not.
    assert [np.count_nonzero(coef[i]) for i in (0, 6, 199)] == [2, 6, 2]
    for i in (0, 6, 199):
        np.testing.assert_allclose(coef[i], discovery.stlsq(theta, dX[i], threshold=0.1),
                                   rtol=0, atol=1e-12)
    # The plain function vmaps too, and per-draw library matrices are accepted.
    np.testing.assert_allclose(
        jax.vmap(lambda y: discovery.stlsq(theta, y, threshold=0.1))(dX[:3]), coef[:3],
        rtol=0, atol=1e-12)
    per_draw = np.broadcast_to(theta, (3, *theta.shape))
    np.testing.assert_allclose(discovery.stlsq_batched(per_draw, dX[:3], threshold=0.1),
                               coef[:3], rtol=0, atol=1e-12)

    # At this threshold the states' narrow range (u1, u2 and u1*u2 are nearly collinear)
    # lets a spurious term through in some draws, so the batch mixes active sets:
    assert len(np.unique(coef != 0, axis=0)) > 1

    thresholds = [0.001, 0.1, 0.3, 2.0]
    fits = discovery.sweep_batched(X, dX, library, thresholds)
    np.testing.assert_allclose(fits.coefficients[1], coef, rtol=0, atol=1e-12)
    summary = fits.summary()
    assert list(summary.columns) == ["lambda", "n_active", "dominant_terms", "pct_draws",
                                     "equations", "error", "aicc", "bic"]
    truth = "du1/dt: u1*u2; du2/dt: u1*u2"
    assert list(summary["dominant_terms"][1:3]) == [truth, truth]
    row = summary.iloc[2]
    assert row["n_active"] == 2 and row["pct_draws"] >= 90.0  # measured: 100 (82.5 at 0.1)
    assert re.fullmatch(r"du1/dt = -0\.\d{3}\*u1\*u2; du2/dt = 0\.\d{3}\*u1\*u2",
                        row["equations"])
    # The lowest mean AICc is a threshold whose dominant set is the true model.
    assert summary.loc[summary["aicc"].idxmin(), "dominant_terms"] == truth
    assert summary.iloc[0]["n_active"] == 12
    assert summary.iloc[3]["n_active"] == 0 and summary.iloc[3]["pct_draws"] == 100.0
    assert (fits.inclusion(1)["u1*u2"] >= 0.9).all()
    assert (fits.inclusion(2)["u1*u2"] >= 0.9).all()
    # Per-draw criteria follow the formulas of sweep() (checked on one draw).
    resid = dX[6] - theta @ np.asarray(fits.coefficients[1, 6]).T
    n, k = resid.size, 6
    aicc = n * np.log(np.sum(resid**2) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)
    assert float(fits.aicc[1, 6]) == pytest.approx(aicc, rel=1e-12)


# --------------------------------------------------------------------------------------
# 5. Bad input
# --------------------------------------------------------------------------------------

XS = np.linspace(0.5, 1.5, 20).reshape(10, 2)
DXS = XS[:, ::-1].copy()


def _with(array, index, value):
    out = array.copy()
    out[index] = value
    return out


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: discovery.PolynomialLibrary(0), "degree must be an integer >= 1, got 0"),
        (lambda: discovery.PolynomialLibrary(1.5), "degree must be an integer >= 1"),
        (lambda: discovery.FunctionLibrary([jnp.sin], ["a", "b"]),
         "FunctionLibrary names has 2 names but functions has 1"),
        (lambda: discovery.FunctionLibrary([lambda u: u]), "has no usable __name__"),
        (lambda: discovery.sindy(XS, DXS[:-1]),
         "X and dX must have the same number of samples \\(rows\\), got 10 and 9"),
        (lambda: discovery.sindy(_with(XS, (2, 1), np.nan), DXS),
         "X contains 1 non-finite value \\(NaN or inf\\)"),
        (lambda: discovery.sindy(XS, _with(DXS, slice(0, 3), np.inf)),
         "dX contains 6 non-finite values"),
        (lambda: discovery.sindy(XS[:, 0], DXS), "X must be a 2-D array \\(n_samples, "
         "n_features\\), got shape \\(10,\\)"),
        (lambda: discovery.sindy(XS, DXS[None]), "dX must be a 2-D array"),
        (lambda: discovery.sindy(XS, DXS, threshold=-0.1),
         "threshold must be a finite number >= 0, got -0.1"),
        (lambda: discovery.sindy(XS, DXS, alpha=-1.0), "alpha must be a finite number >= 0"),
        (lambda: discovery.sindy(XS, DXS, max_iter=0), "max_iter must be a positive integer"),
        (lambda: discovery.sindy(XS, DXS, library="poly2"), "library must be a bayes_ude"),
        (lambda: discovery.sindy(XS, DXS, feature_names=["x", "y", "z"]),
         "feature_names has 3 names but X \\(features, columns\\) has 2"),
        (lambda: discovery.sindy(-XS, DXS, discovery.FunctionLibrary([jnp.log])),
         "library\\(X\\) produced 20 non-finite values"),
        (lambda: discovery.sweep(XS, DXS, thresholds=[0.1, -1.0]),
         "thresholds must be finite and >= 0, got -1.0"),
        (lambda: discovery.sweep(XS, DXS, thresholds=[[0.1]]),
         "thresholds must be a non-empty 1-D array"),
        (lambda: discovery.sweep(XS, DXS, criterion="aic"), "criterion must be one of"),
        (lambda: discovery.sweep_batched(XS, DXS), "dX must be a 3-D array \\(n_draws, "
         "n_samples, n_targets\\)"),
        (lambda: discovery.stlsq(XS, DXS[:-2]), "theta and dX must have the same number"),
        (lambda: discovery.stlsq_batched(np.ones((3, 10, 2)), np.ones((4, 10, 2))),
         "theta and dX must have the same number of draws, got 3 and 4"),
        (lambda: discovery.stlsq(XS, DXS, threshold=-1.0), "threshold must be"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fits_that_the_data_cannot_determine_are_said(lv):
    """Each case returned a model as a normal result, without a word."""
    X, dX = lv
    x1 = X[:, 0]
    # A constant state makes 1, u2 and u2^2 one column: the constant term 0.25 was split
    # three ways, thresholded away, and the rest refitted wrongly.
    with pytest.warns(RuntimeWarning, match=r"rank 3 for 6 terms.*1 ~ u2"):
        discovery.sindy(np.stack([x1, np.ones_like(x1)], 1), (0.25 + x1)[:, None],
                        discovery.PolynomialLibrary(2), threshold=0.1)
    # ...and over draws, where every draw agreeing on the wrong model looked like evidence
    constant = np.stack([x1, np.ones_like(x1)], 1)
    draws = np.stack([(0.25 + x1)[:, None]] * 3)
    with pytest.warns(RuntimeWarning, match=r"rank 3 for 6 terms.*1 ~ u2"):
        fits = discovery.sweep_batched(constant, draws, discovery.PolynomialLibrary(2),
                                       thresholds=[0.1, 0.3])
    with pytest.warns(RuntimeWarning, match=r"rank 3 for 6 terms.*column 0 ~ column 2"):
        discovery.stlsq_batched(discovery.PolynomialLibrary(2)(constant), draws)
    with pytest.raises(ValueError, match=r"index must be an integer in \[0, 2\)"):
        fits.inclusion(2)  # JAX clamped it to the last threshold's table
    with pytest.warns(RuntimeWarning, match="4 samples for 10 library terms"):
        discovery.sindy(X[:4], dX[:4], discovery.PolynomialLibrary(3), threshold=0.01)
    with pytest.warns(RuntimeWarning, match="removed every term of du1/dt, du2/dt"):
        discovery.sindy(X, dX, discovery.PolynomialLibrary(2), threshold=1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a determined fit says nothing
        fit = discovery.sindy(X, dX, discovery.PolynomialLibrary(2), threshold=0.1)
    # float32 data are fitted in float64 (before: in float32, 2e-4 off)
    fit32 = discovery.sindy(X.astype(np.float32), dX.astype(np.float32),
                            discovery.PolynomialLibrary(2), threshold=0.1)
    assert fit32.coefficients.dtype == jnp.float64
    np.testing.assert_allclose(fit32.coefficients, fit.coefficients, atol=1e-5)
