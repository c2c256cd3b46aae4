"""SG-MCMC kernels: the pSGLD update formula (noise and running preconditioner) and the
stationary distributions of SGLD, pSGLD and SGHMC on a conjugate Gaussian regression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import inference


def test_psgld_noise_is_sqrt_2_eps_G_and_preconditioner_is_a_running_average():
    g1, g2 = jnp.array([2.0, -0.5]), jnp.array([1.0, 3.0])
    grads = iter([g1, g2])
    alpha, eps, lam = 0.9, 1e-2, 1e-5
    kernel = inference.psgld(lambda pos, batch: batch, alpha=alpha, eps=lam)
    state = kernel.init(jnp.zeros(2))
    state = kernel.step(jax.random.key(0), state, next(grads), eps)
    state = kernel.step(jax.random.key(1), state, next(grads), eps)
    # V after two steps: alpha (1 - alpha) g1^2 + (1 - alpha) g2^2 (not reset to g2^2).
    expected_v = alpha * (1 - alpha) * g1**2 + (1 - alpha) * g2**2
    np.testing.assert_allclose(state.square_avg, expected_v, rtol=1e-12)
    # One step from V, many noise draws: increments have mean eps G g and variance 2 eps G.
    g = jnp.array([0.7, -1.3])
    v = (1 - alpha) * g**2 + alpha * expected_v
    precond = 1.0 / (lam + jnp.sqrt(v))
    steps = jax.vmap(lambda k: kernel.step(k, state, g, eps).position - state.position)(
        jax.random.split(jax.random.key(2), 200_000))
    np.testing.assert_allclose(steps.mean(0), eps * precond * g,
                               atol=5 * float(np.sqrt(2 * eps * precond.max() / 200_000)))
    np.testing.assert_allclose(steps.var(0), 2 * eps * precond, rtol=0.02)


def test_sgld_noise_variance():
    kernel = inference.sgld(lambda pos, batch: jnp.zeros_like(pos))
    state = kernel.init(jnp.zeros(3))
    steps = jax.vmap(lambda k: kernel.step(k, state, None, 1e-3).position)(
        jax.random.split(jax.random.key(0), 100_000))
    np.testing.assert_allclose(steps.var(0), 2e-3, rtol=0.03)


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(size=(n, 2))
    y = x @ np.array([1.0, -2.0]) + rng.normal(size=n)
    prior_sd = 10.0
    precision = x.T @ x + np.eye(2) / prior_sd**2
    cov = np.linalg.inv(precision)
    mean = cov @ (x.T @ y)

    def logprior(w):
        return -0.5 * jnp.sum(w**2) / prior_sd**2

    def loglik(w, item):
        xi, yi = item
        return -0.5 * (yi - xi @ w) ** 2

    grad = inference.grad_estimator(logprior, loglik, n)
    return grad, (jnp.asarray(x), jnp.asarray(y)), mean, np.sqrt(np.diag(cov))


@pytest.mark.parametrize(("name", "step_size"), [("sgld", 5e-5), ("psgld", 2e-3),
                                                 ("sghmc", 5e-4)])
def test_stationary_distribution_matches_conjugate_posterior(name, step_size, regression):
    grad, data, mean, sd = regression
    kernel = {"sgld": inference.sgld, "psgld": inference.psgld,
              "sghmc": lambda g: inference.sghmc(g, 5)}[name](grad)
    idata = inference.run_sgmcmc(kernel, jnp.zeros(2), data, num_steps=20_000,
                                 batch_size=100, step_size=step_size, burn_in=2000, thin=5,
                                 num_chains=4, progress=False)
    draws = idata.posterior["theta"].values
    assert draws.shape == (4, 3600, 2)
    flat = draws.reshape(-1, 2)
    # Minibatch noise and a finite step inflate the spread a little (<= 25 %).
    np.testing.assert_allclose(flat.mean(0), mean, atol=0.5 * sd.max())
    assert np.all(flat.std(0) >= 0.9 * sd) and np.all(flat.std(0) <= 1.3 * sd), flat.std(0)


def test_schedule_and_bad_input(regression):
    schedule = inference.polynomial_schedule(0.1, 2.0, 0.55)
    np.testing.assert_allclose(schedule(3), 0.1 * 5.0**-0.55)
    grad, data, _, _ = regression
    kernel = inference.sgld(grad)
    with pytest.raises(ValueError, match="batch_size"):
        inference.run_sgmcmc(kernel, jnp.zeros(2), data, num_steps=10, batch_size=5000)
    with pytest.raises(ValueError, match="burn_in"):
        inference.run_sgmcmc(kernel, jnp.zeros(2), data, num_steps=10, batch_size=5,
                             burn_in=10)
    with pytest.raises(ValueError, match="leading size"):
        inference.run_sgmcmc(kernel, jnp.zeros(2), (data[0], data[1][:10]), num_steps=10,
                             batch_size=5)
    with pytest.raises(ValueError, match="alpha"):
        inference.psgld(grad, alpha=1.0)
    # Each ran and returned frozen chains (step 0), or every step rejected and counted as
    # a failed solve (negative step, temperature), or a tempered posterior (data_size), or
    # lost a parameter (names that collide).
    run = {"num_steps": 10, "batch_size": 5}
    for bad, match in (({"step_size": 0.0}, "step_size"), ({"step_size": -1e-3}, "step_size"),
                       ({"step_size": lambda t: -1e-3 + 0 * t}, "step_size"),
                       ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ValueError, match=match):
            inference.run_sgmcmc(kernel, jnp.zeros(2), data, **run, **bad)
    with pytest.raises(ValueError, match="num_integration_steps"):
        inference.sghmc(grad, num_integration_steps=0)
    with pytest.raises(ValueError, match="data_size=1000 items.*N=900"):
        inference.run_sgmcmc(kernel, jnp.zeros(2), (data[0][:900], data[1][:900]), **run)
    with pytest.raises(ValueError, match=r"posterior names \['w.a'\] more than once"):
        inference.run_sgmcmc(inference.sgld(lambda p, b: p), {"w": {"a": jnp.zeros(1)},
                             "w.a": jnp.zeros(1)}, data, **run)


def test_chains_draw_their_own_minibatches(regression):
    """Chains that shared one minibatch per step moved together: their draws were 0.95
    correlated, and R-hat and ESS counted them as independent. (float32 starts run in
    float64.)"""
    grad, data, _, sd = regression
    idata = inference.run_sgmcmc(inference.sgld(grad), np.zeros(2, np.float32), data,
                                 num_steps=3000, batch_size=5, step_size=2e-5, burn_in=500,
                                 num_chains=4, init_spread=1.0, progress=False)
    draws = idata.posterior["theta"].values[..., 0]
    assert draws.dtype == np.float64
    steps = np.diff(draws, axis=1)  # the moves: minibatch noise + injected noise
    corr = np.corrcoef(steps)[np.triu_indices(4, 1)]
    assert np.all(np.abs(corr) < 0.1), corr


def test_minibatch_indices_are_a_uniform_subset_at_a_cost_free_of_n():
    """Floyd's algorithm: distinct indices, each item in a minibatch with probability
    size/N and each pair with size(size-1)/(N(N-1)) (checked by counting, 5 standard errors),
    and no array of size N in the program (a permutation of N was what made an SGLD step
    grow with the number of subjects)."""
    from bayes_ude.inference._sgmcmc import sample_indices

    n, size, reps = 7, 3, 100_000
    idx = np.asarray(jax.jit(jax.vmap(lambda k: sample_indices(k, n, size)))(
        jax.random.split(jax.random.key(0), reps)))
    assert idx.min() >= 0 and idx.max() < n
    assert (np.sort(idx, axis=1)[:, 1:] != np.sort(idx, axis=1)[:, :-1]).all()  # distinct
    p_item = size / n
    freq = np.bincount(idx.ravel(), minlength=n) / reps
    assert np.all(np.abs(freq - p_item) < 5 * np.sqrt(p_item * (1 - p_item) / reps))
    member = np.zeros((reps, n), bool)
    member[np.arange(reps)[:, None], idx] = True
    pair = (member[:, :, None] & member[:, None, :]).mean(0)[~np.eye(n, dtype=bool)]
    p_pair = size * (size - 1) / (n * (n - 1))
    assert np.all(np.abs(pair - p_pair) < 5 * np.sqrt(p_pair * (1 - p_pair) / reps))
    # the program for N = 10^9 holds nothing of size N (it would not fit in memory)
    big = jax.jit(lambda k: sample_indices(k, 10**9, 100))(jax.random.key(1))
    assert np.unique(np.asarray(big)).size == 100
    with pytest.raises(ValueError, match="size=8"):
        sample_indices(jax.random.key(0), 7, 8)


def test_sghmc_is_chens_algorithm_and_honours_the_temperature():
    """Full-batch SGHMC on a conjugate Gaussian (50 items, N(0, 1) prior): Chen et al.'s
    order (move, then the gradient at the new position) keeps the posterior sd; the
    explicit Euler step of BlackJAX's kernel gave 1.40 times it. At temperature 4 the sd
    doubles (BlackJAX's kernel drew the momentum from N(0, 1) and gave 1.06)."""
    n = 50
    x = np.random.default_rng(0).normal(1.0, 1.0, size=n)
    mean, sd = x.sum() / (1 + n), (1 + n) ** -0.5
    grad = inference.grad_estimator(lambda th: -0.5 * th**2,
                                    lambda th, xi: -0.5 * (xi - th) ** 2, n)
    for temperature, expected in ((1.0, 1.0), (4.0, 2.0)):
        idata = inference.run_sgmcmc(inference.sghmc(grad), jnp.asarray(mean), jnp.asarray(x),
                                     num_steps=8000, batch_size=n, step_size=0.03,
                                     burn_in=500, num_chains=2, temperature=temperature,
                                     progress=False, key=jax.random.key(2))
        draws = idata.posterior["theta"].values
        assert abs(draws.mean() - mean) < 0.1 * expected * sd * 3
        assert 0.85 * expected < draws.std() / sd < 1.15 * expected, (temperature,
                                                                      draws.std() / sd)
