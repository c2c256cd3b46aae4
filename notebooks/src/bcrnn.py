# %% [markdown]
# # B-CRNN: a network whose weights are a reaction mechanism, with posterior rates
#
# A chemical reaction neural network (CRNN; Ji & Deng 2021) has one hidden unit per candidate
# reaction. Its input weights are the reaction orders, its output weights the stoichiometric
# coefficients and its bias the log rate constant:
# $r_j = \exp(\sum_i \nu^{in}_{ji} \ln c_i + \ln k_j)$, $\dot c = \nu^T r$. Trained on
# concentration time courses, it *is* the mechanism; its Bayesian version (B-CRNN) gives
# posteriors over rate constants and stoichiometry.
#
# The classic test: five species A–E and four reactions
# $2A \to B$ ($k=0.1$), $A \to C$ (0.2), $C \to D$ (0.13), $B + D \to E$ (0.3);
# 30 experiments (20 to train, 10 to validate) with A and B starting uniform on
# [0.2, 1.2] and C–E at 0; 100 times on [0, 40]; 5 % multiplicative noise.
#
# Set `BAYES_UDE_NOTEBOOK_TINY=1` to run everything at tiny sizes (as the test suite does).

# %%
import os
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

from bayes_ude import crnn

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"

K_TRUE = np.array([0.1, 0.2, 0.13, 0.3])
NU_TRUE = np.array([[-2, 1, 0, 0, 0], [-1, 0, 1, 0, 0], [0, 0, -1, 1, 0], [0, -1, 0, -1, 1]],
                   float)
N_TRAIN, N_VAL, N_TIMES = (4, 2, 20) if TINY else (20, 10, 100)


def mass_action(t, c):
    a, b, c_, d, _ = c
    return NU_TRUE.T @ (K_TRUE * np.array([a**2, a, c_, b * d]))


def experiments(n, noise, seed):
    rng = np.random.default_rng(seed)
    ts = np.linspace(0.0, 40.0, N_TIMES)
    u0 = np.zeros((n, 5))
    u0[:, :2] = rng.uniform(0.2, 1.2, (n, 2))
    clean = np.stack([solve_ivp(mass_action, (0, 40), u, t_eval=ts, method="LSODA",
                                rtol=1e-10, atol=1e-12).y.T for u in u0])
    noisy = np.maximum(clean * (1 + noise * rng.normal(size=clean.shape)), 0.0)
    return crnn.Experiments(ts, noisy, u0), clean


train, _ = experiments(N_TRAIN, 0.05, seed=0)
valid, valid_clean = experiments(N_VAL, 0.05, seed=1)

fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
for ax, b in zip(axes, range(3), strict=True):
    ax.plot(train.ts, train.ys[b], ".", ms=3)
    ax.set(title=f"experiment {b}", xlabel="t")
axes[0].legend(list("ABCDE"), ncol=5, fontsize=7)
axes[0].set_ylabel("concentration")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Training to a mechanism
#
# `crnn.discover` does the whole deterministic pipeline:
#
# 1. **collocation restarts** (`crnn.fit_collocation`): each time course is smoothed by a
#    spline, and the CRNN's vector field is integrated *along the smoothed data* with the
#    trapezoidal rule and compared with the measurements — no ODE solve, so thousands of AdamW
#    steps from several random starts (vectorised) take seconds;
# 2. **trajectory fit** (`crnn.fit`): AdamW on the mean absolute error of the solved
#    concentrations (each species divided by its largest value, all experiments in a batch,
#    `vmap`-ed solves), with a small sparsity penalty, for the best few restarts; the lowest
#    trajectory loss wins;
# 3. **pruning** (`crnn.prune`): coefficients below 0.1 are set to exactly zero (a mask), then
#    the pruned network is refitted without the penalty.

# %%
start = time.perf_counter()
found = crnn.discover(
    train, 4, key=jax.random.key(0),
    restarts=2 if TINY else 8, candidates=1 if TINY else 3,
    collocation_steps=200 if TINY else 3000, steps=10 if TINY else 300,
    refit_steps=10 if TINY else 1000, thresholds=(0.1,) if TINY else (0.1, 0.4),
    progress=False)
