"""Warfarin PK/PD: Emax against a network drug effect, by FOCEI and NUTS, judged on
held-out subjects.

Data: ``datasets/warfarin_pkpd.csv`` (32 subjects, 251 concentrations, 232 PCA values).
Models: :func:`bayes_ude.nlme.warfarin_pkpd_model` with ``drug_effect="emax"`` (Imax = 1)
and ``"network"`` (a 1-8-1 tanh MLP in the inhibition, L2 0.1 on its 25 weights).

Steps (times are wall-clock, compilation included):

1. FOCEI on all 32 subjects: Emax from the literature values, then the network model
   from the Emax estimates (its untrained network *is* that Emax model, so it starts
   where Emax ended).
2. Held-out split (``split_subjects``, 20 %, seed 0: 26 train, 6 test). The training
   data keep the full data's shapes (the 6 held-out subjects' observations masked), so
   the fits reuse the compiled programs. FOCEI on the training subjects (started at the
   full-data estimates: a starting point only, the optimum is the training data's), then
   small NUTS runs on them (started at the training FOCEI fits).
3. Per held-out subject ``log p(y_i | fit)``, random effects integrated out (Laplace):
   at the FOCEI estimates, and averaged over posterior draws for NUTS.

``--nuts-full`` adds NUTS on all 32 subjects; ``--mm`` adds part 4's Michaelis-Menten
example (network elimination on 40 simulated subjects, FOCEI and a small NUTS run, with the
learned curve against the truth). ``--quick`` shrinks everything for a smoke test.

Usage: python benchmarks/warfarin_pkpd.py [--quick] [--nuts-full] [--mm] [--metric laplace]
       [--width N] [--l2 X] [--warmup N] [--samples N] [--max-tree-depth N]
       [--target-accept X] [--json FILE]
(the mixed 1-3-1 runs of docs/pkpd.md: --metric laplace --width 3 --l2 1 --warmup 200
--samples 200 --max-tree-depth 8 --target-accept 0.9)
"""

from __future__ import annotations

import argparse
import json
import time

import arviz as az
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bayes_ude import nlme  # noqa: E402
from bayes_ude.examples import michaelis_menten_population  # noqa: E402


def _main_rows(index):
    return [k for k in index if not k.startswith("w[")]


def _natural(fit) -> dict:
    return dict(zip(fit.model.parameter_names(),
                    np.asarray(fit.model.natural(jnp.asarray(fit.u))).tolist(), strict=True))


def focei(model, pop, init=None, max_iter=300):
    start = time.perf_counter()
    fit = nlme.fit(model, pop, "focei", init=init, progress=False, covariance=False,
                   tol=1e-3, max_iter=max_iter)
    return fit, time.perf_counter() - start


def nuts(model, pop, init, settings):
    start = time.perf_counter()
    res = nlme.fit(model, pop, "nuts", init=init, progress=False, **settings)
    return res, time.perf_counter() - start


def report_focei(name, fit, seconds, out):
    print(f"\n== FOCEI {name}: OFV {fit.ofv:.3f}  -2LL {fit.minus2ll:.3f}  AIC {fit.aic:.2f}  "
          f"({fit.n_parameters} parameters, {fit.iterations} iterations, "
          f"{'converged' if fit.converged else 'NOT converged'}, {seconds:.0f} s)")
    table = fit.table()
    print(table.loc[_main_rows(table.index),
                    ["estimate", "back_transformed", "bsv_cv_pct", "shrinkage_pct"]]
          .to_string(float_format="{:.4g}".format))
    out[name] = {"ofv": fit.ofv, "minus2ll": fit.minus2ll, "aic": fit.aic,
                 "iterations": fit.iterations, "converged": fit.converged,
                 "seconds": seconds,
                 "estimates": {k: float(v) for k, v in fit.estimates.items()
                               if not k.startswith("w[")}}


