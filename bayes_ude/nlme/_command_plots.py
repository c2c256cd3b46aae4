"""``bayes-ude pk fit``: the VPC tables and the figures of a fit, for either branch
(maximum likelihood or Bayesian): goodness of fit, VPC, individual fits (every subject,
page by page, in one PDF; the first page also as PNG), axes labelled with the data's
units. A model of several observation types (e.g. warfarin's PK and PD, DVID 1 and 2)
gets each figure per type. The numbers are computed here; the drawing is a job for
:class:`._figure_worker.Figures` (a second process, which loads matplotlib while the fit
runs)."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from ._command import SHIPPED_UNITS
from ._figure_worker import Figures
from ._output import Output
from ._plot_data import individual_page_specs, vpc_observed

__all__ = ["finish_plots", "plot_types", "save_vpc", "start_gof", "start_individual",
           "start_vpc", "units", "vpc_tables", "write_plots"]


def plot_types(args, population) -> list:
    """The observation types to show apart: ``--dvid``'s, else every DVID observed (one
    entry ``None`` when there is a single type)."""
    if args.dvid is not None:
        return [args.dvid]
    mask = np.asarray(population.obs_mask)
    dvids = sorted(set(np.asarray(population.obs_dvid)[mask].tolist()))
    return dvids if len(dvids) > 1 else [None]


def vpc_tables(result, args, n_sim: int = 500) -> dict:
    """One VPC table per observation type (key: its DVID, or ``None``), simulated with
    ``--seed``."""
    key = jax.random.key(args.seed)
    return {d: result.vpc(dvid=d, n_sim=n_sim, key=key)
            for d in plot_types(args, result.population)}


def save_vpc(output: Output, tables: dict) -> None:
    """``vpc.csv``: the tables one under the other, with a ``DVID`` column when several."""
    table = (next(iter(tables.values())) if len(tables) == 1 else
             pd.concat([t.assign(DVID=d) for d, t in tables.items()], ignore_index=True))
    output.save("vpc.csv", lambda path: table.to_csv(path, index=False))


def units(args, dvid=None) -> dict:
    """``time_unit`` and ``dv_unit`` (of observation type ``dvid``) from
    ``--time-unit``/``--dv-unit``, else those of a shipped data set, else none."""
    time_unit, dv_unit = SHIPPED_UNITS.get(args.data, (None, None))
    if isinstance(dv_unit, dict):
        dv_unit = dv_unit.get(dvid)
    return {"time_unit": args.time_unit or time_unit, "dv_unit": args.dv_unit or dv_unit}


def start_individual(figures: Figures, output: Output, args, result) -> dict:
    """Start drawing ``individual.pdf`` (every subject) and ``individual.png`` (page 1),
    each observation type's pages in turn; ``{file: ticket}`` (none without random
    effects)."""
    if result.eta is None:
        return {}
    pages = [page for d in plot_types(args, result.population)
             for page in individual_page_specs(result, log=args.log, dvid=d, **units(args, d))]
    return {"individual.png": figures.submit(
        "individual", pdf_path=output.part("individual.pdf"),
        png_path=output.part("individual.png"), pages=pages)}


def start_gof(figures: Figures, output: Output, args, result, diag) -> dict:
    """Start drawing ``gof.png`` from the residual table ``diag``, one block per
    observation type; ``{file: ticket}`` (none without random effects)."""
    if result.eta is None:
        return {}
    parts = [{"diag": diag if d is None else diag[diag["DVID"] == d],
              "title": f"{_what(args)}: goodness of fit{_named(d)}", **units(args, d)}
             for d in plot_types(args, result.population)]
    return {"gof.png": figures.submit("gof", path=output.part("gof.png"), parts=parts)}


def start_vpc(figures: Figures, output: Output, args, result, vpcs: dict,
              title: str | None = None) -> dict:
    """Start drawing ``vpc.png`` from the VPC tables ``vpcs`` (:func:`vpc_tables`), one
    panel per observation type; ``{file: ticket}``."""
    panels = [{"table": table, "observed": vpc_observed(result, table, d),
               "title": (title or f"{_what(args)}: prediction-corrected VPC") + _named(d),
               **units(args, d)} for d, table in vpcs.items()]
    return {"vpc.png": figures.submit("vpc", path=output.part("vpc.png"), panels=panels,
                                      log=args.log)}


def finish_plots(figures: Figures, output: Output, tickets: dict) -> None:
    """Wait for the figures started (``{file: ticket}``) and list their files, in the
    order ``vpc.png``, ``gof.png``, ``individual.png``, ``individual.pdf``."""
    for name in ("vpc.png", "gof.png", "individual.png"):
        if name in tickets:
            figures.wait(tickets[name])
            output.adopt(name)
    if "individual.png" in tickets:
        output.adopt("individual.pdf")  # the same job as individual.png


def write_plots(output: Output, figures: Figures, args, result, vpcs: dict, diag=None,
                vpc_title=None) -> None:
    """All the figures: ``vpc.png``; with the residual table ``diag`` (and the subjects'
    random effects) also ``gof.png``, ``individual.pdf`` and ``individual.png``."""
    tickets = start_vpc(figures, output, args, result, vpcs, vpc_title)
    if diag is not None:
        tickets |= start_gof(figures, output, args, result, diag)
        tickets |= start_individual(figures, output, args, result)
    finish_plots(figures, output, tickets)


def _what(args) -> str:
    return f"{args.model}, {args.method.upper()}"


def _named(dvid) -> str:
    return "" if dvid is None else f" (DVID {dvid})"
