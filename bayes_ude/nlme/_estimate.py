"""Maximum-likelihood estimation: FO, FOCE, FOCEI and Laplace.

For subject ``i`` with observations ``y`` (on the error model's scale), predictions
``f(eta)``, residual variances ``R(eta)`` and ``eta ~ N(0, Omega)``, the conditional
objective is ``l(eta) = sum_j [log R_j + (y_j - f_j)^2 / R_j] + eta' Omega^-1 eta`` (−2 log
of the joint density without constants). With ``eta_hat`` its minimiser (the empirical
Bayes estimate) and ``G = df/deta`` there, the −2 log-likelihood of the subject is
approximated by

* **FO**: ``y ~ N(f(0), G0 Omega G0' + R(0))`` (linearised at ``eta = 0``);
* **FOCE**: linearised at ``eta_hat``, ``y ~ N(f(eta_hat) - G eta_hat, G Omega G' + R(0))``
  with the residual variance at the population prediction (no interaction);
* **FOCEI**: ``l(eta_hat) + log|Omega| + log|G' R^-1 G + Omega^-1|`` with ``R`` at
  ``eta_hat`` (interaction);
* **Laplace**: as FOCEI with the exact Hessian ``½ d²l/deta²`` in place of the
  Gauss–Newton one.

Each adds ``n_obs log(2 pi)`` for −2LL; NONMEM's objective function value (OFV) leaves that
constant out. For a homoscedastic (additive) error FOCE and FOCEI coincide, and both equal
the Lindstrom–Bates approximation that R's ``nlme`` maximises.

Inner step: ``eta_hat`` for all subjects at once (``vmap``) by Newton's method with an
eigenvalue-safeguarded Hessian and backtracking line search, warm-started from the previous
outer iterations' estimates. Its dependence on the population parameters is differentiated
implicitly: one Newton step from the converged (gradient-stopped) estimate has exactly the
implicit-function derivative. Outer step: BFGS with a backtracking line search on the
unconstrained parameter vector, run compiled in chunks between which the progress bar
updates and Ctrl-C is honoured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import _sigint
from .._batching import batch_map, replicated_sharding, resolve_devices
from .._compile import filter_jit
from ._error import Additive
from ._model import PopulationModel

__all__ = ["FitResult", "fit", "objective"]

METHODS = ("fo", "foce", "focei", "laplace", "lb")
#: The Bayesian methods of :func:`fit` (run by :func:`bayes_ude.nlme.fit_bayes`).
SAMPLERS = ("nuts", "sgld", "psgld", "sghmc")
_LOG_2PI = float(np.log(2.0 * np.pi))

# Bounds of FitResult.degenerate. Built-in models (and the estimate table) take typical
# values named ``t...`` on the log scale and random effects as exponential (log-normal).
#: A log-scale typical value beyond +-20 is a factor e^20 (5e8) from 1 in the data's units.
DEGENERATE_LOG_THETA = 20.0
#: A between-subject variance above 100 on the log scale (SD 10) makes one SD of eta a
#: factor e^10 (2e4); populations reported in PK lie below 4 (SD 2).
DEGENERATE_OMEGA = 100.0
#: A residual SD above 100 (proportional and exponential: 100 = 10 000 % CV; additive:
#: 100 times the largest |DV|) explains nothing.
DEGENERATE_SIGMA = 100.0
#: −2LL per observation is log(2 pi R) + r^2 / R; at a maximum of the likelihood with sigma
#: free, r^2 / R averages about 1 and log(2 pi R) is a few tens at most (R from 1e-12 to
#: 1e12), so 1e4 per observation means residuals pinned at a fixed variance: e.g. the
#: variance floor of a proportional error where the prediction is 0 (a pre-dose sample).
DEGENERATE_MINUS2LL_PER_OBS = 1e4


def _pause_for_tests(stage: str) -> None:
    """Testing hook, not for users: with ``BAYES_UDE_TEST_PAUSE=<stage>`` in the environment,
    say so on stderr and sleep (60 s at most) at that stage, so that a test can send SIGINT
    to a ``bayes-ude`` process at a known moment. Stages: ``fit`` (between chunks of outer
    iterations), ``covariance`` (before the covariance step), ``writing`` (in ``bayes-ude pk
    fit``, after the estimates are saved, before diagnostics, VPC and plots)."""
    if os.environ.get("BAYES_UDE_TEST_PAUSE") == stage:
        print(f"bayes-ude: BAYES_UDE_TEST_PAUSE: paused at {stage}", file=sys.stderr,
              flush=True)
        time.sleep(60.0)


def json_safe(value, where: str = "", replaced: list[str] | None = None):
    """``value`` (dicts, lists, numbers, strings) with every non-finite float replaced by
    ``None`` (JSON has no NaN or Infinity) and numpy scalars made Python ones; the path of
    each replaced number (e.g. ``"theta.tka"``) is appended to ``replaced``."""
    if isinstance(value, Mapping):
        return {k: json_safe(v, f"{where}.{k}" if where else str(k), replaced)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, f"{where}[{i}]", replaced) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if replaced is not None:
            replaced.append(f"{where} ({value})")
        return None
    return value


# --------------------------------------------------------------------------- inner step
def _newton(fun, x0, max_iter: int = 100, tol: float = 1e-9):
    """Minimise ``fun`` from ``x0`` by safeguarded Newton with backtracking.

    Returns the minimiser and the Hessian there. Stops when the largest gradient component
    is below ``tol`` (the objective is a −2 log density, so 1e-9 is far below any
    meaningful change), the line search finds no decrease, or after ``max_iter``
    iterations. Each program piece (gradient, Hessian, objective) appears once in the
    compiled loop: compile time is what users wait for.
    """
    grad = jax.grad(fun)
    hess = jax.hessian(fun)
    n = x0.size

    def cond(state):
        i, _, _, _, done = state
        return (i < max_iter) & ~done

    def body(state):
        i, x, fx, _, _ = state
        g = grad(x)
        h = hess(x)
        w, v = jnp.linalg.eigh(0.5 * (h + h.T))
        # a non-convex region gets a positive-definite model (eigenvalues floored)
        w = jnp.maximum(jnp.abs(w), 1e-8 * jnp.maximum(1.0, jnp.max(jnp.abs(w))))
        step = -v @ ((v.T @ g) / w)
        slope = g @ step
        small = jnp.max(jnp.abs(g)) < tol

        def accept(t, f_new):
            return f_new <= fx + 1e-4 * t * slope

        def bcond(b):
            t, f_new, k = b
            return (k == 0) | ((k < 40) & ~accept(t, f_new))

        def bbody(b):
            t, _, k = b
            t = jnp.where(k == 0, 1.0, 0.5 * t)
            return t, fun(x + t * step), k + 1

        t, f_new, _ = jax.lax.while_loop(bcond, bbody, (1.0, fx, 0))
        ok = accept(t, f_new) & ~small
        x_new = jnp.where(ok, x + t * step, x)
        f_new = jnp.where(ok, f_new, fx)
        stalled = ~ok | (fx - f_new <= 1e-15 * (1.0 + jnp.abs(fx)))
        return i + 1, x_new, f_new, h, small | stalled

    state = (0, x0, fun(x0), jnp.zeros((n, n), x0.dtype), jnp.asarray(False))
    _, x, _, h, _ = jax.lax.while_loop(cond, body, state)
    return x, h


def _masked(mask, y, f, r):
    return jnp.where(mask, y - f, 0.0), jnp.where(mask, r, 1.0)


def _chol_logdet(a):
    chol = jnp.linalg.cholesky(a)
    return chol, 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))


class _Subject(eqx.Module):
    """Pieces of one subject's likelihood at given population parameters."""

    model: PopulationModel = eqx.field(static=True)
    method: str = eqx.field(static=True)
    theta: dict
    omega: jax.Array
    sigma: dict
    subject: object

    def terms(self, eta):
        f = self.model.predict(self.theta, eta, self.subject)
        return self.model.residual(f, self.sigma, self.subject)

    def conditional(self, eta, r_fixed=None):
        """−2 log p(y, eta) without constants (``r_fixed``: variances at eta = 0 for FOCE)."""
        y, f, r = self.terms(eta)
        if r_fixed is not None:
            r = r_fixed
        res, r = _masked(self.subject.obs_mask, y, f, r)
        chol = jnp.linalg.cholesky(self.omega)
        z = jax.scipy.linalg.solve_triangular(chol, eta, lower=True)
        data = jnp.where(self.subject.obs_mask, jnp.log(r) + res**2 / r, 0.0)
        return jnp.sum(data) + z @ z

    def r_population(self):
        return self.terms(jnp.zeros(self.model.n_eta))[2]

    def inner_objective(self):
        """The function whose minimiser is the EBE under this method."""
        if self.method == "foce":
            r0 = self.r_population()
            return lambda eta: self.conditional(eta, r0)
        return self.conditional

    def ebe(self, eta_start):
        fun = self.inner_objective()
        frozen = jax.lax.stop_gradient(self)  # the search itself is not differentiated
        eta_star, h = jax.lax.stop_gradient(
            _newton(frozen.inner_objective(), jax.lax.stop_gradient(eta_start)))
        # One Newton step from the converged estimate, differentiable in the parameters
        # through the gradient only: its value is eta_star (g = 0 there) and its
        # derivative -H^-1 dg/dparams is exactly the implicit-function derivative. The
        # Hessian (from the search's last iterate, which is eta_star when the search
        # stopped on a small gradient) is a constant: its derivative would multiply g = 0,
        # and leaving it out keeps third derivatives of the model out of the program.
        g = jax.grad(fun)(eta_star)
        return eta_star - jnp.linalg.solve(h, g)

    def linearised(self, eta, r):
        """−2LL of ``y ~ N(f(eta) - G eta, G Omega G' + R)`` (FO at eta = 0, FOCE at the EBE)."""
        mask = self.subject.obs_mask
        y, f, _ = self.terms(eta)
        jac = jax.jacfwd(lambda e: self.terms(e)[1])(eta)
        jac = jnp.where(mask[:, None], jac, 0.0)
        res, r = _masked(mask, y, f - jac @ eta, r)
        v = jac @ self.omega @ jac.T + jnp.diag(r)
        chol, logdet = _chol_logdet(v)
        z = jax.scipy.linalg.solve_triangular(chol, res, lower=True)
        return logdet + z @ z

    def minus2ll(self, eta_start):
        """(−2LL without the 2 pi constant, EBE) for this subject."""
        if self.method == "fo":
            eta0 = jnp.zeros(self.model.n_eta)
            return self.linearised(eta0, self.r_population()), eta0
        eta = self.ebe(eta_start)
        if self.method == "foce":
            return self.linearised(eta, self.r_population()), eta
        _, logdet_omega = _chol_logdet(self.omega)
        base = self.conditional(eta) + logdet_omega
        if self.method == "focei":
            mask = self.subject.obs_mask
            _, _, r = self.terms(eta)
            jac = jax.jacfwd(lambda e: self.terms(e)[1])(eta)
            jac = jnp.where(mask[:, None], jac, 0.0)
            r = jnp.where(mask, r, 1.0)
            info = jac.T @ (jac / r[:, None]) + jnp.linalg.inv(self.omega)
        else:  # laplace
            info = 0.5 * jax.hessian(self.conditional)(eta)
        _, logdet_info = _chol_logdet(0.5 * (info + info.T))
        return base + logdet_info, eta


