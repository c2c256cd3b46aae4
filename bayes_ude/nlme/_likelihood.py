"""The likelihood layer: each subject's marginal likelihood, random effects integrated out.

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

**Below the limit of quantification** (Beal's M3; ``Population.obs_lloq``, compiled in only
when ``Population.has_censored``): an observation known only to lie below its limit ``L``
contributes ``P(y < L) = Phi((L - f) / sqrt(R))`` on the error model's scale (``log L``
for the exponential model), so its term in ``l`` is ``-2 log Phi(z) - log(2 pi)``: the
``-log(2 pi)`` makes "−2LL = OFV + n_obs log(2 pi)" hold with ``n_obs`` counting every
observation, censored or not (NONMEM's M3 OFV is larger by ``log(2 pi)`` per censored
observation). The EBE minimises ``l`` with these terms. **Laplace** takes the exact
Hessian of all of ``l`` (as NONMEM, which asks for ``LAPLACIAN`` with M3). **FOCEI** keeps
its Gauss–Newton information ``G' R^-1 G`` for the measured observations and adds the
exact Hessian of the censored terms (``½ d²/deta²`` of their sum): their curvature is not
the Gaussian's, and the part a Gauss–Newton form would drop, ``-lambda(z) d²z/deta²``
with ``lambda`` the inverse Mills ratio, does not average out. This costs second
derivatives of the model, for censored data only. **FO** and **FOCE** (and
Lindstrom–Bates) linearise ``y`` as a Gaussian vector, which a censored value is not:
they raise a ``ValueError`` for censored data. A subject without censored observations
gets the same terms as without censoring.

Inner step: ``eta_hat`` for all subjects at once (``vmap``) by Newton's method with an
eigenvalue-safeguarded Hessian and backtracking line search, warm-started from the previous
outer iterations' estimates. Its dependence on the population parameters is differentiated
implicitly: one Newton step from the converged (gradient-stopped) estimate has exactly the
implicit-function derivative.

One layer up, the same per-subject terms serve the maximum-likelihood fits
(:mod:`._optimise`, :mod:`._estimate`), the SG-MCMC minibatches (:mod:`._bayes`) and the
held-out predictive density of both kinds of result (:mod:`._results`,
:mod:`._bayes_results`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from .._batching import resolve_devices
from .._compile import ITERATIVE, ONE_OFF, filter_jit
from ._buckets import map_subjects, subject_buckets
from ._model import PopulationModel

__all__ = ["METHODS", "check_censoring", "objective", "subject_log_density"]

#: The marginal approximations of :func:`bayes_ude.nlme.fit` (``"lb"``: Lindstrom–Bates,
#: R's ``nlme``, whose likelihood is FOCE's).
METHODS = ("fo", "foce", "focei", "laplace", "lb")
LOG_2PI = float(np.log(2.0 * np.pi))


def check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

def newton(fun, x0, max_iter: int = 100, tol: float = 1e-9):
    """Minimise ``fun`` from ``x0`` by safeguarded Newton with backtracking.

    Returns the minimiser and the Hessian there. Stops when the largest gradient component
    is below ``tol`` (the objective is a −2 log density, so 1e-9 is far below any
    meaningful change), the line search finds no decrease, or after ``max_iter``
    iterations. A step that decreased ``fun`` by no more than rounding is followed by one
    pass that only evaluates the gradient and Hessian at the new point, so that the
    Hessian returned is the one at the point returned (the implicit derivative of the
    EBEs uses it: a Hessian one step behind made the FOCEI gradient 1e-9 relative off,
    and which one it was depended on the last bits of the step). Each program piece
    (gradient, Hessian, objective) appears once in the compiled loop: compile time is
    what users wait for.
    """
    grad = jax.grad(fun)
    hess = jax.hessian(fun)
    n = x0.size

    def cond(state):
        i, _, _, _, done, _ = state
        return (i < max_iter) & ~done

    def body(state):
        i, x, fx, _, _, last = state
        g = grad(x)
        h = hess(x)
        w, v = jnp.linalg.eigh(0.5 * (h + h.T))
        # a non-convex region gets a positive-definite model (eigenvalues floored)
        w = jnp.maximum(jnp.abs(w), 1e-8 * jnp.maximum(1.0, jnp.max(jnp.abs(w))))
        step = -v @ ((v.T @ g) / w)
        slope = g @ step
        small = jnp.max(jnp.abs(g)) < tol
        search = ~small & ~last  # the final pass at a point takes no step

        def accept(t, f_new):
            return f_new <= fx + 1e-4 * t * slope

        def bcond(b):
            t, f_new, k = b
            return search & ((k == 0) | ((k < 40) & ~accept(t, f_new)))

        def bbody(b):
            t, _, k = b
            t = jnp.where(k == 0, 1.0, 0.5 * t)
            return t, fun(x + t * step), k + 1

        t, f_new, _ = jax.lax.while_loop(bcond, bbody, (1.0, fx, 0))
        ok = search & accept(t, f_new)
        x_new = jnp.where(ok, x + t * step, x)
        f_new = jnp.where(ok, f_new, fx)
        negligible = ok & (fx - f_new <= 1e-15 * (1.0 + jnp.abs(fx)))
        return i + 1, x_new, f_new, h, ~ok, negligible

    false = jnp.asarray(False)
    state = (0, x0, fun(x0), jnp.zeros((n, n), x0.dtype), false, false)
    _, x, _, h, _, _ = jax.lax.while_loop(cond, body, state)
    return x, h


def _masked(mask, y, f, r):
    return jnp.where(mask, y - f, 0.0), jnp.where(mask, r, 1.0)


def censored(subject):
    """Which of a subject's observations are below their limit (traceable)."""
    return subject.obs_mask & jnp.isfinite(subject.obs_lloq)


