"""``bayes-ude pk fit``: population PK from a NONMEM-style table, tables and plots out.

Output rules (docs/nlme.md, "From the command line"): every option is checked before any
work; results are written into a temporary folder beside ``--out`` and renamed into place
at the end, replacing the earlier folder as a whole, so stale and new files never mix.
Ctrl-C before there are results (loading, compilation, the first iterations) writes
nothing and leaves ``--out`` as it was; Ctrl-C once there are estimates (or draws) skips
what is left, writes what exists and marks ``summary.json`` ``"status": "interrupted"``.
Exit codes: 0 done, 1 a bad option or data, 3 a degenerate maximum-likelihood solution
(without ``--allow-degenerate``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from .. import _sigint
from ._output import OUTPUT_FILES, Output, sigint_deferred

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
    fit.add_argument("--drop", metavar="COL[,COL]", default=None,
                     help="columns of the data to ignore (e.g. a text column that is not a "
                          "covariate, or a BLQ/CENS column to fit flagged values as given)")
    fit.add_argument("--covariates", metavar="COL[,COL]", default=None,
                     help="the covariate columns to read (default: every column that is "
                          "not a NONMEM item); other extra columns are ignored")
    fit.add_argument("--character-ids", action="store_true",
                     help="IDs are text (e.g. A01): subjects are numbered in order of "
                          "appearance and the tables show the text")
    fit.add_argument("--out", type=Path, default=Path("bayes_ude_output"),
                     help="folder for tables, plots and summary.json, replaced as a whole "
                          "when the run ends (an existing folder may hold only files "
                          "bayes-ude writes); Ctrl-C before there are results leaves it as "
                          "it was (default: %(default)s)")
    fit.add_argument("--json", type=Path, default=None,
                     help="also write the summary to this file")
    fit.add_argument("--max-iter", type=int, default=500,
                     help="outer iterations, >= 1 (default 500)")
    fit.add_argument("--allow-degenerate", action="store_true",
                     help="exit 0 even when the maximum-likelihood estimates are degenerate "
                          "(run-away values; exit code 3 otherwise)")
    fit.add_argument("--devices", default=None, metavar="all|N",
                     help="split the subjects over this many local devices (or 'all'): "
                          "the objective of a maximum-likelihood fit, each NUTS chain's "
                          "log density (the chains then share the devices), each SGLD "
                          "minibatch; default: every GPU, or one CPU device")
    run = fit.add_argument_group(
        "several processes", "one fit as N processes (jax.distributed; hosts or GPUs), each "
        "reading the whole table and computing its devices' share of the subjects; only "
        "process 0 prints and writes (see docs/scaling.md)")
    run.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                     help="address of process 0 and a free port (default: "
                          "$JAX_COORDINATOR_ADDRESS)")
    run.add_argument("--num-processes", type=int, metavar="N", default=None,
                     help="number of processes (default: $JAX_NUM_PROCESSES)")
    run.add_argument("--process-id", type=int, metavar="I", default=None,
                     help="this process, 0..N-1 (default: $JAX_PROCESS_ID)")
    run.add_argument("--distributed", action="store_true",
                     help="read what is not given from srun (SLURM) or mpirun (Open MPI)")
    run.add_argument("--coordinator-timeout", type=float, metavar="SECONDS", default=120.0,
                     help="seconds for every process to reach the coordinator, then a clear "
                          "error (default 120)")
    fit.add_argument("--no-plots", action="store_true", help="write tables only")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or table")


def _load(data: str, args: argparse.Namespace | None = None,
          messages: list[str] | None = None):
    """The data set (a shipped name or a CSV path) read with the options of ``args``
    (``--drop``, ``--covariates``, ``--character-ids``); the reader's warnings about the
    data are printed on stderr in the command's words (and appended to ``messages``, for
    ``summary.json``)."""
    import warnings

    from .. import datasets
    from ._data import NonmemDataWarning
    from ._read import read_nonmem

    def columns(option: str):
        text = getattr(args, option, None)
        if text is None:
            return None
        names = [c.strip() for c in text.split(",") if c.strip()]
        if option == "drop" and not names:
            raise SystemExit(f"bayes-ude pk fit: --{option} needs column names, got {text!r}")
        return names

    options = dict(drop=columns("drop"), covariates=columns("covariates"),
                   character_ids=bool(getattr(args, "character_ids", False)))
    if data in SHIPPED:
        path = datasets.data_path(SHIPPED[data])
    else:
        path = Path(data)
        if not path.exists():
            raise SystemExit(f"bayes-ude pk fit: no such file {data!r} (and not a shipped "
                             f"data set: {', '.join(SHIPPED)})")
        if path.is_dir():
            raise SystemExit(f"bayes-ude pk fit: {data!r} is a folder, not a CSV file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonmemDataWarning)
        pop = read_nonmem(path, **options)
    for w in caught:
        if issubclass(w.category, NonmemDataWarning):
            print(f"bayes-ude pk fit: warning: {w.message}", file=sys.stderr)
            if messages is not None:
                messages.append(f"data: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return pop


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


EXIT_DEGENERATE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shells' convention


def _fail(message: str):
    raise SystemExit(f"bayes-ude pk fit: {message}")


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _probe(folder: Path, option: str, given: Path) -> None:
    """Fail unless a folder can be created in ``folder`` (the nearest existing ancestor of
    where ``option`` writes): the test is the operation itself, not permission bits."""
    if not folder.is_dir():
        _fail(f"{option} {str(given)!r}: {folder} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bayes-ude-probe-", dir=folder))
    except OSError as err:
        _fail(f"{option} {str(given)!r}: cannot write in {folder} ({err.strerror})")


def check_pk_args(args: argparse.Namespace) -> None:
    """Check the options of ``pk fit`` that need no data, before any work (one-line errors
    naming the option)."""
    if args.max_iter < 1:
        _fail(f"--max-iter must be >= 1, got {args.max_iter}")
    for name in ("chains", "warmup", "samples"):
        if getattr(args, name) < 1:
            _fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    devices = getattr(args, "devices", None)
    if devices is not None:
        if devices != "all" and not (devices.isdigit() and int(devices) >= 1):
            _fail(f"--devices must be 'all' or a count >= 1, got {devices!r}")
    from .._distributed import command_settings

    command_settings(args)  # --coordinator, --num-processes, --process-id
    out = args.out
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} is an existing file; --out names a folder")
    if out.is_dir():
        ours = set(OUTPUT_FILES)
        if args.json is not None and _same_folder(args.json.parent, out):
            ours.add(args.json.name)  # a --json copy kept inside --out is ours too
        try:
            foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        except OSError as err:
            _fail(f"--out {str(out)!r}: cannot read the folder ({err.strerror})")
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            _fail(f"--out {str(out)!r} exists and holds files bayes-ude does not write "
                  f"({shown}); the folder is replaced as a whole, so name a new folder or "
                  f"one an earlier run wrote")
    _probe(_nearest_existing(Path(os.path.abspath(out)).parent), "--out", out)
    if args.json is not None:
        if args.json.is_dir():
            _fail(f"--json {str(args.json)!r} is a folder; --json names a file")
        _probe(_nearest_existing(Path(os.path.abspath(args.json)).parent), "--json",
               args.json)


def _predose_rows(pop) -> list[int]:
    """Data rows of observations with DV > 0 at or before their subject's first dose (not
    a steady-state dose): built-in models predict 0 there (a dose acts from the next
    instant on)."""
    import numpy as np

    mask = np.asarray(pop.obs_mask) & (np.asarray(pop.obs_dv) > 0)
    dose_mask = np.asarray(pop.dose_mask)
    if dose_mask.shape[1] == 0:
        return sorted(int(r) for r in np.asarray(pop.obs_row)[mask])
    dose_time = np.where(dose_mask, np.asarray(pop.dose_time), np.inf)
    first = dose_time.argmin(axis=1)
    first_time = dose_time.min(axis=1)
    first_ss = np.asarray(pop.dose_ss)[np.arange(len(first)), first] & dose_mask.any(axis=1)
    pre = mask & (np.asarray(pop.obs_time) <= first_time[:, None]) & ~first_ss[:, None]
    return sorted(int(r) for r in np.asarray(pop.obs_row)[pre])


def _predose_warning(args: argparse.Namespace, pop) -> list[str]:
    """Warn (stderr) when a proportional or exponential error meets observations with
    DV > 0 where the prediction is 0; returns the warnings for summary.json."""
    if args.error not in ("proportional", "exponential"):
        return []
    rows = _predose_rows(pop)
    if not rows:
        return []
    shown = ", ".join(map(str, rows[:20])) + (", ..." if len(rows) > 20 else "")
    what = ("no variance (the floor 1e-12)" if args.error == "proportional"
            else "the log of 0 (the floor 1e-300)")
    text = (f"{len(rows)} observation(s) with DV > 0 at or before their subject's first dose "
            f"(data rows {shown}): the prediction there is 0, which gives a {args.error} "
            f"error model {what}, so the fit is meaningless; use --error combined, or "
            f"exclude these records (MDV = 1)")
    print(f"bayes-ude pk fit: warning: {text}", file=sys.stderr)
    return [text]


def run_pk_fit(args: argparse.Namespace) -> int:
    check_pk_args(args)
    from .._distributed import start_command

    start_command(args)  # several processes: join them (before any JAX computation)
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import numpy as np

    from ._builtin import builtin_model
    from ._data import NonmemDataError

    if args.omega_prior is not None:
        if args.method not in ("nuts", "sgld"):
            raise SystemExit(f"bayes-ude pk fit: --omega-prior is a prior, for --method nuts "
                             f"or sgld; {args.method} is maximum likelihood")
        omega_prior(args.omega_prior)  # a bad value fails before any work
    start = time.perf_counter()
    data_notes: list[str] = []
    try:
        pop = _load(args.data, args, data_notes)
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
    notes = data_notes + _predose_warning(args, pop)
    output = Output(args.out, args.json)
    try:
        if not args.quiet:
            print(f"{args.data}: {pop.n_subjects} subjects, {pop.n_obs} observations "
                  f"(padding efficiency {pop.padding_efficiency:.0%}), {pop.n_doses} doses; "
                  f"model {args.model}, {args.error} error, {args.method.upper()}")
        if args.method in ("nuts", "sgld"):
            return _run_bayes(args, pop, model, start, output, notes)
        return _run_ml(args, pop, model, start, output, notes)
    except KeyboardInterrupt:
        if not output.committed:
            print(f"bayes-ude pk fit: interrupted before there were results; nothing written "
                  f"({args.out} is as it was)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        output.discard()


@contextlib.contextmanager
def _devices_checked(args):
    """``--devices`` as ``fit`` takes it; more devices than this process has: the
    command's one-line error (the count is only known once JAX has started)."""
    devices = getattr(args, "devices", None)
    try:
        yield int(devices) if devices and devices.isdigit() else devices
    except ValueError as err:
        if devices is None or "local device" not in str(err):
            raise
        raise SystemExit(f"bayes-ude pk fit: --devices {devices}: {err}") from None


