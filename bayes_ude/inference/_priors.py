"""Priors on all weights of a network in one call (inside a NumPyro model)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import numpyro
import numpyro.distributions as dist
from jaxtyping import PyTree


def _site_name(prefix: str, path) -> str:
    """``net`` + ``.layers[0].weight`` -> ``net.layers.0.weight`` (readable in ArviZ)."""
    key = jax.tree_util.keystr(path)
    key = re.sub(r"\[(\d+)\]", r".\1", key)
    key = re.sub(r"\['([^']+)'\]", r".\1", key)
    return prefix + (key if key.startswith(".") else "." + key)


def _part_of(key: str, site: str) -> bool:
    """Whether ``key``'s dot-separated components run contiguously in ``site``'s."""
    k, s = key.split("."), site.split(".")
    return any(s[i:i + len(k)] == k for i in range(len(s) - len(k) + 1))


def network_prior(
    name: str,
    network: PyTree,
    scale: float | Mapping[str, float] | Callable[[str, tuple], float] = 1.0,
    *,
    learned_scale: bool = False,
) -> PyTree:
    """Sample every floating-point array of ``network`` from a Normal prior; return the
    network with the sampled weights. Call it inside a NumPyro model.

    Each array becomes one sample site named after its place in the network, e.g.
    ``"nn.layers.0.weight"``, ``"nn.layers.0.bias"`` (these names appear in the posterior
    and in ``az.summary``).

    Parameters
    ----------
    name : prefix of the site names.
    network : an equinox module (or any pytree); its array values are ignored, only
        shapes and structure are used.
    scale : prior standard deviation: a number for all weights; a mapping from a part
        of the site name, whole dot-separated components, to a scale (per layer, e.g.
        ``{"layers.0": 2.0, "bias": 0.5}``; ``"layers.1"`` does not match
        ``"layers.10"``; the first matching key wins, the rest get 1.0; a key that
        matches no site is an error, naming the sites); or a function
        ``(site_name, shape) -> scale`` (e.g. ``1 / sqrt(fan_in)``).
    learned_scale : if True, the scale is itself sampled, ``name.scale ~ HalfNormal(s)``
        with ``s`` the given (numeric) scale, shared by all weights (a hierarchical prior
        that lets the data choose how large the network's output may be).
    """
    arrays, static = eqx.partition(network, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    if not leaves:
        raise ValueError(f"network_prior({name!r}): the network has no floating-point arrays")
    if learned_scale:
        if not isinstance(scale, (int, float)):
            raise ValueError("learned_scale=True needs a numeric scale (the HalfNormal's scale)")
        shared = numpyro.sample(f"{name}.scale", dist.HalfNormal(float(scale)))
    if isinstance(scale, Mapping) and not learned_scale:
        sites = [_site_name(name, path) for path, _ in leaves]
        unused = [k for k in scale if not any(_part_of(k, site) for site in sites)]
        if unused:  # a typo ("layer.0", "Bias") left every weight at the default 1.0
            raise ValueError(f"network_prior({name!r}): scale keys {unused} match no site; "
                             f"the sites are {sites}")
    new = []
    for path, leaf in leaves:
        site = _site_name(name, path)
        if learned_scale:
            s = shared
        elif callable(scale):
            s = scale(site, leaf.shape)
        elif isinstance(scale, Mapping):
            s = next((v for k, v in scale.items() if _part_of(k, site)), 1.0)
        else:
            s = scale
        prior = dist.Normal(0.0, s).expand(leaf.shape).to_event(leaf.ndim)
        new.append(numpyro.sample(site, prior))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)
