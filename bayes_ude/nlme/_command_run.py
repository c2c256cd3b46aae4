"""``bayes-ude pk fit``, the run: data, model, the maximum-likelihood fit and its files.

The arguments were checked by :mod:`._command` before anything here runs; the Bayesian
branch is :mod:`._command_bayes`, loaded (with NumPyro) only for ``--method nuts`` or
``sgld``. The output rules are in :mod:`._command`'s docstring.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from .. import _sigint
from .._batching import resolve_devices
from .._distributed import is_main_process, start_command
from .._programs import active_store, program_store, run_key
from ._bootstrap import bootstrap as run_bootstrap
from ._buckets import padding_report
from ._command import (
    EXIT_DEGENERATE,
    EXIT_INTERRUPTED,
    check_pk_args,
    devices_checked,
)
from ._command_data import build_model, fit_options, load_data, n_censored
from ._command_plots import (
    finish_plots,
    plot_types,
    save_vpc,
    start_gof,
    start_individual,
    start_vpc,
    vpc_tables,
)
from ._data import NonmemDataWarning
from ._diagnostics import epsilon_shrinkage
from ._diagnostics import precompile as precompile_diagnostics
from ._figure_worker import Figures
from ._fit import fit
from ._likelihood import check_censoring
from ._output import Output, sigint_deferred
from ._plot_data import precompile_curves
from ._tables import sdtab

__all__ = ["run_pk_fit"]

#: The estimate table as printed (estimates.csv has every column, ``kind`` included).
PRINTED_COLUMNS = ["estimate", "se", "rse_pct", "ci95_lo", "ci95_hi", "back_transformed",
                   "sd_corr", "bsv_cv_pct", "shrinkage_pct"]


def run_pk_fit(args: argparse.Namespace) -> int:
    """Run ``bayes-ude pk fit`` (options as :func:`._command.add_pk_parser` parses them)."""
    check_pk_args(args)
    start_command(args)  # several processes: join them (before any JAX computation)
    # every Ctrl-C from here on is counted: one that Python swallows (in a garbage-collector
    # callback while JAX starts or compiles) is raised at the fit's next checkpoint
    with _sigint.counted_sigint():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    pop, data_notes = load_data(args)
    model = build_model(args, pop, data_notes)
    try:
        check_censoring(args.method, pop)
    except ValueError as err:
        raise SystemExit(f"bayes-ude pk fit: {err}") from None
    notes = data_notes + _predose_warning(args, pop)
    output = Output(args.out, args.json)
    # the figure process loads matplotlib while the fit runs (the other processes of a
    # distributed run draw nothing anyone sees: in their own process, as without figures)
    figures = Figures(second_process=not args.no_plots and is_main_process())
    try:
        if not args.quiet:
            print(f"{args.data}: {pop.n_subjects} subjects, {pop.n_obs} observations"
                  + (f" ({n_censored(pop)} below the LLOQ: M3)" if n_censored(pop) else "")
                  + f" ({_padding_text(pop)}), {pop.n_doses} doses; "
                  f"model {args.model}{f', {args.error} error' if args.error else ''}, "
                  f"{args.method.upper()}")
        with warnings.catch_warnings():
            # the data's warnings are said above, in the command's words: the fit's own
            # check of the model against the data would repeat them as Python warnings
            warnings.filterwarnings("ignore", category=NonmemDataWarning)
            if args.method in ("nuts", "sgld"):
                # the documented lazy load of the Bayesian layer (NumPyro, BlackJAX, ArviZ)
                from . import _command_bayes

                return _command_bayes.run_bayes(args, pop, model, start, output, notes,
                                                figures)
            with program_store(*_store(args, pop)):
                return _run_ml(args, pop, model, start, output, notes, figures)
    except KeyboardInterrupt:
        if not output.committed:
            print(f"bayes-ude pk fit: interrupted before there were results; nothing written "
                  f"({args.out} is as it was)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        figures.close()
        output.discard()


#: options that change no compiled program (what is printed or written, and where)
_OUTPUT_ONLY = ("out", "json", "quiet", "no_plots", "log", "time_unit", "dv_unit")


def _padding_text(pop) -> str:
    """The padding efficiency, and where the subjects are computed in size groups, the
    efficiency of those (``._buckets``)."""
    report = padding_report(pop)
    text = f"padding efficiency {report['padding_efficiency']:.0%}"
    if report["size_groups"] > 1:
        text += (f"; {report['computed_padding_efficiency']:.0%} in "
                 f"{report['size_groups']} size groups")
    return text


def _store(args: argparse.Namespace, pop) -> tuple:
    """``(folder, run key)`` of the compiled programs kept for this run (``_programs``),
    next to JAX's compilation cache; ``(None, None)`` without that cache, with
    ``BAYES_UDE_PROGRAM_STORE=0``, for a model file (code the key cannot see), chosen
    devices or several processes."""
    folder = jax.config.jax_compilation_cache_dir
    if (not folder or os.environ.get("BAYES_UDE_PROGRAM_STORE", "1") == "0"
            or args.model.endswith(".py") or getattr(args, "devices", None)
            or jax.process_count() > 1):
        return None, None
    options = {k: repr(v) for k, v in vars(args).items() if k not in _OUTPUT_ONLY}
    return Path(folder) / "programs", run_key(options, pop)


def _predose_rows(pop) -> list[int]:
    """Data rows of observations with DV > 0 at or before their subject's first dose (not
    a steady-state dose): built-in models predict 0 there (a dose acts from the next
    instant on)."""
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


def _compile_ahead(args, model, pop, devices) -> threading.Thread | None:
    """A thread compiling the programs run after the fit (diagnostics, VPC, the curves of
    the figures) into the program store, started before the fit: XLA compiles them on
    the core the fit leaves idle (a cold run used 1.1 of 2), and the fit's result only
    decides their numbers, not their shapes. Only on a first run (an empty store): run
    again, the programs load from the store in milliseconds, and a second thread would
    only contend with the fit. A failure there costs nothing: the program is compiled
    when it runs."""
    store = active_store()
    if store is None or store.has_programs():
        return None
    model = model.specialised(pop)  # as the fit's result holds it
    devices = tuple(resolve_devices(devices))

    def work():
        try:
            if not args.no_plots:
                for dvid in plot_types(args, pop):
                    precompile_curves(model, pop, dvid)
            precompile_diagnostics(model, pop, devices, n_sim=500, n_vpc=500)
        except Exception:  # noqa: S110 (an optimisation only)
            pass

    thread = threading.Thread(target=work, name="bayes-ude-compile-ahead", daemon=True)
    thread.start()
    return thread


def fit_warnings(result) -> list[str]:
    """What summary.json's ``warnings`` must say about a maximum-likelihood fit besides a
    degenerate solution: no convergence, and parameters left without standard errors."""
    if result.interrupted:
        return []
    out = [] if result.converged else [f"not converged: {result.message}"]
    no_se = [k for k, v in result.se.items() if not np.isfinite(v) and k not in result.fixed]
    if no_se:
        out.append(f"no standard errors for {', '.join(no_se)}: the covariance step failed "
                   "(a flat or indefinite objective there; see the message on stderr)")
    return out


def _run_ml(args, pop, model, start, output: Output, notes: list[str],
            figures: Figures) -> int:
    """The maximum-likelihood branch: estimates, diagnostics, EBEs, VPC, plots."""
    with warnings.catch_warnings():
        # said below, once, in the command's words
        warnings.filterwarnings("ignore", message=r"NLME fit: .* degenerate solution")
        with devices_checked(args) as devices:
            ahead = _compile_ahead(args, model, pop, devices)
            result = fit(model, pop, args.method, max_iter=args.max_iter,
                         progress=not args.quiet, devices=devices)
    # There are estimates from here on: Ctrl-C skips what is left and keeps what exists.
    with sigint_deferred() as sigint:
        seconds = time.perf_counter() - start
        summary = result.summary()
        summary.update(seconds=seconds, fit_seconds=result.seconds, model=args.model,
                       error_model=args.error, data=str(args.data), warnings=list(notes),
                       options=fit_options(args), n_censored=n_censored(pop))
        reasons = summary["degenerate"]
        verb = "converged to" if result.converged else "stopped at"
        if reasons:
            summary["warnings"].append(f"{verb} a degenerate solution: "
                                       + "; ".join(reasons))
        summary["warnings"] += fit_warnings(result)
        table = result.table()
        output.save("estimates.csv", table.to_csv)
        if not args.quiet:
            with pd.option_context("display.float_format", "{:.4g}".format,
                                   "display.width", 160):
                print(table[PRINTED_COLUMNS].to_string())
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
    # The figures are drawn by the figure process as soon as their numbers are there,
    # while this one computes the next (tickets: finish_plots waits for them).
    tickets = {}
    plots = not args.no_plots

    def diagnostics():
        diag = result.diagnostics(n_sim=500, key=jax.random.key(args.seed))
        if plots:
            tickets.update(start_gof(figures, output, args, result, diag))
        output.save("diagnostics.csv", lambda path: diag.to_csv(path, index=False))
        kinds = sorted(diag["DVID"].unique().tolist())
        summary["epsilon_shrinkage"] = (  # one per observation type when there are several
            epsilon_shrinkage(diag) if len(kinds) == 1 else
            {f"DVID {d}": epsilon_shrinkage(diag, d) for d in kinds})
        output.save("sdtab.csv", lambda path: sdtab(result, diagnostics=diag).to_csv(
            path, index=False))

    def bootstrap():
        with devices_checked(args) as devices:
            boot = run_bootstrap(model, pop, args.method, n=args.bootstrap,
                                 key=jax.random.key(args.seed), start=result,
                                 max_iter=args.max_iter, progress=not args.quiet,
                                 devices=devices)
        output.save("bootstrap.csv", boot.replicates.to_csv)
        output.save("bootstrap_ci.csv", boot.ci().to_csv)
        summary["bootstrap"] = boot.summary()
        if not args.quiet:
            print(f"bootstrap: {int(boot.success.sum())} of {len(boot.replicates)} replicates "
                  f"succeeded ({boot.success_rate:.0%}), {boot.seconds:.1f} s")
        if boot.interrupted:
            raise KeyboardInterrupt

    def vpc():
        tables = vpc_tables(result, args)
        if plots:
            tickets.update(start_vpc(figures, output, args, result, tables))
        save_vpc(output, tables)

    with figures:  # stopped before the commit: no file appears after it
        output.write_stages(
            [("compiling the diagnostics", ahead.join if ahead else lambda: None)]
            + ([("individual fits", lambda: tickets.update(
                start_individual(figures, output, args, result)))] if plots else [])
            + [("diagnostics", diagnostics),
               ("individual parameters",
                lambda: output.save("ebe.csv", result.individual_parameters().to_csv)),
               ("vpc", vpc)]
            + ([("plots", lambda: finish_plots(figures, output, tickets))] if plots else [])
            + ([("bootstrap", bootstrap)] if args.bootstrap else []))
    late = output.commit(summary)
    output.report(args.quiet)
    if output.interrupted_at or late:
        return EXIT_INTERRUPTED
    return EXIT_DEGENERATE if reasons and not args.allow_degenerate else 0
