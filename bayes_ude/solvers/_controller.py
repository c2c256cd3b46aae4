"""Step-size control: diffrax's PID controller plus detection of step-size collapse and of
a non-finite start."""

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


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


class GuardedPIDController(dfx.AbstractAdaptiveStepSizeController):
    """A :class:`diffrax.PIDController` that reports a collapsing step size and a
    non-finite start.

    Near a finite-time blow-up diffrax keeps rejecting steps whose error estimate is not
    finite, shortening the step until ``max_steps`` is spent. This controller stops as
    soon as the proposed step falls to round-off level and reports ``dt_min_reached``,
    which :func:`bayes_ude.solvers.solve` maps to ``Status.STEP_SIZE_COLLAPSE``. That
    makes a failed proposal inside a sampler cheap to reject.

    It also stops on the first step, reporting ``nonfinite`` (``Status.NONFINITE``), when
    the solve starts from a state or with a vector field that is not finite (a NaN
    initial state or dose, a parameter that makes the vector field NaN): :meth:`init`
    checks both and then proposes a NaN first step, which :meth:`adapt_step_size`
    refuses. That covers the one case the round-off test cannot see, a vector field that
    is NaN at ``t = 0``, where an ulp of ``t`` is zero.

    The checks cost one evaluation of the vector field per solve and a test of two
    scalars per step. (An earlier version counted consecutive rejections with a
    non-finite error estimate in the controller's state instead: 1-2 % of a small UDE's
    loss and gradient, its whole overhead over hand-written diffrax; docs/performance.md.)
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
        # One evaluation of the vector field per solve. (diffrax's own choice of the first
        # step does not evaluate it: the terms it sees are wrapped, not an ODETerm, so it
        # proposes 0.01.)
        ok = _all_finite(y0) & _all_finite(func(terms, t0, y0, args))
        return jnp.where(ok, next_t1, jnp.nan), state

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
        # A NaN step comes only from init: the start is not finite.
        result = dfx.RESULTS.where(~jnp.isfinite(t1 - t0), dfx.RESULTS.nonfinite, result)
        return keep, next_t0, next_t1, made_jump, state, result
