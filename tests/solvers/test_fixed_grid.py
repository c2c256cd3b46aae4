"""The fixed-grid integrators against closed-form solutions: the order of convergence of
the Dormand--Prince steps, state jumps at doses, and the exact linear solve."""

import jax
import jax.numpy as jnp
import numpy as np

from bayes_ude import solvers

NO_DOSE = dict(dose_time=jnp.zeros(1), dose_mask=jnp.zeros(1, bool))  # padding only


def _uniform_grid(obs_time, n_uniform):
    """A grid of ``n_uniform`` equal steps through the observations (no doses)."""
    return solvers.subject_grid(jnp.asarray(obs_time), **NO_DOSE, n_uniform=n_uniform,
                                n_post_dose=0, first_step=0.01, post_dose_span=1.0)


def _orders(field, exact, y0, t_end, steps):
    """Errors at ``t_end`` on grids of ``steps`` equal steps, and the observed orders
    ``log2(error(n) / error(2 n))``."""
    obs = np.array([0.0, t_end])
    errors = []
    for n in steps:
        ys = jax.jit(lambda o, n=n: solvers.integrate_on_grid(
            field, jnp.asarray(y0), _uniform_grid(o, n), 2))(obs)
        errors.append(np.max(np.abs(np.asarray(ys) - exact(obs))))
    errors = np.array(errors)
    return errors, np.log2(errors[:-1] / errors[1:])


def test_integrate_on_grid_is_fifth_order():
    """Halving the step divides the error of a 5th-order method by 2^5 = 32.

    The harmonic oscillator (y = (cos t, -sin t)) is in the asymptotic range at 8-32 steps
    over [0, 4] (orders measured 5.22, 5.21); y' = -2 t y (y = exp(-t^2): the vector field
    depends on t, which the stage nodes must get right) approaches 5 from above (5.8,
    5.5). Errors 1e-5 to 1e-9, far above round-off, so the ratios measure truncation
    alone."""
    errors, orders = _orders(lambda t, y, _: jnp.stack([y[1], -y[0]]),
                             lambda t: np.stack([np.cos(t), -np.sin(t)], axis=-1),
                             [1.0, 0.0], 4.0, (8, 16, 32))
    assert np.all((orders > 4.5) & (orders < 5.5)), (errors, orders)
    errors, orders = _orders(lambda t, y, _: -2.0 * t * y, lambda t: np.exp(-t**2), 1.0, 2.0,
                             (8, 16, 32))
    assert np.all(orders > 4.5), (errors, orders)
    assert errors[-1] < 1e-8


