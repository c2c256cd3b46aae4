"""solvers.SolveOptions: solve's defaults, checked fields, and the same solve as solve."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers

FIELDS = ("solver", "rtol", "atol", "max_steps", "sensitivity", "dt0")


def test_defaults_are_solves_defaults():
    defaults = inspect.signature(solvers.solve).parameters
    options = solvers.SolveOptions()
    for name in FIELDS:
        assert getattr(options, name) == defaults[name].default, name


def test_solve_is_solve_with_the_options():
    def decay(t, u, k):
        return -k * u

    ts = jnp.linspace(0.0, 2.0, 5)
    options = solvers.SolveOptions(solver=solvers.Rodas5P(), rtol=1e-9, atol=1e-11,
                                   sensitivity="forward")
    a = options.solve(decay, jnp.ones(2), ts, 0.7, t0=-0.5)
    b = solvers.solve(decay, jnp.ones(2), ts, 0.7, solver=solvers.Rodas5P(), rtol=1e-9,
                      atol=1e-11, sensitivity="forward", t0=-0.5)
    np.testing.assert_array_equal(np.asarray(a.ys), np.asarray(b.ys))
    np.testing.assert_allclose(np.asarray(a.ys[:, 0]), np.exp(-0.7 * (ts + 0.5)), rtol=1e-7)


def test_replace_and_hash():
    options = solvers.SolveOptions(rtol=1e-7)
    tighter = options.replace(atol=1e-12)
    assert (tighter.rtol, tighter.atol) == (1e-7, 1e-12)
    assert options.atol == 1e-8  # unchanged
    # static configuration: equal options hash alike (one compilation for both)
    assert hash(solvers.SolveOptions(rtol=1e-7)) == hash(options)


@pytest.mark.parametrize(("changes", "field"), [
    (dict(rtol=0.0), "rtol"), (dict(rtol=-1e-6), "rtol"), (dict(atol="1e-8"), "atol"),
    (dict(atol=float("nan")), "atol"), (dict(max_steps=0), "max_steps"),
    (dict(max_steps=100.0), "max_steps"), (dict(sensitivity="backward"), "sensitivity"),
    (dict(dt0=0.0), "dt0")])
def test_bad_fields_are_refused_by_name(changes, field):
    with pytest.raises(ValueError, match=f"SolveOptions.{field}"):
        solvers.SolveOptions(**changes)
    with pytest.raises(ValueError, match=f"SolveOptions.{field}"):
        solvers.SolveOptions().replace(**changes)


def test_bad_solver_is_refused():
    with pytest.raises(TypeError, match="SolveOptions.solver"):
        solvers.SolveOptions(solver="tsit5")
