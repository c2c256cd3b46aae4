# %% [markdown]
# # Bayesian neural ODEs and Bayesian UDEs: posterior bands and posterior equation discovery
#
# Three posteriors over networks inside differential equations, all written as plain
# NumPyro models (or log densities) with `bayes_ude.solvers.solve` inside:
#
# 1. **A Bayesian neural ODE** (the spiral of the DiffEqFlux/SciML tutorials) sampled with
#    NUTS: posterior predictive bands that cover the truth where there are data and widen
#    where there are none.
# 2. **A Bayesian UDE** (the missing-physics Lotka–Volterra model) sampled with pSGLD from its
#    MAP, then SINDy on the network's output at every retained draw in one vmapped call: a
#    posterior over *equations*.
# 3. The same UDE with NUTS at small size, and ArviZ diagnostics (trace and rank plots,
#    R-hat and ESS).
#
# `BAYES_UDE_NOTEBOOK_TINY=1` runs a tiny version (as the test suite does).

# %%
import os

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import Predictive
from scipy.integrate import solve_ivp

from bayes_ude import discovery, inference, nn, solvers, ude

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"


def site_values(name, network):
    """The network's weights under the site names that `inference.network_prior` gives
    them (e.g. `nn.layers.0.weight`): initial values for NUTS."""
    trace = numpyro.handlers.trace(numpyro.handlers.seed(
        lambda: inference.network_prior(name, network), 0)).get_trace()
    arrays = jax.tree.leaves(eqx.filter(network, eqx.is_inexact_array))
    return dict(zip(trace, arrays, strict=True))


# %% [markdown]
# ## 1. The spiral: a Bayesian neural ODE
#
# Truth: $u' = ((u^3)^\top A)^\top$ with $A = \begin{pmatrix}-0.1 & 2\\ -2 & -0.1\end{pmatrix}$,
# $u_0 = (2, 0)$; 40 observations on $t \in [0, 1]$ with noise sd 0.1. The model: a 2-8-2 tanh
# network on $u^3$, every weight $\sim N(0, 1)$, known noise level. We fit the MAP first (Adam)
# and start NUTS there (BlackJAX backend, Stan's window adaptation).

# %%
A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
U0 = np.array([2.0, 0.0])
SIGMA = 0.1
ts = np.linspace(0.0, 1.0, 40)
ts_long = np.linspace(0.0, 1.5, 61)


def spiral(t, u):
    return (u**3) @ A


truth_long = solve_ivp(spiral, (0, 1.5), U0, t_eval=ts_long, rtol=1e-12, atol=1e-12).y.T
truth = solve_ivp(spiral, (0, 1.0), U0, t_eval=ts, rtol=1e-12, atol=1e-12).y.T
ys = truth + SIGMA * np.random.default_rng(0).standard_normal(truth.shape)

template = nn.MLP(2, 2, (8,), "tanh", key=jax.random.key(0))


def node_field(t, u, net):
    return net(u**3)


def neural_ode(ts, ys=None):
    net = inference.network_prior("nn", template, scale=1.0)
    sol = solvers.solve(node_field, jnp.asarray(U0), ts, net)
    u = numpyro.deterministic("u", inference.reject_failed_solve(sol))
    numpyro.sample("ys", dist.Normal(u, SIGMA).to_event(2), obs=ys)


# MAP: minus the log posterior, Adam.
params, static = eqx.partition(template, eqx.is_inexact_array)


def neg_log_posterior(p):
    sol = solvers.solve(node_field, jnp.asarray(U0), jnp.asarray(ts), eqx.combine(p, static))
    misfit = 0.5 * jnp.sum(((solvers.sanitize(sol) - ys) / SIGMA) ** 2)
    prior = 0.5 * sum(jnp.sum(w**2) for w in jax.tree.leaves(p))
    return misfit + prior - solvers.log_density_penalty(sol)


optimizer = optax.adam(2e-2)