def _population_objective(model, method, u, population, eta_start, devices=None):
    """The OFV at ``u`` and every subject's EBE: subjects in blocks, over ``devices``
    (:func:`bayes_ude._batching.batch_map`: a vectorised inner Newton loop runs as long
    as its slowest subject, so one loop over all subjects would cost more than linearly)."""

    def one(item, u):
        subject, e0 = item
        theta, omega, sigma = model.unpack(u)
        return _Subject(model, method, theta, omega, sigma, subject).minus2ll(e0)

    values, etas = batch_map(one, (population, eta_start), u, devices=devices)
    return jnp.sum(values) + model.penalty(model.unpack(u)[0]), etas


def objective(model: PopulationModel, population, method: str = "focei", u=None, *,
              devices=None):
    """OFV (−2LL without the ``n_obs log 2 pi`` constant) at ``u`` (default: initial values);
    ``devices`` as in :func:`fit`."""
    _check_method(method)
    if method == "lb":
        method = "foce"  # the likelihood Lindstrom-Bates reports
    u = jnp.asarray(model.initial_vector() if u is None else u, float)
    eta0 = jnp.zeros((population.n_subjects, model.n_eta))
    return _objective_jit(model.specialised(population), method, u, population, eta0,
                          tuple(resolve_devices(devices)))


