"""``bayes-ude pk``: the data and the model a command runs on, and what ``summary.json``
records of them, so that ``pk simulate`` can rebuild a fit's model on its data."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .. import datasets
from ._builtin import builtin_model
from ._command import SHIPPED, command_name, fail, parse_omega
from ._data import NonmemDataError, NonmemDataWarning
from ._data_text import describe_dvids
from ._model_file import load_model_file
from ._read import read_nonmem

__all__ = ["RECORDED", "build_model", "fit_options", "load_data", "n_censored"]

#: What ``summary.json`` records of the options (``pk simulate`` rebuilds the model from it).
RECORDED = ("data", "model", "error", "eta", "covariate", "omega", "iov", "occasion",
            "allometric", "dvid", "drop", "covariates", "character_ids", "method")


def fit_options(args: argparse.Namespace) -> dict:
    """The options that say which data and which model a fit used (``summary.json``)."""
    options = {k: getattr(args, k, None) for k in RECORDED}
    if str(options["model"]).endswith(".py"):
        options["model"] = str(Path(options["model"]).resolve())
    if options["data"] not in SHIPPED:
        options["data"] = str(Path(options["data"]).resolve())
    return options


def n_censored(pop) -> int:
    """Observations below the limit of quantification (fitted by M3)."""
    return int(np.isfinite(np.asarray(pop.obs_lloq)).sum())


def load_data(args) -> tuple:
    """The data as ``args`` say (``--drop``, ``--covariates``, ``--character-ids``,
    ``--dvid``) and the reader's warnings; a bad table is the command's error."""
    notes: list[str] = []
    try:
        pop = _load(args.data, args, notes)
    except NonmemDataError as err:
        fail(f"the data table has problems:\n{err}")
    if args.dvid is not None:
        try:
            pop = pop.select_dvid(args.dvid)
        except ValueError as err:
            fail(str(err))
    return pop, notes


def build_model(args, pop, messages: list[str] | None = None):
    """The model ``--model`` names (a built-in one with its options, warfarin_pkpd, or a
    file's); a model that does not fit the data is the command's error, and its warnings
    about the data are printed like the reader's (and appended to ``messages``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonmemDataWarning)
        model = _build_model(args, pop)
    _say(caught, messages)
    return model


def _build_model(args, pop):
    try:
        if args.model.endswith(".py"):
            model = load_model_file(args.model, pop)
            model.check(pop)
            return model
        if args.model == "warfarin_pkpd":
            from ._warfarin import warfarin_pkpd_model  # an ODE model: loads diffrax

            return warfarin_pkpd_model(pop)
        kinds = pop.observed_dvids()
        if len(kinds) > 1:  # (--dvid has kept one)
            fail(f"the data hold {len(kinds)} kinds of observation, DVID "
                 f"{describe_dvids(kinds)}; model {args.model} predicts one quantity and "
                 f"would fit them all as it: choose one with --dvid (e.g. --dvid "
                 f"{next(iter(kinds))}), or fit them together with a model that describes "
                 f"each (--model warfarin_pkpd for warfarin, or a model file)")
        iov = getattr(args, "iov", None)  # summaries written before --iov lack it
        model = builtin_model(args.model, pop, args.error, allometric=args.allometric,
                             dvid=args.dvid,
                             eta=None if args.eta is None else args.eta.split(","),
                             covariates=args.covariate, omega=parse_omega(args.omega),
                             iov=None if iov is None else iov.split(","),
                             occasion=getattr(args, "occasion", None) or "OCC")
        model.check(pop)  # e.g. the occasion column, before anything is compiled
        return model
    except ValueError as err:
        fail(str(err))


def _load(data: str, args: argparse.Namespace | None = None,
          messages: list[str] | None = None):
    """The data set (a shipped name or a CSV path) read with the options of ``args``
    (``--drop``, ``--covariates``, ``--character-ids``); the reader's warnings about the
    data are printed on stderr in the command's words (and appended to ``messages``, for
    ``summary.json``)."""
    def columns(option: str):
        text = getattr(args, option, None)
        if text is None:
            return None
        names = [c.strip() for c in text.split(",") if c.strip()]
        if option == "drop" and not names:
            fail(f"--{option} needs column names, got {text!r}")
        return names

    options = dict(drop=columns("drop"), covariates=columns("covariates"),
                   character_ids=bool(getattr(args, "character_ids", False)))
    if data in SHIPPED:
        path = datasets.data_path(SHIPPED[data])
    else:
        path = Path(data)
        if not path.exists():
            fail(f"no such file {data!r} (and not a shipped "
                             f"data set: {', '.join(SHIPPED)})")
        if path.is_dir():
            fail(f"{data!r} is a folder, not a CSV file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonmemDataWarning)
        pop = read_nonmem(path, **options)
    _say(caught, messages)
    return pop


def _say(caught, messages: list[str] | None) -> None:
    """The warnings about the data in the command's words on stderr (and appended to
    ``messages``, for ``summary.json``); any other warning as Python shows it."""
    for w in caught:
        if issubclass(w.category, NonmemDataWarning):
            print(f"{command_name()}: warning: {w.message}", file=sys.stderr)
            if messages is not None:
                messages.append(f"data: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
