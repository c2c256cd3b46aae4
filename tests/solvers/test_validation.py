"""Bad input raises a clear error naming the argument, before anything is traced."""

import jax
import jax.numpy as jnp
import pytest

from bayes_ude import solvers


def decay(t, u, k):
    return -k * u


TS = jnp.linspace(0.0, 1.0, 5)
U0 = jnp.ones(2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"saveat": jnp.array([0.0, 1.0, 0.5])}, "saveat must be strictly increasing"),
        ({"saveat": jnp.array([0.0, 1.0, 1.0])}, "saveat must be strictly increasing"),
        ({"saveat": jnp.ones((2, 2))}, "saveat must be a non-empty 1-D array"),
        ({"saveat": jnp.array([])}, "saveat must be a non-empty 1-D array"),
        ({"saveat": jnp.array([0.0, jnp.nan])}, "saveat must contain only finite"),
        ({"u0": jnp.ones(3), "vector_field": lambda t, u, k: jnp.ones(2)},
         "vector_field must return an array of the shape of u0"),
        ({"vector_field": lambda t, u, k: u @ jnp.ones(3)},
         "vector_field\\(t, u0, args\\) could not"),
        ({"tstops": jnp.array([0.5, 2.0])}, "tstops must lie inside the time span"),
        ({"tstops": jnp.ones((1, 2))}, "tstops must be a 1-D array"),
        ({"tstops": jnp.array([0.5, jnp.nan])}, "tstops must contain only finite"),
        ({"t0": jnp.nan}, "t0 must be a finite time"),
        ({"t0": 0.5}, "t0=0.5 must be <= saveat\\[0\\]"),
        ({"doses": [solvers.Bolus(-1.0, 1.0, 0)]}, "dose times before the start"),
        ({"doses": [solvers.Bolus(0.5, 1.0, 2)]}, "compartment must index the state"),
        ({"doses": [solvers.Bolus(0.5, jnp.inf, 0)]}, "amounts must be finite"),
        ({"doses": [solvers.Infusion(0.5, 0.0, 1.0, 0)]}, "duration must be > 0"),
        ({"doses": [solvers.Infusion(0.5, 1.0, -1.0, 0)]}, "rate must be >= 0"),
        ({"doses": [(0.5, 1.0)]}, "must be a solvers.Bolus or solvers.Infusion"),
        ({"u0": jnp.ones((2, 2)), "doses": [solvers.Bolus(0.5, 1.0, 0)]},
         "doses require a 1-D state"),
        ({"sensitivity": "backsolve"}, "sensitivity must be one of"),
        ({"sensitivity": "adjoint", "tstops": jnp.array([0.5])},
         "sensitivity='adjoint' does not support"),
        ({"rtol": -1e-3}, "rtol must be a finite positive number"),
        ({"atol": float("inf")}, "atol must be a finite positive number"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"adaptive": False}, "adaptive=False needs a positive step dt0"),
        ({"solver": "Tsit5"}, "solver must be a diffrax/bayes_ude solver"),
        ({"vector_field": 3.0}, "vector_field must be callable"),
    ],
)
def test_bad_input(kwargs, match):
    call = {"vector_field": decay, "u0": U0, "saveat": TS, "args": 0.5} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        solvers.solve(call.pop("vector_field"), call.pop("u0"), call.pop("saveat"),
                      call.pop("args"), **call)


def test_event_times_not_finite_under_jit_fail_the_solve():
    """Traced event times escape the checks above: a NaN among them must fail the solve
    (before: success, with zeros after the first segment)."""
    run = jax.jit(lambda stops: solvers.solve(decay, U0, TS, 1.0, tstops=stops))
    bad = run(jnp.array([0.5, jnp.nan]))
    assert not bad.success and int(bad.status) == solvers.Status.NONFINITE
    assert jnp.all(jnp.isnan(bad.ys))
    good = run(jnp.array([0.5, 0.7]))
    assert good.success
    assert jnp.allclose(good.ys[:, 0], jnp.exp(-TS), rtol=1e-5)


def test_dose_field_lengths_must_match():
    with pytest.raises(ValueError, match="same length"):
        solvers.Bolus([0.0, 1.0], [1.0, 2.0, 3.0], 0)