def _run_ml(args, pop, model, start, output: Output, notes: list[str]) -> int:
    """The maximum-likelihood branch: estimates, diagnostics, EBEs, VPC, plots."""
    import warnings

    import pandas as pd

    from ._estimate import _pause_for_tests
    from ._fit import fit

    with warnings.catch_warnings():
        # said below, once, in the command's words
        warnings.filterwarnings("ignore", message=r"NLME fit: .* degenerate solution")
        with _devices_checked(args) as devices:
            result = fit(model, pop, args.method, max_iter=args.max_iter,
                         progress=not args.quiet, devices=devices)
    # There are estimates from here on: Ctrl-C skips what is left and keeps what exists.
    with sigint_deferred() as sigint:
        seconds = time.perf_counter() - start
        summary = result.summary()
        summary.update(seconds=seconds, fit_seconds=result.seconds, model=args.model,
                       error_model=args.error, data=str(args.data), warnings=list(notes))
        reasons = summary["degenerate"]
        verb = "converged to" if result.converged else "stopped at"
        if reasons:
            summary["warnings"].append(f"{verb} a degenerate solution: "
                                       + "; ".join(reasons))
        table = result.table()
        output.save("estimates.csv", table.to_csv)
        if not args.quiet:
            with pd.option_context("display.float_format", "{:.4g}".format,
                                   "display.width", 120):
                print(table.drop(columns="fixed").to_string())
            print(f"-2LL {result.minus2ll:.3f}   OFV {result.ofv:.3f}   AIC {result.aic:.3f}   "
                  f"BIC {result.bic:.3f}")
            state = ("interrupted" if result.interrupted else
                     "converged" if result.converged else "NOT converged")
            if reasons and not result.interrupted:
                state += " to a degenerate solution" if result.converged else " (degenerate)"
            print(f"{state} in {result.iterations} iterations; fit {result.seconds:.2f} s, "
                  f"total {seconds:.2f} s (including compilation)")
        if reasons:
            print(f"bayes-ude pk fit: {verb} a degenerate solution: {'; '.join(reasons)}"
                  + ("" if args.allow_degenerate or result.interrupted else
                     f" (exit code {EXIT_DEGENERATE}; --allow-degenerate accepts it)"),
                  file=sys.stderr)
    if result.interrupted:
        output.interrupted_at = ("covariance step" if "covariance" in result.message
                                 else "fit")
    elif sigint:
        output.interrupted_at = "writing estimates"
    stage = "writing"
    # each stage begins with a check for a Ctrl-C that the last one swallowed (_sigint)
    try:
        with _sigint.counted_sigint():
            if not output.interrupted_at:
                _pause_for_tests("writing")
                _sigint.raise_pending()
                stage = "diagnostics"
                diag = result.diagnostics(n_sim=500)
                output.save("diagnostics.csv", lambda path: diag.to_csv(path, index=False))
                from ._diagnostics import epsilon_shrinkage

                summary["epsilon_shrinkage"] = epsilon_shrinkage(diag)
                _sigint.raise_pending()
                stage = "individual parameters"
                output.save("ebe.csv", result.individual_parameters().to_csv)
                _sigint.raise_pending()
                stage = "vpc"
                vpc_table = result.vpc(dvid=args.dvid, n_sim=500)
                output.save("vpc.csv", lambda path: vpc_table.to_csv(path, index=False))
                if not args.no_plots:
                    _sigint.raise_pending()
                    stage = "plots"
                    import matplotlib

                    matplotlib.use("Agg")
                    import matplotlib.pyplot as plt

                    from ._diagnostics import plot_gof, plot_individual, plot_vpc

                    fig = plot_gof(diag, title=f"{args.model}, {args.method.upper()}: "
                                              "goodness of fit")
                    output.save("gof.png", lambda path: fig.savefig(path, dpi=110))
                    ax = plot_vpc(result, table=vpc_table)
                    output.save("vpc.png", lambda path: ax.figure.savefig(path, dpi=110))
                    fig2 = plot_individual(result)
                    output.save("individual.png", lambda path: fig2.savefig(path, dpi=110))
                    plt.close("all")
                _sigint.raise_pending()
    except KeyboardInterrupt:
        _sigint.handled()
        output.interrupted_at = stage
    late = output.commit(summary)
    output.report(args.quiet)
    if output.interrupted_at or late:
        return EXIT_INTERRUPTED
    return EXIT_DEGENERATE if reasons and not args.allow_degenerate else 0


