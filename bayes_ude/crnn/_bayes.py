"""The Bayesian CRNN (B-CRNN): priors on the CRNN's weights, the posterior by pSGLD over
the full candidate network or by NUTS on the pruned one (Li, Dugan, Zhou, Deng et al.,
"Bayesian chemical reaction neural network for autonomous kinetic uncertainty
quantification", PCCP 2023).

Observation model
-----------------
Measurements with *relative* error (the usual case for concentrations, and Ji & Deng's
benchmark): ``y = c (1 + sigma eps)``, ``eps ~ N(0, 1)``, so the likelihood is
proportional,

``y_ti ~ Normal(c_ti, sigma * (|c_ti| + floor * scale_i))``

with ``c`` the CRNN's solution and ``scale_i`` the species' largest measured value. The
absolute ``floor`` is only a numerical guard (default ``1e-6`` of the scale: the sd stays
positive where a solution touches zero) and far below any measured concentration: a
larger floor is a different noise model. With 1 % of the scale, as an earlier version
had, the early points of the species that start at zero (13 % of Ji & Deng's data) get
an sd several times their actual noise, so ``sigma`` came out at 0.043 for data with
5 % noise and every credible interval was about 15 % too narrow. Observations that are
exactly zero (a species absent at ``t = 0``) are left out: under relative error they
are zero exactly when ``c`` is, and say nothing about ``sigma``. The noise level
``sigma`` is not assumed: ``log sigma`` is sampled with the weights, so noisier data
widen the posterior instead of forcing the weights to explain the noise.

Priors (:class:`Prior`): ``nu ~ Normal(0, 1)`` on each stoichiometric coefficient (an
integer coefficient of 1 or 2 is typical, 0 is "absent"); ``ln k ~ Normal(ln 0.1, 2)``
(rate constants from about 0.002 to 5 per time unit at two standard deviations);
``ln sigma ~ Normal(ln 0.05, 1)``.

A reaction is *present* in a posterior draw when one of its coefficients has magnitude
at least ``threshold`` (the pruning threshold) and its rate constant is at least
``min_rate``; the fraction of draws in which it is present is its posterior probability.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike

from .. import inference, solvers
from ..inference._sgmcmc import _position_dict
from ._fit import DEFAULT_SOLVE, Experiments, check_model_data, simulate, simulate_one
from ._model import CRNN
from ._prune import active_reactions

#: Absolute floor of the noise sd, as a fraction of each species' scale: a numerical guard
#: only (see the module notes).
NOISE_FLOOR = 1e-6


class Prior(eqx.Module):
    """Independent Normal priors on the B-CRNN's unconstrained parameters.

    Attributes
    ----------
    stoichiometry_scale : sd of each coefficient ``nu`` (mean 0).
    log_rate_loc, log_rate_scale : mean and sd of ``ln k`` (``ln A`` with Arrhenius).
    order_loc, order_scale : free reaction orders (``orders="free"`` only).
    temperature_exponent_scale : sd of the Arrhenius ``b`` (mean 0).
    activation_energy_loc, activation_energy_scale : Arrhenius ``Ea`` in kJ/mol
        (100 +- 100: typical activation energies of gas-phase and biochemical
        reactions lie between a few and a few hundred kJ/mol).
    log_sigma_loc, log_sigma_scale : mean and sd of the log relative noise level.
    """

    stoichiometry_scale: float = 1.0
    log_rate_loc: float = math.log(0.1)
    log_rate_scale: float = 2.0
    order_loc: float = 1.0
    order_scale: float = 1.0
    temperature_exponent_scale: float = 1.0
    activation_energy_loc: float = 100.0
    activation_energy_scale: float = 100.0
    log_sigma_loc: float = math.log(0.05)
    log_sigma_scale: float = 1.0


def _normal(x, loc, scale):
    return jnp.sum(jax.scipy.stats.norm.logpdf(x, loc, scale))


def log_prior(model: CRNN, log_sigma, prior: Prior = Prior()):
    """Log prior density of a CRNN's weights and the log noise level."""
    lp = _normal(model.stoichiometry, 0.0, prior.stoichiometry_scale)
    lp += _normal(model.log_rate, prior.log_rate_loc, prior.log_rate_scale)
    if model.free_orders is not None:
        lp += _normal(model.free_orders, prior.order_loc, prior.order_scale)
    if model.arrhenius:
        lp += _normal(model.temperature_exponent, 0.0, prior.temperature_exponent_scale)
        lp += _normal(model.activation_energy, prior.activation_energy_loc,
                      prior.activation_energy_scale)
    return lp + _normal(log_sigma, prior.log_sigma_loc, prior.log_sigma_scale)


