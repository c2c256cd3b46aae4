# %% [markdown]
# # CTESN surrogates: a stiff solve replaced inside fitting and sampling
#
# Robertson's chemical kinetics with the three rate constants each free over a factor of
# 10. A continuous-time echo state network (CTESN) is trained once -- one reference solve
# drives a random reservoir, a vmapped Rodas5P ensemble gives trajectories at Sobol points
# of the box, and the projections from reservoir to species are interpolated over the box
# -- and then evaluates any rate vector without an ODE solve. See docs/surrogates.md.
#
# `BAYES_UDE_NOTEBOOK_TINY=1` runs a tiny version (as the test suite does).

# %%
import os
import time

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayes_ude import inference, solvers, surrogates

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"
K0 = np.array([0.04, 3e7, 1e4])
Y0 = jnp.array([1.0, 0.0, 0.0])
TS = np.geomspace(1e-5, 1e5, 100)
SPECIES = ["y1", "y2", "y3"]


def robertson(t, y, k):
    k1, k2, k3 = k
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2],
                      k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
                      k2 * y[1] ** 2])


# %% [markdown]
# ## Training

# %%
sur = surrogates.fit_ctesn(robertson, Y0, TS, K0 / np.sqrt(10), K0 * np.sqrt(10), t0=0.0,
                           n_train=64 if TINY else 512)
print(sur.training)

# %% [markdown]
# ## Accuracy on held-out points
#
# Uniform random rate vectors in the box, independent of the training design; per species
# the largest error over the grid relative to the species' largest value.

# %%
err = surrogates.held_out_error(sur, robertson, Y0, t0=0.0, n=40 if TINY else 200)
print(err.table(SPECIES))

worst = err.params[np.argmax(err.errors[:, 1])]
reference = solvers.solve(robertson, Y0, TS, jnp.asarray(worst), t0=0.0,
                          solver=solvers.Rodas5P(), rtol=1e-8, atol=1e-12,
                          max_steps=100_000).ys
approx = sur(worst)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for i, ax in enumerate(axes):
    ax.semilogx(TS, reference[:, i], "k-", lw=2, label="Rodas5P")
    ax.semilogx(TS, approx[:, i], "C1--", label="CTESN")
    ax.set(title=f"{SPECIES[i]} at the worst held-out point for y2", xlabel="t")
axes[0].legend()
fig.tight_layout()

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.hist(np.log10(err.errors), bins=20, label=SPECIES, stacked=False, alpha=0.7)
ax.set(xlabel="log10 relative error (largest over the grid)", ylabel="held-out points")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## Speed: 1,000 rate vectors (100 in the tiny run)

# %%
points = sur.box.from_unit(surrogates.design(100 if TINY else 1000, 3, "uniform",
                                             jax.random.key(7)))
ours = jax.jit(lambda p: sur(p))
full = jax.jit(lambda p: solvers.solve_ensemble(
    robertson, Y0, TS, p, batch_u0=False, t0=0.0, solver=solvers.Rodas5P(), rtol=1e-6,
    atol=1e-12, max_steps=100_000).ys)
for fn in (ours, full):
    jax.block_until_ready(fn(points))  # compile
times = []
for fn in (ours, full):
    start = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(fn(points))
    times.append((time.perf_counter() - start) / 5)
print(f"surrogate {times[0] * 1e3:.2f} ms, Rodas5P {times[1] * 1e3:.1f} ms: "
      f"{times[1] / times[0]:.0f}x")

# %% [markdown]
# ## Inside NUTS
#
# Noisy observations (1 % of each species' range) at 15 times, rates log-uniform on the
# box. The surrogate, evaluated at the observation times (`sur.at`), is the likelihood's
# trajectory; the full run uses the Rodas5P solve instead.

# %%
t_obs = np.geomspace(1e-4, 1e5, 15)
k_true = K0 * np.array([1.5, 0.7, 1.3])
truth = solvers.solve(robertson, Y0, t_obs, jnp.asarray(k_true), t0=0.0,
                      solver=solvers.Rodas5P(), rtol=1e-10, atol=1e-14, max_steps=100_000).ys
sigma = 0.01 * sur.scale
y = truth + sigma * jax.random.normal(jax.random.key(0), truth.shape)


def model(trajectory, y=None):
    u = numpyro.sample("u", dist.Uniform(0, 1).expand([3]).to_event(1))
    k = numpyro.deterministic("k", sur.box.from_unit(u))
    numpyro.sample("y", dist.Normal(trajectory(k), sigma).to_event(2), obs=y)


def full_solve(k):
    return solvers.solve(robertson, Y0, t_obs, k, t0=0.0, solver=solvers.Rodas5P(),
                         rtol=1e-8, atol=1e-12, max_steps=100_000).ys


n = 100 if TINY else 1000
runs = {"surrogate": sur.at(t_obs)} if TINY else {"surrogate": sur.at(t_obs),
                                                  "full": full_solve}
posteriors = {}
for name, trajectory in runs.items():
    start = time.perf_counter()
    posteriors[name] = inference.run_nuts(model, trajectory, y=y, num_warmup=n, num_samples=n,
                                          num_chains=1 if TINY else 2, init="uniform",
                                          posterior_predictive=False)
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    print(az.summary(posteriors[name], var_names=["k"]))

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for i, ax in enumerate(axes):
    for name, idata in posteriors.items():
        ax.hist(np.log10(np.asarray(idata.posterior["k"][..., i]).ravel()), bins=30,
                density=True, histtype="step", lw=2, label=name)
    ax.axvline(np.log10(k_true[i]), color="k", ls=":", label="truth")
    ax.set(xlabel=f"log10 k{i + 1}")
axes[0].legend()
fig.tight_layout()
