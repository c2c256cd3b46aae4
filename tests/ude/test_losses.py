"""Training losses against closed forms: exponential decay u' = -k u, u = u0 exp(-k t)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import ude


class Decay(eqx.Module):
    k: jax.Array

    def __call__(self, t, u):
        return -self.k * u


TS = np.linspace(0.0, 4.0, 17)
U0 = np.array([2.0, -1.0])
K_TRUE = 0.7


def exact(k, ts=TS, u0=U0):
    return u0[None, :] * np.exp(-k * ts)[:, None]


def noisy_data():
    rng = np.random.default_rng(0)
    return exact(K_TRUE) + 0.05 * rng.normal(size=(TS.size, 2))


def test_single_shooting_is_the_scaled_mse_of_the_closed_form():
    ys = noisy_data()
    loss = ude.SingleShooting(TS, ys, u0=U0, rtol=1e-10, atol=1e-12)
    scale = ys.std(axis=0)
    for k in (0.3, 0.7, 1.5):
        expected = np.mean(((exact(k) - ys) / scale) ** 2)
        np.testing.assert_allclose(float(loss(Decay(jnp.asarray(k)))), expected, rtol=1e-7)
    # The gradient agrees with the derivative of the closed form.
    k = 0.9
    d_pred = -TS[:, None] * exact(k)
    expected_grad = np.mean(2 * (exact(k) - ys) * d_pred / scale**2)
    grad = jax.grad(lambda m: loss(m))(Decay(jnp.asarray(k))).k
    np.testing.assert_allclose(float(grad), expected_grad, rtol=1e-6)


def test_batches_of_trajectories_and_minibatch_indices():
    u0s = np.array([[1.0, 2.0], [0.5, -0.5], [3.0, 1.0]])
    ys = np.stack([exact(K_TRUE, u0=u) for u in u0s])
    loss = ude.SingleShooting(TS, ys, rtol=1e-10, atol=1e-12)
    assert loss.n_trajectories == 3
    assert float(loss(Decay(jnp.asarray(K_TRUE)))) < 1e-14
    scale = ys.reshape(-1, 2).std(axis=0)
    sub = np.array([0, 2])
    expected = np.mean(((np.stack([exact(1.0, u0=u) for u in u0s[sub]]) - ys[sub]) / scale) ** 2)
    np.testing.assert_allclose(float(loss(Decay(jnp.asarray(1.0)), jnp.asarray(sub))), expected,
                               rtol=1e-7)


def test_multiple_shooting_fit_and_continuity_terms():
    ys = exact(K_TRUE)
    loss = ude.MultipleShooting(TS, ys, segment_length=4, continuity=10.0, rtol=1e-10,
                                atol=1e-12, scale=1.0)
    p = loss.init(Decay(jnp.asarray(K_TRUE)))
    assert p["nodes"].shape == (1, 4, 2)  # 16 intervals / 4
    assert float(loss(p)) < 1e-14  # exact data, exact model, nodes on the data
    # Move node 2 (t = 2.0): segment 1 ends 0.1 away from it (a continuity gap); segment 2
    # starts from it, so its predictions are off by 0.1 * exp(-k (t - 2)) (data fit), and
    # its end misses node 3 by 0.1 * exp(-k) (a second gap).
    nodes = p["nodes"].at[0, 2, 0].add(0.1)
    value = float(loss({"model": p["model"], "nodes": nodes}))
    seg2 = TS[8:13]
    fit = np.sum((0.1 * np.exp(-K_TRUE * (seg2[1:] - 2.0))) ** 2) / (TS.size * 2)
    gaps = np.array([0.1, 0.1 * np.exp(-K_TRUE * 1.0)])
    continuity = 10.0 * np.sum(gaps**2) / (3 * 2)  # mean over 3 gaps x 2 states
    np.testing.assert_allclose(value, fit + continuity, rtol=1e-7)


def test_multiple_shooting_uneven_last_segment():
    ts = np.linspace(0.0, 4.0, 15)  # 14 intervals in segments of 4: 4 + 4 + 4 + 2
    loss = ude.MultipleShooting(ts, exact(K_TRUE, ts=ts), segment_length=4, rtol=1e-10,
                                atol=1e-12)
    p = loss.init(Decay(jnp.asarray(K_TRUE)))
    assert float(loss(p)) < 1e-14
    assert float(loss({"model": Decay(jnp.asarray(1.0)), "nodes": p["nodes"]})) > 1e-3


@pytest.mark.parametrize("method", ["spline", "kernel"])
def test_smoothing_estimates_derivatives(method):
    ts = np.linspace(0.0, 6.0, 61)
    ys = np.stack([np.sin(ts), np.cos(ts)], axis=1)
    u_hat, du_hat = ude.smooth(ts, ys, method=method)
    inner = slice(3, -3)
    # The kernel smoother's bias is O(h^2 u'') with h = 2.5 dt = 0.25.
    tol = {"spline": 1e-3, "kernel": 5e-3}[method]
    np.testing.assert_allclose(u_hat[0, inner], ys[inner], atol=tol)
    np.testing.assert_allclose(du_hat[0, inner, 0], np.cos(ts[inner]), atol=10 * tol)
    np.testing.assert_allclose(du_hat[0, inner, 1], -np.sin(ts[inner]), atol=10 * tol)


def test_collocation_recovers_rate_without_solving():
    ts = np.linspace(0.0, 4.0, 41)
    loss = ude.Collocation(ts, exact(K_TRUE, ts=ts))
    ks = np.linspace(0.3, 1.2, 91)
    values = [float(loss(Decay(jnp.asarray(k)))) for k in ks]
    assert abs(ks[int(np.argmin(values))] - K_TRUE) <= 0.02


def test_prediction_error_reduces_to_single_shooting_at_gain_zero():
    ys = noisy_data()
    model = Decay(jnp.asarray(0.4))
    ss = ude.SingleShooting(TS, ys, rtol=1e-10, atol=1e-12)
    pem = ude.PredictionError(TS, ys, gain=0.0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(pem(model)), float(ss(model)), rtol=1e-9)
    # Nudging toward the data pulls a wrong model's simulation toward it.
    assert float(pem.with_gain(5.0)(model)) < 0.5 * float(ss(model))
    # Exact model and exact data: the observer term is zero along the solution.
    exact_pem = ude.PredictionError(TS, exact(K_TRUE), gain=3.0, rtol=1e-10, atol=1e-12)
    assert float(exact_pem(Decay(jnp.asarray(K_TRUE)))) < 1e-5


def test_prediction_error_loss_is_as_accurate_as_its_tolerance():
    """Lotka-Volterra at rates 5 % off, 31 irregular noisy data, gain 1.5, against scipy
    solving each interval between data times on its own (the interpolated data are
    linear there) at rtol 1e-13. The nudged field has a kink at each data time; stepping
    across them left the loss 4.5e-5 off at rtol 1e-6 (single shooting: 2.8e-6)."""
    from scipy.integrate import solve_ivp

    class LV(eqx.Module):
        p: jax.Array

        def __call__(self, t, u):
            a, b, c, d = self.p
            return jnp.stack([a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]])

    def f(t, u, p):
        return np.array([p[0] * u[0] - p[1] * u[0] * u[1], p[2] * u[0] * u[1] - p[3] * u[1]])

    rng = np.random.default_rng(0)
    ts = np.sort(np.concatenate([[0.0], rng.uniform(0, 6, 30)]))
    truth, p = np.array([1.3, 0.9, 0.8, 1.8]), np.array([1.365, 0.873, 0.816, 1.782])
    ys = solve_ivp(f, (0, ts[-1]), [2.0, 1.0], t_eval=ts, args=(truth,), rtol=1e-11,
                   atol=1e-12).y.T + 0.05 * rng.standard_normal((31, 2))
    ys[0] = [2.0, 1.0]
    u, pred = ys[0], [ys[0]]
    for i in range(30):
        a, b = ts[i], ts[i + 1]
        u = solve_ivp(lambda t, x, i=i, a=a, b=b: f(t, x, p) + 1.5 * (
            ys[i] + (t - a) / (b - a) * (ys[i + 1] - ys[i]) - x), (a, b), u, rtol=1e-13,
            atol=1e-14, method="DOP853").y[:, -1]
        pred.append(u)
    reference = np.mean(((np.array(pred) - ys) / ys.std(0)) ** 2)
    loss = ude.PredictionError(ts, ys, 1.5, rtol=1e-6, atol=1e-8)
    assert float(loss(LV(jnp.asarray(p)))) == pytest.approx(reference, rel=5e-6)


class Riccati(eqx.Module):
    c: jax.Array

    def __call__(self, t, u):
        return self.c * u**2  # from u0: blows up at 1 / (c u0)


def test_failed_solve_gives_finite_failed_loss():
    """FAILED_LOSS with a finite (zero) gradient for every loss; multiple shooting's
    continuity term read the failed segment's NaNs, and its gradient was NaN."""
    ys = exact(K_TRUE)
    losses = (ude.SingleShooting(TS, ys, u0=U0), ude.PredictionError(TS, ys, 0.0, u0=U0),
              ude.MultipleShooting(TS, ys, 4, u0=U0))
    for loss in losses:
        model = Riccati(jnp.asarray(0.9))  # blows up at t = 0.56 (between data times)
        p = loss.init(model) if isinstance(loss, ude.MultipleShooting) else model
        value, grad = jax.value_and_grad(lambda q, loss=loss: loss(q))(p)
        assert float(value) == ude.FAILED_LOSS, loss
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grad)), loss


