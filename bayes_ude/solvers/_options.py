"""How to solve: one bundle of :func:`solve`'s options, :class:`SolveOptions`.

Every layer that solves ODEs (``ude`` losses, ``crnn``, ``pde.MassMatrixShooting``,
``nlme.ODEModel``) keeps its solver settings in one of these, with its own defaults, and
solves through :meth:`SolveOptions.solve`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
from jaxtyping import Array, ArrayLike, PyTree

from ._inputs import SENSITIVITIES
from ._solve import Solution, solve


def _positive(name: str) -> Callable[[Any], float]:
    """A converter to ``float`` that refuses anything but a finite positive number."""
    def convert(value) -> float:
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value) or not value > 0):
            raise ValueError(f"SolveOptions.{name} must be a finite positive number, got "
                             f"{value!r}")
        return float(value)

    return convert


def _optional_positive(name: str) -> Callable[[Any], float | None]:
    check = _positive(name)

    def convert(value) -> float | None:
        return None if value is None else check(value)

    return convert


def _max_steps(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"SolveOptions.max_steps must be a positive integer, got {value!r}")
    return int(value)


def _sensitivity(value) -> str:
    if value not in SENSITIVITIES:
        raise ValueError(f"SolveOptions.sensitivity must be one of {SENSITIVITIES}, got "
                         f"{value!r}")
    return value


def _solver(value):
    if value is not None and not isinstance(value, dfx.AbstractSolver):
        raise TypeError("SolveOptions.solver must be a diffrax/bayes_ude solver (e.g. "
                        f"solvers.Tsit5(), solvers.Rodas5P()) or None, got "
                        f"{type(value).__name__}")
    return value


class SolveOptions(eqx.Module):
    """The options of :func:`solve`, bundled: what a model or loss needs to know about how
    its ODEs are solved.

    The defaults are :func:`solve`'s own. All fields are static (hashable configuration,
    not parameters), so a module holding a ``SolveOptions`` stays a pytree of its arrays
    only, and changing an option recompiles rather than retraces. Each field is checked
    when the options are built, with a message naming it.

    Attributes
    ----------
    solver : a diffrax or bayes_ude solver; ``None`` (default) leaves the choice to the
        caller, which for :func:`solve` is :class:`Tsit5`.
    rtol, atol : tolerances of the step-size controller (default ``1e-6``, ``1e-8``).
    max_steps : maximum number of steps per segment between events (default 10 000).
    sensitivity : ``"auto"`` (default), ``"forward"``, ``"reverse"`` or ``"adjoint"``:
        how the solution is differentiated (see :func:`solve`).
    dt0 : initial step; ``None`` (default) chooses it automatically.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from bayes_ude import solvers
    >>> stiff = solvers.SolveOptions(solver=solvers.Rodas5P(), rtol=1e-8, atol=1e-10)
    >>> sol = stiff.solve(lambda t, u, k: -k * u, jnp.ones(1), jnp.linspace(0, 1, 5), 2.0)
    >>> tighter = stiff.replace(rtol=1e-10)
    """

    solver: dfx.AbstractSolver | None = eqx.field(static=True, default=None,
                                                  converter=_solver)
    rtol: float = eqx.field(static=True, default=1e-6, converter=_positive("rtol"))
    atol: float = eqx.field(static=True, default=1e-8, converter=_positive("atol"))
    max_steps: int = eqx.field(static=True, default=10_000, converter=_max_steps)
    sensitivity: str = eqx.field(static=True, default="auto", converter=_sensitivity)
    dt0: float | None = eqx.field(static=True, default=None,
                                  converter=_optional_positive("dt0"))

    def solve(self, vector_field: Callable[[Any, Array, Any], Array], u0: ArrayLike,
              ts: ArrayLike, params: PyTree = None, **extra) -> Solution:
        """:func:`solve` with these options: ``solve(vector_field, u0, ts, params,
        solver=..., rtol=..., ..., **extra)``; ``extra`` are the problem's other keywords
        (``t0``, ``tstops``, ``doses``, ``mass_matrix``, ...)."""
        return solve(vector_field, u0, ts, params, solver=self.solver, rtol=self.rtol,
                     atol=self.atol, max_steps=self.max_steps, sensitivity=self.sensitivity,
                     dt0=self.dt0, **extra)

    def replace(self, **changes) -> SolveOptions:
        """A copy with some fields changed (checked like the constructor's)."""
        return dataclasses.replace(self, **changes)