def _noise_sd(ys, pred, sigma, scale, floor):
    """``(observed, sd)``: the observations that enter the likelihood (``y > 0``, see the
    module notes) and the sd of the relative-error model there (1 elsewhere, so that
    neither the value nor the gradient of a left-out point is ever NaN)."""
    observed = ys > 0
    sd = sigma * (jnp.abs(pred) + floor * scale)
    return observed, jnp.where(observed, sd, 1.0)


def _obs_logpdf(ys, pred, sigma, scale, floor):
    observed, sd = _noise_sd(ys, pred, sigma, scale, floor)
    return jnp.sum(jnp.where(observed, jax.scipy.stats.norm.logpdf(ys, pred, sd), 0.0))


def log_likelihood(model: CRNN, log_sigma, ts, ys, u0, temperature=None, *,
                   scale: ArrayLike, floor: float = NOISE_FLOOR,
                   options: solvers.SolveOptions = DEFAULT_SOLVE):
    """Log likelihood of one experiment (``ys`` of shape ``(T, n_species)``) under the
    relative-error model of the module notes; ``-inf`` if the solve fails (its gradient
    stays finite)."""
    sol = simulate_one(model, ts, u0, temperature, options)
    pred = solvers.sanitize(sol)
    return (_obs_logpdf(ys, pred, jnp.exp(log_sigma), jnp.asarray(scale), floor)
            + solvers.log_density_penalty(sol))


def estimate_noise(model: CRNN, data: Experiments, floor: float = NOISE_FLOOR,
                   options: solvers.SolveOptions = DEFAULT_SOLVE) -> float:
    """The relative noise level ``sigma`` of the data around ``model``'s solution (the
    root mean square of ``(y - c) / (c + floor * scale)``): a starting value for
    sampling."""
    sol = simulate(model, data.ts, data.u0, data.temperature, options=options)
    observed, sd = _noise_sd(data.ys, sol.ys, 1.0, data.scale, floor)
    z = jnp.where(observed, (data.ys - sol.ys) / sd, 0.0)
    return float(jnp.sqrt(jnp.sum(z**2) / jnp.sum(observed)))


def _derived(model_draws: CRNN, log_sigma) -> dict[str, np.ndarray]:
    """Posterior arrays with readable names from a CRNN with leading (chain, draw) axes."""
    out = {"rate_constant": np.exp(np.asarray(model_draws.log_rate)),
           "stoichiometry": np.asarray(jnp.where(model_draws.mask, model_draws.stoichiometry,
                                                 0.0)),
           "sigma": np.exp(np.asarray(log_sigma))}
    if model_draws.free_orders is not None:
        out["order"] = np.asarray(jnp.where(model_draws.order_mask,
                                            jnp.clip(model_draws.free_orders, 0.0,
                                                     model_draws.order_max), 0.0))
    if model_draws.arrhenius:
        out["temperature_exponent"] = np.asarray(model_draws.temperature_exponent)
        out["activation_energy"] = np.asarray(model_draws.activation_energy)
    return out


def _dims(model: CRNN, reactions) -> tuple[dict, dict]:
    dims = {"rate_constant": ["reaction"], "stoichiometry": ["reaction", "species"],
            "order": ["reaction", "species"], "temperature_exponent": ["reaction"],
            "activation_energy": ["reaction"]}
    coords = {"reaction": np.asarray(reactions), "species": list(model.species)}
    return dims, coords


