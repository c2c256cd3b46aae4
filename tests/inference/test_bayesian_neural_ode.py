"""Bayesian neural ODE on the spiral of the DiffEqFlux tutorials: u' = ((u^3)^T A)^T,
A = [[-0.1, 2], [-2, -0.1]], u0 = (2, 0), 40 noisy points on [0, 1] (sd 0.1), a network on
u^3 with a N(0, 1) prior on every weight, NUTS from the MAP. The posterior predictive band
covers the truth (computed by scipy, independently of our solver) on the training span and
widens beyond it, up to t = 1.5.

Reduced for the test suite: a 2-4-2 network (22 weights; the notebook uses 2-8-2), one
chain of 120 + 120 iterations with tree depth at most 5.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import Predictive
from scipy.integrate import solve_ivp

from bayes_ude import inference, nn, solvers

A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
U0 = np.array([2.0, 0.0])
SIGMA = 0.1
TS = np.linspace(0.0, 1.0, 40)
TS_LONG = np.linspace(0.0, 1.5, 61)  # every 0.025: t <= 1 is the training span
TEMPLATE = nn.MLP(2, 2, (4,), "tanh", key=jax.random.key(0))


def spiral(t, u):
    return (u**3) @ A


def field(t, u, net):
    return net(u**3)


def neural_ode(ts, ys=None):
    net = inference.network_prior("nn", TEMPLATE, scale=1.0)
    sol = solvers.solve(field, jnp.asarray(U0), ts, net)
    u = numpyro.deterministic("u", inference.reject_failed_solve(sol))
    numpyro.sample("ys", dist.Normal(u, SIGMA).to_event(2), obs=ys)


def map_estimate(ys, steps=600, learning_rate=2e-2):
    """Adam on minus the log posterior (the same prior and likelihood as the model)."""
    params, static = eqx.partition(TEMPLATE, eqx.is_inexact_array)

    def neg_log_posterior(p):
        sol = solvers.solve(field, jnp.asarray(U0), jnp.asarray(TS), eqx.combine(p, static))
        misfit = 0.5 * jnp.sum(((solvers.sanitize(sol) - ys) / SIGMA) ** 2)
        prior = 0.5 * sum(jnp.sum(w**2) for w in jax.tree.leaves(p))
        return misfit + prior - solvers.log_density_penalty(sol)

    optimizer = optax.adam(learning_rate)

    @jax.jit
    def run(p):
        def step(carry, _):
            p, state = carry
            grad = jax.grad(neg_log_posterior)(p)
            updates, state = optimizer.update(grad, state, p)
            return (optax.apply_updates(p, updates), state), None

        (p, _), _ = jax.lax.scan(step, (p, optimizer.init(p)), None, length=steps)
        return p

    return eqx.combine(run(params), static)


def site_values(name, network):
    """The network's weights under the site names network_prior gives them."""
    trace = numpyro.handlers.trace(numpyro.handlers.seed(
        lambda: inference.network_prior(name, network), 0)).get_trace()
    return dict(zip(trace, jax.tree.leaves(eqx.filter(network, eqx.is_inexact_array)),
                    strict=True))


@pytest.mark.slow
@pytest.mark.heavy
def test_posterior_predictive_covers_the_truth_and_widens_beyond_the_data():
    truth_long = solve_ivp(spiral, (0, 1.5), U0, t_eval=TS_LONG, rtol=1e-12, atol=1e-12).y.T
    truth = solve_ivp(spiral, (0, 1.0), U0, t_eval=TS, rtol=1e-12, atol=1e-12).y.T
    rng = np.random.default_rng(0)
    ys = truth + SIGMA * rng.standard_normal(truth.shape)
    start = map_estimate(jnp.asarray(ys))
    idata = inference.run_nuts(neural_ode, jnp.asarray(TS), jnp.asarray(ys),
                               backend="blackjax", num_warmup=120, num_samples=120,
                               num_chains=1, max_tree_depth=5, init=site_values("nn", start),
                               posterior_predictive=False, progress=False)
    weights = {k: v.values[0] for k, v in idata.posterior.items() if k.startswith("nn.")}
    latent = np.asarray(Predictive(neural_ode, posterior_samples=weights,
                                   return_sites=["u"])(jax.random.key(1),
                                                       jnp.asarray(TS_LONG))["u"])
    assert np.all(np.isfinite(latent))  # no kept draw has a failed solve
    # Posterior predictive: each draw's trajectory plus its own N(0, 0.1^2) noise.
    predictive = latent + SIGMA * rng.standard_normal(latent.shape)
    lo, hi = np.quantile(predictive, [0.025, 0.975], axis=0)
    inside = (lo <= truth_long) & (truth_long <= hi)
    train = TS_LONG <= 1.0
    width = (hi - lo).mean(axis=1)  # mean over the two states, per time
    latent_lo, latent_hi = np.quantile(latent, [0.025, 0.975], axis=0)
    latent_inside = (latent_lo <= truth_long) & (truth_long <= latent_hi)
    print(f"{idata.attrs['seconds_total']:.0f} s, {idata.attrs['num_divergent']} divergences;"
          f" truth inside the 95 % predictive band on [0, 1]: {inside[train].mean():.3f} "
          f"(latent band {latent_inside[train].mean():.3f}); mean width on [0, 1] "
          f"{width[train].mean():.3f}, on (1, 1.5] {width[~train].mean():.3f}")
    assert inside[train].mean() >= 0.9
    assert width[~train].mean() > width[train].mean()
