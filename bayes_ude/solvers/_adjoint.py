"""Interpolating continuous adjoint: stable on stiff problems.

The forward solve keeps its dense output. The backward pass solves the adjoint system

    lambda' = -(df/du)^T lambda,     mu' = -(df/dtheta)^T lambda

from the last save time down to ``t0`` (``lambda`` jumps by the output cotangent at every
save time), reading the state from the forward interpolation. The state is never re-solved
backwards in time: for a stiff system that backward state solve is unstable (what
``diffrax.BacksolveAdjoint`` does), while the adjoint equation itself is stable backwards
and is solved with the same (stiff) solver as the forward problem. Memory grows with the
number of forward steps (the dense output), not with the number of parameters.
"""

from __future__ import annotations

import diffrax as dfx
import jax
import jax.numpy as jnp

from ._solve import _diffeqsolve, _finalise, _run_plain
from ._status import Status, from_diffrax


def adjoint_solve(problem, opts):
    """A ``custom_vjp`` solve (no events) with the interpolating adjoint as its VJP."""

    def forward(diff, const):
        vf, args = problem.parts(diff, const)
        saveat, t0 = const["saveat"], const["t0"]
        sol = _diffeqsolve(vf, diff["u0"], args, None, t0, saveat[-1], saveat, opts,
                          dfx.RecursiveCheckpointAdjoint(), dense=True)
        ys, status = _finalise(sol.ys, from_diffrax(sol.result))
        return (ys, status, sol.stats["num_steps"]), sol

    @jax.custom_vjp
    def solve(diff, const):
        return _run_plain(problem, diff, const, opts, dfx.RecursiveCheckpointAdjoint())

    def fwd(diff, const):
        out, sol = forward(diff, const)
        return out, (diff, const, sol, out[1])

    def bwd(res, cotangents):
        diff, const, sol, status = res
        ys_bar = jnp.where(status == Status.SUCCESS, cotangents[0], 0.0)
        saveat, t0 = const["saveat"], const["t0"]

        def field(t, state, args):
            lam, _ = state
            y = sol.evaluate(t)

            def f(u, d):
                vf, a = problem.parts(d, const)
                return vf(t, u, a)

            _, vjp = jax.vjp(f, y, diff)
            lam_u, lam_theta = vjp(lam)
            return (-lam_u, jax.tree.map(jnp.negative, lam_theta))

        # Interval ends, from the last save time back to t0.
        starts = jnp.concatenate([t0[None], saveat[:-1]])
        ends = saveat
        mu0 = jax.tree.map(jnp.zeros_like, diff)

        def interval(state, xs):
            t_start, t_end, g = xs
            lam, mu = state
            lam = lam + g  # the output cotangent at the interval's end (a save time)
            out = _diffeqsolve(field, (lam, mu), None, None, t_end, t_start,
                              jnp.stack([t_start]), opts, dfx.RecursiveCheckpointAdjoint())
            new = jax.tree.map(lambda v: v[-1], out.ys)
            # A zero-length interval (t0 == saveat[0]) leaves the state as it is.
            same = t_end == t_start
            new = jax.tree.map(lambda a, b: jnp.where(same, a, b), (lam, mu), new)
            return new, None

        lam0 = jnp.zeros_like(diff["u0"])
        (lam, mu), _ = jax.lax.scan(interval, (lam0, mu0), (starts, ends, ys_bar), reverse=True)
        diff_bar = dict(mu)
        diff_bar["u0"] = lam
        ok = status == Status.SUCCESS
        # A failed solve: zero gradients for a zero cotangent (solvers.sanitize), NaN for
        # a NaN one (a loss computed from the NaN values), as in _solve._nan_where_failed.
        poison = 0.0 * jnp.sum(cotangents[0])
        diff_bar = jax.tree.map(lambda v: jnp.where(ok, v, poison.astype(v.dtype)), diff_bar)
        const_bar = jax.tree.map(
            lambda v: jnp.zeros_like(v) if jnp.issubdtype(v.dtype, jnp.inexact)
            else None, const)
        return diff_bar, const_bar

    solve.defvjp(fwd, bwd)
    return solve
