"""Rosenbrock solvers and mass-matrix DAEs against scipy Radau and exact solutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from bayes_ude import solvers
from tests.helpers import richardson_gradient, robertson, scipy_solve
from tests.solvers.test_nonstiff import logistic_decay, logistic_decay_exact

K_ROBERTSON = jnp.array([0.04, 3e7, 1e4])


def robertson_dae(t, y, k):
    """Robertson with the conservation law as an algebraic equation (M = diag(1, 1, 0))."""
    k1, k2, k3 = k
    return jnp.stack([
        -k1 * y[0] + k3 * y[1] * y[2],
        k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
        y[0] + y[1] + y[2] - 1.0,
    ])


ROB_MASS = jnp.diag(jnp.array([1.0, 1.0, 0.0]))
ROB_TS = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-5, 1e5, 31)])


@pytest.fixture(scope="module")
def robertson_reference():
    return scipy_solve(lambda t, y, i: np.asarray(robertson(t, y, K_ROBERTSON)), [1.0, 0, 0],
                       np.asarray(ROB_TS), method="Radau", rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("solver", [solvers.Rodas5P(), solvers.Rosenbrock23(), solvers.Auto()],
                         ids=["Rodas5P", "Rosenbrock23", "Auto"])
def test_robertson_to_1e5_matches_radau(solver, robertson_reference):
    sol = solvers.solve(robertson, jnp.array([1.0, 0.0, 0.0]), ROB_TS, K_ROBERTSON,
                        solver=solver, rtol=1e-6, atol=1e-10)
    assert bool(sol.success)
    # Relative error per component, y2 relative to its own scale (max |y2| ~ 3.6e-5).
    scale = np.max(np.abs(robertson_reference), axis=0)
    err = np.max(np.abs(np.asarray(sol.ys) - robertson_reference), axis=0) / scale
    assert np.all(err <= 1e-4), err


def test_rodas5p_takes_few_steps_on_robertson():
    """One Jacobian and LU per step, no Newton loop, and far fewer steps than Kvaerno5."""
    ts = jnp.array([0.0, 1e5])
    rodas = solvers.solve(robertson, jnp.array([1.0, 0, 0]), ts, K_ROBERTSON,
                          solver=solvers.Rodas5P(), rtol=1e-6, atol=1e-10)
    kvaerno = solvers.solve(robertson, jnp.array([1.0, 0, 0]), ts, K_ROBERTSON,
                            solver=solvers.Kvaerno5(), rtol=1e-6, atol=1e-10)
    assert int(rodas.num_steps) < 0.3 * int(kvaerno.num_steps)


@pytest.mark.parametrize(("solver", "order", "steps"),
                         [(solvers.Rodas5P(), 5, (20, 40, 80)),
                          (solvers.Rosenbrock23(), 2, (20, 40, 80, 160))],
                         ids=["Rodas5P", "Rosenbrock23"])
def test_order_nonstiff_nonlinear(solver, order, steps):
    hs = [4.0 / n for n in steps]
    errors = []
    for h in hs:
        sol = solvers.solve(logistic_decay, jnp.array([0.1, 1.0]), jnp.array([0.0, 4.0]),
                            solver=solver, adaptive=False, dt0=h)
        errors.append(np.max(np.abs(np.asarray(sol.ys[-1]) - logistic_decay_exact(4.0))))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.5, (slope, errors)


@pytest.mark.parametrize(("solver", "order"), [(solvers.Rodas5P(), 5),
                                               (solvers.Rosenbrock23(), 2)],
                         ids=["Rodas5P", "Rosenbrock23"])
def test_order_stiff_linear_system(solver, order):
    """u' = A u with eigenvalues -1, -2 and -1e4 (stiffness ratio 1e4), exact solution
    expm(A t) u0: the slope is the method's order with the stiff mode resolved by
    L-stability at every step size used."""
    q = jnp.array([[1.0, 0.3, 0.1], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0]])
    a = q @ jnp.diag(jnp.array([-1.0, -2.0, -1e4])) @ jnp.linalg.inv(q)
    u0 = jnp.array([1.0, 2.0, -1.0])
    exact = scipy.linalg.expm(np.asarray(a) * 2.0) @ np.asarray(u0)
    # Observed: 5.4 for Rodas5P (a small 6th-order term remains at these steps), 2.0 for
    # Rosenbrock23; finer steps reach round-off.
    hs = [2.0 / n for n in (20, 40, 80)]
    errors = []
    for h in hs:
        sol = solvers.solve(lambda t, u, a: a @ u, u0, jnp.array([0.0, 2.0]), a, solver=solver,
                            adaptive=False, dt0=h)
        errors.append(np.max(np.abs(np.asarray(sol.ys[-1]) - exact)))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.5, (slope, errors)


def test_prothero_robinson_non_autonomous():
    """u' = lambda (u - sin t) + cos t, exact u = sin t: exercises the df/dt term.
    Non-stiff (lambda = -1): full order 5. Very stiff (lambda = -1e6): the known order
    reduction of Rosenbrock methods on this problem (B-convergence) to 3, with errors
    below 1e-10 even at h = 0.2."""
    def errors(lam, steps):
        out = []
        for n in steps:
            sol = solvers.solve(lambda t, u, lam: lam * (u - jnp.sin(t)) + jnp.cos(t),
                                jnp.zeros(1), jnp.array([0.0, 2.0]), lam,
                                solver=solvers.Rodas5P(), adaptive=False, dt0=2.0 / n)
            out.append(abs(float(sol.ys[-1, 0]) - np.sin(2.0)))
        return np.array(out)

    steps = np.array([10, 20, 40, 80])
    slope = np.polyfit(np.log(2.0 / steps), np.log(errors(-1.0, steps)), 1)[0]
    assert abs(slope - 5) < 0.5
    stiff = errors(-1e6, steps)
    assert np.max(stiff) < 1e-10
    assert np.polyfit(np.log(2.0 / steps), np.log(stiff), 1)[0] > 2.5


def test_dense_output_accuracy():
    ts = jnp.linspace(0.0, 4.0, 101)  # many more save points than steps
    sol = solvers.solve(logistic_decay, jnp.array([0.1, 1.0]), ts, solver=solvers.Rodas5P(),
                        rtol=1e-8, atol=1e-10)
    exact = np.stack([logistic_decay_exact(t) for t in np.asarray(ts)])
    assert int(sol.num_steps) < 60
    np.testing.assert_allclose(sol.ys, exact, atol=1e-7)


def test_user_jacobian_matches_autodiff():
    def jac(t, y, k):
        k1, k2, k3 = k
        return jnp.array([
            [-k1, k3 * y[2], k3 * y[1]],
            [k1, -2 * k2 * y[1] - k3 * y[2], -k3 * y[1]],
            [0.0, 2 * k2 * y[1], 0.0],
        ])

    kw = {"rtol": 1e-8, "atol": 1e-12}
    auto = solvers.solve(robertson, jnp.array([1.0, 0, 0]), ROB_TS, K_ROBERTSON,
                         solver=solvers.Rodas5P(), **kw)
    given = solvers.solve(robertson, jnp.array([1.0, 0, 0]), ROB_TS, K_ROBERTSON,
                          solver=solvers.Rodas5P(jacobian=jac), **kw)
    np.testing.assert_allclose(given.ys, auto.ys, rtol=1e-10, atol=1e-16)


# --- mass-matrix DAEs ------------------------------------------------------------------


@pytest.mark.parametrize("solver", [solvers.Rodas5P(), solvers.Rosenbrock23()],
                         ids=["Rodas5P", "Rosenbrock23"])
def test_robertson_dae_matches_ode_and_keeps_constraint(solver, robertson_reference):
    tol = {"rtol": 1e-8, "atol": 1e-12} if isinstance(solver, solvers.Rodas5P) else {
        "rtol": 1e-6, "atol": 1e-10}
    dae = solvers.solve(robertson_dae, jnp.array([1.0, 0.0, 0.0]), ROB_TS, K_ROBERTSON,
                        solver=solver, mass_matrix=ROB_MASS, **tol)
    assert bool(dae.success)
    # The algebraic equation holds to round-off at every saved time.
    assert np.max(np.abs(np.asarray(dae.ys).sum(axis=1) - 1.0)) < 1e-10
    scale = np.max(np.abs(robertson_reference), axis=0)
    err = np.max(np.abs(np.asarray(dae.ys) - robertson_reference), axis=0) / scale
    assert np.all(err < 1e-4), err


def test_dae_gradients_match_ode_gradients():
    """Forward sensitivities through the DAE (block mass matrix on the augmented state)
    equal those of the equivalent ODE."""
    def final(f, mass):
        def run(k):
            return solvers.solve(f, jnp.array([1.0, 0, 0]), ROB_TS, k, solver=solvers.Rodas5P(),
                                 rtol=1e-9, atol=1e-13, mass_matrix=mass).ys[-1]
        return jax.jacrev(run)(K_ROBERTSON)

    np.testing.assert_allclose(final(robertson_dae, ROB_MASS), final(robertson, None),
                               rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"u0": jnp.array([1.0, 0.0, 0.1])}, "inconsistent initial conditions"),
        ({"mass_matrix": jnp.eye(2)}, "mass_matrix must be a square"),
        ({"solver": solvers.Tsit5()}, "mass_matrix needs a Rosenbrock solver"),
    ],
)
def test_dae_bad_input(kwargs, match):
    call = {"u0": jnp.array([1.0, 0.0, 0.0]), "mass_matrix": ROB_MASS,
            "solver": solvers.Rodas5P()} | kwargs
    with pytest.raises(ValueError, match=match):
        solvers.solve(robertson_dae, call.pop("u0"), ROB_TS, K_ROBERTSON, **call)


def test_traced_inconsistent_start_fails_the_solve():
    """Under vmap (and with a traced mass matrix) u0 cannot be checked before the solve.
    The Rosenbrock step used to project an inconsistent start onto the constraint and
    report success (y1 + y2 + y3 = 1.5 came out as a trajectory summing to 1); now that
    member fails with INCONSISTENT and NaN values, and its neighbour is untouched."""
    ts = jnp.array([0.0, 1e-3, 1e-2])
    u0s = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.5]])

    def run(u0, mass):
        return solvers.solve(robertson_dae, u0, ts, K_ROBERTSON, solver=solvers.Rodas5P(),
                             mass_matrix=mass)

    sols = jax.vmap(run, in_axes=(0, None))(u0s, ROB_MASS)
    assert np.asarray(sols.status).tolist() == [solvers.Status.SUCCESS, solvers.Status.INCONSISTENT]
    assert np.all(np.isnan(np.asarray(sols.ys[1])))
    np.testing.assert_allclose(np.asarray(sols.ys[0]).sum(axis=1), 1.0, atol=1e-12)
    traced_mass = jax.jit(run)(u0s[1], jnp.asarray(ROB_MASS))
    assert int(traced_mass.status) == solvers.Status.INCONSISTENT
    assert "inconsistent" in solvers.status_message(int(traced_mass.status))


def test_index_two_system_is_rejected():
    # y1' = y2, 0 = y1 - sin t: y2 does not appear in the constraint (index 2).
    with pytest.raises(ValueError, match="not of index 1"):
        solvers.solve(lambda t, y, a: jnp.stack([y[1], y[0] - jnp.sin(t)]),
                      jnp.array([0.0, 1.0]), jnp.linspace(0.0, 1.0, 3),
                      solver=solvers.Rodas5P(), mass_matrix=jnp.diag(jnp.array([1.0, 0.0])))


# --- gradients through stiff solves ----------------------------------------------------


@pytest.fixture(scope="module")
def robertson_gradient_reference():
    """d y1(t=40) / d log k_i by Richardson central differences of scipy Radau at 1e-12."""
    def y1_at_40(logk):
        k = np.exp(logk)
        f = lambda t, y, i: [-k[0] * y[0] + k[2] * y[1] * y[2],  # noqa: E731
                             k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
                             k[1] * y[1] ** 2]
        return scipy_solve(f, [1.0, 0, 0], np.array([0.0, 40.0]), method="Radau",
                           rtol=1e-13, atol=1e-18)[-1, 0]

    return richardson_gradient(y1_at_40, np.log(np.asarray(K_ROBERTSON)), h=1e-2)


@pytest.mark.parametrize(("solver", "sensitivity"),
                         [(solvers.Rodas5P(), "forward"), (solvers.Rodas5P(), "reverse"),
                          (solvers.Rodas5P(), "adjoint"), (solvers.Auto(), "forward"),
                          (solvers.Auto(), "reverse")],
                         ids=["Rodas5P-forward", "Rodas5P-reverse", "Rodas5P-adjoint",
                              "Auto-forward", "Auto-reverse"])
def test_robertson_rate_gradients(solver, sensitivity, robertson_gradient_reference):
    def y1_at_40(logk):
        return solvers.solve(robertson, jnp.array([1.0, 0, 0]), jnp.array([0.0, 40.0]),
                             jnp.exp(logk), solver=solver, rtol=1e-10, atol=1e-14,
                             sensitivity=sensitivity).ys[-1, 0]

    grad = jax.grad(y1_at_40)(jnp.log(K_ROBERTSON))
    np.testing.assert_allclose(grad, robertson_gradient_reference, rtol=1e-5)


def test_backsolve_adjoint_fails_where_interpolating_adjoint_does_not(
        robertson_gradient_reference):
    """diffrax's BacksolveAdjoint re-solves the state backwards in time, which is unstable
    for a stiff system; the interpolating adjoint reads the state from the forward dense
    output and matches the reference."""
    import diffrax as dfx

    def backsolve(logk):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(robertson), solvers.Rodas5P(), 0.0, 40.0, None, jnp.array([1.0, 0, 0]),
            args=jnp.exp(logk), saveat=dfx.SaveAt(t1=True),
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-14),
            adjoint=dfx.BacksolveAdjoint(), max_steps=20_000, throw=False)
        return sol.ys[-1, 0]

    logk = jnp.log(K_ROBERTSON)
    wrong = np.asarray(jax.grad(backsolve)(logk))
    rel = np.abs(wrong / robertson_gradient_reference - 1)
    assert not np.all(np.isfinite(wrong)) or np.max(rel) > 1e-2, wrong

    def interpolating(logk):
        return solvers.solve(robertson, jnp.array([1.0, 0, 0]), jnp.array([0.0, 40.0]),
                             jnp.exp(logk), solver=solvers.Rodas5P(), rtol=1e-10, atol=1e-14,
                             sensitivity="adjoint").ys[-1, 0]

    np.testing.assert_allclose(jax.grad(interpolating)(logk), robertson_gradient_reference,
                               rtol=1e-5)


@pytest.mark.parametrize("solver", [solvers.Rodas5P(), solvers.Rosenbrock23()],
                         ids=["Rodas5P", "Rosenbrock23"])
def test_rosenbrock_backwards_in_time(solver):
    """diffrax integrates backwards by flipping the sign of dt; a stiff linear problem
    solved from t=1 down to t=0 matches the matrix exponential."""
    import diffrax as dfx

    a = jnp.array([[-1e4, 0.0], [1.0, -1.0]])
    tol = 1e-8 if isinstance(solver, solvers.Rodas5P) else 1e-5  # 2nd order: looser
    sol = dfx.diffeqsolve(dfx.ODETerm(lambda t, u, a: -a.T @ u), solver, 1.0, 0.0, None,
                          jnp.ones(2), args=a,
                          stepsize_controller=dfx.PIDController(rtol=tol, atol=tol * 1e-4))
    exact = scipy.linalg.expm(np.asarray(a).T) @ np.ones(2)  # u(0) = exp(A^T) u(1)
    np.testing.assert_allclose(sol.ys[-1], exact, rtol=100 * tol)
    # Stable, so few steps (a sign error here makes the step size collapse instead).
    assert int(sol.stats["num_steps"]) < 300


@pytest.mark.parametrize("n", [1, 3, 12, 13])
def test_stage_linear_solve_matches_lapack(n):
    """The unrolled pivoted inverse (n <= SMALL_SYSTEM) and the LAPACK path agree with
    numpy on a matrix that needs pivoting (zero leading diagonal) and is ill-conditioned."""
    from bayes_ude.solvers._rosenbrock import AbstractRosenbrock

    rng = np.random.default_rng(n)
    jac = rng.normal(size=(n, n)) * np.logspace(0, 6, n)[:, None]
    if n > 1:
        jac[0, 0] = 1.0 / 0.1  # W[0, 0] = 1 / h_gamma - J[0, 0] = 0: pivoting required
    rhs = rng.normal(size=n)
    solve_w = AbstractRosenbrock._linear_solver(None, jnp.asarray(jac), 0.1)
    w = np.eye(n) / 0.1 - jac
    expected = np.linalg.solve(w, rhs)
    got = np.asarray(solve_w(jnp.asarray(rhs)))
    cond = np.linalg.cond(w)
    assert np.linalg.norm(got - expected) <= 1e3 * cond * 2.2e-16 * np.linalg.norm(expected)
