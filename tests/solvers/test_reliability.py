"""Issue 20 (items 4, 7, 12): precision is never dropped silently, non-finite states fail
fast with a NaN gradient, and the API edges an ML user hits give clear errors or work."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayes_ude
from bayes_ude import solvers
from bayes_ude.solvers import Status

TS = jnp.linspace(0.0, 1.0, 5)


def decay(t, u, k):
    return -k * u


def quadratic_growth(t, u, r):
    """u' = r u^2, u(0) = 1: blows up at t = 1/r (r = 2: inside TS)."""
    return r * u**2


# --------------------------------------------------------------------------------------
# Item 4: precision
# --------------------------------------------------------------------------------------


def test_import_turns_x64_on_and_float32_inputs_are_promoted():
    assert bayes_ude._precision.status().startswith("on")
    u0, k, ts = (jnp.ones(2, jnp.float32), jnp.float32(0.5), TS.astype(jnp.float32))
    sol = solvers.solve(decay, u0, ts, k, rtol=1e-10, atol=1e-12)
    assert sol.ys.dtype == jnp.float64
    # Accurate far beyond float32's ~1e-7: the solve really ran in float64.
    np.testing.assert_allclose(sol.ys[:, 0], np.exp(-0.5 * np.asarray(TS)), rtol=1e-9)


def test_rtol_below_float64_resolution_raises():
    with pytest.raises(ValueError, match=r"rtol=1e-17 is below what float64 can resolve"):
        solvers.solve(decay, jnp.ones(2), TS, 0.5, rtol=1e-17)


_X64_OFF = textwrap.dedent("""
    import warnings
    import jax, jax.numpy as jnp
    import bayes_ude
    import bayes_ude.nlme  # used to switch x64 on for the whole process
    from bayes_ude import solvers
    print(jax.config.jax_enable_x64, bayes_ude._precision.status())
    f = lambda t, u, k: -k * u
    ts = jnp.linspace(0.0, 1.0, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sols = [solvers.solve(f, jnp.ones(2), ts, 0.5, rtol=1e-4, atol=1e-6)
                for _ in range(2)]
    print(sols[0].ys.dtype, bool(sols[0].success),
          sum("solving in float32 because jax_enable_x64 is off" in str(w.message)
              for w in caught))
    for rtol in (1e-10, 1e-13):
        try:
            solvers.solve(f, jnp.ones(2), ts, 0.5, rtol=rtol)
            print("no error")
        except ValueError as e:
            print(str(e).replace(chr(10), " "))
""")


