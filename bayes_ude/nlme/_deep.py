"""DeepNLME covariate models: covariates shape individual parameters through a network.

A covariate model here is a *shift of random effects*: for the chosen random effects
``eta_p`` (e.g. ``eta_cl``) the individual function of a base model is evaluated at

``eta_p + g(w, covariates)_p``

instead of ``eta_p``. For the usual log-normal parameters ``exp(tcl + eta_cl)`` that is
``log CL_i = tcl + g(w, x_i) + eta_cl``: the covariate effect multiplies the typical value,
and whatever the covariates do not explain is left to ``eta_cl``. ``g`` is

* :class:`CovariateNetwork` — an equinox MLP of the standardised covariates (DeepNLME);
* :class:`LinearCovariates` — ``sum_k b_k (x_k - mean_k) / sd_k`` (the exponential, or
  log-linear, covariate model);
* :class:`PowerCovariates` — ``sum_k b_k log(x_k / median_k)`` (``CL ∝ prod x_k^b_k``).

Its weights ``w`` are one flat theta entry (a fixed effect), so every estimation method —
FOCEI here, NUTS and SG-MCMC in the Bayesian layer — fits them with the rest of the model;
an L2 penalty on them (``PopulationModel.l2``) is the same as a Gaussian prior.

:func:`covariate_model` builds such a model from a base model; :func:`augment` is the
two-step workflow (fit a base model, learn a network from covariates to the empirical
Bayes estimates, fold it in and refit); :func:`partial_dependence` and
:func:`population_predictions` look at any fitted model.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jaxtyping import Array

from ..nn import MLP, flatten
from ._data import Population
from ._fit import fit as run_fit
from ._model import Omega, PopulationModel

if TYPE_CHECKING:
    from ._results import FitResult

__all__ = [
    "CovariateEffect",
    "CovariateIndividual",
    "CovariateNetwork",
    "LinearCovariates",
    "PowerCovariates",
    "augment",
    "covariate_model",
    "partial_dependence",
    "population_predictions",
]

# The default L2 penalty of a covariate network's weights on the OFV (−2LL) scale:
# lambda ||w||^2 is a N(0, 1/(2 lambda)) prior, so 2 puts a N(0, 0.5^2) prior on each
# weight. Inputs are standardised, so a weight of 0.5 already moves a hidden unit across
# the data's range; the penalty pulls unused weights (an irrelevant covariate's) to zero.
# With the default 4 hidden units this was the best of the settings tried on the simulated
# population of benchmarks/deepnlme_study.py (widths 4-16, l2 0.5-10; docs/deepnlme.md).
DEFAULT_NETWORK_L2 = 2.0
DEFAULT_WIDTHS = (4,)


# ----------------------------------------------------------------------------- data access
def _covariate_matrix(data, names: Sequence[str]) -> np.ndarray:
    """Rows of covariate values ``(n, len(names))`` from a Population (baseline values),
    a DataFrame or a mapping of columns; unknown names are a clear error."""
    if isinstance(data, Population):
        available = list(data.covariate_names)
        table = np.asarray(data.cov_baseline, float)
        cols = {n: table[:, i] for i, n in enumerate(available)}
    elif isinstance(data, pd.DataFrame):
        available = [str(c) for c in data.columns]
        cols = {str(c): np.asarray(data[c], float) for c in data.columns}
    elif isinstance(data, Mapping):
        available = [str(c) for c in data]
        cols = {str(c): np.atleast_1d(np.asarray(v, float)) for c, v in data.items()}
    else:
        raise TypeError("covariate data must be a Population, a DataFrame or a mapping "
                        f"name -> values, got {type(data).__name__}")
    _check_names(names, available)
    return np.column_stack([cols[n] for n in names]) if names else np.zeros((0, 0))


def _check_names(names: Sequence[str], available: Sequence[str]) -> None:
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown covariates {unknown}; the data have covariates "
                         f"{list(available)}")


# ----------------------------------------------------------------------------- effects
class CovariateEffect(eqx.Module):
    """A covariate model ``g(w, covariates) -> shifts`` with flat weights ``w``.

    Subclasses define how covariates are transformed (:meth:`transform`, with constants
    from the training data in ``centre`` and ``scale``), the initial weights and
    :meth:`apply` on the transformed input vector.

    Attributes
    ----------
    covariates : covariate names (data columns), in input order.
    n_outputs : number of shifts (one per shifted random effect).
    centre, scale : per-covariate constants of the transform, from the training data.
    log : per covariate, whether it enters as ``log x`` (before centring and scaling).
    """

    covariates: tuple[str, ...] = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)
    centre: np.ndarray
    scale: np.ndarray
    log: tuple[bool, ...] = eqx.field(static=True, default=())

    @abc.abstractmethod
    def init_vector(self) -> np.ndarray:
        """Initial flat weights (a theta entry)."""

    @abc.abstractmethod
    def apply(self, w: Array, z: Array) -> Array:
        """Shifts ``(n_outputs,)`` for one transformed input vector ``z``."""

    def transform(self, x: Array) -> Array:
        """Raw covariates ``(..., C)`` -> inputs: ``(x - centre) / scale``, with ``log x``
        in place of ``x`` for the covariates flagged in ``log``."""
        if any(self.log):
            mask = np.asarray(self.log)
            x = jnp.where(mask, jnp.log(jnp.where(mask, x, 1.0)), x)
        return (x - self.centre) / self.scale

    def __call__(self, w: Array, covariates: Mapping[str, Array]) -> Array:
        """Shifts ``(n_outputs,)`` for one subject's covariates (mapping name -> value)."""
        x = jnp.stack([jnp.asarray(covariates[n], float) for n in self.covariates])
        return self.apply(w, self.transform(x))

    def evaluate(self, w: Array, data) -> np.ndarray:
        """Shifts ``(rows, n_outputs)`` for every row of ``data`` (Population baselines,
        DataFrame or mapping of columns)."""
        x = jnp.asarray(_covariate_matrix(data, self.covariates))
        z = self.transform(x)
        return np.asarray(jax.vmap(lambda zi: self.apply(jnp.asarray(w), zi))(z))

    def partial_dependence(self, w: Array, data, name: str, grid, output: int = 0
                           ) -> np.ndarray:
        """Partial dependence of output ``output`` on covariate ``name``: for each grid
        value, the mean over the rows of ``data`` of the output with ``name`` set to that
        value (the other covariates as they are)."""
        if name not in self.covariates:
            raise ValueError(f"{name!r} is not an input of this covariate model; its inputs "
                             f"are {list(self.covariates)}")
        if not 0 <= output < self.n_outputs:
            raise ValueError(f"output must be in 0..{self.n_outputs - 1}, got {output}")
        x = _covariate_matrix(data, self.covariates)
        j = self.covariates.index(name)
        grid = np.atleast_1d(np.asarray(grid, float))
        xs = np.repeat(x[None], grid.size, axis=0)
        xs[:, :, j] = grid[:, None]
        z = self.transform(jnp.asarray(xs))
        w = jnp.asarray(w)
        out = jax.vmap(jax.vmap(lambda zi: self.apply(w, zi)))(z)
        return np.asarray(jnp.mean(out[..., output], axis=1))


