"""Conversion of sampler output to ArviZ InferenceData."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def to_inference_data(
    posterior: Mapping[str, np.ndarray],
    *,
    sample_stats: Mapping[str, np.ndarray] | None = None,
    log_likelihood: Mapping[str, np.ndarray] | None = None,
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
    observed_data: Mapping[str, np.ndarray] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping | None = None,
):
    """Build an ``arviz.InferenceData`` from arrays with leading ``(chain, draw)`` axes.

    ``dims`` names the remaining axes of each variable (e.g. ``{"obs": ["time",
    "state"]}``) and ``coords`` gives their values; unnamed axes get ArviZ's defaults.
    Every array of the sampled groups (all but ``observed_data``) needs the same leading
    ``(chain, draw)`` axes: a 1-D array (one chain: ``x[None]``) or groups of different
    chains or draws are refused rather than read as something else.
    """
    import arviz as az

    _check_chain_draw({"posterior": posterior, "sample_stats": sample_stats,
                       "log_likelihood": log_likelihood,
                       "posterior_predictive": posterior_predictive})

    def clean(group):
        if group is None:
            return None
        return {k: np.asarray(v) for k, v in group.items()}

    idata = az.from_dict(
        posterior=clean(posterior),
        sample_stats=clean(sample_stats),
        log_likelihood=clean(log_likelihood),
        posterior_predictive=clean(posterior_predictive),
        observed_data=clean(observed_data),
        dims=dict(dims or {}),
        coords=dict(coords or {}),
        attrs=dict(attrs or {}),
    )
    return idata


def _check_chain_draw(groups: Mapping[str, Mapping[str, np.ndarray] | None],
                      expected: tuple[int, int] | None = None) -> None:
    """Refuse arrays without ``(chain, draw)`` axes, and groups whose axes differ (from
    each other, or from ``expected``)."""
    seen = {}
    for group, arrays in groups.items():
        for name, value in (arrays or {}).items():
            shape = np.shape(value)
            if len(shape) < 2:
                raise ValueError(f"{group}[{name!r}] has shape {shape}: arrays need leading "
                                 "(chain, draw) axes (one chain: x[None])")
            seen[f"{group}[{name!r}]"] = shape[:2]
    sizes = set(seen.values()) | ({expected} if expected else set())
    if len(sizes) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in seen.items())
        raise ValueError(f"the (chain, draw) axes differ: {listed}"
                         + (f"; the posterior's are {expected}" if expected else ""))


def add_to_inference_data(
    idata,
    *,
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
    observed_data: Mapping[str, np.ndarray] | None = None,
    log_likelihood: Mapping[str, np.ndarray] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, np.ndarray] | None = None,
):
    """Add variables to ``idata`` in place (as :func:`to_inference_data` builds them).

    Groups ``idata`` lacks are created; variables of groups it has join the variables
    already there (same coordinates: a clash is an error from xarray, never a silent
    overwrite). Returns ``idata``.
    """
    if "posterior" in idata.groups():
        posterior = idata.posterior
        _check_chain_draw({"posterior_predictive": posterior_predictive,
                           "log_likelihood": log_likelihood},
                          (posterior.sizes["chain"], posterior.sizes["draw"]))
    extra = to_inference_data(None, posterior_predictive=posterior_predictive,
                              observed_data=observed_data, log_likelihood=log_likelihood,
                              dims=dims, coords=coords)
    for group in extra.groups():
        if group in idata.groups():
            clash = set(idata[group].data_vars) & set(extra[group].data_vars)
            if clash:
                raise ValueError(f"the {group} group already has {sorted(clash)}")
            setattr(idata, group, idata[group].merge(extra[group], join="exact",
                                                     combine_attrs="override"))
        else:
            idata.add_groups({group: extra[group]})
    return idata