def test_integrate_on_grid_doses_jump_states():
    """Oral one-compartment amounts (depot -> central, rates ka, k), boluses into the depot
    at t = 1 and t = 2.5, against the sum of closed-form single-dose responses. An
    observation at a dose time sees the state before the dose."""
    ka, k = 1.3, 0.4
    dose_time, dose_amt = np.array([1.0, 2.5]), np.array([100.0, 50.0])
    obs = np.array([0.5, 1.0, 1.7, 2.5, 3.0, 6.0])

    def central(t):
        tau = t[:, None] - dose_time[None, :]
        one = ka / (ka - k) * (np.exp(-k * tau) - np.exp(-ka * tau))
        return np.sum(np.where(tau > 0, dose_amt * one, 0.0), axis=1)

    def depot(t):
        tau = t[:, None] - dose_time[None, :]
        return np.sum(np.where(tau > 0, dose_amt * np.exp(-ka * tau), 0.0), axis=1)

    def field(t, a, _):
        return jnp.stack([-ka * a[0], ka * a[0] - k * a[1]])

    @jax.jit
    def amounts(obs, dose_time, dose_amt):
        grid = solvers.subject_grid(obs, dose_time, jnp.ones(2, bool), n_uniform=64,
                                    n_post_dose=8, first_step=0.01, post_dose_span=1.0)
        jumps = jnp.zeros((2, 2)).at[:, 0].set(dose_amt)
        return solvers.integrate_on_grid(field, jnp.zeros(2), grid, obs.shape[0], jumps)

    ys = np.asarray(amounts(obs, dose_time, dose_amt))
    # ~0.1-h steps (0.01 h right after a dose): DP5's error is ~1e-9 of the amounts
    np.testing.assert_allclose(ys[:, 0], depot(obs), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(ys[:, 1], central(obs), rtol=1e-7, atol=1e-7)
    assert ys[1, 0] == 0.0  # at t = 1, just before the first dose
    np.testing.assert_allclose(ys[3, 0], depot(np.array([2.5]))[0], rtol=1e-7)  # pre-dose


def test_integrate_on_grid_forcing_and_batching():
    """A state-free input through ``forcing`` (y' = -k y + sin t), and a batch of grids
    under ``vmap`` (one static size)."""
    k = 0.8
    obs = jnp.array([[0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 2.5, 4.0]])

    def exact(t):  # y(0) = 0
        return (k * np.sin(t) - np.cos(t) + np.exp(-k * t)) / (k**2 + 1)

    def one(o):
        grid = _uniform_grid(o, 64)
        return solvers.integrate_on_grid(lambda t, y, u: u - k * y, jnp.zeros(()), grid, 4,
                                         forcing=lambda t, t_start: jnp.sin(t))

    ys = np.asarray(jax.jit(jax.vmap(one))(obs))
    np.testing.assert_allclose(ys, exact(np.asarray(obs)), atol=1e-10)


def test_linear_on_grid_matches_closed_form():
    """y' = sin(w t) - k y, y(0) = y0, against its closed form, for a slow and a stiff
    ``k``: with ``k h = 6`` (steps h = 0.125, k = 50) an explicit step would be unstable
    (``k h < 3.3``); the variation-of-constants solve stays stable and accurate."""
    w, y0 = 1.5, 2.0
    obs = np.array([0.0, 0.3, 1.0, 2.2, 4.0])

    # Tolerances: the 5-point Gauss-Legendre rule integrates e^{-k h (1 - x)} sin(w t) on
    # each step; for k h = 0.09 that is exact to round-off, for k h = 6 measured 2.4e-7
    # (the response is ~1 / k = 0.02 there).
    for k, atol in ((0.7, 1e-10), (50.0, 1e-6)):
        def exact(t, k=k):
            particular = (k * np.sin(w * t) - w * np.cos(w * t)) / (k**2 + w**2)
            return particular + (y0 + w / (k**2 + w**2)) * np.exp(-k * t)

        ys = jax.jit(lambda o, k=k: solvers.linear_on_grid(
            lambda t: jnp.sin(w * t), k, y0, _uniform_grid(o, 32), o))(obs)
        np.testing.assert_allclose(np.asarray(ys), exact(obs), rtol=0, atol=atol)


def test_subject_grid_orders_observations_before_doses():
    """At a shared time an observation comes before the dose; every observation and dose
    time is a grid point; the grid starts at the first dose or record."""
    obs = jnp.array([1.0, 2.0, 5.0])
    grid = solvers.subject_grid(obs, jnp.array([0.5, 2.0]), jnp.array([True, True]),
                                n_uniform=4, n_post_dose=3, first_step=0.1,
                                post_dose_span=1.0)
    times, kind = np.asarray(grid.times), np.asarray(grid.kind)
    assert np.all(np.diff(times) >= 0)
    assert float(grid.t0) == 0.5
    at_two = np.flatnonzero(times == 2.0)
    assert kind[at_two[0]] == 0 and kind[at_two[-1]] == 2
    assert times.shape[0] == 3 + 4 + 2 * 3 + 2


def test_padding_doses_before_the_start_change_nothing():
    """A padded dose (mask False) at t = 0 for a trajectory that starts at t = 10 (the
    population arrays pad dose times with zeros): the scan stepped back from 10 to 0 and
    forward again, and a non-zero start came out 1e5 times too large. Closed form:
    5 e^-(t-10) + 3 e^-(t-11) after the dose at 11."""
    obs = jnp.array([10.0, 11.0, 12.0, 14.0])
    opts = {"n_uniform": 40, "n_post_dose": 6, "first_step": 0.02, "post_dose_span": 2.0}
    grid = solvers.subject_grid(obs, jnp.array([11.0, 0.0]), jnp.array([True, False]), **opts)
    ys = solvers.integrate_on_grid(lambda t, y, u: -y, jnp.array([5.0]), grid, 4,
                                   jumps=jnp.array([[3.0], [0.0]]))
    t = np.asarray(obs)
    ref = 5 * np.exp(-(t - 10)) + np.where(t > 11, 3 * np.exp(-(t - 11)), 0.0)
    np.testing.assert_allclose(np.asarray(ys[:, 0]), ref, rtol=1e-7)
