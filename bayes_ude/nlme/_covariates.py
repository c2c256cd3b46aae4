"""Covariate effects: covariates shape individual parameters through a network or a formula.

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
:class:`CovariateIndividual` is the ``individual`` function of a base model with such a
shift.

This is the model layer: it builds no fits. The workflows that build models from these
effects and fit them (:func:`~bayes_ude.nlme.covariate_model`,
:func:`~bayes_ude.nlme.augment`, ...) are in :mod:`._deep`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array

from ..nn import MLP, flatten
from ._covariate_terms import positive_problems
from ._data import Population

__all__ = [
    "CovariateEffect",
    "CovariateIndividual",
    "CovariateNetwork",
    "LinearCovariates",
    "PowerCovariates",
]


# The default L2 penalty of a covariate network's weights on the OFV (−2LL) scale:
# lambda ||w||^2 is the -2 log density of a N(0, 1/lambda) prior, so 2 puts a N(0, 0.71^2)
# prior on each weight. Inputs are standardised, so a weight of 0.5 already moves a hidden
# unit across the data's range; the penalty pulls unused weights (an irrelevant
# covariate's) to zero.
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

    def logged(self) -> tuple[str, ...]:
        """The covariates that enter as ``log x`` (so must be > 0)."""
        return tuple(c for c, flag in zip(self.covariates, self.log, strict=False) if flag)

    def covariate_problems(self, population) -> list[str]:
        """What in ``population`` (new data) the effect is not defined for: a logged
        covariate <= 0 (a network would saturate at ``log 0 = -inf`` without a word)."""
        return [line for c in self.logged() if c in population.covariate_names
                for line in positive_problems(population, c,
                                              f"{type(self).__name__} (log {c})")]

    def __call__(self, w: Array, covariates: Mapping[str, Array]) -> Array:
        """Shifts ``(n_outputs,)`` for one subject's covariates (mapping name -> value)."""
        x = jnp.stack([jnp.asarray(covariates[n], float) for n in self.covariates])
        return self.apply(w, self.transform(x))

    def evaluate(self, w: Array, data) -> np.ndarray:
        """Shifts ``(rows, n_outputs)`` for every row of ``data`` (Population baselines,
        DataFrame or mapping of columns)."""
        z = self._checked_inputs(_covariate_matrix(data, self.covariates))
        return np.asarray(jax.vmap(lambda zi: self.apply(jnp.asarray(w), zi))(z))

    def _checked_inputs(self, x: np.ndarray) -> Array:
        """:meth:`transform` of raw covariates ``(..., C)``, refusing a logged one <= 0."""
        bad = [c for c in self.logged() if not np.all(x[..., self.covariates.index(c)] > 0)]
        if bad:
            raise ValueError(f"covariates {bad} enter as log x, so must be > 0; the data "
                             "(or grid) have values <= 0 or missing")
        return self.transform(jnp.asarray(x))

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
        z = self._checked_inputs(xs)
        w = jnp.asarray(w)
        out = jax.vmap(jax.vmap(lambda zi: self.apply(w, zi)))(z)
        return np.asarray(jnp.mean(out[..., output], axis=1))


def _standardisation(population, covariates: Sequence[str], what: str,
                     log: Sequence[bool] = ()):
    if (isinstance(population, pd.DataFrame) and "ID" in population.columns
            and population["ID"].duplicated().any()):
        # a NONMEM table of records: its statistics would weigh each subject by its record
        # count (a median of 81.85 where the subjects' is 81.65)
        raise ValueError(f"{what}: the training data are a table of records (ID repeated); "
                         "pass the Population (nlme.read_nonmem) or one row per subject")
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


def _log_flags(covariates: tuple[str, ...], log) -> tuple[bool, ...]:
    if isinstance(log, bool):
        return (log,) * len(covariates)
    log = [log] if isinstance(log, str) else list(log)
    _check_names(log, covariates)
    return tuple(c in log for c in covariates)


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

    def logged(self) -> tuple[str, ...]:
        return self.covariates

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

    def covariate_problems(self, population) -> list[str]:
        """The effect's and the base model's (see ``check_model_data``)."""
        base = getattr(self.base, "covariate_problems", None)
        return (self.effect.covariate_problems(population)
                + (base(population) if base is not None else []))

    def __call__(self, theta, eta, cov):
        shift = self.effect(theta[self.name], cov)
        eta = dict(eta)
        for k, e in enumerate(self.etas):
            eta[e] = eta[e] + shift[k]
        return self.base(theta, eta, cov)
