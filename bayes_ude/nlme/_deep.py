"""DeepNLME workflows: build, fit and look at models with a covariate effect.

The covariate effects themselves (a network or a formula ``g(w, covariates)`` that shifts
chosen random effects, and :class:`CovariateIndividual`, the individual function with that
shift) are the model layer in :mod:`._covariates`. This module is the workflow layer on
top of it and of :func:`bayes_ude.nlme.fit`:

* :func:`covariate_model` builds such a model from a base model;
* :func:`augment` is the two-step workflow (fit a base model, learn a network from
  covariates to the empirical Bayes estimates, fold it in and refit);
* :func:`partial_dependence` and :func:`population_predictions` look at any fitted model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from ._covariates import (
    DEFAULT_NETWORK_L2,
    DEFAULT_WIDTHS,
    CovariateEffect,
    CovariateIndividual,
    CovariateNetwork,
    LinearCovariates,
    PowerCovariates,
    _check_names,
    _covariate_matrix,
)
from ._data import Population
from ._fit import fit as run_fit
from ._model import Omega, PopulationModel
from ._results import FitResult

__all__ = [
    "augment",
    "covariate_model",
    "partial_dependence",
    "population_predictions",
]


# ----------------------------------------------------------------------------- building the model
def _eta_names(model: PopulationModel, parameters) -> tuple[str, ...]:
    if isinstance(parameters, str):
        parameters = (parameters,)
    out = []
    for p in parameters:
        if p in model.omega.names:
            out.append(p)
        elif f"eta_{p}" in model.omega.names:
            out.append(f"eta_{p}")
        else:
            raise ValueError(f"no random effect for {p!r}: a covariate model shifts random "
                             f"effects, and the model's are {list(model.omega.names)}")
    if not out or len(set(out)) != len(out):
        raise ValueError(f"give distinct parameters to shift, got {list(parameters)}")
    return tuple(out)


def _with_effect(model: PopulationModel, effect: CovariateEffect, etas: tuple[str, ...],
                 name: str, l2: float | None, w0=None, **replace) -> PopulationModel:
    if name in model.theta:
        raise ValueError(f"theta already has an entry {name!r}; choose another name")
    if effect.n_outputs != len(etas):
        raise ValueError(f"the covariate model has {effect.n_outputs} outputs for "
                         f"{len(etas)} random effects {list(etas)}")
    if l2 is not None and not l2 > 0:
        raise ValueError(f"l2 must be > 0 (or None for no penalty), got {l2!r}")
    w0 = effect.init_vector() if w0 is None else np.asarray(w0, float)
    covariates = tuple(dict.fromkeys(model.covariates + effect.covariates))
    penalties = dict(model.l2)
    if l2 is not None:
        penalties[name] = float(l2)
    fields = dict(individual=CovariateIndividual(model.individual, effect, name, etas),
                  theta={**model.theta, name: w0}, covariates=covariates, l2=penalties)
    fields.update(replace)
    return dataclasses.replace(model, **fields)


def covariate_model(
    model: PopulationModel,
    population,
    covariates: Sequence[str],
    form: str | CovariateEffect = "network",
    parameters: Sequence[str] = ("cl",),
    *,
    name: str | None = None,
    l2: float | None = None,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    activation: str | Callable = "tanh",
    key: jax.Array | None = None,
    log: bool | Sequence[str] = False,
) -> PopulationModel:
    """``model`` with a covariate model on some of its random effects.

    Parameters
    ----------
    model : the base :class:`PopulationModel`.
    population : the training data (covariate names are checked against it; the
        standardisation constants come from it).
    covariates : covariate columns the covariate model reads.
    form : ``"network"`` (a :class:`CovariateNetwork`; DeepNLME), ``"linear"``
        (:class:`LinearCovariates`), ``"power"`` (:class:`PowerCovariates`), or a
        :class:`CovariateEffect` built by hand.
    parameters : the parameters whose random effects are shifted, by parameter
        (``"cl"`` for ``eta_cl``) or random-effect name; one output each.
    name : the theta entry of the weights (default ``w_<form>``, e.g. ``w_network``).
    l2 : L2 penalty on the weights (OFV scale; a ``N(0, 1/l2)`` prior). Default
        :data:`DEFAULT_NETWORK_L2` (2) for a network, none for linear and power models.
    widths, activation, key, log : of the network (``form="network"``; see
        :class:`CovariateNetwork`).

    Returns
    -------
    PopulationModel with ``individual`` a :class:`CovariateIndividual` (its ``effect``
    is the covariate model) and the weights at their initial values (zero shift).
    """
    etas = _eta_names(model, parameters)
    if isinstance(form, CovariateEffect):
        effect = form
        _check_names(effect.covariates, _covariate_matrix_names(population))
        kind = type(form).__name__.lower()
    elif form == "network":
        effect = CovariateNetwork(covariates, population, len(etas), widths, activation, key, log)
        kind = "network"
        l2 = DEFAULT_NETWORK_L2 if l2 is None else l2
    elif form == "linear":
        effect = LinearCovariates(covariates, population, len(etas))
        kind = "linear"
    elif form == "power":
        effect = PowerCovariates(covariates, population, len(etas))
        kind = "power"
    else:
        raise ValueError("form must be 'network', 'linear', 'power' or a CovariateEffect, "
                         f"got {form!r}")
    return _with_effect(model, effect, etas, name or f"w_{kind}", l2)


def _covariate_matrix_names(population) -> list[str]:
    if isinstance(population, Population):
        return list(population.covariate_names)
    return [str(c) for c in population]


# ----------------------------------------------------------------------------- augment
@eqx.filter_jit
def _train(effect: CovariateEffect, w0, z, targets, weights, l2, steps, learning_rate):
    """Full-batch Adam on ``sum_i sum_k weights_k (c_k + g(z_i)_k - targets_ik)^2 + l2
    ||w||^2``; the unpenalised offsets ``c`` take up what a centred ``g`` cannot, the
    targets' value at the reference covariates (the refit moves it into the typical
    values)."""
    opt = optax.adam(learning_rate)

    def loss(params):
        w, c = params
        pred = jax.vmap(lambda zi: effect.apply(w, zi))(z) + c
        return jnp.sum(weights * (pred - targets) ** 2) + l2 * jnp.sum(w**2)

    def step(carry, _):
        params, state = carry
        value, g = jax.value_and_grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), value

    params = (w0, jnp.mean(targets, axis=0))
    ((w, offset), _), history = jax.lax.scan(step, (params, opt.init(params)), None,
                                             length=steps)
    return w, offset, history


def augment(
    fit: FitResult,
    covariates: Sequence[str],
    parameters: Sequence[str] = ("cl",),
    *,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    activation: str | Callable = "tanh",
    l2: float = DEFAULT_NETWORK_L2,
    key: jax.Array | None = None,
    log: bool | Sequence[str] = False,
    name: str = "w_network",
    steps: int = 3000,
    learning_rate: float = 1e-2,
    method: str | None = None,
    refit: bool = True,
    **fit_kwargs,
) -> FitResult | PopulationModel:
    """The two-step DeepNLME workflow: learn a network from covariates to the EBEs of a
    fitted base model, fold it into the model and refit.

    1. The base fit's empirical Bayes estimates ``eta_hat`` of the chosen parameters are
       the targets; a :class:`CovariateNetwork` of ``covariates`` is trained on them by
       full-batch Adam on ``sum_i r_i' Omega_d^-1 r_i + l2 ||w||^2``, ``r_i = c + g(x_i)
       - eta_hat_i`` (``Omega_d`` the fitted variances; ``c`` a free offset, as the
       network is zero at the reference covariates; the same L2 penalty as in the
       refit, i.e. weight decay).
    2. The network shifts those random effects (see :func:`covariate_model`); the model
       starts from the base fit's estimates and the trained weights, and is refitted (all
       parameters, weights included) by ``method`` (default: the base fit's).

    EBEs are shrunk towards 0, so step 1 under-estimates the effects; the refit corrects
    that. Step 1 mostly provides a good starting point.

    Parameters
    ----------
    fit : a :class:`FitResult` of the base model.
    covariates : covariate columns the network reads.
    parameters : parameters (or random-effect names) whose random effects it shifts.
    widths, activation, key, log : of the network (see :class:`CovariateNetwork`).
    l2 : L2 penalty on the weights (OFV scale) in both steps.
    name : theta entry of the weights.
    steps, learning_rate : of the Adam training in step 1.
    method : estimation method of the refit (default the base fit's).
    refit : ``False`` returns the augmented model (weights trained, not refitted) instead.
    **fit_kwargs : passed to :func:`bayes_ude.nlme.fit` (e.g. ``progress=False``).

    Returns
    -------
    The refitted :class:`FitResult` (or the model when ``refit=False``).
    """
    if not hasattr(fit, "eta") or not hasattr(fit, "model"):
        raise TypeError("augment needs a maximum-likelihood FitResult (with EBEs in .eta), "
                        f"got {type(fit).__name__}")
    population = fit.population
    base = fit.model
    if isinstance(base.individual, CovariateIndividual) and base.individual.name == name:
        raise ValueError(f"the model already has a covariate model {name!r}")
    etas = _eta_names(base, parameters)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2!r}")
    network = CovariateNetwork(covariates, population, len(etas), widths, activation, key, log)
    x = _covariate_matrix(population, network.covariates)
    z = network.transform(jnp.asarray(x))
    targets = jnp.asarray(fit.eta[list(etas)].to_numpy())
    omega = fit.omega
    weights = jnp.asarray([1.0 / omega.loc[e, e] for e in etas])
    w, _, _ = _train(network, jnp.asarray(network.init_vector()), z, targets, weights,
                     jnp.asarray(float(l2)), steps, jnp.asarray(float(learning_rate)))
    theta = {k: np.asarray(v) for k, v in fit.theta.items()}
    structure = base.omega.structure
    om = Omega(base.omega.names, np.asarray(omega.to_numpy()), structure)
    model = _with_effect(dataclasses.replace(base, theta=theta, omega=om, sigma=fit.sigma),
                         network, etas, name, l2, w0=np.asarray(w))
    if not refit:
        return model
    return run_fit(model, population, method or fit.method, **fit_kwargs)


# ----------------------------------------------------------------------------- looking at fits
def _fit_result_parts(fit, max_draws: int = 200):
    """``(model, thetas, population)`` of a fit result or a pair ``(model, theta)``.

    ``thetas`` has a leading axis of parameter sets: one for a point estimate, up to
    ``max_draws`` posterior draws (evenly spaced over the pooled chains) for a Bayesian
    result (one with ``u_draws``).
    """
    if isinstance(fit, tuple):
        model, theta = fit
        population = None
    else:
        model, theta, population = fit.model, fit.theta, getattr(fit, "population", None)
    u_draws = getattr(fit, "u_draws", None)
    if u_draws is not None:
        flat = np.reshape(np.asarray(u_draws), (-1, np.shape(u_draws)[-1]))
        idx = np.unique(np.linspace(0, flat.shape[0] - 1, min(max_draws, flat.shape[0])
                                    ).astype(int))
        thetas = jax.vmap(lambda u: model.unpack(u)[0])(jnp.asarray(flat[idx]))
        return model, thetas, population
    thetas = {k: jnp.asarray(v)[None] for k, v in theta.items()}
    return model, thetas, population


def _check_grid(model, names, baseline, j, grid) -> None:
    """Grid values of covariate ``j`` that ``model.individual`` is not defined for (its
    ``covariate_problems``: ``log 0`` of a network input, a power form of 0, a categorical
    level it was not built with) are an error, as in :meth:`CovariateEffect.
    partial_dependence`; they gave a saturated or infinite parameter without a word."""
    domain = getattr(model.individual, "covariate_problems", None)
    if domain is None:
        return
    rows = np.repeat(baseline[None], grid.size, axis=0)
    rows[:, j] = grid
    probe = SimpleNamespace(covariate_names=tuple(names), cov_baseline=rows,
                            ids=tuple(f"grid value {g:g}" for g in grid),
                            covariate_changes=lambda name: [])
    problems = domain(probe)
    if problems:
        raise ValueError(f"partial_dependence: the grid of {names[j]} leaves what the model "
                         "is defined for:\n  " + "\n  ".join(problems))


def partial_dependence(fit, covariate: str, grid=None, *, population=None,
                       parameter: str = "cl") -> pd.Series:
    """Partial dependence of a typical individual parameter on one covariate.

    For each grid value ``g``: the mean over the subjects of ``population`` of the
    individual parameter at ``eta = 0`` with ``covariate`` set to ``g`` (the subject's
    other covariates as they are). Works for any model (with or without a covariate
    model; a model that ignores the covariate gives a flat curve). For a Bayesian fit
    (a result with posterior draws ``u_draws``) it is the posterior mean of that curve
    over up to 200 draws — not the curve at the posterior medians of the weights, which
    need not be a network the posterior supports.

    Parameters
    ----------
    fit : a fit result (``.model``, ``.theta``; :class:`FitResult`, or
        :class:`BayesianFitResult`) or a pair ``(model, theta)``.
    covariate : the covariate column.
    grid : values of the covariate (default: 25 points from its 5th to 95th percentile
        in ``population``).
    population : subjects to average over (default: the fit's data).
    parameter : the individual parameter (a key of what ``individual`` returns).

    Returns
    -------
    Series indexed by the grid (named ``covariate``), named ``parameter``.
    """
    model, thetas, fit_population = _fit_result_parts(fit)
    population = fit_population if population is None else population
    if population is None:
        raise ValueError("give the population to average over")
    names = list(population.covariate_names)
    _check_names([covariate], names)
    x = np.asarray(population.cov_baseline, float)
    j = names.index(covariate)
    if grid is None:
        grid = np.linspace(*np.percentile(x[:, j], [5, 95]), 25)
    grid = np.atleast_1d(np.asarray(grid, float))
    _check_grid(model, names, x[0], j, grid)
    xs = np.repeat(x[None], grid.size, axis=0)
    xs[:, :, j] = grid[:, None]
    values = _pd_values(model, thetas, jnp.asarray(xs), tuple(names), parameter)
    return pd.Series(np.asarray(values), index=pd.Index(grid, name=covariate), name=parameter)


@eqx.filter_jit
def _pd_values(model, thetas, xs, names, parameter):
    eta0 = {e: jnp.zeros(()) for e in model.omega.names}

    def one(theta, row):
        out = model.individual(theta, eta0, {n: row[i] for i, n in enumerate(names)})
        if parameter not in out:
            raise ValueError(f"unknown individual parameter {parameter!r}; the model's are "
                             f"{sorted(out)}")
        return out[parameter]

    def curve(theta):
        return jnp.mean(jax.vmap(jax.vmap(lambda r: one(theta, r)))(xs), axis=1)

    return jnp.mean(jax.lax.map(curve, thetas), axis=0)


def population_predictions(fit, population=None) -> np.ndarray:
    """Population predictions (``eta = 0``, no EBEs) at every observation record,
    ``(subjects, records)`` — padding included (use ``population.obs_mask``).

    ``fit`` is a fit result (``.model``, ``.theta``) or a pair ``(model, theta)``;
    ``population`` defaults to the fit's data (give held-out subjects here). For a
    Bayesian fit: the posterior median of the typical prediction over up to 200 draws.
    """
    model, thetas, fit_population = _fit_result_parts(fit)
    population = fit_population if population is None else population
    if population is None:
        raise ValueError("give the population to predict")
    model.check(population)
    model = model.specialised(population)
    return np.asarray(_typical_predictions(model, thetas, population))


@eqx.filter_jit
def _typical_predictions(model, thetas, population):
    eta0 = jnp.zeros(model.n_eta)

    def one(theta):
        return jax.vmap(lambda s: model.predict(theta, eta0, s))(population)

    return jnp.median(jax.lax.map(one, thetas), axis=0)
