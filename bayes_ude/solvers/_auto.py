"""Automatic stiffness detection and switching: Tsit5 <-> a Rosenbrock method.

:class:`Auto` is a diffrax solver, so it works with every option of :func:`solve`
(events, doses, forward and reverse sensitivities) like any other. Each step is taken by
one of two solvers, chosen by a mode kept in the solver state:

* In non-stiff mode (the start), Tsit5 takes the step and estimates the spectral radius
  ``rho`` of the Jacobian in two ways, keeping the larger: Hairer's estimate from its
  last two stages, both evaluated at ``t1`` (Hairer & Wanner, *Solving ODEs II*, IV.2;
  as in ``dopri5``), ``h rho ~ |k7 - k6| / |y1 - y6|``, which is free; and one power
  iteration ``v <- J v / |J v|`` per step (one JVP), which converges to the dominant
  eigenvalue within a few steps. When ``h rho`` exceeds ``stifftol`` times Tsit5's
  stability boundary on the negative real axis, Tsit5's step is held by stability and
  not accuracy; after ``max_stiff_steps`` such accepted steps (counted as in ``dopri5``:
  the count is cleared only by six calm steps in a row) Auto switches.
* In stiff mode the Rosenbrock method takes the step; it forms the Jacobian anyway, and
  ``|J|_inf`` bounds its spectral radius. When ``h |J|_inf`` stays below ``nonstifftol``
  times Tsit5's stability boundary for ``max_nonstiff_steps`` consecutive accepted steps,
  Tsit5 could take the same steps stably: switch back.

The rules follow OrdinaryDiffEq.jl's ``AutoSwitch`` (``AutoTsit5(Rosenbrock23())``), but
not its thresholds (0.9 of the boundary both ways): measured on Robertson at tight
tolerances, the error controller holds Tsit5 at ``h rho ~ 2.4-3.1``, below 0.9 x 3.5, for
thousands of steps; the power-iteration estimate is accurate there, so 0.6 detects it,
and switching back below 0.5 gives hysteresis. The step size carries over a switch; the
controller adapts it from there.

Cost: unbatched, ``lax.cond`` runs only the active method, so a non-stiff problem costs
Tsit5's steps plus a few vector operations per step. Under ``vmap`` (ensembles) both
branches are evaluated for every member (a ``select``); prefer a fixed solver there when
the stiffness is known.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from ._rosenbrock import AbstractRosenbrock, Rodas5P

# Tsit5's real stability boundary (its stability region meets the negative real axis at
# about -3.5068; OrdinaryDiffEq.jl's ``alg_stability_size(Tsit5())``).
TSIT5_STABILITY = 3.5068

_TSIT5 = dfx.Tsit5()
_TAB = _TSIT5.tableau
# Weights of y1 - y6 in terms of the stage increments k1..k6 (c6 = c7 = 1).
# Stage 6 uses k1..k5; y1 = y0 + sum b_j k_j also uses k6 (b_7 = 0).
_Y1_MINUS_Y6 = (np.asarray(_TAB.b_sol, float)[:6]
                - np.append(np.asarray(_TAB.a_lower[4], float), 0.0))


class _AutoInterpolation(dfx.AbstractLocalInterpolation):
    """Dense output of whichever method took the step."""

    t0: Array
    t1: Array
    stiff: Array
    nonstiff_info: PyTree
    stiff_info: PyTree
    stiff_cls: type = eqx.field(static=True)

    def evaluate(self, t0, t1=None, left: bool = True):
        def nonstiff(_):
            interp = _TSIT5.interpolation_cls(t0=self.t0, t1=self.t1, **self.nonstiff_info)
            return interp.evaluate(t0, t1, left)

        def stiff(_):
            interp = self.stiff_cls(t0=self.t0, t1=self.t1, **self.stiff_info)
            return interp.evaluate(t0, t1, left)

        return jax.lax.cond(self.stiff, stiff, nonstiff, None)


class Auto(dfx.AbstractAdaptiveSolver):
    """Tsit5 with automatic switching to a Rosenbrock method while the problem is stiff.

    Attributes
    ----------
    stiff : the stiff solver, :class:`Rodas5P` (default) or :class:`Rosenbrock23`.
    max_stiff_steps : consecutive accepted steps that must look stiff before switching
        to the stiff solver (default 10).
    max_nonstiff_steps : consecutive accepted stiff-solver steps that must look
        non-stiff before switching back (default 3).
    stifftol, nonstifftol : fractions of Tsit5's stability boundary above which a
        Tsit5 step counts as stiff (default 0.6) and below which a stiff-solver step
        counts as non-stiff (default 0.5; the gap avoids switching back and forth).

    Mass matrices are not supported (Tsit5 cannot take DAE steps): use the Rosenbrock
    solver directly.
    """

    stiff: AbstractRosenbrock = Rodas5P()
    max_stiff_steps: int = eqx.field(default=10, static=True)
    max_nonstiff_steps: int = eqx.field(default=3, static=True)
    stifftol: float = eqx.field(default=0.6, static=True)
    nonstifftol: float = eqx.field(default=0.5, static=True)

    term_structure: ClassVar = dfx.AbstractTerm

    def __check_init__(self):
        if not isinstance(self.stiff, AbstractRosenbrock):
            raise ValueError(
                "Auto(stiff=...) needs a Rosenbrock solver (solvers.Rodas5P() or "
                f"solvers.Rosenbrock23()), got {type(self.stiff).__name__}"
            )
        if self.stiff.mass_matrix is not None or self.stiff.jacobian is not None:
            raise ValueError(
                "Auto does not take a mass matrix or a user Jacobian; pass them to the "
                "Rosenbrock solver and use it directly"
            )
        if self.max_stiff_steps < 1 or self.max_nonstiff_steps < 1:
            raise ValueError("max_stiff_steps and max_nonstiff_steps must be at least 1")

    @property
    def interpolation_cls(self):
        stiff_cls = self.stiff.interpolation_cls

        def make(*, t0, t1, stiff, nonstiff_info, stiff_info):
            return _AutoInterpolation(t0=t0, t1=t1, stiff=stiff, nonstiff_info=nonstiff_info,
                                      stiff_info=stiff_info, stiff_cls=stiff_cls)

        return make

    def order(self, terms):
        return 5 if isinstance(self.stiff, Rodas5P) else 2

    def error_order(self, terms):
        # Tsit5 and Rodas5P both estimate errors of local order 5; with Rosenbrock23 the
        # controller is tuned for the stiff (lower-order) method, which is the safe side.
        return 5 if isinstance(self.stiff, Rodas5P) else 3

    def init(self, terms, t0, t1, y0, args):
        # (stiff mode?, [stiff-looking steps, consecutive calm steps], power-iteration
        #  vector, Tsit5's first-same-as-last state)
        n = ravel_pytree(y0)[0].shape[0]
        v = jnp.asarray(1.0 + 0.5 * np.cos(1.7 * np.arange(n)), ravel_pytree(y0)[0].dtype)
        return (jnp.array(False), jnp.zeros(2, jnp.int32), v / jnp.linalg.norm(v),
                _TSIT5.init(terms, t0, t1, y0, args))

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        stiff_mode, count, v, tsit_state = solver_state
        limit = TSIT5_STABILITY
        h = jnp.abs(t1 - t0)

        def nonstiff_step(_):
            y1, err, dense, new_tsit, result = _TSIT5.step(terms, t0, t1, y0, args,
                                                          tsit_state, made_jump)
            # Two estimates of the spectral radius, the larger wins: Hairer's from the
            # last two stages (free), and one power iteration ``J v`` per step (one JVP),
            # which converges to the dominant eigenvalue over a few steps where Hairer's
            # can stay low for many steps at the stability boundary.
            k = jax.lax.stop_gradient(_stack_flat(dense["k"]))
            dk = k[6] - k[5]
            dy = jnp.asarray(_Y1_MINUS_Y6, k.dtype) @ k[:6]
            h_rho = jnp.sqrt(jnp.sum(dk**2) / jnp.maximum(jnp.sum(dy**2), _TINY))
            jv = _jvp_state(terms, t0, y0, args, v)
            jv_norm = jnp.linalg.norm(jv)
            h_rho = jnp.maximum(h_rho, h * jv_norm)
            new_v = _normalised(jv, jv_norm, v)
            looks_stiff = h_rho > self.stifftol * limit
            # The estimates scatter around the threshold near the stability boundary: as
            # in Hairer's dopri5, stiff-looking steps are counted, and the count is only
            # cleared by _CLEAR_AFTER consecutive non-stiff-looking steps.
            stiff_count, calm = count[0], count[1]
            calm = jnp.where(looks_stiff, 0, calm + 1)
            stiff_count = jnp.where(looks_stiff, stiff_count + 1,
                                    jnp.where(calm >= _CLEAR_AFTER, 0, stiff_count))
            switch = stiff_count >= self.max_stiff_steps
            new_count = jnp.where(switch, 0, jnp.stack([stiff_count, calm])).astype(jnp.int32)
            state = (switch, new_count, new_v, new_tsit)
            info = {"stiff": jnp.array(False), "nonstiff_info": dense,
                    "stiff_info": _zeros_like(stiff_shapes)}
            return y1, err, info, state, result

        def stiff_step(_):
            y1, err, dense, _, result, jac = self.stiff.step_with_jacobian(terms, t0, t1,
                                                                          y0, args)
            jac = jax.lax.stop_gradient(jac)
            h_rho = h * jnp.max(jnp.sum(jnp.abs(jac), axis=1))
            looks_nonstiff = h_rho < self.nonstifftol * limit
            calm = jnp.where(looks_nonstiff, count[1] + 1, 0)
            switch = calm >= self.max_nonstiff_steps
            new_count = jnp.stack([jnp.zeros_like(calm), jnp.where(switch, 0, calm)])
            jv = jac @ v
            new_v = _normalised(jv, jnp.linalg.norm(jv), v)
            # Back in Tsit5 the stored first-same-as-last value is stale: mark it so.
            reset = (jnp.array(True), tsit_state[1])
            state = (~switch, new_count.astype(jnp.int32), new_v, reset)
            info = {"stiff": jnp.array(True), "nonstiff_info": _zeros_like(nonstiff_shapes),
                    "stiff_info": dense}
            return y1, err, info, state, result

        nonstiff_shapes = jax.eval_shape(
            lambda: _TSIT5.step(terms, t0, t1, y0, args, tsit_state, made_jump)[2])
        stiff_shapes = jax.eval_shape(
            lambda: self.stiff.step_with_jacobian(terms, t0, t1, y0, args)[2])
        return jax.lax.cond(stiff_mode, stiff_step, nonstiff_step, None)


def _jvp_state(terms, t, y, args, v):
    """``(df/du)(t, y) v`` for a flat vector ``v`` (no derivatives flow through it)."""
    y_flat, unravel = ravel_pytree(jax.lax.stop_gradient(y))
    # Only array leaves: stop_gradient would turn a Python float into an array and change
    # what the (closure-converted) vector field was traced with.
    args = jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, args)

    def f(u):
        return ravel_pytree(terms.vf(t, unravel(u), args))[0]

    return jax.jvp(f, (y_flat,), (v,))[1]


def _normalised(w, norm, fallback):
    ok = jnp.isfinite(norm) & (norm > 0)
    return jnp.where(ok, w / jnp.where(ok, norm, 1.0), fallback)


_TINY = 1e-300
# Consecutive non-stiff-looking Tsit5 steps that clear the count of stiff-looking ones.
_CLEAR_AFTER = 6


def _stack_flat(k: PyTree) -> Array:
    """Stage increments (leaves with a leading stage axis) as one (stages, n) array."""
    leaves = jax.tree.leaves(k)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)


def _zeros_like(shapes: PyTree) -> PyTree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
