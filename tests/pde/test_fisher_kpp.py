"""The Fisher--KPP universal PDE: ``rho_t = NN(rho) + D0 conv(rho)`` learns the stencil
``[1, -2, 1]``, the diffusion coefficient and the logistic reaction; SINDy names the reaction;
NUTS on a reduced model gives a calibrated posterior of D, around the D that model can
reach (1.8 % above the truth), and pSGLD a too narrow one.

Truth: ``rho_t = r rho (1 - rho) + D rho_xx``, D = 0.01, r = 1, 26 periodic nodes with
dx = 0.04, discretised with the 3-point Laplacian on the same grid (so the model can
represent it exactly and what is tested is identifiability, not discretisation error).
"""

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.optimize

from bayes_ude import discovery, inference, nn, pde, solvers, ude

D_TRUE, R_TRUE, DX, N = 0.01, 1.0, 0.04, 26
TS = np.arange(0.0, 5.0001, 0.5)
GRID = pde.Grid(N, DX, "periodic")


def rho0():
    x = GRID.x
    return (np.tanh((x - 0.4) / 0.02) - np.tanh((x - 0.6) / 0.02)) / 2


def truth_data():
    def field(t, u, args):
        return R_TRUE * u * (1 - u) + D_TRUE * pde.laplacian(u, GRID)

    return np.asarray(solvers.solve(field, jnp.asarray(rho0()), TS, rtol=1e-10,
                                    atol=1e-12).ys)


def initial_model():
    """The 1-10-20-10-1 tanh network, a random zero-sum 3-point stencil (scale 0.1: a
    weak operator at the start, so that an anti-diffusive random draw cannot blow the
    first solves up), D0 = 1."""
    k_net, k_stencil = jax.random.split(jax.random.key(0))
    net = nn.MLP(1, 1, (10, 20, 10), "tanh", key=k_net)
    stencil = pde.LearnableStencil(3, zero_sum=True, key=k_stencil, scale=0.1)
    return pde.UniversalPDE(GRID, net, stencil, diffusion=1.0)


def test_loss_gradient_matches_finite_differences():
    """Reverse-mode gradient of the shooting loss with respect to D0 and the stencil
    against central differences of the loss (step 1e-5: truncation ~1e-10, round-off
    ~1e-16 / 1e-5 ~ 1e-11 relative to the O(1) loss, tolerances 1e-10 make it exact
    to ~1e-5 relative)."""
    loss = ude.SingleShooting(TS, truth_data(), scale=1.0, rtol=1e-10, atol=1e-12)
    model = initial_model()
    grad = eqx.filter_jit(eqx.filter_grad(loss))(model)
    value = eqx.filter_jit(loss)
    h = 1e-5
    fd_d0 = (value(eqx.tree_at(lambda m: m.diffusion, model, model.diffusion + h))
             - value(eqx.tree_at(lambda m: m.diffusion, model, model.diffusion - h))) / (2 * h)
    assert np.isclose(float(grad.diffusion), float(fd_d0), rtol=1e-4)
    for j in range(3):
        e = jnp.zeros(3).at[j].set(h)
        up = eqx.tree_at(lambda m: m.stencil.raw, model, model.stencil.raw + e)
        down = eqx.tree_at(lambda m: m.stencil.raw, model, model.stencil.raw - e)
        fd = (value(up) - value(down)) / (2 * h)
        assert np.isclose(float(grad.stencil.raw[j]), float(fd), rtol=1e-4, atol=1e-9)


@pytest.fixture(scope="module")
def fitted():
    """500 Adam steps (lr 1e-2) then 300 L-BFGS iterations on the noise-free data; about
    20 s on an idle 2-core machine (0.003 s per loss + gradient)."""
    ys = truth_data()
    loss = ude.SingleShooting(TS, ys, scale=1.0, rtol=1e-6, atol=1e-8)
    result = ude.fit(loss, initial_model(), steps=500, learning_rate=1e-2, lbfgs_steps=300,
                     progress=False)
    return result, ys


@pytest.mark.slow
@pytest.mark.heavy
def test_upde_recovers_stencil_diffusion_and_reaction(fitted):
    result, _ = fitted
    model = result.params
    # Measured: loss 1.8e-8, stencil [1.396706, -2.793421, 1.396708] (normalised within
    # 2e-6 of [1, -2, 1]), D 0.0100115, reaction error 1.2 % of its range.
    assert result.final_loss < 1e-5
    normalised = np.asarray(pde.normalised_stencil(model.stencil.weights))
    np.testing.assert_allclose(normalised, [1.0, -2.0, 1.0], rtol=0.05)
    assert abs(float(model.effective_diffusion) - D_TRUE) < 0.1 * D_TRUE
    r = np.linspace(0.0, 1.0, 101)
    reaction_range = 0.25   # max - min of r (1 - r) on [0, 1]
    error = np.asarray(model.reaction_term(r)) - R_TRUE * r * (1 - r)
    assert np.max(np.abs(error)) < 0.05 * reaction_range