print(f"training to the pruned mechanism: {time.perf_counter() - start:.0f} s")
print("before pruning:\n" + crnn.format_mechanism(found.unpruned))
print("\nlearned mechanism:\n" + crnn.format_mechanism(found.model))
print("\ntrue mechanism:\n" + crnn.format_mechanism(crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)))

# %% [markdown]
# The reactions are matched to the true ones by their stoichiometry; the rate constants are
# compared, and the model is checked on the 10 validation experiments it never saw.

# %%
model = found.model
nu = np.asarray(model.nu)
active = np.flatnonzero(crnn.active_reactions(model))
match = [int(active[np.argmin(np.abs(nu[active] - row).sum(axis=1))]) for row in NU_TRUE]
k_learned = np.asarray(model.rate_constants())[match]
for row, k_true, k_hat in zip(NU_TRUE, K_TRUE, k_learned, strict=True):
    name = crnn.format_mechanism(crnn.CRNN.from_mechanism(row[None], [k_true])).split("  ")[0]
    print(f"{name:<12} true k = {k_true:.3f}   learned k = {k_hat:.4f}   "
          f"error {100 * (k_hat / k_true - 1):+.1f} %")
print("\nvalidation error (scaled by each species' maximum):",
      {k: round(v, 4) for k, v in crnn.validation_error(model, valid, train.scale).items()})
noise_floor = np.mean(np.abs(np.asarray(valid.ys) - valid_clean) / np.asarray(train.scale))
print(f"mean absolute noise of the validation data itself: {noise_floor:.4f}")

# %%
pred = crnn.simulate(model, valid.ts, valid.u0).ys
fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
for ax, b in zip(axes, range(min(3, N_VAL)), strict=False):
    ax.plot(valid.ts, valid.ys[b], ".", ms=3, alpha=0.5)
    ax.set_prop_cycle(None)
    ax.plot(valid.ts, pred[b], lw=1.5)
    ax.set(title=f"validation experiment {b}", xlabel="t")
axes[0].set_ylabel("concentration")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## B-CRNN: the posterior of the rates
#
# Read as a mechanism, the pruned network's coefficients are integers
# (`crnn.round_stoichiometry`: $2.03A \to 1.02B$ is $2A \to B$). Given the mechanism, the
# rate constants and the noise level remain: four log rates and $\ln\sigma$, few enough for
# NUTS (`crnn.run_nuts(..., sample_stoichiometry=False)`), the reference posterior.
#
# The observation model is the noise that made the data, relative error:
# $y \sim N(c, \sigma c)$, with $\ln\sigma \sim N(\ln 0.05, 1)$ sampled (not assumed), and
# $\ln k \sim N(\ln 0.1, 2)$. Observations that are exactly zero (C–E at $t = 0$) say nothing
# about $\sigma$ and are left out. (An absolute floor of 1 % of each species' scale in the sd,
# as an earlier version had, is a different noise model: it gave $\sigma = 0.043$ for these
# 5 % data, a noise level 14 % too small.)

# %%
mechanism = crnn.round_stoichiometry(model)
print(crnn.format_mechanism(mechanism))
nuts_kwargs = dict(num_warmup=10 if TINY else 300, num_samples=10 if TINY else 500,
                   num_chains=1 if TINY else 2, sample_stoichiometry=False, progress=False)
start = time.perf_counter()
nuts = crnn.run_nuts(mechanism, train, **nuts_kwargs)
print(f"NUTS: {time.perf_counter() - start:.0f} s")
NAMES = ["2A→B", "A→C", "C→D", "B+D→E"]


def rate_draws(idata):
    """Draws of the true reactions' rate constants (matched by stoichiometry above); NaN
    for a reaction the mechanism lacks."""
    k = np.asarray(idata.posterior["rate_constant"].values)
    k = k.reshape(-1, k.shape[-1])
    reactions = [int(r) for r in idata.posterior["reaction"].values]
    return np.stack([k[:, reactions.index(j)] if j in reactions else np.full(len(k), np.nan)
                     for j in match], axis=1)