def test_multiple_shooting_does_not_depend_on_the_time_origin():
    """u' = u^2 from u0 = 1/105 blows up 105 s after the start; data until 100 s, segments
    of 30 intervals (the last, of 10, padded). The padding's save times stepped by 1e-9 x
    max|t|: 1.7 s each on Unix times, which ran the solve past the blow-up."""
    rel = np.linspace(0.0, 100.0, 101)
    ys = (1.0 / (105.0 - rel))[:, None]
    values = []
    for origin in (0.0, 1.7e9):
        loss = ude.MultipleShooting(origin + rel, ys, 30)
        values.append(float(loss(loss.init(Riccati(jnp.asarray(1.0))))))
    assert values[0] < 1e-8 and values[1] == pytest.approx(values[0], abs=1e-8)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: ude.SingleShooting(TS, np.ones((10, 2))), "time points"),
    (lambda: ude.SingleShooting(TS, np.ones(17)), r"shape \(T, n\)"),
    (lambda: ude.SingleShooting(TS[::-1], np.ones((17, 2))), "strictly increasing"),
    (lambda: ude.SingleShooting(TS, np.where(np.eye(17, 2) > 0, np.nan, 1.0)), "NaN"),
    (lambda: ude.SingleShooting(TS, np.ones((17, 2)), u0=np.ones(3)), "u0"),
    (lambda: ude.MultipleShooting(TS, np.ones((17, 2)), segment_length=0), "segment_length"),
    (lambda: ude.MultipleShooting(TS, np.ones((17, 2)), 17), "segment_length"),
    (lambda: ude.PredictionError(TS, np.ones((17, 2)), gain=-1.0), "gain"),
    (lambda: ude.PredictionError(TS, np.ones((17, 2))).with_gain(np.inf), "gain"),
    (lambda: ude.SingleShooting(TS, np.ones((17, 2)), u0=[np.nan, 1.0]), "u0 contains NaN"),
    (lambda: ude.SingleShooting(TS, np.ones((17, 2)), scale=[1.0, np.inf]), "scale"),
    (lambda: ude.MultipleShooting(TS, np.ones((17, 2)), True), "segment_length"),
    (lambda: ude.SingleShooting(TS, np.ones((17, 2)), scale=[1.0, 1.0, 1.0]),
     "one value per state"),
    (lambda: ude.Collocation(TS, exact(K_TRUE), method="kernel", bandwidth=1e-3),
     "bandwidth=0.001 is too small"),
    (lambda: ude.Collocation(TS, np.ones((17, 2)), bandwidth=0.5), "bandwidth applies"),
    (lambda: ude.SingleShooting(TS, np.ones((17, 2)))(Decay(jnp.asarray(1.0)),
                                                       jnp.array([1])), "batch indices"),
    (lambda: ude.Collocation(TS, np.ones((17, 2)), method="fourier"), "method"),
])
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_forecast_starts_from_the_data_first_time():
    """``predict`` on later times solves from u0 at the data's first time (before: it
    placed u0 at the new first time, a forecast off by exp(-k t))."""
    loss = ude.SingleShooting(TS, exact(K_TRUE), u0=U0, rtol=1e-10, atol=1e-12)
    later = np.array([4.0, 6.0, 8.0])
    pred, ok = loss.predict(Decay(jnp.asarray(K_TRUE)), ts=later)
    assert bool(ok.all())
    np.testing.assert_allclose(np.asarray(pred[0]), exact(K_TRUE, ts=later), rtol=1e-8)
    with pytest.raises(ValueError, match="must not start before"):
        loss.predict(Decay(jnp.asarray(K_TRUE)), ts=np.array([-1.0, 1.0]))
    # the loss passed to a compiled function (its data traced) forecasts the same
    traced = eqx.filter_jit(lambda lo, m: lo.predict(m, ts=later)[0])(loss, Decay(K_TRUE))
    np.testing.assert_allclose(np.asarray(traced), np.asarray(pred), rtol=1e-12)


