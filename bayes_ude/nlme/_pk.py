"""Structural PK models: closed-form compartment models and ODE models with doses.

Closed form. A linear compartment model's response to a unit bolus into compartment ``c``
is a sum of exponentials, ``C(t) = sum_k coef[c, k] * exp(-lam[k] * t)`` (central
concentration). Everything else follows from that kernel by superposition, one dose at a
time, with no ODE solve:

* bolus of amount ``a`` at ``td``: ``a * kernel(t - td)``;
* zero-order infusion at rate ``r`` for ``T = a / r``: the kernel integrated over the
  infusion, ``r * sum_k coef_k / lam_k * (exp(-lam_k * max(tau - T, 0)) - exp(-lam_k * tau))``;
* steady state (``SS = 1``, dosing interval ``II``): the dose and all its predecessors
  ``td - n II`` summed as a geometric series, ``exp(-lam tau) / (1 - exp(-lam II))``;
* a reset (EVID 3/4, or an SS dose, which resets the system in NONMEM) cuts off the
  contributions of all earlier doses from the reset time on.

An observation at the time of a dose sees the state just before that dose (as
:func:`bayes_ude.solvers.solve` does), so e.g. a pre-dose sample at time 0 is 0.

Compartments are numbered from 1, NONMEM style: oral models have 1 = depot, 2 = central
(3 = peripheral); IV models have 1 = central (2 = peripheral).
:meth:`StructuralModel.check_population` (called by every fit) rejects records in a
compartment the model does not have, naming the rows: a dose may go into any compartment of
a closed-form model (into the depot it is absorbed, elsewhere it is a bolus or infusion
there); an observation is the central concentration, so its ``CMT`` must be the central
compartment -- or 1 throughout when the table has no ``CMT`` column (the reader's default).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import solvers
from ._data import _rows_text

__all__ = [
    "ClosedFormModel",
    "OneCompartmentIV",
    "OneCompartmentOral",
    "TwoCompartmentIV",
    "TwoCompartmentOral",
    "ODEModel",
    "StructuralModel",
]

# Two exponents closer than this (relative) make the closed forms' coefficients blow up as
# 1 / (ka - k); the larger one is nudged apart by this factor. The error this introduces in a
# concentration is of the same relative size, far below any assay's precision.
_SEPARATION = 1e-7


class StructuralModel(eqx.Module):
    """Maps one subject's individual parameters and doses to predictions at its records.

    A model states which ``CMT`` values it accepts through :attr:`compartment_names`,
    :attr:`dose_compartments` and :attr:`observation_compartments`;
    :meth:`check_population` holds the data to them.
    """

    #: the built-in name (``bayes-ude pk fit --model``), for messages; "" if none
    builtin_name: ClassVar[str] = ""

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
    #: how the outer (population-parameter) gradient of FOCE/FOCEI/Laplace is taken:
    #: ``"reverse"``, or ``"forward"`` (one directional derivative per parameter) for
    #: models that JAX cannot differentiate in reverse mode to third order
    outer_gradient: ClassVar[str] = "reverse"


def _and(items: Sequence[str], word: str = "and") -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} {items[-1]}"


def _model_label(model) -> str:
    name = type(model).__name__
    return f"{model.builtin_name} ({name})" if model.builtin_name else name


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
        if isinstance(model, ClosedFormModel) and observed[0] in names:
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


def _separate(a, b):
    """``a`` nudged away from ``b`` when the two are (relatively) too close."""
    close = jnp.abs(a - b) < _SEPARATION * jnp.maximum(jnp.abs(a), jnp.abs(b))
    return jnp.where(close, a * (1 + 2 * _SEPARATION), a)


class ClosedFormModel(StructuralModel):
    """A linear compartment model with a sum-of-exponentials unit-dose response.

    Individual parameters (keys of the ``params`` mapping, lower case): the model's own
    (``cl``, ``v``, and ``ka``, ``q``, ``vp`` where they apply) plus optional ``f``
    (bioavailability of doses into the dosing compartment, default 1) and ``tlag`` (lag
    time of those doses, default 0).
    """

    n_compartments: int = eqx.field(static=True, default=1)
    dosing_compartment: int = eqx.field(static=True, default=1)
    #: whether the data may contain infusions, steady-state doses and resets
    #: (:meth:`specialise` turns off what a data set does not use)
    infusions: bool = eqx.field(static=True, default=True)
    steady_state: bool = eqx.field(static=True, default=True)
    resets: bool = eqx.field(static=True, default=True)
    #: the compartments ``{CMT: name}`` and what a dose into each is (subclasses); the
    #: defaults number ``1..n_compartments``
    compartment_table: ClassVar[Mapping[int, str] | None] = None
    dose_table: ClassVar[Mapping[int, str] | None] = None
    #: the compartment whose concentration the model predicts (``None``: not stated, the
    #: observations' CMT is not checked)
    central_compartment: ClassVar[int | None] = None

    @property
    def compartment_names(self) -> Mapping[int, str]:
        if self.compartment_table is not None:
            return self.compartment_table
        return {k: f"compartment {k}" for k in range(1, self.n_compartments + 1)}

    @property
    def dose_compartments(self) -> Mapping[int, str]:
        if self.dose_table is not None:
            return self.dose_table
        return {k: f"into {v}" for k, v in self.compartment_names.items()}

    @property
    def observation_compartments(self) -> tuple[int, ...] | None:
        """The central compartment: a closed form predicts its concentration whatever
        an observation's ``CMT``."""
        return None if self.central_compartment is None else (self.central_compartment,)

    @property
    def needs_doses(self) -> bool:
        return True

    @abc.abstractmethod
    def exponents(self, p: Mapping[str, Array]) -> tuple[Array, Array]:
        """``(lam, coef)``: rates ``(K,)`` and coefficients ``(n_compartments, K)``."""

    def concentration(self, p: Mapping[str, Array], times, dose_time, dose_amt, dose_cmt,
                      dose_rate, dose_ss, dose_ii, dose_mask, reset_time=None):
        """Central concentration at ``times`` after the given doses (all 1-D arrays)."""
        lam, coef = self.exponents(p)
        f = p.get("f", 1.0)
        tlag = p.get("tlag", 0.0)
        into_dosing = dose_cmt == self.dosing_compartment
        amt = dose_amt * jnp.where(into_dosing, f, 1.0)
        td = dose_time + jnp.where(into_dosing, tlag, 0.0)
        cmt_index = jnp.clip(dose_cmt - 1, 0, self.n_compartments - 1)
        c = coef[cmt_index]  # (n_dose, K)
        tau = times[:, None] - td[None, :]  # (n_obs, n_dose)
        active = (tau > 0) & dose_mask[None, :]
        if self.steady_state or (self.resets and reset_time is not None):
            # Each dose stops counting at the first reset after it (EVID 3/4 or a later SS
            # dose).
            resets = [jnp.where(dose_mask & dose_ss, dose_time, jnp.inf)]
            if reset_time is not None:
                resets.append(reset_time)
            resets = jnp.concatenate(resets)
            later = resets[None, :] > dose_time[:, None]
            until = jnp.min(jnp.where(later, resets[None, :], jnp.inf), axis=1)
            active = active & (times[:, None] < until[None, :])
        tau = jnp.where(active, tau, 0.0)
        lam_ = lam[None, None, :]
        decay = jnp.exp(-lam_ * tau[..., None])  # (n_obs, n_dose, K)
        if self.steady_state:
            is_ss = dose_ss[None, :, None]
            ii = jnp.where(dose_ss, dose_ii, 1.0)[None, :, None]
            # geometric series over the steady-state predecessors (1 when not at steady state)
            ss_factor = jnp.where(is_ss, 1.0 / -jnp.expm1(-lam_ * ii), 1.0)
        else:
            ss_factor = 1.0
        per_dose = amt[None, :, None] * decay * ss_factor
        if self.infusions:
            is_inf = dose_rate > 0
            rate = jnp.where(is_inf, dose_rate, 1.0)
            duration = jnp.where(is_inf, amt / rate, 0.0)[None, :, None]
            # during, exp(-lam*0) - exp(-lam tau); after, exp(-lam (tau-T)) - exp(-lam tau)
            during = jnp.exp(-lam_ * jnp.maximum(tau[..., None] - duration, 0.0))
            infusion = (during - decay) / lam_
            if self.steady_state:
                # earlier steady-state infusions have all ended (T <= II): each contributes
                # (exp(lam T) - 1) exp(-lam (tau + n II)) / lam
                infusion = infusion + jnp.expm1(lam_ * duration) * decay / lam_ * (ss_factor - 1)
            per_dose = jnp.where(is_inf[None, :, None], rate[None, :, None] * infusion, per_dose)
        terms = jnp.where(active[..., None], per_dose * c[None, :, :], 0.0)
        return jnp.sum(terms, axis=(1, 2))

    def specialise(self, population) -> ClosedFormModel:
        """A copy that leaves out the infusion, steady-state and reset terms the data do not
        need (smaller programs, faster compilation); the general model handles all."""
        mask = np.asarray(population.dose_mask)
        flags = {
            "infusions": bool(np.any(np.asarray(population.dose_rate)[mask] > 0)),
            "steady_state": bool(np.any(np.asarray(population.dose_ss)[mask])),
            "resets": bool(np.any(np.asarray(population.reset_mask))),
        }
        return dataclasses.replace(self, **flags)

    def predict(self, params, subject):
        return self.concentration(
            params, subject.obs_time, subject.dose_time, subject.dose_amt, subject.dose_cmt,
            subject.dose_rate, subject.dose_ss, subject.dose_ii, subject.dose_mask,
            _reset_times(subject) if self.resets else None)


