"""Every sensitivity choice against finite differences and against each other."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers
from tests.helpers import richardson_gradient, scipy_solve
from tests.solvers.test_nonstiff import LV_P, LV_TS, LV_U0, lotka_volterra

TOL = {"rtol": 1e-10, "atol": 1e-12}


def lv_loss_scipy(x):
    """Reference loss of (p, u0) computed by scipy at 1e-13 (independent of our solver)."""
    p, u0 = x[:4], x[4:]
    ys = scipy_solve(lambda t, u, k: np.asarray(lotka_volterra(t, u, p)), u0, LV_TS,
                     rtol=1e-13, atol=1e-13)
    return float(np.sum(ys**2))


@pytest.fixture(scope="module")
def lv_reference_gradient():
    return richardson_gradient(lv_loss_scipy, np.concatenate([LV_P, LV_U0]), h=1e-3)


@pytest.mark.parametrize("sensitivity", ["auto", "forward", "reverse", "adjoint"])
def test_gradient_wrt_params_and_initial_state(sensitivity, lv_reference_gradient):
    def loss(p, u0):
        sol = solvers.solve(lotka_volterra, u0, LV_TS, p, sensitivity=sensitivity, **TOL)
        return jnp.sum(sol.ys**2)

    gp, gu = jax.grad(loss, argnums=(0, 1))(LV_P, LV_U0)
    np.testing.assert_allclose(np.concatenate([gp, gu]), lv_reference_gradient, rtol=1e-6)


def test_forward_and_reverse_agree_at_loose_tolerance():
    """At the default tolerances both are accurate to ~rtol and agree with each other."""
    def jac(sensitivity):
        return jax.jacrev(lambda p: solvers.solve(lotka_volterra, LV_U0, LV_TS, p,
                                                  sensitivity=sensitivity).ys)(LV_P)

    fwd, rev = jac("forward"), jac("reverse")
    scale = np.max(np.abs(fwd))
    assert np.max(np.abs(fwd - rev)) / scale < 1e-4


def test_forward_mode_jacfwd_and_jvp():
    """jax.jacfwd and jax.jvp work with forward sensitivities and match jax.jacrev."""
    def ys(p):
        return solvers.solve(lotka_volterra, LV_U0, LV_TS, p, sensitivity="forward", **TOL).ys

    jf = jax.jacfwd(ys)(LV_P)
    jr = jax.jacrev(ys)(LV_P)
    np.testing.assert_allclose(jf, jr, rtol=1e-12, atol=1e-12)
    direction = jnp.array([1.0, -2.0, 0.5, 0.0])
    _, tangent = jax.jvp(ys, (LV_P,), (direction,))
    np.testing.assert_allclose(tangent, jnp.tensordot(jf, direction, axes=1), rtol=1e-10)


def test_hessian_with_forward_sensitivities():
    """Second derivatives (needed by Laplace/FOCE) against differences of gradients."""
    def loss(p):
        return jnp.sum(solvers.solve(lotka_volterra, LV_U0, LV_TS, p,
                                     sensitivity="forward", **TOL).ys ** 2)

    hess = jax.hessian(loss)(LV_P)
    grad = jax.jit(jax.grad(loss))
    h = 1e-5
    fd = np.stack([(grad(LV_P.at[i].add(h)) - grad(LV_P.at[i].add(-h))) / (2 * h)
                   for i in range(4)])
    np.testing.assert_allclose(hess, fd, rtol=1e-5, atol=1e-6 * np.max(np.abs(fd)))
    np.testing.assert_allclose(hess, hess.T, rtol=1e-6, atol=1e-8 * np.max(np.abs(fd)))


@pytest.mark.parametrize("sensitivity", ["forward", "reverse", "adjoint"])
def test_closed_over_and_module_parameters(sensitivity):
    """Parameters closed over by a Python function or held by an equinox Module are
    differentiated like args."""
    ts = jnp.array([0.0, 0.5, 1.5])

    def by_closure(k):
        return solvers.solve(lambda t, u, a: -k * u, jnp.ones(1), ts,
                             sensitivity=sensitivity, **TOL).ys[-1, 0]

    class Decay(eqx.Module):
        k: jax.Array

        def __call__(self, t, u, args):
            return -self.k * u

    def by_module(k):
        return solvers.solve(Decay(k), jnp.ones(1), ts, sensitivity=sensitivity, **TOL).ys[-1, 0]

    for fn in (by_closure, by_module):
        np.testing.assert_allclose(jax.grad(fn)(jnp.asarray(0.4)), -1.5 * np.exp(-0.6),
                                   rtol=1e-8)


def test_auto_picks_forward_for_few_parameters_and_reverse_for_many():
    """`auto` is forward-mode for a 4-parameter model (which supports jacfwd) and reverse
    mode for a 200-parameter one (jacfwd then fails, as it does for diffrax's reverse)."""
    few = jax.jacfwd(lambda p: solvers.solve(lotka_volterra, LV_U0, LV_TS, p).ys)(LV_P)
    assert few.shape == (21, 2, 4)
    w = jnp.full((100, 2), 0.01)

    def many(w):
        return solvers.solve(lambda t, u, w: -u + jnp.tanh(w.T @ jnp.tanh(w @ u)),
                             jnp.ones(2), LV_TS, w).ys.sum()

    assert jnp.isfinite(jax.grad(many)(w)).all()
    with pytest.raises(Exception):  # noqa: B017 - any JAX error: reverse mode has no jvp
        jax.jacfwd(many)(w)


def test_derivative_wrt_dose_time_needs_reverse_mode():
    def f(t_dose):
        return solvers.solve(lambda t, u, k: -k * u, jnp.zeros(1), jnp.array([0.0, 5.0]), 0.3,
                             sensitivity="forward",
                             doses=[solvers.Bolus(t_dose, 1.0, 0)]).ys[-1, 0]

    with pytest.raises(ValueError, match="sensitivity='reverse'"):
        jax.grad(f)(1.0)
    g = jax.grad(lambda td: solvers.solve(lambda t, u, k: -k * u, jnp.zeros(1),
                                          jnp.array([0.0, 5.0]), 0.3, sensitivity="reverse",
                                          doses=[solvers.Bolus(td, 1.0, 0)],
                                          **TOL).ys[-1, 0])(1.0)
    # d/dt_d exp(-k (5 - t_d)) = k exp(-k (5 - t_d))
    np.testing.assert_allclose(g, 0.3 * np.exp(-0.3 * 4.0), rtol=1e-6)
