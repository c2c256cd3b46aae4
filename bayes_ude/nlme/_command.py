"""``bayes-ude pk fit``, its arguments: the parser and the checks that need no data.

Every option is checked here before any work (one-line errors naming the option); the run
itself is :mod:`._command_run` (maximum likelihood) and :mod:`._command_bayes` (NUTS,
SGLD). Output rules (docs/nlme.md, "From the command line"): results are written into a
temporary folder beside ``--out`` and renamed into place at the end, replacing the earlier
folder as a whole, so stale and new files never mix. Ctrl-C before there are results
(loading, compilation, the first iterations) writes nothing and leaves ``--out`` as it
was; Ctrl-C once there are estimates (or draws) skips what is left, writes what exists
and marks ``summary.json`` ``"status": "interrupted"``. Exit codes: 0 done, 1 a bad
option or data, 3 a degenerate maximum-likelihood solution (without
``--allow-degenerate``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from .._distributed import command_settings
from ._builtin import BUILTIN_MODELS, ERROR_MODELS
from ._covariate_terms import parse_covariate_terms
from ._output import OUTPUT_FILES

__all__ = ["add_pk_parser", "check_pk_args", "devices_checked", "parse_omega_prior"]

OMEGA_PRIORS = ("halfnormal", "halfcauchy")
DEFAULT_OMEGA_PRIOR = "halfnormal:1"  # Priors' default
SHIPPED = {"theophylline": "theophylline.csv", "warfarin": "warfarin_pkpd.csv",
           "phenobarbital": "phenobarbital.csv"}
#: The shipped data sets' units of TIME and DV (axis labels).
SHIPPED_UNITS = {"theophylline": ("h", "mg/L"), "warfarin": ("h", "mg/L"),
                 "phenobarbital": ("h", "µg/L")}
EXIT_DEGENERATE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shells' convention


def add_pk_parser(sub) -> None:
    pk = sub.add_parser("pk", help="population pharmacokinetics (NLME)")
    pk_sub = pk.add_subparsers(dest="pk_command", required=True)
    fit = pk_sub.add_parser(
        "fit", help="fit a population PK model to a NONMEM-style table",
        description="Fit a built-in population PK model, or one defined in a Python file, "
                    "(FO/FOCE/FOCEI/Laplace/LB, or Bayesian: NUTS/SGLD) to a NONMEM-style "
                    "CSV; print the estimate table "
                    "and write CSVs, plots, a JSON summary (and for NUTS/SGLD the "
                    "posterior as NetCDF). DATA is a CSV path or a shipped data set name "
                    f"({', '.join(SHIPPED)}).")
    fit.add_argument("data", help="CSV file (NONMEM columns) or a shipped data set name")
    fit.add_argument("--model", default="oral1cmt", metavar="NAME|FILE.py",
                     help=f"a built-in model ({', '.join(BUILTIN_MODELS)}; default "
                          "%(default)s) or a Python file defining `model`, a "
                          "PopulationModel or a function of the data returning one "
                          "(docs/nlme.md, \"Models in your own file\")")
    fit.add_argument("--method", default="focei",
                     choices=["fo", "foce", "focei", "laplace", "lb", "nuts", "sgld"],
                     help="estimation method: maximum likelihood (fo, foce, focei, laplace; "
                          "lb: Lindstrom-Bates, as R's nlme) or Bayesian (nuts; sgld: "
                          "minibatches of subjects) (default: %(default)s)")
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
    fit.add_argument("--error", default=None, choices=list(ERROR_MODELS),
                     help="residual error model of a built-in model (default: additive)")
    fit.add_argument("--covariate", default=None, metavar="TERMS",
                     help="covariate effects, comma-separated PARAMETER~COLUMN[:FORM[:REF]] "
                          "with FORM power (default), linear, exponential or categorical, "
                          "centred on the median (categorical: the most frequent level) "
                          "unless REF is given, e.g. \"cl~WT:power,v~WT:power,"
                          "cl~SEX:categorical\"; fixed effects named cl_WT, cl_SEX_2, ...")
    fit.add_argument("--omega", default=None, metavar="diagonal|block|BLOCKS",
                     help="between-subject covariance: diagonal (default), block (all "
                          "random effects correlated) or blocks of parameters, e.g. "
                          "\"cl,v;ka\" (cl and v correlated, ka alone)")
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
    fit.add_argument("--log", action="store_true",
                     help="plots: DV on a log axis (VPC, individual fits)")
    fit.add_argument("--time-unit", default=None, metavar="UNIT",
                     help="plots: unit of TIME for the axis labels (shipped data: known)")
    fit.add_argument("--dv-unit", default=None, metavar="UNIT",
                     help="plots: unit of DV for the axis labels (shipped data: known)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or table")


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


def parse_omega_prior(text: str) -> tuple[str, float]:
    """``"halfnormal:1"`` -> ``("halfnormal", 1.0)``; anything else is the option's error."""
    name, _, scale = text.partition(":")
    name = name.strip().lower()
    try:
        value = float(scale)
    except ValueError:
        value = float("nan")
    if name not in OMEGA_PRIORS or not value > 0 or value == float("inf"):
        _fail(f"--omega-prior must be DIST:SCALE with DIST one of {', '.join(OMEGA_PRIORS)} "
              f"and SCALE a positive number (e.g. halfcauchy:0.1), got {text!r}")
    return name, value


