"""The inputs of :func:`bayes_ude.solvers.solve`, checked and converted before anything is
traced: shapes and options (always), values where they are concrete (sorted save times,
doses inside the span), the precision of the solve, a pytree state as the flat vector of
its leaves, and the index and consistency of a mass-matrix DAE.

Nothing here builds a solve: :mod:`._solve` calls these first and then integrates.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _precision
from ._events import validate_doses

SENSITIVITIES = ("auto", "forward", "reverse", "adjoint")

#: The smallest ``rtol`` accepted, in machine epsilons of the dtype of the solve:
#: ~6e-7 in float32, ~1e-15 in float64. An embedded error estimate is a difference of
#: stage combinations of size ~|y|, so it carries round-off of a few eps |y| (more after
#: many steps); a tolerance near eps asks the controller to resolve its own noise, and
#: it then shortens the step until max_steps or collapse, or reports success with an
#: error far above the tolerance. MATLAB's ode solvers raise rtol to 100 eps for that
#: reason. Measured here in float32 on Lotka--Volterra over 10 time units: Tsit5's error
#: follows rtol down to 3e-7 (1e-6) and no further (1e-6 at rtol 1e-7 in 106 steps,
#: 8e-6 at 1e-10 in 8579), Rodas5P's stalls at ~4e-5 from 3e-6 on and reaches max_steps
#: at 1e-10; in float64 the tightest tolerance the tests use is 1e-13 (450 eps). 5 eps
#: keeps the default rtol=1e-6 usable in float32 and refuses what cannot be honoured:
#: rtol=1e-7 (0.8 eps) in float32, 1e-16 in float64.
MIN_RTOL_EPS = 5

_warned_float32 = False


def concrete(x) -> np.ndarray | None:
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def validate(vector_field, u0, saveat, args, t0, tstops, doses, solver, rtol, atol,
              sensitivity, max_steps) -> None:
    if not callable(vector_field):
        raise TypeError(f"vector_field must be callable f(t, u, args), got {type(vector_field)}")
    if isinstance(saveat, (dfx.SaveAt, dfx.SubSaveAt)):
        raise TypeError(
            "saveat must be a 1-D array of output times, got a diffrax.SaveAt: pass the "
            "times themselves, solve(f, u0, ts, args) (the solve runs from t0, default "
            "ts[0], to ts[-1]); dense output and saving every step are not available "
            "through solve"
        )
    if not jnp.issubdtype(jnp.result_type(u0), jnp.inexact) and not jnp.issubdtype(
        jnp.result_type(u0), jnp.integer
    ):
        raise ValueError(f"u0 must be a numeric array, got dtype {jnp.result_type(u0)}")
    if jnp.ndim(saveat) != 1 or jnp.shape(saveat)[0] < 1:
        raise ValueError(
            f"saveat must be a non-empty 1-D array of times, got shape {jnp.shape(saveat)}"
        )
    s = concrete(saveat)
    if s is not None:
        if not np.all(np.isfinite(s)):
            raise ValueError("saveat must contain only finite times")
        if s.shape[0] > 1 and not np.all(np.diff(s) > 0):
            bad = int(np.argmax(np.diff(s) <= 0))
            raise ValueError(
                "saveat must be strictly increasing; "
                f"saveat[{bad}]={s[bad]} is followed by saveat[{bad + 1}]={s[bad + 1]}"
            )
    if t0 is not None:
        if jnp.ndim(t0) != 0:
            raise ValueError(f"t0 must be a scalar, got shape {jnp.shape(t0)}")
        tc = concrete(t0)
        if tc is not None and not np.isfinite(tc):
            raise ValueError(f"t0 must be a finite time, got {float(tc)}")
        if tc is not None and s is not None and tc > s[0]:
            raise ValueError(f"t0={float(tc)} must be <= saveat[0]={s[0]}")
    t_start = concrete(t0) if t0 is not None else (None if s is None else s[0])
    if tstops is not None:
        if jnp.ndim(tstops) != 1:
            raise ValueError(f"tstops must be a 1-D array of times, got shape {jnp.shape(tstops)}")
        ts_c = concrete(tstops)
        if ts_c is not None and not np.all(np.isfinite(ts_c)):
            raise ValueError(f"tstops must contain only finite times, got {ts_c}")
        if ts_c is not None and s is not None and t_start is not None:
            outside = (ts_c < t_start) | (ts_c > s[-1])
            if np.any(outside):
                raise ValueError(
                    f"tstops must lie inside the time span [{float(t_start)}, {s[-1]}]; "
                    f"outside: {ts_c[outside]}"
                )
    if not isinstance(doses, Sequence):
        raise TypeError("doses must be a list of solvers.Bolus / solvers.Infusion")
    validate_doses(doses, jnp.shape(u0)[0] if jnp.ndim(u0) == 1 else None,
                   t_start, None if s is None else s[-1])
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"solver must be a diffrax/bayes_ude solver, got {type(solver).__name__}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or not 0 < tol < math.inf:
            raise ValueError(f"{name} must be a finite positive number, got {tol!r}")
    if sensitivity not in SENSITIVITIES:
        raise ValueError(f"sensitivity must be one of {SENSITIVITIES}, got {sensitivity!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    try:
        out = jax.eval_shape(vector_field, jnp.zeros((), jnp.result_type(float)), u0, args)
    except Exception as exc:  # the user's function failed on the inputs given
        raise ValueError(
            f"vector_field(t, u0, args) could not be evaluated: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(out, "shape") or out.shape != jnp.shape(u0):
        raise ValueError(
            f"vector_field must return an array of the shape of u0 {jnp.shape(u0)}, "
            f"got {getattr(out, 'shape', type(out).__name__)}"
        )


def is_array_like(u0) -> bool:
    """An array or a scalar; anything else (lists and tuples included, as in JAX and
    diffrax) is a pytree state."""
    return isinstance(u0, (jax.Array, np.ndarray, np.generic, int, float, complex))


def unravel(y, treedef, shapes):
    """The pytree of ``treedef`` and leaf ``shapes`` from the last axis of ``y``."""
    sizes = [math.prod(shape) for shape in shapes]
    offsets = np.cumsum([0, *sizes])
    lead = y.shape[:-1]
    leaves = [y[..., offsets[i]:offsets[i + 1]].reshape(*lead, *shape)
              for i, shape in enumerate(shapes)]
    return jax.tree.unflatten(treedef, leaves)


class _Raveled(eqx.Module):
    """The vector field of a pytree state, acting on the flat vector of its leaves."""

    field: Callable
    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __call__(self, t, y, args):
        du = self.field(t, unravel(y, self.treedef, self.shapes), args)
        leaves, treedef = jax.tree.flatten(du)
        shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
        if treedef != self.treedef or shapes != self.shapes:
            raise ValueError(
                "vector_field must return a pytree of the structure and leaf shapes of u0 "
                f"({self.treedef}, shapes {self.shapes}), got {treedef}, shapes {shapes}"
            )
        return jnp.concatenate([jnp.ravel(x) for x in leaves])


def flatten_state(vector_field, u0):
    """``(flat u0, vector field on it, (treedef, shapes))`` for a pytree state."""
    leaves, treedef = jax.tree.flatten(u0)
    bad = [type(x).__name__ for x in leaves if not is_array_like(x)]
    if not leaves or bad:
        raise TypeError(
            "u0 must be an array, or a pytree (dict, tuple, equinox.Module) whose "
            f"leaves are arrays; got {type(u0).__name__}"
            + (f" with leaves of type {sorted(set(bad))}" if bad else " without leaves")
        )
    shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(x)) for x in leaves])
    return flat, _Raveled(vector_field, treedef, shapes), (treedef, shapes)


def default_dtype(u0) -> np.dtype:
    """JAX's default float (or complex) dtype: what the solve computes in."""
    kind = complex if jnp.issubdtype(u0.dtype, jnp.complexfloating) else float
    return jnp.result_type(kind)