def _standardisation(population, covariates: Sequence[str], what: str,
                     log: Sequence[bool] = ()):
    x = _covariate_matrix(population, covariates)
    if x.shape[0] < 2:
        raise ValueError(f"{what} needs at least 2 subjects to standardise covariates")
    if any(log):
        mask = np.asarray(log)
        bad = [n for n, m, ok in zip(covariates, mask, np.all(x > 0, axis=0), strict=True)
               if m and not ok]
        if bad:
            raise ValueError(f"covariates {bad} have values <= 0 and cannot be log-transformed")
        x = np.where(mask, np.log(np.where(mask, x, 1.0)), x)
    centre, scale = x.mean(0), x.std(0)
    const = [n for n, s in zip(covariates, scale, strict=True) if not s > 0]
    if const:
        raise ValueError(f"covariates {const} are constant in the training data: they carry "
                         "no information (leave them out)")
    return x, centre, scale


def _check_covariates(covariates) -> tuple[str, ...]:
    if isinstance(covariates, str):
        covariates = (covariates,)
    covariates = tuple(str(c) for c in covariates)
    if not covariates:
        raise ValueError("give at least one covariate")
    if len(set(covariates)) != len(covariates):
        raise ValueError(f"covariates must be distinct, got {list(covariates)}")
    return covariates


class CovariateNetwork(CovariateEffect):
    """An MLP of the standardised covariates (DeepNLME).

    Each covariate (or its logarithm, see ``log``) is centred and scaled by its mean and
    standard deviation over the training population's subjects (constants stored in the
    module). The output is centred, ``g(x) = MLP(z(x)) - MLP(0)``: zero at the reference
    covariates (the training means), as the linear and power models are, so a typical
    value in theta stays the typical value of a reference subject (and the output bias is
    not confounded with it). The last layer starts at zero (``MLP(init="zero_last")``), so
    the shift of the random effects is exactly 0 at the start and the model starts as the
    base model.

    Parameters
    ----------
    covariates : covariate names (data columns).
    population : the training data (for the standardisation constants).
    n_outputs : number of outputs (random effects shifted).
    widths : hidden-layer widths.
    activation : hidden activation (a name in :data:`bayes_ude.nn.ACTIVATIONS` or a
        callable).
    key : PRNG key for the hidden layers' initial weights (default ``jax.random.key(0)``).
    log : covariates entering on the log scale (``True``: all of them; they must be
        positive). Physiological covariates act multiplicatively more often than not
        (allometry, Emax/Hill functions of a concentration-like marker are logistic in
        ``log x``), and the log scale spreads out their low end.

    Examples
    --------
    >>> net = CovariateNetwork(["WT", "EGFR"], population)
    >>> w = net.init_vector()            # a theta entry
    >>> net(w, {"WT": 70.0, "EGFR": 90.0})  # -> array([0.])
    """

    template: MLP

    def __init__(self, covariates: Sequence[str], population, n_outputs: int = 1,
                 widths: Sequence[int] = DEFAULT_WIDTHS, activation: str | Callable = "tanh",
                 key: jax.Array | None = None, log: bool | Sequence[str] = False):
        covariates = _check_covariates(covariates)
        log = _log_flags(covariates, log)
        _, centre, scale = _standardisation(population, covariates, "CovariateNetwork", log)
        self.log = log
        if not isinstance(n_outputs, int) or n_outputs < 1:
            raise ValueError(f"n_outputs must be a positive integer, got {n_outputs!r}")
        key = jax.random.key(0) if key is None else key
        self.covariates = covariates
        self.n_outputs = n_outputs
        self.centre = centre
        self.scale = scale
        self.template = MLP(len(covariates), n_outputs, widths=widths, activation=activation,
                            key=key, init="zero_last")

    @property
    def n_weights(self) -> int:
        return int(flatten(self.template)[0].size)

    def init_vector(self) -> np.ndarray:
        return np.asarray(flatten(self.template)[0])

    def network(self, w: Array) -> MLP:
        """The equinox network with weights ``w``."""
        return flatten(self.template)[1](w)

    def apply(self, w, z):
        # centred: no shift at the reference covariates (z = 0); the output bias cancels
        net = self.network(w)
        return net(z) - net(jnp.zeros_like(z))