def test_opt_out_solves_in_float32_with_one_warning_and_refuses_tight_rtol():
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["BAYES_UDE_X64"] = "0"
    out = subprocess.run([sys.executable, "-c", _X64_OFF], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    x64, solved, *errors = out.stdout.strip().splitlines()
    assert x64.startswith("False off (BAYES_UDE_X64=0)")  # bayes_ude.nlme left it off
    assert solved == "float32 True 1"  # float32, success, and said so exactly once
    for rtol, message in zip(("1e-10", "1e-13"), errors, strict=True):
        assert f"rtol={rtol} is below what float32 can resolve" in message
        assert "jax_enable_x64 is off" in message and "unset BAYES_UDE_X64=0" in message


# --------------------------------------------------------------------------------------
# Item 7: non-finite states
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensitivity", ["forward", "reverse"])
def test_nan_initial_state_fails_at_once(sensitivity):
    sol = solvers.solve(decay, jnp.array([jnp.nan, 1.0]), TS, 0.5, sensitivity=sensitivity)
    assert int(sol.status) == Status.NONFINITE
    assert int(sol.num_steps) <= 2  # was max_steps (10_000)
    assert np.isnan(sol.ys).all()
    assert "not finite" in solvers.status_message(sol.status)


@pytest.mark.parametrize("dt0", [None, 0.1])
def test_nan_vector_field_fails_fast(dt0):
    # NaN from the start (at t = 0, where the round-off test of the step cannot fire):
    # the controller checks the vector field at the start and stops on the first step;
    # was max_steps (10_000), then 20 rejected steps, each 5x shorter.
    sol = solvers.solve(decay, jnp.ones(2), TS, jnp.array(jnp.nan), dt0=dt0)
    assert int(sol.status) == Status.NONFINITE
    assert int(sol.num_steps) <= 2
    # NaN from t = 0.5 on: a segment that starts there (after a dose) is stopped at its
    # start; within a segment the round-off test stops it (where an ulp of t is not 0)
    def later(t, u, k):
        return -k * u * jnp.where(t > 0.5, jnp.nan, 1.0)

    dose = [solvers.Bolus(jnp.array([0.5]), jnp.array([1.0]), 0)]
    sol = solvers.solve(later, jnp.ones(2), TS, 0.5, dt0=dt0, doses=dose)
    assert int(sol.status) == Status.NONFINITE and int(sol.num_steps) <= 10
    sol = solvers.solve(later, jnp.ones(2), TS, 0.5, dt0=dt0)
    assert int(sol.status) == Status.STEP_SIZE_COLLAPSE and int(sol.num_steps) < 200


@pytest.mark.parametrize("sensitivity", ["forward", "reverse", "adjoint"])
def test_gradient_of_a_loss_on_failed_solve_is_nan_but_sanitized_is_finite(sensitivity):
    def losses(r, tstops=None):
        sol = solvers.solve(quadratic_growth, jnp.ones(1), TS, r, sensitivity=sensitivity,
                            tstops=tstops)
        raw = jnp.sum((sol.ys - 1.0) ** 2)
        safe = jnp.sum((solvers.sanitize(sol) - 1.0) ** 2) + solvers.log_density_penalty(sol)
        return raw, safe

    # r = 2 blows up at t = 0.5; r = nan makes the vector field NaN from the start.
    # (Two gradients, not one jacrev: its zero cotangent on the raw loss times the NaN
    # derivative of that loss would be NaN in the sanitized row too.)
    for r in (2.0, jnp.nan):
        g_raw = jax.grad(lambda r: losses(r)[0])(r)
        assert np.isnan(g_raw), (r, g_raw)  # was 0.0 in reverse mode: a silent optimum
    g_safe = jax.grad(lambda r: losses(r)[1])(2.0)
    assert np.isfinite(g_safe)
    if sensitivity == "adjoint":
        return  # (no events)
    # with events, the segments after the failed one started from its non-finite state:
    # NaN in reverse mode
    tstops = jnp.array([0.25, 0.75])
    assert np.isfinite(jax.grad(lambda r: losses(r, tstops)[1])(2.0))
    assert np.isnan(jax.grad(lambda r: losses(r, tstops)[0])(2.0))


def test_failed_solve_poisons_every_parameter_array_in_reverse_mode():
    """Several parameter arrays, as in a network: a loss on the NaN values of a failed
    solve gives NaN for each array that reaches the vector field (none silently 0.0); a
    sanitized loss gives finite gradients; a successful solve's gradient is exact."""
    def field(t, u, p):
        return p["w"] @ (u**2) * p["scale"] + p["b"]

    def losses(p):
        sol = solvers.solve(field, jnp.ones(2), TS, p, sensitivity="reverse", rtol=1e-10,
                            atol=1e-12)
        raw = jnp.sum((sol.ys - 1.0) ** 2)
        safe = jnp.sum((solvers.sanitize(sol) - 1.0) ** 2) + solvers.log_density_penalty(sol)
        return raw, safe

    blow_up = {"w": jnp.eye(2) * 2.0, "scale": jnp.asarray(1.0), "b": jnp.zeros(2)}
    g_raw = jax.grad(lambda p: losses(p)[0])(blow_up)
    assert all(np.isnan(g).all() for g in jax.tree.leaves(g_raw)), g_raw
    g_safe = jax.grad(lambda p: losses(p)[1])(blow_up)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(g_safe)), g_safe
    # u' = -0.5 u^2: finite on TS; d loss / d scale against a central difference
    tame = {"w": -jnp.eye(2) * 0.5, "scale": jnp.asarray(1.0), "b": jnp.zeros(2)}
    g = jax.grad(lambda p: losses(p)[0])(tame)

    def at_scale(x):
        return losses({**tame, "scale": jnp.asarray(x)})[0]

    eps = 1e-5
    finite_diff = (at_scale(1.0 + eps) - at_scale(1.0 - eps)) / (2 * eps)
    np.testing.assert_allclose(float(g["scale"]), float(finite_diff), rtol=1e-5)