def _reset_times(subject):
    """The subject's reset times (EVID 3/4), ``inf`` for padding; ``None`` if it has none."""
    r = getattr(subject, "reset_time", None)
    if r is None or r.shape[-1] == 0:
        return None
    return jnp.where(subject.reset_mask, r, jnp.inf)


class OneCompartmentIV(ClosedFormModel):
    """One compartment, doses into the central compartment (1): ``cl``, ``v``."""

    parameter_names: ClassVar[tuple[str, ...]] = ("cl", "v")
    n_compartments: int = eqx.field(static=True, default=1)
    dosing_compartment: int = eqx.field(static=True, default=1)
    builtin_name: ClassVar[str] = "iv1cmt"
    compartment_table: ClassVar[Mapping[int, str]] = {1: "central"}
    dose_table: ClassVar[Mapping[int, str]] = {1: "IV bolus or infusion"}
    central_compartment: ClassVar[int] = 1

    def exponents(self, p):
        k = p["cl"] / p["v"]
        return jnp.stack([k]), jnp.stack([1.0 / p["v"]])[None, :]


class OneCompartmentOral(ClosedFormModel):
    """One compartment with first-order absorption: ``ka``, ``cl``, ``v``.

    Compartment 1 is the depot, 2 the central compartment (a dose into 2 is an IV bolus).
    """

    parameter_names: ClassVar[tuple[str, ...]] = ("ka", "cl", "v")
    n_compartments: int = eqx.field(static=True, default=2)
    dosing_compartment: int = eqx.field(static=True, default=1)
    builtin_name: ClassVar[str] = "oral1cmt"
    compartment_table: ClassVar[Mapping[int, str]] = {1: "depot", 2: "central"}
    dose_table: ClassVar[Mapping[int, str]] = {1: "absorbed, first order",
                                               2: "IV bolus or infusion"}
    central_compartment: ClassVar[int] = 2

    def exponents(self, p):
        k = p["cl"] / p["v"]
        ka = _separate(p["ka"], k)
        a = ka / (p["v"] * (ka - k))
        zero = jnp.zeros_like(k)
        coef = jnp.stack([jnp.stack([a, -a]), jnp.stack([1.0 / p["v"], zero])])
        return jnp.stack([k, ka]), coef


