"""Plots of a fitted population model: VPC, goodness of fit, individual curves.

The numbers come from :mod:`._diagnostics` (the VPC table, the residual table); this
module only draws them with matplotlib.
"""

from __future__ import annotations

from statistics import NormalDist

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .._compile import ONE_OFF, filter_jit
from ._diagnostics import vpc, vpc_censored, vpc_observations

__all__ = ["individual_pages", "plot_gof", "plot_individual", "plot_vpc"]


def label(what: str, unit: str | None) -> str:
    return f"{what} ({unit})" if unit else what


def plot_vpc(fit=None, table: pd.DataFrame | None = None, ax=None, log: bool = False,
             title: str = "Prediction-corrected visual predictive check",
             time_unit: str | None = None, dv_unit: str | None = None, **kwargs):
    """Plot a VPC: the observations (points; prediction-corrected like the rest in a pcVPC),
    their 5/50/95 % quantiles (lines) over the simulated ones' percentile intervals
    (bands); ``log`` for a log DV axis, ``time_unit``/``dv_unit`` for the axis labels;
    ``kwargs`` go to :func:`vpc` (``prediction_corrected=False`` for the plain VPC)."""
    table = vpc(fit, **kwargs) if table is None else table
    ax = plt.subplots(figsize=(7, 4.5))[1] if ax is None else ax
    qs = sorted({c.split("_")[1][1:] for c in table.columns if c.startswith("obs_q")},
                key=float)
    colours = {qs[0]: "tab:blue", qs[-1]: "tab:blue"} | ({qs[1]: "tab:red"} if len(qs) > 2
                                                        else {})
    corrected = kwargs.get("prediction_corrected", True)
    if fit is not None:
        edges = np.r_[table["t_lo"].to_numpy(), table["t_hi"].to_numpy()[-1:]]
        t, dv, _, _ = vpc_observations(fit, edges, kwargs.get("dvid"), corrected)
        shown = dv > 0 if log else np.ones_like(dv, bool)
        cens = vpc_censored(fit.population, kwargs.get("dvid"))
        ax.plot(t[shown & ~cens], dv[shown & ~cens], "o", ms=2.5, color="0.4", alpha=0.5,
                zorder=0, label="observations")
        if cens.any():
            ax.plot(t[shown & cens], dv[shown & cens], "x", ms=3, color="tab:orange",
                    alpha=0.7, zorder=0, label="below LLOQ (at the limit)")
    for q in qs:
        c = colours.get(q, "tab:blue")
        ax.fill_between(table["time"], table[f"sim_q{q}_lo"], table[f"sim_q{q}_hi"], color=c,
                        alpha=0.2, lw=0, label=f"simulated {float(q):.0%} quantile, interval")
        ax.plot(table["time"], table[f"obs_q{q}"], color=c, lw=1.8,
                label=f"observed {float(q):.0%} quantile")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(label("time", time_unit))
    ax.set_ylabel(label("prediction-corrected DV" if corrected else "DV", dv_unit))
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7,
              loc="upper left" if "obs_blq_frac" in table else "best")
    if "obs_blq_frac" in table:
        _blq_inset(ax, table)
    return ax


def _blq_inset(ax, table: pd.DataFrame) -> None:
    """The censored VPC's second half: the fraction below the limit per bin, observed
    against the simulated interval (an inset, upper right)."""
    inset = ax.inset_axes([0.64, 0.56, 0.34, 0.34])
    inset.fill_between(table["time"], table["sim_blq_frac_lo"], table["sim_blq_frac_hi"],
                       color="tab:orange", alpha=0.25, lw=0)
    inset.plot(table["time"], table["sim_blq_frac_median"], color="tab:orange", lw=1,
               ls="--")
    inset.plot(table["time"], table["obs_blq_frac"], "o-", color="tab:orange", ms=2.5, lw=1.2)
    inset.set_ylim(-0.02, 1.02)
    inset.set_title("fraction below LLOQ", fontsize=7)
    inset.tick_params(labelsize=6)


