"""``bayes-ude pk fit``: population PK from a NONMEM-style table, tables and plots out."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["add_pk_parser", "run_pk_fit"]

OMEGA_PRIORS = ("halfnormal", "halfcauchy")
DEFAULT_OMEGA_PRIOR = "halfnormal:1"  # Priors' default
SHIPPED = {"theophylline": "theophylline.csv", "warfarin": "warfarin_pkpd.csv"}


def add_pk_parser(sub) -> None:
    pk = sub.add_parser("pk", help="population pharmacokinetics (NLME)")
    pk_sub = pk.add_subparsers(dest="pk_command", required=True)
    fit = pk_sub.add_parser(
        "fit", help="fit a population PK model to a NONMEM-style table",
        description="Fit a built-in population PK model (FO/FOCE/FOCEI/Laplace, or "
                    "Bayesian: NUTS/SGLD) to a NONMEM-style CSV; print the estimate table "
                    "and write CSVs, plots, a JSON summary (and for NUTS/SGLD the "
                    "posterior as NetCDF). DATA is a CSV path or a shipped data set name "
                    f"({', '.join(SHIPPED)}).")
    fit.add_argument("data", help="CSV file (NONMEM columns) or a shipped data set name")
    fit.add_argument("--model", default="oral1cmt",
                     choices=["iv1cmt", "oral1cmt", "iv2cmt", "oral2cmt"],
                     help="structural model (default: %(default)s)")
    fit.add_argument("--method", default="focei",
                     choices=["fo", "foce", "focei", "laplace", "nuts", "sgld"],
                     help="estimation method: maximum likelihood (fo, foce, focei, laplace) "
                          "or Bayesian (nuts; sgld: minibatches of subjects) "
                          "(default: %(default)s)")
    fit.add_argument("--chains", type=int, default=4, help="Bayesian: chains (default 4)")
    fit.add_argument("--warmup", type=int, default=1000,
                     help="NUTS: warmup draws per chain (default 1000)")
    fit.add_argument("--samples", type=int, default=1000,
                     help="NUTS: draws per chain (default 1000); SGLD: steps per chain are "
                          "4x this")
    fit.add_argument("--seed", type=int, default=0, help="Bayesian: random seed (default 0)")
    fit.add_argument("--omega-prior", default=None, metavar="DIST:SCALE",
                     help="Bayesian: prior of each between-subject SD (log-scale "
                          "parameters), halfnormal:SCALE or halfcauchy:SCALE (default: "
                          f"{DEFAULT_OMEGA_PRIOR}; see docs/bayes_nlme.md on prior "
                          "sensitivity)")
    fit.add_argument("--eta", default=None,
                     help="comma-separated parameters with between-subject variability "
                          "(default: ka,cl,v where the model has them)")
    fit.add_argument("--error", default="additive",
                     choices=["additive", "proportional", "combined", "exponential"],
                     help="residual error model (default: %(default)s)")
    fit.add_argument("--dvid", type=int, default=None,
                     help="use only observations of this DVID (e.g. 1 = PK in warfarin)")
    fit.add_argument("--allometric", metavar="WT", default=None,
                     help="weight column for allometric scaling of CL, Q (0.75) and V (1)")
    fit.add_argument("--out", type=Path, default=Path("bayes_ude_output"),
                     help="folder for tables, plots and summary.json (default: %(default)s)")
    fit.add_argument("--json", type=Path, default=None, help="also write the summary here")
    fit.add_argument("--max-iter", type=int, default=500, help="outer iterations (default 500)")
    fit.add_argument("--no-plots", action="store_true", help="write tables only")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or table")


def _load(data: str):
    from .. import datasets
    from ._data import read_nonmem

    if data in SHIPPED:
        return read_nonmem(datasets.data_path(SHIPPED[data]))
    path = Path(data)
    if not path.exists():
        raise SystemExit(f"bayes-ude pk fit: no such file {data!r} (and not a shipped data "
                         f"set: {', '.join(SHIPPED)})")
    return read_nonmem(path)


def omega_prior(text: str):
    """``"halfnormal:1"`` or ``"halfcauchy:0.1"`` -> the NumPyro distribution."""
    import numpyro.distributions as dist

    name, _, scale = text.partition(":")
    name = name.strip().lower()
    try:
        value = float(scale)
    except ValueError:
        value = float("nan")
    if name not in OMEGA_PRIORS or not value > 0 or value == float("inf"):
        raise SystemExit(f"bayes-ude pk fit: --omega-prior must be DIST:SCALE with DIST one "
                         f"of {', '.join(OMEGA_PRIORS)} and SCALE a positive number "
                         f"(e.g. halfcauchy:0.1), got {text!r}")
    return (dist.HalfNormal if name == "halfnormal" else dist.HalfCauchy)(value)


def _write_summary(summary: dict, out: Path, extra: Path | None) -> None:
    """``summary.json`` in ``out``, and a copy at ``extra`` (``--json``) if given."""
    text = json.dumps(summary, indent=2) + "\n"
    (out / "summary.json").write_text(text)
    if extra is not None:
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(text)


def run_pk_fit(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import numpy as np

    from ._builtin import builtin_model
    from ._data import NonmemDataError
    from ._estimate import fit

    if args.omega_prior is not None:
        if args.method not in ("nuts", "sgld"):
            raise SystemExit(f"bayes-ude pk fit: --omega-prior is a prior, for --method nuts "
                             f"or sgld; {args.method} is maximum likelihood")
        omega_prior(args.omega_prior)  # a bad value fails before any work
    start = time.perf_counter()
    try:
        pop = _load(args.data)
    except NonmemDataError as err:
        raise SystemExit(f"bayes-ude pk fit: the data table has problems:\n{err}") from None
    if args.dvid is not None:
        keep = np.asarray(pop.obs_mask) & (np.asarray(pop.obs_dvid) == args.dvid)
        if not keep.any():
            raise SystemExit(f"bayes-ude pk fit: no observations with DVID {args.dvid}")
        pop = eqx.tree_at(lambda p: p.obs_mask, pop, keep)
    try:
        model = builtin_model(args.model, pop, args.error, allometric=args.allometric,
                              dvid=args.dvid,
                              eta=None if args.eta is None else args.eta.split(","))
    except ValueError as err:
        raise SystemExit(f"bayes-ude pk fit: {err}") from None
    if not args.quiet:
        print(f"{args.data}: {pop.n_subjects} subjects, {pop.n_obs} observations, "
              f"{pop.n_doses} doses; model {args.model}, {args.error} error, "
              f"{args.method.upper()}")
    if args.method in ("nuts", "sgld"):
        return _run_bayes(args, pop, model, start)
    result = fit(model, pop, args.method, max_iter=args.max_iter, progress=not args.quiet)
    seconds = time.perf_counter() - start
    summary = result.summary()
    summary["seconds"] = seconds
    summary["fit_seconds"] = result.seconds
    summary["model"] = args.model
    summary["error_model"] = args.error
    summary["data"] = str(args.data)
    table = result.table()
    if not args.quiet:
        import pandas as pd

        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            print(table.drop(columns="fixed").to_string())
        print(f"-2LL {result.minus2ll:.3f}   OFV {result.ofv:.3f}   AIC {result.aic:.3f}   "
              f"BIC {result.bic:.3f}")
        state = ("interrupted" if result.interrupted else
                 "converged" if result.converged else "NOT converged")
        print(f"{state} in {result.iterations} iterations; fit {result.seconds:.2f} s, "
              f"total {seconds:.2f} s (including compilation)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "estimates.csv")
    if not result.interrupted:
        diag = result.diagnostics(n_sim=500)
        diag.to_csv(out / "diagnostics.csv", index=False)
        result.individual_parameters().to_csv(out / "ebe.csv")
        vpc_table = result.vpc(dvid=args.dvid, n_sim=500)
        vpc_table.to_csv(out / "vpc.csv", index=False)
        from ._diagnostics import epsilon_shrinkage

        summary["epsilon_shrinkage"] = epsilon_shrinkage(diag)
        if not args.no_plots:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from ._diagnostics import plot_gof, plot_individual, plot_vpc

            fig = plot_gof(diag, title=f"{args.model}, {args.method.upper()}: goodness of fit")
            fig.savefig(out / "gof.png", dpi=110)
            ax = plot_vpc(result, table=vpc_table)
            ax.figure.savefig(out / "vpc.png", dpi=110)
            fig2 = plot_individual(result)
            fig2.savefig(out / "individual.png", dpi=110)
            plt.close("all")
    _write_summary(summary, out, args.json)
    if not args.quiet:
        print(f"wrote estimates.csv, diagnostics.csv, ebe.csv, vpc.csv"
              f"{'' if args.no_plots or result.interrupted else ', gof.png, vpc.png, individual.png'}"
              f" and summary.json to {out}/")
    return 130 if result.interrupted else 0


def _run_bayes(args, pop, model, start) -> int:
    """The Bayesian branch: posterior table, NetCDF, posterior-predictive VPC, trace plot."""
    import jax
    import pandas as pd

    from ._estimate import fit

    for name in ("chains", "warmup", "samples"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bayes-ude pk fit: --{name} must be >= 1")
    from ._bayes import Priors

    key = jax.random.key(args.seed)
    progress = not args.quiet
    prior_text = args.omega_prior or DEFAULT_OMEGA_PRIOR
    priors = Priors(omega_sd=omega_prior(prior_text))
    if args.method == "nuts":
        # start the chains at the maximum-likelihood (FOCEI) estimates and EBEs
        ml = fit(model, pop, "focei", max_iter=args.max_iter, progress=progress,
                 covariance=False)
        result = fit(model, pop, "nuts", init=ml, num_warmup=args.warmup,
                     num_samples=args.samples, num_chains=args.chains, key=key,
                     progress=progress, priors=priors)
    else:
        result = fit(model, pop, "sgld", num_steps=4 * args.samples,
                     num_chains=args.chains, key=key, progress=progress, priors=priors)
    seconds = time.perf_counter() - start
    table = result.table()
    summary = result.summary()
    summary.update(seconds=seconds, fit_seconds=result.seconds, model=args.model,
                   error_model=args.error, data=str(args.data), omega_prior=prior_text)
    if not args.quiet:
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            print(table.to_string())
        print(f"{args.method.upper()}: {args.chains} chains; max R-hat "
              f"{summary['max_r_hat']:.3f}, min bulk ESS {summary['min_ess_bulk']:.0f}"
              + (f", {result.num_divergent} divergences" if args.method == "nuts" else "")
              + f"; fit {result.seconds:.1f} s, total {seconds:.1f} s (including compilation)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table.index.name = "parameter"
    table.to_csv(out / "estimates.csv")
    result.to_netcdf(out / "posterior.nc")
    eta = result.eta
    if eta is not None:
        eta.to_csv(out / "eta_posterior_median.csv")
    vpc_table = result.vpc(dvid=args.dvid, n_sim=500)
    vpc_table.to_csv(out / "vpc.csv", index=False)
    written = ["estimates.csv", "posterior.nc", "vpc.csv"] + (
        ["eta_posterior_median.csv"] if eta is not None else [])
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import arviz as az
        import matplotlib.pyplot as plt

        from ._diagnostics import plot_vpc

        ax = plot_vpc(result, table=vpc_table,
                      title="Posterior predictive check (prediction-corrected VPC)")
        ax.figure.savefig(out / "vpc.png", dpi=110)
        names = [n for n in result.draws if n in result.idata.posterior]
        axes = az.plot_trace(result.idata, var_names=names, compact=True)
        axes.ravel()[0].figure.savefig(out / "trace.png", dpi=90)
        plt.close("all")
        written += ["vpc.png", "trace.png"]
    _write_summary(summary, out, args.json)
    if not args.quiet:
        print(f"wrote {', '.join(written)} and summary.json to {out}/")
    return 130 if result.idata.attrs.get("partial") else 0
