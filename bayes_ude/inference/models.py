"""Ready-made NumPyro models used in the docs, tests and benchmarks."""

from __future__ import annotations

import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist

from .. import solvers
from ._failure import reject_failed_solve


def _lotka_volterra(t, z, theta):
    alpha, beta, gamma, delta = theta
    return jnp.stack([(alpha - beta * z[1]) * z[0], (-gamma + delta * z[0]) * z[1]])


def lynx_hare_data():
    """``(ts, y_init, y)`` from the shipped Hudson's Bay table, as in the Stan case study:
    ``ts = 1..20`` (years since 1900), ``y_init`` the 1900 pelts (hare, lynx) and ``y``
    the 1901-1920 pelts, shape (20, 2), hare first (thousands)."""
    from .. import datasets

    df = datasets.load_lynx_hare()
    pelts = df[["Hare", "Lynx"]].to_numpy(dtype=float)
    ts = (df["Year"].to_numpy() - df["Year"].iloc[0]).astype(float)
    return ts[1:], pelts[0], pelts[1:]


def lynx_hare(ts, y_init=None, y=None, *, rtol: float = 1e-5, atol: float = 1e-3):
    """Lotka-Volterra for the lynx-hare pelts: the model of Carpenter's Stan case study
    ("Predator-prey population dynamics", 2018), site for site.

    ``theta = (alpha, beta, gamma, delta) >= 0`` with ``alpha, gamma ~ N(1, 0.5)`` and
    ``beta, delta ~ N(0.05, 0.05)`` (truncated at 0, as Stan's ``<lower=0>``),
    ``z_init ~ LogNormal(log 10, 1)``, ``sigma ~ LogNormal(-1, 1)`` (one per species),
    ``y_init ~ LogNormal(log z_init, sigma)`` and ``y ~ LogNormal(log z(t), sigma)`` with
    ``z`` solved from ``t = 0`` at the case study's tolerances (``rtol=1e-5``,
    ``atol=1e-3``, as its ``integrate_ode_rk45``). A failed solve rejects the proposal.
    """
    ts = jnp.asarray(ts)
    low = 0.0
    theta = numpyro.sample("theta", dist.TruncatedNormal(
        jnp.array([1.0, 0.05, 1.0, 0.05]), jnp.array([0.5, 0.05, 0.5, 0.05]), low=low))
    z_init = numpyro.sample("z_init", dist.LogNormal(jnp.log(10.0), 1.0).expand([2]))
    sigma = numpyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]))
    sol = solvers.solve(_lotka_volterra, z_init, ts, theta, t0=0.0, rtol=rtol, atol=atol)
    z = numpyro.deterministic("z", reject_failed_solve(sol))
    numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma).to_event(1), obs=y_init)
    # Round-off can make a population that has crashed to ~0 slightly negative; the
    # likelihood of such a trajectory is then tiny but stays finite.
    numpyro.sample("y", dist.LogNormal(jnp.log(jnp.maximum(z, 1e-12)), sigma).to_event(2),
                   obs=y)


__all__ = ["lynx_hare", "lynx_hare_data"]

