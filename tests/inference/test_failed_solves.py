"""NUTS finishes on a model whose ODE blows up for part of the prior; those proposals are
rejected (counted as divergences), never raised."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from bayes_ude import solvers
from bayes_ude.inference import reject_failed_solve

TS = jnp.linspace(0.0, 0.9, 10)
R_TRUE = 0.9  # u = 1 / (1 - r t) blows up at t = 1/r; over [0, 0.9] that needs r < 1.11
R_BLOWUP = 1 / 0.9


def model(data=None):
    # The prior puts ~35 % of its mass on r > 1.11, where the solve blows up before t=0.9.
    r = numpyro.sample("r", dist.LogNormal(jnp.log(0.9), 0.6))
    sigma = 0.05
    sol = solvers.solve(lambda t, u, r: r * u**2, jnp.ones(1), TS, r)
    ys = reject_failed_solve(sol)
    numpyro.sample("obs", dist.Normal(ys[:, 0], sigma), obs=data)


def test_nuts_rejects_blow_up_proposals():
    rng = np.random.default_rng(0)
    data = 1 / (1 - R_TRUE * np.asarray(TS)) + 0.05 * rng.standard_normal(TS.shape[0])
    mcmc = MCMC(NUTS(model), num_warmup=200, num_samples=300, progress_bar=False)
    mcmc.warmup(jax.random.key(0), data=jnp.asarray(data), collect_warmup=True,
                extra_fields=("diverging",))
    warmup_divergences = int(mcmc.get_extra_fields()["diverging"].sum())
    mcmc.run(jax.random.key(1), data=jnp.asarray(data), extra_fields=("diverging",))
    r = np.asarray(mcmc.get_samples()["r"])
    # The run finished; proposals in the blow-up region were rejected during adaptation.
    assert warmup_divergences > 0
    # Every kept draw has a finite solve, and the posterior covers the truth.
    assert np.all(r < R_BLOWUP)
    assert np.all(np.isfinite(r))
    lo, hi = np.quantile(r, [0.005, 0.995])
    assert lo < R_TRUE < hi
