"""Automatic stiffness switching (solvers.Auto): Tsit5 where the problem is non-stiff,
Rodas5P where it is stiff, and back."""

import diffrax as dfx
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers


def lotka_volterra(t, u, p):
    a, b, c, d = p
    return jnp.stack([a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]])


def test_nonstiff_problem_costs_what_tsit5_costs():
    """On a non-stiff Lotka-Volterra, Auto never switches: the same steps as Tsit5 (the
    timing ratio is in benchmarks/stiff.py)."""
    ts = jnp.linspace(0.0, 20.0, 41)
    p, u0 = jnp.array([1.5, 1.0, 3.0, 1.0]), jnp.array([1.0, 1.0])
    auto = solvers.solve(lotka_volterra, u0, ts, p, solver=solvers.Auto())
    tsit5 = solvers.solve(lotka_volterra, u0, ts, p, solver=solvers.Tsit5())
    assert bool(auto.success)
    assert int(auto.num_steps) == int(tsit5.num_steps)
    np.testing.assert_allclose(auto.ys, tsit5.ys, rtol=0, atol=1e-12)


LAM_STIFF = 1e4


def switching(t, u, args):
    """Prothero-Robinson with stiffness 1e4 until t ~ 2 that fades to 1 afterwards; the
    exact solution is u = sin(t) for u(0) = 0, whatever lambda(t) is."""
    lam = 1.0 + LAM_STIFF / (1.0 + jnp.exp(20.0 * (t - 2.0)))
    return -lam * (u - jnp.sin(t)) + jnp.cos(t)


def _final_mode(t1):
    sol = dfx.diffeqsolve(dfx.ODETerm(switching), solvers.Auto(), 0.0, t1, None,
                          jnp.array([0.0]), saveat=dfx.SaveAt(t1=True, solver_state=True),
                          stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-9),
                          max_steps=100_000)
    stiff_mode = bool(sol.solver_state[0])
    return stiff_mode, float(sol.ys[-1, 0]), int(sol.stats["num_steps"])


def test_switches_to_stiff_and_back():
    stiff_at_1_5, y, _ = _final_mode(1.5)
    assert stiff_at_1_5
    assert abs(y - np.sin(1.5)) < 1e-6
    stiff_at_8, y, auto_steps = _final_mode(8.0)
    assert not stiff_at_8  # stiffness ended at t ~ 2.3; Auto went back to Tsit5
    assert abs(y - np.sin(8.0)) < 1e-6
    # Tsit5 alone is held at its stability limit (h ~ 3.5 / 1e4) through the stiff part.
    tsit5 = dfx.diffeqsolve(dfx.ODETerm(switching), dfx.Tsit5(), 0.0, 8.0, None,
                            jnp.array([0.0]),
                            stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-9),
                            max_steps=100_000)
    assert auto_steps < 0.1 * int(tsit5.stats["num_steps"])


def test_stiff_solver_must_be_rosenbrock():
    with pytest.raises(ValueError, match="Rosenbrock"):
        solvers.Auto(stiff=solvers.Tsit5())
    with pytest.raises(ValueError, match="mass matrix"):
        solvers.Auto(stiff=solvers.Rodas5P(mass_matrix=jnp.eye(2)))
    with pytest.raises(ValueError, match="mass_matrix needs a Rosenbrock"):
        solvers.solve(lotka_volterra, jnp.ones(2), jnp.linspace(0, 1, 3),
                      jnp.ones(4), solver=solvers.Auto(), mass_matrix=jnp.eye(2))


def test_python_scalar_args():
    """args given as a Python float (not an array) work through the stiffness estimate."""
    sol = solvers.solve(lambda t, u, k: -k * u, jnp.ones(1), jnp.linspace(0.0, 1.0, 3), 1.0,
                        solver=solvers.Auto())
    np.testing.assert_allclose(sol.ys[-1, 0], np.exp(-1.0), rtol=1e-5)