def test_a_network_or_physics_of_the_wrong_size_is_an_error():
    """A network with one output for a two-state UDE was broadcast over both states."""
    from bayes_ude import nn

    key = jax.random.key(0)
    narrow = ude.UDE(lambda t, u, k: -k * u, nn.MLP(2, 1, (3,), "tanh", key=key),
                     theta=jnp.asarray(1.0))
    with pytest.raises(ValueError, match="out_size must be the number of states"):
        ude.SingleShooting(TS, exact(K_TRUE))(narrow)
    one_state_physics = ude.UDE(lambda t, u, k: -u[:1], nn.MLP(2, 2, (3,), "tanh", key=key))
    with pytest.raises(ValueError, match=r"physics\(t, u, theta\) must return"):
        one_state_physics(0.0, jnp.ones(2))


def test_fit_skips_failed_solves_and_returns_parameters_that_solve():
    """A failed solve's loss has a zero gradient: Adam's momentum used to carry the
    parameters on into the failing region (k 1 -> 7 here) and fit returned them."""
    ts = np.linspace(0.0, 1.0, 6)
    loss = ude.SingleShooting(ts, exact(3.0, ts=ts), u0=U0, max_steps=8)

    def value(k):  # with its forward sensitivities, as in fit
        return float(jax.value_and_grad(lambda m: loss(m))(Decay(jnp.asarray(k)))[0])

    assert value(1.0) < ude.FAILED_LOSS  # solves at the start
    assert value(2.0) == ude.FAILED_LOSS  # not one Adam step (of 1.0) on
    with pytest.warns(RuntimeWarning, match="the parameters returned are the last"):
        result = ude.fit(loss, Decay(jnp.asarray(1.0)), steps=30, learning_rate=1.0,
                         progress=False)
    assert float(loss(result.params)) < ude.FAILED_LOSS
    assert float(result.params.k) == 1.0
    with pytest.warns(RuntimeWarning, match="at every step"):
        ude.fit(loss, Decay(jnp.asarray(2.0)), steps=5, progress=False)
    # The last step into the failing region: the loss before it was recorded, not the
    # one after, and fit returned k = 2 (failing) with final_loss that of k = 1, and no
    # warning; L-BFGS after it started from k = 2 and could not move (a constant loss).
    # Now the parameters that solve are returned, with their loss, and a warning; and
    # L-BFGS starts from them.
    with pytest.warns(RuntimeWarning, match="the parameters returned are the last"):
        result = ude.fit(loss, Decay(jnp.asarray(1.0)), steps=1, learning_rate=1.0,
                         progress=False)
    assert float(result.params.k) == 1.0
    assert result.final_loss == pytest.approx(value(1.0))
    result = ude.fit(loss, Decay(jnp.asarray(1.0)), steps=1, learning_rate=1.0,
                     lbfgs_steps=3, progress=False)
    assert result.final_loss == pytest.approx(float(loss(result.params)))
    assert result.final_loss < value(1.0)
    with pytest.raises(ValueError, match="learning_rate must be a finite positive"):
        ude.fit(loss, Decay(jnp.asarray(1.0)), steps=5, learning_rate=-0.05, progress=False)


