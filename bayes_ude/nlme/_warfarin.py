"""The joint warfarin PK/PD population model, with an Emax or a network drug effect.

:func:`warfarin_pkpd_model` -- joint PK/PD of warfarin (O'Reilly 1968; the nlmixr2 and
Monolix demo data, ``datasets/warfarin_pkpd.csv``), an ordinary :class:`PopulationModel`,
so FOCEI, NUTS and the diagnostics run on it unchanged. PK: one compartment with
first-order absorption through a transit compartment (depot -> gut -> central, rates
``ktr``, ``ka``, elimination ``CL/V``; the smooth form of an absorption lag, as in nlmixr2's
warfarin example). PD: indirect response (turnover) of the prothrombin complex activity
``R`` with inhibition of its production,

    dR/dt = kin (1 - I(C)) - kout R,    R(t0) = R0,    kin = R0 kout,

so ``R0`` is the pre-dose baseline. The drug effect ``I(C)`` is the Emax model
``Imax C / (IC50 + C)`` or a small network (below).

Numerics. The PCA ODE is integrated on a fixed grid (:func:`bayes_ude.solvers.linear_on_grid`:
an exact linear solve), which FOCEI can differentiate to the third order it needs. Only the
slow state is integrated: the linear absorption chain, the fast part, is in closed form
(sums of exponentials, superposed over doses), so the grid need not resolve ``ka`` for
stability and stays small (~58 points per subject). ``tests/nlme/test_pkpd.py`` checks the
model against scipy's Radau on the full ODE system.

A network in the dynamics. The network's weights are one fixed effect (``theta["w"]``, a
flat vector; see :func:`bayes_ude.nn.flatten`) with an L2 penalty (``PopulationModel.l2``,
i.e. a Gaussian prior). It is parametrised so that the untrained network (last layer zero)
is the classical model: ``I(C) = x e^{g} / (1 + x e^{g})`` with
``x = C / (IC50_ref e^{eta_ic50})`` and ``g = g(C / C_ref)``: ``g = 0`` is Emax with
``Imax = 1``, ``IC50 = IC50_ref``; any ``g`` keeps ``I(0) = 0`` and ``0 <= I < 1``
(production never turns negative). The random effect on potency sits where ``eta`` on
``log IC50`` sits in the Emax model. (``_network_pk.py`` puts a network in the elimination
instead.)

Log-scale typical values are named ``t<parameter>`` (:meth:`FitResult.table`
back-transforms them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import nn, solvers
from ._error import Additive, Combined
from ._model import PopulationModel, typical_individual
from ._structural import (
    NETWORK_CONC_SCALE,
    StructuralModel,
    check_dose_kinds,
    dose_table,
    select_by_dvid,
)

__all__ = [
    "TransitTurnoverPKPD",
    "WARFARIN_PARAMETERS",
    "inhibition_curve",
    "warfarin_pkpd_model",
]

#: Individual parameters of the warfarin PK/PD model: transit rate ``ktr`` (1/h),
#: absorption rate ``ka`` (1/h), clearance ``cl`` (L/h), volume ``v`` (L), maximal
#: inhibition ``imax`` (Emax model only), ``ic50`` (mg/L; the network model's relative
#: potency), turnover rate ``kout`` (1/h), baseline ``r0`` (PCA %).
WARFARIN_PARAMETERS = ("ktr", "ka", "cl", "v", "imax", "ic50", "kout", "r0")
DEFAULT_ETA = ("ka", "cl", "v", "ic50", "kout", "r0")

# Initial values: the nlmixr2 warfarin PK/PD example's estimates (transit absorption, Emax
# turnover; nlmixr2's "multiple endpoints" vignette, reused in posologyr's tests: ktr 1.11,
# ka 0.92, CL 0.131, V 7.92, Emax 0.968, EC50 1.01, kout 0.055, E0 96.5), rounded. They
# agree with the data: PCA 96 % before the dose, a trough near 20 % at 48 h,
# concentrations 5-12 mg/L over the first two days.
_WARFARIN_INIT = {"ktr": 1.0, "ka": 1.0, "cl": 0.13, "v": 8.0, "imax": 0.95, "ic50": 1.0,
                  "kout": 0.05, "r0": 100.0}
_WARFARIN_OMEGA = 0.1  # initial BSV variances (~32 % CV)
_WARFARIN_SIGMA = {"pk_add_sd": 0.3, "pk_prop_sd": 0.1, "pd_add_sd": 4.0}
#: Grid of the PCA integration (hours; records to 144 h): 6-h intervals at most, 8
#: geometric ones over the 12 h after a dose (0.25 h first), where the concentration
#: rises; 5 Gauss-Legendre nodes in each. Against scipy's Radau at rtol 1e-10: 1e-10
#: relative at typical parameters, < 1e-6 for slow absorption (ka = 0.3/h), far below the
#: ~4 % residual error of PCA (tests/nlme/test_pkpd.py).
WARFARIN_GRID = {"n_uniform": 24, "n_post_dose": 8, "first_step": 0.25,
                 "post_dose_span": 12.0}


# ----------------------------------------------------------------- closed-form absorption
def _phi1(x):
    """``(e^x - 1) / x``, accurate and differentiable at 0."""
    small = jnp.abs(x) < 1e-6
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 + x / 2 + x * x / 6, jnp.expm1(xs) / xs)


def _dd1(p, q, t):
    """Divided difference ``f[p, q]`` of ``f(lam) = exp(-lam t)`` for ``p <= q``."""
    return -t * jnp.exp(-p * t) * _phi1(-(q - p) * t)


def _dd2(a, b, c, t):
    """Second divided difference ``f[a, b, c]`` of ``f(lam) = exp(-lam t)``, robust to
    equal rates: with the rates sorted, ``(f[mid, hi] - f[lo, mid]) / (hi - lo)`` divides
    by the largest gap; when even that is tiny (``gap t < 1e-3``) the Taylor expansion
    about the mean ``m``, ``t^2 e^{-m t} / 2 (1 + t^2 sum d_i^2 / 24)`` (next term
    ``O((gap t)^3)``, below 1e-9 relative) replaces it."""
    lo = jnp.minimum(jnp.minimum(a, b), c)
    hi = jnp.maximum(jnp.maximum(a, b), c)
    mid = a + b + c - lo - hi
    gap = hi - lo
    tiny = gap * t < 1e-3
    direct = (_dd1(mid, hi, t) - _dd1(lo, mid, t)) / jnp.where(tiny, 1.0, gap)
    m = (lo + mid + hi) / 3
    d2 = (lo - m) ** 2 + (mid - m) ** 2 + (hi - m) ** 2
    taylor = 0.5 * t * t * jnp.exp(-m * t) * (1.0 + t * t * d2 / 24)
    return jnp.where(tiny, taylor, direct)


def transit_concentration(p, t, dose_time, dose_amt):
    """Central concentration of the transit chain at time ``t`` (scalar): each bolus
    ``D`` into the depot at ``td`` contributes ``D ktr ka f[ktr, ka, k](t - td) / V`` with
    ``k = CL/V`` and ``f[.]`` the second divided difference of ``exp(-lam (t - td))``."""
    tau = jnp.maximum(t - dose_time, 0.0)
    k = p["cl"] / p["v"]
    per_dose = jax.vmap(lambda s: _dd2(p["ktr"], p["ka"], k, s))(tau)
    return p["ktr"] * p["ka"] * jnp.sum(dose_amt * per_dose) / p["v"]


# --------------------------------------------------------------------- warfarin structure
class TransitTurnoverPKPD(StructuralModel):
    """Transit-absorption one-compartment PK (closed form) driving a turnover PD model
    (integrated on a fixed grid). Observations with ``pk_dvid`` are concentrations, with
    ``pd_dvid`` the response ``R``. Doses: boluses into the depot (CMT 1).

    Attributes
    ----------
    drug_effect : ``"emax"`` or ``"network"``.
    unflatten : the network's ``flatten`` inverse (network only).
    ic50_ref : the network's reference potency (mg/L).
    conc_scale : the network's input scale (mg/L).
    pk_dvid, pd_dvid : observation types.
    grid : options of :func:`bayes_ude.solvers.subject_grid`.
    """

    drug_effect: str = eqx.field(static=True)
    unflatten: Callable | None = eqx.field(static=True, default=None)
    ic50_ref: float = eqx.field(static=True, default=1.0)
    conc_scale: float = eqx.field(static=True, default=NETWORK_CONC_SCALE)
    pk_dvid: int = eqx.field(static=True, default=1)
    pd_dvid: int = eqx.field(static=True, default=2)
    grid: tuple = eqx.field(static=True, default=tuple(WARFARIN_GRID.items()))

    def specialise(self, population):
        check_dose_kinds(population, "the warfarin PK/PD model", compartments=(1,))
        return self

    @property
    def observation_types(self) -> tuple[int, ...]:
        return (self.pk_dvid, self.pd_dvid)

    def inhibition(self, p, c):
        """The drug effect ``I(C)`` for individual parameters ``p``."""
        c = jnp.maximum(c, 0.0)
        if self.drug_effect == "emax":
            return p["imax"] * c / (p["ic50"] + c)
        net = self.unflatten(p["w"])
        g = net(jnp.atleast_1d(c / self.conc_scale))[0]
        odds = c / (self.ic50_ref * p["ic50"]) * jnp.exp(g)
        return odds / (1.0 + odds)

    def predict(self, p, subject):
        dose_time, dose_amt = dose_table(subject)

        def conc(t):
            return transit_concentration(p, t, dose_time, dose_amt)

        def production(t):  # kin (1 - I(C(t))), C in closed form
            return p["kout"] * p["r0"] * (1.0 - self.inhibition(p, conc(t)))

        grid = solvers.subject_grid(subject.obs_time, dose_time, subject.dose_mask,
                                    **dict(self.grid))
        response = solvers.linear_on_grid(production, p["kout"], p["r0"], grid,
                                          subject.obs_time)
        pk = jax.vmap(conc)(subject.obs_time)
        return select_by_dvid({self.pk_dvid: pk, self.pd_dvid: response}, subject.obs_dvid)


def _check_dvids(population, pk_dvid: int, pd_dvid: int):
    """Both observation types must be present, and no other."""
    mask = np.asarray(population.obs_mask)
    present = set(np.asarray(population.obs_dvid)[mask].tolist())
    missing = [f"{name} (DVID {d})" for name, d in (("PK", pk_dvid), ("PD", pd_dvid))
               if d not in present]
    if missing:
        raise ValueError(f"the data have no {' and no '.join(missing)} observations; "
                         f"observation types present: DVID {sorted(present)}. Pass "
                         "pk_dvid=/pd_dvid= if the data code them differently.")
    extra = sorted(present - {pk_dvid, pd_dvid})
    if extra:
        raise ValueError(f"observations with DVID {extra} are neither PK (DVID {pk_dvid}) "
                         f"nor PD (DVID {pd_dvid})")


def _warfarin_arguments(population, drug_effect: str, pk_dvid: int, pd_dvid: int,
                        eta: Sequence[str], init: dict[str, float] | None,
                        imax: float | None) -> tuple[tuple[str, ...], dict[str, float]]:
    """Check :func:`warfarin_pkpd_model`'s data and arguments; ``(eta, values)``: the
    parameters with random effects (lower case) and the initial typical values (the
    literature ones updated by ``init``)."""
    if drug_effect not in ("emax", "network"):
        raise ValueError(f"drug_effect must be 'emax' or 'network', got {drug_effect!r}")
    _check_dvids(population, pk_dvid, pd_dvid)
    check_dose_kinds(population, "the warfarin PK/PD model", compartments=(1,))
    eta = tuple(str(e).lower() for e in eta)
    allowed = [p for p in WARFARIN_PARAMETERS if p != "imax"]
    if any(e not in allowed for e in eta) or len(set(eta)) != len(eta):
        raise ValueError(f"eta must be distinct names from {allowed}; got {list(eta)}")
    values = dict(_WARFARIN_INIT)
    if init:
        bad = [k for k in init if k not in values]
        if bad:
            raise ValueError(f"unknown initial values {bad}; parameters are {list(values)}")
        values.update({k: float(v) for k, v in init.items()})
    if imax is not None and not 0.0 < imax <= 1.0:
        raise ValueError(f"imax must be in (0, 1] or None (estimated), got {imax}")
    return eta, values


def warfarin_pkpd_model(
    population,
    drug_effect: str = "emax",
    *,
    pk_dvid: int = 1,
    pd_dvid: int = 2,
    eta: Sequence[str] = DEFAULT_ETA,
    init: dict[str, float] | None = None,
    imax: float | None = 1.0,
    width: int = 8,
    depth: int = 1,
    l2: float = 0.1,
    key: jax.Array | None = None,
    grid: dict | None = None,
) -> PopulationModel:
    """The joint warfarin PK/PD population model (see the module notes).

    Parameters
    ----------
    population : the data (checked: both observation types, bolus doses into CMT 1).
    drug_effect : ``"emax"`` (``I(C) = Imax C / (IC50 + C)``) or ``"network"`` (an MLP
        ``g`` in ``I(C) = x e^g / (1 + x e^g)``, ``x = C / IC50_ref``).
    pk_dvid, pd_dvid : the DVIDs of concentrations (mg/L) and PCA (%).
    eta : parameters with log-normal between-subject variability, from ``ktr, ka, cl, v,
        ic50, kout, r0`` (for the network, ``ic50`` is the relative potency).
    init : initial typical values (individual scale, keys of
        :data:`WARFARIN_PARAMETERS`) overriding the literature ones.
    imax : the Emax model's maximal inhibition, fixed (default 1: warfarin can block the
        synthesis of the prothrombin complex completely), or ``None`` to estimate it (as
        ``logit_imax``). On these data the likelihood keeps rising towards ``Imax = 1``
        (FOCEI drives ``logit_imax`` past 14 without converging), so it is fixed.
    width, depth : the network's hidden layers (``depth`` tanh layers of ``width``).
    l2 : L2 penalty on the network weights (OFV scale: a ``N(0, 1/l2)`` prior).
    key : PRNG key of the network's hidden layers (default ``jax.random.key(0)``); its
        last layer starts at zero, so the untrained network is Emax with ``Imax = 1``,
        ``IC50 = init["ic50"]``.
    grid : options of the PCA integration grid (default :data:`WARFARIN_GRID`).

    Returns
    -------
    PopulationModel with theta ``tktr, tka, tcl, tv`` then ``tic50`` (Emax; and
    ``logit_imax`` before it when ``imax=None``) or ``w`` (network weights), then
    ``tkout, tr0`` (``t``: log scale); omega ``eta_<p>``
    for ``p`` in ``eta``; sigma ``pk_add_sd, pk_prop_sd`` (combined error on
    concentrations) and ``pd_add_sd`` (additive error on PCA).
    """
    eta, values = _warfarin_arguments(population, drug_effect, pk_dvid, pd_dvid, eta, init,
                                      imax)
    grid = {**WARFARIN_GRID, **(grid or {})}

    theta = {f"t{p}": np.log(values[p]) for p in ("ktr", "ka", "cl", "v")}
    l2_map = {}
    if drug_effect == "emax":
        if imax is None:
            theta["logit_imax"] = np.log(values["imax"] / (1.0 - values["imax"]))
        theta["tic50"] = np.log(values["ic50"])
        structural = TransitTurnoverPKPD("emax", pk_dvid=pk_dvid, pd_dvid=pd_dvid,
                                         grid=tuple(grid.items()))
    else:
        net = nn.MLP(1, 1, widths=(width,) * depth, activation="tanh", init="zero_last",
                     key=jax.random.key(0) if key is None else key)
        w, unflatten = nn.flatten(net)
        theta["w"] = np.asarray(w)
        l2_map = {"w": l2}
        structural = TransitTurnoverPKPD("network", unflatten, ic50_ref=values["ic50"],
                                         pk_dvid=pk_dvid, pd_dvid=pd_dvid,
                                         grid=tuple(grid.items()))
    theta["tkout"] = np.log(values["kout"])
    theta["tr0"] = np.log(values["r0"])

    def individual(th, eta_map, cov):
        def random(p):
            return eta_map[f"eta_{p}"] if p in eta else 0.0

        out = {p: jnp.exp(th[f"t{p}"] + random(p))
               for p in ("ktr", "ka", "cl", "v", "kout", "r0")}
        if drug_effect == "emax":
            out["imax"] = (jax.nn.sigmoid(th["logit_imax"]) if imax is None
                           else jnp.asarray(imax, float))
            out["ic50"] = jnp.exp(th["tic50"] + random("ic50"))
        else:
            out["w"] = th["w"]
            out["ic50"] = jnp.exp(random("ic50"))  # relative potency, 1 for the typical
        return out

    return PopulationModel(
        structural, individual, theta=theta,
        omega={f"eta_{p}": _WARFARIN_OMEGA for p in eta},
        sigma=dict(_WARFARIN_SIGMA),
        error={pk_dvid: Combined(add="pk_add_sd", prop="pk_prop_sd"),
               pd_dvid: Additive(name="pd_add_sd")},
        l2=l2_map)


def inhibition_curve(model: PopulationModel, theta, concentrations) -> np.ndarray:
    """The typical subject's drug effect ``I(C)`` at ``concentrations`` (mg/L);
    ``theta`` a mapping of fixed effects (``fit.theta``, ``model.theta``)."""
    structural = model.structural
    if not isinstance(structural, TransitTurnoverPKPD):
        raise TypeError("inhibition_curve needs a model from warfarin_pkpd_model")
    p = typical_individual(model, theta)
    c = jnp.asarray(concentrations, float)
    return np.asarray(jax.vmap(lambda x: structural.inhibition(p, x))(c))