def _fisher(position, static, data, floor, options, prior):
    """Gauss-Newton (Fisher) information of the log posterior at ``position`` (flat):
    for ``y ~ Normal(f, s)`` each observation adds ``grad f grad f^T / s^2 +
    2 grad s grad s^T / s^2``; the priors add their precisions."""
    flat, unravel = ravel_pytree(position)
    forward = options.replace(sensitivity="forward")

    def mean_and_sd(x):
        p = unravel(x)
        sol = simulate(eqx.combine(p["crnn"], static), data.ts, data.u0, data.temperature,
                       options=forward)
        pred = solvers.sanitize(sol)
        return pred, _noise_sd(data.ys, pred, jnp.exp(p["log_sigma"]), data.scale, floor)[1]

    observed = (data.ys > 0).reshape(-1)
    pred, sd = mean_and_sd(flat)
    jf, js = jax.jacfwd(mean_and_sd)(flat)
    jf = jf.reshape(-1, flat.size)
    js = js.reshape(-1, flat.size)
    w = jnp.where(observed, 1.0 / sd.reshape(-1) ** 2, 0.0)
    info = (jf * w[:, None]).T @ jf + 2.0 * (js * w[:, None]).T @ js
    prior_precision = jax.hessian(lambda x: -log_prior(
        eqx.combine(unravel(x)["crnn"], static), unravel(x)["log_sigma"], prior))(flat)
    return info + prior_precision


