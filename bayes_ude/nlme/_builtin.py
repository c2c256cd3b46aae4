"""Built-in population PK models (the ones the ``bayes-ude pk fit`` command offers).

Parameters are log-scale typical values ``tka, tcl, tv, tq, tvp`` (``exp`` gives ka in 1/h,
CL and Q in L/h, V and Vp in L, for doses in mg and concentrations in mg/L), with
exponential between-subject variability ``eta_ka, eta_cl, eta_v`` (diagonal omega) and an
optional allometric weight model ``CL, Q ∝ (WT/70)^0.75``, ``V, Vp ∝ WT/70``.
Initial values come from a non-compartmental look at the data (terminal slope and AUC),
so a fit starts close to the answer whatever the drug.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._covariate_terms import (
    CovariateTerm,
    parse_covariate_terms,
    positive_problems,
    resolve_covariate_terms,
)
from ._data_text import describe_dvids
from ._error import Additive, Combined, Exponential, Proportional
from ._model import Omega, PopulationModel
from ._model_checks import check_data
from ._pk import OneCompartmentIV, OneCompartmentOral, TwoCompartmentIV, TwoCompartmentOral
from ._structural import check_one_quantity

__all__ = [
    "BUILTIN_MODELS",
    "ERROR_MODELS",
    "BuiltinIndividual",
    "builtin_model",
    "nca_initial_estimates",
]

BUILTIN_MODELS = {
    "iv1cmt": (OneCompartmentIV, ("cl", "v")),
    "oral1cmt": (OneCompartmentOral, ("ka", "cl", "v")),
    "iv2cmt": (TwoCompartmentIV, ("cl", "v", "q", "vp")),
    "oral2cmt": (TwoCompartmentOral, ("ka", "cl", "v", "q", "vp")),
}
ERROR_MODELS = {
    "additive": (Additive, ("add_sd",)),
    "proportional": (Proportional, ("prop_sd",)),
    "combined": (Combined, ("add_sd", "prop_sd")),
    "exponential": (Exponential, ("exp_sd",)),
}
# Exponents of the allometric model (West et al. 1997; standard in population PK).
_ALLOMETRIC = {"cl": 0.75, "q": 0.75, "v": 1.0, "vp": 1.0}


def nca_initial_estimates(population, dvid: int | None = None) -> dict[str, float]:
    """Rough ``cl``, ``v``, ``ka`` from the data: per subject, the terminal slope from the
    last three positive observations and AUC (trapezoids plus the extrapolated tail) after
    the first dose; medians over subjects. Falls back to 1 where the data say nothing."""
    t = np.asarray(population.obs_time)
    y = np.asarray(population.obs_dv)
    mask = np.asarray(population.obs_mask)
    if dvid is not None:
        mask = mask & (np.asarray(population.obs_dvid) == dvid)
    dose = np.where(np.asarray(population.dose_mask), np.asarray(population.dose_amt), 0.0)
    cls, vs, kas = [], [], []
    for i in range(t.shape[0]):
        m = mask[i] & (y[i] > 0)
        if m.sum() < 3 or dose[i].sum() <= 0:
            continue
        ti, yi = t[i][m], y[i][m]
        lam = -np.polyfit(ti[-3:], np.log(yi[-3:]), 1)[0]
        if not lam > 0:
            continue
        auc = np.trapezoid(np.concatenate([[0.0], yi]), np.concatenate([[ti[0] * 0], ti]))
        auc += yi[-1] / lam
        cl = dose[i].sum() / auc
        cls.append(cl)
        vs.append(cl / lam)
        tmax = ti[np.argmax(yi)]
        kas.append(np.clip(3.0 / max(tmax, 1e-3), 3 * lam, 50.0))  # ~95 % absorbed by 1/ka*3
    if not cls:
        return {"cl": 1.0, "v": 10.0, "ka": 1.0}
    return {"cl": float(np.median(cls)), "v": float(np.median(vs)), "ka": float(np.median(kas))}


def _check_one_dvid(structural, population, dvid: int | None) -> None:
    """A built-in model predicts one quantity: its data hold one observation type."""
    if dvid is None:
        check_one_quantity(structural, population)
        return
    population.select_dvid(dvid)  # raises, naming the types there, if none is dvid
    others = {k: n for k, n in population.observed_dvids().items() if k != int(dvid)}
    if others:
        raise ValueError(
            f"model {structural.builtin_name} describes DVID {dvid}, but the population "
            f"also holds observations of DVID {describe_dvids(others)}, which it would fit "
            f"as the same quantity: pass population.select_dvid({dvid})")


def builtin_model(name: str, population, error: str = "additive",
                  allometric: str | None = None, reference_weight: float = 70.0,
                  dvid: int | None = None, eta=None,
                  covariates: str | list[CovariateTerm] | None = None,
                  omega: str | list[list[str]] = "diagonal", iov=None,
                  occasion: str = "OCC") -> PopulationModel:
    """A built-in model (``iv1cmt``, ``oral1cmt``, ``iv2cmt``, ``oral2cmt``) with data-based
    initial values.

    Parameters
    ----------
    name : model name.
    population : the data (for initial values and covariate names).
    error : ``"additive"``, ``"proportional"``, ``"combined"`` or ``"exponential"``.
    allometric : name of a weight covariate column for allometric scaling (``None``: none).
    reference_weight : weight the typical values refer to (default 70 kg).
    dvid : the observation type (``DVID``) the model describes, where the data hold
        several: the model predicts one quantity, so fit it to
        ``population.select_dvid(dvid)`` (initial values come from those observations).
        Data with several types and no ``dvid`` are an error, as is ``dvid`` with
        observations of other types left in the population.
    eta : parameters with between-subject variability (default: ``ka``, ``cl``, ``v`` where
        the model has them).
    covariates : covariate terms, as text (``"cl~WT:power,v~WT:power,cl~SEX:categorical"``)
        or :class:`CovariateTerm` objects: forms ``power``, ``linear``, ``exponential``,
        ``categorical``, centred on the median (or the most frequent level) unless a
        reference is given (``cl~WT:power:70``); see :mod:`._covariate_terms`. Their
        fixed effects are named ``<parameter>_<COLUMN>`` (``cl_SEX_2`` per level).
    omega : ``"diagonal"`` (default), ``"block"`` (one full block: every pair of random
        effects correlated) or a list of blocks of parameter names (``[["cl", "v"]]``).
    iov : parameters with inter-occasion variability (e.g. ``["cl"]``): random effects
        ``iov_<p>`` per occasion of the ``occasion`` column (variances 0.05 to start,
        diagonal, uncorrelated with the between-subject ones); see ``_occasions.py``.
    occasion : the column that numbers the occasions (default ``OCC``).
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models: {sorted(BUILTIN_MODELS)}")
    if error not in ERROR_MODELS:
        raise ValueError(f"unknown error model {error!r}; choose one of {sorted(ERROR_MODELS)}")
    if allometric is not None and allometric not in population.covariate_names:
        raise ValueError(f"allometric weight column {allometric!r} is not in the data; "
                         f"covariates there: {list(population.covariate_names)}")
    structural_cls, params = BUILTIN_MODELS[name]
    # before any initial value: a wrong compartment or no observation is said as such
    structural = structural_cls()
    check_data(structural, population)
    _check_one_dvid(structural, population, dvid)
    terms = resolve_covariate_terms(
        parse_covariate_terms(covariates) if isinstance(covariates, str) else covariates or (),
        population, params)
    nca = nca_initial_estimates(population, dvid)
    init = {"ka": nca["ka"], "cl": nca["cl"], "v": nca["v"], "q": nca["cl"], "vp": 2 * nca["v"]}
    if allometric is not None:
        w = np.asarray(population.cov_baseline)[:, population.covariate_names.index(allometric)]
        scale = np.median(w) / reference_weight
        init = {k: v / scale ** _ALLOMETRIC.get(k, 0.0) for k, v in init.items()}
    theta = {f"t{p}": float(np.log(init[p])) for p in params}
    theta.update({n: 0.0 for t in terms for n in t.theta_names()})
    if eta is None:
        with_eta = [p for p in params if p in ("ka", "cl", "v")]
    else:
        with_eta = [str(p).strip().lower() for p in eta]
        unknown = [p for p in with_eta if p not in params]
        if unknown or not with_eta:
            raise ValueError(f"eta on {unknown or 'nothing'}: model {name} has parameters "
                             f"{list(params)}")
    with_iov = [str(p).strip().lower() for p in (iov or ())]
    unknown = [p for p in with_iov if p not in params]
    if unknown:
        raise ValueError(f"iov on {unknown}: model {name} has parameters {list(params)}")
    omega_init = _omega(with_eta, omega, with_iov)
    error_cls, sigma_names = ERROR_MODELS[error]
    y = np.asarray(population.obs_dv)[np.asarray(population.obs_mask)]
    sd0 = {"add_sd": max(0.1 * float(np.std(y)), 1e-3), "prop_sd": 0.1, "exp_sd": 0.1}
    sigma = {k: sd0[k] for k in sigma_names}

    individual = BuiltinIndividual(tuple(params), tuple(with_eta), tuple(with_iov),
                                   allometric, float(reference_weight), tuple(terms))
    columns = ([allometric] if allometric else []) + [t.column for t in terms]
    return PopulationModel(structural, individual, theta=theta, omega=omega_init,
                           sigma=sigma, error=error_cls(), covariates=tuple(dict.fromkeys(columns)),
                           iov=tuple(f"iov_{p}" for p in with_iov), occasion=occasion)


