"""``bayes-ude pk fit``: the VPC tables and the figures of a fit, for either branch
(maximum likelihood or Bayesian): goodness of fit, VPC, individual fits (every subject,
page by page, in one PDF; the first page also as PNG), axes labelled with the data's
units. A model of several observation types (e.g. warfarin's PK and PD, DVID 1 and 2)
gets each figure per type. matplotlib loads when the figures are drawn (``--no-plots``
does not pay for it)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._command import SHIPPED_UNITS
from ._output import Output

__all__ = ["save_vpc", "units", "vpc_tables", "write_plots"]


def _types(args, population) -> list:
    """The observation types to show apart: ``--dvid``'s, else every DVID observed (one
    entry ``None`` when there is a single type)."""
    if args.dvid is not None:
        return [args.dvid]
    mask = np.asarray(population.obs_mask)
    dvids = sorted(set(np.asarray(population.obs_dvid)[mask].tolist()))
    return dvids if len(dvids) > 1 else [None]


def vpc_tables(result, args, n_sim: int = 500) -> dict:
    """One VPC table per observation type (key: its DVID, or ``None``)."""
    return {d: result.vpc(dvid=d, n_sim=n_sim) for d in _types(args, result.population)}


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


def write_plots(output: Output, args, result, vpcs: dict, diag=None, vpc_title=None) -> None:
    """``vpc.png``; with the residual table ``diag`` (and the subjects' random effects)
    also ``gof.png``, ``individual.pdf`` (all subjects) and ``individual.png`` (page 1);
    one panel (or run of pages) per observation type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from ._plots import individual_pages, plot_gof, plot_vpc

    what = f"{args.model}, {args.method.upper()}"
    named = {d: "" if d is None else f" (DVID {d})" for d in vpcs}
    fig, axes = plt.subplots(len(vpcs), 1, figsize=(7, 4.5 * len(vpcs)), squeeze=False)
    for ax, (d, table) in zip(axes[:, 0], vpcs.items(), strict=True):
        plot_vpc(result, table=table, ax=ax, log=args.log, dvid=d, **units(args, d),
                 title=(vpc_title or f"{what}: prediction-corrected VPC") + named[d])
    fig.tight_layout()
    output.save("vpc.png", lambda path: fig.savefig(path, dpi=110))
    plt.close("all")
    if diag is None or result.eta is None:
        return
    fig = plt.figure(figsize=(11, 7 * len(vpcs)))
    for sub, d in zip(np.atleast_1d(fig.subfigures(len(vpcs), 1)), vpcs, strict=True):
        rows = diag if d is None else diag[diag["DVID"] == d]
        plot_gof(rows, fig=sub, title=f"{what}: goodness of fit{named[d]}", **units(args, d))
    output.save("gof.png", lambda path: fig.savefig(path, dpi=110))
    plt.close("all")

    def pages(path):
        with PdfPages(path) as pdf:
            for d in vpcs:
                for k, page in enumerate(individual_pages(result, log=args.log, dvid=d,
                                                          **units(args, d))):
                    pdf.savefig(page)
                    if k == 0 and d == next(iter(vpcs)):
                        output.save("individual.png",
                                    lambda p, fig=page: fig.savefig(p, dpi=110))
                    plt.close(page)

    output.save("individual.pdf", pages)
