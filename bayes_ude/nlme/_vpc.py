"""The visual predictive check (VPC) of a fitted population model: binned quantiles of
the observations against the same quantiles of replicates simulated from the fit
(:func:`bayes_ude.nlme.simulate`), prediction-corrected (Bergstrand et al. 2011) by
default, and censored at the limits of quantification where the data have censored
values (Bergstrand and Karlsson 2009). The tables here; the figure in ``_plots.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._diagnostics import _population_pred, simulate
from ._model import unpacked

__all__ = ["vpc"]


def vpc(fit, n_sim: int = 500, bins: int | np.ndarray = 8, quantiles=(0.05, 0.5, 0.95),
        ci: float = 0.9, dvid: int | None = None, key: jax.Array | None = None,
        sims: np.ndarray | None = None, prediction_corrected: bool = True) -> pd.DataFrame:
    """Visual predictive check table: observed quantiles of DV per time bin, and the
    median and ``ci`` interval of the same quantiles over ``n_sim`` simulated replicates.

    ``bins``: a number of bins with equal numbers of observations, or bin edges.
    ``sims``: replicates ``(n, subjects, records)`` to use instead of simulating (e.g.
    a posterior predictive).
    ``prediction_corrected`` (default): the prediction-corrected VPC of Bergstrand et al.
    (2011): observed and simulated values are multiplied by ``median(PRED in bin) / PRED``
    so that differences in dose and covariates within a bin do not widen the bands
    (observations with ``PRED <= 0``, e.g. pre-dose samples, are left as they are).

    Data below a limit of quantification (M3) give a censored VPC (Bergstrand and
    Karlsson 2009): simulated values below their record's limit are censored as the
    observed ones are (a record without a limit of its own takes the median of the
    data's limits of its ``DVID``), a quantile that falls on censored values is NaN
    ("below the limit": neither the limit nor a simulated value below it would be a
    like-for-like comparison), and the fraction below the limit is compared per bin
    (``obs_blq_frac`` against ``sim_blq_frac_median/_lo/_hi``).
    """
    mask = vpc_mask(fit.population, dvid)
    if sims is None:
        sims = simulate(fit, n_sim, key)
    sims = np.asarray(sims)
    if sims.ndim != 3 or sims.shape[1:] != mask.shape:
        raise ValueError(f"sims: expected replicates of shape (n, {mask.shape[0]}, "
                         f"{mask.shape[1]}) (the fit's subjects and padded records, as "
                         f"simulate(fit, ...) returns them), got {sims.shape}")
    t, dv, which, factor = vpc_observations(fit, bins, dvid, prediction_corrected)
    sim = sims[:, mask] * factor[None, :]
    limit = _vpc_limits(fit.population, mask) * factor
    obs_cens = vpc_censored(fit.population, dvid)
    sim_cens = sim < limit[None, :]  # False where there is no limit (NaN)
    censoring = bool(fit.population.has_censored)
    edges = _edges(t, bins)
    lo, hi = (1 - ci) / 2, 1 - (1 - ci) / 2
    rows = []
    for b in range(len(edges) - 1):
        sel = which == b
        if not sel.any():
            continue
        row = {"bin": b, "time": float(np.median(t[sel])), "t_lo": edges[b],
               "t_hi": edges[b + 1], "n": int(sel.sum())}
        for q in quantiles:
            sq = _censored_quantile(sim[:, sel], sim_cens[:, sel], q, axis=1)
            row[f"obs_q{q:g}"] = float(_censored_quantile(dv[sel], obs_cens[sel], q))
            for name, level in (("median", 0.5), ("lo", lo), ("hi", hi)):
                row[f"sim_q{q:g}_{name}"] = float(_censored_quantile(
                    sq, np.isnan(sq), level))
        if censoring:
            frac = sim_cens[:, sel].mean(axis=1)
            row.update(obs_blq_frac=float(obs_cens[sel].mean()),
                       sim_blq_frac_median=float(np.median(frac)),
                       sim_blq_frac_lo=float(np.quantile(frac, lo)),
                       sim_blq_frac_hi=float(np.quantile(frac, hi)))
        rows.append(row)
    return pd.DataFrame(rows)


# a censored value in a quantile: far below every value, so that a quantile touching one
# is recognisably below the limit (NaN) after the linear interpolation
_BELOW = -1e300


def _censored_quantile(values, censored, q, axis=None):
    """``np.quantile`` with the censored values (below their limit) ranked lowest; NaN
    where the quantile falls on or between censored values."""
    out = np.quantile(np.where(censored, _BELOW, values), q, axis=axis)
    return np.where(out < _BELOW / 1e50, np.nan, out)


def _vpc_limits(pop, mask) -> np.ndarray:
    """Each observation's limit of quantification: its own (``obs_limit``: a measured
    record's ``LLOQ`` cell too), else the median of the data's limits of its DVID (NaN:
    no limit, nothing censored)."""
    lloq = np.asarray(pop.obs_limit)[mask]
    dvid = np.asarray(pop.obs_dvid)[mask]
    out = lloq.copy()
    for d in np.unique(dvid):
        known = lloq[(dvid == d) & np.isfinite(lloq)]
        if known.size:
            out = np.where((dvid == d) & ~np.isfinite(lloq), np.median(known), out)
    return out


def vpc_censored(pop, dvid) -> np.ndarray:
    """Which of the VPC's observations (:func:`vpc_mask`) are below their limit (their
    DV is the limit)."""
    return np.isfinite(np.asarray(pop.obs_lloq))[vpc_mask(pop, dvid)]


def vpc_mask(pop, dvid):
    mask = np.asarray(pop.obs_mask)
    if dvid is not None:
        mask = mask & (np.asarray(pop.obs_dvid) == dvid)
    if not mask.any():
        raise ValueError(f"no observations{'' if dvid is None else f' with DVID {dvid}'}")
    return mask


def _edges(t, bins):
    """Bin edges: ``bins`` quantiles of ``t``, or the edges given, which must cover every
    observation time (one outside used to be counted in the nearest end bin, whose
    quantiles then pooled times the table's ``t_lo``/``t_hi`` did not show)."""
    if np.isscalar(bins):
        return np.unique(np.quantile(t, np.linspace(0, 1, bins + 1)))
    edges = np.asarray(bins, float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"bins must be a number of bins or at least two increasing edges, "
                         f"got {bins!r}")
    outside = (t < edges[0]) | (t > edges[-1])
    if outside.any():
        raise ValueError(f"bins: {int(outside.sum())} observation times lie outside the edges "
                         f"[{edges[0]:g}, {edges[-1]:g}] (the times span [{t.min():g}, "
                         f"{t.max():g}]); add edges that cover them, or give a number of "
                         f"bins")
    return edges


def vpc_observations(fit, bins: int | np.ndarray = 8, dvid: int | None = None,
                     prediction_corrected: bool = True):
    """The observations of a VPC as :func:`vpc` bins and corrects them: times, DVs
    (prediction-corrected: times ``median(PRED in bin) / PRED``), bin indices and the
    correction factors (1 without correction), one entry per observation (of ``dvid``)."""
    pop = fit.population
    mask = vpc_mask(pop, dvid)
    t = np.asarray(pop.obs_time)[mask]
    dv = np.asarray(pop.obs_dv)[mask]
    edges = _edges(t, bins)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    factor = np.ones_like(dv)
    if prediction_corrected:
        theta = unpacked(fit.model, jnp.asarray(fit.u))[0]
        pred = np.asarray(_population_pred(fit.model.specialised(pop), theta, pop))[mask]
        for b in range(len(edges) - 1):
            sel = (which == b) & (pred > 0)
            if sel.any():
                factor[sel] = np.median(pred[sel]) / pred[sel]
    return t, dv * factor, which, factor
