"""The structural-model interface, and what every structural model shares.

A structural model maps one subject's individual parameters and doses to predictions at its
records (:class:`StructuralModel`). This module holds the interface and the helpers that
the closed-form (``_pk.py``), ODE (``_ode_model.py``, ``_fixed_step.py``) and PK/PD
(``_warfarin.py``, ``_network_pk.py``) models share: the check of the data's compartments,
the choice of a prediction by observation type, and the dose table of a subject.

Compartments are numbered from 1, NONMEM style. :meth:`StructuralModel.check_population`
(called by every fit) rejects records in a compartment the model does not have, naming the
rows: a model states which ``CMT`` values doses and observations may have, and when the
table has no ``CMT`` column every record has the reader's default 1, which stands for the
model's own dosing and observation compartments.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._data_text import _rows_text, describe_dvids

__all__ = ["NETWORK_CONC_SCALE", "StructuralModel", "check_compartments",
           "check_observation_types", "check_one_quantity", "dose_table", "observe_states",
           "observe_types", "select_by_dvid"]

#: Reference concentration scale of a network's concentration input (mg/L): the networks
#: inside warfarin's drug effect and the Michaelis-Menten elimination see ``C / 10``.
NETWORK_CONC_SCALE = 10.0


class StructuralModel(eqx.Module):
    """Maps one subject's individual parameters and doses to predictions at its records.

    A model states which ``CMT`` values it accepts through :attr:`compartment_names`,
    :attr:`dose_compartments` and :attr:`observation_compartments`;
    :meth:`check_population` holds the data to them.
    """

    #: the built-in name (``bayes-ude pk fit --model``), for messages; "" if none
    builtin_name: ClassVar[str] = ""
    #: the compartment whose concentration the model predicts, whatever an observation's
    #: ``CMT`` (closed-form models; ``None``: not stated), for messages
    central_compartment: ClassVar[int | None] = None

    def specialise(self, population) -> StructuralModel:
        """A version for this data set (e.g. without unused dose types); default: itself."""
        return self

    @property
    def compartment_names(self) -> Mapping[int, str]:
        """The model's compartments, ``{CMT: name}`` (empty: not stated). Default: for a
        model with ``n_states``, ``{1: "state 0", ...}``."""
        n = getattr(self, "n_states", None)
        return {} if n is None else {k: f"state {k - 1}" for k in range(1, int(n) + 1)}

    @property
    def dose_compartments(self) -> Mapping[int, str] | None:
        """``{CMT: what a dose there is}`` for the compartments doses may go into;
        ``None``: any (not checked). Default: every compartment."""
        names = self.compartment_names
        return {k: f"into {v}" for k, v in names.items()} if names else None

    @property
    def observation_compartments(self) -> Sequence[int] | None:
        """The ``CMT`` values an observation may have; ``None``: any (not checked).
        Default: every compartment (the observation function decides what is seen)."""
        return tuple(self.compartment_names) or None

    @property
    def observation_types(self) -> tuple[int, ...] | None:
        """The observation types (``DVID``) the model predicts apart: ``()`` if it
        predicts one quantity for every record whatever its ``DVID`` (the closed-form
        models, an ODE model with one ``observe``), ``None`` if not stated (a user's
        subclass; not checked). :meth:`PopulationModel.check` holds the data to it
        (:func:`check_observation_types`)."""
        return None

    @property
    def needs_doses(self) -> bool:
        """Whether every prediction is 0 without doses (a PK model)."""
        return False

    def check_population(self, population) -> None:
        """Raise ``ValueError`` if the data do not fit the model's compartments.

        Every real dose's ``CMT`` must be one of :attr:`dose_compartments` and every real
        observation's one of :attr:`observation_compartments`; when the table had no
        ``CMT`` column (``population.cmt_given`` false) every record has the reader's
        default 1, which stands for the model's own dosing and observation compartments
        and is not checked. A model that :attr:`needs_doses` needs at least one dose. The
        message names the rows, the ``CMT`` and the model's compartments.
        """
        check_compartments(self, population)

    @abc.abstractmethod
    def predict(self, params: Mapping[str, Array], subject) -> Float[Array, " n_obs"]:
        """Predictions at ``subject.obs_time`` (one subject of a ``Population``)."""

    #: individual-parameter names the model reads (for error messages)
    parameter_names: ClassVar[tuple[str, ...]] = ()
    #: every individual-parameter name the model can read, when that is a closed list
    #: (``None``: any, e.g. an ODE model's vector field); ``check_model_data`` holds the
    #: keys ``individual`` returns to it, so that a misspelt one is not silently unused
    accepted_parameters: ClassVar[tuple[str, ...] | None] = None
    #: how the outer (population-parameter) gradient of FOCE/FOCEI/Laplace is taken:
    #: ``"reverse"``, or ``"forward"`` (one directional derivative per parameter) for
    #: models that JAX cannot differentiate in reverse mode to third order
    outer_gradient: ClassVar[str] = "reverse"
    #: whether small populations' programs may be compiled quickly (unoptimised code,
    #: ~2x slower: bayes_ude._compile), which pays only where an evaluation is cheap;
    #: not for ODE models (warfarin's PK/PD: a fit 33 s instead of 15 s)
    compile_quickly: ClassVar[bool] = False


def _and(items: Sequence[str], word: str = "and") -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} {items[-1]}"


def _model_label(model) -> str:
    name = type(model).__name__
    return f"{model.builtin_name} ({name})" if model.builtin_name else name


def check_one_quantity(model: StructuralModel, population) -> None:
    """A model that predicts one quantity for every observation (a built-in one, an ODE
    model with one ``observe``): data holding several observation types (``DVID``) would
    all be fitted as that quantity."""
    kinds = population.observed_dvids()
    if len(kinds) > 1:
        how = ("(builtin_model(..., dvid=k)), or use a model with an error model per DVID"
               if model.builtin_name else
               "or give the model an observe function per DVID (observe={dvid: ...}), or "
               "an error model per DVID (error={dvid: ...}) if the types are one quantity "
               "measured differently")
        raise ValueError(
            f"the data hold {len(kinds)} kinds of observation, DVID {describe_dvids(kinds)}; "
            f"model {_model_label(model)} predicts one quantity and would fit them all as "
            f"it: fit population.select_dvid(k) for one of them {how}")


def check_observation_types(model: StructuralModel, population, one_error_model: bool
                            ) -> None:
    """Every observation gets a prediction of its own type: a model that predicts some
    types apart (:attr:`StructuralModel.observation_types`) must cover each ``DVID`` of
    the data, which would otherwise get another type's prediction; a model that predicts
    one quantity, under one error model, must not meet several types
    (:func:`check_one_quantity`). An error model per ``DVID`` with a one-quantity model
    is allowed: one quantity measured in several ways (assays)."""
    types = model.observation_types
    if types is None:
        return
    if not types:
        if one_error_model:
            check_one_quantity(model, population)
        return
    kinds = population.observed_dvids()
    unknown = {k: n for k, n in kinds.items() if k not in types}
    if unknown:
        raise ValueError(
            f"the data hold observations of DVID {describe_dvids(unknown)}, which model "
            f"{_model_label(model)} does not predict (it predicts DVID "
            f"{', '.join(map(str, types))}): each would get the prediction of DVID "
            f"{types[0]}; add a prediction for them (observe={{dvid: ...}}) or leave them "
            f"out (population.select_dvid, or MDV = 1)")


def check_dose_kinds(population, what: str, *, infusions: bool = False,
                     compartments: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` unless every dose is a bolus (or an infusion, with
    ``infusions``): no steady state or reset, which models solved forward from the first
    record cannot honour, into one of ``compartments`` (1-based) when given."""
    mask = np.asarray(population.dose_mask)
    problems = []
    if not infusions and np.any(np.asarray(population.dose_rate)[mask] > 0):
        problems.append("infusions (RATE > 0)")
    if np.any(np.asarray(population.dose_ss)[mask]):
        problems.append("steady-state doses (SS = 1)")
    if np.any(np.asarray(population.reset_mask)):
        problems.append("resets (EVID 3/4)")
    if compartments is not None:
        cmt = sorted(set(np.asarray(population.dose_cmt)[mask].tolist()) - set(compartments))
        if cmt:
            problems.append(f"doses into CMT {cmt} (expected CMT {list(compartments)})")
    if problems:
        kinds = "bolus doses and infusions" if infusions else "bolus doses"
        raise ValueError(f"{what} supports {kinds} only; the data have "
                         f"{_and(problems)} (a closed-form model handles them; or give "
                         "the doses explicitly, with ADDL)")


