"""Plots of a fitted population model: VPC, goodness of fit, individual curves.

The numbers come from :mod:`._diagnostics` (the VPC table, the residual table) and
:mod:`._plot_data` (the individual curves); :mod:`._draw` draws them with matplotlib.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from ._draw import draw_gof, draw_individual, draw_vpc, label
from ._plot_data import individual_page_specs, individual_panels, vpc_observed
from ._vpc import vpc

__all__ = ["individual_pages", "label", "plot_gof", "plot_individual", "plot_vpc"]


def plot_vpc(fit=None, table: pd.DataFrame | None = None, ax=None, log: bool = False,
             title: str = "Prediction-corrected visual predictive check",
             time_unit: str | None = None, dv_unit: str | None = None, **kwargs):
    """Plot a VPC: the observations (points; prediction-corrected like the rest in a pcVPC),
    their 5/50/95 % quantiles (lines) over the simulated ones' percentile intervals
    (bands); ``log`` for a log DV axis, ``time_unit``/``dv_unit`` for the axis labels;
    ``kwargs`` go to :func:`vpc` (``prediction_corrected=False`` for the plain VPC)."""
    table = vpc(fit, **kwargs) if table is None else table
    ax = plt.subplots(figsize=(7, 4.5))[1] if ax is None else ax
    corrected = kwargs.get("prediction_corrected", True)
    observed = None if fit is None else vpc_observed(fit, table, kwargs.get("dvid"), corrected)
    return draw_vpc(ax, table, observed, log=log, title=title, time_unit=time_unit,
                    dv_unit=dv_unit, corrected=corrected)


def plot_gof(diag: pd.DataFrame, fig=None, title: str = "Goodness of fit",
             time_unit: str | None = None, dv_unit: str | None = None):
    """The goodness-of-fit panel: DV vs PRED and IPRED, CWRES vs TIME and PRED, |IWRES| vs
    IPRED, and a normal QQ plot of CWRES (``time_unit``/``dv_unit`` label the axes)."""
    return draw_gof(diag, fig=fig, title=title, time_unit=time_unit, dv_unit=dv_unit)


def plot_individual(fit, subjects=None, n_points: int = 200, ncols: int = 4,
                    log: bool = False, time_unit: str | None = None,
                    dv_unit: str | None = None, title: str | None = None,
                    dvid: int | None = None):
    """Observations with individual (IPRED, solid) and population (PRED, dashed)
    predictions, one panel per subject (default: the first 12; all of them, page by page:
    :func:`individual_pages`); ``log`` for log DV axes, units for the axis labels; ``dvid``
    one observation type (of a model with several)."""
    return draw_individual(individual_panels(fit, subjects, n_points, log, dvid), ncols=ncols,
                           log=log, time_unit=time_unit, dv_unit=dv_unit, title=title)


def individual_pages(fit, per_page: int = 12, **kwargs):
    """:func:`plot_individual` for every subject, ``per_page`` subjects a figure (a
    generator: each figure can be saved and closed before the next is drawn)."""
    for page in individual_page_specs(fit, per_page, **kwargs):
        yield draw_individual(**page)
