# %% [markdown]
# # Lynx and hares: Bayesian Lotka–Volterra with NUTS, checked against Stan
#
# Hudson's Bay Company pelts 1900–1920 and the model of Carpenter's Stan case study:
# Lotka–Volterra dynamics, log-normal measurement error, weakly informative priors.
# `bayes_ude.inference.run_nuts` samples it (BlackJAX backend here) and returns ArviZ
# InferenceData; we compare the posterior with rstan's on the same model.
#
# `BAYES_UDE_NOTEBOOK_TINY=1` runs a tiny version (as the test suite does).

# %%
import os
from pathlib import Path

import arviz as az
import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bayes_ude import inference
from bayes_ude.inference import models

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"
ts, y_init, y = models.lynx_hare_data()

# %%
n = 30 if TINY else 1000
idata = inference.run_nuts(models.lynx_hare, ts, y_init, y, backend="blackjax",
                           num_warmup=n, num_samples=n, num_chains=4, progress=False,
                           dims={"y": ["year", "species"], "z": ["year", "species"]},
                           coords={"year": 1900 + ts, "species": ["hare", "lynx"]})
print(f"{idata.attrs['seconds_total']:.0f} s, {idata.attrs['num_divergent']} divergences")
az.summary(idata, var_names=["theta", "z_init", "sigma"])

# %% [markdown]
# ## Against Stan (rstan 2.21, 4 × (1000 + 1000), `benchmarks/stan/lynx_hare.R`)

# %%
stan = pd.read_csv(Path("..") / "tests" / "reference" / "lynx_hare_stan.csv")
stan["name"] = stan["name"].str.replace(r"\[(\d+)\]", lambda m: f"[{int(m.group(1)) - 1}]",
                                        regex=True)
ours = az.summary(idata, var_names=["theta", "z_init", "sigma"], round_to="none")
comparison = pd.DataFrame({"ours": ours["mean"], "ours MCSE": ours["mcse_mean"],
                           "Stan": stan.set_index("name")["mean"],
                           "Stan MCSE": stan.set_index("name")["se_mean"]})
comparison["difference / combined MCSE"] = (
    (comparison["ours"] - comparison["Stan"])
    / np.hypot(comparison["ours MCSE"], comparison["Stan MCSE"]))
comparison.round(4)

# %% [markdown]
# ## Diagnostics: traces and rank plots

# %%
az.plot_trace(idata, var_names=["theta"], kind="rank_bars")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Posterior predictive: the pelts and 90 % bands
#
# `posterior_predictive["y"]` holds simulated pelts: for each posterior draw, the solution
# with that draw's θ and initial state and new log-normal noise with its σ. About 90 % of
# the 40 pelt counts should fall inside the bands.

# %%
pred = idata.posterior_predictive["y"].values.reshape(-1, len(ts), 2)
lo, mid, hi = np.quantile(pred, [0.05, 0.5, 0.95], axis=0)
inside = np.mean((lo <= y) & (y <= hi))
print(f"{inside:.0%} of the pelts inside the 90 % bands")
fig, axes = plt.subplots(1, 2, figsize=(11, 3), sharex=True)
for k, (ax, name) in enumerate(zip(axes, ["hare", "lynx"], strict=True)):
    ax.fill_between(1900 + ts, lo[:, k], hi[:, k], alpha=0.3)
    ax.plot(1900 + ts, mid[:, k])
    ax.plot(1900 + ts, y[:, k], "k.")
    ax.set(title=f"{name} pelts (thousands)", xlabel="year")
plt.show()
