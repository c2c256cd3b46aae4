"""Grids and stencils against analytic derivatives: exact weights, convergence orders from
log-log slopes, boundary conditions, 2-D, and the method-of-lines heat equation against its
exact semi-discrete solution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from bayes_ude import pde, solvers

TWO_PI = 2 * np.pi


def _slope(ns, errors):
    """Convergence order: minus the log-log slope of error against n (error ~ n^-p)."""
    return -np.polyfit(np.log(ns), np.log(errors), 1)[0]


# --- weights ---------------------------------------------------------------------------


@pytest.mark.parametrize(("derivative", "offsets", "expected"), [
    (2, [-1, 0, 1], [1, -2, 1]),                                  # textbook tables
    (2, [-2, -1, 0, 1, 2], np.array([-1, 16, -30, 16, -1]) / 12),
    (1, [-1, 0, 1], [-0.5, 0, 0.5]),
    (1, [-2, -1, 0, 1, 2], np.array([1, -8, 0, 8, -1]) / 12),
    (1, [0, 1, 2], [-1.5, 2, -0.5]),                              # one-sided, 2nd order
    (4, [-2, -1, 0, 1, 2], [1, -4, 6, -4, 1]),
])
def test_fd_weights_match_tables(derivative, offsets, expected):
    np.testing.assert_allclose(pde.fd_weights(derivative, offsets), expected, atol=1e-13)


def test_central_stencil_is_fd_weights():
    np.testing.assert_allclose(pde.central_stencil(2, 3), [1, -2, 1], atol=1e-14)
    np.testing.assert_allclose(pde.central_stencil(2, 5) * 12, [-1, 16, -30, 16, -1],
                               atol=1e-12)


# --- convergence orders ----------------------------------------------------------------

NS = (16, 32, 64, 128)


@pytest.mark.parametrize(("points", "order"), [(3, 2), (5, 4)])
def test_periodic_laplacian_and_first_derivative_converge_at_their_order(points, order):
    err2, err1 = [], []
    for n in NS:
        grid = pde.Grid(n, 1.0 / n, "periodic")
        u = jnp.sin(TWO_PI * grid.x) + 0.5 * jnp.cos(2 * TWO_PI * grid.x)
        uxx = -(TWO_PI**2) * jnp.sin(TWO_PI * grid.x) - 2 * TWO_PI**2 * jnp.cos(
            2 * TWO_PI * grid.x)
        ux = TWO_PI * jnp.cos(TWO_PI * grid.x) - TWO_PI * jnp.sin(2 * TWO_PI * grid.x)
        err2.append(float(jnp.max(jnp.abs(pde.laplacian(u, grid, points=points) - uxx))))
        err1.append(float(jnp.max(jnp.abs(
            pde.derivative(u, grid, 1, points=points) - ux))))
    # The slope of the asymptotic range is the order; 0.15 allows for the pre-asymptotic
    # curvature over the four grids.
    assert abs(_slope(NS, err2) - order) < 0.15, err2
    assert abs(_slope(NS, err1) - order) < 0.15, err1


@pytest.mark.parametrize(("points", "order"), [(3, 2), (5, 4)])
def test_neumann_mirror_is_exact_for_zero_flux_functions(points, order):
    """cos(pi x) on [0, 1] has u' = 0 at both ends and is mirror-symmetric about them, so
    the reflected ghost nodes are exact and the interior order holds up to the boundary."""
    errors = []
    for n in NS:
        grid = pde.Grid(n + 1, 1.0 / n, "neumann")      # nodes 0, dx, ..., 1
        u = jnp.cos(np.pi * grid.x)
        errors.append(float(jnp.max(jnp.abs(pde.laplacian(u, grid, points=points)
                                            + np.pi**2 * u))))
    assert abs(_slope(NS, errors) - order) < 0.15, errors


@pytest.mark.parametrize(("points", "order"), [(3, 2), (5, 2)])
def test_dirichlet_boundary_value_and_extrapolated_ghosts(points, order):
    """u = g + sin(pi x) e^x with u(0) = u(1) = g. The 3-point stencil reads the boundary
    value itself (second order); the 5-point stencil's outer ghost is extrapolated with an
    O(dx^4) error, which divided by dx^2 limits it to second order next to the boundary
    (fourth order elsewhere)."""
    g = 0.3
    errors, interior = [], []
    for n in NS:
        grid = pde.Grid(n - 1, 1.0 / n, "dirichlet", value=g)   # unknowns at dx..1-dx
        x = grid.x
        u = g + jnp.sin(np.pi * x) * jnp.exp(x)
        uxx = jnp.exp(x) * ((1 - np.pi**2) * jnp.sin(np.pi * x) + TWO_PI * jnp.cos(np.pi * x))
        err = jnp.abs(pde.laplacian(u, grid, points=points) - uxx)
        errors.append(float(jnp.max(err)))
        interior.append(float(jnp.max(err[2:-2])))
    assert abs(_slope(NS, errors) - order) < 0.15, errors
    if points == 5:
        assert abs(_slope(NS, interior) - 4) < 0.3, interior
    assert np.isclose(pde.Grid(4, 0.2, "dirichlet").x[0], 0.2)   # first unknown at dx


def test_2d_laplacian_order_and_full_kernel():
    errors = []
    for n in NS[:3]:
        grid = pde.Grid((n, 2 * n), (1.0 / n, 0.5 / n), "periodic")
        xx, yy = grid.mesh()
        u = jnp.sin(TWO_PI * xx) * jnp.cos(2 * TWO_PI * yy)
        lap = pde.laplacian(u, grid)
        errors.append(float(jnp.max(jnp.abs(lap + 5 * TWO_PI**2 * u))))
        # The same operator as one 3 x 3 kernel on a square-spacing grid.
        square = pde.Grid((n, n), 1.0 / n, "periodic")
        xs, ys = square.mesh()
        v = jnp.sin(TWO_PI * xs) * jnp.cos(2 * TWO_PI * ys)
        cross = jnp.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]) * n**2
        np.testing.assert_allclose(pde.convolve(v, cross, square),
                                   pde.laplacian(v, square), rtol=1e-10, atol=1e-9)
    assert abs(_slope(NS[:3], errors) - 2) < 0.15, errors


@pytest.mark.parametrize("boundary", ["neumann", "dirichlet"])
def test_2d_boundaries_pad_each_axis_like_1d(boundary):
    """A function of x alone on a 2-D grid: its Laplacian equals the 1-D one on every row."""
    grid2 = pde.Grid((12, 5), (0.1, 0.2), boundary, value=0.7)
    grid1 = pde.Grid(12, 0.1, boundary, value=0.7)
    u1 = 0.7 + jnp.sin(grid1.x) ** 2
    u2 = jnp.broadcast_to(u1[:, None], (12, 5))
    lap2 = pde.laplacian(u2, grid2, points=5)
    lap1 = pde.laplacian(u1, grid1, points=5)
    y_part = pde.convolve(u2, pde.central_stencil(2, 5), grid2, axis=1) / 0.2**2
    if boundary == "neumann":   # constant in y: the mirrored y-ghosts are exact
        np.testing.assert_allclose(y_part, 0.0, atol=1e-12)
        np.testing.assert_allclose(lap2, jnp.broadcast_to(lap1[:, None], (12, 5)), atol=1e-10)
    else:                       # u = 0.7 + f(x) is not 0.7 at the y-boundaries: y part != 0
        np.testing.assert_allclose(lap2 - y_part, jnp.broadcast_to(lap1[:, None], (12, 5)),
                                   atol=1e-10)


# --- learnable stencil -----------------------------------------------------------------


def test_learnable_stencil_zero_sum_and_linearity():
    grid = pde.Grid(10, 0.1, "periodic")
    u = jnp.asarray(np.random.default_rng(0).normal(size=10))
    st = pde.LearnableStencil(3, zero_sum=True, key=jax.random.key(0))
    assert abs(float(jnp.sum(st.weights))) < 1e-15
    assert not np.allclose(st.weights, st.raw)
    # A zero-sum stencil annihilates constants.
    np.testing.assert_allclose(st(jnp.full(10, 3.7), grid), 0.0, atol=1e-14)
    # conv(u) is linear in the weights: d out_i / d w_j = u[i + j - 1] (periodic).
    plain = pde.LearnableStencil(3, init=jnp.array([0.2, -0.5, 0.1]))
    jac = jax.jacobian(lambda w: pde.convolve(u, w, grid))(plain.weights)
    expected = np.stack([np.roll(u, 1), np.asarray(u), np.roll(u, -1)], axis=1)
    np.testing.assert_allclose(jac, expected, atol=1e-15)
    # Initialised to [1, -2, 1] it is dx^2 times the Laplacian.
    lap = pde.LearnableStencil(3, init=jnp.array([1.0, -2.0, 1.0]))
    np.testing.assert_allclose(lap(u, grid), 0.01 * pde.laplacian(u, grid), atol=1e-12)


def test_normalised_stencil_and_effective_diffusion():
    grid = pde.Grid(26, 0.04, "periodic")
    w = jnp.array([3.0, -6.0, 3.0])
    np.testing.assert_allclose(pde.normalised_stencil(w), [1, -2, 1])
    model = pde.UniversalPDE(grid, None, pde.LearnableStencil(3, init=w), diffusion=2.0)
    # 2 * 3 * [1, -2, 1] = D / dx^2 [1, -2, 1]  =>  D = 6 dx^2.
    assert np.isclose(float(model.effective_diffusion), 6 * 0.04**2)
    # [1, -3, 1] is [1, -2, 1] plus -u, which is not diffusion: D = 0.01 whatever the
    # split with the pointwise term (the centre weight gave 0.015). Checked against the
    # right-hand side: D u_xx - diffusion u.
    diffusion = 0.01 / 0.04**2
    model = pde.UniversalPDE(grid, None, pde.LearnableStencil(3, init=[1.0, -3.0, 1.0]),
                             diffusion=diffusion)
    assert np.isclose(float(model.effective_diffusion), 0.01)
    u = jnp.sin(2 * np.pi * grid.x / (26 * 0.04))
    np.testing.assert_allclose(model(0.0, u), 0.01 * pde.laplacian(u, grid) - diffusion * u,
                               atol=1e-12)


# --- the method of lines through solvers.solve -----------------------------------------


@pytest.mark.parametrize("solver", [solvers.Tsit5(), solvers.Rodas5P()], ids=["Tsit5", "Rodas5P"])
def test_heat_equation_matches_exact_semidiscrete_solution(solver):
    """u_t = D u_xx, periodic, u0 = sin(2 pi x): the 3-point method-of-lines ODE has the
    exact solution exp(-D lam t) sin(2 pi x) with lam = (2 - 2 cos(2 pi dx)) / dx^2."""
    n, d = 32, 0.05
    dx = 1.0 / n
    grid = pde.Grid(n, dx, "periodic")
    model = pde.UniversalPDE(grid, None, pde.LearnableStencil(3, init=[1.0, -2.0, 1.0]),
                             diffusion=d / dx**2)
    u0 = jnp.sin(TWO_PI * grid.x)
    ts = jnp.linspace(0.0, 1.0, 5)
    sol = solvers.solve(lambda t, u, m: m(t, u), u0, ts, model, solver=solver, rtol=1e-9,
                        atol=1e-12)
    lam = (2 - 2 * np.cos(TWO_PI * dx)) / dx**2
    exact = np.exp(-d * lam * np.asarray(ts))[:, None] * np.asarray(u0)[None]
    np.testing.assert_allclose(sol.ys, exact, atol=1e-8)


def test_fisher_kpp_field_matches_matrix_form_in_scipy():
    """The Fisher--KPP truth written with a network-shaped reaction and a [1, -2, 1]
    stencil equals the explicit periodic Laplacian matrix integrated by scipy."""
    n, dx, d = 26, 0.04, 0.01
    grid = pde.Grid(n, dx, "periodic")
    model = pde.UniversalPDE(grid, lambda v: v * (1 - v),
                             pde.LearnableStencil(3, init=[1.0, -2.0, 1.0]), d / dx**2)
    x = grid.x
    u0 = (np.tanh((x - 0.4) / 0.02) - np.tanh((x - 0.6) / 0.02)) / 2
    lap = (np.diag(-2.0 * np.ones(n)) + np.diag(np.ones(n - 1), 1)
           + np.diag(np.ones(n - 1), -1))
    lap[0, -1] = lap[-1, 0] = 1.0
    lap /= dx**2
    ts = np.arange(0.0, 5.0001, 0.5)
    ref = solve_ivp(lambda t, u: u * (1 - u) + d * lap @ u, (0, 5), u0, t_eval=ts,
                    method="Radau", rtol=1e-11, atol=1e-13).y.T
    for solver in (solvers.Tsit5(), solvers.Rodas5P()):
        sol = solvers.solve(lambda t, u, m: m(t, u), jnp.asarray(u0), ts, model,
                            solver=solver, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sol.ys, ref, atol=1e-7)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "match"), [
    (lambda: pde.Grid(26, 0.04, "reflecting"), "boundary"),
    (lambda: pde.Grid(2, 0.1), "shape"),
    (lambda: pde.Grid((4, 4, 4), 0.1), "shape"),
    (lambda: pde.Grid(10, -0.1), "spacing"),
    (lambda: pde.Grid((10, 10), (0.1, 0.1, 0.1)), "spacing"),
    (lambda: pde.LearnableStencil(4, key=jax.random.key(0)), "size"),
    (lambda: pde.LearnableStencil(1, key=jax.random.key(0)), "size"),
    (lambda: pde.LearnableStencil(3), "key"),
    (lambda: pde.LearnableStencil(3, init=[1.0, -2.0]), "init"),
    (lambda: pde.convolve(jnp.zeros(10), jnp.ones(4), pde.Grid(10, 0.1)), "kernel"),
    (lambda: pde.convolve(jnp.zeros(10), jnp.ones((3, 3)), pde.Grid(10, 0.1)), "kernel"),
    (lambda: pde.convolve(jnp.zeros(9), jnp.ones(3), pde.Grid(10, 0.1)), "shape"),
    (lambda: pde.laplacian(jnp.zeros(3), pde.Grid(3, 0.1, "neumann"), points=7),
     "grid too small"),
    (lambda: pde.central_stencil(2, 2), "points"),
    (lambda: pde.fd_weights(3, [-1, 0, 1]), "derivative"),
    (lambda: pde.fd_weights(1, [0, 0, 1]), "offsets"),
    (lambda: pde.UniversalPDE(pde.Grid(10, 0.1), None, "conv"), "stencil"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
