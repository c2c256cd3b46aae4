"""Surrogates of stiff solves over a parameter box: continuous-time echo state networks
(CTESN), trained once by a vmapped Rodas5P ensemble, then evaluated without any ODE solve
inside fitting and sampling."""

from ._ctesn import CTESN as CTESN
from ._ctesn import Features as Features
from ._ctesn import HeldOutError as HeldOutError
from ._ctesn import Reservoir as Reservoir
from ._ctesn import TrainingReport as TrainingReport
from ._ctesn import fit_ctesn as fit_ctesn
from ._ctesn import held_out_error as held_out_error
from ._design import ParameterBox as ParameterBox
from ._design import design as design
from ._rbf import RBFInterpolant as RBFInterpolant
from ._rbf import fit_rbf as fit_rbf

__all__ = [
    "CTESN",
    "Features",
    "HeldOutError",
    "ParameterBox",
    "RBFInterpolant",
    "Reservoir",
    "TrainingReport",
    "design",
    "fit_ctesn",
    "fit_rbf",
    "held_out_error",
]
