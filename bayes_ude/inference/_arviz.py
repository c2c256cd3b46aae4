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
    """
    import arviz as az

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
