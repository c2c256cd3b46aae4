"""Shadowing sensitivities (LSS, NILSS) against independent references: finite differences
of long-time averages over ensembles of long trajectories (Lorenz 63, with their Monte
Carlo error), closed forms (a nonuniform oscillator's limit cycle, a damped oscillator's
fixed point), and the literature value d<z>/d rho ~ 1.01 at rho = 28."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import solvers

RHO = 28.0
U0 = jnp.array([1.0, 1.0, 28.0])


def lorenz(t, u, p):
    x, y, z = u
    return jnp.stack([10.0 * (y - x), x * (p["rho"] - z) - y, x * y - 8.0 / 3.0 * z])


def mean_z(u, p):
    return u[2]


def lorenz_rk4_step(u, rho, dt):
    """One classical RK4 step, written here apart from the package's integrator."""
    f = lambda v: lorenz(0.0, v, {"rho": rho})  # noqa: E731
    k1 = f(u)
    k2 = f(u + 0.5 * dt * k1)
    k3 = f(u + 0.5 * dt * k2)
    k4 = f(u + dt * k3)
    return u + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def ensemble_averages(rho, n=64, window=200.0, spinup=10.0, dt=0.01):
    """Time averages of z over ``n`` trajectories (RK4, the same starts at every rho:
    common random numbers), each ``window`` long after ``spinup``."""
    starts = jnp.array([1.0, 1.0, 25.0]) + jax.random.normal(jax.random.key(0), (n, 3))
    rk4 = lambda u: lorenz_rk4_step(u, rho, dt)  # noqa: E731

    def one(u):
        u = jax.lax.fori_loop(0, int(spinup / dt), lambda _, v: rk4(v), u)

        def body(carry, _):
            v, total = carry
            return (rk4(v), total + v[2]), None

        (_, total), _ = jax.lax.scan(body, (u, 0.0), None, length=int(window / dt))
        return total / int(window / dt)

    return np.asarray(jax.jit(jax.vmap(one))(starts))


@pytest.fixture(scope="module")
def finite_difference_reference():
    """d<z>/d rho at 28 by central differences (rho +- 1) of ensemble averages, and its
    Monte Carlo standard error."""
    hi, lo = ensemble_averages(RHO + 1.0), ensemble_averages(RHO - 1.0)
    value = (hi.mean() - lo.mean()) / 2.0
    error = np.sqrt(hi.var(ddof=1) / hi.size + lo.var(ddof=1) / lo.size) / 2.0
    print(f"finite differences of ensemble averages: d<z>/d rho = {value:.4f} +- {error:.4f}")
    return value, error


@pytest.mark.parametrize("method", ["lss", "nilss"])
def test_lorenz_derivative_of_the_mean_of_z(method, finite_difference_reference):
    reference, error = finite_difference_reference
    assert error < 0.01 * reference  # the reference is good to 1 %
    assert abs(reference - 1.01) < 0.03  # the literature value (Wang 2014; Ni & Wang 2017)
    result = solvers.shadowing(lorenz, U0, {"rho": jnp.asarray(RHO)}, mean_z, (0.0, 100.0),
                               method=method, spinup=20.0)
    grad = float(result.gradient["rho"])
    print(f"{method}: d<z>/d rho = {grad:.4f}; <z> = {float(result.average):.3f}; "
          f"Lyapunov exponents {np.asarray(result.lyapunov)}")
    assert abs(grad - reference) < 0.05 * reference
    assert 0.8 < float(result.lyapunov[0]) < 1.0  # lambda_1 = 0.906 for Lorenz 63
    if method == "nilss":
        assert -15.5 < float(result.lyapunov[1]) < -13.5  # lambda_3 = -14.57


def test_ordinary_sensitivities_of_one_trajectory_are_useless():
    """Reverse-mode through the same window: orders of magnitude off (exp(0.9 T) growth)."""
    dt, n = 0.01, 5000  # T = 50

    def window_mean(rho):
        def step(u, _):
            u1 = lorenz_rk4_step(u, rho, dt)
            return u1, u1[2]

        u = jax.lax.fori_loop(0, 2000, lambda _, v: step(v, None)[0], U0)
        return jnp.mean(jax.lax.scan(step, u, None, length=n)[1])

    assert abs(float(jax.grad(window_mean)(RHO))) > 100.0


def nonuniform_oscillator(t, u, p):
    """r' = r (1 - r^2), theta' = omega - cos(theta): on the limit cycle
    <cos theta> = omega - sqrt(omega^2 - 1) (time spent ~ 1 / theta')."""
    x, y = u
    r2 = x * x + y * y
    speed = p["omega"] - x / jnp.sqrt(r2)
    return jnp.stack([x * (1 - r2) - y * speed, y * (1 - r2) + x * speed])


@pytest.mark.parametrize("method", ["lss", "nilss"])
def test_limit_cycle_time_dilation_against_the_closed_form(method):
    omega = 2.0
    exact = 1.0 - omega / np.sqrt(omega**2 - 1.0)  # d/d omega of omega - sqrt(omega^2 - 1)
    period = 2 * np.pi / np.sqrt(omega**2 - 1)
    result = solvers.shadowing(nonuniform_oscillator, jnp.array([0.5, 0.3]),
                               {"omega": jnp.asarray(omega)}, lambda u, p: u[0],
                               (0.0, 40 * period), method=method, spinup=10.0)
    assert float(result.gradient["omega"]) == pytest.approx(exact, rel=0.05)
    assert float(result.lyapunov[0]) == pytest.approx(-2.0, abs=0.05)  # r' = r (1 - r^2)