@filter_jit
def _objective_jit(model, method, u, population, eta0, devices):
    return _population_objective(model, method, u, population, eta0, devices)[0]


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------- outer step
class _Problem(eqx.Module):
    model: PopulationModel = eqx.field(static=True)
    method: str = eqx.field(static=True)
    free: tuple[int, ...] = eqx.field(static=True)  # indices of estimated entries of u
    u_fixed: jax.Array
    population: object
    devices: tuple | None = eqx.field(static=True, default=None)

    def full(self, x):
        return self.u_fixed.at[np.asarray(self.free, int)].set(x)

    def value(self, x, eta_start):
        return _population_objective(self.model, self.method, self.full(x), self.population,
                                     eta_start, self.devices)


class _BFGS(NamedTuple):
    """State of the outer quasi-Newton iteration (dense BFGS on the inverse Hessian)."""

    x: jax.Array
    value: jax.Array
    grad: jax.Array
    eta: jax.Array  # EBEs at x (the next inner solves start from them)
    inv_hessian: jax.Array
    iteration: jax.Array
    done: jax.Array


def _bfgs_init(x, eta, devices=None):
    # explicit dtypes: a weakly typed leaf would make the next call compile again; built
    # in numpy (an eager jnp operation is a small compilation of its own, at start-up)
    x = np.asarray(x)
    # eta too: under several processes (jax.distributed) a fit's EBEs are a global array,
    # replicated over every process's devices, which device_put cannot take as it is
    eta = np.asarray(eta)
    dtype = x.dtype
    # placed as _run_chunk's outputs will be (replicated over the subjects' devices), so
    # that its second call does not compile again
    return jax.device_put(_BFGS(x, np.asarray(np.inf, dtype), np.zeros_like(x), eta,
                                np.eye(x.size, dtype=dtype), np.asarray(0, np.int64),
                                np.asarray(False)),
                          replicated_sharding(devices) if devices else None)