@jax.jit
def adam(p):
    def step(carry, _):
        p, state = carry
        loss, grad = jax.value_and_grad(neg_log_posterior)(p)
        updates, state = optimizer.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (p, _), losses = jax.lax.scan(step, (p, optimizer.init(p)), None,
                                  length=50 if TINY else 1500)
    return p, losses


params, losses = adam(params)
map_net = eqx.combine(params, static)
print(f"MAP: -log posterior {float(losses[-1]):.1f}")

# %%
# Tree depth at most 5 (31 leapfrog steps per draw): network posteriors are badly
# conditioned and NUTS would otherwise spend up to 1023 gradients on every draw.
n = 10 if TINY else 200
idata_node = inference.run_nuts(
    neural_ode, jnp.asarray(ts), jnp.asarray(ys), backend="blackjax", num_warmup=n,
    num_samples=n, num_chains=1 if TINY else 2, max_tree_depth=3 if TINY else 5,
    init=site_values("nn", map_net), progress=False, posterior_predictive=False)
print(f"{idata_node.attrs['seconds_total']:.0f} s, "
      f"{idata_node.attrs['num_divergent']} divergences, "
      f"{idata_node.attrs['num_failed_solves']} failed solves")

# %% [markdown]
# Posterior predictive on $t \in [0, 1.5]$: every draw's network is integrated past the data,
# and the posterior predictive adds each draw's observation noise (sd 0.1). Its 95 % band
# covers the truth on the training span and widens beyond it: the data say nothing about the
# vector field outside the region the spiral has visited. (The band of the latent trajectory
# alone, shaded darker, is much narrower on [0, 1]: from short chains, with a network that
# need not represent $u^3 A$ exactly, it covers less of the truth;
# `tests/inference/test_bayesian_neural_ode.py` checks the predictive band.)

# %%
weights = {k: v.values.reshape(-1, *v.shape[2:]) for k, v in idata_node.posterior.items()
           if k.startswith("nn.")}
latent = np.asarray(Predictive(neural_ode, posterior_samples=weights, return_sites=["u"])(
    jax.random.key(1), jnp.asarray(ts_long))["u"])
predictive = latent + SIGMA * np.random.default_rng(1).standard_normal(latent.shape)
lo, mid, hi = np.quantile(predictive, [0.025, 0.5, 0.975], axis=0)
latent_lo, latent_hi = np.quantile(latent, [0.025, 0.975], axis=0)
train = ts_long <= 1.0
width = (hi - lo).mean(axis=1)
for name, (a, b) in (("predictive", (lo, hi)), ("latent", (latent_lo, latent_hi))):
    inside = (a <= truth_long) & (truth_long <= b)
    print(f"truth inside the 95 % {name} band on [0, 1]: {100 * inside[train].mean():.0f} %")
print(f"mean width of the predictive band on [0, 1]: {width[train].mean():.3f}, "
      f"on (1, 1.5]: {width[~train].mean():.3f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for k, ax in enumerate(axes):
    ax.fill_between(ts_long, lo[:, k], hi[:, k], alpha=0.3, label="95 % predictive band")
    ax.fill_between(ts_long, latent_lo[:, k], latent_hi[:, k], alpha=0.5, color="C0",
                    label="95 % band of the trajectory")
    ax.plot(ts_long, mid[:, k], label="posterior median")
    ax.plot(ts_long, truth_long[:, k], "k--", lw=1, label="truth")
    ax.plot(ts, ys[:, k], "k.", ms=3)
    ax.axvline(1.0, ls=":", color="k")
    ax.set(xlabel="t", title=f"$u_{k + 1}$")
axes[0].legend(fontsize=8)
plt.show()

# %% [markdown]
# ### Diagnostics: R-hat, ESS, rank plots
#
# Network weights are not identifiable (hidden units can be permuted and signs flipped), so
# per-weight R-hat is a harsh diagnostic for a neural network posterior; the predictive above
# is what matters. The first layer's weights:

# %%
az.summary(idata_node, var_names=["nn.layers.0.weight"])

# %%
az.plot_trace(idata_node, var_names=["nn.layers.1.bias"], kind="rank_bars")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The Lotka–Volterra Bayesian UDE with pSGLD
#
# Predator–prey dynamics with $(\alpha, \beta, \gamma, \delta) = (1.3, 0.9, 0.8, 1.8)$, of
# which we know $\alpha u_1$ and $-\delta u_2$; a 2-5-5-5-2 rbf network stands in for the
# interaction terms (see `missing_physics.ipynb`). We train it to the MAP (collocation, then
# single shooting), then sample the weights with pSGLD: a Normal(0, 1) prior on every weight
# and the known noise level in the likelihood.

# %%
P = (1.3, 0.9, 0.8, 1.8)


def lotka_volterra(t, u):
    a, b, c, d = P
    return [a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]]