def _macro(p):
    """Macro rate constants ``alpha > beta`` of the two-compartment model."""
    k = p["cl"] / p["v"]
    k12 = p["q"] / p["v"]
    k21 = p["q"] / p["vp"]
    s = k + k12 + k21
    prod = k * k21
    alpha = 0.5 * (s + jnp.sqrt(s * s - 4.0 * prod))
    beta = prod / alpha  # stable for beta << alpha (no cancellation)
    return k21, alpha, beta


class TwoCompartmentIV(ClosedFormModel):
    """Two compartments, doses into the central compartment (1): ``cl``, ``v``, ``q``, ``vp``.

    Compartment 2 is the peripheral one.
    """

    parameter_names: ClassVar[tuple[str, ...]] = ("cl", "v", "q", "vp")
    n_compartments: int = eqx.field(static=True, default=2)
    dosing_compartment: int = eqx.field(static=True, default=1)
    builtin_name: ClassVar[str] = "iv2cmt"
    compartment_table: ClassVar[Mapping[int, str]] = {1: "central", 2: "peripheral"}
    dose_table: ClassVar[Mapping[int, str]] = {1: "IV bolus or infusion",
                                               2: "bolus or infusion into peripheral"}
    central_compartment: ClassVar[int] = 1

    def exponents(self, p):
        k21, alpha, beta = _macro(p)
        v = p["v"]
        central = jnp.stack([(alpha - k21) / (alpha - beta), (k21 - beta) / (alpha - beta)]) / v
        peripheral = jnp.stack([-k21, k21]) / ((alpha - beta) * v)
        return jnp.stack([alpha, beta]), jnp.stack([central, peripheral])