def _log_flags(covariates: tuple[str, ...], log) -> tuple[bool, ...]:
    if isinstance(log, bool):
        return (log,) * len(covariates)
    log = [log] if isinstance(log, str) else list(log)
    _check_names(log, covariates)
    return tuple(c in log for c in covariates)


class LinearCovariates(CovariateEffect):
    """``g(x) = B (x - mean) / sd``: the exponential (log-linear) covariate model, one
    coefficient per covariate and output, no intercept (the typical value is one)."""

    def __init__(self, covariates: Sequence[str], population, n_outputs: int = 1):
        covariates = _check_covariates(covariates)
        _, centre, scale = _standardisation(population, covariates, "LinearCovariates")
        self.covariates = covariates
        self.n_outputs = n_outputs
        self.centre = centre
        self.scale = scale

    def init_vector(self) -> np.ndarray:
        return np.zeros(self.n_outputs * len(self.covariates))

    def apply(self, w, z):
        return w.reshape(self.n_outputs, len(self.covariates)) @ z


class PowerCovariates(CovariateEffect):
    """``g(x) = B log(x / median)``: the power covariate model ``prod_k (x_k /
    median_k)^b_k`` on a log-normal parameter (covariates must be positive)."""

    def __init__(self, covariates: Sequence[str], population, n_outputs: int = 1):
        covariates = _check_covariates(covariates)
        x, _, _ = _standardisation(population, covariates, "PowerCovariates")
        bad = [n for n, ok in zip(covariates, np.all(x > 0, axis=0), strict=True) if not ok]
        if bad:
            raise ValueError(f"the power covariate model needs positive covariates; {bad} "
                             "have values <= 0")
        self.covariates = covariates
        self.n_outputs = n_outputs
        self.centre = np.log(np.median(x, axis=0))
        self.scale = np.ones(len(covariates))

    def transform(self, x):
        return jnp.log(x) - self.centre

    def init_vector(self) -> np.ndarray:
        return np.zeros(self.n_outputs * len(self.covariates))

    def apply(self, w, z):
        return w.reshape(self.n_outputs, len(self.covariates)) @ z


# ----------------------------------------------------------------------------- the model
class CovariateIndividual(eqx.Module):
    """``individual(theta, eta, cov)`` of a base model with random effects ``etas`` shifted
    by ``effect(theta[name], cov)`` (the ``individual`` of :func:`covariate_model`)."""

    base: Callable
    effect: CovariateEffect
    name: str = eqx.field(static=True)
    etas: tuple[str, ...] = eqx.field(static=True)

    def __call__(self, theta, eta, cov):
        shift = self.effect(theta[self.name], cov)
        eta = dict(eta)
        for k, e in enumerate(self.etas):
            eta[e] = eta[e] + shift[k]
        return self.base(theta, eta, cov)


def _eta_names(model: PopulationModel, parameters) -> tuple[str, ...]:
    if isinstance(parameters, str):
        parameters = (parameters,)
    out = []
    for p in parameters:
        if p in model.eta_names:
            out.append(p)
        elif f"eta_{p}" in model.eta_names:
            out.append(f"eta_{p}")
        else:
            raise ValueError(f"no random effect for {p!r}: a covariate model shifts random "
                             f"effects, and the model's are {list(model.eta_names)}")
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
    l2 : L2 penalty on the weights (OFV scale; a ``N(0, 1/(2 l2))`` prior). Default
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
    xs = np.repeat(x[None], grid.size, axis=0)
    xs[:, :, j] = grid[:, None]
    values = _pd_values(model, thetas, jnp.asarray(xs), tuple(names), parameter)
    return pd.Series(np.asarray(values), index=pd.Index(grid, name=covariate), name=parameter)


@eqx.filter_jit
def _pd_values(model, thetas, xs, names, parameter):
    eta0 = {e: jnp.zeros(()) for e in model.eta_names}

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