def check_compartments(model: StructuralModel, population) -> None:
    """:meth:`StructuralModel.check_population` for any model (see there)."""
    label = _model_label(model)
    dose_mask = np.asarray(population.dose_mask, dtype=bool)
    if model.needs_doses and not dose_mask.any():
        raise ValueError(f"the data have no doses, so every prediction of {label} is 0; "
                         "a PK model needs the dose records (EVID 1 with AMT)")
    if not getattr(population, "cmt_given", True):
        return  # every CMT is the reader's default 1: the model's own compartments
    names = model.compartment_names
    doses = model.dose_compartments
    observed = model.observation_compartments
    ids = population.ids
    lines = []

    def offending(mask, cmt, row, allowed, what):
        bad = mask & ~np.isin(cmt, list(allowed))
        for c in sorted(set(cmt[bad].tolist())):
            at = bad & (cmt == c)
            subjects = list(dict.fromkeys(ids[s] for s in np.nonzero(at)[0]))
            rows = sorted(set(row[at].tolist()))
            which = ("a compartment the model does not have" if c not in names
                     else f"the {names[c]} compartment")
            shown = ", ".join(str(x) for x in subjects[:5]) + (", ..." if len(subjects) > 5
                                                                else "")
            lines.append((rows[0], f"{_rows_text(rows)} (subject"
                                   f"{'s' if len(subjects) > 1 else ''} {shown}): {what} "
                                   f"CMT {c}, {which}"))

    if doses is not None:
        offending(dose_mask, np.asarray(population.dose_cmt), np.asarray(population.dose_row),
                  doses, "dose into")
    obs_mask = np.asarray(population.obs_mask, dtype=bool)
    obs_cmt = np.asarray(population.obs_cmt)
    if observed is not None:
        offending(obs_mask, obs_cmt, np.asarray(population.obs_row), observed,
                  "observation in")
    if not lines:
        return
    lines = [text for _, text in sorted(lines)]
    if names:
        has = (f"has compartments {_and([f'{k} ({v})' for k, v in names.items()])}"
               if len(names) > 1 else
               f"has one compartment, {_and([f'{k} ({v})' for k, v in names.items()])}")
    else:
        has = "does not state its compartments"
    parts = [f"the data do not fit the compartments of {label}: it {has}"]
    if doses is not None:
        parts.append(f"doses go into {_and([f'{k} ({v})' for k, v in doses.items()], 'or')}")
    if observed is not None:
        text = f"an observation's CMT must be {_and([str(k) for k in observed], 'or')}"
        if model.central_compartment is not None and observed[0] in names:
            text += f" (the model predicts the {names[observed[0]]} concentration)"
        if 1 not in observed:
            text += " -- or 1 everywhere, in a table without a CMT column"
        parts.append(text)
    message = "; ".join(parts) + ":\n" + "\n".join(f"  - {line}" for line in lines[:20])
    if len(lines) > 20:
        message += f"\n  ... and {len(lines) - 20} more"
    if observed is not None and 1 not in observed and np.any(obs_mask & (obs_cmt == 1)):
        message += "\n(a CMT that is missing or 0 reads as 1)"
    dose_cmt = np.asarray(population.dose_cmt)[dose_mask]
    if (model.builtin_name.startswith("iv") and np.any(obs_mask & (obs_cmt == 2))
            and np.all(dose_cmt == 1)):
        message += ("\nThese look like oral data (doses into CMT 1, a depot; observations "
                    "in CMT 2, the central compartment): use an oral model (oral1cmt or "
                    "oral2cmt).")
    raise ValueError(message)


