"""Step-size control: diffrax's PID controller plus detection of step-size collapse and of
non-finite states."""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

# A step is said to have collapsed when the next step is shorter than this many units of
# round-off at the current time. A legitimate solve never needs steps that short: even
# the initial transient of Robertson's problem uses steps > 1e-6 relative to t.
_COLLAPSE_ULPS = 64.0

# After this many consecutive rejected steps with a non-finite error estimate the solve
# stops as non-finite. diffrax counts a NaN error as infinite, and the controller then
# shortens the step by ``factormin`` (0.2) each time: 20 rejections in a row mean a step
# 0.2**20 ~ 1e-14 times the first failed one still meets NaN, i.e. the vector field is
# not finite arbitrarily close to the current state. (A step that merely overshoots into
# a region where the vector field is undefined recovers after a few shortenings.) The
# round-off test above cannot catch this at t = 0, where an ulp of t is zero.
_MAX_NONFINITE_REJECTS = 20


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


class GuardedPIDController(dfx.AbstractAdaptiveStepSizeController):
    """A :class:`diffrax.PIDController` that reports a collapsing step size.

    Near a finite-time blow-up diffrax keeps rejecting steps whose error estimate is not
    finite, halving the step until ``max_steps`` is spent. This controller stops as soon
    as the proposed step falls to round-off level and reports ``dt_min_reached``, which
    :func:`bayes_ude.solvers.solve` maps to ``Status.STEP_SIZE_COLLAPSE``. That makes a
    failed proposal inside a sampler cheap to reject.

    It also stops, reporting ``nonfinite`` (``Status.NONFINITE``), when the state it steps
    from is not finite (a NaN initial state or dose) or the step itself is not (one
    step), or after :data:`_MAX_NONFINITE_REJECTS` consecutive steps rejected for a
    non-finite error estimate (a vector field that is NaN at the current state, e.g. from
    the start): never after ``max_steps``.
    """

    inner: dfx.PIDController

    @property
    def rtol(self):
        return self.inner.rtol

    @property
    def atol(self):
        return self.inner.atol

    @property
    def norm(self) -> Callable:
        return self.inner.norm

    def __init__(self, rtol, atol, norm: Callable = optx.rms_norm, **kwargs):
        self.inner = dfx.PIDController(rtol=rtol, atol=atol, norm=norm, **kwargs)

    def wrap(self, direction):
        return eqx.tree_at(lambda c: c.inner, self, self.inner.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        next_t1, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
        # The state carries the number of consecutive non-finite rejections.
        return next_t1, (state, jnp.zeros((), jnp.int32))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        inner_state, n_nonfinite = controller_state
        keep, next_t0, next_t1, made_jump, state, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner_state
        )
        dt = next_t1 - next_t0
        eps = jnp.finfo(jnp.result_type(dt)).eps
        collapsed = jnp.abs(dt) < _COLLAPSE_ULPS * eps * jnp.abs(next_t0)
        result = dfx.RESULTS.where(collapsed & ~keep, dfx.RESULTS.dt_min_reached, result)
        # Nothing can recover from a non-finite state or step: stop now.
        n_nonfinite = jnp.where(keep | _all_finite(y_error), 0, n_nonfinite + 1)
        nonfinite = (~_all_finite(y0) | ~jnp.isfinite(t1 - t0)
                     | (n_nonfinite >= _MAX_NONFINITE_REJECTS))
        result = dfx.RESULTS.where(nonfinite, dfx.RESULTS.nonfinite, result)
        return keep, next_t0, next_t1, made_jump, (state, n_nonfinite), result
