"""``bayes-ude pk fit``: the figures of a fit, for either branch (maximum likelihood or
Bayesian): goodness of fit, VPC, individual fits (every subject, page by page, in one PDF;
the first page also as PNG), axes labelled with the data's units."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.backends.backend_pdf import PdfPages

from ._command import SHIPPED_UNITS
from ._output import Output
from ._plots import individual_pages, plot_gof, plot_vpc

__all__ = ["units", "write_plots"]


def units(args) -> dict:
    """``time_unit`` and ``dv_unit`` from ``--time-unit``/``--dv-unit``, else those of a
    shipped data set, else none."""
    time_unit, dv_unit = SHIPPED_UNITS.get(args.data, (None, None))
    return {"time_unit": args.time_unit or time_unit, "dv_unit": args.dv_unit or dv_unit}


def write_plots(output: Output, args, result, vpc_table, diag=None, vpc_title=None) -> None:
    """``vpc.png``; with the residual table ``diag`` (and the subjects' random effects)
    also ``gof.png``, ``individual.pdf`` (all subjects) and ``individual.png`` (page 1)."""
    matplotlib.use("Agg")
    labels = units(args)
    what = f"{args.model}, {args.method.upper()}"
    ax = plot_vpc(result, table=vpc_table, log=args.log,
                  title=vpc_title or f"{what}: prediction-corrected VPC", **labels)
    output.save("vpc.png", lambda path: ax.figure.savefig(path, dpi=110))
    plt.close("all")
    if diag is None or result.eta is None:
        return
    fig = plot_gof(diag, title=f"{what}: goodness of fit", **labels)
    output.save("gof.png", lambda path: fig.savefig(path, dpi=110))
    plt.close("all")

    def pages(path):
        with PdfPages(path) as pdf:
            for k, page in enumerate(individual_pages(result, log=args.log, **labels)):
                pdf.savefig(page)
                if k == 0:
                    output.save("individual.png", lambda p, fig=page: fig.savefig(p, dpi=110))
                plt.close(page)

    output.save("individual.pdf", pages)
