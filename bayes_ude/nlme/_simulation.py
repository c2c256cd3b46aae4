"""Simulation of a (new) design from a fitted model, as a NONMEM-style table.

:func:`simtab` simulates ``n`` replicates of a design (a fit's data, or a new regimen from
:func:`bayes_ude.nlme.design`) and writes them one row per simulated observation with the
typical prediction beside them. :func:`point_estimates` puts a model at given parameter
values without a fit (e.g. the ``theta``, ``omega`` and ``sigma`` of a ``summary.json``
written by ``bayes-ude pk fit``), so that such a model simulates like a fit does.

The model is specialised to the design, not to the data it was fitted on: a closed-form
model fitted to bolus doses leaves the infusion and steady-state terms out of its program,
and a new regimen may need them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._compile import ONE_OFF, filter_jit
from . import _diagnostics
from ._model import PopulationModel

__all__ = ["PointEstimates", "point_estimates", "simtab"]


@dataclasses.dataclass
class PointEstimates:
    """A population model at fixed parameter values (no fit): simulates as a fit does.

    ``u`` is the unconstrained vector (:meth:`PopulationModel.unpack`); ``population`` the
    default design of :meth:`simulate` (optional)."""

    model: PopulationModel
    u: np.ndarray
    population: object = None
    devices: tuple | None = None

    @property
    def estimates(self) -> pd.Series:
        """The natural-scale values, named as :meth:`PopulationModel.parameter_names`."""
        return pd.Series(np.asarray(self.model.natural(jnp.asarray(self.u))),
                         index=self.model.parameter_names())

    def simulate(self, n: int = 100, key=None, population=None) -> np.ndarray:
        """Simulated observations ``(n, subjects, records)`` (as
        :func:`bayes_ude.nlme.simulate`)."""
        population = self.population if population is None else population
        if population is None:
            raise ValueError("PointEstimates.simulate: give a population (a design)")
        view = dataclasses.replace(self, model=self.model.specialised(population))
        return _diagnostics.simulate(view, n, key, population)


def _flat_values(values: Mapping) -> dict[str, float]:
    """Natural-scale values by parameter name, from a flat mapping or a summary's
    ``{"theta": ..., "omega": ..., "sigma": ...}`` (omega keys without ``omega_``)."""
    if not {"theta", "omega", "sigma"} <= set(values):
        return {str(k): float(v) for k, v in values.items()}
    flat = {str(k): float(v) for k, v in values["theta"].items()}
    flat.update({k if k.startswith("omega_") else f"omega_{k}": float(v)
                 for k, v in values["omega"].items()})
    flat.update({str(k): float(v) for k, v in values["sigma"].items()})
    return flat


def point_estimates(model: PopulationModel, values: Mapping,
                    population=None) -> PointEstimates:
    """``model`` at natural-scale ``values``: a mapping parameter name -> value (names of
    :meth:`PopulationModel.parameter_names`: theta, ``omega_<eta>`` variances,
    ``omega_<a>_<b>`` covariances, sigma), a ``FitResult.estimates`` Series, or the
    ``summary.json`` of ``bayes-ude pk fit`` (its ``theta``, ``omega``, ``sigma``)."""
    flat = _flat_values(values)
    names = model.parameter_names()
    missing = [n for n in names if n not in flat]
    if missing:
        raise ValueError(f"point_estimates: no value for {missing}; the model's parameters "
                         f"are {names}")
    n_th = model.n_theta
    rows, cols = model.omega.free
    q = len(model.omega.names)
    omega = np.zeros((q, q))
    for r, c, name in zip(rows, cols, model.omega.element_names(), strict=True):
        omega[r, c] = omega[c, r] = flat[name]
    try:
        chol = np.linalg.cholesky(omega)
    except np.linalg.LinAlgError:
        raise ValueError(f"point_estimates: omega {omega.tolist()} is not positive "
                         "definite") from None
    om = chol[rows, cols]
    om = np.where(rows == cols, np.log(np.where(rows == cols, om, 1.0)), om)
    sigma = np.asarray([flat[k] for k in model.sigma_names])
    if not np.all(sigma > 0):
        raise ValueError(f"point_estimates: sigma must be > 0, got {sigma.tolist()}")
    u = np.concatenate([[flat[n] for n in names[:n_th]], om, np.log(sigma)])
    return PointEstimates(model, u, population)


@filter_jit(quick_below=ONE_OFF)
def _typical(model, u, population):
    theta = model.unpack(u)[0]
    return jax.vmap(lambda s: model.predict(theta, jnp.zeros(model.n_eta), s))(population)


def simtab(fit, population=None, n: int = 100, key: jax.Array | None = None) -> pd.DataFrame:
    """``n`` simulated replicates of ``population``'s design (default: the fitted data's),
    one row per replicate and observation: ``REP`` (1..n), ``ID``, ``TIME``, ``CMT`` and
    ``DVID`` (where the design has them), ``PRED`` (the typical subject's prediction:
    random effects 0, no residual error) and ``DV`` (simulated: new random effects and
    residual errors; a Bayesian fit draws each replicate's parameters from the posterior).

    ``fit``: a :class:`FitResult`, :class:`BayesianFitResult` or :class:`PointEstimates`.
    The model is specialised to ``population``, so a design may have dose types (infusions,
    steady state) that the fitted data did not.
    """
    design = population
    population = fit.population if population is None else population
    view = dataclasses.replace(fit, model=fit.model.specialised(population))
    key = jax.random.key(0) if key is None else key
    # the simulation holds a design to the model (data_or_design), once
    sims = np.asarray(view.simulate(n, key, design))
    pred = np.asarray(_typical(view.model, jnp.asarray(fit.u), population))
    mask = np.asarray(population.obs_mask)
    sub, _ = np.nonzero(mask)
    m = int(mask.sum())
    ids = np.asarray(population.ids, dtype=object)[sub]
    table = {"REP": np.repeat(np.arange(1, n + 1), m), "ID": np.tile(ids, n),
             "TIME": np.tile(np.asarray(population.obs_time)[mask], n)}
    if population.cmt_given:
        table["CMT"] = np.tile(np.asarray(population.obs_cmt)[mask], n)
    dvid = np.asarray(population.obs_dvid)[mask]
    if np.any(dvid != 1):
        table["DVID"] = np.tile(dvid, n)
    table["PRED"] = np.tile(pred[mask], n)
    table["DV"] = sims[:, mask].reshape(-1)
    return pd.DataFrame(table)
