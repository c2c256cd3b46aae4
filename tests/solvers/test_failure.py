"""A failed solve is data (status + NaN) under jit, vmap and grad; never an exception."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers
from bayes_ude.solvers import Status


def quadratic_growth(t, u, r):
    """u' = r u^2, u(0) = 1: u = 1 / (1 - r t), blows up at t = 1/r."""
    return r * u**2


TS = jnp.linspace(0.0, 1.5, 7)


def test_max_steps_under_jit():
    run = jax.jit(lambda r: solvers.solve(quadratic_growth, jnp.ones(1), TS, r, max_steps=3))
    sol = run(0.1)
    assert int(sol.status) == Status.MAX_STEPS
    assert not bool(sol.success)
    assert np.isnan(sol.ys).all()
    assert "maximum number of steps" in solvers.status_message(sol.status)


def test_blow_up_is_detected_quickly():
    sol = solvers.solve(quadratic_growth, jnp.ones(1), TS, 2.0)  # blows up at t = 0.5
    assert int(sol.status) == Status.STEP_SIZE_COLLAPSE
    assert np.isnan(sol.ys).all()
    # Step-size collapse is caught long before max_steps (10_000) would be.
    assert int(sol.num_steps) < 1_000


def test_nonfinite_vector_field():
    sol = solvers.solve(lambda t, u, a: jnp.where(t > 0.5, jnp.nan, -u), jnp.ones(1), TS)
    assert not bool(sol.success)
    assert np.isnan(sol.ys).all()


def test_vmap_mixed_success():
    r = jnp.array([0.1, 2.0, 0.5])
    sol = jax.vmap(lambda r: solvers.solve(quadratic_growth, jnp.ones(1), TS, r,
                                           rtol=1e-10, atol=1e-12))(r)
    np.testing.assert_array_equal(sol.success, [True, False, True])
    for i in (0, 2):
        np.testing.assert_allclose(sol.ys[i, :, 0], 1 / (1 - float(r[i]) * np.asarray(TS)),
                                   rtol=1e-8)
    assert np.isnan(sol.ys[1]).all()


@pytest.mark.parametrize("sensitivity", ["forward", "reverse"])
def test_log_density_of_failed_solve_is_minus_inf_with_finite_gradient(sensitivity):
    data = 1 / (1 - 0.3 * np.asarray(TS))

    def log_density(r):
        sol = solvers.solve(quadratic_growth, jnp.ones(1), TS, r, sensitivity=sensitivity)
        ys = solvers.sanitize(sol)
        return -0.5 * jnp.sum((ys[:, 0] - data) ** 2) + solvers.log_density_penalty(sol)

    value, grad = jax.value_and_grad(log_density)(2.0)
    assert value == -np.inf
    assert np.isfinite(grad)
    value, grad = jax.value_and_grad(log_density)(0.3)
    assert np.isfinite(value) and np.isfinite(grad)


def test_ensemble_helper():
    u0 = jnp.array([[1.0], [2.0], [3.0]])
    sol = solvers.solve_ensemble(lambda t, u, k: -k * u, u0, TS, 0.5, batch_args=False,
                                 rtol=1e-10, atol=1e-12)
    assert sol.ys.shape == (3, 7, 1)
    np.testing.assert_allclose(sol.ys[:, -1, 0], np.array([1.0, 2.0, 3.0]) * np.exp(-0.75),
                               rtol=1e-8)
    both = solvers.solve_ensemble(lambda t, u, k: -k * u, u0, TS, jnp.array([0.1, 0.2, 0.3]))
    assert both.ys.shape == (3, 7, 1)
    with pytest.raises(ValueError, match="batch_u0 or batch_args"):
        solvers.solve_ensemble(lambda t, u, k: -k * u, u0, TS, 0.5, batch_u0=False,
                               batch_args=False)