def check_precision(dtype, rtol, adaptive: bool) -> None:
    """Refuse an ``rtol`` that ``dtype`` cannot resolve; say once that float32 is used."""
    global _warned_float32
    eps = float(jnp.finfo(dtype).eps)
    single = jnp.finfo(dtype).bits < 64
    how = ("BAYES_UDE_X64=0 is set" if _precision.status().startswith("off") else
           "jax.config.update('jax_enable_x64', False) was called after importing bayes_ude")
    if adaptive and isinstance(rtol, (int, float)) and rtol < MIN_RTOL_EPS * eps:
        fix = ("; to solve in float64, unset BAYES_UDE_X64=0 (or call "
               "jax.config.update('jax_enable_x64', True) before creating arrays)"
               if single else "")
        raise ValueError(
            f"rtol={rtol:g} is below what {jnp.dtype(dtype).name} can resolve: the solve "
            f"needs rtol >= {MIN_RTOL_EPS} x eps = {MIN_RTOL_EPS * eps:.1e}"
            + (f" (the solve is in {jnp.dtype(dtype).name} because jax_enable_x64 is off: "
               f"{how})" if single else "") + fix
        )
    if single and not _warned_float32:
        _warned_float32 = True
        warnings.warn(
            f"solving in {jnp.dtype(dtype).name} because jax_enable_x64 is off ({how}): "
            f"tolerances below rtol={MIN_RTOL_EPS * eps:.0e} are refused, and results are "
            "accurate to about 1e-6 at best. This warning is given once per process.",
            UserWarning, stacklevel=3,
        )


