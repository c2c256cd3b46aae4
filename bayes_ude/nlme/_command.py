"""``bayes-ude pk fit``, its arguments: the checks that need no data, and the constants.

The parser is :mod:`._command_parser`. Every option is checked here before any work
(one-line errors naming the option); the run
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
from ._builtin import BUILTIN_MODELS
from ._covariate_terms import parse_covariate_terms
from ._output import OUTPUT_FILES

__all__ = ["check_pk_args", "command_name", "devices_checked", "fail", "parse_omega",
           "parse_omega_prior"]

OMEGA_PRIORS = ("halfnormal", "halfcauchy")
DEFAULT_OMEGA_PRIOR = "halfnormal:1"  # Priors' default
#: `pk fit`'s defaults of the options some methods do not use (the parser's, and what
#: _check_fit_args compares with to refuse an option the method would ignore)
FIT_DEFAULTS = {"max_iter": 500, "chains": 4, "warmup": 1000, "samples": 1000}
SHIPPED = {"theophylline": "theophylline.csv", "warfarin": "warfarin_pkpd.csv",
           "phenobarbital": "phenobarbital.csv"}
#: The shipped data sets' units of TIME and DV (axis labels).
SHIPPED_UNITS = {"theophylline": ("h", "mg/L"), "warfarin": ("h", {1: "mg/L", 2: "%"}),
                 "phenobarbital": ("h", "µg/L")}
#: Models of the command beyond the built-in compartment models, each with its own
#: parameters, random effects and error models (the built-in models' options are refused).
OTHER_MODELS = {"warfarin_pkpd": "warfarin's joint PK (DVID 1) / PCA (DVID 2) model "
                                 "(nlme.warfarin_pkpd_model, Emax drug effect)"}
EXIT_DEGENERATE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shells' convention




_PROG = {"name": "bayes-ude pk fit"}  # the command in the messages (set by check_pk_args)


def command_name() -> str:
    """``bayes-ude pk fit`` (or ``simulate``, ``compare``): how messages start."""
    return _PROG["name"]


def fail(message: str):
    """The command's one-line error (exit status 1)."""
    raise SystemExit(f"{command_name()}: {message}")


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
        fail(f"{option} {str(given)!r}: {folder} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bayes-ude-probe-", dir=folder))
    except OSError as err:
        fail(f"{option} {str(given)!r}: cannot write in {folder} ({err.strerror})")