def test_theta_as_a_python_float_is_fitted_and_l2_spares_it():
    """theta=1.0 (a Python float) was held fixed by fit, and l2 pulled theta to 0; the
    network then made up the difference. Physics -theta * u with a linear network
    (no hidden layer, started at 0): on noise-free data from theta = 0.7 both are
    recovered."""
    from bayes_ude import nn

    ys = exact(K_TRUE)
    loss = ude.SingleShooting(TS, ys, u0=U0, rtol=1e-10, atol=1e-12)
    net = nn.MLP(2, 2, (), key=jax.random.key(0), init="zero_last")
    model = ude.UDE(lambda t, u, th: -th * u, net, theta=0.3)
    assert isinstance(model.theta, jax.Array)
    # integers (Python, numpy, JAX) too: {"k": 1} was never trained either; flags stay
    for k in (1, np.int64(1), jnp.asarray(1)):
        th = ude.UDE(None, net, theta={"k": k, "on": True}).theta
        assert th["k"].dtype == jnp.float64 and th["on"] is True
    fitted = ude.fit(loss, model, steps=0, lbfgs_steps=200, l2=1e-3, progress=False).params
    assert float(fitted.theta) == pytest.approx(K_TRUE, abs=1e-3)
    with pytest.raises(TypeError, match="its own parameters"):
        fitted(0.0, jnp.asarray(U0), fitted)  # solve(model, u0, ts, args) ignored args