@filter_jit
def _run_chunk(problem: _Problem, state: _BFGS, n_iter, tol):
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


@filter_jit
def _natural_summary(problem: _Problem, x):
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

    def value(self, x, eta_start):
        u = self.u.at[np.asarray(self.free, int)].set(x)

        def one(item, u):
            subject, e0 = item
            theta, omega, sigma = self.model.unpack(u)
            subj = _Subject(self.model, "foce", theta, omega, sigma, subject)
            eta, _ = _newton(jax.lax.stop_gradient(subj).conditional,
                             jax.lax.stop_gradient(e0))
            eta = jax.lax.stop_gradient(eta)
            return subj.conditional(eta), eta

        values, etas = batch_map(one, (self.population, eta_start), u, devices=self.devices)
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
            chol, logdet = _chol_logdet(v)
            z = jax.scipy.linalg.solve_triangular(chol, jnp.where(mask, w - xm @ beta, 0.0),
                                                  lower=True)
            return logdet + z @ z

        return jnp.sum(jax.vmap(one)(self.x_mat, self.z_mat, self.w, self.mask)), eta


@filter_jit
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
    state = _bfgs_init(x, eta, getattr(problem, "devices", None))
    done = 0
    while done < max_iter:
        state = _run_chunk(problem, state, jnp.asarray(100, int), jnp.asarray(tol, float))
        done += int(state.iteration)
        if bool(state.done):
            break
    return state


def _lindstrom_bates(problem: _Problem, x, eta, max_iter, tol, bar):
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
        pnls = _PNLS(model, theta_free, u, problem.population, problem.devices)
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
    pnls = _PNLS(model, theta_free, u, problem.population, problem.devices)
    st = _minimise(pnls, u[np.asarray(theta_free, int)], eta, tol)
    u = u.at[np.asarray(theta_free, int)].set(st.x)
    return u[free], st.eta, iterations