def physics(t, u, theta):
    return jnp.stack([P[0] * u[0], -P[3] * u[1]])


lv_u0 = np.array([0.44249296, 4.6280594])
lv_ts = np.arange(0.0, 5.0001, 0.25)
lv_truth = solve_ivp(lotka_volterra, (0, 5), lv_u0, t_eval=lv_ts, rtol=1e-11, atol=1e-12).y.T
lv_ys = lv_truth + 0.05 * lv_truth.mean(axis=0) * np.random.default_rng(0).normal(
    size=lv_truth.shape)

steps = (100, 0, 20, 0) if TINY else (2000, 200, 500, 1000)
model0 = ude.UDE(physics, nn.MLP(2, 2, (5, 5, 5), "rbf", key=jax.random.key(0)))
init = ude.fit(ude.Collocation(lv_ts, lv_ys), model0, steps=steps[0], learning_rate=1e-2,
               lbfgs_steps=steps[1], progress=False)
map_ude = ude.fit(ude.SingleShooting(lv_ts, lv_ys, rtol=1e-8, atol=1e-10), init.params,
                  steps=steps[2], learning_rate=1e-3, lbfgs_steps=steps[3], l2=1e-5,
                  progress=False).params

# %%
sigma = jnp.asarray(0.05 * lv_truth.mean(axis=0))  # the known noise level
ts_j, ys_j = jnp.asarray(lv_ts), jnp.asarray(lv_ys)


def logprior(m):
    weights = jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))
    return -0.5 * sum(jnp.sum(w**2) for w in weights)  # N(0, 1) on every weight


def loglik(m, item):
    sol = solvers.solve(lambda t, u, m: m(t, u), ys_j[0], ts_j, m, rtol=1e-7, atol=1e-9)
    value = -0.5 * jnp.sum(((solvers.sanitize(sol) - ys_j) / sigma) ** 2)
    return value + solvers.log_density_penalty(sol)


grad = inference.grad_estimator(logprior, loglik, 1)  # one trajectory: full batch
num_steps, burn_in, thin = (60, 20, 4) if TINY else (1500, 500, 10)
idata_sg = inference.run_sgmcmc(inference.psgld(grad), map_ude, jnp.zeros(1),
                                num_steps=num_steps, batch_size=1, step_size=2e-4,
                                burn_in=burn_in, thin=thin, num_chains=2, progress=False)
draws = inference.posterior_pytree(idata_sg, map_ude)
n_draws = int(np.prod(jax.tree.leaves(draws)[0].shape[:2]))  # chains x draws
flat = jax.tree.map(lambda x: x.reshape(n_draws, *x.shape[2:]), draws)
print(f"pSGLD: {idata_sg.attrs['seconds']:.0f} s, {n_draws} draws kept, "
      f"{idata_sg.attrs['num_failed_steps']} steps rejected (failed solves)")

# %% [markdown]
# Posterior predictive of the UDE: each retained draw integrated to $t = 5$.

# %%
dense_ts = np.linspace(0.0, 5.0, 51)


def trajectory(m):
    return solvers.solve(lambda t, u, m: m(t, u), ys_j[0], jnp.asarray(dense_ts), m,
                         rtol=1e-7, atol=1e-9).ys