def plot_gof(diag: pd.DataFrame, fig=None, title: str = "Goodness of fit",
             time_unit: str | None = None, dv_unit: str | None = None):
    """The goodness-of-fit panel: DV vs PRED and IPRED, CWRES vs TIME and PRED, |IWRES| vs
    IPRED, and a normal QQ plot of CWRES (``time_unit``/``dv_unit`` label the axes)."""
    fig = plt.figure(figsize=(11, 7)) if fig is None else fig
    axes = fig.subplots(2, 3, gridspec_kw=_grid_margins(fig, 2, 3, top=0.75, hgap=0.95))
    for ax, x in zip(axes[0, :2], ("PRED", "IPRED"), strict=True):
        ax.plot(diag[x], diag["DV"], "o", ms=3, alpha=0.6)
        lim = [min(diag[x].min(), diag["DV"].min()), max(diag[x].max(), diag["DV"].max())]
        ax.plot(lim, lim, "k-", lw=1)
        ax.set_xlabel(label(x, dv_unit))
        ax.set_ylabel(label("DV", dv_unit))
        ax.set_title(f"DV vs {x}")
    ax = axes[0, 2]
    ax.plot(diag["IPRED"], diag["IWRES"].abs(), "o", ms=3, alpha=0.6)
    ax.set_xlabel(label("IPRED", dv_unit))
    ax.set_ylabel("|IWRES|")
    ax.set_title("|IWRES| vs IPRED")
    for ax, x in zip(axes[1, :2], ("TIME", "PRED"), strict=True):
        ax.plot(diag[x], diag["CWRES"], "o", ms=3, alpha=0.6)
        ax.axhline(0, color="k", lw=1)
        for y in (-2, 2):
            ax.axhline(y, color="k", lw=0.6, ls="--")
        ax.set_xlabel(label(x, time_unit if x == "TIME" else dv_unit))
        ax.set_ylabel("CWRES")
        ax.set_title(f"CWRES vs {x}")
    ax = axes[1, 2]
    cwres = np.sort(diag["CWRES"].dropna())  # censored observations have none
    ax.plot(_normal_quantiles(len(cwres)), cwres, "o", ms=3, alpha=0.6)
    ax.plot([-3, 3], [-3, 3], "k-", lw=1)
    ax.set_xlabel("normal quantiles")
    ax.set_ylabel("CWRES quantiles")
    ax.set_title("CWRES normal QQ")
    fig.suptitle(title)
    return fig


def _normal_quantiles(n: int) -> np.ndarray:
    """The normal QQ plot's theoretical quantiles at Filliben's plotting positions (as
    ``scipy.stats.probplot``)."""
    m = np.empty(n)
    m[-1] = 0.5 ** (1.0 / n)
    m[0] = 1.0 - m[-1]
    m[1:-1] = (np.arange(2, n) - 0.3175) / (n + 0.365)
    return np.array([NormalDist().inv_cdf(x) for x in m])


def _dense_design(population, n_points: int, dvid: int | None = None):
    """The same subjects with observations on a dense time grid (for smooth curves), of
    observation type ``dvid`` (default: each subject's first observation's)."""
    t = np.asarray(population.obs_time)
    mask = np.asarray(population.obs_mask)
    first = np.zeros(t.shape[0], int)
    if dvid is not None:
        of_type = mask & (np.asarray(population.obs_dvid) == dvid)
        first = np.where(of_type.any(axis=1), of_type.argmax(axis=1), 0)
    t_end = np.where(mask, t, -np.inf).max(axis=1)
    t_end = np.where(np.isfinite(t_end), t_end, 1.0)
    t_start = np.minimum(np.asarray(population.dose_time).min(axis=1), t.min(axis=1))
    grid = t_start[:, None] + (t_end - t_start)[:, None] * np.linspace(0, 1, n_points)[None, :]
    s = grid.shape[0]
    return eqx.tree_at(
        lambda p: (p.obs_time, p.obs_dv, p.obs_mask, p.obs_cmt, p.obs_dvid, p.obs_row,
                   p.obs_lloq, p.obs_cov),
        population,
        (grid, np.zeros_like(grid), np.ones_like(grid, bool),
         np.broadcast_to(_pick(population.obs_cmt, first), grid.shape).copy(),
         (np.broadcast_to(_pick(population.obs_dvid, first), grid.shape).copy()
          if dvid is None else np.full(grid.shape, dvid)),
         -np.ones(grid.shape, int), np.full(grid.shape, np.nan),
         _covariates_on(population, grid)
         if np.asarray(population.obs_cov).ndim == 3 else population.obs_cov),
    ), s


def _covariates_on(population, grid: np.ndarray) -> np.ndarray:
    """``(S, n, C)``: each subject's covariates at its grid times (last value carried
    forward from the change points, as at the records; the occasion among them)."""
    times = np.asarray(population.cov_time)
    values = np.asarray(population.cov_value)
    mask = np.asarray(population.cov_mask, bool)
    out = np.empty((*grid.shape, values.shape[-1]))
    for s in range(grid.shape[0]):  # host-side bookkeeping of a plot, not a model loop
        idx = np.searchsorted(times[s][mask[s]], grid[s], side="right") - 1
        out[s] = values[s][mask[s]][np.clip(idx, 0, None)]
    return out


