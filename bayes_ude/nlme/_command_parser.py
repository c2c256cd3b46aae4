"""``bayes-ude pk``: the argument parser (``pk fit``), its options in groups.

What the options mean for the run, and the checks that need no data, are in
:mod:`._command`.
"""

from __future__ import annotations

from pathlib import Path

from ._builtin import BUILTIN_MODELS, ERROR_MODELS
from ._command import DEFAULT_OMEGA_PRIOR, FIT_DEFAULTS, SHIPPED

__all__ = ["add_pk_parser"]


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
    _model_options(fit.add_argument_group("model"))
    _estimation_options(fit.add_argument_group("estimation"))
    _bayes_options(fit.add_argument_group("Bayesian (--method nuts, sgld)"))
    _data_options(fit.add_argument_group("data"))
    _output_options(fit.add_argument_group("output and plots"))
    _process_options(fit)
    _simulate_parser(pk_sub)
    _compare_parser(pk_sub)


def _simulate_parser(pk_sub) -> None:
    sim = pk_sub.add_parser(
        "simulate", help="simulate from a fit (its --out folder), on its data or a new regimen",
        description="Simulate N replicates from the fitted model of a `pk fit` folder: new "
                    "random effects and residual errors, at the estimates (Bayesian fits: "
                    "the posterior medians). Without --doses on the fitted data's design; "
                    "with --doses and --times on a new regimen, subjects' covariates drawn "
                    "from the fitted data. Writes simtab.csv (REP ID TIME PRED DV), "
                    "simulation.png (median and 90 %% interval over time) and "
                    "summary.json.")
    sim.add_argument("fit_dir", type=Path, metavar="FIT_DIR",
                     help="the --out folder of a `bayes-ude pk fit` run")
    sim.add_argument("--n", type=int, default=500, help="replicates (default 500)")
    sim.add_argument("--doses", default=None, metavar="TIME:AMT[:CMT[:RATE]],...",
                     help="a new regimen, e.g. \"0:100,12:100\" (CMT: the model's dosing "
                          "compartment if left out; RATE > 0: an infusion)")
    sim.add_argument("--times", default=None, metavar="T,T,...",
                     help="observation times of the new regimen (required with --doses)")
    sim.add_argument("--subjects", type=int, default=None,
                     help="subjects per replicate of the new regimen (default: as many as "
                          "the fitted data)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--out", type=Path, default=Path("bayes_ude_simulation"),
                     help="folder for simtab.csv, simulation.png and summary.json, replaced "
                          "as a whole (default: %(default)s)")
    sim.add_argument("--log", action="store_true", help="simulation.png: DV on a log axis")
    sim.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _compare_parser(pk_sub) -> None:
    cmp = pk_sub.add_parser(
        "compare", help="compare fits of the same data (OFV, AIC, BIC, likelihood-ratio tests)",
        description="Compare maximum-likelihood fits of the same data, each the --out folder "
                    "of a `pk fit` run: OFV, dOFV, parameters, AIC, BIC, and the "
                    "likelihood-ratio test of nested models (chi-square, df = the difference "
                    "in estimated parameters).")
    cmp.add_argument("fit_dirs", type=Path, nargs="+", metavar="FIT_DIR",
                     help="two or more --out folders of `bayes-ude pk fit`")
    cmp.add_argument("--nested", default=None, metavar="REDUCED:FULL,...",
                     help="the nested pairs to test, by folder name (default: inferred: "
                          "same method, parameter names a proper subset)")
    cmp.add_argument("--csv", type=Path, default=None, metavar="FILE",
                     help="also write the table (and FILE with _tests before .csv, the tests)")


def _model_options(group) -> None:
    group.add_argument("--model", default="oral1cmt", metavar="NAME|FILE.py",
                       help=f"a built-in model ({', '.join(BUILTIN_MODELS)}; default "
                            "%(default)s), warfarin_pkpd (the joint PK/PD model of the "
                            "warfarin data, both DVIDs), or a Python file defining `model`, a "
                            "PopulationModel or a function of the data returning one "
                            "(docs/nlme.md, \"Models in your own file\")")
    group.add_argument("--eta", default=None,
                       help="comma-separated parameters with between-subject variability "
                            "(default: ka,cl,v where the model has them)")
    group.add_argument("--error", default=None, choices=list(ERROR_MODELS),
                       help="residual error model of a built-in model (default: additive)")
    group.add_argument("--covariate", default=None, metavar="TERMS",
                       help="covariate effects, comma-separated PARAMETER~COLUMN[:FORM[:REF]] "
                            "with FORM power (default), linear, exponential or categorical, "
                            "centred on the median (categorical: the most frequent level) "
                            "unless REF is given, e.g. \"cl~WT:power,v~WT:power,"
                            "cl~SEX:categorical\"; fixed effects named cl_WT, cl_SEX_2, ...")
    group.add_argument("--omega", default=None, metavar="diagonal|block|BLOCKS",
                       help="between-subject covariance: diagonal (default), block (all "
                            "random effects correlated) or blocks of parameters, e.g. "
                            "\"cl,v;ka\" (cl and v correlated, ka alone)")
    group.add_argument("--iov", default=None, metavar="PARAMS",
                       help="comma-separated parameters with inter-occasion variability "
                            "(e.g. cl,ka): a random effect per occasion of the --occasion "
                            "column, estimated as one variance per parameter")
    group.add_argument("--occasion", default=None, metavar="COLUMN",
                       help="the column that numbers the occasions, for --iov (default OCC)")
    group.add_argument("--dvid", type=int, default=None,
                       help="use only observations of this DVID (e.g. 1 = PK in warfarin)")
    group.add_argument("--allometric", metavar="WT", default=None,
                       help="weight column for allometric scaling of CL, Q (0.75) and V (1)")


