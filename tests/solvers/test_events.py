"""Known discontinuities and doses, against scipy and closed-form PK solutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers
from tests.helpers import richardson_gradient, scipy_solve

TIGHT = {"rtol": 1e-11, "atol": 1e-13}

# --- the breakpoint problem of the foundation issue ------------------------------------

BREAKS = jnp.array([1.0, 2.0, 3.0])
BP_TS = jnp.linspace(0.0, 4.0, 41)


def piecewise_lv(t, u, p):
    # a(t) = p[i] on (t_{i-1}, t_i], p[3] after t = 3.
    a = jnp.where(t <= 1, p[0], jnp.where(t <= 2, p[1], jnp.where(t <= 3, p[2], p[3])))
    return jnp.stack([a * u[0] - u[0] * u[1], -a * u[1] + u[0] * u[1]])


def breakpoint_loss_scipy(p):
    """Reference: scipy DOP853 at 1e-13, interval by interval, piece k on interval k."""

    def f(t, u, k):
        return [p[k] * u[0] - u[0] * u[1], -p[k] * u[1] + u[0] * u[1]]

    return scipy_solve(f, [1.0, 1.0], np.asarray(BP_TS), breaks=[1.0, 2.0, 3.0],
                       rtol=1e-13, atol=1e-13).sum()


@pytest.fixture(scope="module")
def breakpoint_reference_gradient():
    # Central differences with a Richardson step: truncation error O(h^4) ~ 1e-8 at h=1e-2,
    # well below the 1e-6 the issue asks for; scipy's own error (1e-13) is negligible.
    return richardson_gradient(breakpoint_loss_scipy, np.ones(4), h=1e-2)


@pytest.mark.parametrize("sensitivity", ["auto", "forward"])
def test_breakpoint_gradient_matches_reference(sensitivity, breakpoint_reference_gradient):
    def loss(p):
        sol = solvers.solve(piecewise_lv, jnp.ones(2), BP_TS, p, tstops=BREAKS,
                            sensitivity=sensitivity, rtol=1e-10, atol=1e-12)
        return sol.ys.sum()

    p = jnp.ones(4)
    np.testing.assert_allclose(loss(p), breakpoint_loss_scipy(np.ones(4)), rtol=1e-10)
    grad = jax.grad(loss)(p)
    np.testing.assert_allclose(grad, breakpoint_reference_gradient, rtol=1e-6)


def test_breakpoint_gradient_reverse_mode_is_close(breakpoint_reference_gradient):
    """Reverse mode differentiates the discrete solution, whose steps are chosen for u
    only: at an equilibrium that is accurate to ~1e-4 here, not 1e-6 (documented)."""
    def loss(p):
        return solvers.solve(piecewise_lv, jnp.ones(2), BP_TS, p, tstops=BREAKS,
                             sensitivity="reverse", rtol=1e-10, atol=1e-12).ys.sum()

    grad = jax.grad(loss)(jnp.ones(4))
    np.testing.assert_allclose(grad, breakpoint_reference_gradient, rtol=1e-3)


def test_breakpoints_needed():
    """Without tstops the adaptive solver steps over the jumps in a(t) and is inaccurate
    for p != 1; with them it matches scipy."""
    p = jnp.array([1.0, 1.5, 0.7, 1.2])

    def f(t, u, k):
        return [p[k] * u[0] - u[0] * u[1], -p[k] * u[1] + u[0] * u[1]]

    ref = scipy_solve(f, [1.0, 1.0], np.asarray(BP_TS), breaks=[1.0, 2.0, 3.0])
    with_stops = solvers.solve(piecewise_lv, jnp.ones(2), BP_TS, p, tstops=BREAKS, **TIGHT)
    np.testing.assert_allclose(with_stops.ys, ref, rtol=1e-8)


# --- doses against closed-form pharmacokinetics ----------------------------------------


def one_compartment(t, a, k):
    return -k * a


def oral_one_compartment(t, a, p):
    ka, k = p
    return jnp.stack([-ka * a[0], ka * a[0] - k * a[1]])


def two_compartment(t, a, p):
    k10, k12, k21 = p
    return jnp.stack([-(k10 + k12) * a[0] + k21 * a[1], k12 * a[0] - k21 * a[1]])


def two_compartment_unit_response(t, k10, k12, k21):
    """Central amount after a unit bolus at t = 0 (textbook bi-exponential)."""
    s = k10 + k12 + k21
    alpha = (s + np.sqrt(s * s - 4 * k10 * k21)) / 2
    beta = (s - np.sqrt(s * s - 4 * k10 * k21)) / 2
    ca, cb = (alpha - k21) / (alpha - beta), (k21 - beta) / (alpha - beta)
    return (ca, alpha), (cb, beta)


def test_iv_bolus_multiple_doses():
    k, ts = 0.3, np.linspace(0.0, 24.0, 49)
    times, amounts = np.array([0.0, 6.0, 12.5]), np.array([100.0, 50.0, 80.0])
    sol = solvers.solve(one_compartment, jnp.zeros(1), ts, k,
                        doses=[solvers.Bolus(times, amounts, 0)], **TIGHT)
    # Left limits at dose times: the dose at 6 is not yet in the value saved at 6.
    exact = sum(a * np.exp(-k * (ts - t)) * (ts > t) for t, a in zip(times, amounts, strict=True))
    exact[0] = 0.0
    np.testing.assert_allclose(sol.ys[:, 0], exact, rtol=1e-8, atol=1e-12)


def test_oral_absorption():
    ka, k, dose = 1.5, 0.2, 320.0
    ts = np.linspace(0.0, 24.0, 25)
    sol = solvers.solve(oral_one_compartment, jnp.zeros(2), ts, jnp.array([ka, k]),
                        doses=[solvers.Bolus(0.0, dose, 0)], **TIGHT)
    central = dose * ka / (ka - k) * (np.exp(-k * ts) - np.exp(-ka * ts))
    np.testing.assert_allclose(sol.ys[:, 1], central, rtol=1e-8, atol=1e-12)


def test_infusion_one_compartment():
    k, rate, start, dur = 0.25, 40.0, 1.0, 3.0
    ts = np.linspace(0.0, 12.0, 25)
    sol = solvers.solve(one_compartment, jnp.zeros(1), ts, k,
                        doses=[solvers.Infusion(start, dur, rate, 0)], **TIGHT)
    tau = np.clip(ts - start, 0.0, dur)  # time infused so far
    exact = rate / k * (1 - np.exp(-k * tau)) * np.exp(-k * (ts - start - tau))
    np.testing.assert_allclose(sol.ys[:, 0], exact, rtol=1e-8, atol=1e-12)


def test_two_compartment_bolus_and_infusion():
    k10, k12, k21 = 0.15, 0.6, 0.3
    ts = np.linspace(0.0, 30.0, 61)
    bolus_t, bolus_a = 0.0, 100.0
    inf_start, inf_dur, inf_rate = 8.0, 2.0, 30.0
    sol = solvers.solve(two_compartment, jnp.zeros(2), ts, jnp.array([k10, k12, k21]),
                        doses=[solvers.Bolus(bolus_t, bolus_a, 0),
                               solvers.Infusion(inf_start, inf_dur, inf_rate, 0)], **TIGHT)
    exact = np.zeros_like(ts)
    for c, lam in two_compartment_unit_response(None, k10, k12, k21):
        exact += bolus_a * c * np.exp(-lam * (ts - bolus_t)) * (ts > bolus_t)
        tau = np.clip(ts - inf_start, 0.0, inf_dur)
        exact += inf_rate * c / lam * (1 - np.exp(-lam * tau)) * np.exp(
            -lam * (ts - inf_start - tau))
    np.testing.assert_allclose(sol.ys[1:, 0], exact[1:], rtol=1e-8, atol=1e-12)


def test_doses_batch_over_subjects():
    """Subjects with different dose times and amounts in one vmapped solve; a subject
    with fewer doses is padded with zero amounts."""
    k = jnp.array([0.2, 0.4, 0.3])
    times = jnp.array([[0.0, 5.0], [1.0, 2.0], [0.0, 0.0]])
    amounts = jnp.array([[10.0, 5.0], [3.0, 4.0], [7.0, 0.0]])
    ts = jnp.linspace(0.0, 10.0, 11)

    def one(k, t, a):
        return solvers.solve(one_compartment, jnp.zeros(1), ts, k,
                             doses=[solvers.Bolus(t, a, 0)], **TIGHT).ys[:, 0]

    out = jax.jit(jax.vmap(one))(k, times, amounts)
    tsn = np.asarray(ts)
    for i in range(3):
        exact = sum(float(a) * np.exp(-float(k[i]) * (tsn - float(t))) * (tsn > float(t))
                    for t, a in zip(times[i], amounts[i], strict=True))
        np.testing.assert_allclose(out[i], exact, rtol=1e-8, atol=1e-12)


def test_traced_doses_before_the_start():
    """Under jit a dose before t0 is not refused up front: the solve integrated backward to
    it and applied it (y(t0) = 1 + 7 e^-0.5 for u0 = 1), or overflowed for a fast rate.
    Now such a dose fails the solve (DOSE_BEFORE_START, NaN), and padding of amount 0
    before t0 is a no-op (k = 20 from t0 = 50 with pads at 0 failed before)."""
    ts = jnp.array([0.0, 1.0, 2.0])

    @jax.jit
    def run(t, a, k, t0):
        return solvers.solve(one_compartment, jnp.ones(1), ts + t0, k, t0=t0,
                             doses=[solvers.Bolus(t, a, 0)], **TIGHT)

    sol = run(jnp.array([-1.0]), jnp.array([7.0]), 0.5, 0.0)
    assert int(sol.status) == solvers.Status.DOSE_BEFORE_START
    assert np.all(np.isnan(sol.ys))
    for k in (0.5, 20.0):
        sol = run(jnp.array([0.0, 51.0]), jnp.array([0.0, 3.0]), k, 50.0)
        assert int(sol.status) == solvers.Status.SUCCESS
        t = np.asarray(ts) + 50.0
        exact = np.exp(-k * (t - 50.0)) + np.where(t > 51.0, 3 * np.exp(-k * (t - 51.0)), 0.0)
        np.testing.assert_allclose(np.asarray(sol.ys[:, 0]), exact, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("sensitivity", ["forward", "reverse"])
def test_dose_gradients_against_closed_form(sensitivity):
    """d/d(amount) and d/dk of a bolus PK curve against the analytic derivatives."""
    ts = jnp.linspace(0.0, 10.0, 11)

    def conc(params):
        k, amount = params
        return solvers.solve(one_compartment, jnp.zeros(1), ts, k, sensitivity=sensitivity,
                             doses=[solvers.Bolus(0.0, amount, 0)], **TIGHT).ys[:, 0]

    jac = jax.jacrev(conc)(jnp.array([0.3, 50.0]))
    tsn = np.asarray(ts)
    np.testing.assert_allclose(jac[1:, 0], -tsn[1:] * 50.0 * np.exp(-0.3 * tsn[1:]), rtol=1e-7)
    np.testing.assert_allclose(jac[1:, 1], np.exp(-0.3 * tsn[1:]), rtol=1e-7)


def test_infusion_rate_gradient():
    ts = jnp.linspace(0.0, 6.0, 7)

    def total(rate):
        return solvers.solve(one_compartment, jnp.zeros(1), ts, 0.5, sensitivity="forward",
                             doses=[solvers.Infusion(0.0, 2.0, rate, 0)], **TIGHT).ys.sum()

    # Linear in the rate: the derivative is the response to a unit rate.
    np.testing.assert_allclose(jax.grad(total)(3.0), total(1.0), rtol=1e-8)
