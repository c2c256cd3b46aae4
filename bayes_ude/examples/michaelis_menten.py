"""Example: a simulated population with Michaelis–Menten elimination and a known truth.

The data of the network-elimination check (docs/pkpd.md): can a network inside the ODE
learn saturable elimination from concentrations alone? Simulated with the package's adaptive
ODE solver on the full two-state system, independent of the fixed grid the fitted
:func:`bayes_ude.nlme.network_elimination_model` uses. An example factory above the library:
public API only.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import solvers
from ..nlme import ODEModel, read_nonmem

__all__ = ["MM_TRUTH", "michaelis_menten_population", "mm_design"]


class _MichaelisMenten(eqx.Module):
    """The truth (depot, central): ``d central/dt = ka depot - Vmax C / (Km + C)``."""

    def __call__(self, t, a, p):
        c = a[1] / p["v"]
        return jnp.stack([-p["ka"] * a[0], p["ka"] * a[0] - p["vmax"] * c / (p["km"] + c)])


def _central(a, p):
    return a[1] / p["v"]


#: Truth of the simulated Michaelis--Menten population: ka (1/h), V (L), Vmax (mg/h), Km
#: (mg/L); variances of the log-normal random effects on ka, Vmax (``eta_cl``) and V;
#: combined residual error.
MM_TRUTH = {"ka": 1.0, "v": 20.0, "vmax": 10.0, "km": 4.0,
            "omega": {"eta_ka": 0.09, "eta_cl": 0.04, "eta_v": 0.04},
            "sigma": {"add_sd": 0.05, "prop_sd": 0.1}}
_MM_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0, 48.0)
_MM_DOSES = (50.0, 150.0, 400.0)


def mm_design(n_subjects, doses=_MM_DOSES, times=_MM_TIMES):
    """The simulated study's design (DV 0): one dose per subject, cycling through
    ``doses``, into CMT 1; concentrations at ``times``."""
    rows = []
    for i in range(n_subjects):
        rows.append(dict(ID=i + 1, TIME=0.0, DV=".", AMT=float(doses[i % len(doses)]),
                         EVID=1, CMT=1))
        rows += [dict(ID=i + 1, TIME=float(t), DV=0.0, AMT=".", EVID=0, CMT=2) for t in times]
    return read_nonmem(pd.DataFrame(rows))


def michaelis_menten_population(
    n_subjects: int = 30,
    key: jax.Array | None = None,
    doses: Sequence[float] = _MM_DOSES,
    times: Sequence[float] = _MM_TIMES,
) -> tuple[object, dict]:
    """A simulated population with Michaelis--Menten elimination (truth :data:`MM_TRUTH`).

    One oral dose per subject (cycling through ``doses`` in mg, so that concentrations
    span the linear and the saturated range: Cmax ~ dose / V = 2.5-20 mg/L against
    Km = 4 mg/L) into CMT 1, concentrations at ``times`` (h). Simulated with the package's
    adaptive ODE solver (:class:`ODEModel`, Tsit5 at ``rtol=1e-10``) on the full
    two-state system -- independent of the fixed grid the fitted model uses.

    Returns
    -------
    (Population, truth): ``truth`` is :data:`MM_TRUTH` plus the simulated ``eta``
    (``(n_subjects, 3)``: ka, Vmax, V) and the noise-free ``prediction``.
    """
    key = jax.random.key(0) if key is None else key
    pop = mm_design(n_subjects, doses, times)
    k_eta, k_eps = jax.random.split(key)
    om = MM_TRUTH["omega"]
    sd = jnp.sqrt(jnp.array([om["eta_ka"], om["eta_cl"], om["eta_v"]]))
    eta = jax.random.normal(k_eta, (n_subjects, 3)) * sd
    params = {"ka": MM_TRUTH["ka"] * jnp.exp(eta[:, 0]),
              "vmax": MM_TRUTH["vmax"] * jnp.exp(eta[:, 1]),
              "v": MM_TRUTH["v"] * jnp.exp(eta[:, 2]),
              "km": jnp.full(n_subjects, MM_TRUTH["km"])}
    ode = ODEModel(_MichaelisMenten(), 2, observe=_central,
                   options=solvers.SolveOptions(solver=solvers.Tsit5(), rtol=1e-10, atol=1e-12))
    f = jax.jit(jax.vmap(ode.predict))(params, pop)
    s = MM_TRUTH["sigma"]
    noise = jax.random.normal(k_eps, f.shape) * jnp.sqrt(s["add_sd"] ** 2
                                                         + (s["prop_sd"] * f) ** 2)
    y = np.asarray(jnp.where(pop.obs_mask, f + noise, 0.0))
    pop = eqx.tree_at(lambda q: q.obs_dv, pop, y)
    return pop, {**MM_TRUTH, "eta": np.asarray(eta), "prediction": np.asarray(f)}