def run_psgld(
    model: CRNN,
    data: Experiments,
    *,
    num_steps: int = 4000,
    burn_in: int = 1000,
    thin: int = 5,
    num_chains: int = 4,
    batch_size: int | None = None,
    step_size: float = 0.02,
    whiten: bool = True,
    init_spread: float | None = None,
    prior: Prior = Prior(),
    floor: float = NOISE_FLOOR,
    options: solvers.SolveOptions = DEFAULT_SOLVE,
    key: jax.Array | None = None,
    progress: bool = True,
):
    """B-CRNN posterior over all weights of ``model`` by preconditioned SGLD.

    The chains start at ``model`` (a trained CRNN: the MAP is where the posterior mass
    is; starting from random weights, a Langevin chain would spend its budget finding it)
    with ``sigma`` at :func:`estimate_noise`. Pruned weights (``model.mask``) stay pruned
    and are drawn from their prior (which leaves the likelihood unchanged); use
    :func:`bayes_ude.crnn.unprune` first to sample every weight around a pruned fit.

    Whitening (default): the posterior of a CRNN has long, narrow ridges -- a larger
    coefficient with a smaller rate constant consumes a reactant at nearly the same rate
    -- which pSGLD's *diagonal* preconditioner cannot straighten: measured on Ji & Deng's
    benchmark, chains at a step size small enough to be unbiased drift for tens of
    thousands of steps along them, and their 95 % intervals miss true rates. So the
    chains run in coordinates ``z`` with ``theta = theta_start + L z``, ``L L^T`` the
    inverse of the Fisher (Gauss-Newton) information at the start: there the posterior
    is close to a standard normal, and pSGLD's RMSprop preconditioner only fine-tunes.
    The draws are mapped back to ``theta``.

    Parameters
    ----------
    model : the starting CRNN, usually trained (pruned or not).
    data : the training :class:`Experiments`; one experiment is one data item of the
        minibatch gradient estimate.
    num_steps, burn_in, thin, num_chains : see :func:`bayes_ude.inference.run_sgmcmc`.
    batch_size : experiments per step (default all: full-batch Langevin steps).
    step_size : pSGLD step size ``eps``. With whitening the posterior sd is about 1 in
        every direction and the preconditioner about 1, so each step moves about
        ``sqrt(2 eps)``; 0.02 (0.2 per step) crosses the posterior in tens of steps with
        a small discretisation bias. Without whitening, use about 1e-3.
    whiten : run in whitened coordinates (see above).
    init_spread : sd of the chains' random start around ``model`` (whitened units when
        whitening). Default: 1 with whitening -- the chains start as draws from the
        Laplace approximation (``N(theta_start, info^{-1})``), so that short chains are
        not under-dispersed: started at the mode, a Langevin chain at the default step
        size relaxes with rate ``step_size / 2`` per step, so it needs a few hundred
        steps to spread to the posterior's width. 0 without whitening.
    prior : :class:`Prior`.
    floor : absolute noise floor (fraction of each species' scale).
    options : the :class:`bayes_ude.solvers.SolveOptions` of the solves (default
        :data:`DEFAULT_SOLVE`).

    Returns
    -------
    arviz.InferenceData whose ``posterior`` has ``rate_constant`` (reaction),
    ``stoichiometry`` (reaction, species; zero where pruned), ``sigma`` (and ``order``,
    Arrhenius terms where present) and the raw positions (``crnn.*``, ``log_sigma``);
    ``attrs`` as :func:`bayes_ude.inference.run_sgmcmc`.
    """
    check_model_data(model, data)
    batch_size = data.n_experiments if batch_size is None else batch_size
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    ts, scale = data.ts, data.scale
    position = {"crnn": arrays,
                "log_sigma": jnp.asarray(math.log(estimate_noise(model, data, floor, options)))}
    flat_start, unravel = ravel_pytree(position)
    if whiten:
        info = _fisher(position, static, data, floor, options, prior)
        # L L^T = info^{-1}: L = inv(chol(info))^T. A tiny ridge (1e-8 of the largest
        # diagonal entry) keeps the factorisation of a nearly singular matrix finite.
        ridge = 1e-8 * jnp.max(jnp.diag(info))
        chol = jnp.linalg.cholesky(info + ridge * jnp.eye(info.shape[0]))
        factor = jax.scipy.linalg.solve_triangular(chol, jnp.eye(info.shape[0]),
                                                   lower=True).T
    else:
        factor = None

    def to_theta(z):
        return unravel(flat_start + factor @ z) if whiten else z

    items = {"ys": data.ys, "u0": data.u0}
    if data.temperature is not None:
        items["temperature"] = data.temperature

    def logprior_fn(z):
        p = to_theta(z)
        return log_prior(eqx.combine(p["crnn"], static), p["log_sigma"], prior)

    def loglikelihood_fn(z, item):
        p = to_theta(z)
        return log_likelihood(eqx.combine(p["crnn"], static), p["log_sigma"], ts,
                              item["ys"], item["u0"], item.get("temperature"), scale=scale,
                              floor=floor, options=options)

    grad_fn = inference.grad_estimator(logprior_fn, loglikelihood_fn, data.n_experiments)
    if init_spread is None:
        init_spread = 1.0 if whiten else 0.0
    init = jnp.zeros_like(flat_start) if whiten else position
    idata = inference.run_sgmcmc(
        inference.psgld(grad_fn), init, items, num_steps=num_steps,
        batch_size=batch_size, step_size=step_size, burn_in=burn_in, thin=thin,
        num_chains=num_chains, init_spread=init_spread, key=key, progress=progress,
        name="theta")
    if whiten:
        z = jnp.asarray(idata.posterior["theta"].values)
        draws = jax.vmap(jax.vmap(to_theta))(z)
    else:
        draws = inference.posterior_pytree(idata, position)
    model_draws = eqx.combine(draws["crnn"], static)
    derived = _derived(model_draws, draws["log_sigma"])
    # The raw positions under the names posterior_pytree (posterior_models) looks for.
    raw = {k: np.asarray(v) for k, v in _position_dict(draws, "theta").items()}
    dims, coords = _dims(model, np.arange(model.n_reactions))
    return inference.to_inference_data(
        {**raw, **derived}, dims={k: v for k, v in dims.items() if k in derived},
        coords=coords, attrs={**idata.attrs, "whiten": int(whiten)})