class TwoCompartmentOral(ClosedFormModel):
    """Two compartments with first-order absorption: ``ka``, ``cl``, ``v``, ``q``, ``vp``.

    Compartments: 1 depot, 2 central, 3 peripheral.
    """

    parameter_names: ClassVar[tuple[str, ...]] = ("ka", "cl", "v", "q", "vp")
    n_compartments: int = eqx.field(static=True, default=3)
    dosing_compartment: int = eqx.field(static=True, default=1)
    builtin_name: ClassVar[str] = "oral2cmt"
    compartment_table: ClassVar[Mapping[int, str]] = {1: "depot", 2: "central",
                                                      3: "peripheral"}
    dose_table: ClassVar[Mapping[int, str]] = {1: "absorbed, first order",
                                               2: "IV bolus or infusion",
                                               3: "bolus or infusion into peripheral"}
    central_compartment: ClassVar[int] = 2

    def exponents(self, p):
        k21, alpha, beta = _macro(p)
        ka = _separate(_separate(p["ka"], alpha), beta)
        v = p["v"]
        depot = ka / v * jnp.stack([
            (k21 - alpha) / ((ka - alpha) * (beta - alpha)),
            (k21 - beta) / ((ka - beta) * (alpha - beta)),
            (k21 - ka) / ((alpha - ka) * (beta - ka)),
        ])
        zero = jnp.zeros_like(alpha)
        central = jnp.stack([(alpha - k21) / (alpha - beta), (k21 - beta) / (alpha - beta),
                             zero]) / v
        peripheral = jnp.stack([-k21, k21, zero]) / ((alpha - beta) * v)
        return jnp.stack([alpha, beta, ka]), jnp.stack([depot, central, peripheral])


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


def observe_states(observe: Callable | Mapping[int, Callable], states, params, subject
                   ) -> Float[Array, " n_obs"]:
    """Predictions from the states at the observation records: ``observe(states[i],
    params)`` for one observe function, or for a mapping ``{dvid: observe}`` the function
    of each record's ``DVID`` (:func:`select_by_dvid`)."""
    if callable(observe):
        return jax.vmap(lambda a: observe(a, params))(states)
    return select_by_dvid({key: jax.vmap(lambda a, fn=fn: fn(a, params))(states)
                           for key, fn in observe.items()}, subject.obs_dvid)


#: :class:`ODEModel`'s default solve: Tsit5 (:func:`bayes_ude.solvers.solve`'s default)
#: at tolerances tight enough that the solver's error stays far below any assay's (and the
#: FOCE/FOCEI objective's finite-precision noise): ``rtol=1e-8``, ``atol=1e-10``.
ODE_MODEL_SOLVE = solvers.SolveOptions(rtol=1e-8, atol=1e-10, max_steps=10_000)


