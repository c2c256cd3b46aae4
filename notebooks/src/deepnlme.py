# %% [markdown]
# # DeepNLME: a neural covariate model for clearance
#
# How do weight, age and renal function shape a patient's clearance? A conventional
# population PK analysis tries a handful of shapes (linear, power, ...) one covariate at a
# time. A **DeepNLME** model lets a small neural network of all covariates shift the
# individual parameter, its weights being fixed effects estimated with everything else
# (FOCEI with an L2 penalty here; NUTS or SG-MCMC with the matching Gaussian prior).
#
# We simulate 300 subjects whose clearance depends on the covariates in a way none of the
# conventional shapes captures — allometric weight, a *sigmoidal* renal effect, a mild age
# effect, and an albumin covariate with no effect at all — and ask whether the network
# recovers the truth, ignores albumin, explains the between-subject variability, and
# predicts 200 new subjects better than the linear and power covariate models.
#
# `BAYES_UDE_NOTEBOOK_TINY=1` runs a tiny version (as the test suite does): fewer subjects
# and iterations, and only the base and DeepNLME fits.

# %%
import os
import warnings

import arviz as az
import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bayes_ude import nlme
from bayes_ude.examples.covariates import (
    COVARIATES,
    compare_covariate_models,
    covariate_table,
    simulate_covariate_population,
)
from bayes_ude.nlme._deep import augment, covariate_model, partial_dependence

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"
N_TRAIN, N_HELDOUT = (30, 20) if TINY else (300, 200)
MAX_ITER = 10 if TINY else 500  # BFGS iterations of the network fits
# a network fit stopped at MAX_ITER says "not converged"; its OFV has settled by then
warnings.filterwarnings("ignore", message="NLME fit: did not converge")

train, truth = simulate_covariate_population(N_TRAIN, jax.random.key(0))
heldout, _ = simulate_covariate_population(N_HELDOUT, jax.random.key(1), first_id=100_001)
train

# %% [markdown]
# ## The truth
#
# One-compartment oral kinetics, a 200 mg dose, four samples per subject (in windows
# around 1, 4, 11 and 25 h), log-normal residual error (15 %), and
#
# $$\mathrm{CL}_i = 5\,\Big(\frac{\mathrm{WT}_i}{70}\Big)^{0.75}\,
#   R(\mathrm{EGFR}_i)\, e^{-0.006(\mathrm{AGE}_i - 50)}\, e^{\eta_{\mathrm{CL},i}},\qquad
#   R(e) = 0.25 + 0.75\,\frac{e^4}{e^4 + 50^4},$$
#
# with $\omega_{\mathrm{CL}} = 0.2^2$; $k_a$ and $V$ have random effects but no covariates.
# Albumin (`ALB`) has no effect.

# %%
table = covariate_table(train)
fig, axes = plt.subplots(1, 4, figsize=(14, 3), sharey=True)
for ax, c in zip(axes, COVARIATES, strict=True):
    grid = np.linspace(*np.percentile(table[c], [5, 95]), 50)
    ax.plot(grid, truth.partial_dependence(train, c, grid), "k")
    ax.set_xlabel(c)
axes[0].set_ylabel("typical CL (L/h), averaged over subjects")
fig.suptitle("True partial dependence of CL on each covariate (central 90 % of the data)")
table.describe().T.round(2)

# %% [markdown]
# ## Base model and conventional covariate models
#
# The base model is the built-in one-compartment oral model (log-normal ka, CL, V;
# exponential error). `covariate_model` adds a covariate model to it as a *shift of the
# random effect*: $\log \mathrm{CL}_i = t_{\mathrm{CL}} + g(w, x_i) + \eta_{\mathrm{CL},i}$,
# with $g$ linear in the standardised covariates (the exponential model), a sum of
# $b_k \log(x_k/\mathrm{median}_k)$ (the power model), or a network.

# %%
base_model = nlme.builtin_model("oral1cmt", train, error="exponential")
fits = {"base": nlme.fit(base_model, train, progress=False, covariance=False)}
if not TINY:
    for form in ("linear", "power"):
        fits[form] = nlme.fit(covariate_model(base_model, train, COVARIATES, form), train,
                              progress=False, covariance=False)
pd.DataFrame({name: fit.estimates[["tcl", "omega_eta_cl", "exp_sd"]]
              for name, fit in fits.items()})

# %% [markdown]
# ## DeepNLME
#
# A network of the four covariates (log scale, standardised with the training data's
# constants), one hidden layer of 4 tanh units, its last layer starting at zero (so the
# fit starts from the base model), L2 penalty 2 on the weights (a N(0, 0.5²) prior),
# fitted jointly with everything else by FOCEI.

