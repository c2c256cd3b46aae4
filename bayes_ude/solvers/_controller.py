"""Step-size control: diffrax's PID controller plus detection of step-size collapse."""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import optimistix as optx

# A step is said to have collapsed when the next step is shorter than this many units of
# round-off at the current time. A legitimate solve never needs steps that short: even
# the initial transient of Robertson's problem uses steps > 1e-6 relative to t.
_COLLAPSE_ULPS = 64.0


class GuardedPIDController(dfx.AbstractAdaptiveStepSizeController):
    """A :class:`diffrax.PIDController` that reports a collapsing step size.

    Near a finite-time blow-up diffrax keeps rejecting steps whose error estimate is not
    finite, halving the step until ``max_steps`` is spent. This controller stops as soon
    as the proposed step falls to round-off level and reports ``dt_min_reached``, which
    :func:`bayes_ude.solvers.solve` maps to ``Status.STEP_SIZE_COLLAPSE``. That makes a
    failed proposal inside a sampler cheap to reject.
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
        return self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        keep, next_t0, next_t1, made_jump, state, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        dt = next_t1 - next_t0
        eps = jnp.finfo(jnp.result_type(dt)).eps
        collapsed = jnp.abs(dt) < _COLLAPSE_ULPS * eps * jnp.abs(next_t0)
        result = dfx.RESULTS.where(collapsed & ~keep, dfx.RESULTS.dt_min_reached, result)
        return keep, next_t0, next_t1, made_jump, state, result
