"""NUTS finishes on a model whose ODE blows up for part of the prior; those proposals are
rejected (counted as divergences), never raised."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from bayes_ude import inference, solvers
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


# u' = -k (u - cos t): stiff for large k, so an explicit solver needs ever more steps as k
# grows (the step is held to |k h| <~ 3.3 by stability, not by accuracy). With
# max_steps=100 the solve fails beyond a threshold in k, while the solution and the
# likelihood stay smooth there: the failed solves are a wall in parameter space and the
# only source of divergences. Inside NUTS the solve carries its forward sensitivity, whose
# error control needs more steps than the solution alone: the wall is at k ~ 21 there
# (measured), at k ~ 40 for the solution alone (101 steps at k = 40, 69 at k = 20).
STIFF_TS = jnp.linspace(0.0, 3.0, 13)
STIFF_MAX_STEPS = 100
K_TRUE, STIFF_SIGMA = 10.0, 0.2


def relaxation(k, max_steps=STIFF_MAX_STEPS):
    return solvers.solve(lambda t, u, k: -k * (u - jnp.cos(t)), jnp.ones(1), STIFF_TS, k,
                         max_steps=max_steps)


def stiff_model(data=None):
    # Prior median 10, and 23 % of its mass beyond the wall at k ~ 21 (log 2.1 = 0.74 prior
    # sd); the data barely tell k = 15 from k = 300 (u - cos t ~ sin(t) / k: the solutions
    # differ by < 0.07 << sigma = 0.2), so the posterior keeps that tail and NUTS hits the
    # wall often.
    k = numpyro.sample("k", dist.LogNormal(jnp.log(10.0), 1.0))
    ys = reject_failed_solve(relaxation(k))
    numpyro.sample("obs", dist.Normal(ys[:, 0], STIFF_SIGMA), obs=data)


def stiff_data():
    rng = np.random.default_rng(0)
    truth = np.asarray(relaxation(jnp.asarray(K_TRUE), max_steps=10_000).ys[:, 0])
    return jnp.asarray(truth + STIFF_SIGMA * rng.standard_normal(truth.shape))


@jax.jit
@jax.vmap
def _uncapped_steps(k):
    sol, _ = jax.jvp(lambda k: relaxation(k, max_steps=10_000), (k,), (jnp.ones_like(k),))
    return sol.num_steps, sol.success


def needs_more_than_max_steps(ks):
    """Independent recount: solve again without the cap, with the sensitivity that the
    sampler's gradient carries (a JVP), and count the steps. The capped solve takes the
    same steps until the cap, so it fails exactly when more are needed."""
    steps, success = _uncapped_steps(jnp.asarray(ks, float).ravel())
    assert bool(jnp.all(success))
    return np.asarray(steps) > STIFF_MAX_STEPS


def test_failed_solves_are_counted_in_sample_stats_blackjax():
    idata = inference.run_nuts(stiff_model, stiff_data(), backend="blackjax", num_warmup=150,
                               num_samples=200, num_chains=2, progress=False,
                               keep_failed_states=True)
    failed = idata.sample_stats["solver_failed"].values
    diverging = idata.sample_stats["diverging"].values
    assert failed.shape == (2, 200) and failed.dtype == bool
    n_failed = int(failed.sum())
    print(f"failed solves: {n_failed} of 400 draws (warmup: "
          f"{idata.attrs['num_failed_solves_warmup']}); divergences {int(diverging.sum())}")
    assert n_failed > 0
    assert idata.attrs["num_failed_solves"] == n_failed
    # Every flagged trajectory stopped at a k whose solve really needs > max_steps steps,
    # and there are no other divergences (the wall is their only source here).
    k_at = idata.sample_stats["failed_at.k"].values
    assert np.all(np.isnan(k_at[~failed]))
    assert np.all(needs_more_than_max_steps(k_at[failed]))
    np.testing.assert_array_equal(failed, diverging)
    # Every draw itself is a successful solve.
    draws = idata.posterior["k"].values.ravel()
    assert not np.any(needs_more_than_max_steps(draws))


def test_failed_solves_do_not_crash_numpyro_backend():
    idata = inference.run_nuts(stiff_model, stiff_data(), backend="numpyro", num_warmup=100,
                               num_samples=100, num_chains=1, progress=False)
    assert idata.attrs["num_divergent"] > 0
    assert np.all(np.isfinite(idata.posterior["k"].values))
    assert "solver_failed" not in idata.sample_stats


def test_failed_solves_are_rejected_and_counted_by_sgmcmc():
    data = stiff_data()

    def logprior(theta):  # theta = log k ~ N(log 10, 1), as in stiff_model
        return -0.5 * jnp.sum((theta - jnp.log(10.0)) ** 2)

    def loglik(theta, item):
        sol = relaxation(jnp.exp(theta[0]))
        residual = (solvers.sanitize(sol)[:, 0] - item) / STIFF_SIGMA
        return -0.5 * jnp.sum(residual**2) + solvers.log_density_penalty(sol)

    grad = inference.grad_estimator(logprior, loglik, 1)  # one trajectory: full batch
    # Step 0.02 in log k: noise sd 0.2 per step, so chains started at k = 10 reach the
    # wall at k ~ 21 (0.7 away in log k) within a few dozen steps.
    idata = inference.run_sgmcmc(inference.sgld(grad), jnp.array([jnp.log(10.0)]),
                                 data[None], num_steps=400, batch_size=1, step_size=0.02,
                                 num_chains=2, progress=False)
    failed = idata.sample_stats["solver_failed"].values
    assert failed.shape == (2, 400)
    n_failed = int(failed.sum())
    print(f"SGLD: {n_failed} rejected steps of 800")
    assert n_failed > 0 and idata.attrs["num_failed_steps"] == n_failed
    draws = idata.posterior["theta"].values[..., 0]
    assert np.all(np.isfinite(draws))
    # Independent recount from the draws alone: a rejected move leaves the chain where it
    # was for two draws (the failed step, and the next step that starts over from there);
    # every other step moves it (Gaussian noise).
    stood_still = draws[:, 1:] == draws[:, :-1]
    np.testing.assert_array_equal(stood_still, (failed[:, 1:] > 0) | (failed[:, :-1] > 0))
    # Every draw is a position where the sampler's solve succeeds.
    assert not np.any(needs_more_than_max_steps(np.exp(draws)))


def test_sgmcmc_warns_when_most_steps_are_rejected():
    """A chain started outside its prior's support rejects every step and stands still:
    its draws are one position repeated, which the counts alone left for the user to
    find."""
    def logprior(theta):
        return jnp.sum(dist.Uniform(5.0, 6.0).log_prob(theta))

    grad = inference.grad_estimator(logprior, lambda theta, item: -0.5 * jnp.sum(item), 1)
    with pytest.warns(RuntimeWarning, match=r"rejected many steps \(chain 0: 30 of 30\)"):
        idata = inference.run_sgmcmc(inference.sgld(grad), jnp.array([0.0]), jnp.zeros((1, 1)),
                                     num_steps=30, batch_size=1, step_size=0.01,
                                     num_chains=1, progress=False)
    assert idata.attrs["num_failed_steps"] == 30