def test_l2_penalty_spares_multiple_shooting_nodes():
    from bayes_ude.ude._fit import _Penalised

    ys = exact(K_TRUE)
    ms = ude.MultipleShooting(TS, ys, segment_length=4, rtol=1e-10, atol=1e-12)
    p = ms.init(Decay(jnp.asarray(K_TRUE)))
    penalised = _Penalised(ms, 0.5)
    np.testing.assert_allclose(float(penalised(p)), float(ms(p)) + 0.5 * K_TRUE**2, rtol=1e-9)


def test_state_bounds_from_an_earlier_t0():
    """Bounds checked after the data only (t in [2, 3]) for u0 given at t = 0: u0 used
    to be placed at ts[0] = 2."""
    ts = np.linspace(2.0, 3.0, 11)
    bounds = ude.StateBounds(ts, U0[:1], t0=0.0, lower=0.5, rtol=1e-10, atol=1e-12,
                             weight=1.0)
    u = 2.0 * np.exp(-K_TRUE * ts)
    expected = np.mean(np.maximum(0.5 - u, 0.0) ** 2)
    model = Decay(jnp.asarray(K_TRUE))
    np.testing.assert_allclose(float(bounds(model)), expected, rtol=1e-7)
    with pytest.raises(ValueError, match="t0=2.5 must be a number at most ts"):
        ude.StateBounds(ts, U0[:1], t0=2.5)