@pytest.mark.slow
@pytest.mark.heavy
def test_sindy_on_the_network_finds_the_logistic_term(fitted):
    """Cubic library on 101 points of [0, 1]. The ridge strength is 1e-3, not the default
    0.05: rho^2 and rho^3 are nearly collinear on [0, 1], and a ridge of 0.05 spreads weight
    onto rho^3 (0.012 after the refit, measured). Measured: 0.999 rho - 0.998 rho^2."""
    model = fitted[0].params
    r = np.linspace(0.0, 1.0, 101)[:, None]
    out = np.asarray(model.reaction_term(r[:, 0]))[:, None]
    fit = discovery.sindy(r, out, discovery.PolynomialLibrary(3), threshold=0.1,
                          alpha=1e-3, feature_names=["rho"], target_names=["NN"])
    coef = dict(zip(fit.term_names, np.asarray(fit.coefficients)[0], strict=True))
    active = {name for name, c in coef.items() if c != 0}
    assert active == {"rho", "rho^2"}, fit.equations()
    assert abs(coef["rho"] - R_TRUE) < 0.1 and abs(coef["rho^2"] + R_TRUE) < 0.1


@pytest.mark.slow
@pytest.mark.heavy
def test_psgld_posterior_of_diffusion(fitted):
    """pSGLD from the MAP, on the data with 2 % noise (sigma = 0.02, known), Normal(0, 3^2)
    prior on every weight. The posterior of D must sit on the truth: its mean within 2 %
    of 0.01 and its sd between 1e-6 and 1e-3 (a real spread, narrower than 10 %). The
    notebook's longer chain (1000 steps) measured mean 0.00985, sd 2.3e-5: pSGLD with a
    fixed step under-disperses, so no interval-coverage claim is tested (the NUTS tests
    below are the calibrated posterior)."""
    model, ys = fitted[0].params, fitted[1]
    sigma = 0.02
    noisy = ys + sigma * np.random.default_rng(0).normal(size=ys.shape)
    loss = ude.SingleShooting(TS, noisy, scale=1.0, rtol=1e-6, atol=1e-8)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loglikelihood(p, item):
        return -0.5 * loss(eqx.combine(p, static)) * noisy.size / sigma**2

    def logprior(p):
        return sum(-0.5 * jnp.sum(leaf**2) / 3.0**2 for leaf in jax.tree.leaves(p))

    kernel = inference.psgld(inference.grad_estimator(logprior, loglikelihood, 1))
    idata = inference.run_sgmcmc(kernel, params, {"item": jnp.zeros((1,))}, num_steps=600,
                                 batch_size=1, step_size=1e-4, burn_in=300, thin=5,
                                 progress=False)
    draws = inference.posterior_pytree(idata, params)
    d = np.asarray(jax.vmap(jax.vmap(
        lambda p: eqx.combine(p, static).effective_diffusion))(draws)).ravel()
    assert abs(d.mean() - D_TRUE) < 0.02 * D_TRUE, d.mean()
    assert 1e-6 < d.std() < 1e-3, d.std()


# ----------------------------------------------------------------------------------------
# A calibrated posterior of D: NUTS on a reduced model.
#
# The 465-weight network's posterior is out of NUTS's reach, and a full 1-4-1 network's is
# badly conditioned (measured: tree depth 10 on every draw, R-hat 1.12 for D after 300 + 300
# draws, 11 minutes). The reduced model: a 1-8-1 tanh network and a zero-sum 3-point stencil
# fitted by MAP to the noisy data; then the network's hidden layer is fixed at the MAP and
# its output layer (8 weights + bias), the stencil's two free weights (D0 = 1: only their
# product enters) and the noise sd sigma are sampled. Sampling runs in coordinates whitened by
# the Gauss-Newton curvature at the MAP, theta = theta_map + L z (a fixed linear
# reparameterisation, the posterior is unchanged; NUTS then needs ~7 leapfrog steps per draw).
# The initial condition is known; the data are the 10 snapshots at t = 0.5..5 with noise
# sd 0.02. Priors: Normal(0, 3^2) on the output layer, Normal(0, 10^2) on the stencil
# weights (truth 1/dx^2 = 6.25; prior sd of D 0.011), HalfNormal(0.1) on sigma.

SIGMA = 0.02
HIDDEN = 8


def noisy_data(seed):
    """The 10 snapshots after t = 0 with independent N(0, 0.02^2) noise."""
    truth = truth_data()[1:]
    return truth + SIGMA * np.random.default_rng(seed).normal(size=truth.shape)


