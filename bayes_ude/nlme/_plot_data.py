"""The numbers the figures of a fitted population model show, computed from the model
(JAX): the VPC's observations, the individual fits' curves on a dense time grid. No
matplotlib here: :mod:`._plots` and the command (:mod:`._command_plots`) hand these numbers
to :mod:`._draw`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._compile import ONE_OFF, filter_jit
from ._vpc import vpc_censored, vpc_observations

__all__ = ["individual_page_specs", "individual_panels", "precompile_curves", "vpc_observed"]


def vpc_observed(fit, table: pd.DataFrame, dvid: int | None = None,
                 corrected: bool = True) -> dict:
    """The observations a VPC shows (``t``, ``dv``: prediction-corrected when
    ``corrected``; ``censored``: below the limit), binned by ``table``'s edges."""
    edges = np.r_[table["t_lo"].to_numpy(), table["t_hi"].to_numpy()[-1:]]
    t, dv, _, _ = vpc_observations(fit, edges, dvid, corrected)
    return {"t": t, "dv": dv, "censored": vpc_censored(fit.population, dvid)}


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
                   p.obs_lloq, p.obs_limit, p.obs_cov),
        population,
        (grid, np.zeros_like(grid), np.ones_like(grid, bool),
         np.broadcast_to(_pick(population.obs_cmt, first), grid.shape).copy(),
         (np.broadcast_to(_pick(population.obs_dvid, first), grid.shape).copy()
          if dvid is None else np.full(grid.shape, dvid)),
         -np.ones(grid.shape, int), np.full(grid.shape, np.nan), np.full(grid.shape, np.nan),
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


def individual_panels(fit, subjects=None, n_points: int = 200, log: bool = False,
                      dvid: int | None = None) -> list[dict]:
    """The numbers of :func:`plot_individual`'s panels (:func:`._draw.draw_individual`):
    per subject its ID, observations, and IPRED and PRED on a grid of ``n_points``
    times."""
    pop = fit.population
    idx = list(range(min(12, pop.n_subjects))) if subjects is None else [
        pop.index(s) for s in subjects]
    sub = pop.take(idx)
    dense, _ = _dense_design(sub, n_points, dvid)
    eta = jnp.asarray(fit.eta.to_numpy()[idx])
    pred, ipred = (np.asarray(a) for a in _curves(fit.model, jnp.asarray(fit.u), dense, eta))
    t_obs, dv_obs = np.asarray(sub.obs_time), np.asarray(sub.obs_dv)
    keep = np.asarray(sub.obs_mask) & ((dv_obs > 0) | (not log))
    if dvid is not None:
        keep = keep & (np.asarray(sub.obs_dvid) == dvid)
    grid = np.asarray(dense.obs_time)
    return [{"id": pop.ids[i], "t_obs": t_obs[k][keep[k]], "dv_obs": dv_obs[k][keep[k]],
             "t": grid[k], "ipred": ipred[k], "pred": pred[k]} for k, i in enumerate(idx)]


def individual_page_specs(fit, per_page: int = 12, n_points: int = 200, ncols: int = 4,
                          log: bool = False, time_unit: str | None = None,
                          dv_unit: str | None = None, dvid: int | None = None) -> list[dict]:
    """:func:`individual_pages`'s pages as :func:`._draw.draw_individual`'s arguments (the
    curves of all subjects computed at once)."""
    panels = individual_panels(fit, list(fit.population.ids), n_points, log, dvid)
    pages = max(1, int(np.ceil(len(panels) / per_page)))
    what = "" if dvid is None else f" (DVID {dvid})"
    return [{"panels": panels[page * per_page:(page + 1) * per_page], "ncols": ncols,
             "log": log, "time_unit": time_unit, "dv_unit": dv_unit,
             "title": f"Individual fits{what}, page {page + 1} of {pages}"}
            for page in range(pages)]


def precompile_curves(model, population, dvid: int | None = None, n_points: int = 200) -> None:
    """Compile (not run) the program of :func:`individual_page_specs`' curves for a fit of
    ``model`` to ``population`` (all subjects, observation type ``dvid``)."""
    dense, _ = _dense_design(population.take(list(range(population.n_subjects))), n_points,
                             dvid)
    _curves.precompile(model, jnp.asarray(model.initial_vector(), float), dense,
                       jnp.zeros((population.n_subjects, len(model.eta_names))))

