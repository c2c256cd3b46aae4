"""The NUTS metric (mass matrix): how dense or diagonal, how it is adapted, and the fixed
Laplace metric. Used by :mod:`._nuts`; nothing here runs a sampler.

* ``dense_mass="auto"`` (:func:`auto_dense_mass`): dense for small posteriors, from the
  model's shapes alone (an abstract trace, :func:`latent_sites`).
* A dense metric adapted by NumPyro's windows: a window too short for a d x d estimate
  sets the diagonal of it instead (:func:`short_windows`,
  :func:`diagonal_after_short_window`, applied after each NUTS transition).
* :func:`laplace_inverse_mass`: the inverse Hessian of the potential at a point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.infer import util as infer_util
from numpyro.infer.hmc_util import build_adaptation_schedule

from .._compile import compiler_options

#: ``dense_mass="auto"``: a dense metric when the posterior has at most ``DENSE_MAX_DIM``
#: unconstrained dimensions and warmup has at least ``DENSE_WARMUP_PER_DIM`` iterations per
#: dimension, else a diagonal one. The dense metric is the covariance of the last slow
#: adaptation window's draws (about half the warmup), which needs several draws per
#: dimension to be better than its diagonal, and costs O(d^2) per leapfrog step. Measured
#: on the Theophylline population model (43 dimensions, 4 x (1000 + 1000), 4 seeds;
#: benchmarks/bayes_nlme.py): 16-21 leapfrog steps per draw instead of 39-46 and minimum
#: bulk ESS per second of the sampling phase 610-700 against 460-550 (the population means
#: and their subjects' non-centred effects are correlated, which a diagonal metric cannot
#: undo), but with the twice larger step size 0-7 divergent transitions per 4,000 draws
#: where the diagonal metric had 0-1 (the funnel of the between-subject SDs near 0). With
#: the random effects centred (bayes_ude.nlme's ``random_effects="auto"`` on informative
#: data) there is no funnel: 0 divergences over 4 seeds, 10-13 steps per draw, and that is
#: when population fits default to it.
DENSE_MAX_DIM = 100
DENSE_WARMUP_PER_DIM = 10
#: A dense metric is estimated only from an adaptation window with at least
#: ``DENSE_WINDOW_PER_DIM`` draws per dimension; a shorter window (the first ones of
#: warmup: 25, 50, 100 draws) sets the diagonal of its estimate. A d x d covariance from
#: fewer draws than ~d is nearly singular: on Theophylline (43 dimensions) the metrics of
#: the 25- and 50-draw windows made 340 leapfrog steps per iteration (diagonal: 60), a
#: third of the whole run's time.
DENSE_WINDOW_PER_DIM = 4


def is_latent(site) -> bool:
    """A continuous latent sample site of a NumPyro trace (what NUTS moves)."""
    return (site["type"] == "sample" and not site["is_observed"]
            and not site["fn"].support.is_discrete)


def latent_sites(model, args, kwargs, constrained: bool = False) -> dict:
    """The model's continuous latent sites: ``{name: unconstrained shape}`` (the shape of
    their values with ``constrained``; one abstract trace: nothing is computed or
    compiled; run eagerly, a population model's trace compiled ~100 single operations,
    ~1.5 s)."""
    def values():
        trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(*args,
                                                                                  **kwargs)
        return {k: v["value"] if constrained else biject_to(v["fn"].support).inv(v["value"])
                for k, v in trace.items() if is_latent(v)}

    return {k: v.shape for k, v in jax.eval_shape(values).items()}


def auto_dense_mass(model, args, kwargs, num_warmup: int) -> bool:
    """What ``dense_mass="auto"`` picks for this model (see ``DENSE_MAX_DIM``)."""
    dim = sum(math.prod(shape) for shape in latent_sites(model, args, kwargs).values())
    return dim <= DENSE_MAX_DIM and num_warmup >= DENSE_WARMUP_PER_DIM * dim


def laplace_inverse_mass(model: Callable, *model_args, values: dict, floor: float = 1e-3,
                         **model_kwargs) -> np.ndarray:
    """The Laplace metric: the inverse Hessian of the potential (negative log joint) at
    ``values`` (constrained values of every latent site, e.g. a MAP estimate), on the flat
    unconstrained scale that :func:`run_nuts`'s ``inverse_mass_matrix`` takes.

    Eigenvalues of the Hessian are replaced by their absolute values, at least ``floor``
    (a point that is not quite a mode can have negative curvature; a direction the model
    leaves flat gets SD at most ``1/sqrt(floor)``). One Hessian, by forward-over-reverse
    differentiation, compiled once.
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor!r}")
    sites = latent_sites(model, model_args, model_kwargs)
    missing = sorted(set(sites) - set(values))
    if missing:
        raise ValueError(f"laplace_inverse_mass: values has no entry for the latent sites "
                         f"{missing}")
    z = infer_util.unconstrain_fn(model, model_args, model_kwargs,
                                  {k: values[k] for k in sites})
    flat, unravel = ravel_pytree(z)

    def potential(x):
        return infer_util.potential_energy(model, model_args, model_kwargs, unravel(x))

    hess = jax.jit(jax.hessian(potential), compiler_options=compiler_options())(flat)
    hess = np.asarray(hess, dtype=float)
    if not np.all(np.isfinite(hess)):
        raise ValueError("laplace_inverse_mass: the Hessian at values is not finite")
    lam, vec = np.linalg.eigh(0.5 * (hess + hess.T))
    lam = np.maximum(np.abs(lam), floor)
    return (vec / lam) @ vec.T


def short_windows(num_warmup: int, z) -> jax.Array:
    """Per window of NumPyro's warmup schedule: too short for a dense estimate?"""
    dim = sum(math.prod(jnp.shape(v)[1:]) for v in jax.tree.leaves(z))  # (chain, ...)
    windows = build_adaptation_schedule(num_warmup)
    # only the middle windows estimate a metric (the first and last are buffers that
    # adapt the step size alone); window_idx ends one past the last window
    return jnp.array([False] + [w.end - w.start + 1 < DENSE_WINDOW_PER_DIM * dim
                                for w in windows[1:-1]] + [False, False])


def diagonal_after_short_window(old, new, short):
    """``new``, whose adaptation may just have closed a window and set a dense metric
    from its draws: where that window was short, the diagonal of that metric (the
    variances, exact; the covariances of a few draws are noise). The step size that
    NumPyro searched for the dense metric is then re-adapted by dual averaging."""
    ad = new.adapt_state
    closed = old.adapt_state.window_idx
    use = (ad.window_idx != closed) & short[closed]

    def diagonal(tree, fn):  # NumPyro: a matrix or {block of sites: matrix}
        return jax.tree.map(lambda m, inverse: jnp.where(
            use, jnp.diag(fn(jnp.diagonal(inverse))), m), tree, ad.inverse_mass_matrix)

    ad = ad._replace(inverse_mass_matrix=diagonal(ad.inverse_mass_matrix, lambda v: v),
                     mass_matrix_sqrt=diagonal(ad.mass_matrix_sqrt, lambda v: 1 / jnp.sqrt(v)),
                     mass_matrix_sqrt_inv=diagonal(ad.mass_matrix_sqrt_inv, jnp.sqrt))
    return new._replace(adapt_state=ad)
