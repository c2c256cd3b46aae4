"""Single shooting for mass-matrix models ``M u' = f(t, u, params)`` (universal DAEs).

A universal DAE keeps a known conservation law as an algebraic row of ``f`` (a zero row of
``M``) and lets a network fill in unknown kinetics in the differential rows. The Rosenbrock
solvers (:class:`bayes_ude.solvers.Rodas5P`) then keep the constraint to round-off along
every trajectory, whatever the network does. Stiff kinetics span many decades in time and
in concentration: this loss therefore takes a start time ``t0`` before the first
observation (data on a logarithmic time grid rarely include ``t = 0``) and a residual
scale per species (default: each species' largest absolute value in the data, so that a
species at ``1e-5`` weighs as much as one at ``1``).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .. import solvers
from ..ude import FAILED_LOSS, call_model
from ..ude._losses import _as_batch, _select, _u0


class MassMatrixShooting(eqx.Module):
    """Mean squared scaled residual of ``M u' = f(t, u, params)`` solved from each
    trajectory's initial state.

    Called as ``loss(params)`` or ``loss(params, batch)`` (trajectory indices), so it works
    with :func:`bayes_ude.ude.fit` and its minibatches. A failed solve gives
    :data:`bayes_ude.ude.FAILED_LOSS`.

    Attributes
    ----------
    ts : observation times ``(T,)``.
    ys : observations ``(B, T, n)``.
    u0 : initial states ``(B, n)`` at ``t0`` (consistent with the algebraic rows; an
        inconsistent one fails the solve, ``solvers.Status.INCONSISTENT``, and the loss is
        :data:`bayes_ude.ude.FAILED_LOSS`).
    t0 : start of the solves (``<= ts[0]``).
    scale : per-species residual scale ``(n,)``.
    mass_matrix : ``M`` ``(n, n)``, possibly singular.
    options : the :class:`bayes_ude.solvers.SolveOptions` of the solves (built from the
        constructor's ``solver``, ``rtol``, ``atol``, ``max_steps`` and ``sensitivity``).
    """

    ts: Array
    ys: Array
    u0: Array
    t0: Array
    scale: Array
    mass_matrix: Array
    vector_field: Callable = eqx.field(static=True)
    options: solvers.SolveOptions

    def __init__(self, ts: ArrayLike, ys: ArrayLike, mass_matrix: ArrayLike, *,
                 u0: ArrayLike | None = None, t0: float | None = None,
                 vector_field: Callable = call_model, scale: ArrayLike | None = None,
                 solver=None, rtol: float = 1e-6, atol: float = 1e-10,
                 max_steps: int = 10_000, sensitivity: str = "reverse"):
        """Build the loss.

        Parameters
        ----------
        ts, ys : data, ``ys`` of shape ``(T, n)`` or ``(B, T, n)``.
        mass_matrix : ``M`` of shape ``(n, n)``.
        u0 : initial states at ``t0``, ``(n,)`` or ``(B, n)``; default the first data point
            of each trajectory (then ``t0`` must be ``ts[0]``, its default).
        t0 : start time (default ``ts[0]``); must not exceed ``ts[0]``, and needs ``u0``
            when before it.
        vector_field : ``f(t, u, params)``; default ``params(t, u)``.
        scale : per-species residual scale; default each species' largest ``|y|``.
        solver : a Rosenbrock solver (default :class:`bayes_ude.solvers.Rodas5P`).
        rtol, atol : solver tolerances; ``atol`` should sit well below the smallest
            species that matters (the default ``1e-10`` suits concentrations ``~1e-5``).
        sensitivity : as in :func:`bayes_ude.solvers.solve`; ``"reverse"`` by default
            (networks have more weights than forward sensitivities pay off for; the
            continuous adjoint does not take mass matrices).
        """
        ts, ys = _as_batch(ts, ys)
        n = ys.shape[2]
        mass = np.asarray(mass_matrix, dtype=float)
        if mass.shape != (n, n):
            raise ValueError(f"mass_matrix must have shape ({n}, {n}) for {n} species, got "
                             f"{mass.shape}")
        t_start = float(ts[0]) if t0 is None else float(t0)
        if not t_start <= ts[0]:
            raise ValueError(f"t0={t_start} must not exceed ts[0]={ts[0]}")
        if u0 is None and t_start < ts[0]:
            raise ValueError(f"u0 is needed when t0={t_start} is before ts[0]={ts[0]}: the "
                             f"default u0, the first data point, is the state at ts[0], "
                             f"not at t0")
        if scale is None:
            s = np.abs(ys).reshape(-1, n).max(axis=0)
            s = np.where(s > 0, s, 1.0)
        else:
            s = np.broadcast_to(np.asarray(scale, dtype=float), (n,)).copy()
            if np.any(~((s > 0) & np.isfinite(s))):
                raise ValueError(f"scale must be finite and positive, got {scale!r}")
        self.ts, self.ys = jnp.asarray(ts), jnp.asarray(ys)
        self.u0 = jnp.asarray(_u0(ys, u0))
        self.t0 = jnp.asarray(t_start)
        self.scale = jnp.asarray(s)
        self.mass_matrix = jnp.asarray(mass)
        self.vector_field = vector_field
        solver = solvers.Rodas5P() if solver is None else solver
        if not isinstance(solver, solvers.AbstractRosenbrock):
            raise ValueError(f"solver must be a Rosenbrock solver (solvers.Rodas5P, "
                             f"solvers.Rosenbrock23), got {type(solver).__name__}")
        self.options = solvers.SolveOptions(solver=solver, rtol=rtol, atol=atol,
                                            max_steps=max_steps, sensitivity=sensitivity)

    @property
    def n_trajectories(self) -> int:
        return self.ys.shape[0]

    def solve(self, params, u0: ArrayLike, ts: ArrayLike | None = None) -> solvers.Solution:
        """One solve of ``M u' = f`` from ``u0`` at ``t0`` (a new initial state, e.g. for
        held-out trajectories)."""
        ts = self.ts if ts is None else jnp.asarray(ts)
        return self.options.solve(self.vector_field, jnp.asarray(u0), ts, params, t0=self.t0,
                                  mass_matrix=self.mass_matrix)

    def predict(self, params, ts: ArrayLike | None = None, u0: ArrayLike | None = None
                ) -> tuple[Array, Array]:
        """Solutions ``(B, len(ts), n)`` and success flags ``(B,)``."""
        u0 = self.u0 if u0 is None else jnp.asarray(u0)
        # One solve after another (lax.map), not vmap: reverse-mode gradients of vmapped
        # Rosenbrock solves came out NaN where each single solve's gradient is finite
        # (see docs/pde.md); stiff solves differ in their step counts anyway, so a vmapped
        # batch would run every member for the longest one's steps.
        sols = jax.lax.map(lambda u: self.solve(params, u, ts), u0)
        return sols.ys, sols.success

    def __call__(self, params, batch=None) -> Array:
        u0, ys = _select(self.u0, batch), _select(self.ys, batch)
        pred, ok = self.predict(params, u0=u0)
        pred = jnp.where(ok[:, None, None], pred, 0.0)
        value = jnp.mean(((pred - ys) / self.scale) ** 2)
        return jnp.where(jnp.all(ok), value, FAILED_LOSS)