def parse_omega_prior(text: str) -> tuple[str, float]:
    """``"halfnormal:1"`` -> ``("halfnormal", 1.0)``; anything else is the option's error."""
    name, _, scale = text.partition(":")
    name = name.strip().lower()
    try:
        value = float(scale)
    except ValueError:
        value = float("nan")
    if name not in OMEGA_PRIORS or not value > 0 or value == float("inf"):
        fail(f"--omega-prior must be DIST:SCALE with DIST one of {', '.join(OMEGA_PRIORS)} "
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
        fail(f"--omega must be diagonal, block or blocks of parameter names such as "
              f"\"cl,v;ka\", got {text!r}")
    return blocks


def _check_model_args(args: argparse.Namespace) -> None:
    """``--model`` a built-in name or a .py file; the built-in models' options only with
    them (a file says all of it); fills the built-in defaults."""
    builtin_only = {"--error": args.error, "--omega": args.omega, "--eta": args.eta,
                    "--covariate": args.covariate, "--allometric": args.allometric,
                    "--iov": args.iov, "--occasion": args.occasion}
    if args.model.endswith(".py") or args.model in OTHER_MODELS:
        given = [k for k, v in builtin_only.items() if v is not None]
        what = ("the model file" if args.model.endswith(".py") else "the model")
        if given:
            fail(f"{', '.join(given)}: options of the built-in models; {what} "
                  f"{args.model!r} defines its own")
        if args.model.endswith(".py") and not Path(args.model).is_file():
            fail(f"--model: no such file {args.model!r}")
        return
    if args.model not in BUILTIN_MODELS:
        fail(f"--model must be a built-in model ({', '.join([*BUILTIN_MODELS, *OTHER_MODELS])})"
              f" or a Python file ending in .py, got {args.model!r}")
    args.error = args.error or "additive"
    args.omega = args.omega or "diagonal"
    if args.occasion is not None and args.iov is None:
        fail("--occasion names the occasion column for --iov; give --iov too")
    if args.covariate is not None:
        try:
            parse_covariate_terms(args.covariate)
        except ValueError as err:
            fail(f"--covariate: {err}")
    parse_omega(args.omega)


def check_pk_args(args: argparse.Namespace) -> None:
    """Check the options of ``pk fit|simulate|compare`` that need no data, before any work
    (one-line errors naming the option)."""
    _PROG["name"] = f"bayes-ude pk {args.pk_command}"
    {"fit": _check_fit_args, "simulate": _check_simulate_args,
     "compare": _check_compare_args}[args.pk_command](args)


def _check_fit_args(args: argparse.Namespace) -> None:
    if args.max_iter < 1:
        fail(f"--max-iter must be >= 1, got {args.max_iter}")
    for name in ("chains", "warmup", "samples"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.bootstrap is not None:
        if args.bootstrap < 2:
            fail(f"--bootstrap must be >= 2 replicates, got {args.bootstrap}")
        if args.method in ("lb", "nuts", "sgld"):
            fail(f"--bootstrap refits by maximum likelihood (fo, foce, focei, laplace); "
                  f"--method {args.method} is not one of them")
    # options the method would ignore (checked against the parser's defaults)
    ignored = {"nuts": (), "sgld": ("warmup", "max_iter")}.get(
        args.method, ("chains", "warmup", "samples"))
    given = [f"--{name.replace('_', '-')}" for name in ignored
             if getattr(args, name) != FIT_DEFAULTS[name]]
    if given:
        fail(f"{', '.join(given)}: --method {args.method} does not use "
             f"{'it' if len(given) == 1 else 'them'}")
    devices = getattr(args, "devices", None)
    if devices is not None:
        if devices != "all" and not (devices.isdigit() and int(devices) >= 1):
            fail(f"--devices must be 'all' or a count >= 1, got {devices!r}")
    command_settings(args)  # --coordinator, --num-processes, --process-id
    _check_model_args(args)
    if args.omega_prior is not None:
        if args.method not in ("nuts", "sgld"):
            fail(f"--omega-prior is a prior, for --method nuts or sgld; {args.method} is "
                  "maximum likelihood")
        parse_omega_prior(args.omega_prior)
    if args.random_effects != "auto" and args.method != "nuts":
        fail(f"--random-effects is a NUTS setting (--method nuts); --method {args.method} "
             "does not sample the random effects")
    _check_out(args.out, args.json)


def _check_out(out: Path, json_copy: Path | None) -> None:
    """``--out`` (a folder, replaced as a whole) and ``--json`` can be written."""
    if out.exists() and not out.is_dir():
        fail(f"--out {str(out)!r} is an existing file; --out names a folder")
    if out.is_dir():
        ours = set(OUTPUT_FILES)
        if json_copy is not None and _same_folder(json_copy.parent, out):
            ours.add(json_copy.name)  # a --json copy kept inside --out is ours too
        try:
            foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        except OSError as err:
            fail(f"--out {str(out)!r}: cannot read the folder ({err.strerror})")
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            fail(f"--out {str(out)!r} exists and holds files bayes-ude does not write "
                  f"({shown}); the folder is replaced as a whole, so name a new folder or "
                  f"one an earlier run wrote")
    _probe(_nearest_existing(Path(os.path.abspath(out)).parent), "--out", out)
    if json_copy is not None:
        if json_copy.is_dir():
            fail(f"--json {str(json_copy)!r} is a folder; --json names a file")
        _probe(_nearest_existing(Path(os.path.abspath(json_copy)).parent), "--json",
               json_copy)


def _check_fit_dir(folder: Path, what: str = "FIT_DIR") -> None:
    if not (folder / "summary.json").is_file():
        fail(f"{what} {str(folder)!r} is not the --out folder of a `bayes-ude pk fit` run "
              "(it has no summary.json)")


def parse_doses(text: str) -> list[tuple]:
    """``--doses "0:100,12:100:1,24:50:2:25"`` -> ``[(time, amt[, cmt[, rate]]), ...]``."""
    doses = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        try:
            values = [float(v) for v in item.split(":")]
        except ValueError:
            values = []
        if not 2 <= len(values) <= 4 or values[1] <= 0:
            fail(f"--doses: {item!r} is not TIME:AMT[:CMT[:RATE]] with AMT > 0, e.g. 0:100")
        if len(values) > 2:
            values[2] = int(values[2])
        doses.append(tuple(values))
    if not doses:
        fail(f"--doses: no dose in {text!r}")
    return doses


def parse_times(text: str) -> list[float]:
    try:
        times = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        times = []
    if not times:
        fail(f"--times must be comma-separated numbers, got {text!r}")
    return times


def _check_simulate_args(args: argparse.Namespace) -> None:
    _check_fit_dir(args.fit_dir)
    if args.n < 1:
        fail(f"--n must be >= 1, got {args.n}")
    if args.subjects is not None and args.subjects < 1:
        fail(f"--subjects must be >= 1, got {args.subjects}")
    if (args.doses is None) != (args.times is None):
        fail("--doses and --times go together (a new regimen needs both)")
    if args.doses is not None:
        parse_doses(args.doses)
        parse_times(args.times)
    elif args.subjects is not None:
        fail("--subjects sizes a new regimen (--doses, --times); without one the fitted "
              "data's subjects are simulated")
    if _same_folder(args.out, args.fit_dir):
        fail(f"--out {str(args.out)!r} is the fit folder FIT_DIR: --out is replaced as a "
             "whole, which would delete the fit; name another folder")
    _check_out(args.out, None)


def parse_nested(text: str | None) -> list[tuple[str, str]] | None:
    if text is None:
        return None
    pairs = [tuple(p.strip() for p in item.split(":")) for item in text.split(",")
             if item.strip()]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        fail(f"--nested must be REDUCED:FULL pairs of folder names, got {text!r}")
    return pairs


def _check_compare_args(args: argparse.Namespace) -> None:
    if len(args.fit_dirs) < 2:
        fail("compare needs two or more FIT_DIR folders")
    for folder in args.fit_dirs:
        _check_fit_dir(folder)
    names = [f.resolve().name for f in args.fit_dirs]
    for pair in parse_nested(args.nested) or ():
        unknown = [n for n in pair if n not in names]
        if unknown:
            fail(f"--nested names {unknown}, not among the folders ({', '.join(names)})")


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