@dataclasses.dataclass(frozen=True)
class BuiltinIndividual:
    """``individual(theta, eta, cov)`` of a built-in model: ``p = exp(t<p> + eta_<p> +
    iov_<p> + allometric and covariate-term shifts)``. :meth:`covariate_problems` holds new
    data to the covariate values these shifts are defined for."""

    params: tuple[str, ...]
    with_eta: tuple[str, ...]
    with_iov: tuple[str, ...]
    allometric: str | None
    reference_weight: float
    terms: tuple[CovariateTerm, ...]

    def __call__(self, theta, eta, cov):
        out = {}
        for p in self.params:
            value = theta[f"t{p}"] + (eta[f"eta_{p}"] if p in self.with_eta else 0.0)
            if p in self.with_iov:
                value = value + eta[f"iov_{p}"]
            if self.allometric is not None and p in _ALLOMETRIC:
                value = value + _ALLOMETRIC[p] * jnp.log(cov[self.allometric]
                                                         / self.reference_weight)
            for t in self.terms:
                if t.parameter == p:
                    value = value + t.shift(theta, cov)
            out[p] = jnp.exp(value)
        return out

    def covariate_problems(self, population) -> list[str]:
        """What in ``population``'s covariates the model is not defined for (one line
        each): allometric weights <= 0, and each term's :meth:`CovariateTerm.problems`."""
        problems = []
        if self.allometric is not None:
            problems += positive_problems(
                population, self.allometric,
                f"the allometric model ({self.allometric}/{self.reference_weight:g})^0.75")
        for t in self.terms:
            problems += t.problems(population)
        return problems


