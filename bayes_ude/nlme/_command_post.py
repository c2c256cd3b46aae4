"""``bayes-ude pk simulate`` and ``bayes-ude pk compare``: after the fit, from its folder.

``simulate`` rebuilds the fit's model on its data from what ``summary.json`` recorded
(:mod:`._command_data`), puts the estimates in (Bayesian fits: the posterior medians) and
simulates on the data's design or on a new regimen; ``compare`` tabulates several fits
of the same data (:func:`~bayes_ude.nlme.compare_fits`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ._command import EXIT_INTERRUPTED, command_name, fail, parse_doses, parse_nested, parse_times
from ._command_data import build_model, load_data
from ._command_plots import units
from ._design import design
from ._output import Output, write_atomically
from ._plots import label
from ._simulation import point_estimates, simtab
from ._tables import compare_fits

__all__ = ["run_pk_compare", "run_pk_simulate"]

BAYESIAN = ("nuts", "sgld", "psgld", "sghmc")


def _fitted(summary: dict, fit_dir):
    """The fit's model on its data, at its estimates (a Bayesian fit's posterior medians)."""
    options = summary.get("options")
    if not options:
        fail(f"{fit_dir}/summary.json does not record the fit's options (written by an "
              "older bayes-ude); fit again to simulate from it")
    args = argparse.Namespace(**options)
    pop, _ = load_data(args)
    model = build_model(args, pop)
    values = summary
    if summary.get("method") in BAYESIAN:
        values = {k: v["median"] for k, v in summary["parameters"].items()}
    try:
        return point_estimates(model, values, population=pop), pop
    except ValueError as err:
        fail(str(err))


def _new_regimen(args, pop, model):
    """The design of ``--doses``/``--times``: subjects' covariates drawn (with replacement,
    seeded) from the fitted data's."""
    n = pop.n_subjects if args.subjects is None else args.subjects
    rng = np.random.default_rng(args.seed)
    pick = rng.integers(0, pop.n_subjects, n)
    base = np.asarray(pop.cov_baseline)
    covariates = {c: base[pick, pop.covariate_names.index(c)].tolist()
                  for c in model.covariates}
    doses = parse_doses(args.doses)
    obs_cmt = None
    if any(len(d) > 2 for d in doses) and getattr(pop, "cmt_given", False):
        observed = np.asarray(pop.obs_cmt)[np.asarray(pop.obs_mask)]
        obs_cmt = int(np.bincount(observed).argmax())  # where the data observe
    try:
        return design(n, doses, parse_times(args.times), covariates=covariates or None,
                      obs_cmt=obs_cmt)
    except ValueError as err:
        fail(str(err))


def run_pk_simulate(args: argparse.Namespace) -> int:
    """Run ``bayes-ude pk simulate``."""
    start = time.perf_counter()
    summary = json.loads((args.fit_dir / "summary.json").read_text())
    fitted, pop = _fitted(summary, args.fit_dir)
    population = pop if args.doses is None else _new_regimen(args, pop, fitted.model)
    output = Output(args.out, None)
    try:
        table = simtab(fitted, population, n=args.n, key=jax.random.key(args.seed))
        output.save("simtab.csv", lambda path: table.to_csv(path, index=False))
        fig = _plot(table, args, summary)
        output.save("simulation.png", lambda path: fig.savefig(path, dpi=110))
        plt.close("all")
        result = {"fit_dir": str(args.fit_dir), "n": args.n, "seed": args.seed,
                  "design": "the fitted data" if args.doses is None else
                  {"doses": args.doses, "times": args.times,
                   "subjects": population.n_subjects},
                  "parameters": ("posterior medians" if summary.get("method") in BAYESIAN
                                 else "estimates"),
                  "rows": len(table), "seconds": time.perf_counter() - start}
        output.commit(result)
        output.report(args.quiet)
        return 0
    except KeyboardInterrupt:
        print(f"{command_name()}: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        output.discard()


def _plot(table: pd.DataFrame, args, summary: dict):
    """Median and 5-95 % interval of the simulated DV (and PRED) over time."""
    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stats = table.groupby("TIME")["DV"].quantile([0.05, 0.5, 0.95]).unstack()
    ax.fill_between(stats.index, stats[0.05], stats[0.95], alpha=0.25, lw=0,
                    label="simulated 5-95 %")
    ax.plot(stats.index, stats[0.5], lw=1.8, label="simulated median")
    ax.plot(stats.index, table.groupby("TIME")["PRED"].median(), "k--", lw=1,
            label="typical subject (PRED)")
    if args.log:
        ax.set_yscale("log")
    labels = units(argparse.Namespace(data=summary["options"]["data"], time_unit=None,
                                      dv_unit=None), summary["options"].get("dvid"))
    ax.set_xlabel(label("time", labels["time_unit"]))
    ax.set_ylabel(label("DV", labels["dv_unit"]))
    ax.set_title(f"{args.n} simulated replicates of {summary.get('model', 'the model')}"
                 + ("" if args.doses is None else f", doses {args.doses}"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_pk_compare(args: argparse.Namespace) -> int:
    """Run ``bayes-ude pk compare``: print the table and the tests (and write them)."""
    names = [f.resolve().name for f in args.fit_dirs]
    try:
        cmp = compare_fits(list(args.fit_dirs), names=names, nested=parse_nested(args.nested))
    except ValueError as err:
        fail(str(err))
    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.float_format", "{:.4g}".format):
        print(cmp)
    if args.csv is not None:
        tests = args.csv.with_name(args.csv.stem + "_tests" + args.csv.suffix)
        write_atomically(args.csv, cmp.table.to_csv())
        write_atomically(tests, cmp.tests.to_csv(index=False))
        print(f"wrote {args.csv} and {tests}")
    return 0