def at_limits(subject):
    """The subject with each censored observation's DV set to its limit, so that
    ``model.residual`` gives the limit on the error model's scale as ``y``."""
    if not subject.has_censored:
        return subject
    dv = jnp.where(censored(subject), subject.obs_lloq, subject.obs_dv)
    return eqx.tree_at(lambda s: s.obs_dv, subject, dv)


def data_terms(y, f, r, mask, cens=None):
    """Per observation, −2 log density without ``log(2 pi)``: ``log R + (y - f)^2 / R``;
    where ``cens``, ``-2 log Phi((y - f) / sqrt(R)) - log(2 pi)`` (``y``: the limit)."""
    res, r = _masked(mask, y, f, r)
    terms = jnp.log(r) + res**2 / r
    if cens is not None:
        # the unused branch at z = 0: finite, so its zero cotangent stays zero
        m3 = -2.0 * log_ndtr(jnp.where(cens, res / jnp.sqrt(r), 0.0)) - LOG_2PI
        terms = jnp.where(cens, m3, terms)
    return jnp.where(mask, terms, 0.0)


_NO_M3 = ("method {!r} linearises the observations as a Gaussian vector, which values "
          "below the limit of quantification are not: fit censored data (Beal's M3) with "
          "method='laplace' (NONMEM's LAPLACIAN) or 'focei', or fit the flagged values as "
          "measured with read_nonmem(..., drop=[the censoring column])")


def check_censoring(method, population):
    """Raise the error of FO, FOCE and Lindstrom–Bates (``"lb"``) for censored data."""
    if method in ("fo", "foce", "lb") and getattr(population, "has_censored", False):
        raise ValueError(_NO_M3.format(method))


def chol_logdet(a):
    chol = jnp.linalg.cholesky(a)
    return chol, 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))


@eqx.filter_jit
def _terms(model, theta, sigma, subject, eta):
    """:meth:`SubjectLikelihood.terms`, as a jitted function of its own: the model is
    traced once per program, however many times the likelihood differentiates it (an
    FOCEI fit asks for it ~8 times: Newton's gradient and Hessian, the implicit step, the
    Jacobian of the interaction term); each derivative is then taken of its jaxpr. The
    Theophylline FOCEI step traced and lowered in ~0.8 s instead of ~1.1 s; XLA inlines
    the call (the command's Theophylline files came out byte-identical, warfarin's ODE
    PK/PD estimates moved by 3e-10 relative: another rounding)."""
    f = model.predict(theta, eta, subject)
    return model.residual(f, sigma, at_limits(subject))