@dataclasses.dataclass
class FitResult:
    """The result of :func:`fit`.

    Attributes
    ----------
    method : ``"fo"``, ``"foce"``, ``"focei"`` or ``"laplace"``.
    minus2ll, ofv, aic, bic : −2 log-likelihood; OFV = −2LL − n_obs log(2 pi) (NONMEM's
        convention; with ``l2`` penalties in the model, OFV includes the penalty and −2LL
        does not); AIC and BIC from −2LL with the number of estimated parameters (BIC
        with ``log(n_obs)``).
    theta, omega, sigma : estimates (omega as a DataFrame over the random-effect names).
    estimates : Series of all natural-scale parameters (theta, omega elements, sigma).
    se : Series of standard errors (NaN where the covariance step failed or a parameter
        is fixed); ``covariance`` the full matrix (estimated parameters).
    eta : EBEs, a DataFrame subject x random effect; ``shrinkage`` eta-shrinkage (SD
        version, 1 − SD(eta_hat)/omega^(1/2)) per random effect.
    converged, iterations, seconds, message, interrupted.
    degenerate : why the estimates are a degenerate solution (property; empty if they are
        not): run-away estimates or a −2LL no real fit reaches (see its docstring).
    """

    method: str
    model: PopulationModel
    population: object
    u: np.ndarray
    minus2ll: float
    ofv: float
    aic: float
    bic: float
    n_obs: int
    n_parameters: int
    estimates: pd.Series
    se: pd.Series
    covariance: pd.DataFrame | None
    eta: pd.DataFrame
    converged: bool
    iterations: int
    seconds: float
    message: str = ""
    interrupted: bool = False
    fixed: tuple[str, ...] = ()
    history: list[float] = dataclasses.field(default_factory=list)
    # covariance of the estimated entries of the unconstrained vector ``u`` (None without
    # a covariance step); used to precondition SG-MCMC
    covariance_unconstrained: np.ndarray | None = None
    # the devices the subjects were split over (diagnostics use the same)
    devices: tuple | None = None

    # ---- views
    @property
    def theta(self) -> dict:
        return self.model.unpack(jnp.asarray(self.u))[0]

    @property
    def omega(self) -> pd.DataFrame:
        om = np.asarray(self.model.unpack(jnp.asarray(self.u))[1])
        names = list(self.model.eta_names)
        return pd.DataFrame(om, index=names, columns=names)

    @property
    def sigma(self) -> dict:
        return {k: float(v) for k, v in self.model.unpack(jnp.asarray(self.u))[2].items()}

    @property
    def rse(self) -> pd.Series:
        """Relative standard errors in % (of the natural-scale estimate)."""
        return 100.0 * self.se / self.estimates.abs()

    @property
    def degenerate(self) -> list[str]:
        """Reasons the estimates are a degenerate solution, empty if none: the optimiser
        may report convergence at estimates that ran away to absurd values, or at a −2LL
        that only records with a pinned variance give. Checked (bounds and their reasons
        at the ``DEGENERATE_*`` constants of this module): a non-finite −2LL or estimate;
        −2LL above ``DEGENERATE_MINUS2LL_PER_OBS`` per observation; a log-scale typical
        value (``t...``) beyond ±``DEGENERATE_LOG_THETA``; a between-subject variance
        above ``DEGENERATE_OMEGA``; a residual SD above ``DEGENERATE_SIGMA`` (additive: that
        many times the largest |DV|). Standard errors that are not available are not a
        reason by themselves (the covariance step warns about those)."""
        reasons = []
        if not np.isfinite(self.minus2ll):
            reasons.append(f"-2LL is {self.minus2ll}")
        elif self.minus2ll > DEGENERATE_MINUS2LL_PER_OBS * max(self.n_obs, 1):
            reasons.append(
                f"-2LL {self.minus2ll:.4g} is {self.minus2ll / max(self.n_obs, 1):.2g} per "
                f"observation (above {DEGENERATE_MINUS2LL_PER_OBS:g}: some residual variances "
                "are pinned, e.g. at the floor of a proportional error where the prediction is "
                "0)")
        bad = [k for k, v in self.estimates.items() if not np.isfinite(v)]
        if bad:
            reasons.append(f"non-finite estimates {bad}")
        for name in self.model.theta:
            value = float(self.estimates.get(name, 0.0))
            if name.startswith("t") and abs(value) > DEGENERATE_LOG_THETA:
                reasons.append(f"{name} = {value:.4g} (a log-scale typical value beyond "
                               f"±{DEGENERATE_LOG_THETA:g})")
        for eta in self.model.eta_names:
            value = float(self.estimates.get(f"omega_{eta}", 0.0))
            if value > DEGENERATE_OMEGA:
                reasons.append(f"omega_{eta} = {value:.4g} (a between-subject variance above "
                               f"{DEGENERATE_OMEGA:g} on the log scale)")
        mask = np.asarray(self.population.obs_mask)
        dv = np.abs(np.asarray(self.population.obs_dv))[mask]
        data_scale = float(dv.max()) if dv.size else 1.0
        for name in self.model.sigma_names:
            value = float(self.estimates[name])
            additive = name not in _dimensionless_sigma(self.model)
            limit = DEGENERATE_SIGMA * (data_scale if additive else 1.0)
            if value > limit:
                reasons.append(f"{name} = {value:.4g} (a residual SD above {limit:.4g}"
                               + (f", {DEGENERATE_SIGMA:g} times the largest |DV|)"
                                  if additive else ")"))
        return reasons

    @property
    def shrinkage(self) -> pd.Series:
        sd = self.eta.std(ddof=1)  # NONMEM's eta-shrinkage uses the sample SD of the EBEs
        return 1.0 - sd / np.sqrt(np.diag(self.omega.to_numpy()))

    def table(self) -> pd.DataFrame:
        """The estimate table: estimate, SE, RSE %, back-transformed value, BSV CV %,
        shrinkage % (nlmixr2 style). Log-scale typical values (names starting with ``t``
        and not of omega/sigma) are back-transformed with ``exp``."""
        rows = []
        omega = self.omega
        for name, est in self.estimates.items():
            se = self.se.get(name, np.nan)
            row = {"parameter": name, "estimate": est, "se": se,
                   "rse_pct": 100 * se / abs(est) if est != 0 else np.nan,
                   "back_transformed": np.nan, "bsv_cv_pct": np.nan, "shrinkage_pct": np.nan,
                   "fixed": name in self.fixed}
            if name in self.model.theta and name.startswith("t"):
                row["back_transformed"] = float(np.exp(est))
                eta = "eta_" + name[1:]
                if eta in omega.index:
                    var = omega.loc[eta, eta]
                    with np.errstate(over="ignore"):  # inf for a run-away variance
                        row["bsv_cv_pct"] = 100 * float(np.sqrt(np.expm1(var)))
                    row["shrinkage_pct"] = 100 * float(self.shrinkage[eta])
            if name.startswith("omega_") and name[6:] in omega.index:
                with np.errstate(over="ignore"):
                    row["bsv_cv_pct"] = 100 * float(np.sqrt(np.expm1(est)))
                row["shrinkage_pct"] = 100 * float(self.shrinkage[name[6:]])
            rows.append(row)
        return pd.DataFrame(rows).set_index("parameter")

    def summary(self) -> dict:
        """The JSON-able summary written by the ``bayes-ude pk fit`` command."""
        names = self.model.parameter_names()
        n_th = len(names) - len(self.model.omega.element_names()) - len(self.model.sigma_names)
        theta = {k: float(self.estimates[k]) for k in names[:n_th]}
        omega = {k[6:] if k.startswith("omega_") else k: float(self.estimates[k])
                 for k in self.model.omega.element_names()}
        return {
            "method": self.method, "minus2ll": self.minus2ll, "ofv": self.ofv, "aic": self.aic,
            "bic": self.bic, "n_obs": self.n_obs, "n_subjects": self.population.n_subjects,
            "padding_efficiency": self.population.padding_efficiency,
            "n_parameters": self.n_parameters, "theta": theta, "omega": omega,
            "sigma": self.sigma,
            "se": {k: (None if not np.isfinite(v) else float(v)) for k, v in self.se.items()},
            "shrinkage": {k: float(v) for k, v in self.shrinkage.items()},
            "converged": self.converged, "iterations": self.iterations,
            "seconds": self.seconds, "interrupted": self.interrupted, "message": self.message,
            "degenerate": self.degenerate,
        }

    def to_json(self, path=None) -> str:
        """The summary as JSON (non-finite numbers as ``null``), also written to ``path``."""
        text = json.dumps(json_safe(self.summary()), indent=2, allow_nan=False)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    # ---- diagnostics (see bayes_ude.nlme._diagnostics)
    def diagnostics(self, n_sim: int = 1000, key=None, devices=None) -> pd.DataFrame:
        """PRED, IPRED, RES, IRES, IWRES, WRES, CWRES, NPDE per observation (subjects over
        ``devices``, default the fit's)."""
        from ._diagnostics import diagnostics

        return diagnostics(self, n_sim, key, devices)

    def individual_parameters(self) -> pd.DataFrame:
        """EBEs and individual parameters per subject."""
        from ._diagnostics import individual_parameters

        return individual_parameters(self)

    def simulate(self, n: int = 100, key=None, population=None) -> np.ndarray:
        """Simulated observations ``(n, subjects, records)``."""
        from ._diagnostics import simulate

        return simulate(self, n, key, population)

    def log_predictive_density(self, population, method: str = "laplace") -> np.ndarray:
        """Per-subject ``log p(y_i | estimates)`` of (e.g. held-out) subjects, each
        subject's random effects integrated out by the Laplace approximation."""
        from ._bayes import subject_log_density

        return subject_log_density(self.model, self.u, population, method)

    def vpc(self, **kwargs) -> pd.DataFrame:
        """Visual predictive check table (see :func:`bayes_ude.nlme.vpc`)."""
        from ._diagnostics import vpc

        return vpc(self, **kwargs)

    def __repr__(self) -> str:
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            head = (f"NLME fit ({self.method.upper()}): {self.population.n_subjects} subjects, "
                    f"{self.n_obs} observations, {self.n_parameters} estimated parameters\n"
                    f"-2LL {self.minus2ll:.4f}  OFV {self.ofv:.4f}  AIC {self.aic:.4f}  "
                    f"BIC {self.bic:.4f}  ({'converged' if self.converged else 'NOT converged'}"
                    f"{' to a degenerate solution' if self.degenerate else ''}"
                    f", {self.iterations} iterations, {self.seconds:.2f} s)\n")
            return head + self.table().to_string()


