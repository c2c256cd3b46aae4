"""Bayesian UDE: pSGLD on the missing-physics Lotka-Volterra UDE from its MAP, then SINDy
on the learned term of every retained draw in one vmapped call."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import discovery, inference, solvers
from tests.ude.test_missing_physics import P, noisy_data, physics, train


@pytest.mark.slow
def test_psgld_posterior_and_posterior_equation_discovery():
    ts, truth, ys = noisy_data()
    sigma = jnp.asarray(0.05 * truth.mean(axis=0))  # the known noise level
    map_model, *_ = train(physics, ts, ys)
    ts_j, ys_j = jnp.asarray(ts), jnp.asarray(ys)

    def logprior(m):
        weights = jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))
        return -0.5 * sum(jnp.sum(w**2) for w in weights)  # N(0, 1) on every weight

    def loglik(m, item):
        sol = solvers.solve(lambda t, u, m: m(t, u), ys_j[0], ts_j, m, rtol=1e-7, atol=1e-9)
        pred = solvers.sanitize(sol)
        value = -0.5 * jnp.sum(((pred - ys_j) / sigma) ** 2)
        return jnp.where(sol.success, value, -1e8)

    grad = inference.grad_estimator(logprior, loglik, 1)  # one trajectory: full batch
    idata = inference.run_sgmcmc(inference.psgld(grad), map_model, jnp.zeros(1),
                                 num_steps=2000, batch_size=1, step_size=2e-4, burn_in=500,
                                 thin=10, num_chains=2, progress=False)
    draws = inference.posterior_pytree(idata, map_model)
    n_draws = 2 * 150
    flat = jax.tree.map(lambda x: x.reshape(n_draws, *x.shape[2:]), draws)
    # The draws differ (a posterior, not a point) and still fit the data.
    w = np.asarray(flat.network.layers[0].weight)
    assert np.all(w.std(axis=0) > 0)
    dense_ts = np.linspace(0.0, 5.0, 51)
    states = np.asarray(solvers.solve(lambda t, u, m: m(t, u), ys_j[0], jnp.asarray(dense_ts),
                                      map_model, rtol=1e-8, atol=1e-10).ys)
    learned = jax.vmap(lambda m: jax.vmap(lambda u: m.network_term(0.0, u))(
        jnp.asarray(states)))(flat)
    assert learned.shape == (n_draws, 51, 2)
    result = discovery.sweep_batched(states, learned, discovery.PolynomialLibrary(2),
                                     thresholds=(0.01, 0.03, 0.1, 0.3, 1.0))
    table = result.summary()
    best = int(np.argmin(np.asarray(table["aicc"])))
    inclusion = result.inclusion(best)
    print(table.to_string())
    print(inclusion.to_string())
    assert inclusion["u1*u2"].min() >= 0.9
    # At lambda = 0.3 the dominant set has the interaction term in both equations. Any
    # other term it keeps is weaker: the network's residual is not noise, and a u2 term
    # in du1/dt sits at the threshold (after the refit: below it in some runs, 0.35 in
    # others, depending on rounding in the MAP training), so the set is not asserted to
    # be exactly {u1*u2}.
    row = table[np.isclose(table["lambda"], 0.3)].iloc[0]
    assert row["dominant_terms"].count("u1*u2") == 2 and row["n_active"] <= 3
    coef = np.asarray(result.coefficients[3])  # (draws, targets, terms)
    j = list(result.term_names).index("u1*u2")
    others = np.delete(np.abs(np.median(coef, axis=0)), j, axis=1)
    # the interaction dominates every other term (measured: the u2 term in du1/dt at 0.43
    # of it on one CPU, 0.56 on another, AMD EPYC: rounding in the MAP training)
    assert np.all(others < 0.75 * np.abs(np.median(coef[:, :, j], axis=0))[:, None])
    beta, gamma = -coef[:, 0, j], coef[:, 1, j]
    # 15 %, not 10 %: where the u2 term is kept, it takes a share of the interaction
    # (measured: beta 0.852 without it, 0.808 with it; truth 0.9)
    assert abs(np.median(beta) - P[1]) <= 0.15 * P[1]
    assert abs(np.median(gamma) - P[2]) <= 0.15 * P[2]
    assert beta.std() > 0