def with_mass_matrix(vector_field, u0, args, t0, saveat, solver, mass):
    """Validate a mass-matrix problem and give the matrix to the (Rosenbrock) solver.

    Returns the solver and, where the index and consistency could not be checked here
    (``u0``, ``args`` or the times are traced), the basis of the algebraic equations
    (:func:`algebraic_basis`) for the solve to test ``u0`` against in the program: a
    traced inconsistent ``u0`` fails the solve (``Status.INCONSISTENT``) instead of
    being projected onto the constraints without a word. ``None`` when checked here or
    when ``M`` is nonsingular.
    """
    from ._rosenbrock import AbstractRosenbrock

    if not isinstance(solver, AbstractRosenbrock):
        raise ValueError(
            "mass_matrix needs a Rosenbrock solver: solver=solvers.Rodas5P() or "
            f"solvers.Rosenbrock23(), got {type(solver).__name__}"
        )
    n = u0.shape[0] if u0.ndim == 1 else None
    if n is None or mass.shape != (n, n):
        raise ValueError(
            f"mass_matrix must be a square (n, n) matrix for a 1-D state of length n; got "
            f"mass_matrix of shape {mass.shape} for u0 of shape {u0.shape}"
        )
    solver = dataclasses.replace(solver, mass_matrix=mass)
    values = [concrete(x) for x in (mass, u0, saveat)]
    concrete_args = all(concrete(x) is not None for x in jax.tree.leaves(args))
    if all(v is not None for v in values) and concrete_args:
        t_start = float(values[2][0] if t0 is None else t0)
        check_dae(vector_field, np.asarray(u0), args, t_start, np.asarray(mass))
        return solver, None
    return solver, algebraic_basis(mass)


# Relative size below which a singular value of M counts as zero, and the condition
# number above which the algebraic block counts as singular (index > 1).
_RANK_TOL = 1e-12
_INDEX1_COND = 1e12
# Residual of the algebraic equations accepted as consistent, relative to the scale of
# the vector field (1 + max |f|): tight, since the solve keeps constraints to round-off.
_CONSISTENCY_TOL = 1e-8


def consistency_tol(dtype) -> float:
    """:data:`_CONSISTENCY_TOL`, or 64 machine epsilons where the dtype is coarser."""
    return max(_CONSISTENCY_TOL, 64 * float(jnp.finfo(dtype).eps))


def _null_bases(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases ``(L, R)`` of the left and right null spaces of ``M``."""
    u, s, vt = np.linalg.svd(mass)
    null = s <= _RANK_TOL * max(s.max(initial=0.0), 1.0)
    return u[:, null], vt[null].T


def algebraic_basis(mass):
    """``L`` with ``L^T f = 0`` the algebraic equations of ``M u' = f`` (``None`` for a
    nonsingular ``M``). A traced ``M`` gives the ``(n, n)`` matrix of left singular
    vectors with the non-null columns zeroed (one SVD in the program)."""
    m = concrete(mass)
    if m is not None:
        left, _ = _null_bases(m)
        return left if left.shape[1] else None
    u, s, _ = jnp.linalg.svd(mass)
    null = s <= _RANK_TOL * jnp.maximum(jnp.max(s), 1.0)
    return u * null[None, :]


def inconsistent(vector_field, u0, args, t0, left) -> jax.Array:
    """Whether the algebraic equations ``L^T f(t0, u0) = 0`` fail at ``u0`` (traced
    bool), with the tolerance of :func:`check_dae`. A non-finite ``f`` is left to the
    solve, which reports it as ``NONFINITE``."""
    f = jax.lax.stop_gradient(vector_field(t0, u0, args))
    residual = jnp.max(jnp.abs(jnp.asarray(left, f.dtype).T @ f))
    tol = consistency_tol(f.dtype) * (1.0 + jnp.max(jnp.abs(f)))
    return jnp.all(jnp.isfinite(f)) & (residual > tol)


def check_dae(vector_field, u0, args, t0: float, mass) -> None:
    """Raise ``ValueError`` if ``M u' = f`` is not index 1 or ``u0`` is inconsistent.

    With ``L`` and ``R`` orthonormal bases of the left and right null spaces of ``M``
    (from an SVD), the algebraic equations are ``L^T f(t, u) = 0``: they must hold at
    ``u0``, and ``L^T (df/du) R`` (their Jacobian with respect to the algebraic variables)
    must be nonsingular for the system to be of index 1.
    """
    left, right = _null_bases(mass)
    if not left.shape[1]:
        return
    f = np.asarray(vector_field(jnp.asarray(t0), jnp.asarray(u0), args))
    if not np.all(np.isfinite(f)):
        return  # the solve stops on its first step and reports NONFINITE
    residual = left.T @ f
    tol = consistency_tol(f.dtype) * (1.0 + np.max(np.abs(f)))
    if np.max(np.abs(residual)) > tol:
        zero_rows = np.flatnonzero(~np.any(mass != 0, axis=1))
        rows = [int(i) for i in zero_rows if abs(f[i]) > tol]
        where = f"; algebraic rows of f violated: {rows}" if rows else ""
        raise ValueError(
            "inconsistent initial conditions: the algebraic equations of M u' = f(t, u) are "
            f"not satisfied at t0={t0} (residual {np.max(np.abs(residual)):.3e}{where}). "
            "Choose u0 so that they hold."
        )
    jac = np.asarray(jax.jacfwd(lambda y: vector_field(jnp.asarray(t0), y, args))(
        jnp.asarray(u0)))
    block = left.T @ jac @ right
    if np.linalg.cond(block) > _INDEX1_COND:
        raise ValueError(
            "the DAE M u' = f(t, u) is not of index 1: the algebraic equations do not "
            "determine the algebraic variables (their Jacobian block is singular). "
            "Index-2 and higher systems need index reduction before solving."
        )