def parse_omega(text: str):
    """``--omega``: ``"diagonal"``, ``"block"`` or blocks ``"cl,v;ka"`` -> what
    :func:`builtin_model` takes."""
    text = text.strip()
    if text.lower() in ("diagonal", "block", "full"):
        return text.lower()
    blocks = [[p.strip() for p in b.split(",") if p.strip()] for b in text.split(";")]
    if not all(blocks) or not all(p.isidentifier() for b in blocks for p in b):
        _fail(f"--omega must be diagonal, block or blocks of parameter names such as "
              f"\"cl,v;ka\", got {text!r}")
    return blocks


def _check_model_args(args: argparse.Namespace) -> None:
    """``--model`` a built-in name or a .py file; the built-in models' options only with
    them (a file says all of it); fills the built-in defaults."""
    builtin_only = {"--error": args.error, "--omega": args.omega, "--eta": args.eta,
                    "--covariate": args.covariate, "--allometric": args.allometric}
    if args.model.endswith(".py"):
        given = [k for k, v in builtin_only.items() if v is not None]
        if given:
            _fail(f"{', '.join(given)}: options of the built-in models; the model file "
                  f"{args.model!r} defines its own")
        if not Path(args.model).is_file():
            _fail(f"--model: no such file {args.model!r}")
        return
    if args.model not in BUILTIN_MODELS:
        _fail(f"--model must be a built-in model ({', '.join(BUILTIN_MODELS)}) or a Python "
              f"file ending in .py, got {args.model!r}")
    args.error = args.error or "additive"
    args.omega = args.omega or "diagonal"
    if args.covariate is not None:
        try:
            parse_covariate_terms(args.covariate)
        except ValueError as err:
            _fail(f"--covariate: {err}")
    parse_omega(args.omega)


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
    command_settings(args)  # --coordinator, --num-processes, --process-id
    _check_model_args(args)
    if args.omega_prior is not None:
        if args.method not in ("nuts", "sgld"):
            _fail(f"--omega-prior is a prior, for --method nuts or sgld; {args.method} is "
                  "maximum likelihood")
        parse_omega_prior(args.omega_prior)
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


@contextlib.contextmanager
def devices_checked(args):
    """``--devices`` as ``fit`` takes it; more devices than this process has: the
    command's one-line error (the count is only known once JAX has started)."""
    devices = getattr(args, "devices", None)
    try:
        yield int(devices) if devices and devices.isdigit() else devices
    except ValueError as err:
        if devices is None or "local device" not in str(err):
            raise
        raise SystemExit(f"bayes-ude pk fit: --devices {devices}: {err}") from None