def fit(
    model: PopulationModel,
    population,
    method: str = "focei",
    *,
    fixed: Sequence[str] | Mapping[str, float] = (),
    init: Mapping[str, float] | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    covariance: bool = True,
    progress: bool = True,
    chunk: int = 25,
    devices=None,
    **bayes,
) -> FitResult:
    """Maximum-likelihood fit of a population model.

    The outer iteration is BFGS with a backtracking line search on the unconstrained
    parameters (theta, Cholesky factor of omega with log diagonal, log sigma).

    Parameters
    ----------
    model : the :class:`PopulationModel`.
    population : a :class:`Population` (see :func:`read_nonmem`).
    method : ``"fo"``, ``"foce"``, ``"focei"`` (default), ``"laplace"``, or ``"lb"``:
        the Lindstrom–Bates algorithm of R's ``nlme`` (additive error only), which
        alternates penalised nonlinear least squares for theta with a linear
        mixed-effects step for omega and sigma. Its fixed point is *not* the maximum of
        the FOCE likelihood it reports (on Theophylline FOCE finds a −2LL 0.06 lower);
        use it to reproduce ``nlme``.
    fixed : names of natural-scale parameters held at their initial values (or a
        mapping name -> value to hold them at); names as in
        :meth:`PopulationModel.parameter_names` (theta names, ``omega_<eta>``, sigma names).
    init : initial values overriding the model's (natural scale; same names).
    max_iter : maximum outer (BFGS) iterations.
    tol : convergence when the largest gradient component of the OFV is below ``tol``
        (or the OFV stops changing).
    covariance : compute standard errors (observed information; finite differences of
        the exact gradient). A Hessian that is not positive definite gives a warning and
        NaN standard errors.
    progress : show a progress bar.
    chunk : outer iterations per compiled call (progress updates between chunks).
    devices : where the subjects are computed: ``None`` (default: every local GPU, or one
        CPU device), ``"all"``, a count, or a list of devices. Subjects are padded to a
        multiple of the device count and split evenly; the objective and the estimates are
        the same as on one device, to rounding (see :func:`bayes_ude._batching.batch_map`).
        The Bayesian methods split the subjects the same way (NUTS: inside each chain's
        log density, the chains then all on the default device; SG-MCMC: each
        minibatch); given explicitly, the draws are the same on 1, 2 or 4 devices (see
        :func:`bayes_ude.nlme.fit_bayes`).

    Returns
    -------
    FitResult. Ctrl-C during the fit returns the current estimates with
    ``interrupted=True`` (no covariance step); Ctrl-C during the covariance step returns
    the estimates without standard errors, also ``interrupted=True``. Ctrl-C before the
    first chunk of iterations has finished (during compilation) is re-raised: there are
    no estimates to keep. Estimates that ran away to absurd values are listed in
    :attr:`FitResult.degenerate` (with a warning).

    Notes
    -----
    Bayesian methods: ``method="nuts"`` (NUTS on the population and random effects) or
    ``"sgld"``, ``"psgld"``, ``"sghmc"`` (minibatches of subjects) run the same model
    through :func:`bayes_ude.nlme.fit_bayes`; ``bayes`` holds its options (``priors``,
    ``num_warmup``, ``num_samples``, ``num_chains``, ``key``, ``init``, ...) and the
    result is a :class:`BayesianFitResult`.
    """
    if method in SAMPLERS:
        from ._bayes import fit_bayes

        if fixed:
            raise ValueError("fixed parameters are not supported by the Bayesian methods; "
                             "give them a tight prior instead (Priors)")
        return fit_bayes(model, population, method, progress=progress, init=init,
                         devices=devices, **bayes)
    if bayes:
        raise TypeError(f"fit() got options {sorted(bayes)} that only the Bayesian methods "
                        f"{SAMPLERS} take")
    _check_method(method)
    if method == "lb" and model.l2:
        raise ValueError("method='lb' does not support l2 penalties; use 'focei' or 'foce'")
    model.check(population)
    model = model.specialised(population)
    start = time.perf_counter()
    u0 = model.initial_vector()
    if init:
        u0 = model.natural_to_vector(dict(init), u0)
    names = model.parameter_names()
    if isinstance(fixed, Mapping):
        u0 = model.natural_to_vector(dict(fixed), u0)
        fixed_names = tuple(fixed)
    else:
        fixed_names = tuple(fixed)
        unknown = [n for n in fixed_names if n not in names]
        if unknown:
            raise ValueError(f"unknown parameters to fix {unknown}; parameters are {names}")
    free = np.array([i for i, n in enumerate(names) if n not in fixed_names], int)
    # device_put, not jnp.asarray: no eager (compiled) conversions at start-up
    problem = _Problem(model, method, tuple(int(i) for i in free),
                       jax.device_put(np.asarray(u0, float)), population,
                       tuple(resolve_devices(devices)))
    x = jax.device_put(np.asarray(u0[free], float))
    eta = jax.device_put(np.zeros((population.n_subjects, model.n_eta)))
    if method == "lb":
        bar = tqdm(total=max_iter, desc="LB", disable=not progress, leave=False)
        try:
            x, eta, n_alt = _lindstrom_bates(problem, x, eta, max_iter, tol, bar)
        finally:
            bar.close()
        problem = _Problem(model, "foce", problem.free, problem.u_fixed, population,
                           problem.devices)
        state = _run_chunk(problem, _bfgs_init(x, eta, problem.devices), jnp.asarray(1, int),
                           jnp.asarray(0.0, float))
        return _finish(model, population, method, problem, state, names, free, fixed_names,
                       n_alt, n_alt < max_iter, False, covariance, start, [float(state.value)],
                       gradient_check=False, tol=tol)
    state = _bfgs_init(x, eta, problem.devices)
    history: list[float] = []
    iterations, interrupted = 0, False
    bar = tqdm(total=max_iter, desc=f"{method.upper()}", disable=not progress, leave=False)
    try:
        with _sigint.counted_sigint():
            while iterations < max_iter:
                n = min(chunk, max_iter - iterations)
                state = _run_chunk(problem, state, np.asarray(n, np.int64),
                                   np.asarray(tol, float))
                done_now = int(state.iteration)
                iterations += done_now
                history.append(float(state.value))
                bar.update(done_now)
                bar.set_postfix(ofv=f"{float(state.value):.4f}")
                _sigint.raise_pending()  # a Ctrl-C swallowed during the chunk
                if bool(state.done):
                    break
                _pause_for_tests("fit")
    except KeyboardInterrupt:
        _sigint.handled()
        if iterations == 0:
            raise  # during compilation or the first chunk: no estimates to keep
        interrupted = True
    finally:
        bar.close()
    return _finish(model, population, method, problem, state, names, free, fixed_names,
                   iterations, False, interrupted, covariance, start, history, tol=tol)