def _omega(with_eta: list[str], structure, with_iov: list[str] = ()) -> Omega:
    """Initial omega (variances 0.1) of the random effects ``eta_<p>`` for ``p`` in
    ``with_eta``: diagonal, one full block, or blocks of parameter names; then the
    occasion ones ``iov_<p>`` for ``p`` in ``with_iov`` (variances 0.05), diagonal."""
    names = [f"eta_{p}" for p in with_eta]
    occasion = [f"iov_{p}" for p in with_iov]
    init = np.concatenate([np.full(len(names), 0.1), np.full(len(occasion), 0.05)])
    if isinstance(structure, str):
        if structure not in ("diagonal", "block", "full"):
            raise ValueError(f"omega must be 'diagonal', 'block' or a list of blocks of "
                             f"parameter names, got {structure!r}")
        kind = "diagonal" if structure == "diagonal" else (tuple(names),)
        return Omega(tuple(names + occasion), init, kind)
    blocks = [[str(p).strip().lower() for p in block] for block in structure]
    unknown = sorted({p for b in blocks for p in b} - set(with_eta))
    if unknown:
        raise ValueError(f"omega blocks name {unknown}, which have no random effect (random "
                         f"effects on: {', '.join(with_eta)})")
    return Omega(tuple(names + occasion), init,
                 tuple(tuple(f"eta_{p}" for p in b) for b in blocks))
