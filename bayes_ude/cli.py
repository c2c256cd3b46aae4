"""The ``bayes-ude`` command.

``bayes-ude pk fit DATA``: a population PK model fitted to a NONMEM-style table (the main
job; see :mod:`bayes_ude.nlme`). ``bayes-ude demo``: the Lotka--Volterra model of the Stan
case study fitted (MAP) to the Hudson's Bay lynx--hare pelts.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "run"]

#: the exit code when stdout's reader went away: 128 + SIGPIPE, as a shell reports it
EXIT_BROKEN_PIPE = 141


def _lynx_hare_map(out: Path | None, quiet: bool = False) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.scipy.stats import norm
    from scipy.optimize import minimize

    from . import datasets, solvers

    df = datasets.load_lynx_hare()
    y = jnp.asarray(df[["Hare", "Lynx"]].to_numpy())  # prey first, as in the case study
    ts = jnp.arange(0.0, float(len(df)))  # years since 1900

    def lotka_volterra(t, u, theta):
        alpha, beta, gamma, delta = theta
        return jnp.stack([(alpha - beta * u[1]) * u[0], (-gamma + delta * u[0]) * u[1]])

    def unpack(x):
        return jnp.exp(x[:4]), jnp.exp(x[4:6]), jnp.exp(x[6:8])

    def log_posterior(x):
        theta, z0, sigma = unpack(x)
        sol = solvers.solve(lotka_volterra, z0, ts, theta, rtol=1e-8, atol=1e-8)
        z = solvers.sanitize(sol)
        # Stan case study: log-normal measurement error, weakly informative priors.
        loglik = jnp.sum(norm.logpdf(jnp.log(y), jnp.log(z), sigma))
        logprior = (
            jnp.sum(norm.logpdf(theta[jnp.array([0, 2])], 1.0, 0.5))
            + jnp.sum(norm.logpdf(theta[jnp.array([1, 3])], 0.05, 0.05))
            + jnp.sum(norm.logpdf(jnp.log(z0), jnp.log(10.0), 1.0))
            + jnp.sum(norm.logpdf(jnp.log(sigma), -1.0, 1.0))
        )
        return loglik + logprior + solvers.log_density_penalty(sol)

    value_and_grad = jax.jit(jax.value_and_grad(lambda x: -log_posterior(x)))
    # LV likelihoods have local optima (fits with the wrong period): start L-BFGS-B from a
    # small grid around the prior means and keep the best optimum.
    grid = itertools.product((0.5, 1.0), (0.025, 0.05), (0.5, 1.0), (0.025, 0.05))
    starts = [np.log(np.array([a, b, g, d, 30.0, 4.0, 0.25, 0.25])) for a, b, g, d in grid]
    start = time.perf_counter()
    value_and_grad(jnp.asarray(starts[0]))[0].block_until_ready()
    compile_s = time.perf_counter() - start

    def fun(x):
        v, g = value_and_grad(jnp.asarray(x))
        v = float(v)
        return (v, np.asarray(g)) if np.isfinite(v) else (1e30, np.zeros_like(x))

    start = time.perf_counter()
    fits = [minimize(fun, x0, jac=True, method="L-BFGS-B") for x0 in starts]
    res = min(fits, key=lambda r: r.fun)
    fit_s = time.perf_counter() - start
    theta, z0, sigma = (np.asarray(v) for v in unpack(jnp.asarray(res.x)))
    sol = solvers.solve(lotka_volterra, jnp.asarray(z0), ts, jnp.asarray(theta))
    rmse = np.sqrt(np.mean((np.log(np.asarray(sol.ys)) - np.log(np.asarray(y))) ** 2, axis=0))
    result = {
        "alpha": theta[0], "beta": theta[1], "gamma": theta[2], "delta": theta[3],
        "z0_hare": z0[0], "z0_lynx": z0[1], "sigma_hare": sigma[0], "sigma_lynx": sigma[1],
        "rmse_log_hare": rmse[0], "rmse_log_lynx": rmse[1],
        "iterations": res.nit, "starts": len(starts), "compile_s": compile_s, "fit_s": fit_s,
        "converged": bool(res.success),
    }
    if not quiet:
        # Posterior means reported by the Stan case study, for comparison (a MAP is not a
        # posterior mean, but they should be close for this well-identified model).
        stan = {"alpha": 0.55, "beta": 0.028, "gamma": 0.80, "delta": 0.024}
        print("Lotka-Volterra fit to the Hudson's Bay lynx-hare pelts (1900-1920), MAP")
        print(f"{'parameter':<12}{'MAP':>10}{'Stan post. mean':>18}")
        for k in ("alpha", "beta", "gamma", "delta"):
            print(f"{k:<12}{result[k]:>10.4f}{stan[k]:>18.3f}")
        for k in ("z0_hare", "z0_lynx", "sigma_hare", "sigma_lynx"):
            print(f"{k:<12}{result[k]:>10.4f}")
        print(f"RMSE of log counts: hare {rmse[0]:.3f}, lynx {rmse[1]:.3f}")
        print(f"L-BFGS-B from {len(starts)} starts; best: {res.nit} iterations, "
              f"converged={res.success}; compile {compile_s:.2f} s, fit {fit_s:.2f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        dense = jnp.linspace(0.0, ts[-1], 400)
        fine = solvers.solve(lotka_volterra, jnp.asarray(z0), dense, jnp.asarray(theta))
        fig, ax = plt.subplots(figsize=(7, 4))
        years = 1900 + np.asarray(dense)
        for i, (name, color) in enumerate((("Hare", "tab:blue"), ("Lynx", "tab:red"))):
            ax.plot(1900 + np.asarray(ts), np.asarray(y[:, i]), "o", color=color, label=name)
            ax.plot(years, np.asarray(fine.ys[:, i]), "-", color=color)
        ax.set_xlabel("year")
        ax.set_ylabel("pelts (thousands)")
        ax.set_title("Lotka-Volterra MAP fit")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "lynx_hare_fit.png", dpi=120)
        plt.close(fig)
        with open(out / "lynx_hare_map.csv", "w") as fh:
            fh.write("name,value\n")
            for k, v in result.items():
                fh.write(f"{k},{v}\n")
        if not quiet:
            print(f"wrote {out / 'lynx_hare_fit.png'} and {out / 'lynx_hare_map.csv'}")
    return result


def _compilation_cache() -> None:
    """Keep compiled programs on disk between runs of the command (JAX's persistent
    compilation cache): the first run on a machine compiles, later runs load. Folder:
    ``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/bayes_ude/jax`` (default
    ``~/.cache/bayes_ude/jax``); ``BAYES_UDE_COMPILATION_CACHE=0`` turns it off."""
    import os

    if os.environ.get("BAYES_UDE_COMPILATION_CACHE", "1") == "0":
        return
    import jax

    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bayes_ude" / "jax")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", folder)
    # every program, not only those over a second (JAX's default): a quickly compiled
    # one (bayes_ude._compile) takes 0.1-1 s, and the second run should load them all
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bayes-ude", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"bayes-ude {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit Lotka-Volterra to the shipped lynx-hare data")
    demo.add_argument("--out", type=Path, default=Path("bayes_ude_output"),
                      help="folder for the plot and the estimate table (default: %(default)s)")
    demo.add_argument("--no-files", action="store_true", help="print only, write nothing")
    sub.add_parser("datasets", help="list the shipped data sets")
    from .nlme._command import EXIT_INTERRUPTED, check_pk_args
    from .nlme._command_parser import add_pk_parser

    add_pk_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "pk":
            check_pk_args(args)  # bad options fail before JAX is even imported
        if args.command in ("pk", "demo"):
            _compilation_cache()
        if args.command == "pk" and args.pk_command == "fit":
            from .nlme._command_run import run_pk_fit

            return run_pk_fit(args)
        if args.command == "pk":
            from .nlme import _command_post

            run = {"simulate": _command_post.run_pk_simulate,
                   "compare": _command_post.run_pk_compare}[args.pk_command]
            return run(args)
        if args.command == "demo":
            _lynx_hare_map(None if args.no_files else args.out)
    except KeyboardInterrupt:
        # Ctrl-C where no command handles it (importing, loading): no traceback
        print("bayes-ude: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.command == "datasets":
        from . import datasets

        for name, fn in (("theophylline", datasets.load_theophylline),
                         ("theophylline (NONMEM)", datasets.load_theophylline_nonmem),
                         ("warfarin", datasets.load_warfarin),
                         ("phenobarbital", datasets.load_phenobarbital),
                         ("lynx_hare", datasets.load_lynx_hare)):
            df = fn()
            print(f"{name:<22}{len(df):>5} rows  columns: {', '.join(df.columns)}")
    return 0


def run() -> None:
    """The ``bayes-ude`` program (``python -m bayes_ude.cli``): :func:`main`, then a quick
    exit. When it returns, every result is written (the output folder is committed, its
    files closed). Python's own clean-up of the modules at exit (JAX, XLA, pandas) takes
    0.3-0.5 s and does nothing anyone needs, so after the exit handlers (``atexit``: the
    distributed run's shutdown, temporary folders) and the flush of stdout and stderr the
    process ends at once. An error (``SystemExit``, an exception) leaves the usual way; a
    reader that stopped reading (``bayes-ude datasets | head -1``) ends it quietly, with
    the shell's code for that (141)."""
    try:
        code = main()
    except BrokenPipeError:
        # the rest of the output goes nowhere, as Python's documentation advises
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    if not isinstance(code, int):  # None or a message: as sys.exit says
        sys.exit(code)
    getattr(atexit, "_run_exitfuncs", lambda: None)()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
