"""Closed-form structural PK models: linear compartment models without an ODE solve.

A linear compartment model's response to a unit bolus into compartment ``c`` is a sum of
exponentials, ``C(t) = sum_k coef[c, k] * exp(-lam[k] * t)`` (central concentration).
Everything else follows from that kernel by superposition, one dose at a time, with no ODE
solve:

* bolus of amount ``a`` at ``td``: ``a * kernel(t - td)``;
* zero-order infusion at rate ``r`` for ``T = a / r``: the kernel integrated over the
  infusion, ``r * sum_k coef_k / lam_k * (exp(-lam_k * max(tau - T, 0)) - exp(-lam_k * tau))``;
* steady state (``SS = 1``, dosing interval ``II``): the dose and all its predecessors
  ``td - n II`` summed as a geometric series, ``exp(-lam tau) / (1 - exp(-lam II))``
  (for infusions longer than ``II``, the ones still running counted apart); ``AMT 0,
  RATE > 0, II 0`` is a constant infusion at steady state, ``RATE / lam`` per exponent
  (bioavailability does not scale it: PREDPP applies ``F`` to every dose but this one);
* a reset (EVID 3/4, or an SS dose, which resets the system in NONMEM) cuts off the
  contributions of all earlier doses from the reset time on.

An observation at the time of a dose sees the state just before that dose (as
:func:`bayes_ude.solvers.solve` does), so e.g. a pre-dose sample at time 0 is 0; at the
time of an SS dose it sees the steady state's trough (after the reset, before the dose).

Compartments are numbered from 1, NONMEM style: oral models have 1 = depot, 2 = central
(3 = peripheral); IV models have 1 = central (2 = peripheral).
:meth:`StructuralModel.check_population` (called by every fit) rejects records in a
compartment the model does not have, naming the rows: a dose may go into any compartment of
a closed-form model (into the depot it is absorbed, elsewhere it is a bolus or infusion
there); an observation is the central concentration, so its ``CMT`` must be the central
compartment -- or 1 throughout when the table has no ``CMT`` column (the reader's default).
The interface and that check are in ``_structural.py``; ODE models in ``_ode_model.py``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._structural import StructuralModel

__all__ = [
    "ClosedFormModel",
    "OneCompartmentIV",
    "OneCompartmentOral",
    "TwoCompartmentIV",
    "TwoCompartmentOral",
]

# Two exponents closer than this (relative) make the closed forms' coefficients blow up as
# 1 / (ka - k); the larger one is nudged apart by this factor. The error this introduces in a
# concentration is of the same relative size, far below any assay's precision.
_SEPARATION = 1e-7


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

    compile_quickly: ClassVar[bool] = True  # sums of exponentials: cheap to evaluate
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
    def accepted_parameters(self) -> tuple[str, ...]:
        """Its own parameters, and bioavailability ``f`` and lag time ``tlag``."""
        return (*self.parameter_names, "f", "tlag")

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
    def observation_types(self) -> tuple[int, ...]:
        return ()  # one quantity: the central concentration

    @property
    def needs_doses(self) -> bool:
        return True

    @abc.abstractmethod
    def exponents(self, p: Mapping[str, Array]) -> tuple[Array, Array]:
        """``(lam, coef)``: rates ``(K,)`` and coefficients ``(n_compartments, K)``."""

    def rate_matrix(self, p: Mapping[str, Array]) -> Array:
        """``K`` with ``dA/dt = K A`` for the compartment amounts ``A`` (index ``CMT - 1``),
        built from the same (separated) rates as :meth:`exponents`, whose ``lam`` are the
        eigenvalues of ``-K``. Needed only for inter-occasion variability, which carries
        the amounts over occasion boundaries (``_occasions.py``)."""
        raise NotImplementedError(f"{type(self).__name__} has no rate_matrix, which "
                                  "inter-occasion variability needs")

    def central_volume(self, p: Mapping[str, Array]) -> Array:
        """The volume the central amount is divided by (``v``)."""
        return p["v"]

    def concentration(self, p: Mapping[str, Array], times, dose_time, dose_amt, dose_cmt,
                      dose_rate, dose_ss, dose_ii, dose_mask, reset_time=None):
        """Central concentration at ``times`` after the given doses (all 1-D arrays)."""
        lam, coef = self.exponents(p)
        f = p.get("f", 1.0)
        tlag = p.get("tlag", 0.0)
        into_dosing = dose_cmt == self.dosing_compartment
        amt = dose_amt * jnp.where(into_dosing, f, 1.0)
        arrival = dose_time + jnp.where(into_dosing, tlag, 0.0)
        return self.superpose(lam, coef, times, arrival, amt, dose_time, dose_cmt, dose_rate,
                              dose_ss, dose_ii, dose_mask, reset_time)

    def superpose(self, lam, coef, times, arrival, amt, dose_time, dose_cmt, dose_rate,
                  dose_ss, dose_ii, dose_mask, reset_time=None):
        """``sum over doses and exponents`` of the unit responses ``coef[CMT - 1, k] *
        exp(-lam[k] * tau)`` (bolus, infusion, steady state; each dose cut off at the first
        reset after its record time ``dose_time``). ``arrival`` and ``amt`` are the doses'
        times and amounts with lag time and bioavailability applied."""
        cmt_index = jnp.clip(dose_cmt - 1, 0, self.n_compartments - 1)
        terms = self.unit_terms(lam, times, arrival, amt, dose_time, dose_rate, dose_ss,
                                dose_ii, dose_mask, reset_time)
        return jnp.einsum("tdk,dk->t", terms, coef[cmt_index])

    def unit_terms(self, lam, times, arrival, amt, dose_time, dose_rate, dose_ss, dose_ii,
                   dose_mask, reset_time=None):
        """``(n_times, n_dose, K)``: each dose's weight on each exponential at each time,
        which :meth:`superpose` contracts with the coefficients of the dose's
        compartment."""
        tau = times[:, None] - arrival[None, :]  # (n_obs, n_dose)
        live = dose_mask[None, :]
        if self.steady_state or (self.resets and reset_time is not None):
            # Each dose stops counting at the first reset after it (EVID 3/4 or a later SS
            # dose).
            resets = [jnp.where(dose_mask & dose_ss, dose_time, jnp.inf)]
            if reset_time is not None:
                resets.append(reset_time)
            resets = jnp.concatenate(resets)
            later = resets[None, :] > dose_time[:, None]
            until = jnp.min(jnp.where(later, resets[None, :], jnp.inf), axis=1)
            live = live & (times[:, None] < until[None, :])
        lam_ = lam[None, None, :]
        if self.infusions:
            is_inf = (dose_rate > 0)[None, :, None]
            rate = jnp.where(is_inf, dose_rate[None, :, None], 1.0)
            duration = jnp.where(is_inf, amt[None, :, None] / rate, 0.0)
        # the dose itself, from its arrival on
        active = live & (tau > 0)
        now = jnp.where(active, tau, 0.0)[..., None]
        decay = jnp.exp(-lam_ * now)  # (n_obs, n_dose, K)
        terms = amt[None, :, None] * decay
        if self.infusions:
            # during, exp(-lam*0) - exp(-lam tau); after, exp(-lam (tau-T)) - exp(-lam tau)
            infusion = (jnp.exp(-lam_ * jnp.maximum(now - duration, 0.0)) - decay) / lam_
            terms = jnp.where(is_inf, rate * infusion, terms)
        terms = jnp.where(active[..., None], terms, 0.0)
        if self.steady_state:
            terms = terms + self._predecessors(lam_, tau, times, live, amt, dose_time,
                                               dose_ss, dose_ii, *(
                                                   (is_inf, rate, duration)
                                                   if self.infusions else (None,) * 3))
        return terms

    @staticmethod
    def _predecessors(lam_, tau, times, live, amt, dose_time, dose_ss, dose_ii, is_inf, rate,
                      duration):
        """The steady state an SS dose stands for: its predecessors at ``tau + n II``,
        ``n >= 1``, summed in closed form. They count from the dose's record time on (an
        observation at that time sees the trough), up to the next reset."""
        past = live & dose_ss[None, :] & (times[:, None] >= dose_time[None, :])
        tau = jnp.where(past, tau, 0.0)[..., None]
        # AMT 0, RATE > 0, II 0: a constant infusion at steady state, RATE / lam per
        # exponent from the record on
        constant = (dose_ss & (dose_ii <= 0))[None, :, None]
        ii = jnp.where(dose_ss & (dose_ii > 0), dose_ii, 1.0)[None, :, None]
        geometric = 1.0 / -jnp.expm1(-lam_ * ii)  # sum over n >= 0 of exp(-lam n II)
        decay = jnp.exp(-lam_ * tau)
        terms = amt[None, :, None] * decay * (geometric - 1.0)
        if is_inf is not None:
            # predecessor n has run for tau_n = tau + n II; the first m - 1 still run
            # (tau_n < T) and give (1 - exp(-lam tau_n)) / lam, the others
            # (exp(lam T) - 1) exp(-lam tau_n) / lam: T > II (overlapping infusions) too
            m = jnp.maximum(jnp.ceil((duration - tau) / ii), 1.0)
            ended = jnp.exp(-lam_ * (tau + m * ii - duration)) * geometric
            infusion = (m - 1.0 + ended - decay * (geometric - 1.0)) / lam_
            infusion = jnp.where(constant, 1.0 / lam_, infusion)
            terms = jnp.where(is_inf, rate * infusion, terms)
        return jnp.where(past[..., None], terms, 0.0)

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
            reset_times(subject) if self.resets else None)


def reset_times(subject):
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

    def rate_matrix(self, p):
        return -(p["cl"] / p["v"])[None, None]


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

    def rate_matrix(self, p):
        k = p["cl"] / p["v"]
        ka = _separate(p["ka"], k)
        zero = jnp.zeros_like(k)
        return jnp.stack([jnp.stack([-ka, zero]), jnp.stack([ka, -k])])


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


def _two_compartment_matrix(p):
    """Central (row/column 0) and peripheral (1) block of the two-compartment rates."""
    k, k12, k21 = p["cl"] / p["v"], p["q"] / p["v"], p["q"] / p["vp"]
    return jnp.stack([jnp.stack([-(k + k12), k21]), jnp.stack([k12, -k21])])


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

    def rate_matrix(self, p):
        return _two_compartment_matrix(p)


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

    def rate_matrix(self, p):
        _, alpha, beta = _macro(p)
        ka = _separate(_separate(p["ka"], alpha), beta)
        inner = _two_compartment_matrix(p)
        zero = jnp.zeros_like(ka)
        top = jnp.stack([-ka, zero, zero])[None, :]
        below = jnp.concatenate([jnp.stack([ka, zero])[:, None], inner], axis=1)
        return jnp.concatenate([top, below], axis=0)
