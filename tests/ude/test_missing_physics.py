"""The missing-physics Lotka-Volterra UDE, end to end (Rackauckas et al. 2020, "Universal
differential equations for scientific machine learning", and the SciML tutorial).

u1' = alpha u1 - beta u1 u2, u2' = gamma u1 u2 - delta u2 with (1.3, 0.9, 0.8, 1.8);
t in [0, 5] every 0.25, 5 % Gaussian noise (of each state's mean). alpha and delta are
known; the interaction terms are replaced by a 2-5-5-5-2 rbf network. The UDE is trained
(collocation initialisation, then single shooting Adam + L-BFGS with a small L2 penalty);
SINDy on the network's output recovers the two interaction terms, and the physics with
the discovered terms extrapolates to t = 10. The heavy tests (further trainings) compare
a pure neural ODE with the same network and training, train the UDE again with the
states' known lower bound (populations are not negative) stated over [0, 10]
(ude.StateBounds), and train the neural ODE with the same bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from bayes_ude import discovery, nn, solvers, ude

P = (1.3, 0.9, 0.8, 1.8)
U0 = np.array([0.44249296, 4.6280594])


def lotka_volterra(t, u):
    a, b, c, d = P
    return [a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]]


def physics(t, u, theta):
    return jnp.stack([P[0] * u[0], -P[3] * u[1]])


def collocation_fit(physics_part, ts, ys):
    """The initialisation: the model fitted to smoothed derivatives (no ODE solve)."""
    net = nn.MLP(2, 2, (5, 5, 5), "rbf", key=jax.random.key(0))
    model = ude.UDE(physics_part, net)
    return ude.fit(ude.Collocation(ts, ys), model, steps=2000, learning_rate=1e-2,
                   lbfgs_steps=200, progress=False).params


def train(physics_part, ts, ys, penalty=None, init=None):
    """Collocation (skipped when ``init`` is given), then single shooting; returns the
    fitted model, its data loss and the collocation fit."""
    if init is None:
        init = collocation_fit(physics_part, ts, ys)
    loss = ude.SingleShooting(ts, ys, rtol=1e-8, atol=1e-10)
    # L-BFGS until it converges (it stops itself): a cap of 1000 stopped short on one CPU
    # (AMD EPYC: the UDE's loss 1.38x the noise floor and a spurious u2 term in SINDy's
    # du1/dt; with the cap at 3000, 0.75x and exactly the two interaction terms)
    final = ude.fit(loss, init, steps=500, learning_rate=1e-3, lbfgs_steps=3000,
                    l2=1e-5, penalty=penalty, progress=False)
    return final.params, float(loss(final.params)), init


TS_LONG = np.arange(0.0, 10.0001, 0.25)


def train_bounded(physics_part, ts, ys, init):
    """The same single-shooting training with the states' lower bound (0) stated on
    [0, 10] every 0.25 (ude.StateBounds; no data after t = 5)."""
    bounds = ude.StateBounds(TS_LONG, ys[0], lower=0.0, scale=ys.std(axis=0), weight=10.0)
    model, loss, _ = train(physics_part, ts, ys, penalty=bounds, init=init)
    return model, loss


def simulate(vector_field, params, ts, u0):
    sol = solvers.solve(vector_field, jnp.asarray(u0), jnp.asarray(ts), params, rtol=1e-8,
                        atol=1e-10)
    return np.asarray(sol.ys)


def noisy_data():
    """``(ts, truth, ys)``: t in [0, 5] every 0.25, 5 % noise (of each state's mean)."""
    ts = np.arange(0.0, 5.0001, 0.25)
    truth = solve_ivp(lotka_volterra, (0, 5), U0, t_eval=ts, rtol=1e-11, atol=1e-12).y.T
    rng = np.random.default_rng(0)
    ys = truth + 0.05 * truth.mean(axis=0) * rng.normal(size=truth.shape)
    return ts, truth, ys


@pytest.fixture(scope="module")
def fitted():
    """The data and the UDE trained on them (collocation, then single shooting)."""
    ts, truth, ys = noisy_data()
    model, loss, init = train(physics, ts, ys)
    noise_floor = np.mean(((ys - truth) / ys.std(axis=0)) ** 2)
    return {"ts": ts, "ys": ys, "model": model, "loss": loss, "init": init,
            "noise_floor": noise_floor}


def _rmse_to_t10(vector_field, params, u0) -> float:
    truth_long = solve_ivp(lotka_volterra, (0, 10), U0, t_eval=TS_LONG, rtol=1e-11,
                           atol=1e-12).y.T
    pred = simulate(vector_field, params, TS_LONG, u0)
    return float(np.sqrt(np.mean((pred - truth_long) ** 2)))


@pytest.mark.slow
def test_ude_fits_and_sindy_recovers_the_missing_terms(fitted):
    ys, model = fitted["ys"], fitted["model"]
    # Fits the data to the noise floor.
    print(f"noise floor {fitted['noise_floor']:.5f}; loss UDE {fitted['loss']:.5f}")
    assert fitted["loss"] <= 1.2 * fitted["noise_floor"], fitted

    # SINDy on the learned term along the UDE's own trajectory.
    dense_ts = np.linspace(0.0, 5.0, 101)
    states = simulate(lambda t, u, m: m(t, u), model, dense_ts, ys[0])
    learned = np.asarray(jax.vmap(lambda u: model.network_term(0.0, u))(jnp.asarray(states)))
    fit = discovery.sindy(states, learned, discovery.PolynomialLibrary(2), threshold=0.3)
    table = fit.table()
    print(fit.equations())
    active = {(target, term) for target in table.index for term in table.columns
              if table.loc[target, term] != 0}
    assert {term for _, term in active} == {"u1*u2"}, fit.equations()
    assert len(active) == 2
    beta_hat = -table.loc[table.index[0], "u1*u2"]
    gamma_hat = table.loc[table.index[1], "u1*u2"]
    assert abs(beta_hat - P[1]) <= 0.1 * P[1], fit.equations()
    assert abs(gamma_hat - P[2]) <= 0.1 * P[2], fit.equations()

    # The recovered equation, put back into the physics, extrapolates to t = 10 (twice
    # the training span).
    def recovered(t, u, coef):
        return physics(t, u, None) + jnp.stack([-coef[0], coef[1]]) * u[0] * u[1]

    rms_recovered = _rmse_to_t10(recovered, jnp.array([beta_hat, gamma_hat]), ys[0])
    print(f"extrapolation RMSE of the recovered model {rms_recovered:.3f}")
    # (not compared with the trained models' RMSEs, which depend on the rounding in
    # training: UDE 1.57-37.9 on earlier CPUs, 1.02 and then 0.153 on this one (AMD EPYC,
    # 2026-12-06, before and after the loss stopped vmapping its one trajectory), the
    # bounded UDE 1.57, 0.166 and 2.11; the recovered model's was 0.174 and 0.229)
    assert rms_recovered < 0.75  # states reach ~6; u0 is the noisy first data point


@pytest.mark.slow
@pytest.mark.heavy
def test_ude_fits_better_and_extrapolates_longer_than_a_neural_ode(fitted):
    """The neural ODE with the same network and training (a second training, so heavy:
    about a third of the 160 s the three trainings of this file took in the default
    suite)."""
    ts, ys = fitted["ts"], fitted["ys"]
    neural_ode, node_loss, _ = train(None, ts, ys)
    # The valid prediction time: the first time after the data (t > 5) at which some
    # state is off the truth by more than 20 % of that state's range (0.05 grid).
    ts_dense = np.arange(0.0, 10.0001, 0.05)
    truth_dense = solve_ivp(lotka_volterra, (0, 10), U0, t_eval=ts_dense, rtol=1e-11,
                            atol=1e-12).y.T
    rms, valid = {}, {}
    for name, m in (("ude", fitted["model"]), ("node", neural_ode)):
        rms[name] = _rmse_to_t10(lambda t, u, m: m(t, u), m, ys[0])
        dense = simulate(lambda t, u, m: m(t, u), m, ts_dense, ys[0])
        off = (np.abs(dense - truth_dense) / truth_dense.max(axis=0)).max(axis=1) > 0.2
        off &= ts_dense > 5.0
        valid[name] = float(ts_dense[np.argmax(off)]) if off.any() else 10.0
    print(f"loss UDE {fitted['loss']:.5f}, NODE {node_loss:.5f}; extrapolation RMSE to "
          f"t=10: {rms}; valid prediction time {valid}")
    # (the margin depends on the CPU's rounding in training: 5.0x and more on the CPUs
    # before; 4.9x once the loss solved its one trajectory without vmap, which changes
    # the last bits of every step)
    assert node_loss >= 3 * fitted["loss"], (node_loss, fitted["loss"])
    # The UDE follows the truth beyond the data longer than the neural ODE (keys 0-3:
    # until t = 6.55, 6.25, 10, 5.5 against 5.2, 5.05, 5.15, 5.15).
    assert valid["ude"] >= valid["node"] + 0.25, valid


@pytest.mark.slow
@pytest.mark.heavy
def test_a_stated_lower_bound_keeps_the_ude_from_running_away(fitted):
    """Plain training does not make the RMSE to t = 10 reliable. Where the network
    overshoots beyond the data, u1 crosses zero and the known growth term alpha*u1 runs
    away; whether it does depends on the network's initialisation (keys 0-3: RMSE to
    t = 10 of 37.9, 1.6, 0.12, 641 against the neural ODE's 19.6, 10.3, 8.2, 7.8).
    Populations are not negative: the same training with that stated over the horizon
    (StateBounds; no data after t = 5) fits and does not run away. Keys 0-3: RMSE 1.57,
    1.81, 0.16, 1.49 at losses 1.2-2.0x the noise floor. See docs/ude.md. (StateBounds
    itself is in the default suite: tests/ude/test_losses.py.)"""
    ts, ys = fitted["ts"], fitted["ys"]
    bounded, bounded_loss = train_bounded(physics, ts, ys, fitted["init"])
    rms = _rmse_to_t10(lambda t, u, m: m(t, u), bounded, ys[0])
    print(f"with non-negative states: loss {bounded_loss:.5f}, extrapolation RMSE {rms:.3f}")
    assert bounded_loss <= 1.5 * fitted["noise_floor"]
    assert rms < 3.0


@pytest.mark.heavy
def test_a_neural_ode_with_the_same_bound_misses_the_data():
    """The fair comparison: the neural ODE trained with the same lower bound. It no longer
    fits the data (key 0: loss 0.179 against the UDE's 0.00127 on the CPUs before; 0.0763
    against 0.00081 on this one, AMD EPYC, 2026-12-07). Its extrapolation RMSE is not
    asserted against the UDE's: like the other RMSEs of this file it follows the rounding
    in training (2.69 against 1.57 before; 1.34 against 1.80 here, the same numbers with
    the code of 2026-12-06 and of 2026-12-07). Keys 1-3 in docs/ude.md."""
    ts, truth, ys = noisy_data()
    truth_long = solve_ivp(lotka_volterra, (0, 10), U0, t_eval=TS_LONG, rtol=1e-11,
                           atol=1e-12).y.T
    rms, losses = {}, {}
    for name, physics_part in (("ude", physics), ("node", None)):
        init = collocation_fit(physics_part, ts, ys)
        model, losses[name] = train_bounded(physics_part, ts, ys, init)
        pred = simulate(lambda t, u, m: m(t, u), model, TS_LONG, ys[0])
        rms[name] = float(np.sqrt(np.mean((pred - truth_long) ** 2)))
    print(f"with the bound: loss {losses}, extrapolation RMSE {rms}")
    assert losses["node"] > 20 * losses["ude"], losses
    assert rms["ude"] < 3.0  # the bounded UDE does not run away (as in the test above)