def posterior_models(idata, model: CRNN) -> CRNN:
    """The :func:`run_psgld` draws as one CRNN whose arrays have leading ``(chain, draw)``
    axes (``jax.vmap`` twice to simulate every draw). ``model`` must be the one sampled
    (its pruning mask is not in the draws): another mask, e.g. the unpruned model, would
    bring back pruned entries at their prior draws; that is refused."""
    if "stoichiometry" in idata.posterior:
        sampled = np.any(np.asarray(idata.posterior["stoichiometry"]) != 0, axis=(0, 1))
        if sampled.shape == model.mask.shape and np.any(sampled != np.asarray(model.mask)):
            j, i = (int(x[0]) for x in np.nonzero(sampled != np.asarray(model.mask)))
            raise ValueError(
                f"model's pruning mask differs from the sampled model's (reaction {j}, species "
                f"{i}: {'kept' if model.mask[j, i] else 'pruned'} in model, "
                f"{'kept' if sampled[j, i] else 'pruned'} in the draws); pass the model given "
                "to the sampler")
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    template = {"crnn": arrays, "log_sigma": jnp.zeros(())}
    draws = inference.posterior_pytree(idata, template, name="theta")
    n_chain, n_draw = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]

    def broadcast(x):
        return jnp.broadcast_to(x, (n_chain, n_draw) + x.shape)

    static = jax.tree.map(lambda x: broadcast(x) if eqx.is_array(x) else x, static)
    return eqx.combine(draws["crnn"], static)


def reaction_probability(idata, threshold: float = 0.1, min_rate: float = 0.0) -> np.ndarray:
    """Posterior probability that each candidate reaction is present: the fraction of
    draws in which its largest ``|nu|`` is at least ``threshold`` and its rate constant
    at least ``min_rate`` (see the module notes). One entry per candidate reaction, also
    for :func:`run_nuts`'s result, where the reactions pruned before sampling get 0."""
    nu = np.asarray(idata.posterior["stoichiometry"].values)
    k = np.asarray(idata.posterior["rate_constant"].values)
    present = (np.abs(nu).max(axis=-1) >= threshold) & (k >= min_rate)
    prob = present.reshape(-1, present.shape[-1]).mean(axis=0)
    # NUTS on the pruned network samples the active reactions only: indexed by candidate,
    # a pruned reaction is absent in every draw (before, entry i was the i-th *active* one)
    n_reactions = idata.attrs.get("n_reactions")
    if n_reactions is not None and prob.size != n_reactions:
        full = np.zeros(int(n_reactions))
        full[np.asarray(idata.posterior["rate_constant"]["reaction"].values)] = prob
        return full
    return prob


def credible_interval(idata, var: str = "rate_constant", prob: float = 0.95):
    """Equal-tailed ``prob`` credible interval of a posterior variable over all chains
    and draws: ``(lower, upper)`` arrays of the variable's shape."""
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob!r}")
    x = np.asarray(idata.posterior[var].values)
    x = x.reshape((-1,) + x.shape[2:])
    tail = (1 - prob) / 2
    return np.quantile(x, tail, axis=0), np.quantile(x, 1 - tail, axis=0)


# ------------------------------------------------------------------ NUTS on the pruned net