def _pick(values, index: np.ndarray) -> np.ndarray:
    """Each subject's ``values[index]``, as a column."""
    values = np.asarray(values)
    return values[np.arange(values.shape[0]), index][:, None]


@filter_jit(quick_below=ONE_OFF)
def _curves(model, u, population, eta):
    theta = model.unpack(u)[0]
    pred = jax.vmap(lambda s: model.predict(theta, jnp.zeros(model.n_eta), s))(population)
    ipred = jax.vmap(lambda s, e: model.predict(theta, e, s))(population, eta)
    return pred, ipred


def plot_individual(fit, subjects=None, n_points: int = 200, ncols: int = 4,
                    log: bool = False, time_unit: str | None = None,
                    dv_unit: str | None = None, title: str | None = None,
                    dvid: int | None = None):
    """Observations with individual (IPRED, solid) and population (PRED, dashed)
    predictions, one panel per subject (default: the first 12; all of them, page by page:
    :func:`individual_pages`); ``log`` for log DV axes, units for the axis labels; ``dvid``
    one observation type (of a model with several)."""
    pop = fit.population
    idx = list(range(min(12, pop.n_subjects))) if subjects is None else [
        pop.index(s) for s in subjects]
    sub = pop.take(idx)
    dense, _ = _dense_design(sub, n_points, dvid)
    eta = jnp.asarray(fit.eta.to_numpy()[idx])
    pred, ipred = (np.asarray(a) for a in _curves(fit.model, jnp.asarray(fit.u), dense, eta))
    nrows = int(np.ceil(len(idx) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.4 * nrows + 0.4),
                             squeeze=False, sharex=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(idx):
            ax.axis("off")
            continue
        m = np.asarray(sub.obs_mask)[k] & ((np.asarray(sub.obs_dv)[k] > 0) | (not log))
        if dvid is not None:
            m = m & (np.asarray(sub.obs_dvid)[k] == dvid)
        ax.plot(np.asarray(sub.obs_time)[k][m], np.asarray(sub.obs_dv)[k][m], "o", ms=3,
                color="k")
        ax.plot(np.asarray(dense.obs_time)[k], ipred[k], "-", color="tab:blue", lw=1.3)
        ax.plot(np.asarray(dense.obs_time)[k], pred[k], "--", color="tab:orange", lw=1.0)
        ax.set_title(f"ID {pop.ids[idx[k]]}", fontsize=9)
        if log:
            ax.set_yscale("log")
        if k // ncols == nrows - 1 or k + ncols >= len(idx):
            ax.set_xlabel(label("time", time_unit), fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel(label("DV", dv_unit), fontsize=8)
    fig.legend(["DV", "IPRED", "PRED"], loc="lower center", ncols=3, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(**_grid_margins(fig, nrows, ncols, top=0.6 if title else 0.35,
                                        bottom=0.8))  # the legend below the panels
    return fig


def _grid_margins(fig, nrows: int, ncols: int, top: float, bottom: float = 0.6,
                  hgap: float = 0.7) -> dict:
    """Margins and gaps of a grid of panels on ``fig`` (a figure or subfigure), given in
    inches (``top`` above the panels, ``bottom`` below, ``hgap`` between rows: a panel's
    title and the x axis above it) and returned as the fractions
    ``subplots_adjust`` and ``gridspec_kw`` take. A fixed layout: ``tight_layout`` and the
    constrained layout measure every tick label at each draw (0.25-0.35 s of a 12-panel
    page, a third of drawing and saving it, and still let wide tick labels touch the next
    panel)."""
    width = fig.bbox.width / fig.dpi
    height = fig.bbox.height / fig.dpi
    left, right, wgap = 0.75, 0.15, 0.7
    panel_w = (width - left - right - (ncols - 1) * wgap) / ncols
    panel_h = (height - top - bottom - (nrows - 1) * hgap) / nrows
    return dict(left=left / width, right=1 - right / width, bottom=bottom / height,
                top=1 - top / height, wspace=wgap / panel_w, hspace=hgap / panel_h)


def individual_pages(fit, per_page: int = 12, **kwargs):
    """:func:`plot_individual` for every subject, ``per_page`` subjects a figure (a
    generator: each figure can be saved and closed before the next is drawn)."""
    ids = list(fit.population.ids)
    pages = max(1, int(np.ceil(len(ids) / per_page)))
    for page in range(pages):
        chunk = ids[page * per_page:(page + 1) * per_page]
        what = "" if kwargs.get("dvid") is None else f" (DVID {kwargs['dvid']})"
        yield plot_individual(fit, subjects=chunk, title=f"Individual fits{what}, page "
                              f"{page + 1} of {pages}", **kwargs)
