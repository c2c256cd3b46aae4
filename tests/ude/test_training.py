"""Training strategies on a long horizon where single shooting stalls.

Lotka-Volterra with unknown rates (alpha, beta, gamma, delta) = (1.5, 1, 3, 1), u0 = (1, 1),
t in [0, 40] (about 9 periods, 161 points), 5 % noise, started from rates far off
(3, 0.5, 6, 0.5). Every strategy starts from the same initialisation; "the noise floor" is
the loss of the noise-free truth.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from bayes_ude import ude

TRUE = np.array([1.5, 1.0, 3.0, 1.0])
START = np.array([3.0, 0.5, 6.0, 0.5])


class LotkaVolterra(eqx.Module):
    log_rates: jax.Array

    def __call__(self, t, u):
        a, b, c, d = jnp.exp(self.log_rates)
        return jnp.stack([a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]])


def model(rates):
    return LotkaVolterra(jnp.log(jnp.asarray(rates, dtype=float)))


@pytest.fixture(scope="module")
def data():
    ts = np.linspace(0.0, 40.0, 161)
    a, b, c, d = TRUE
    sol = solve_ivp(lambda t, u: [a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]],
                    (0.0, 40.0), [1.0, 1.0], t_eval=ts, rtol=1e-11, atol=1e-12)
    rng = np.random.default_rng(0)
    ys = sol.y.T + 0.05 * sol.y.T.std(axis=0) * rng.normal(size=sol.y.T.shape)
    loss = ude.SingleShooting(ts, ys)
    # The noise floor: the loss of the noise-free truth (the true rates started from the
    # noisy first point drift in phase over nine periods and do worse).
    floor = float(np.mean(((ys - sol.y.T) / ys.std(axis=0)) ** 2))
    return ts, ys, loss, floor


@pytest.fixture(scope="module")
def single_shooting(data):
    ts, ys, loss, _ = data
    return ude.fit(loss, model(START), steps=300, learning_rate=3e-2, lbfgs_steps=100,
                   progress=False)


def _at_noise_floor(result_model, data):
    _, _, loss, floor = data
    value = float(loss(result_model))
    assert value <= 1.5 * floor, (value, floor)
    rates = np.exp(np.asarray(result_model.log_rates))
    np.testing.assert_allclose(rates, TRUE, rtol=0.05)
    return value


def test_single_shooting_stalls(single_shooting, data):
    floor = data[3]
    assert single_shooting.final_loss >= 10 * floor


def test_multiple_shooting_reaches_noise_floor(single_shooting, data):
    ts, ys, loss, floor = data
    ms = ude.MultipleShooting(ts, ys, segment_length=8, continuity=10.0)
    stage1 = ude.fit(ms, ms.init(model(START)), steps=300, learning_rate=3e-2,
                     lbfgs_steps=200, progress=False)
    # Polish on the single-shooting loss (the nodes are no longer needed).
    final = ude.fit(loss, stage1.params["model"], steps=0, lbfgs_steps=50, progress=False)
    value = _at_noise_floor(final.params, data)
    assert single_shooting.final_loss >= 10 * value


def test_growing_windows_reach_noise_floor(single_shooting, data):
    ts, ys, _, _ = data
    result = ude.fit_growing_windows(model(START), ts, ys, windows=(0.1, 0.25, 0.5, 1.0),
                                     steps=150, final_lbfgs_steps=100, progress=False)
    value = _at_noise_floor(result.params, data)
    assert single_shooting.final_loss >= 10 * value
    assert [label.split()[0] for label, _ in result.stages] == ["window"] * 4


def test_collocation_gives_a_usable_initialisation_without_solving(single_shooting, data):
    ts, ys, loss, floor = data
    col = ude.fit(ude.Collocation(ts, ys), model(START), steps=300, learning_rate=3e-2,
                  lbfgs_steps=50, progress=False)
    rates = np.exp(np.asarray(col.params.log_rates))
    np.testing.assert_allclose(rates, TRUE, rtol=0.1)
    # From there, single shooting reaches the noise floor where it stalled before.
    polished = ude.fit(loss, col.params, steps=0, lbfgs_steps=50, progress=False)
    _at_noise_floor(polished.params, data)


def test_fit_options_early_stopping_and_minibatches():
    ts = np.linspace(0.0, 3.0, 13)
    u0s = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [1.5, 1.5]])
    a, b, c, d = TRUE
    ys = np.stack([solve_ivp(lambda t, u: [a * u[0] - b * u[0] * u[1],
                                           c * u[0] * u[1] - d * u[1]],
                             (0, 3), u, t_eval=ts, rtol=1e-10).y.T for u in u0s])
    loss = ude.SingleShooting(ts, ys)
    result = ude.fit(loss, model(START * 0.8), steps=400, learning_rate=5e-2, batch_size=2,
                     patience=50, min_delta=1e-3, progress=False)
    assert result.adam_steps <= 400
    assert result.history.shape == (result.adam_steps,)
    assert float(loss(result.params)) < 0.2 * float(loss(model(START * 0.8)))
    with pytest.raises(ValueError, match="batch_size"):
        ude.fit(loss, model(START), steps=10, batch_size=5, progress=False)
    with pytest.raises(ValueError, match="nothing to do"):
        ude.fit(loss, model(START), steps=0, progress=False)
    with pytest.raises(ValueError, match="windows"):
        ude.fit_growing_windows(model(START), ts, ys, windows=(0.5, 0.2))