def reduced_map(ys):
    """MAP of the 1-8-1 UPDE on noisy snapshots (known initial condition)."""
    k_net, k_stencil = jax.random.split(jax.random.key(1))
    model = pde.UniversalPDE(GRID, nn.MLP(1, 1, (HIDDEN,), "tanh", key=k_net),
                             pde.LearnableStencil(3, zero_sum=True, key=k_stencil, scale=0.1),
                             diffusion=1.0)
    loss = ude.SingleShooting(TS, np.concatenate([rho0()[None], ys]), u0=rho0(), scale=1.0,
                              rtol=1e-6, atol=1e-8)
    return ude.fit(loss, model, steps=300, learning_rate=2e-2, lbfgs_steps=300,
                   progress=False).params


def reduced_parts(map_model):
    """The reduced UPDE around ``map_model``: ``theta_map`` (output layer, bias, the
    stencil's two free weights), ``solve(theta)`` at the 10 snapshot times, ``build(theta)``
    the model, and the prior sds of theta."""
    prior_sd = jnp.array([3.0] * (HIDDEN + 1) + [10.0, 10.0])
    stencil = map_model.diffusion * map_model.stencil.weights
    last = map_model.reaction.layers[-1]
    theta_map = jnp.concatenate([last.weight[0], last.bias, stencil[jnp.array([0, 2])]])
    ts, u0 = jnp.asarray(TS[1:]), jnp.asarray(rho0())

    def build(theta):
        w, b, left, right = theta[:HIDDEN], theta[HIDDEN], theta[HIDDEN + 1], theta[HIDDEN + 2]
        m = eqx.tree_at(lambda m: (m.reaction.layers[-1].weight, m.reaction.layers[-1].bias),
                        map_model, (w[None, :], b[None]))
        weights = jnp.stack([left, -(left + right), right])
        return eqx.tree_at(lambda m: (m.stencil, m.diffusion), m,
                           (pde.LearnableStencil(3, init=weights), jnp.asarray(1.0)))

    def solve(theta, sensitivity="auto"):
        return solvers.solve(lambda t, u, m: m(t, u), u0, ts, build(theta), t0=0.0,
                             rtol=1e-6, atol=1e-8, sensitivity=sensitivity)

    return theta_map, solve, build, prior_sd


def reduced_posterior(map_model):
    """The NumPyro model of the reduced UPDE, in whitened coordinates around ``map_model``.
    Returns ``model(ts, u0, ys)``."""
    theta_map, solve, build, prior_sd = reduced_parts(map_model)
    ts, u0 = jnp.asarray(TS[1:]), jnp.asarray(rho0())
    jac = jax.jit(jax.jacfwd(lambda th: solve(th, "forward").ys))(theta_map)
    jac = jac.reshape(-1, theta_map.size)
    curvature = jac.T @ jac / SIGMA**2 + jnp.diag(1.0 / prior_sd**2)
    chol = jnp.linalg.cholesky(jnp.linalg.inv(curvature))

    def model(ts_, u0_, ys=None):
        del ts_, u0_   # closed over (ts, u0) above; arguments keep run_nuts' signature
        # z ~ N(0, I) as the site, its density removed again: the prior is on theta.
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([theta_map.size]).to_event(1))
        theta = theta_map + chol @ z
        numpyro.factor("prior", jnp.sum(dist.Normal(0.0, prior_sd).log_prob(theta))
                       - jnp.sum(dist.Normal(0.0, 1.0).log_prob(z)))
        numpyro.deterministic("D", build(theta).effective_diffusion)
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.1))
        u = inference.reject_failed_solve(solve(theta))
        numpyro.sample("ys", dist.Normal(u, sigma).to_event(2), obs=ys)

    return model, ts, u0


def reachable_d(map_model):
    """The D the reduced model reaches on noise-free data: the posterior mode at the
    truth's snapshots (sigma = 0.02, the priors above), by BFGS from the MAP. The fixed
    hidden layer spans the logistic term only with output weights in the hundreds, which
    the N(0, 3^2) prior excludes, so this misses D by the model's own bias (measured:
    0.010179, with NN(rho) - rho (1 - rho) up to 0.017 on [0, 1])."""
    theta_map, solve, build, prior_sd = reduced_parts(map_model)
    truth = jnp.asarray(truth_data()[1:])

    def objective(theta):
        misfit = solve(theta, "forward").ys - truth
        return 0.5 * jnp.sum(misfit**2) / SIGMA**2 + 0.5 * jnp.sum((theta / prior_sd)**2)

    value_grad = jax.jit(jax.value_and_grad(objective))
    res = scipy.optimize.minimize(lambda x: tuple(np.asarray(v) for v in value_grad(x)),
                                  np.asarray(theta_map), jac=True, method="BFGS",
                                  options={"gtol": 1e-6, "maxiter": 2000})
    return float(build(jnp.asarray(res.x)).effective_diffusion)