def _estimation_options(group) -> None:
    group.add_argument("--method", default="focei",
                       choices=["fo", "foce", "focei", "laplace", "lb", "nuts", "sgld"],
                       help="estimation method: maximum likelihood (fo, foce, focei, laplace; "
                            "lb: Lindstrom-Bates, as R's nlme) or Bayesian (nuts; sgld: "
                            "minibatches of subjects) (default: %(default)s)")
    group.add_argument("--max-iter", type=int, default=FIT_DEFAULTS["max_iter"],
                       help="outer iterations, >= 1 (default %(default)s)")
    group.add_argument("--bootstrap", type=int, default=None, metavar="N",
                       help="maximum likelihood: a nonparametric bootstrap of N replicates "
                            "(subjects resampled, refitted together; percentile 95 %% "
                            "intervals in bootstrap_ci.csv, every replicate in "
                            "bootstrap.csv)")
    group.add_argument("--allow-degenerate", action="store_true",
                       help="exit 0 even when the maximum-likelihood estimates are degenerate "
                            "(run-away values; exit code 3 otherwise)")


def _bayes_options(group) -> None:
    group.add_argument("--chains", type=int, default=FIT_DEFAULTS["chains"],
                       help="Bayesian: chains (default %(default)s)")
    group.add_argument("--warmup", type=int, default=FIT_DEFAULTS["warmup"],
                       help="NUTS: warmup draws per chain (default %(default)s)")
    group.add_argument("--samples", type=int, default=FIT_DEFAULTS["samples"],
                       help="NUTS: draws per chain (default %(default)s); SGLD: steps per "
                            "chain are 4x this")
    group.add_argument("--seed", type=int, default=0,
                       help="random seed of the sampler, the bootstrap and the VPC and NPDE "
                            "simulations (default 0)")
    group.add_argument("--random-effects", default="auto",
                       choices=("auto", "centred", "noncentred"),
                       help="NUTS: sample the random effects centred (informative data, "
                            "little shrinkage), non-centred (sparse data), or choose per "
                            "effect from the data's information at the maximum-likelihood "
                            "fit (auto, default; every effect centred also makes the metric "
                            "dense); docs/bayes_nlme.md")
    group.add_argument("--omega-prior", default=None, metavar="DIST:SCALE",
                       help="Bayesian: prior of each between-subject SD (log-scale "
                            "parameters), halfnormal:SCALE or halfcauchy:SCALE (default: "
                            f"{DEFAULT_OMEGA_PRIOR}; see docs/bayes_nlme.md on prior "
                            "sensitivity)")


def _data_options(group) -> None:
    group.add_argument("--drop", metavar="COL[,COL]", default=None,
                       help="columns of the data to ignore (e.g. a text column that is not a "
                            "covariate, or a BLQ/CENS column to fit flagged values as given)")
    group.add_argument("--covariates", metavar="COL[,COL]", default=None,
                       help="the covariate columns to read (default: every column that is "
                            "not a NONMEM item); other extra columns are ignored")
    group.add_argument("--character-ids", action="store_true",
                       help="IDs are text (e.g. A01): subjects are numbered in order of "
                            "appearance and the tables show the text")


def _output_options(group) -> None:
    group.add_argument("--out", type=Path, default=Path("bayes_ude_output"),
                       help="folder for tables, plots and summary.json, replaced as a whole "
                            "when the run ends (an existing folder may hold only files "
                            "bayes-ude writes); Ctrl-C before there are results leaves it as "
                            "it was (default: %(default)s)")
    group.add_argument("--json", type=Path, default=None,
                       help="also write the summary to this file")
    group.add_argument("--no-plots", action="store_true", help="write tables only")
    group.add_argument("--log", action="store_true",
                       help="plots: DV on a log axis (VPC, individual fits)")
    group.add_argument("--time-unit", default=None, metavar="UNIT",
                       help="plots: unit of TIME for the axis labels (shipped data: known)")
    group.add_argument("--dv-unit", default=None, metavar="UNIT",
                       help="plots: unit of DV for the axis labels (shipped data: known)")
    group.add_argument("--quiet", action="store_true", help="no progress bar or table")


def _process_options(fit) -> None:
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
