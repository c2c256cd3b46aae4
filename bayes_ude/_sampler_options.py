"""One options object for every sampler a model-level fit runs (NUTS and SG-MCMC).

Fits that wrap the samplers (``bayes_ude.nlme.fit``/``fit_bayes``, and any later model
layer) take a :class:`SamplerOptions` instead of a dozen flat keyword arguments; the
settings are checked once, here, before any compilation. Public as
``bayes_ude.inference.SamplerOptions``; it lives outside ``inference`` so that a layer can
name the samplers without importing NumPyro and BlackJAX (``bayes_ude.nlme`` loads them
only when a Bayesian fit runs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["SAMPLERS", "SamplerOptions"]

_NUTS_FIELDS = ("num_warmup", "num_samples", "target_accept", "max_tree_depth", "dense_mass",
                "metric", "backend")
_SGMCMC_FIELDS = ("batch_size", "num_steps", "burn_in", "step_size", "thin")

#: The samplers a model-level Bayesian fit offers.
SAMPLERS = ("nuts", "sgld", "psgld", "sghmc")
METRICS = ("adapt", "laplace")
BACKENDS = ("numpyro", "blackjax")


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SamplerOptions.{name} must be an integer >= {minimum}, "
                         f"got {value!r}")


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """How the sampler runs.

    Shared
        ``num_chains`` (4): independent chains.
    NUTS (:func:`bayes_ude.inference.run_nuts`)
        ``num_warmup`` (1000), ``num_samples`` (1000) per chain; ``target_accept`` (0.8);
        ``max_tree_depth`` (10); ``dense_mass`` (``None``: the fit's default, diagonal
        unless the fit says otherwise; ``False``; ``True``; or ``"auto"``: dense for
        posteriors of at most 100 dimensions with at least 10 warmup iterations per
        dimension, see :func:`bayes_ude.inference.run_nuts`); ``metric``: ``"adapt"`` (estimated
        during warmup) or ``"laplace"`` (the inverse Hessian of the log joint at the
        starting point, fixed; warmup adapts only the step size); ``backend``:
        ``"numpyro"`` or ``"blackjax"``.
    SG-MCMC (:func:`bayes_ude.inference.run_sgmcmc`)
        ``batch_size`` (items per minibatch; ``None``: the fit's default), ``num_steps``
        (5000) per chain, ``burn_in`` (``None``: half), ``step_size`` (``None``: the fit's
        default; a float or a schedule ``step -> size``), ``thin`` (1).

    ``options.replace(num_samples=200)`` returns a copy with those settings changed (an
    unknown name is an error that lists the known ones).
    """

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool | str | None = None
    metric: str = "adapt"
    backend: str = "numpyro"
    batch_size: int | None = None
    num_steps: int = 5000
    burn_in: int | None = None
    step_size: float | Callable | None = None
    thin: int = 1

    def __post_init__(self):
        _positive_int("num_chains", self.num_chains)
        _positive_int("num_warmup", self.num_warmup, 0)
        _positive_int("num_samples", self.num_samples)
        _positive_int("max_tree_depth", self.max_tree_depth)
        _positive_int("num_steps", self.num_steps)
        _positive_int("thin", self.thin)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        if self.burn_in is not None:
            _positive_int("burn_in", self.burn_in, 0)
        if not 0.0 < float(self.target_accept) < 1.0:
            raise ValueError(f"SamplerOptions.target_accept must be in (0, 1), got "
                             f"{self.target_accept!r}")
        if self.metric not in METRICS:
            raise ValueError(f"SamplerOptions.metric must be one of {METRICS}, got "
                             f"{self.metric!r}")
        if not (self.dense_mass is None or isinstance(self.dense_mass, bool)
                or self.dense_mass == "auto"):
            raise ValueError(f"SamplerOptions.dense_mass must be None, True, False or "
                             f"'auto', got {self.dense_mass!r}")
        if self.metric == "laplace" and self.dense_mass is True:
            raise ValueError("metric='laplace' is a NUTS metric of its own: leave dense_mass "
                             "False")
        if self.backend not in BACKENDS:
            raise ValueError(f"SamplerOptions.backend must be one of {BACKENDS}, got "
                             f"{self.backend!r}")
        if self.step_size is not None and not callable(self.step_size) \
                and not float(self.step_size) > 0:
            raise ValueError(f"SamplerOptions.step_size must be > 0 or a schedule, got "
                             f"{self.step_size!r}")

    def check_for(self, method: str) -> None:
        """Raise ``ValueError`` if a setting of the other family of samplers (NUTS's for
        an SG-MCMC ``method``, or the reverse) differs from its default: it would be
        ignored."""
        other = _SGMCMC_FIELDS if method == "nuts" else _NUTS_FIELDS
        default = SamplerOptions()
        changed = [name for name in other if getattr(self, name) != getattr(default, name)]
        if changed:
            family = "SG-MCMC" if method == "nuts" else "NUTS"
            raise ValueError(f"sampler options {changed} are {family} settings, which "
                             f"method {method!r} does not use; leave them out")

    def replace(self, **changes) -> SamplerOptions:
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise TypeError(f"unknown sampler options {unknown}; SamplerOptions has {known}")
        return dataclasses.replace(self, **changes)