class SubjectLikelihood(eqx.Module):
    """Pieces of one subject's likelihood at given population parameters."""

    model: PopulationModel = eqx.field(static=True)
    method: str = eqx.field(static=True)
    theta: dict
    omega: jax.Array
    sigma: dict
    subject: object

    def __check_init__(self):
        check_censoring(self.method, self.subject)  # at tracing, before any compilation

    @property
    def cens(self):
        """The censored observations, or None without censoring (static)."""
        return censored(self.subject) if self.subject.has_censored else None

    def terms(self, eta):
        return _terms(self.model, self.theta, self.sigma, self.subject, eta)

    def conditional(self, eta, r_fixed=None):
        """−2 log p(y, eta) without constants (``r_fixed``: variances at eta = 0 for FOCE)."""
        y, f, r = self.terms(eta)
        if r_fixed is not None:
            r = r_fixed
        chol = jnp.linalg.cholesky(self.omega)
        z = jax.scipy.linalg.solve_triangular(chol, eta, lower=True)
        return jnp.sum(data_terms(y, f, r, self.subject.obs_mask, self.cens)) + z @ z

    def censored_terms(self, eta):
        """The censored observations' part of :meth:`conditional`."""
        y, f, r = self.terms(eta)
        return jnp.sum(data_terms(y, f, r, self.cens, self.cens))

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
            newton(frozen.inner_objective(), jax.lax.stop_gradient(eta_start)))
        # One Newton step from the converged estimate, differentiable in the parameters
        # through the gradient only: its value is eta_star (g = 0 there) and its
        # derivative -H^-1 dg/dparams is exactly the implicit-function derivative. The
        # Hessian (the search's, at eta_star: see newton) is a constant: its derivative
        # would multiply g = 0, and leaving it out keeps third derivatives of the model
        # out of the program.
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
        chol, logdet = chol_logdet(v)
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
        _, logdet_omega = chol_logdet(self.omega)
        base = self.conditional(eta) + logdet_omega
        if self.method == "focei":
            mask = self.subject.obs_mask
            if self.cens is not None:
                mask = mask & ~self.cens  # Gauss-Newton for the measured ones only
            _, _, r = self.terms(eta)
            jac = jax.jacfwd(lambda e: self.terms(e)[1])(eta)
            jac = jnp.where(mask[:, None], jac, 0.0)
            r = jnp.where(mask, r, 1.0)
            info = jac.T @ (jac / r[:, None]) + jnp.linalg.inv(self.omega)
            if self.cens is not None:
                info = info + 0.5 * jax.hessian(self.censored_terms)(eta)
        else:  # laplace
            info = 0.5 * jax.hessian(self.conditional)(eta)
        _, logdet_info = chol_logdet(0.5 * (info + info.T))
        return base + logdet_info, eta


def population_objective(model, method, u, population, eta_start, devices=None,
                         buckets=None):
    """The OFV at ``u`` and every subject's EBE: subjects in blocks, over ``devices``
    (:func:`bayes_ude._batching.batch_map`: a vectorised inner Newton loop runs as long
    as its slowest subject, so one loop over all subjects would cost more than linearly),
    one size group of ``buckets`` (:mod:`._buckets`) after another."""

    def one(item, u):
        subject, e0 = item
        theta, omega, sigma = model.unpack(u)
        return SubjectLikelihood(model, method, theta, omega, sigma, subject).minus2ll(e0)

    values, etas = map_subjects(one, population, eta_start, u, buckets=buckets,
                                devices=devices)
    return jnp.sum(values) + model.penalty(model.unpack(u)[0]), etas


@filter_jit(quick_below=ONE_OFF)
def population_ebes(model, u, population, eta_start, devices=None, buckets=None):
    """Every subject's EBE at ``u``: the mode of its conditional density (with the
    interaction), as NONMEM's POSTHOC step gives after an FO fit, whose objective needs
    none."""

    def one(item, u):
        subject, e0 = item
        theta, omega, sigma = model.unpack(u)
        return SubjectLikelihood(model, "focei", theta, omega, sigma, subject).ebe(e0)

    return map_subjects(one, population, eta_start, u, buckets=buckets, devices=devices)


def objective(model: PopulationModel, population, method: str = "focei", u=None, *,
              devices=None):
    """OFV (−2LL without the ``n_obs log 2 pi`` constant) at ``u`` (default: initial values);
    ``devices`` as in :func:`fit`."""
    check_method(method)
    check_censoring(method, population)
    if method == "lb":
        method = "foce"  # the likelihood Lindstrom-Bates reports
    u = jnp.asarray(model.initial_vector() if u is None else u, float)
    model = model.specialised(population)
    eta0 = jnp.zeros((population.n_subjects, model.n_eta))
    return _objective_jit(model, method, u, population, eta0,
                          tuple(resolve_devices(devices)), subject_buckets(population))


@filter_jit(quick_below=ITERATIVE)
def _objective_jit(model, method, u, population, eta0, devices, buckets):
    return population_objective(model, method, u, population, eta0, devices, buckets)[0]


@filter_jit
def subject_log_densities(model, method, us, population, buckets=None):
    """``log p(y_i | u)`` per draw and subject ``(draws, subjects)``, each subject's random
    effects integrated out by ``method``'s approximation (one draw after another; the
    subjects in blocks and size groups, as the objective's)."""
    n_obs = jnp.sum(population.obs_mask, axis=1)

    def subject(s, u):
        theta, omega, sigma = model.unpack(u)
        return SubjectLikelihood(model, method, theta, omega, sigma, s).minus2ll(
            jnp.zeros(model.n_eta))[0]

    def one(u):
        m2 = map_subjects(subject, population, None, u, buckets=buckets)
        return -0.5 * (m2 + n_obs * LOG_2PI)

    return jax.lax.map(one, us)


def subject_log_density(model: PopulationModel, u, population, method: str = "laplace"):
    """Per-subject ``log p(y_i | u)`` with the random effects integrated out (Laplace)."""
    model.check(population)
    check_censoring(method, population)
    model = model.specialised(population)
    return np.asarray(subject_log_densities(model, method, jnp.asarray(u)[None],
                                            population, subject_buckets(population)))[0]
