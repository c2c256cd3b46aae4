"""Status codes of a solve: failure is data, returned under jit, never raised."""

from __future__ import annotations

import enum

import diffrax as dfx
import jax.numpy as jnp
from jaxtyping import Array, Int


class Status(enum.IntEnum):
    """Why a solve stopped. ``SUCCESS`` (0) is the only good outcome."""

    SUCCESS = 0
    MAX_STEPS = 1
    STEP_SIZE_COLLAPSE = 2
    NONFINITE = 3
    SOLVER_FAILURE = 4
    INCONSISTENT = 5
    DOSE_BEFORE_START = 6


_MESSAGES = {
    Status.SUCCESS: "success",
    Status.MAX_STEPS: "the maximum number of steps was reached (raise `max_steps`, or the "
    "problem may be stiff: try solver=solvers.Rodas5P(), or solvers.Auto() when only part "
    "of the solution is stiff)",
    Status.STEP_SIZE_COLLAPSE: "the step size collapsed to round-off level (the solution "
    "probably blows up in finite time, or the vector field is not finite)",
    Status.NONFINITE: "the state or the vector field is not finite (NaN or inf): check u0, "
    "the parameters and where the vector field is defined",
    Status.SOLVER_FAILURE: "the solver failed (e.g. a nonlinear solve in an implicit method "
    "did not converge)",
    Status.INCONSISTENT: "the initial state does not satisfy the algebraic equations of "
    "M u' = f(t, u) at t0 (inconsistent initial conditions): choose u0 so that they hold "
    "(a solve from it would not be a solution of the DAE)",
    Status.DOSE_BEFORE_START: "a dose (a bolus, or an infusion's start or end) with a "
    "non-zero amount or rate lies before the start t0 (traced, so not refused up front): "
    "start the solve at or before the first dose; padding doses of amount 0 may lie "
    "anywhere",
}


def status_message(status: int) -> str:
    """Human-readable explanation of a status code (a concrete integer)."""
    return _MESSAGES[Status(int(status))]


def from_diffrax(result: dfx.RESULTS) -> Int[Array, ""]:
    """Map a diffrax ``RESULTS`` value to a :class:`Status` code (jit-safe)."""
    return jnp.where(
        result == dfx.RESULTS.successful,
        Status.SUCCESS,
        jnp.where(
            result == dfx.RESULTS.max_steps_reached,
            Status.MAX_STEPS,
            jnp.where(
                result == dfx.RESULTS.dt_min_reached,
                Status.STEP_SIZE_COLLAPSE,
                jnp.where(
                    result == dfx.RESULTS.nonfinite,  # from GuardedPIDController
                    Status.NONFINITE,
                    Status.SOLVER_FAILURE,
                ),
            ),
        ),
    ).astype(jnp.int32)
