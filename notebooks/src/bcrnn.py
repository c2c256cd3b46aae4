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
    refit_steps=10 if TINY else 1000, progress=False)
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
# ## B-CRNN: posterior by pSGLD
#
# Priors: $\nu \sim N(0, 1)$ for every coefficient, $\ln k \sim N(\ln 0.1, 2)$, and a relative
# noise level $\sigma$ with $\ln\sigma \sim N(\ln 0.05, 1)$ learned with the weights (the
# observation model is $y \sim N(c, \sigma (c + 0.01\,\text{scale}))$). pSGLD samples *every*
# weight (`crnn.unprune`: the pruned ones are free again, starting at zero), starting at the
# pruned fit, in coordinates whitened by the Fisher information there: a CRNN's posterior has
# long ridges (a larger coefficient with a smaller rate consumes a reactant at nearly the same
# rate) that RMSprop's diagonal preconditioner alone does not straighten.

# %%
psgld_kwargs = dict(num_steps=40 if TINY else 600, burn_in=10 if TINY else 150,
                    thin=1 if TINY else 3, num_chains=2, progress=False)
start = time.perf_counter()
posterior = crnn.run_psgld(crnn.unprune(model), train, **psgld_kwargs)
seconds = time.perf_counter() - start
n_draws = psgld_kwargs["num_steps"] * psgld_kwargs["num_chains"]
print(f"pSGLD: {seconds:.0f} s, {n_draws / seconds:.0f} steps per second (all chains)")
lo, hi = crnn.credible_interval(posterior, "rate_constant", 0.95)
for j, k_true in zip(match, K_TRUE, strict=True):
    inside = "yes" if lo[j] <= k_true <= hi[j] else "NO"
    print(f"reaction {j}: k 95 % interval [{lo[j]:.4f}, {hi[j]:.4f}]  true {k_true}  "
          f"contains truth: {inside}")
print("sigma 95 % interval:", np.round(crnn.credible_interval(posterior, "sigma"), 4))
print("posterior probability that each candidate reaction is present:",
      crnn.reaction_probability(posterior))
nu_mean = np.asarray(posterior.posterior["stoichiometry"].mean(("chain", "draw")))
nu_sd = np.asarray(posterior.posterior["stoichiometry"].std(("chain", "draw")))
print("posterior mean stoichiometry (rows: candidate reactions):\n", np.round(nu_mean, 2))
print("posterior sd:\n", np.round(nu_sd, 3))

# %%
def plot_rates(ax, idata, label, color, offset):
    draws = np.asarray(idata.posterior["rate_constant"].values).reshape(
        -1, idata.posterior.sizes["reaction"])[:, match]
    parts = ax.violinplot(draws / K_TRUE, positions=np.arange(4) + offset, widths=0.35,
                          showextrema=False)
    for body in parts["bodies"]:
        body.set_color(color)
    ax.plot([], [], color=color, lw=6, alpha=0.5, label=label)


fig, ax = plt.subplots(figsize=(7, 3))
plot_rates(ax, posterior, "pSGLD, 5 % noise", "C0", 0.0)
ax.axhline(1.0, color="k", lw=1, ls="--", label="truth")
ax.set_xticks(range(4), ["2A→B", "A→C", "C→D", "B+D→E"])
ax.set(ylabel="k / k_true", title="posterior of the rate constants")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## NUTS on the pruned network
#
# With the mechanism fixed, only its nine coefficients, four rate constants and $\sigma$ remain:
# few enough for NUTS (`crnn.run_nuts`, NumPyro through `bayes_ude.inference.run_nuts`), the
# gold standard against which pSGLD is compared.

# %%
start = time.perf_counter()
nuts = crnn.run_nuts(model, train, num_warmup=5 if TINY else 60,
                     num_samples=5 if TINY else 60, num_chains=1, progress=False)
print(f"NUTS: {time.perf_counter() - start:.0f} s")
k_nuts = np.asarray(nuts.posterior["rate_constant"].values).reshape(-1, len(active))
reaction_of = {int(r): i for i, r in enumerate(nuts.posterior["reaction"].values)}
for j, k_true in zip(match, K_TRUE, strict=True):
    q = np.quantile(k_nuts[:, reaction_of[j]], [0.025, 0.975])
    print(f"reaction {j}: NUTS 95 % [{q[0]:.4f}, {q[1]:.4f}]  pSGLD [{lo[j]:.4f}, {hi[j]:.4f}]"
          f"  true {k_true}")

# %% [markdown]
# ## Four times the noise: the posterior widens, it does not collapse
#
# The same experiments with 20 % noise. Because $\sigma$ is learned, the posterior widens with
# the noise instead of forcing the weights to explain it.

# %%
noisy, _ = experiments(N_TRAIN, 0.20, seed=0)
refit = crnn.fit(model, noisy, steps=10 if TINY else 300, learning_rate=5e-3,
                 progress=False).params
posterior_noisy = crnn.run_psgld(crnn.unprune(refit), noisy, **psgld_kwargs)
lo4, hi4 = crnn.credible_interval(posterior_noisy, "rate_constant", 0.95)
for j, k_true in zip(match, K_TRUE, strict=True):
    print(f"reaction {j}: width {hi[j] - lo[j]:.4f} -> {hi4[j] - lo4[j]:.4f} "
          f"({(hi4[j] - lo4[j]) / (hi[j] - lo[j]):.1f}x); 20 % noise interval "
          f"[{lo4[j]:.4f}, {hi4[j]:.4f}] contains {k_true}: {lo4[j] <= k_true <= hi4[j]}")
print("sigma 95 % interval:", np.round(crnn.credible_interval(posterior_noisy, "sigma"), 4))

fig, ax = plt.subplots(figsize=(7, 3))
plot_rates(ax, posterior, "5 % noise", "C0", -0.2)
plot_rates(ax, posterior_noisy, "20 % noise", "C3", 0.2)
ax.axhline(1.0, color="k", lw=1, ls="--", label="truth")
ax.set_xticks(range(4), ["2A→B", "A→C", "C→D", "B+D→E"])
ax.set(ylabel="k / k_true", title="posterior of the rate constants: 5 % vs 20 % noise")
ax.legend(fontsize=8)
plt.show()