def numpyro_model(model: CRNN, data: Experiments, prior: Prior = Prior(),
                  floor: float = NOISE_FLOOR, options: solvers.SolveOptions = DEFAULT_SOLVE,
                  sample_stoichiometry: bool = True):
    """NumPyro model of the pruned B-CRNN: only the kept coefficients (``nu``, a vector in
    row-major order of ``model.mask``) and the rate constants of active reactions
    (``log_rate``) are sampled, with ``log_sigma``; deterministic ``rate_constant`` and
    ``stoichiometry`` for the active reactions; observed site ``y``. Free orders and
    Arrhenius terms are held at ``model``'s values. With ``sample_stoichiometry=False``
    the coefficients are held at ``model``'s too (the rates of a given mechanism).

    ``model`` must be concrete (its mask decides the sites' sizes): bind it with
    ``functools.partial(numpyro_model, model)`` before handing the function to a sampler
    that traces the model's arguments, as :func:`run_nuts` does."""
    mask = np.asarray(model.mask)
    active = active_reactions(model)
    rows, cols = np.nonzero(mask)
    if sample_stoichiometry:
        nu = numpyro.sample("nu", dist.Normal(0.0, prior.stoichiometry_scale)
                            .expand([len(rows)]).to_event(1))
    else:
        nu = model.stoichiometry[rows, cols]
    log_rate = numpyro.sample("log_rate", dist.Normal(prior.log_rate_loc, prior.log_rate_scale)
                              .expand([int(active.sum())]).to_event(1))
    log_sigma = numpyro.sample("log_sigma", dist.Normal(prior.log_sigma_loc,
                                                        prior.log_sigma_scale))
    stoich = jnp.zeros(mask.shape).at[rows, cols].set(nu)
    full_log_rate = model.log_rate.at[np.flatnonzero(active)].set(log_rate)
    current = eqx.tree_at(lambda m: (m.stoichiometry, m.log_rate), model,
                          (stoich, full_log_rate))
    numpyro.deterministic("rate_constant", jnp.exp(log_rate))
    numpyro.deterministic("stoichiometry", stoich[active])
    sol = simulate(current, data.ts, data.u0, data.temperature, options=options)
    pred = solvers.sanitize(sol)
    numpyro.factor("failed_solve", jnp.sum(solvers.log_density_penalty(sol)))
    observed, sd = _noise_sd(data.ys, pred, jnp.exp(log_sigma), data.scale, floor)
    numpyro.sample("y", dist.Normal(pred, sd).mask(observed), obs=data.ys)


def run_nuts(
    model: CRNN,
    data: Experiments,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    prior: Prior = Prior(),
    floor: float = NOISE_FLOOR,
    options: solvers.SolveOptions = DEFAULT_SOLVE,
    sample_stoichiometry: bool = True,
    key: jax.Array | None = None,
    progress: bool = True,
    **nuts_kwargs,
):
    """NUTS on the pruned B-CRNN (:func:`numpyro_model`), started at ``model``'s weights
    and :func:`estimate_noise`; :func:`bayes_ude.inference.run_nuts` does the sampling
    (``nuts_kwargs`` go to it). Returns InferenceData with ``rate_constant`` and
    ``stoichiometry`` over the active reactions (coordinate ``reaction``: their indices
    among the candidates) and ``sigma``.

    ``sample_stoichiometry=False`` holds the coefficients at ``model``'s and samples only
    the rate constants and ``sigma`` (a handful of parameters: NUTS is then fast and well
    calibrated), e.g. for a mechanism whose coefficients were rounded to integers with
    :func:`bayes_ude.crnn.round_stoichiometry`."""
    check_model_data(model, data)
    mask = np.asarray(model.mask)
    active = active_reactions(model)
    if not active.any():
        raise ValueError("the model has no active reaction left to sample")
    init = {"log_rate": np.asarray(model.log_rate)[active],
            "log_sigma": math.log(estimate_noise(model, data, floor, options))}
    if sample_stoichiometry:
        init["nu"] = np.asarray(model.stoichiometry)[mask]
    dims, coords = _dims(model, np.flatnonzero(active))
    bound = functools.partial(numpyro_model, model, prior=prior, floor=floor, options=options,
                              sample_stoichiometry=sample_stoichiometry)
    idata = inference.run_nuts(
        bound, data, num_warmup=num_warmup,
        num_samples=num_samples, num_chains=num_chains, key=key, init=init,
        progress=progress, posterior_predictive=False,
        dims={"rate_constant": dims["rate_constant"], "stoichiometry": dims["stoichiometry"],
              "y": ["experiment", "time", "species"]},
        coords={**coords, "time": np.asarray(data.ts)}, **nuts_kwargs)
    idata.posterior["sigma"] = np.exp(idata.posterior["log_sigma"])
    idata.attrs["n_reactions"] = model.n_reactions  # candidates, the pruned ones included
    return idata