class ODEModel(StructuralModel):
    """Any ODE model, solved by :func:`bayes_ude.solvers.solve` with doses as events.

    Bioavailability ``f`` and lag ``tlag`` in the parameters apply to doses into
    ``dosing_compartment``. Steady-state doses and resets are not supported by ODE models
    (use a closed-form model, or give the doses explicitly).

    Attributes
    ----------
    vector_field : ``f(t, amounts, params) -> d amounts / dt`` with ``params`` the
        individual-parameter mapping; may contain a neural network (closed over or as an
        ``equinox.Module``).
    n_states : number of states (compartments); a dose goes into state ``CMT - 1``, and
        ``CMT`` must be 1, ..., ``n_states`` for doses and observations alike
        (:meth:`check_population`; which state an observation sees is ``observe``'s
        choice, by ``DVID``).
    observe : ``observe(amounts, params) -> prediction`` for one time point, or a mapping
        ``{dvid: observe}`` for several observation types.
    options : the :class:`bayes_ude.solvers.SolveOptions` of the solves (default
        :data:`ODE_MODEL_SOLVE`: Tsit5, ``rtol=1e-8``, ``atol=1e-10``,
        ``max_steps=10_000``). The constructor also takes ``solver``, ``rtol``, ``atol``
        and ``max_steps`` as keywords, each replacing that field of the default (not
        together with ``options``).
    initial : optional ``initial(params) -> amounts at the first record`` (default zeros;
        e.g. a PD baseline).
    dosing_compartment : the (1-based) compartment that ``f`` and ``tlag`` apply to.

    Notes
    -----
    FOCE/FOCEI/Laplace differentiate the model to third order. The solve's forward
    sensitivities are integrated by a ``while_loop``, which JAX differentiates in forward
    mode to any order but cannot transpose, so the outer gradient of these fits is taken
    in forward mode (``outer_gradient = "forward"``: one directional derivative per
    population parameter). :class:`bayes_ude.nlme.FixedStepODEModel` (a ``lax.scan`` on a
    fixed grid) allows reverse mode and compiles a smaller program.
    """

    outer_gradient: ClassVar[str] = "forward"

    vector_field: Callable
    n_states: int = eqx.field(static=True)
    observe: Callable | Mapping[int, Callable] = eqx.field(static=True)
    options: solvers.SolveOptions
    initial: Callable | None = eqx.field(static=True)
    dosing_compartment: int = eqx.field(static=True)

    def __init__(self, vector_field: Callable, n_states: int,
                 observe: Callable | Mapping[int, Callable], *,
                 options: solvers.SolveOptions | None = None, solver=None,
                 rtol: float | None = None, atol: float | None = None,
                 max_steps: int | None = None, initial: Callable | None = None,
                 dosing_compartment: int = 1):
        flat = {name: value for name, value in (("solver", solver), ("rtol", rtol),
                                                ("atol", atol), ("max_steps", max_steps))
                if value is not None}
        if options is not None and flat:
            raise ValueError(f"ODEModel: give either options or {', '.join(flat)}, not both "
                             "(options.replace(...) changes single fields)")
        if options is not None and not isinstance(options, solvers.SolveOptions):
            raise TypeError("ODEModel: options must be a solvers.SolveOptions, got "
                            f"{type(options).__name__}")
        self.vector_field = vector_field
        self.n_states = n_states
        self.observe = observe
        self.options = options if options is not None else ODE_MODEL_SOLVE.replace(**flat)
        self.initial = initial
        self.dosing_compartment = dosing_compartment

    def predict(self, params, subject):
        times = subject.obs_time
        t0 = jnp.minimum(jnp.min(jnp.where(subject.dose_mask, subject.dose_time, jnp.inf)),
                         times[0])
        into = subject.dose_cmt == self.dosing_compartment
        f = params.get("f", 1.0)
        tlag = params.get("tlag", 0.0)
        amt = jnp.where(subject.dose_mask, subject.dose_amt * jnp.where(into, f, 1.0), 0.0)
        td = subject.dose_time + jnp.where(into, tlag, 0.0)
        # padded doses: zero amount at the first record (a no-op event)
        td = jnp.where(subject.dose_mask, td, t0)
        cmt = jnp.clip(subject.dose_cmt - 1, 0, self.n_states - 1)
        is_inf = subject.dose_rate > 0
        doses = (
            solvers.Bolus(td, jnp.where(is_inf, 0.0, amt), cmt),
            # a bolus row's infusion entry is a no-op (rate 0 over a unit duration)
            solvers.Infusion(td, jnp.where(is_inf, amt / jnp.where(is_inf, subject.dose_rate,
                                                                    1.0), 1.0),
                             jnp.where(is_inf, subject.dose_rate, 0.0), cmt),
        )
        u0 = (jnp.zeros(self.n_states) if self.initial is None
              else jnp.asarray(self.initial(params)))
        # saveat must increase strictly, but observation times repeat (padding, or two
        # observation types at one time): solve at the distinct times plus, for each
        # repeat, a dummy time just after the last record, and read each repeat from the
        # slot of its first occurrence.
        n = times.shape[0]
        order = jnp.argsort(times)
        sorted_t = times[order]
        first = jnp.searchsorted(sorted_t, sorted_t, side="left")
        repeat = first != jnp.arange(n)
        tail = sorted_t[-1] + (1.0 + jnp.arange(n)) * 1e-6 * (1.0 + jnp.abs(sorted_t[-1]))
        key = jnp.where(repeat, tail, sorted_t)
        order2 = jnp.argsort(key)
        sol = self.options.solve(self.vector_field, u0, key[order2], params, t0=t0,
                                 doses=doses)
        slot = jnp.empty(n, int).at[order2].set(jnp.arange(n))  # position of key k in grid
        states_sorted = sol.ys[slot[first]]
        states = jnp.empty_like(states_sorted).at[order].set(states_sorted)
        pred = observe_states(self.observe, states, params, subject)
        return jnp.where(sol.success, pred, jnp.nan)