paths = np.asarray(jax.vmap(trajectory)(flat))
plo, phi = np.nanquantile(paths, [0.025, 0.975], axis=0)
fig, ax = plt.subplots(figsize=(7, 3))
for k in range(2):
    ax.fill_between(dense_ts, plo[:, k], phi[:, k], alpha=0.3)
    ax.plot(lv_ts, lv_ys[:, k], "k.", ms=3)
ax.set(xlabel="t", title="UDE posterior (pSGLD): 95 % band of the trajectory, and the data")
plt.show()

# %% [markdown]
# ## Posterior equation discovery: SINDy on every draw
#
# The learned term of every retained draw, along the MAP trajectory, goes through sequentially
# thresholded least squares on a degree-2 polynomial library for a sweep of thresholds λ, all
# draws and thresholds in one vmapped call. The table: for each λ, the dominant active set,
# the percentage of draws selecting exactly it, the mean error and the mean AICc.

# %%
states = np.asarray(solvers.solve(lambda t, u, m: m(t, u), ys_j[0], jnp.asarray(dense_ts),
                                  map_ude, rtol=1e-8, atol=1e-10).ys)
learned = jax.vmap(lambda m: jax.vmap(lambda u: m.network_term(0.0, u))(
    jnp.asarray(states)))(flat)
result = discovery.sweep_batched(states, learned, discovery.PolynomialLibrary(2),
                                 thresholds=(0.01, 0.03, 0.1, 0.3, 1.0))
table = result.summary()
table.rename(columns={"lambda": "λ", "n_active": "number of active terms",
                      "dominant_terms": "dominant terms", "aicc": "mean AICc",
                      "pct_draws": "% of draws"})[
    ["λ", "number of active terms", "dominant terms", "error", "mean AICc", "% of draws"]]

# %% [markdown]
# As for the MAP network (`missing_physics.ipynb`), AICc prefers the smallest λ: the residual of
# a network is not noise, and every extra term lowers it a little. The interaction term
# $u_1 u_2$ is active in every draw there; at λ = 0.3 the dominant set is exactly the two
# interaction terms, and the table's percentage says in how many draws. At the AICc-best
# threshold, the fraction of draws in which each term is active:

# %%
best = int(np.argmin(np.asarray(table["aicc"])))
print(f"AICc-best λ = {table['lambda'][best]}")
result.inclusion(best).round(2)

# %% [markdown]
# ## 3. NUTS on the UDE, at small size
#
# NUTS on all 87 weights (reverse-mode gradients through the solver), started at the MAP,
# tree depth at most 4. A short run: the point is that the same NumPyro model machinery
# covers the UDE; the R-hat/ESS table shows how far such a short run is from converged.

# %%
def bayesian_ude(ts, ys=None):
    net = inference.network_prior("nn", map_ude.network, scale=1.0)
    m = eqx.tree_at(lambda m: m.network, map_ude, net)
    sol = solvers.solve(lambda t, u, m: m(t, u), ys_j[0], ts, m, rtol=1e-7, atol=1e-9)
    u = inference.reject_failed_solve(sol)
    numpyro.sample("ys", dist.Normal(u, sigma).to_event(2), obs=ys)


n = 5 if TINY else 60
idata_ude = inference.run_nuts(bayesian_ude, ts_j, ys_j, backend="blackjax", num_warmup=n,
                               num_samples=n, num_chains=1 if TINY else 2, progress=False,
                               max_tree_depth=2 if TINY else 4,
                               init=site_values("nn", map_ude.network),
                               dims={"ys": ["time", "state"]})
print(f"{idata_ude.attrs['seconds_total']:.0f} s, {idata_ude.attrs['num_divergent']} "
      f"divergences, mean tree depth {float(idata_ude.sample_stats.tree_depth.mean()):.1f}")
az.summary(idata_ude, var_names=["nn.layers.3.weight"])

# %%
az.plot_trace(idata_ude, var_names=["nn.layers.3.bias"], kind="rank_bars")
plt.tight_layout()
plt.show()