def report_nuts(name, res, seconds, out):
    table = res.table()
    main = table.loc[_main_rows(table.index)]
    net = table.loc[[k for k in table.index if k.startswith("w[")]]
    print(f"\n== NUTS {name}: {seconds:.0f} s, {res.num_divergent} divergences, max R-hat "
          f"(non-network) {main['r_hat'].max():.3f}, min bulk ESS {main['ess_bulk'].min():.0f}"
          + (f"; network weights: max R-hat {net['r_hat'].max():.2f}" if len(net) else ""))
    print(main.to_string(float_format="{:.4g}".format))
    out[name] = {"seconds": seconds, "divergences": int(res.num_divergent),
                 "max_rhat": float(main["r_hat"].max()),
                 "min_ess_bulk": float(main["ess_bulk"].min()),
                 "median": {k: float(v) for k, v in main["median"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--nuts-full", action="store_true", help="NUTS on all subjects too")
    parser.add_argument("--mm", action="store_true", help="the Michaelis-Menten example")
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--max-tree-depth", type=int, default=6)
    parser.add_argument("--metric", choices=["adapt", "laplace"], default="adapt",
                        help="NUTS metric: adapted in warmup (default) or the Laplace "
                             "metric at the FOCEI fit, fixed (nlme.fit(..., metric=))")
    parser.add_argument("--target-accept", type=float, default=0.8)
    parser.add_argument("--width", type=int, default=8,
                        help="hidden units of both networks (default 8)")
    parser.add_argument("--l2", type=float, default=0.1,
                        help="L2 penalty (prior precision / 2) on their weights (default 0.1)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    max_iter = 5 if args.quick else 300
    settings = dict(num_warmup=10 if args.quick else args.warmup,
                    num_samples=10 if args.quick else args.samples,
                    num_chains=args.chains, max_tree_depth=args.max_tree_depth,
                    metric=args.metric, target_accept=args.target_accept,
                    key=jax.random.key(0))
    net_options = {"width": args.width, "l2": args.l2}
    results: dict = {"focei": {}, "nuts": {}, "held_out": {}, "settings": {
        k: v for k, v in settings.items() if k != "key"}}
    t_all = time.perf_counter()
    pop = nlme.load_warfarin_population()

    # 1. FOCEI on all subjects
    emax_model = nlme.warfarin_pkpd_model(pop, "emax")
    emax, sec = focei(emax_model, pop, max_iter=max_iter)
    report_focei("emax", emax, sec, results["focei"])
    start = _natural(emax)
    net_model = nlme.warfarin_pkpd_model(pop, "network",
                                          init={"ic50": float(np.exp(start["tic50"]))},
                                          **net_options)
    shared = {k: v for k, v in start.items() if k in net_model.parameter_names()}
    network, sec = focei(net_model, pop, init=shared, max_iter=max_iter)
    report_focei("network", network, sec, results["focei"])
    c = np.array([0.5, 1, 2, 4, 8, 12])
    curves = pd.DataFrame({"C (mg/L)": c,
                           "I emax": nlme.inhibition_curve(emax.model, emax.theta, c),
                           "I network": nlme.inhibition_curve(network.model, network.theta,
                                                               c)})
    print("\nTypical drug effect I(C):\n" + curves.to_string(index=False,
                                                            float_format="{:.3f}".format))
    results["inhibition"] = curves.to_dict(orient="list")

    # 2. held-out split: FOCEI and NUTS on the training subjects
    train, test = nlme.split_subjects(pop, 0.2, seed=0, keep_shape=True)
    print(f"\nHeld out: subjects {list(test.ids)} ({test.n_obs} observations); training "
          f"{train.n_obs} observations")
    fits = {}
    for name, model, full in (("emax", emax_model, emax), ("network", net_model, network)):
        fit, sec = focei(model, train, init=_natural(full), max_iter=max_iter)
        report_focei(f"{name} (training subjects)", fit, sec, results["focei"])
        fits[name] = fit
    lpd = {}
    for name, fit in fits.items():
        start_t = time.perf_counter()
        lpd[f"{name} FOCEI"] = fit.log_predictive_density(test)
        results["held_out"][f"{name} FOCEI seconds"] = time.perf_counter() - start_t
    for name, model in (("emax", emax_model), ("network", net_model)):
        res, sec = nuts(model, train, fits[name], settings)
        report_nuts(f"{name} (training subjects)", res, sec, results["nuts"])
        start_t = time.perf_counter()
        lpd[f"{name} NUTS"] = res.log_predictive_density(test, n_draws=100)
        results["held_out"][f"{name} NUTS seconds"] = time.perf_counter() - start_t
    table = pd.DataFrame(lpd, index=pd.Index(test.ids, name="held-out subject")).T
    table["total"] = table.sum(axis=1)
    print("\nHeld-out log predictive density (per subject, random effects integrated "
          "out; higher is better):")
    print(table.to_string(float_format="{:.2f}".format))
    results["held_out"]["table"] = {k: {str(i): float(v) for i, v in row.items()}
                                    for k, row in table.iterrows()}

    if args.nuts_full:
        for name, model, full in (("emax", emax_model, emax),
                                  ("network", net_model, network)):
            res, sec = nuts(model, pop, full, settings)
            report_nuts(f"{name} (all subjects)", res, sec, results["nuts"])

    if args.mm:
        mm_example(args.quick, settings, results, net_options)

    results["total_seconds"] = time.perf_counter() - t_all
    print(f"\nTotal {results['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)


def mm_example(quick, settings, results, net_options):
    """Part 4: network elimination on simulated Michaelis-Menten data."""
    pop, truth = michaelis_menten_population(12 if quick else 40)
    model = nlme.network_elimination_model(pop, **net_options)
    fit, sec = focei(model, pop, max_iter=5 if quick else 300)
    report_focei("Michaelis-Menten network elimination", fit, sec, results["focei"])
    y = np.asarray(pop.obs_dv)[np.asarray(pop.obs_mask)]
    c = np.linspace(np.quantile(y, 0.05), np.quantile(y, 0.95), 8)
    true = truth["vmax"] * c / (truth["km"] + c)
    res, sec = nuts(model, pop, fit, settings)
    report_nuts("Michaelis-Menten network elimination", res, sec, results["nuts"])
    u = res.u_draws  # chain, draw, parameter
    per_chain = np.stack([np.stack([
        nlme.elimination_curve(model, model.unpack(jnp.asarray(x))[0], c)
        for x in chain[:: max(1, u.shape[1] // 100)]]) for chain in u])
    draws = per_chain.reshape(-1, len(c))
    curve_rhat = [float(az.rhat(per_chain[..., j])) for j in range(len(c))]
    table = pd.DataFrame({
        "C (mg/L)": c, "true Vmax C/(Km+C)": true,
        "FOCEI": nlme.elimination_curve(fit.model, fit.theta, c),
        "NUTS median": np.median(draws, 0), "NUTS 5 %": np.quantile(draws, 0.05, 0),
        "NUTS 95 %": np.quantile(draws, 0.95, 0), "NUTS R-hat": curve_rhat})
    print("\nElimination rate (mg/h), typical subject:\n"
          + table.to_string(index=False, float_format="{:.3f}".format))
    print(f"max relative error FOCEI {np.max(np.abs(table['FOCEI'] / true - 1)):.3f}, "
          f"NUTS median {np.max(np.abs(table['NUTS median'] / true - 1)):.3f}")
    results["mm"] = table.to_dict(orient="list")


if __name__ == "__main__":
    main()
