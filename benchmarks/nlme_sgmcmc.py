"""SG-MCMC over subjects for a large population: time and memory per epoch, and agreement
with NUTS on a subset-sized problem.

A one-compartment oral population (log-normal ka, CL, V; combined error) is simulated with
numpy from known truth. Part 1: 2,000 subjects; the maximum-likelihood (FOCEI) fit that
gives SGLD its preconditioner, then SGLD with minibatches of 100 subjects (the subject-level
likelihood, random effects integrated out, scaled by N / batch): seconds and peak memory
per epoch (one pass over the subjects), and the posterior against the truth. Part 2: on
the first 100 subjects, SGLD against NUTS (all random effects sampled): medians and 90 %
interval widths side by side.

    python benchmarks/nlme_sgmcmc.py [--subjects 2000] [--subset 100]
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

jax.config.update("jax_enable_x64", True)

from bayes_ude import nlme  # noqa: E402

TRUTH = {"tka": np.log(1.2), "tcl": np.log(3.0), "tv": np.log(35.0), "omega_eta_ka": 0.16,
         "omega_eta_cl": 0.09, "omega_eta_v": 0.04, "add_sd": 0.1, "prop_sd": 0.1}


def simulate(n: int, seed: int = 0) -> nlme.Population:
    rng = np.random.default_rng(seed)
    times = np.array([0.5, 1, 2, 4, 8, 12, 24])
    rows = []
    sd = np.sqrt([TRUTH["omega_eta_ka"], TRUTH["omega_eta_cl"], TRUTH["omega_eta_v"]])
    for i in range(1, n + 1):
        dose = 300.0
        ka, cl, v = np.exp(np.array([TRUTH["tka"], TRUTH["tcl"], TRUTH["tv"]])
                           + sd * rng.normal(size=3))
        k = cl / v
        rows.append(dict(ID=i, TIME=0.0, DV=".", AMT=dose, EVID=1, CMT=1))
        t = np.sort(rng.choice(times, 4, replace=False))  # sparse: 4 of 7 times
        c = dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
        y = c + np.sqrt(TRUTH["add_sd"] ** 2 + (TRUTH["prop_sd"] * c) ** 2) * rng.normal(
            size=t.size)
        rows += [dict(ID=i, TIME=tt, DV=yy, AMT=".", EVID=0, CMT=2) for tt, yy in zip(t, y)]
    return nlme.read_nonmem(pd.DataFrame(rows))


def model() -> nlme.PopulationModel:
    def individual(th, eta, cov):
        return {p: jnp.exp(th[f"t{p}"] + eta[f"eta_{p}"]) for p in ("ka", "cl", "v")}

    return nlme.PopulationModel(
        nlme.OneCompartmentOral(), individual, theta={"tka": 0.0, "tcl": 1.0, "tv": 3.3},
        omega={"eta_ka": 0.2, "eta_cl": 0.2, "eta_v": 0.2},
        sigma={"add_sd": 0.3, "prop_sd": 0.2}, error=nlme.Combined())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=2000)
    ap.add_argument("--subset", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()

    pop = simulate(args.subjects)
    m = model()
    print(f"population: {pop.n_subjects} subjects, {pop.n_obs} observations")
    t = time.perf_counter()
    ml = nlme.fit(m, pop, "focei", progress=False)
    t_ml = time.perf_counter() - t
    print(f"FOCEI (preconditioner): {t_ml:.1f} s, {ml.iterations} iterations, "
          f"peak RSS {peak_rss_mb():.0f} MB")
    steps_per_epoch = args.subjects // args.batch
    n_steps = args.epochs * steps_per_epoch
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    sg = nlme.fit(m, pop, "sgld", init=ml, batch_size=args.batch, num_steps=n_steps,
                  num_chains=4, progress=False)
    t_sg = time.perf_counter() - t
    sampling = sg.idata.attrs["seconds"]
    print(f"SGLD: 4 chains x {n_steps} steps ({args.epochs} epochs of {steps_per_epoch} "
          f"minibatches of {args.batch}); {t_sg:.1f} s in all (compile included), "
          f"{sampling / args.epochs:.2f} s per epoch for the 4 chains; "
          f"peak RSS {peak_rss_mb():.0f} MB (before SGLD {rss0:.0f} MB)")
    table = sg.table()
    table.insert(0, "truth", pd.Series(TRUTH))
    table.insert(1, "focei", ml.estimates)
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 140):
        print(table.to_string())
    inside = ((table["q5"] <= table["truth"]) & (table["truth"] <= table["q95"])).mean()
    print(f"truth inside the 90 % credible interval for {inside:.0%} of the parameters")

    # Part 2: SGLD vs NUTS on a subset-sized problem
    sub = pop.take(np.arange(args.subset))
    ml_sub = nlme.fit(m, sub, "focei", progress=False)
    t = time.perf_counter()
    nuts = nlme.fit(m, sub, "nuts", init=ml_sub, num_warmup=500, num_samples=500,
                    num_chains=4, progress=False)
    t_nuts = time.perf_counter() - t
    t = time.perf_counter()
    sg_sub = nlme.fit(m, sub, "sgld", init=ml_sub, batch_size=max(args.subset // 10, 5),
                      num_steps=4000, num_chains=4, progress=False)
    t_sgsub = time.perf_counter() - t
    a, b = nuts.table(), sg_sub.table()
    cmp = pd.DataFrame({"nuts_median": a["median"], "sgld_median": b["median"],
                        "diff_in_nuts_sd": (b["median"] - a["median"]) / a["sd"],
                        "nuts_90_width": a["q95"] - a["q5"],
                        "sgld_90_width": b["q95"] - b["q5"]})
    print(f"\nsubset of {args.subset} subjects: NUTS {t_nuts:.1f} s "
          f"({nuts.num_divergent} divergences, max R-hat {a['r_hat'].max():.3f}); SGLD {t_sgsub:.1f} s")
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 140):
        print(cmp.to_string())


if __name__ == "__main__":
    main()
