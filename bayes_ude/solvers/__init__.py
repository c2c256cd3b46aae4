"""Differentiable ODE solving on top of diffrax: events, doses, sensitivities, failure as data."""

from diffrax import Dopri5 as Dopri5
from diffrax import Dopri8 as Dopri8
from diffrax import Kvaerno5 as Kvaerno5
from diffrax import Tsit5 as Tsit5

from ._auto import Auto as Auto
from ._controller import GuardedPIDController as GuardedPIDController
from ._ensemble import solve_ensemble as solve_ensemble
from ._events import Bolus as Bolus
from ._events import Infusion as Infusion
from ._failure import log_density_penalty as log_density_penalty
from ._failure import sanitize as sanitize
from ._fixed_grid import Grid as Grid
from ._fixed_grid import integrate_on_grid as integrate_on_grid
from ._fixed_grid import linear_on_grid as linear_on_grid
from ._fixed_grid import subject_grid as subject_grid
from ._inputs import MIN_RTOL_EPS as MIN_RTOL_EPS
from ._inputs import check_dae as check_dae
from ._options import SolveOptions as SolveOptions
from ._rosenbrock import AbstractRosenbrock as AbstractRosenbrock
from ._rosenbrock import Rodas5P as Rodas5P
from ._rosenbrock import Rosenbrock23 as Rosenbrock23
from ._shadowing import Shadowing as Shadowing
from ._shadowing import shadowing as shadowing
from ._shadowing import shadowing_gradient as shadowing_gradient
from ._solve import AUTO_FORWARD_MAX_PARAMS as AUTO_FORWARD_MAX_PARAMS
from ._solve import Solution as Solution
from ._solve import solve as solve
from ._status import Status as Status
from ._status import status_message as status_message

__all__ = [
    "AUTO_FORWARD_MAX_PARAMS",
    "AbstractRosenbrock",
    "MIN_RTOL_EPS",
    "Auto",
    "Rodas5P",
    "Rosenbrock23",
    "check_dae",
    "Bolus",
    "Dopri5",
    "Dopri8",
    "Grid",
    "GuardedPIDController",
    "Infusion",
    "Kvaerno5",
    "Solution",
    "SolveOptions",
    "Status",
    "Tsit5",
    "integrate_on_grid",
    "linear_on_grid",
    "log_density_penalty",
    "sanitize",
    "Shadowing",
    "shadowing",
    "shadowing_gradient",
    "solve",
    "solve_ensemble",
    "status_message",
    "subject_grid",
]