def _run_bayes(args, pop, model, start, output: Output, notes: list[str]) -> int:
    """The Bayesian branch: posterior table, NetCDF, posterior-predictive VPC, trace plot."""
    import jax
    import pandas as pd

    from ._estimate import _pause_for_tests
    from ._fit import fit
    from ._priors import Priors

    key = jax.random.key(args.seed)
    progress = not args.quiet
    prior_text = args.omega_prior or DEFAULT_OMEGA_PRIOR
    priors = Priors(omega_sd=omega_prior(prior_text))
    with _devices_checked(args) as devices:
        if args.method == "nuts":
            # start the chains at the maximum-likelihood (FOCEI) estimates and EBEs
            ml = fit(model, pop, "focei", max_iter=args.max_iter, progress=progress,
                     covariance=False, devices=devices)
            if ml.interrupted:
                raise KeyboardInterrupt  # a start for the chains is not a result
            result = fit(model, pop, "nuts", init=ml, num_warmup=args.warmup,
                         num_samples=args.samples, num_chains=args.chains, key=key,
                         progress=progress, priors=priors, devices=devices)
        else:
            result = fit(model, pop, "sgld", num_steps=4 * args.samples,
                         num_chains=args.chains, key=key, progress=progress, priors=priors,
                         devices=devices)
    # There are draws from here on: Ctrl-C skips what is left and keeps what exists (the
    # draws, the table and summary.json first, with Ctrl-C held off until they are saved).
    with sigint_deferred() as sigint:
        seconds = time.perf_counter() - start
        output.save("posterior.nc", result.to_netcdf)
        table = result.table()
        summary = result.summary()
        summary.update(seconds=seconds, fit_seconds=result.seconds, model=args.model,
                       error_model=args.error, data=str(args.data), omega_prior=prior_text,
                       warnings=list(notes))
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
                  + (f", {result.num_divergent} divergences" if args.method == "nuts" else "")
                  + f"; fit {result.seconds:.1f} s, total {seconds:.1f} s (including "
                    "compilation)")
    if result.idata.attrs.get("partial"):
        # the sampler marks draws cut short, or optional parts it skipped ("skipped")
        skipped = result.idata.attrs.get("skipped")
        output.interrupted_at = (f"assembling the draws (skipped {skipped})" if skipped
                                 else "sampling")
    elif sigint:
        output.interrupted_at = "writing estimates"
    stage = "writing"
    # each stage begins with a check for a Ctrl-C that the last one swallowed (_sigint)
    try:
        with _sigint.counted_sigint():
            if not output.interrupted_at:
                _pause_for_tests("writing")
                _sigint.raise_pending()
                stage = "vpc"
                vpc_table = result.vpc(dvid=args.dvid, n_sim=500)
                output.save("vpc.csv", lambda path: vpc_table.to_csv(path, index=False))
                if not args.no_plots:
                    _sigint.raise_pending()
                    stage = "plots"
                    import matplotlib

                    matplotlib.use("Agg")
                    import arviz as az
                    import matplotlib.pyplot as plt

                    from ._diagnostics import plot_vpc

                    ax = plot_vpc(result, table=vpc_table,
                                  title="Posterior predictive check (prediction-corrected VPC)")
                    output.save("vpc.png", lambda path: ax.figure.savefig(path, dpi=110))
                    names = [n for n in result.draws if n in result.idata.posterior]
                    axes = az.plot_trace(result.idata, var_names=names, compact=True)
                    output.save("trace.png",
                                lambda path: axes.ravel()[0].figure.savefig(path, dpi=90))
                    plt.close("all")
                _sigint.raise_pending()
    except KeyboardInterrupt:
        _sigint.handled()
        output.interrupted_at = stage
    late = output.commit(summary)
    output.report(args.quiet)
    return EXIT_INTERRUPTED if output.interrupted_at or late else 0