def intervals(idata, label):
    lo, hi = np.quantile(rate_draws(idata), [0.025, 0.975], axis=0)
    for name, k_true, a, b in zip(NAMES, K_TRUE, lo, hi, strict=True):
        print(f"{label} {name:<7} k 95 % [{a:.4f}, {b:.4f}]  true {k_true}  "
              f"contains truth: {'yes' if a <= k_true <= b else 'NO'}")
    print(f"{label} sigma 95 %:", np.round(crnn.credible_interval(idata, "sigma"), 4))
    return lo, hi


lo, hi = intervals(nuts, "NUTS ")
if not TINY:
    import arviz as az

    print(az.summary(nuts, var_names=["rate_constant", "sigma"])[["r_hat", "ess_bulk"]])

# %% [markdown]
# ## pSGLD, the scalable sampler, against NUTS
#
# pSGLD (`crnn.run_psgld`) scales to many experiments (minibatches) and to the full candidate
# network (`crnn.unprune`). It runs in coordinates whitened by the Fisher information at the
# fit (a CRNN's posterior has long ridges: a larger coefficient with a smaller rate consumes a
# reactant at nearly the same rate), its chains starting as draws from the Laplace
# approximation. Here it samples the mechanism's coefficients too, so its rate intervals are
# NUTS's widened by the coefficients' uncertainty.

# %%
start = time.perf_counter()
posterior = crnn.run_psgld(mechanism, train, num_steps=30 if TINY else 1500,
                           burn_in=10 if TINY else 300, thin=1 if TINY else 3,
                           num_chains=2 if TINY else 4, progress=False)
print(f"pSGLD: {time.perf_counter() - start:.0f} s")
intervals(posterior, "pSGLD")


# %%
def plot_rates(ax, idata, label, color, offset):
    ratio = rate_draws(idata) / K_TRUE
    kept = np.flatnonzero(np.all(np.isfinite(ratio), axis=0))
    parts = ax.violinplot(ratio[:, kept], positions=kept + offset, widths=0.35,
                          showextrema=False)
    for body in parts["bodies"]:
        body.set_color(color)
    ax.plot([], [], color=color, lw=6, alpha=0.5, label=label)


fig, ax = plt.subplots(figsize=(7, 3))
plot_rates(ax, nuts, "NUTS (rates)", "C0", -0.2)
plot_rates(ax, posterior, "pSGLD (rates and coefficients)", "C1", 0.2)
ax.axhline(1.0, color="k", lw=1, ls="--", label="truth")
ax.set_xticks(range(4), NAMES)
ax.set(ylabel="k / k_true", title="posterior of the rate constants, 5 % noise")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Four times the noise: the posterior widens, it does not collapse
#
# The same experiments with 20 % noise (the same noise draws, scaled by four). Because
# $\sigma$ is learned, the posterior widens with the noise -- about four times, as the
# posterior sd scales with $\sigma$ -- instead of forcing the weights to explain it.

# %%
noisy, _ = experiments(N_TRAIN, 0.20, seed=0)
nuts_noisy = crnn.run_nuts(mechanism, noisy, **nuts_kwargs)
lo4, hi4 = intervals(nuts_noisy, "20 %")
print("width ratio 20 % / 5 % noise:", np.round((hi4 - lo4) / (hi - lo), 2))

fig, ax = plt.subplots(figsize=(7, 3))
plot_rates(ax, nuts, "5 % noise", "C0", -0.2)
plot_rates(ax, nuts_noisy, "20 % noise", "C3", 0.2)
ax.axhline(1.0, color="k", lw=1, ls="--", label="truth")
ax.set_xticks(range(4), NAMES)
ax.set(ylabel="k / k_true", title="posterior of the rate constants (NUTS): 5 % vs 20 % noise")
ax.legend(fontsize=8)
plt.show()