def _finish(model, population, method, problem, state, names, free, fixed_names, iterations,
            converged, interrupted, covariance, start, history, gradient_check=True, tol=1e-6):
    """Assemble the :class:`FitResult` (convergence check, covariance step, EBE table)."""
    x, f, eta = state.x, state.value, state.eta
    grad_final = np.asarray(state.grad)
    if gradient_check:
        converged = bool(np.isfinite(float(f)) and np.max(np.abs(grad_final)) < tol)
        if not converged and np.isfinite(float(f)) and bool(state.done) and not interrupted:
            # the line search can no longer improve: converged to the precision available
            converged = bool(np.max(np.abs(grad_final)) < 1e3 * tol)
    message = "" if converged else (
        "interrupted" if interrupted else
        f"did not converge in {iterations} iterations (largest gradient "
        f"{np.max(np.abs(grad_final)):.3g})")
    if not converged and not interrupted:
        warnings.warn(f"NLME fit: {message}", stacklevel=3)

    u, natural, penalty, jac = jax.tree.map(np.asarray, _natural_summary(problem, x))
    n_obs = population.n_obs
    ofv = float(f)
    # the objective includes the l2 penalty; the likelihood does not
    penalty = float(penalty)
    minus2ll = ofv - penalty + n_obs * _LOG_2PI
    p = free.size
    estimates = pd.Series(natural, index=names)
    se = pd.Series(np.nan, index=names)
    cov_df = cov_u = None
    if covariance and not interrupted:
        try:
            with _sigint.counted_sigint():
                _pause_for_tests("covariance")
                cov_df, se, cov_u = _covariance(problem, x, eta, names, free, jac)
                _sigint.raise_pending()
        except KeyboardInterrupt:
            _sigint.handled()
            interrupted = True
            message = "interrupted during the covariance step: no standard errors"
    eta_df = pd.DataFrame(np.asarray(eta), columns=list(model.eta_names),
                          index=pd.Index(population.ids, name="ID"))
    result = FitResult(
        method=method, model=model, population=population, u=u, minus2ll=minus2ll, ofv=ofv,
        aic=minus2ll + 2 * p, bic=minus2ll + p * np.log(n_obs), n_obs=n_obs, n_parameters=p,
        estimates=estimates, se=se, covariance=cov_df, eta=eta_df, converged=converged,
        iterations=iterations, seconds=time.perf_counter() - start, message=message,
        interrupted=interrupted, fixed=fixed_names, history=history,
        covariance_unconstrained=cov_u if free.size == len(names) else None,
        devices=problem.devices)
    reasons = result.degenerate
    if reasons:
        warnings.warn(f"NLME fit: {'converged to' if converged else 'stopped at'} a "
                      f"degenerate solution: {'; '.join(reasons)}", stacklevel=3)
    return result