# --------------------------------------------------------------------------------------
# Item 12: API edges
# --------------------------------------------------------------------------------------


class Oscillator(NamedTuple):
    x: jax.Array
    v: jax.Array


def oscillator(t, u, w):
    return {"x": u["v"], "v": -(w**2) * u["x"]}


def test_pytree_state():
    u0 = {"x": jnp.array([1.0, 0.5]), "v": jnp.zeros(2)}
    sol = solvers.solve(oscillator, u0, TS, 2.0, rtol=1e-10, atol=1e-12)
    assert set(sol.ys) == {"x", "v"} and sol.ys["x"].shape == (5, 2)
    np.testing.assert_allclose(sol.ys["x"][:, 0], np.cos(2.0 * np.asarray(TS)), rtol=1e-8)
    np.testing.assert_allclose(sol.ys["v"][:, 1], -np.sin(2.0 * np.asarray(TS)), atol=1e-8)
    # Differentiable like an array state: d x(1) / dw = -t sin(w t) at t = 1.
    grad = jax.grad(lambda w: solvers.solve(oscillator, u0, TS, w).ys["x"][-1, 0])(2.0)
    np.testing.assert_allclose(grad, -np.sin(2.0), rtol=1e-5)
    # NamedTuples (and tuples) are pytrees too, as in JAX and diffrax.
    nt = solvers.solve(lambda t, u, w: Oscillator(u.v, -(w**2) * u.x),
                       Oscillator(jnp.ones(()), jnp.zeros(())), TS, 2.0)
    assert isinstance(nt.ys, Oscillator) and nt.ys.x.shape == (5,)
    np.testing.assert_allclose(nt.ys.x, np.cos(2.0 * np.asarray(TS)), rtol=1e-4)
    assert set(solvers.sanitize(sol)) == {"x", "v"}


def test_pytree_state_errors():
    u0 = {"x": jnp.ones(2), "v": jnp.zeros(2)}
    with pytest.raises(ValueError, match="vector_field must return a pytree of the structure"):
        solvers.solve(lambda t, u, w: u["x"], u0, TS, 2.0)
    with pytest.raises(TypeError, match="need u0 to be a 1-D array"):
        solvers.solve(oscillator, u0, TS, 2.0, doses=[solvers.Bolus(0.5, 1.0, 0)])
    with pytest.raises(TypeError, match="u0 must be an array, or a pytree"):
        solvers.solve(decay, {"x": "a"}, TS, 2.0)


def test_diffrax_saveat_is_refused_clearly():
    with pytest.raises(TypeError, match="got a diffrax.SaveAt: pass the times themselves"):
        solvers.solve(decay, jnp.ones(2), dfx.SaveAt(ts=TS), 0.5)


def test_failure_messages_recommend_rodas5p():
    message = solvers.status_message(Status.MAX_STEPS)
    assert "Rodas5P" in message and "Kvaerno5" not in message


def test_getting_started_guards_the_log():
    text = (Path(__file__).resolve().parents[2] / "docs" / "getting-started.md").read_text()
    assert "jnp.log(ys)" not in text and "jnp.log(jnp.clip(ys" in text
