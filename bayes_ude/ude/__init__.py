"""Universal differential equations: physics + networks, training losses, MAP fitting.

* :class:`UDE` -- ``du/dt = physics(t, u, theta) + network(u)``.
* Losses (each ``loss(params[, batch]) -> scalar``): :class:`SingleShooting`,
  :class:`MultipleShooting`, :class:`Collocation` (no ODE solve), :class:`PredictionError`;
  :class:`StateBounds`, a penalty for states outside known bounds where there are no data.
* Fitting: :func:`fit` (Adam then L-BFGS), :func:`fit_growing_windows`, :func:`fit_pem`.
"""

from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._fit import fit_growing_windows as fit_growing_windows
from ._fit import fit_pem as fit_pem
from ._losses import FAILED_LOSS as FAILED_LOSS
from ._losses import Collocation as Collocation
from ._losses import MultipleShooting as MultipleShooting
from ._losses import PredictionError as PredictionError
from ._losses import SingleShooting as SingleShooting
from ._losses import StateBounds as StateBounds
from ._losses import call_model as call_model
from ._losses import loss_params as loss_params
from ._losses import smooth as smooth
from ._model import UDE as UDE

__all__ = [
    "FAILED_LOSS",
    "Collocation",
    "FitResult",
    "MultipleShooting",
    "PredictionError",
    "SingleShooting",
    "StateBounds",
    "UDE",
    "call_model",
    "fit",
    "fit_growing_windows",
    "fit_pem",
    "loss_params",
    "smooth",
]
