"""One-compartment oral PK with a network in the elimination.

:func:`network_elimination_model` -- one-compartment oral PK whose clearance is a learned
function of concentration, ``CL(C) = CL exp(g(C / C_ref) - g(0))``, with ``g`` a network
whose last layer starts at 0 (linear elimination); an ordinary :class:`PopulationModel`,
so FOCEI, NUTS and the diagnostics run on it unchanged. On data with Michaelis--Menten
elimination (:func:`bayes_ude.examples.michaelis_menten_population`) it recovers the true
elimination-rate curve ``Vmax C / (Km + C)``.

Numerics. Only the central amount is integrated, on a fixed grid
(:func:`bayes_ude.solvers.integrate_on_grid`: a ``lax.scan`` of Dormand--Prince steps),
which FOCEI can differentiate to the third order it needs; the depot, the fast linear
part, is in closed form, so the grid need not resolve ``ka`` for stability.
``tests/nlme/test_pkpd.py`` checks the model against scipy's Radau on the full ODE system.

The network's weights are one fixed effect (``theta["w"]``, a flat vector; see
:func:`bayes_ude.nn.flatten`) with an L2 penalty (``PopulationModel.l2``, i.e. a Gaussian
prior). ``CL(C) = exp(tcl + eta_cl + g(C / C_ref) - g(0))`` -- ``tcl`` is the log
clearance at low concentrations, the network only bends the curve (without ``- g(0)`` its
output bias would duplicate ``tcl``); between-subject variability scales the whole curve,
as ``eta`` on ``Vmax`` does in a Michaelis--Menten model. The untrained network (last layer
zero) is linear elimination. (The warfarin model of ``_warfarin.py`` puts a network in the
drug effect.)
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import nn, solvers
from ._builtin import nca_initial_estimates
from ._error import Combined
from ._model import PopulationModel, typical_individual
from ._structural import NETWORK_CONC_SCALE, StructuralModel, check_dose_kinds, dose_table

__all__ = [
    "NetworkEliminationPK",
    "elimination_curve",
    "network_elimination_model",
]


class NetworkEliminationPK(StructuralModel):
    """One-compartment oral PK with a learned clearance ``CL(C) = cl exp(g(C / scale) -
    g(0))``.

    The depot is in closed form (``sum_d D_d exp(-ka (t - t_d))``); the central amount
    ``A`` is integrated on a fixed grid: ``dA/dt = ka depot(t) - CL(C) C``, ``C = A / V``.
    Doses: boluses into the depot (CMT 1); observations: concentrations.
    """

    unflatten: Callable = eqx.field(static=True)
    conc_scale: float = eqx.field(static=True, default=NETWORK_CONC_SCALE)
    grid: tuple = eqx.field(static=True, default=())

    def specialise(self, population):
        check_dose_kinds(population, "network_elimination_model", compartments=(1,))
        return self

    @property
    def observation_types(self) -> tuple[int, ...]:
        return ()  # one quantity: the concentration

    def clearance(self, p, c):
        """``CL(C) = cl exp(g(C / scale) - g(0))``: ``cl`` is the clearance at low
        concentrations (for Michaelis-Menten elimination ``Vmax / Km``), and the network
        only shapes the curve, so ``tcl`` and the network's output bias are not the same
        parameter twice (a flat ridge that NUTS would wander along)."""
        net = self.unflatten(p["w"])
        x = jnp.stack([c / self.conc_scale, jnp.zeros_like(c)])[:, None]
        g = jax.vmap(net)(x)[:, 0]
        return p["cl"] * jnp.exp(g[0] - g[1])

    def predict(self, p, subject):
        dose_time, dose_amt = dose_table(subject)

        def absorption(t, t_start):  # ka depot(t), the depot in closed form
            # a dose feeds the central compartment from its own time on: doses are grid
            # points, so "on at the start of the step" is "on in the step"
            on = dose_time <= t_start
            return p["ka"] * jnp.sum(jnp.where(on, dose_amt * jnp.exp(
                -p["ka"] * jnp.maximum(t - dose_time, 0.0)), 0.0))

        def field(t, a, u):
            c = a / p["v"]
            return u - self.clearance(p, c) * c

        grid = solvers.subject_grid(subject.obs_time, dose_time, subject.dose_mask,
                                    **dict(self.grid))
        amount = solvers.integrate_on_grid(field, jnp.zeros(()), grid,
                                           subject.obs_time.shape[0], forcing=absorption)
        return amount / p["v"]


#: Grid of :func:`network_elimination_model` (hours; records to 48 h): 2-h steps at
#: most, 16 geometric steps over the 12 h after a dose (0.05 h first).
MM_GRID = {"n_uniform": 24, "n_post_dose": 16, "first_step": 0.05, "post_dose_span": 12.0}


def network_elimination_model(
    population,
    *,
    width: int = 8,
    depth: int = 1,
    l2: float = 0.1,
    conc_scale: float = NETWORK_CONC_SCALE,
    key: jax.Array | None = None,
    init: dict[str, float] | None = None,
    grid: dict | None = None,
) -> PopulationModel:
    """Oral one-compartment PK with a learned, concentration-dependent clearance.

    ``dA/dt = ka depot - CL(C) C`` with ``CL(C) = exp(tcl + eta_cl + g(C / conc_scale) -
    g(0))`` (``tcl``: log clearance at low concentrations) and ``g`` an MLP (``depth``
    tanh layers of ``width``; last layer zero at the start, so the model starts as linear
    elimination). Random effects on ``ka``, ``cl``, ``v``;
    combined error (``add_sd``, ``prop_sd``). Initial typical values from a
    non-compartmental look at the data unless ``init`` (``ka``, ``cl``, ``v``) is given.

    Returns
    -------
    PopulationModel with theta ``tka, tcl, tv, w`` and the L2 penalty ``l2`` on ``w``.
    """
    check_dose_kinds(population, "network_elimination_model", compartments=(1,))
    values = nca_initial_estimates(population)
    if init:
        values.update({k: float(v) for k, v in init.items()})
    net = nn.MLP(1, 1, widths=(width,) * depth, activation="tanh", init="zero_last",
                 key=jax.random.key(0) if key is None else key)
    w, unflatten = nn.flatten(net)
    structural = NetworkEliminationPK(unflatten, float(conc_scale),
                                      grid=tuple({**MM_GRID, **(grid or {})}.items()))

    def individual(th, eta, cov):
        return {"ka": jnp.exp(th["tka"] + eta["eta_ka"]),
                "cl": jnp.exp(th["tcl"] + eta["eta_cl"]),
                "v": jnp.exp(th["tv"] + eta["eta_v"]), "w": th["w"]}

    theta = {"tka": np.log(values["ka"]), "tcl": np.log(values["cl"]),
             "tv": np.log(values["v"]), "w": np.asarray(w)}
    return PopulationModel(structural, individual, theta=theta,
                           omega={"eta_ka": 0.1, "eta_cl": 0.1, "eta_v": 0.1},
                           sigma={"add_sd": 0.1, "prop_sd": 0.1}, error=Combined(),
                           l2={"w": l2})


def elimination_curve(model: PopulationModel, theta, concentrations) -> np.ndarray:
    """The typical subject's elimination rate ``CL(C) C`` (mg/h) at ``concentrations``."""
    structural = model.structural
    if not isinstance(structural, NetworkEliminationPK):
        raise TypeError("elimination_curve needs a model from network_elimination_model")
    p = typical_individual(model, theta)
    c = jnp.asarray(concentrations, float)
    return np.asarray(jax.vmap(lambda x: structural.clearance(p, x) * x)(c))


