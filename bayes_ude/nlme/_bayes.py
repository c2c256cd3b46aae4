"""Bayesian population fits: the same :class:`PopulationModel` under NUTS and SG-MCMC.

NUTS
    The NumPyro model of :mod:`._priors` (all subjects' random effects sampled with the
    population parameters) run by :func:`bayes_ude.inference.run_nuts`; the posterior
    predictive replicates the observed subjects.

SG-MCMC over subjects
    For large populations, minibatches of subjects: the random effects are integrated out
    per subject (the FOCEI/Laplace marginal likelihood of :mod:`._likelihood`, with the
    EBEs differentiated implicitly), and the minibatch log likelihood is scaled by
    ``N / batch``; SGLD, pSGLD or SGHMC move the population parameters in coordinates
    whitened by the maximum-likelihood covariance (a fit of :mod:`._estimate` run first
    when none is given).

Both return a :class:`BayesianFitResult` (:mod:`._bayes_results`). The sampler's settings are one
:class:`bayes_ude.inference.SamplerOptions`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import inference
from .._batching import resolve_devices
from .._compile import ONE_OFF, compiler_options, filter_jit
from ..inference._interrupt import interrupt_guard
from . import _diagnostics
from ._bayes_results import BayesianFitResult, central_u
from ._buckets import map_subjects, subject_buckets
from ._estimate import fit_ml
from ._likelihood import LOG_2PI, SubjectLikelihood
from ._model import PopulationModel
from ._model_checks import check_parameters_informed
from ._parameterisation import eta_columns, omega_blocks, resolve_centred
from ._priors import Priors, init_near, initial_values, numpyro_model
from ._results import FitResult

__all__ = ["fit_bayes"]


def _natural_draws(model: PopulationModel, u_draws: np.ndarray) -> dict:
    nat = np.asarray(jax.jit(jax.vmap(jax.vmap(model.natural)),
                             compiler_options=compiler_options())(jnp.asarray(u_draws)))
    return {name: nat[..., i] for i, name in enumerate(model.parameter_names())}


def _u_from_sites(model: PopulationModel, samples: Mapping[str, np.ndarray]) -> np.ndarray:
    """Unconstrained vectors ``(chain, draw, p)`` from NUTS site draws."""
    lead = np.shape(samples["omega_sd"])[:2]
    th = np.concatenate([np.reshape(samples[k], (*lead, -1)) for k in model.theta], axis=-1)
    sds = np.asarray(samples["omega_sd"])
    chol = sds[..., :, None] * np.eye(len(model.omega.names))
    for k, block in enumerate(omega_blocks(model)):
        if len(block) > 1:
            idx = np.ix_(block, block)
            chol[(..., *idx)] = sds[..., block, None] * np.asarray(samples[f"omega_corr_{k}"])
    rows, cols = model.omega.free
    om = chol[..., rows, cols]
    om = np.where(rows == cols, np.log(np.maximum(om, 1e-300)), om)
    sg = np.log(np.stack([np.asarray(samples[k]) for k in model.sigma_names], axis=-1))
    return np.concatenate([th, om, sg], axis=-1)


# ---------------------------------------------------------------------------- fitting
def fit_bayes(model: PopulationModel, population, method: str = "nuts", *,
              priors: Priors | None = None, init=None, key=None,
              options: inference.SamplerOptions | None = None, marginal: str = "focei",
              control_variates: bool = True, progress: bool = True, devices=None,
              random_effects="auto", **settings) -> BayesianFitResult:
    """Bayesian fit of a population model (usually through :func:`bayes_ude.nlme.fit`).

    Parameters
    ----------
    method : ``"nuts"`` (all subjects' random effects sampled jointly with the population
        parameters), or ``"sgld"``, ``"psgld"``, ``"sghmc"`` (minibatches of subjects,
        random effects integrated out; diagonal omega only).
    priors : :class:`Priors` (defaults described there).
    init : where chains start: ``None`` (the model's initial values, chains jittered by
        ±0.2 on the unconstrained scale), a mapping of natural-scale values overriding
        some of them, or a maximum-likelihood :class:`FitResult` (its estimates and
        EBEs, jittered the same way).
    key : PRNG key (default ``jax.random.key(0)``).
    options : the sampler's settings, a :class:`bayes_ude.inference.SamplerOptions`
        (defaults there); ``settings`` (e.g. ``num_samples=200``) change single fields of
        it. NUTS: ``metric="laplace"`` fixes the metric at the inverse Hessian of the log
        joint at the starting point (``init``, best a maximum-likelihood fit: its
        estimates and EBEs; :func:`bayes_ude.inference.laplace_inverse_mass`), for
        networks inside the dynamics whose posteriors are too ill-conditioned for the
        warmup's estimate (docs/pkpd.md: the Michaelis-Menten network mixes with it and
        not without). SG-MCMC: ``batch_size`` subjects per minibatch (default
        ``min(N, 64)``), ``step_size`` in whitened coordinates (default 0.1 with control
        variates, else ``min(0.05, 0.2 batch/N)``): the chains move in coordinates
        whitened by the maximum-likelihood covariance (from ``init`` when it is a
        FitResult with a covariance step, else from a fit run first), so the posterior
        there is close to ``N(0, I)``.
    marginal : SG-MCMC subject likelihood: ``"focei"`` (default) or ``"laplace"``.
    control_variates : SGLD-CV: subtract each subject's gradient at the
        maximum-likelihood point from its minibatch term and add their sum back (same
        mean, far smaller minibatch noise near the mode; default on).
    random_effects : NUTS: how each random effect is sampled. ``"auto"`` (default):
        centred where the data are informative about it (little shrinkage), non-centred
        where not (:func:`choose_centred`, judged at ``init``); ``"centred"``,
        ``"noncentred"``, or the names of the random effects to centre. With every effect
        centred the default metric is dense (``dense_mass="auto"``: posteriors up to 100
        dimensions), otherwise diagonal (a dense metric on non-centred effects made 0-7
        divergent transitions per 4,000 draws on Theophylline); ``dense_mass`` in
        ``options`` overrides it. ``attrs["centred"]`` names the centred effects
        (comma-separated).
    devices : where the subjects are computed (as in :func:`bayes_ude.nlme.fit`; default
        every local GPU, or one CPU device). NUTS: each chain's log density has its
        subjects split over them (and the chains all run on the default device, one after
        the other on a CPU, vectorised elsewhere); SG-MCMC: each minibatch's subjects and
        the control variates' gradients are split over them. Given explicitly, the draws
        are the same on 1, 2 or 4 devices (same key); the default on a CPU runs a faster
        single-device program whose draws differ in the last bits (NUTS: ~2x per gradient,
        see :func:`numpyro_model`).
    """
    if method not in inference.SAMPLERS:
        raise ValueError(f"Bayesian method must be one of {inference.SAMPLERS}, got "
                         f"{method!r}")
    options = (inference.SamplerOptions() if options is None else options).replace(**settings)
    if method != "nuts" and not (isinstance(random_effects, str) and random_effects == "auto"):
        raise ValueError(f"random_effects is a NUTS setting: SG-MCMC ({method!r}) integrates "
                         "the random effects out")
    if options.metric == "laplace" and method != "nuts":
        raise ValueError("metric='laplace' is a NUTS metric (method='nuts', without "
                         "dense_mass)")
    options.check_for(method)
    priors = Priors() if priors is None else priors
    priors.check(model)
    model.check(population)
    check_parameters_informed(model, population, bayesian=True)
    model = model.specialised(population)
    key = jax.random.key(0) if key is None else key
    resolve_devices(devices)  # a bad value is an error before any work
    start = time.perf_counter()
    # Once the sampler has its draws, a Ctrl-C is deferred until the result is built (the
    # posterior predictive, optional, is skipped): the draws are never lost
    with interrupt_guard() as guard:
        if method == "nuts":
            centred = resolve_centred(model, population, init, random_effects)
            if options.dense_mass is None:
                options = options.replace(dense_mass="auto" if set(centred) == set(
                    model.omega.names) and options.metric == "adapt" else False)
            idata, u_draws = _fit_nuts(model, population, priors, init, key, progress,
                                       options, guard, devices, centred)
        else:
            idata, u_draws = _fit_sgmcmc(model, population, priors, init, key, progress,
                                         method, options, marginal, control_variates,
                                         devices)
        result = BayesianFitResult(method=method, model=model, population=population,
                                   idata=idata, draws=_natural_draws(model, u_draws),
                                   u=central_u(model, u_draws, population), u_draws=u_draws,
                                   seconds=time.perf_counter() - start, priors=priors)
    return result


def _fit_nuts(model, population, priors, init, key, progress, options, guard=None,
              devices=None, centred=()):
    # as given: devices=None and an explicit choice are different programs (see there)
    fn = numpyro_model(model, population, priors, devices=devices, centred=centred)
    devices = resolve_devices(devices)
    values = initial_values(model, population, init, centred)
    ids = list(population.ids)
    n_sub = population.n_subjects
    c_cols, nc_cols = eta_columns(model, centred)
    eta_names = np.asarray(model.eta_names)
    dims = {"eta": ["subject", "eta_name"], "eta_z": ["subject", "eta_z_name"],
            "eta_c": ["subject", "eta_c_name"],
            "omega_sd": ["omega_name"], "y": ["subject", "record"]}
    ind_names = [k for k in _individual_names(model, population)]
    dims.update({f"{k}_i": ["subject"] for k in ind_names})
    coords = {"subject": ids, "eta_name": list(model.eta_names),
              "eta_z_name": list(eta_names[nc_cols]), "eta_c_name": list(eta_names[c_cols]),
              "omega_name": list(model.omega.names),
              "record": np.arange(population.obs_time.shape[1])}
    laplace = options.metric == "laplace"
    idata = inference.run_nuts(
        fn, num_warmup=options.num_warmup, num_samples=options.num_samples,
        num_chains=options.num_chains, key=key, target_accept=options.target_accept,
        max_tree_depth=options.max_tree_depth, dense_mass=options.dense_mass,
        inverse_mass_matrix=inference.laplace_inverse_mass(fn, values=values) if laplace
        else None,
        init=init_near(values), progress=progress, posterior_predictive=False, dims=dims,
        coords=coords, backend=options.backend,
        # subjects split over several devices: the chains stay together
        spread_chains=len(devices) == 1)
    idata.attrs["centred"] = ",".join(centred)
    post = {k: np.asarray(v) for k, v in idata.posterior.items()}
    u_draws = _u_from_sites(model, post)
    mask = np.asarray(population.obs_mask)

    def replicate():
        # posterior predictive: replicate observations of the same subjects, in DV units
        eta = jnp.asarray(post["eta"])
        flat_u = jnp.reshape(jnp.asarray(u_draws), (-1, u_draws.shape[-1]))
        flat_eta = jnp.reshape(eta, (-1, n_sub, model.n_eta))
        dv = np.asarray(_replicate(model, flat_u, flat_eta, population,
                                   jax.random.fold_in(key, 7)))
        return dv.reshape((*u_draws.shape[:2], *dv.shape[1:]))

    # optional: a Ctrl-C here (or earlier, in run_nuts's assembly) skips it
    dv, done = (replicate(), True) if guard is None else guard.optional(replicate)
    if not done:
        guard.mark(idata.attrs, ["posterior_predictive"], stacklevel=3)
    inference.add_to_inference_data(
        idata, posterior_predictive={"dv": np.where(mask, dv, np.nan)} if done else None,
        observed_data={"dv": np.where(mask, np.asarray(population.obs_dv), np.nan)},
        dims={"dv": ["subject", "record"]}, coords=coords)
    return idata, u_draws


def _individual_names(model, population):
    sub = jax.tree.map(lambda x: x[0], population)
    out = jax.eval_shape(lambda: model.individual_parameters(
        {k: jnp.asarray(v) for k, v in model.theta.items()}, jnp.zeros(model.n_eta), sub))
    return [k for k, v in out.items() if v.shape == ()]


def _replicate(model, us, etas, population, key):
    return _replicate_impl(model, us, etas, population, key, subject_buckets(population))


@filter_jit(quick_below=ONE_OFF)
def _replicate_impl(model, us, etas, population, key, buckets=None):
    keys = jax.random.split(key, us.shape[0])

    def subj(item, u):
        s, (e, kk) = item
        theta, _, sigma = model.unpack(u)
        return _diagnostics._sample_obs(model, model.predict(theta, e, s), sigma, s, kk)

    def one(u, eta, k):
        ks = jax.random.split(k, population.obs_time.shape[0])
        return map_subjects(subj, population, (eta, ks), u, buckets=buckets,
                            obs_outputs=True, block=None)

    return jax.lax.map(lambda a: one(*a), (us, etas, keys))


# ---------------------------------------------------------------------------- SG-MCMC
def _subject_gradients(loglik, p, population, devices):
    return _subject_gradients_jit(loglik, p, population, tuple(resolve_devices(devices)),
                                  subject_buckets(population))


@filter_jit
def _subject_gradients_jit(loglik, p, population, devices, buckets):
    # in blocks on a CPU (each subject's inner Newton loop), over the devices, in size
    # groups (the minibatches of the steps keep the padded widths: drawn while running)
    return map_subjects(lambda s, _: jax.grad(loglik)(jnp.zeros(p), s), population,
                        buckets=buckets, devices=devices)


def _fit_sgmcmc(model, population, priors, init, key, progress, method, options, marginal,
                control_variates, devices=None):
    """SG-MCMC on the population parameters, subjects in minibatches.

    The chains move in whitened coordinates ``v``: ``u = u_ml + C v`` with ``C C'`` the
    maximum-likelihood covariance of ``u`` (a constant preconditioner, as in Ahn et al.'s
    SGFS), so that one step size suits every model: the posterior is close to
    ``N(0, I)`` in ``v``.
    """
    if model.omega.structure != "diagonal":
        raise ValueError("SG-MCMC population fits support a diagonal omega only; use "
                         "method='nuts' for correlated random effects")
    if model.iov:
        raise ValueError("SG-MCMC population fits do not support inter-occasion "
                         "variability (iov); use method='nuts'")
    if marginal not in ("focei", "laplace"):
        raise ValueError(f"marginal must be 'focei' or 'laplace', got {marginal!r}")
    priors.check_sgmcmc(model)
    n = population.n_subjects
    # minibatches split over the devices when they are given (the same draws on 1, 2 or 4)
    # or several by default (GPUs); on one CPU device by default, BlackJAX's estimator
    sharded = tuple(resolve_devices(devices))
    if devices is None and len(sharded) == 1:
        sharded = None
    batch_size = min(n, 64) if options.batch_size is None else options.batch_size
    burn_in = options.num_steps // 2 if options.burn_in is None else options.burn_in
    step_size = options.step_size
    if step_size is None:
        # Langevin discretisation inflates variances by ~eps/4; without control variates
        # the minibatch noise adds ~eps N / (4 b)
        step_size = 0.1 if control_variates else min(0.05, 0.2 * batch_size / n)
    ml = _ml_preconditioner(model, population, init, marginal, progress, devices)
    center = jnp.asarray(ml.u)
    chol = jnp.asarray(np.linalg.cholesky(ml.covariance_unconstrained))
    logprior, loglik = _whitened_densities(model, priors, marginal, center, chol)
    pop = jax.tree.map(jnp.asarray, population)
    p = center.shape[0]
    if control_variates:
        # SGLD-CV (Baker et al. 2019): each subject's log likelihood minus its tangent at
        # the ML point v = 0, and the sum of those tangents added back exactly, so the
        # minibatch estimate keeps its mean and loses most of its variance near the mode
        g = _subject_gradients(loglik, p, pop, devices)  # (N, p)
        g_total = jnp.sum(g, axis=0)

        def prior_term(v):
            return logprior(v) + g_total @ v

        def item_term(v, item):
            subject, g_i = item
            return loglik(v, subject) - g_i @ v

        grad = inference.grad_estimator(prior_term, item_term, n, devices=sharded)
        data = (pop, g)
    else:
        grad = inference.grad_estimator(logprior, loglik, n, devices=sharded)
        data = pop
    kernel = {"sgld": inference.sgld, "psgld": inference.psgld,
              "sghmc": inference.sghmc}[method](grad)
    idata = inference.run_sgmcmc(
        kernel, jnp.zeros(p), data,
        num_steps=options.num_steps, batch_size=batch_size, step_size=step_size,
        burn_in=burn_in, thin=options.thin, num_chains=options.num_chains, init_spread=1.0,
        key=key, progress=progress, name="v")
    u_draws = np.asarray(center) + np.asarray(idata.posterior["v"]) @ np.asarray(chol).T
    # the posterior in named natural-scale parameters (the unconstrained draws are kept
    # in the result as ``u_draws``)
    idata.posterior = inference.to_inference_data(
        _natural_draws(model, u_draws), attrs=dict(idata.posterior.attrs)).posterior
    idata.attrs.update({"step_size": float(step_size) if not callable(step_size) else -1.0,
                        "marginal": marginal, "control_variates": int(control_variates),
                        "preconditioner": "maximum-likelihood covariance"})
    return idata, u_draws


def _ml_preconditioner(model, population, init, marginal, progress, devices) -> FitResult:
    """The maximum-likelihood fit whose estimate and covariance whiten SG-MCMC: ``init``
    when it is one with a covariance step, else a fit run now."""
    if isinstance(init, FitResult) and init.covariance_unconstrained is not None:
        return init
    ml = fit_ml(model, population, marginal, init=init if isinstance(init, Mapping) else None,
                progress=progress, devices=devices)
    if ml.covariance_unconstrained is None:
        raise RuntimeError("SG-MCMC needs the maximum-likelihood covariance as its "
                           "preconditioner, and the covariance step failed (see the "
                           "warning); check the model, or use method='nuts'")
    return ml


def _whitened_densities(model, priors, marginal, center, chol):
    """The log prior and one subject's marginal log likelihood as functions of the
    whitened coordinates ``v`` (``u = center + chol v``)."""
    n_th, q = model.n_theta, len(model.omega.names)
    theta_dists = {k: priors.theta_dist(model, k) for k in model.theta}
    sd_dists = [priors.omega_sd_dist(model, nme) for nme in model.omega.names]
    sigma_dists = [priors.sigma_dist(model, k) for k in model.sigma_names]

    def to_u(v):
        return center + chol @ v

    def logprior(v):
        u = to_u(v)
        theta, _, _ = model.unpack(u)
        lp = sum(jnp.sum(theta_dists[k].log_prob(theta[k])) for k in model.theta)
        log_sd = u[n_th:n_th + q]
        log_sig = u[n_th + q:]
        # densities of the SDs, with the Jacobian of the log transform (the linear map
        # v -> u has a constant Jacobian)
        lp = lp + sum(d.log_prob(jnp.exp(x)) + x for d, x in zip(sd_dists, log_sd,
                                                                   strict=True))
        return lp + sum(d.log_prob(jnp.exp(x)) + x for d, x in zip(sigma_dists, log_sig,
                                                                    strict=True))

    def loglik(v, subject):
        theta, omega, sigma = model.unpack(to_u(v))
        m2, _ = SubjectLikelihood(model, marginal, theta, omega, sigma, subject).minus2ll(
            jnp.zeros(model.n_eta))
        return -0.5 * (m2 + jnp.sum(subject.obs_mask) * LOG_2PI)

    return logprior, loglik