def select_by_dvid(outputs: Mapping[int, Array], dvid: Int[Array, " n_obs"]
                   ) -> Float[Array, " n_obs"]:
    """Per record, the entry of ``outputs`` (``{dvid: values at every record}``) for its
    observation type ``dvid``; a record whose ``DVID`` is none of the keys gets the first
    entry's value (padding, or a single-type model)."""
    items = list(outputs.items())
    out = items[0][1]
    for key, value in items[1:]:
        out = jnp.where(dvid == key, value, out)
    return out


def observe_types(observe: Callable | Mapping[int, Callable]) -> tuple[int, ...]:
    """:attr:`StructuralModel.observation_types` of a model whose predictions come from
    ``observe`` (one function: one quantity, ``()``; a mapping: its ``DVID`` keys)."""
    return () if callable(observe) else tuple(int(k) for k in observe)


def observe_states(observe: Callable | Mapping[int, Callable], states, params, subject
                   ) -> Float[Array, " n_obs"]:
    """Predictions from the states at the observation records: ``observe(states[i],
    params)`` for one observe function, or for a mapping ``{dvid: observe}`` the function
    of each record's ``DVID`` (:func:`select_by_dvid`)."""
    if callable(observe):
        return jax.vmap(lambda a: observe(a, params))(states)
    return select_by_dvid({key: jax.vmap(lambda a, fn=fn: fn(a, params))(states)
                           for key, fn in observe.items()}, subject.obs_dvid)


def dose_table(subject, compartment: int = 1):
    """Dose times and amounts (padding and doses elsewhere: amount 0)."""
    into = subject.dose_mask & (subject.dose_cmt == compartment)
    return subject.dose_time, jnp.where(into, subject.dose_amt, 0.0)
