"""``bayes-ude pk fit --method nuts|sgld``: the Bayesian run and its files.

Loaded by :mod:`._command_run` only for a Bayesian method (it imports NumPyro and ArviZ).
"""

from __future__ import annotations

import time

import arviz as az
import jax
import matplotlib.pyplot as plt
import numpyro.distributions as dist
import pandas as pd

from ._command import DEFAULT_OMEGA_PRIOR, EXIT_INTERRUPTED, devices_checked, parse_omega_prior
from ._command_data import fit_options, n_censored
from ._command_plots import save_vpc, vpc_tables, write_plots
from ._diagnostics import diagnostics
from ._figure_worker import Figures
from ._fit import fit
from ._output import Output, sigint_deferred
from ._priors import Priors
from ._tables import sdtab

__all__ = ["omega_prior", "run_bayes"]


def omega_prior(text: str):
    """``"halfnormal:1"`` or ``"halfcauchy:0.1"`` -> the NumPyro distribution."""
    name, value = parse_omega_prior(text)
    return (dist.HalfNormal if name == "halfnormal" else dist.HalfCauchy)(value)


#: Below these the draws' summaries are not to be trusted (Vehtari et al. 2021: R-hat
#: < 1.01, bulk ESS > 100 per chain for 4 chains); summary.json says so.
MAX_R_HAT, MIN_ESS_BULK = 1.01, 400


def sampling_warnings(result, summary: dict) -> list[str]:
    """What summary.json's ``warnings`` must say about the draws: chains that disagree,
    too few effective draws, divergent transitions."""
    out = []
    r_hat, ess = summary["max_r_hat"], summary["min_ess_bulk"]
    if r_hat == r_hat and r_hat > MAX_R_HAT:  # NaN (a single draw) is named elsewhere
        out.append(f"max R-hat {r_hat:.3f} > {MAX_R_HAT}: the chains disagree; run longer "
                   "(--warmup, --samples)")
    if ess == ess and ess < MIN_ESS_BULK:
        out.append(f"min bulk ESS {ess:.0f} < {MIN_ESS_BULK}: too few effective draws for "
                   "stable intervals; run longer (--samples)")
    divergent = summary.get("num_divergent", 0)
    if divergent:
        out.append(f"{divergent} divergent transitions: the sampler missed part of the "
                   "posterior (docs/bayes_nlme.md)")
    return out


def _random_effects_line(summary: dict) -> str:
    centred = summary["random_effects_centred"]
    metric = "dense" if summary["dense_mass"] else "diagonal"
    return (f"centred ({', '.join(centred)})" if centred else "non-centred") + \
        f", {metric} metric"


def run_bayes(args, pop, model, start, output: Output, notes: list[str],
              figures: Figures) -> int:
    """The Bayesian branch: posterior table, NetCDF, posterior-predictive VPC, trace plot."""
    key = jax.random.key(args.seed)
    progress = not args.quiet
    prior_text = args.omega_prior or DEFAULT_OMEGA_PRIOR
    priors = Priors(omega_sd=omega_prior(prior_text))
    with devices_checked(args) as devices:
        if args.method == "nuts":
            # start the chains at the maximum-likelihood (FOCEI) estimates and EBEs
            ml = fit(model, pop, "focei", max_iter=args.max_iter, progress=progress,
                     covariance=False, devices=devices)
            if ml.interrupted:
                raise KeyboardInterrupt  # a start for the chains is not a result
            result = fit(model, pop, "nuts", init=ml, num_warmup=args.warmup,
                         num_samples=args.samples, num_chains=args.chains, key=key,
                         progress=progress, priors=priors, devices=devices,
                         random_effects=args.random_effects)
        else:
            result = fit(model, pop, "sgld", num_steps=4 * args.samples,
                         num_chains=args.chains, key=key, progress=progress, priors=priors,
                         devices=devices)
    # There are draws from here on: Ctrl-C skips what is left and keeps what exists (the
    # draws, the table and summary.json first, with Ctrl-C held off until they are saved).
    with sigint_deferred() as sigint:
        seconds = time.perf_counter() - start
        output.save("posterior.nc", result.to_netcdf)
        table = result.table(ci=0.95)
        summary = result.summary(table)  # the same intervals as estimates.csv
        summary.update(seconds=seconds, fit_seconds=result.seconds, model=args.model,
                       error_model=args.error, data=str(args.data), omega_prior=prior_text,
                       warnings=list(notes), options=fit_options(args),
                       n_censored=n_censored(pop))
        summary["warnings"] += sampling_warnings(result, summary)
        table.index.name = "parameter"
        output.save("estimates.csv", table.to_csv)
        eta = result.eta
        if eta is not None:
            output.save("eta_posterior_median.csv", eta.to_csv)
        if not args.quiet:
            with pd.option_context("display.float_format", "{:.4g}".format,
                                   "display.width", 120):
                print(table.to_string())
            print(f"{args.method.upper()}: {args.chains} chains; max R-hat "
                  f"{summary['max_r_hat']:.3f}, min bulk ESS {summary['min_ess_bulk']:.0f}"
                  + (f", {result.num_divergent} divergences; random effects "
                     f"{_random_effects_line(summary)}" if args.method == "nuts" else "")
                  + f"; fit {result.seconds:.1f} s, total {seconds:.1f} s (including "
                    "compilation)")
    if result.idata.attrs.get("partial"):
        # the sampler marks draws cut short, or optional parts it skipped ("skipped")
        skipped = result.idata.attrs.get("skipped")
        output.interrupted_at = (f"assembling the draws (skipped {skipped})" if skipped
                                 else "sampling")
    elif sigint:
        output.interrupted_at = "writing estimates"
    def vpc():
        state["vpc"] = tables = vpc_tables(result, args)
        save_vpc(output, tables)

    def residuals():
        # at the posterior medians of the parameters and random effects (plug-in)
        state["diag"] = diag = diagnostics(result, n_sim=500, key=jax.random.key(args.seed))
        output.save("diagnostics.csv", lambda path: diag.to_csv(path, index=False))
        output.save("sdtab.csv", lambda path: sdtab(result, diagnostics=diag).to_csv(
            path, index=False))

    def plots():
        write_plots(output, figures, args, result, state["vpc"], state.get("diag"),
                    vpc_title="Posterior predictive check (prediction-corrected VPC)")
        names = [n for n in result.draws if n in result.idata.posterior]
        axes = az.plot_trace(result.idata, var_names=names, compact=True,
                             backend_kwargs={"layout": "constrained"})
        for ax in axes.ravel():
            ax.title.set_fontsize(9)
        output.save("trace.png", lambda path: axes.ravel()[0].figure.savefig(path, dpi=90))
        plt.close("all")

    state = {}
    with figures:  # stopped before the commit: no file appears after it
        output.write_stages([("vpc", vpc)]
                            + ([("diagnostics", residuals)] if result.eta is not None else [])
                            + ([] if args.no_plots else [("plots", plots)]))
    late = output.commit(summary)
    output.report(args.quiet)
    return EXIT_INTERRUPTED if output.interrupted_at or late else 0
