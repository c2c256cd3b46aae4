"""The checks of a population model against a data set, run before any work.

:func:`check_model_data` is :meth:`PopulationModel.check` (every fit, the command, the
predictive densities); :func:`check_parameters_informed` is the fits' own (a data set of
held-out subjects need not inform every error model, and a fixed parameter needs nothing);
:func:`check_data` needs only the structural model (simulation from a design, the built-in
models' initial values). Each error names the rows, columns, subjects or parameters
concerned.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from ._data import NonmemDataWarning
from ._data_text import describe_dvids
from ._error import Exponential
from ._occasions import count_occasions
from ._structural import StructuralModel, check_observation_types

__all__ = [
    "check_data",
    "check_individual_outputs",
    "check_model_data",
    "check_parameters_informed",
    "data_or_design",
    "unused_inputs",
]


def check_data(structural: StructuralModel, population) -> None:
    """The checks of :meth:`PopulationModel.check` that need only the structural model:
    some observation to fit, and every record in a compartment the model has."""
    if not np.any(np.asarray(population.obs_mask)):
        raise ValueError("the data have no observations (none left, if some were left out): "
                         "there is nothing to fit")
    structural.check_population(population)


def check_model_data(model, population, *, design: bool = False) -> None:
    """Raise a clear error if the data cannot be used with ``model`` (a
    :class:`PopulationModel`): covariates it reads that the data lack, no observations,
    records in compartments the structural model does not have
    (:meth:`StructuralModel.check_population`), observation types the structural model
    does not predict apart (:func:`check_observation_types`: several types under one error
    model for a model of one quantity, or a type missing from its ``observe`` mapping),
    observation types without an error model, ``DV <= 0`` under the exponential error
    model (not for a ``design``, whose DV is a placeholder), covariate values the
    ``individual`` function says it is not defined for (its ``covariate_problems``, which
    the built-in and covariate models have: a categorical level they were not built with,
    log of a value <= 0). Warns (``NonmemDataWarning``) when a covariate it reads changes
    within a subject: ``individual`` sees the baseline only."""
    if model.iov:
        count_occasions(population, model.occasion)  # names the occasion column
    missing = [c for c in model.covariates if c not in population.covariate_names]
    if missing:
        raise ValueError(f"the model uses covariates {missing} that are not columns of the "
                         f"data (covariates there: {list(population.covariate_names)})")
    domain = getattr(model.individual, "covariate_problems", None)
    problems = domain(population) if domain is not None else []
    if problems:
        raise ValueError("the data's covariates do not fit the model:\n  "
                         + "\n  ".join(problems))
    read = covariates_read(model, population.covariate_names)  # declared or not
    for name in dict.fromkeys([*model.covariates, *read]):
        if model.iov and name == model.occasion:
            continue  # it numbers the occasions: it is meant to change
        varying = population.covariate_changes(name)
        if varying:
            shown = ", ".join(map(str, varying[:10])) + (" ..." if len(varying) > 10 else "")
            warnings.warn(
                f"covariate {name} changes within {len(varying)} of "
                f"{population.n_subjects} subjects ({shown}); the model's `individual` "
                f"function receives each subject's first value (its baseline) only, so "
                f"the later values are not used. A structural model that needs them reads "
                f"them over time with nlme.covariates_at(subject.cov_time, "
                f"subject.cov_value, subject.cov_mask, t).", NonmemDataWarning, stacklevel=4)
    check_data(model.structural, population)
    check_individual_outputs(model, population.covariate_names)
    models = model.error_models
    check_observation_types(model.structural, population, one_error_model=0 in models)
    mask = np.asarray(population.obs_mask)
    dvid = np.asarray(population.obs_dvid)
    if 0 not in models:
        unknown = sorted(set(dvid[mask].tolist()) - set(models))
        if unknown:
            raise ValueError(f"observations with DVID {unknown} have no error model "
                             f"(error models for DVID {sorted(models)})")
    for key, em in models.items():
        if isinstance(em, Exponential) and not design:
            sel = mask & ((dvid == key) | (key == 0))
            dv = np.asarray(population.obs_dv)
            bad = sel & ~(dv > 0)
            if bad.any():
                s, j = np.argwhere(bad)[0]
                row = int(np.asarray(population.obs_row)[s, j])
                raise ValueError(
                    f"the exponential error model needs DV > 0; subject "
                    f"{population.ids[s]}, row {row}, column DV is {dv[s, j]}")


def data_or_design(fit, population):
    """``fit``'s own data when ``population`` is None; otherwise ``population``, held to
    ``fit.model`` as a design (every check of a fit's data but DV > 0) before anything is
    simulated on it."""
    if population is None:
        return fit.population
    check_model_data(fit.model, population, design=True)
    return population


def check_individual_outputs(model, covariate_names: Sequence[str]) -> None:
    """The keys ``model.individual`` returns against the structural model's
    ``accepted_parameters`` (when it has a closed list): a key it does not read but that
    is close to one it does and that is missing (``lag`` for ``tlag``, ``F1`` for ``f``) is
    a misspelling, an error: the parameter behind it would be reported at its starting
    value. So is a parameter the structural model needs (its ``parameter_names``) that is
    not returned (it failed inside the fit, a ``KeyError``). Other unread keys (a derived
    quantity kept for the tables) are warned about."""
    accepted = model.structural.accepted_parameters
    if accepted is None:
        return
    returned = list(_traced(lambda f: lambda *a: jax.eval_shape(f, *a), model,
                            *_abstract_inputs(model, covariate_names)))
    unread = [k for k in returned if k not in accepted]
    missing = [k for k in accepted if k not in returned]
    lower = {k.lower(): k for k in missing}
    typos = {k: lower[m[0]] for k in unread
             if (m := difflib.get_close_matches(k.lower(), list(lower), n=1, cutoff=0.6))}
    label = type(model.structural).__name__
    if typos:
        shown = ", ".join(f"{k!r} (did you mean {v!r}?)" for k, v in typos.items())
        raise ValueError(f"individual() returns {shown}, which {label} does not read (it "
                         f"reads {', '.join(accepted)}): the parameters behind them would "
                         "stay at their starting values")
    needed = [k for k in model.structural.parameter_names if k not in returned]
    if needed:
        raise ValueError(f"individual() does not return {', '.join(map(repr, needed))}, "
                         f"which {label} needs (it reads {', '.join(accepted)}; individual() "
                         f"returns {', '.join(returned) or 'nothing'})")
    if not unread:
        return
    warnings.warn(f"individual() returns {unread}, which {label} does not read (it reads "
                  f"{', '.join(accepted)}); they are kept in the individual parameters only",
                  NonmemDataWarning, stacklevel=4)


def check_parameters_informed(model, population, fixed: Sequence[str] = (),
                              bayesian: bool = False) -> None:
    """Every parameter a fit estimates can be informed by the data: no fixed effect or
    random effect that ``individual`` never uses (:func:`unused_inputs`), and no error
    model for a ``DVID`` the data do not hold (``error={1: ..., 2: ...}`` fitted to PK
    alone). Each such parameter would stay where it starts, be reported as an estimate
    and make the covariance step fail for all of them (a posterior: its prior). A
    parameter in ``fixed`` is not estimated; a fixed effect with an L2 penalty is informed
    by it; an error SD shared with an observed type is informed."""
    how_fix = ("the Bayesian fits cannot hold a parameter fixed" if bayesian else
               "or hold {names} at a value with fixed={list}")
    theta, etas = unused_inputs(model, population.covariate_names)
    theta = [k for k in theta if k not in fixed and k not in model.l2]
    etas = [n for n in etas if f"omega_{n}" not in fixed]
    if theta or etas:
        what = []
        if theta:
            what.append(f"fixed effect{'s' if len(theta) > 1 else ''} {', '.join(theta)}")
        if etas:
            what.append(f"random effect{'s' if len(etas) > 1 else ''} {', '.join(etas)}")
        names = theta + [f"omega_{n}" for n in etas]
        it = "it" if len(names) == 1 else "them"
        fix = how_fix.format(names=", ".join(names), list=names)
        raise ValueError(
            f"the model's individual() never uses {' and '.join(what)}: no individual "
            f"parameter depends on {it}, so nothing in the data informs "
            f"{', '.join(names)}; use {it} in individual() or remove {it} from the model "
            f"({fix})")
    models = model.error_models
    if 0 in models:
        return
    kinds = population.observed_dvids()
    informed = {n for k, em in models.items() if k in kinds for n in em.sigma_names}
    lost: dict[str, list[int]] = {}
    for key, em in models.items():
        for name in em.sigma_names:
            if key not in kinds and name not in informed and name not in fixed:
                lost.setdefault(name, []).append(key)
    if not lost:
        return
    keys = sorted({k for keys in lost.values() for k in keys})
    dvids = ", ".join(map(str, keys))
    names = sorted(lost)
    it, which = ("them", "the error models for them") if len(keys) > 1 else (
        "it", "the error model for it")
    fix = how_fix.format(names=", ".join(names), list=names)
    raise ValueError(
        f"the data have no observations of DVID {dvids} (they hold DVID "
        f"{describe_dvids(kinds)}), so {which} inform{'s' if len(keys) == 1 else ''} nothing: "
        f"{', '.join(names)} would stay at the initial value, be reported as an estimate "
        f"and leave the whole fit without standard errors; remove {it} ({fix})")


def unused_inputs(model, covariate_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ``theta`` entries and random effects that no output of ``model.individual``
    depends on (see :func:`_used_inputs`)."""
    theta, etas, _ = _abstract_inputs(model, covariate_names)
    used = _used_inputs(model, covariate_names)
    return ([k for k in sorted(theta) if ("theta", k) not in used],
            [n for n in sorted(etas) if ("eta", n) not in used])


def covariates_read(model, covariate_names: Sequence[str]) -> list[str]:
    """The covariates (of ``covariate_names``, the data's) that an output of
    ``model.individual`` depends on, declared in ``model.covariates`` or not."""
    used = _used_inputs(model, covariate_names)
    return [c for c in sorted(covariate_names) if ("cov", c) in used]


def _used_inputs(model, covariate_names: Sequence[str]) -> set[tuple[str, str]]:
    """``(kind, name)`` of the inputs (``theta``, ``eta``, ``cov``) that an output of
    ``model.individual`` depends on, read from its traced program (``jax.make_jaxpr``:
    nothing is compiled or run). Conservative: every operation counts as taking each of
    its inputs to each of its outputs, so an input multiplied by zero, or selected away by
    a ``where``, counts as used."""
    theta, etas, cov = _abstract_inputs(model, covariate_names)
    jaxpr = _traced(jax.make_jaxpr, model, theta, etas, cov).jaxpr
    reach = {v: {i} for i, v in enumerate(jaxpr.invars)}
    for eqn in jaxpr.eqns:
        sources = set().union(*(reach.get(v, set()) for v in eqn.invars
                                if not isinstance(v, Literal)))
        if sources:
            reach.update({v: sources for v in eqn.outvars})
    used = set().union(*(reach.get(v, set()) for v in jaxpr.outvars
                         if not isinstance(v, Literal)))
    names = ([("theta", k) for k in sorted(theta)] + [("eta", n) for n in sorted(etas)]
             + [("cov", c) for c in sorted(cov)])  # jax flattens dicts in sorted order
    return {names[i] for i in used}


def _traced(transform, model, theta, etas, cov):
    """``transform(model.individual)(theta, etas, cov)``; a key it reads that its inputs
    lack (``theta["TCL"]``, a covariate the data do not have) is a ``ValueError`` naming
    the inputs there are, not a ``KeyError`` from inside the trace."""
    try:
        return transform(model.individual)(theta, etas, cov)
    except KeyError as error:
        key = error.args[0] if error.args else "?"
        raise ValueError(
            f"individual(theta, eta, cov) reads {key!r}, which none of its inputs has: theta "
            f"{sorted(theta)}, eta {sorted(etas)}, cov (the data's covariates) "
            f"{sorted(cov)}") from None


def _abstract_inputs(model, covariate_names: Sequence[str]) -> tuple[dict, dict, dict]:
    """Shapes of ``individual(theta, eta, cov)``'s inputs, to trace it without running."""
    dtype = jnp.result_type(float)
    theta = {k: jax.ShapeDtypeStruct(np.shape(v), dtype) for k, v in model.theta.items()}
    etas = {n: jax.ShapeDtypeStruct((), dtype) for n in model.omega.names}
    cov = {c: jax.ShapeDtypeStruct((), dtype) for c in covariate_names}
    return theta, etas, cov