# %%
deep_model = covariate_model(base_model, train, COVARIATES, log=True)
fits["deep"] = nlme.fit(deep_model, train, max_iter=MAX_ITER, progress=False,
                        covariance=False)
print(f"{len(deep_model.theta['w_network'])} network weights; FOCEI "
      f"{fits['deep'].iterations} iterations, {fits['deep'].seconds:.1f} s")
fits["deep"].estimates[["tka", "tcl", "tv", "omega_eta_ka", "omega_eta_cl", "omega_eta_v",
                        "exp_sd"]]

# %% [markdown]
# The two-step alternative, `augment`: train the network on the base fit's empirical Bayes
# estimates of $\eta_{\mathrm{CL}}$ (with the same penalty), fold it into the model and refit.

# %%
if not TINY:
    fits["augment"] = augment(fits["base"], COVARIATES, log=True, max_iter=MAX_ITER,
                              progress=False, covariance=False)
    print(f"augment: refit {fits['augment'].iterations} iterations, "
          f"OFV {fits['augment'].ofv:.2f} (joint fit: {fits['deep'].ofv:.2f})")

# %% [markdown]
# ## Partial dependence against the truth
#
# For each covariate: typical CL averaged over the training subjects with that covariate
# set to each value (the others as they are), over its central 90 %.

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharey=True)
for ax, c in zip(axes, COVARIATES, strict=True):
    grid = np.linspace(*np.percentile(table[c], [5, 95]), 50)
    ax.plot(grid, truth.partial_dependence(train, c, grid), "k", lw=3, label="truth")
    for name, fit in fits.items():
        ax.plot(grid, partial_dependence(fit, c, grid), label=name)
    ax.set_xlabel(c)
axes[0].set_ylabel("typical CL (L/h)")
axes[-1].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## Held-out subjects
#
# `pd_error_*`: largest relative error of the partial-dependence curve over the central 90 %;
# `effect_*`: (max − min)/mean of the curve (albumin's true effect is 0); `omega_cl`;
# `heldout_rmse_typical`: RMSE of log population predictions (no EBEs) of the held-out
# subjects against the true typical curves; `heldout_rmse_obs`: the same against their
# observations; `heldout_lpd`: their log predictive density (random effects integrated out;
# left out of the tiny run).

# %%
comparison = compare_covariate_models(fits, heldout, truth, lpd=not TINY)
comparison.T.round(4)

# %% [markdown]
# ## Bayesian DeepNLME
#
# The same model object under NUTS: the random effects of every subject sampled jointly
# with the population parameters (centred or not, per effect, as the data inform it), the
# L2 penalty becoming its N(0, 0.5²) prior on every weight, chains started near the FOCEI
# fit. Then ArviZ diagnostics of the population parameters. (The weights themselves are not identifiable one by one — a hidden
# unit can flip sign, for one — so their R-hat says little; the functions they give, such
# as the partial-dependence curves below, are what the posterior pins down.)

# %%
n_draws = 10 if TINY else 150
bayes = nlme.fit(deep_model, train, "nuts", init=fits["deep"], num_chains=2,
                 num_warmup=n_draws, num_samples=n_draws, key=jax.random.key(0),
                 progress=False)
print(f"NUTS: {bayes.seconds:.0f} s, {bayes.num_divergent} divergences")
main = ["tka", "tcl", "tv", "omega_eta_ka", "omega_eta_cl", "omega_eta_v", "exp_sd"]
az.summary(bayes.idata, var_names=main)

# %%
az.plot_trace(bayes.idata, var_names=["tcl", "omega_eta_cl", "exp_sd"])
plt.tight_layout()

# %% [markdown]
# The posterior-mean partial dependence (over posterior draws of the network) and the
# held-out predictive density averaged over the posterior:

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharey=True)
for ax, c in zip(axes, COVARIATES, strict=True):
    grid = np.linspace(*np.percentile(table[c], [5, 95]), 50)
    ax.plot(grid, truth.partial_dependence(train, c, grid), "k", lw=3, label="truth")
    ax.plot(grid, partial_dependence(fits["deep"], c, grid), label="FOCEI")
    ax.plot(grid, partial_dependence(bayes, c, grid), "--", label="NUTS (posterior mean)")
    ax.set_xlabel(c)
axes[0].set_ylabel("typical CL (L/h)")
axes[-1].legend(fontsize=8)
fig.tight_layout()
compare_covariate_models({"deep (FOCEI)": fits["deep"], "deep (NUTS)": bayes}, heldout,
                         truth, lpd=not TINY).T.round(4)
