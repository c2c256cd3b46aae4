"""Fixed-grid integration: differentiable to any order, in any mode, with no ``while_loop``.

Why. :func:`solve` steps adaptively inside a ``while_loop``, and its forward sensitivities
are a ``custom_jvp`` integrated by one: JAX differentiates that in forward mode to any
order but cannot transpose it, so reverse mode over forward mode (a Hessian, or a gradient
of a gradient, as FOCEI needs) is not available. A fixed grid is a ``lax.scan``, which JAX
differentiates in every mode and to every order, and compiles to a small program (one
Runge--Kutta step).

How. :func:`subject_grid` builds one trajectory's grid, the sorted union of

* every observation time and every dose time (so each is hit exactly; an observation at
  a dose time sees the state just before the dose, as :func:`solve` does);
* ``n_uniform`` equally spaced points over the time span;
* ``n_post_dose`` points after each dose, geometrically spaced from ``first_step`` to
  ``post_dose_span`` after it (after a dose the solution changes fastest).

:func:`integrate_on_grid` takes one step of the Dormand--Prince 5th-order Runge--Kutta
method on each grid interval (Dormand & Prince 1980; the propagating solution of
``ode45``/:class:`Dopri5`, without its error control). The grid has a static size
(``n_obs + n_dose (1 + n_post_dose) + n_uniform`` points), so trajectories batch under
``vmap``. Accuracy is set by the grid, and so is stability: an explicit step is stable for
``h * rate < 3.3`` (the Dormand--Prince stability interval on the negative real axis), so
the grid must resolve the fastest rate of the states it integrates; take fast linear
states in closed form (:func:`linear_on_grid`, or an explicit input through ``forcing``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

__all__ = ["Grid", "integrate_on_grid", "linear_on_grid", "subject_grid"]

# Dormand-Prince 5(4): nodes, stage coefficients and the 5th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)

# The kind of a grid point; at equal times the smaller kind comes first, so an
# observation sees the state before a dose at its time.
OBSERVATION, FILLER, DOSE = 0, 1, 2


class Grid(NamedTuple):
    """One trajectory's grid (:func:`subject_grid`).

    Attributes
    ----------
    times : grid points, sorted.
    kind : ``OBSERVATION`` (0), ``FILLER`` (1) or ``DOSE`` (2) for each point.
    index : each point's index among the observations or the doses (its kind's input).
    t0 : the start time: the first dose or observation, whichever is earlier.
    """

    times: Float[Array, " n_grid"]
    kind: Int[Array, " n_grid"]
    index: Int[Array, " n_grid"]
    t0: Float[Array, ""]


def subject_grid(obs_time: ArrayLike, dose_time: ArrayLike, dose_mask: ArrayLike, *,
                 n_uniform: int, n_post_dose: int, first_step: float,
                 post_dose_span: float) -> Grid:
    """One trajectory's grid from its observation and dose times (see the module notes).

    ``obs_time`` must be sorted; doses where ``dose_mask`` is false are padding (they are
    grid points, but do not move the start time). Returns a :class:`Grid`.
    """
    obs_time, dose_time = jnp.asarray(obs_time), jnp.asarray(dose_time)
    t0 = jnp.minimum(jnp.min(jnp.where(dose_mask, dose_time, jnp.inf)), obs_time[0])
    # padding sits at t0 (steps of zero length): anywhere before it, the scan stepped back
    # to it and forward again, one huge Dormand-Prince step each way
    dose_time = jnp.where(dose_mask, dose_time, t0)
    t_end = jnp.maximum(jnp.max(obs_time), t0)
    uniform = t0 + (t_end - t0) * jnp.arange(1, n_uniform + 1) / n_uniform
    parts = [obs_time, uniform]
    kinds = [jnp.full(obs_time.shape, OBSERVATION), jnp.full(n_uniform, FILLER)]
    if n_post_dose:
        ratio = (post_dose_span / first_step) ** (1.0 / max(n_post_dose - 1, 1))
        offsets = first_step * ratio ** np.arange(n_post_dose)
        post = jnp.minimum((dose_time[:, None] + offsets[None, :]).ravel(), t_end)
        parts.append(post)
        kinds.append(jnp.full(post.shape, FILLER))
    parts.append(dose_time)
    kinds.append(jnp.full(dose_time.shape, DOSE))
    times = jnp.concatenate(parts)
    kind = jnp.concatenate(kinds)
    index = jnp.concatenate([jnp.arange(p.shape[0]) for p in parts])
    order = jnp.lexsort((kind, times))
    return Grid(times[order], kind[order], index[order], t0)


def integrate_on_grid(f: Callable, y0: ArrayLike, grid: Grid, n_obs: int,
                      jumps: ArrayLike | None = None,
                      forcing: Callable | None = None) -> Array:
    """Integrate ``y' = f(t, y, u)`` over a :func:`subject_grid`, one Dormand--Prince step
    per interval; the states at the ``n_obs`` observations (before any jump at the same
    time), shape ``(n_obs, *y0.shape)``.

    ``forcing(t, t_start) -> u``: an input that does not depend on the state (e.g. a
    closed-form concentration), evaluated at every stage time of every step at once,
    outside the sequential loop (vectorised, and left out of the loop's derivatives);
    ``t_start`` is the start of the step, so an input that switches on at a dose (a grid
    point) is on within a step iff it is on at ``t_start``. Without ``forcing``, ``u`` is
    ``None``. ``jumps``: ``(n_dose, n_states)`` state jumps at the doses.
    """
    times, kind, index, t0 = grid
    t_prev = jnp.concatenate([t0[None], times[:-1]])
    h = times - t_prev
    if forcing is None:
        inputs = jnp.zeros((times.shape[0], len(_C)))
    else:
        stage_t = t_prev[:, None] + h[:, None] * jnp.asarray(_C)[None, :]
        inputs = jax.vmap(lambda ts, t_s: jax.vmap(lambda t: forcing(t, t_s))(ts))(
            stage_t, t_prev)
    if jumps is None:
        jump = jnp.zeros((times.shape[0],) + jnp.shape(y0), jnp.result_type(y0))
    else:
        is_dose = kind == DOSE
        jump = jnp.where(is_dose[:, None], jumps[jnp.where(is_dose, index, 0)], 0.0)

    def step(y, xs):
        t, h, u, dy = xs
        ks = []
        for i, (c, row) in enumerate(zip(_C, _A, strict=True)):
            yi = y
            for a, k in zip(row, ks, strict=False):
                yi = yi + (h * a) * k
            ks.append(f(t + c * h, yi, None if forcing is None else u[i]))
        out = y
        for b, k in zip(_B, ks, strict=True):
            if b:
                out = out + (h * b) * k
        return out + dy, out  # saved: the state before this point's jump

    _, ys = jax.lax.scan(step, y0, (t_prev, h, inputs, jump))
    # grid position of each observation (other points are dropped)
    pos = jnp.zeros(n_obs, int).at[jnp.where(kind == OBSERVATION, index, n_obs)].set(
        jnp.arange(kind.shape[0]), mode="drop")
    return ys[pos]


# Gauss-Legendre nodes and weights on [0, 1] (5 nodes: exact for polynomials of degree 9).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(5)
_GL_X, _GL_W = (_GL_X + 1) / 2, _GL_W / 2


def linear_on_grid(production: Callable, k: ArrayLike, y0: ArrayLike, grid: Grid,
                   at: ArrayLike) -> Array:
    """``y' = production(t) - k y``, ``y(t0) = y0``, at the times ``at`` -- without a
    sequential loop.

    Exact in ``y`` (variation of constants): ``y(t) = e^{-k (t - t0)} y0 + sum over grid
    intervals [a, b] ending by t of e^{-k (t - b)} Q``, with ``Q = int_a^b e^{-k (b - s)}
    production(s) ds`` by 5-point Gauss-Legendre on each interval (exact for polynomial
    integrands of degree 9, so the grid only needs to resolve ``production``; stable for
    any ``k``). Everything is a vectorised array expression, which JAX differentiates to
    any order and compiles small. ``at`` must be grid points (e.g. the observation times).
    """
    times, _, _, t0 = grid
    t_prev = jnp.concatenate([t0[None], times[:-1]])
    h = times - t_prev
    nodes = t_prev[:, None] + h[:, None] * _GL_X[None, :]
    kernel = jnp.exp(-k * h[:, None] * (1.0 - _GL_X[None, :]))
    q = h * jnp.sum(_GL_W[None, :] * kernel * jax.vmap(jax.vmap(production))(nodes), axis=1)
    lag = at[:, None] - times[None, :]
    ended = lag >= 0.0  # intervals that end at or before the output time
    decay = jnp.where(ended, jnp.exp(-k * jnp.where(ended, lag, 0.0)), 0.0)
    return jnp.exp(-k * (at - t0)) * y0 + decay @ q
