"""The optimiser layer of the maximum-likelihood fits: BFGS, Lindstrom–Bates, covariance.

Outer step: BFGS with a backtracking line search on the unconstrained parameter vector
(theta, the Cholesky factor of omega with a log diagonal, log sigma), each evaluation the
population objective of :mod:`._likelihood` with every subject's EBE; run compiled in
chunks between which :mod:`._estimate` updates the progress bar and honours Ctrl-C.
Lindstrom–Bates (R's ``nlme``) alternates a penalised nonlinear least-squares step and a
linear mixed-effects step on the linearised model. The covariance step takes central
differences of the exact gradient, from the same compiled program.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._batching import replicated_sharding
from .._compile import ITERATIVE, ONE_OFF, filter_jit
from ._buckets import map_subjects
from ._error import Additive
from ._likelihood import SubjectLikelihood, chol_logdet, newton, population_objective
from ._model import PopulationModel


class Problem(eqx.Module):
    model: PopulationModel = eqx.field(static=True)
    method: str = eqx.field(static=True)
    free: tuple[int, ...] = eqx.field(static=True)  # indices of estimated entries of u
    u_fixed: jax.Array
    population: object
    devices: tuple | None = eqx.field(static=True, default=None)
    # the subjects' size groups (._buckets; None: padded to the largest subject)
    buckets: object = eqx.field(static=True, default=None)

    @property
    def compile_quickly(self) -> bool:  # bayes_ude._compile
        return self.model.compile_quickly

    def full(self, x):
        return self.u_fixed.at[np.asarray(self.free, int)].set(x)

    def value(self, x, eta_start):
        return population_objective(self.model, self.method, self.full(x), self.population,
                                     eta_start, self.devices, self.buckets)


class _BFGS(NamedTuple):
    """State of the outer quasi-Newton iteration (dense BFGS on the inverse Hessian)."""

    x: jax.Array
    value: jax.Array
    grad: jax.Array
    eta: jax.Array  # EBEs at x (the next inner solves start from them)
    inv_hessian: jax.Array
    iteration: jax.Array
    done: jax.Array


def bfgs_init(x, eta, devices=None):
    # explicit dtypes: a weakly typed leaf would make the next call compile again; built
    # in numpy (an eager jnp operation is a small compilation of its own, at start-up)
    x = np.asarray(x)
    # eta too: under several processes (jax.distributed) a fit's EBEs are a global array,
    # replicated over every process's devices, which device_put cannot take as it is
    eta = np.asarray(eta)
    dtype = x.dtype
    # placed as run_chunk's outputs will be (replicated over the subjects' devices), so
    # that its second call does not compile again
    return jax.device_put(_BFGS(x, np.asarray(np.inf, dtype), np.zeros_like(x), eta,
                                np.eye(x.size, dtype=dtype), np.asarray(0, np.int64),
                                np.asarray(False)),
                          replicated_sharding(devices) if devices else None)


@filter_jit(quick_below=ITERATIVE)
def run_chunk(problem: Problem, state: _BFGS, n_iter, tol):
    """Up to ``n_iter`` BFGS iterations with a backtracking (Armijo) line search.

    One function evaluation (value, gradient and EBEs together) appears once in the
    compiled program: the first iteration of a fresh state just evaluates at ``x``.
    """
    if getattr(problem.model.structural, "outer_gradient", "reverse") == "forward":
        def evaluate(x, eta):
            # one directional derivative per parameter (see StructuralModel.outer_gradient)
            f, g, eta_new = jax.vmap(lambda v: jax.jvp(
                lambda y: problem.value(y, eta), (x,), (v,), has_aux=True))(
                jnp.eye(x.size, dtype=x.dtype))
            return f[0], g, eta_new[0]
    else:
        value_and_grad = jax.value_and_grad(problem.value, has_aux=True)

        def evaluate(x, eta):
            (f, eta_new), g = value_and_grad(x, eta)
            return f, g, eta_new

    def cond(s):
        return (s.iteration < n_iter) & ~s.done

    def body(s: _BFGS):
        fresh = ~jnp.isfinite(s.value)
        direction = -s.inv_hessian @ s.grad
        descent = s.grad @ direction < 0
        # not a descent direction: restart from steepest descent
        direction = jnp.where(descent, direction, -s.grad / jnp.maximum(
            1.0, jnp.linalg.norm(s.grad)))
        direction = jnp.where(fresh, 0.0, direction)
        slope = s.grad @ direction

        def ls_cond(c):
            t, f, _, _, k = c
            ok = jnp.isfinite(f) & (fresh | (f <= s.value + 1e-4 * t * slope))
            return ~ok & (k < 30)

        def ls_body(c):
            t, _, _, _, k = c
            t = 0.5 * t
            f, g, eta = evaluate(s.x + t * direction, s.eta)
            return t, f, g, eta, k + 1

        # start at t = 2 with a failing value: the first pass evaluates at t = 1
        nan = jnp.asarray(jnp.nan, s.value.dtype)
        t, f, g, eta, _ = jax.lax.while_loop(
            ls_cond, ls_body, (2.0, nan, jnp.zeros_like(s.grad), s.eta, 0))
        accepted = jnp.isfinite(f) & (fresh | (f <= s.value + 1e-4 * t * slope))
        step = t * direction
        y = g - s.grad
        sy = step @ y
        # first update: scale the identity to the curvature seen (Nocedal & Wright 6.20)
        h = jnp.where(s.iteration <= 1, jnp.eye(step.size) * sy / jnp.maximum(y @ y, 1e-300),
                      s.inv_hessian)
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        eye = jnp.eye(step.size)
        updated = (eye - rho * jnp.outer(step, y)) @ h @ (eye - rho * jnp.outer(y, step)) \
            + rho * jnp.outer(step, step)
        # keep the old matrix when the curvature condition fails (sy <= 0)
        good = accepted & ~fresh & (sy > 1e-12 * jnp.linalg.norm(step) * jnp.linalg.norm(y))
        inv_h = jnp.where(good, updated, s.inv_hessian)
        converged = jnp.max(jnp.abs(g)) < tol
        stalled = ~fresh & accepted & (jnp.abs(s.value - f) <= 1e-12 * (1.0 + jnp.abs(f))) \
            & (jnp.max(jnp.abs(step)) <= 1e-10)
        new = _BFGS(
            x=jnp.where(accepted, s.x + step, s.x), value=jnp.where(accepted, f, s.value),
            grad=jnp.where(accepted, g, s.grad), eta=jnp.where(accepted, eta, s.eta),
            inv_hessian=inv_h, iteration=s.iteration + 1,
            done=(accepted & converged) | stalled | ~accepted)
        return new

    return jax.lax.while_loop(cond, body, state._replace(iteration=jnp.asarray(0, int),
                                                         done=jnp.asarray(False)))


@filter_jit(quick_below=ONE_OFF)
def natural_summary(problem: Problem, x):
    """At ``x``: the full unconstrained vector, the natural-scale parameters, the L2
    penalty and the Jacobian of the natural parameters in ``x`` (for the covariance
    step) -- one compiled program instead of a dozen eager operations."""
    def natural(y):
        return problem.model.natural(problem.full(y))

    u = problem.full(x)
    return (u, natural(x), problem.model.penalty(problem.model.unpack(u)[0]),
            jax.jacfwd(natural)(x))


class _PNLS(eqx.Module):
    """Penalised nonlinear least squares over theta (Lindstrom–Bates step 1): omega and
    sigma fixed, the random effects at their conditional modes (envelope theorem: the
    gradient needs no derivative of the modes)."""

    model: PopulationModel = eqx.field(static=True)
    free: tuple[int, ...] = eqx.field(static=True)
    u: jax.Array
    population: object
    devices: tuple | None = eqx.field(static=True, default=None)
    buckets: object = eqx.field(static=True, default=None)

    def value(self, x, eta_start):
        u = self.u.at[np.asarray(self.free, int)].set(x)

        def one(item, u):
            subject, e0 = item
            theta, omega, sigma = self.model.unpack(u)
            subj = SubjectLikelihood(self.model, "foce", theta, omega, sigma, subject)
            eta, _ = newton(jax.lax.stop_gradient(subj).conditional,
                             jax.lax.stop_gradient(e0))
            eta = jax.lax.stop_gradient(eta)
            return subj.conditional(eta), eta

        values, etas = map_subjects(one, self.population, eta_start, u,
                                    buckets=self.buckets, devices=self.devices)
        return jnp.sum(values), etas


class _LME(eqx.Module):
    """The linear mixed-effects likelihood of the model linearised at (theta, eta_hat)
    (Lindstrom–Bates step 2): ``w = X theta + Z eta + e``."""

    model: PopulationModel = eqx.field(static=True)
    free: tuple[int, ...] = eqx.field(static=True)
    u: jax.Array
    x_mat: jax.Array  # (S, No, p)
    z_mat: jax.Array  # (S, No, q)
    w: jax.Array  # (S, No)
    mask: jax.Array

    def value(self, x, eta):
        u = self.u.at[np.asarray(self.free, int)].set(x)
        theta, omega, sigma = self.model.unpack(u)
        beta = self.model._theta_vector(theta)
        s2 = self.model.error_models[0].variance(jnp.zeros(()), sigma)

        def one(xm, zm, w, mask):
            zm = jnp.where(mask[:, None], zm, 0.0)
            v = zm @ omega @ zm.T + jnp.diag(jnp.where(mask, s2, 1.0))
            chol, logdet = chol_logdet(v)
            z = jax.scipy.linalg.solve_triangular(chol, jnp.where(mask, w - xm @ beta, 0.0),
                                                  lower=True)
            return logdet + z @ z

        return jnp.sum(jax.vmap(one)(self.x_mat, self.z_mat, self.w, self.mask)), eta


@filter_jit(quick_below=ITERATIVE)
def _linearise(model, u, population, eta):
    theta, _, sigma = model.unpack(u)
    beta = model._theta_vector(theta)

    def one(subject, e):
        def f(b, e):
            return model.predict(model._theta_from_vector(b), e, subject)

        fv = f(beta, e)
        xm = jax.jacfwd(f, 0)(beta, e)
        zm = jax.jacfwd(f, 1)(beta, e)
        return xm, zm, subject.obs_dv - fv + xm @ beta + zm @ e

    xm, zm, w = jax.vmap(one)(population, eta)
    return xm, zm, w


def _minimise(problem, x, eta, tol, max_iter=1000):
    # the PNLS step maps its subjects over devices (its outputs placed there); the LME
    # step's linearised subjects are one vmap on the default device
    state = bfgs_init(x, eta, getattr(problem, "devices", None))
    done = 0
    while done < max_iter:
        state = run_chunk(problem, state, jnp.asarray(100, int), jnp.asarray(tol, float))
        done += int(state.iteration)
        if bool(state.done):
            break
    return state


def lindstrom_bates(problem: Problem, x, eta, max_iter, tol, bar):
    """R's ``nlme`` algorithm: alternate PNLS (theta and the modes, omega and sigma fixed)
    and an LME step (omega, sigma and theta on the linearised model) to a fixed point."""
    model = problem.model
    if set(model.error_models) != {0} or not isinstance(model.error_models[0], Additive):
        raise ValueError("method 'lb' (Lindstrom-Bates, as R's nlme) needs one additive "
                         "error model")
    free = np.asarray(problem.free, int)
    n_th = model.n_theta
    theta_free = tuple(int(i) for i in free if i < n_th)
    u = problem.full(x)
    iterations = 0
    for _ in range(max_iter):
        pnls = _PNLS(model, theta_free, u, problem.population, problem.devices, problem.buckets)
        st = _minimise(pnls, u[np.asarray(theta_free, int)], eta, tol)
        eta = st.eta
        u_pnls = u.at[np.asarray(theta_free, int)].set(st.x)
        xm, zm, w = _linearise(model, u_pnls, problem.population, eta)
        lme = _LME(model, problem.free, u_pnls, xm, zm, w, jnp.asarray(problem.population.obs_mask))
        st = _minimise(lme, u_pnls[free], eta, tol)
        # the LME step's theta is the GLS estimate on the linearisation; nlme's reported
        # fixed effects are the next PNLS step's, which the loop computes on convergence
        u_new = u_pnls.at[free].set(st.x)
        change = float(jnp.max(jnp.abs(u_new - u)))
        u = u_new
        iterations += 1
        bar.update(1)
        bar.set_postfix(change=f"{change:.2g}")
        if change < 1e-9:
            break
    # final PNLS at the converged omega and sigma
    pnls = _PNLS(model, theta_free, u, problem.population, problem.devices, problem.buckets)
    st = _minimise(pnls, u[np.asarray(theta_free, int)], eta, tol)
    u = u.at[np.asarray(theta_free, int)].set(st.x)
    return u[free], st.eta, iterations



def _singular_directions(w, v, names) -> str:
    """Which parameters the Hessian's singular or negative directions (eigenvalues ``w``,
    eigenvectors the columns of ``v``) move: each direction's parameters with at least
    10 % of it (squared components), for the three smallest eigenvalues at most, e.g.
    ``"; flat or curving down along tcl_a (50 %) + tcl_b (50 %)"``."""
    bad = np.flatnonzero(w <= 1e-7 * np.abs(w).max())[:3]
    parts = []
    for k in bad:
        share = v[:, k] ** 2
        top = [j for j in np.argsort(share)[::-1] if share[j] >= 0.1][:4]
        parts.append(" + ".join(f"{names[j]} ({100 * share[j]:.0f} %)" for j in top))
    return "; flat or curving down along " + "; and along ".join(parts) if parts else ""


def covariance_step(problem: Problem, x, eta, names, free, jac):
    """Standard errors from the observed information (Hessian of −LL = ½ OFV); ``jac``:
    the Jacobian of the natural-scale parameters in ``x``, ``(n_natural, p)``."""
    p = x.size
    x = np.asarray(x)  # the arithmetic here in numpy: eager jnp would compile each op
    # central differences of the exact gradient; steps relative to each parameter's size
    # (1e-4 balances truncation error O(h^2) against the inner solver's tolerance)
    h = 1e-4 * (1.0 + np.abs(x))
    steps = np.diag(h)
    # gradients from the compiled outer iteration itself (a fresh state's first
    # iteration only evaluates), so the covariance step compiles nothing new
    grads = np.stack([
        np.asarray(run_chunk(problem, bfgs_init(point, eta, problem.devices),
                              np.asarray(1, np.int64),
                              np.asarray(0.0)).grad)
        for point in np.concatenate([x + steps, x - steps])])
    hess = (grads[:p] - grads[p:]) / (2.0 * h[:, None])
    hess = 0.5 * (hess + hess.T)
    info = 0.5 * np.asarray(hess)  # OFV = -2 LL
    se = pd.Series(np.nan, index=names)
    finite = bool(np.all(np.isfinite(info)))
    w, v = np.linalg.eigh(info) if finite else (np.full(p, np.nan), None)
    # finite differences resolve eigenvalues down to ~1e-7 of the largest: anything below
    # is a singular (non-identifiable) direction, not information
    if not finite or w.min() <= 1e-7 * np.abs(w).max():
        where = ("" if not finite else
                 _singular_directions(w, v, [names[i] for i in np.asarray(free, int)]))
        warnings.warn("covariance step: the Hessian of the objective is not positive definite "
                      f"or numerically singular (eigenvalues {w.min():.3g} to {w.max():.3g})"
                      f"{where}; standard errors are not available. "
                      "The model may be over-parameterised or the fit not at a minimum.",
                      stacklevel=3)
        return None, se, None
    cov_x = np.linalg.inv(info)
    cov = jac @ cov_x @ jac.T
    se[:] = np.sqrt(np.clip(np.diag(cov), 0, None))
    fixed_mask = np.ones(len(names), bool)
    fixed_mask[free] = False
    se[fixed_mask] = np.nan
    est_names = [names[i] for i in free]
    cov_df = pd.DataFrame(cov[np.ix_(free, free)], index=est_names, columns=est_names)
    return cov_df, se, cov_x