def test_state_bounds_is_the_squared_violation_of_the_closed_form():
    """u = u0 exp(-k t) for u0 = (2, -1): a lower bound 0.5 on state 0 and an upper bound
    -0.8 on state 1 (both violated late), against numpy; gradient against its derivative."""
    ts = np.linspace(0.0, 3.0, 31)
    scale = np.array([0.5, 2.0])
    bounds = ude.StateBounds(ts, U0, lower=[0.5, None], upper=[None, -0.8], scale=scale,
                             weight=3.0, rtol=1e-10, atol=1e-12)

    def expected(k):
        u = exact(k, ts)
        below = np.maximum(0.5 - u[:, 0], 0.0) / scale[0]
        above = np.maximum(u[:, 1] + 0.8, 0.0) / scale[1]
        return 3.0 * np.mean(np.stack([below, above], axis=1) ** 2)

    for k in (0.1, 0.7, 1.5):
        np.testing.assert_allclose(float(bounds(Decay(jnp.asarray(k)))), expected(k),
                                   rtol=1e-7)
    assert float(bounds(Decay(jnp.asarray(0.05)))) == 0.0  # inside the bounds throughout
    # scale=None is the documented default, 1 (it was the SD of u0 over trajectories)
    plain = ude.StateBounds(ts, np.stack([U0, 3 * U0]), lower=0.5, scale=None)
    np.testing.assert_array_equal(plain.scale, [1.0, 1.0])
    k, h = 0.9, 1e-6
    grad = jax.grad(lambda m: bounds(m))(Decay(jnp.asarray(k))).k
    np.testing.assert_allclose(float(grad), (expected(k + h) - expected(k - h)) / (2 * h),
                               rtol=1e-5)


def test_state_bounds_penalty_in_fit_and_its_failures():
    """fit(..., penalty=) adds the penalty (the history starts at loss + penalty); a
    failed solve gives FAILED_LOSS; multiple shooting hands the penalty the model only."""
    ys = exact(K_TRUE)
    loss = ude.SingleShooting(TS, ys, u0=U0, rtol=1e-10, atol=1e-12)
    bounds = ude.StateBounds(np.linspace(0, 8, 9), U0[:1], lower=1.0, weight=5.0)
    start = Decay(jnp.asarray(0.3))
    res = ude.fit(loss, start, steps=1, learning_rate=1e-9, penalty=bounds, progress=False)
    assert float(bounds(start)) > 0.1 * float(loss(start))
    np.testing.assert_allclose(res.history[0], float(loss(start)) + float(bounds(start)),
                               rtol=1e-6)
    # the curricula pass it on to every stage
    for curriculum in (ude.fit_growing_windows, ude.fit_pem):
        kw = {"windows": (1.0,)} if curriculum is ude.fit_growing_windows else {"gains": (0.0,)}
        res = curriculum(start, TS, ys, steps=1, final_lbfgs_steps=0, penalty=bounds,
                         progress=False, u0=U0, rtol=1e-10, atol=1e-12, **kw)
        # (one step: the history holds the loss after it, at the parameters returned)
        np.testing.assert_allclose(res.history[0], float(loss(res.params))
                                   + float(bounds(res.params)), rtol=1e-6)
    # the penalty pulls the rate below the data's (u stays above 1 longer)
    fitted = ude.fit(loss, start, steps=0, lbfgs_steps=50, penalty=bounds, progress=False)
    plain = ude.fit(loss, start, steps=0, lbfgs_steps=50, progress=False)
    assert float(plain.params.k) == pytest.approx(K_TRUE, rel=1e-4)
    assert float(fitted.params.k) < 0.95 * K_TRUE

    ms = ude.MultipleShooting(TS, ys, segment_length=4, rtol=1e-10, atol=1e-12)
    p = ms.init(Decay(jnp.asarray(K_TRUE)))
    res = ude.fit(ms, p, steps=1, learning_rate=1e-9, penalty=bounds, progress=False)
    np.testing.assert_allclose(res.history[0], float(ms(p)) + float(bounds(p["model"])),
                               rtol=1e-6)

    value = ude.StateBounds(TS, U0, lower=-5.0)(Riccati(jnp.asarray(1.0)))
    assert float(value) == ude.FAILED_LOSS


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lower": None}, "no bound"),
    ({"lower": 1.0, "upper": 0.5}, "below upper"),
    ({"lower": [0.0, 0.0, 0.0]}, "one value per state"),
    ({"lower": np.nan}, "NaN"),
    ({"weight": 0.0}, "weight"),
    ({"scale": -1.0}, "scale"),
])
def test_state_bounds_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ude.StateBounds(TS, U0, **kwargs)
    with pytest.raises(ValueError, match="u0"):
        ude.StateBounds(TS, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="strictly increasing"):
        ude.StateBounds(TS[::-1], U0)