def posterior_of_d(model, ts, u0, ys, *, seed, num_warmup, num_samples, num_chains):
    idata = inference.run_nuts(model, ts, u0, jnp.asarray(ys), num_warmup=num_warmup,
                               num_samples=num_samples, num_chains=num_chains,
                               key=jax.random.key(seed), progress=False,
                               posterior_predictive=False)
    d = idata.posterior["D"].values.ravel()
    summary = az.summary(idata, var_names=["D", "sigma"])
    return idata, d, summary


@pytest.fixture(scope="module")
def reduced():
    """MAP on replicate 0 (~30 s idle, 85 s on a loaded machine) and the whitened model."""
    ys = noisy_data(0)
    map_model = reduced_map(ys)
    return reduced_posterior(map_model), ys, map_model


@pytest.mark.slow
def test_nuts_posterior_of_diffusion_covers_the_truth(reduced):
    """2 chains x (300 warmup + 300 draws) on replicate 0. Checked against the truth of the
    simulation: the 90 % interval of D contains 0.01 and is narrower than 20 % of it (a
    posterior that says something) and wider than 1 % (the pSGLD chain's 0.7 % is the
    failure this guards against); sigma's 90 % interval contains 0.02; no divergences;
    R-hat <= 1.05 for D and sigma and bulk ESS >= 200 for both. (600 draws from 2 chains:
    on an AMD EPYC, seeds 0-4 gave R-hat 1.00-1.01 for D and 1.03, 1.00, 1.00, 1.00, 1.01
    for sigma, whose tail ESS is 365-540: the folded R-hat's spread at this size is wider
    than a 1.02 bound allows, and chance, or a CPU's rounding, failed it. Bulk ESS >= 200
    for sigma too is the mixing check added with the wider bound.)
    Measured: D mean 0.01007, median 0.01006, 90 % [0.00968, 0.01047] (width 7.9 % of D),
    R-hat 1.00, ESS 1263, 0 divergences, mean tree depth 3.0."""
    (model, ts, u0), ys, _ = reduced
    idata, d, summary = posterior_of_d(model, ts, u0, ys, seed=0, num_warmup=300,
                                       num_samples=300, num_chains=2)
    lo, hi = np.quantile(d, [0.05, 0.95])
    assert lo < D_TRUE < hi, (lo, hi)
    assert 0.01 * D_TRUE < hi - lo < 0.2 * D_TRUE, hi - lo
    s_lo, s_hi = np.quantile(idata.posterior["sigma"].values, [0.05, 0.95])
    assert s_lo < SIGMA < s_hi, (s_lo, s_hi)
    assert idata.attrs["num_divergent"] == 0
    assert float(summary["r_hat"].max()) <= 1.05, summary
    assert float(summary["ess_bulk"].min()) >= 200, summary


@pytest.mark.slow
@pytest.mark.heavy
def test_nuts_posterior_of_diffusion_coverage(reduced):
    """Coverage over fresh noise replicates 1..6 (the network's hidden layer stays the one
    fitted to replicate 0: a fixed basis, every other quantity is inferred from each
    replicate), 4 chains x (500 + 500) each: every run without divergences and with R-hat
    <= 1.01; the 90 % interval contains the D the reduced model reaches on noise-free data
    (:func:`reachable_d`) in at least 5 of the 6 replicates (probability 0.89 for a
    calibrated 90 % interval) and is narrower than 20 % of D; that D is within 3 % of the
    truth. (The truth itself is not the target: this basis under its prior cannot
    represent the logistic term, and the D it reaches, 0.010179, sits 0.7 posterior sds
    above 0.01. Measured medians of D: 0.01029, 0.01036, 0.01047, 0.01003, 0.01044,
    0.01059; five intervals contain 0.010179, three contain 0.01.)"""
    model, ts, u0 = reduced[0]
    target = reachable_d(reduced[2])
    assert abs(target - D_TRUE) < 0.03 * D_TRUE, target
    covered = 0
    for seed in range(1, 7):
        idata, d, summary = posterior_of_d(model, ts, u0, noisy_data(seed), seed=seed,
                                           num_warmup=500, num_samples=500, num_chains=4)
        lo, hi = np.quantile(d, [0.05, 0.95])
        covered += int(lo < target < hi)
        assert hi - lo < 0.2 * D_TRUE, (seed, lo, hi)
        assert idata.attrs["num_divergent"] == 0, seed
        assert float(summary["r_hat"].max()) <= 1.01, (seed, summary)
    assert covered >= 5, (covered, target)