def _dimensionless_sigma(model) -> set[str]:
    """Names of the residual SDs that are relative (proportional, exponential), not in the
    data's units."""
    from ._error import Combined, Exponential, Proportional

    names = set()
    for em in model.error_models.values():
        if isinstance(em, Proportional | Exponential):
            names.add(em.name)
        elif isinstance(em, Combined):
            names.add(em.prop)
    return names


def _covariance(problem: _Problem, x, eta, names, free, jac):
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
        np.asarray(_run_chunk(problem, _bfgs_init(point, eta, problem.devices),
                              np.asarray(1, np.int64),
                              np.asarray(0.0)).grad)
        for point in np.concatenate([x + steps, x - steps])])
    hess = (grads[:p] - grads[p:]) / (2.0 * h[:, None])
    hess = 0.5 * (hess + hess.T)
    info = 0.5 * np.asarray(hess)  # OFV = -2 LL
    se = pd.Series(np.nan, index=names)
    w = np.linalg.eigvalsh(info)
    # finite differences resolve eigenvalues down to ~1e-7 of the largest: anything below
    # is a singular (non-identifiable) direction, not information
    if not np.all(np.isfinite(w)) or w.min() <= 1e-7 * np.abs(w).max():
        warnings.warn("covariance step: the Hessian of the objective is not positive definite "
                      f"or numerically singular (eigenvalues {w.min():.3g} to {w.max():.3g}); "
                      "standard errors are not available. "
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
