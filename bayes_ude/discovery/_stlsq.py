"""Sequentially thresholded least squares (STLSQ) in pure JAX, with fixed shapes.

Algorithm (that of pysindy's ``STLSQ``, version 2.1, with ``normalize_columns=False``;
checked against it to 1e-6 in ``tests/discovery/test_sindy.py``), for each target
column ``y`` of ``dX`` independently:

1. Start with every term active.
2. Repeat at most ``max_iter`` times: ridge-regress ``y`` on the active columns of
   ``Theta``, minimising ``||y - Theta w||^2 + alpha ||w||^2`` (no ``1/n`` factor, as in
   scikit-learn's ``ridge_regression``); keep the terms with ``|w_j| >= threshold`` and
   zero the others. Stop early once the active set no longer changes.
3. Terms whose coefficient is ``<= 1e-14`` in magnitude are dropped, and, when
   ``unbias`` (the default), the coefficients are refitted by unregularised least
   squares on the final active set, so the ridge only chooses the terms. Without
   ``unbias`` the thresholded ridge coefficients of the last iteration are returned.

The refit is a truncated-SVD (minimum-norm) least-squares solve: singular values of the
active columns below ``rcond`` times the largest count as zero. pysindy's refit is
scikit-learn's ``LinearRegression``, which since scikit-learn 1.9 passes its ``tol=1e-6``
to ``scipy.linalg.lstsq`` as this cutoff, so ``rcond=1e-6`` is the default here. It only
matters for ill-conditioned libraries (condition number of ``Theta`` above ``1e6``, e.g.
cubic terms of states of size ~30), where it acts as a mild regulariser; ``rcond=None``
gives the machine-precision cutoff (the plain least-squares solution).

pysindy runs the loop jointly over targets and stops when no target's active set
changed; because one more iteration on an unchanged active set reproduces it exactly,
stopping each target at its own fixed point gives the same result.

Fixed shapes: inactive terms are masked (their column of ``Theta`` zeroed, their ridge
row zeroed), never dropped, so the whole fit vmaps over draws and thresholds. Each
regression is a least-squares solve of the small system ``[R M; sqrt(alpha) M]`` with
``Theta = Q R`` (reduced QR, computed once), which has the conditioning of ``Theta``
rather than of the normal equations ``Theta^T Theta``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

#: pysindy drops coefficients at or below this magnitude before the unbiasing refit
#: (``BaseOptimizer.fit``: ``ind_ = abs(coef_) > 1e-14``); matched here.
ZERO_COEFFICIENT = 1e-14


def _masked_lstsq(r: Float[Array, "m p"], b: Float[Array, " m"], mask: Bool[Array, " p"],
                  sqrt_alpha: Float[Array, ""], rcond: Float[Array, ""]) -> Float[Array, " p"]:
    """Ridge (or, with ``sqrt_alpha=0``, minimum-norm least squares) on the active columns.

    Inactive columns and their ridge rows are zero, so their singular values are zero and
    the minimum-norm solution leaves them at zero (the final ``where`` makes it exact).
    """
    p = r.shape[1]
    m = mask.astype(r.dtype)
    a = jnp.concatenate([r * m, sqrt_alpha * jnp.diag(m)], axis=0)
    rhs = jnp.concatenate([b, jnp.zeros(p, b.dtype)])
    w = jnp.linalg.lstsq(a, rhs, rcond=rcond)[0]
    return jnp.where(mask, w, 0.0)


def stlsq_core(theta: Float[Array, "n p"], y: Float[Array, "n t"],
               threshold: Float[Array, ""], alpha: Float[Array, ""],
               max_iter: Int[Array, ""], unbias: bool, rcond: Float[Array, ""]
               ) -> tuple[Float[Array, "t p"], Bool[Array, ""]]:
    """STLSQ for one data set: coefficients ``(n_targets, n_terms)`` and a converged flag.

    No validation; ``threshold``, ``alpha``, ``max_iter`` and ``rcond`` (the refit's
    singular-value cutoff; negative means machine precision) may be traced.
    """
    dtype = jnp.result_type(theta.dtype, y.dtype)
    theta = theta.astype(dtype)
    y = y.astype(dtype)
    threshold = jnp.asarray(threshold, dtype)
    sqrt_alpha = jnp.sqrt(jnp.asarray(alpha, dtype))
    n_terms, n_targets = theta.shape[1], y.shape[1]
    q, r = jnp.linalg.qr(theta)
    qty = q.T @ y
    solve = jax.vmap(_masked_lstsq, in_axes=(None, 1, 0, None, None))
    # The ridge steps use lstsq's own machine-precision cutoff (scikit-learn's ridge
    # solves the normal equations exactly); the default for our (2p, p) system:
    machine_rcond = jnp.asarray(jnp.finfo(dtype).eps * 2 * n_terms, dtype)
    rcond = jnp.asarray(rcond, dtype)
    rcond = jnp.where(rcond < 0, machine_rcond, rcond)

    def cond(state):
        k, mask, coef, converged = state
        return (k < max_iter) & ~converged

    def body(state):
        k, mask, coef, converged = state
        w = solve(r, qty, mask, sqrt_alpha, machine_rcond)
        new_mask = mask & (jnp.abs(w) >= threshold)
        coef = jnp.where(new_mask, w, 0.0)
        return k + 1, new_mask, coef, jnp.all(new_mask == mask)

    init = (jnp.asarray(0, jnp.int32), jnp.ones((n_targets, n_terms), bool),
            jnp.zeros((n_targets, n_terms), dtype), jnp.asarray(False))
    _, _, coef, converged = jax.lax.while_loop(cond, body, init)
    if unbias:
        support = jnp.abs(coef) > ZERO_COEFFICIENT
        coef = solve(r, qty, support, jnp.zeros((), dtype), rcond)
    return coef, converged


def criteria(theta: Float[Array, "n p"], y: Float[Array, "n t"], coef: Float[Array, "t p"]):
    """Residual sum of squares, number of active terms, error, AICc and BIC of one fit."""
    n = y.shape[0] * y.shape[1]
    rss = jnp.sum((y - theta @ coef.T) ** 2)
    k = jnp.count_nonzero(coef)
    log_term = n * jnp.log(rss / n)
    aicc = jnp.where(n - k - 1 > 0, log_term + 2 * k + 2 * k * (k + 1) / (n - k - 1), jnp.inf)
    bic = log_term + k * jnp.log(n)
    return k, rss / n, aicc, bic


@functools.partial(jax.jit, static_argnames=("unbias", "theta_batched"))
def stlsq_grid(theta, y, thresholds, alpha, max_iter, unbias, rcond, theta_batched):
    """Fits for every threshold and every draw: ``y`` is ``(draws, n, t)``, ``thresholds``
    is ``(L,)``; ``theta`` is ``(n, p)`` or, if ``theta_batched``, ``(draws, n, p)``.

    The one compiled entry point, so a fit, a sweep and a batch of draws of the same
    shapes share one compilation.

    Returns coefficients ``(L, draws, t, p)``, converged, n_active, error, aicc, bic
    (each ``(L, draws)``).
    """

    def one(th, yy, lam):
        coef, converged = stlsq_core(th, yy, lam, alpha, max_iter, unbias, rcond)
        return (coef, converged, *criteria(th, yy, coef))

    over_draws = jax.vmap(one, in_axes=(0 if theta_batched else None, 0, None))
    return jax.vmap(over_draws, in_axes=(None, None, 0))(theta, y, thresholds)