@pytest.mark.parametrize("method", ["lss", "nilss"])
def test_damped_oscillator_fixed_point_vector_objective_and_pytree(method):
    """x'' + c x' + k x = F: <x> -> F / k, <x^2> -> (F / k)^2; no chaos, no warning."""

    def damped(t, u, p):
        x, y = u
        return jnp.stack([y, -p["k"] * x - 0.5 * y + p["force"][0]])

    k, force = 2.0, 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solvers.shadowing(damped, jnp.array([3.0, 0.0]),
                                   {"k": jnp.asarray(k), "force": jnp.array([force])},
                                   lambda u, p: jnp.stack([u[0], u[0] ** 2]), (0.0, 60.0),
                                   method=method, spinup=40.0)
        assert not caught
    g = result.gradient
    assert g["k"].shape == (2,) and g["force"].shape == (2, 1)
    np.testing.assert_allclose(g["k"], [-force / k**2, -2 * force**2 / k**3], rtol=0.02)
    np.testing.assert_allclose(g["force"][:, 0], [1 / k, 2 * force / k**2], rtol=0.02)


@pytest.mark.parametrize("method", ["lss", "nilss"])
def test_a_window_at_a_stable_fixed_point_gives_the_ordinary_derivative(method):
    """u' = -u + p: <u> = p, d<u>/dp = 1. After a spin-up of 30 (e^-30) the window's |f|
    is round-off; the projections along f used to follow that noise (NILSS 0.37 over
    T = 100), and started at the equilibrium LSS gave NaN (a dilation weight of 0)."""
    def relax(t, u, p):
        return -u + p

    for u0, spinup in ((jnp.zeros(2), 30.0), (jnp.array([2.0, 2.0]), 0.0)):
        result = solvers.shadowing(relax, u0, jnp.asarray(2.0), lambda u, p: u[0],
                                   (0.0, 100.0), method=method, dt=0.05, spinup=spinup)
        # shadowing's O(1/T) bias: 0.988 (LSS) and 0.984 (NILSS)
        assert float(result.gradient) == pytest.approx(1.0, rel=0.03), (u0, spinup)
        assert float(result.lyapunov[0]) == pytest.approx(-1.0, abs=0.01)


def test_under_jit_and_fitting_rho_from_the_long_time_mean():
    """rho from the observed long-time means of z and z^2 by Gauss-Newton steps with the
    shadowing gradient (jitted; the same compiled program at every step)."""
    stats = lambda u, p: jnp.stack([u[2], u[2] ** 2 / 30.0])  # noqa: E731
    observed = solvers.shadowing(lorenz, U0, {"rho": jnp.asarray(RHO)}, stats,
                                 (0.0, 200.0), spinup=20.0).average

    @jax.jit
    def step(rho):
        res = solvers.shadowing(lorenz, U0, {"rho": rho}, stats, (0.0, 100.0), spinup=20.0,
                                key=jax.random.key(1))
        jac = res.gradient["rho"]
        return rho - jnp.dot(jac, res.average - observed) / jnp.dot(jac, jac)

    rho = jnp.asarray(24.0)
    for _ in range(3):
        rho = step(rho)
    assert abs(float(rho) - RHO) < 0.02 * RHO, float(rho)


def test_short_window_short_spinup_and_too_few_tangents_warn():
    with pytest.warns(UserWarning, match="after a spin-up of 0 the window starts outside"):
        solvers.shadowing(lorenz, jnp.array([60.0, -60.0, 120.0]), {"rho": jnp.asarray(RHO)},
                          mean_z, (0.0, 30.0), method="lss", spinup=0.0)
    with pytest.warns(UserWarning, match=r"4\.\d Lyapunov times .*Lyapunov time 1\.\d"):
        solvers.shadowing(lorenz, U0, {"rho": jnp.asarray(RHO)}, mean_z, (0.0, 5.0),
                          method="lss", spinup=10.0)
    with pytest.warns(UserWarning, match="more unstable directions than n_unstable = 1"):
        solvers.shadowing(hyperchaotic_rossler, jnp.array([-10.0, -6.0, 0.0, 10.0]),
                          {"a": jnp.asarray(0.25)}, lambda u, p: u[2], (0.0, 200.0),
                          n_unstable=1, spinup=10.0)


def hyperchaotic_rossler(t, u, p):
    """Rossler's hyperchaotic system (1979): two positive Lyapunov exponents."""
    x, y, z, w = u
    return jnp.stack([-y - z, x + p["a"] * y + w, 3.0 + x * z, -0.5 * z + 0.05 * w])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "adjoint"}, "method must be 'lss' or 'nilss'"),
    ({"t_span": (5.0, 1.0)}, "t_span must be increasing"),
    ({"dt": 0.0}, "dt must be positive"),
    ({"spinup": -1.0}, "spinup must be >= 0"),
    ({"segments": 1}, "at least 2 segments"),
    ({"n_unstable": 3}, "n_unstable must be between 1 and 2"),
    ({"alpha": -1.0, "method": "lss"}, "alpha must be positive"),
    ({"u0": jnp.ones((3, 1))}, "u0 must be a 1-D state vector"),
    ({"u0": jnp.ones(2)}, "must return a state of shape"),
    ({"p": {}}, "p has no parameters"),
])
def test_bad_input(kwargs, match):
    args = {"vector_field": lorenz, "u0": U0, "p": {"rho": jnp.asarray(RHO)},
            "objective": mean_z, "t_span": (0.0, 1.0)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        solvers.shadowing(**args)
