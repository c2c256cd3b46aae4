"""Nonlinear mixed-effects (population) models."""

import importlib
from typing import TYPE_CHECKING

from ._bootstrap import BootstrapResult as BootstrapResult
from ._bootstrap import bootstrap as bootstrap
from ._builtin import builtin_model as builtin_model
from ._builtin import nca_initial_estimates as nca_initial_estimates
from ._covariates import CovariateEffect as CovariateEffect
from ._covariates import CovariateIndividual as CovariateIndividual
from ._covariates import CovariateNetwork as CovariateNetwork
from ._covariates import LinearCovariates as LinearCovariates
from ._covariates import PowerCovariates as PowerCovariates

# Population estimation needs float64 (the outer optimiser differentiates through inner
# Newton solves, and in float32 FOCE/FOCEI gradients stall far from the optimum):
# ``import bayes_ude`` turns it on for the whole process (bayes_ude/_precision.py).
from ._data import NonmemDataError as NonmemDataError
from ._data import NonmemDataWarning as NonmemDataWarning
from ._data import Population as Population
from ._data import covariates_at as covariates_at
from ._data import split_subjects as split_subjects
from ._design import design as design
from ._diagnostics import diagnostics as diagnostics
from ._diagnostics import epsilon_shrinkage as epsilon_shrinkage
from ._diagnostics import individual_parameters as individual_parameters
from ._diagnostics import simulate as simulate
from ._error import Additive as Additive
from ._error import Combined as Combined
from ._error import ErrorModel as ErrorModel
from ._error import Exponential as Exponential
from ._error import Proportional as Proportional
from ._fit import fit as fit
from ._likelihood import objective as objective
from ._likelihood import subject_log_density as subject_log_density
from ._model import Omega as Omega
from ._model import PopulationModel as PopulationModel
from ._model_file import load_model_file as load_model_file
from ._pk import ClosedFormModel as ClosedFormModel
from ._pk import OneCompartmentIV as OneCompartmentIV
from ._pk import OneCompartmentOral as OneCompartmentOral
from ._pk import TwoCompartmentIV as TwoCompartmentIV
from ._pk import TwoCompartmentOral as TwoCompartmentOral
from ._read import load_theophylline_population as load_theophylline_population
from ._read import load_warfarin_population as load_warfarin_population
from ._read import read_nonmem as read_nonmem
from ._results import FitResult as FitResult
from ._results import PopulationFit as PopulationFit
from ._simulation import PointEstimates as PointEstimates
from ._simulation import point_estimates as point_estimates
from ._simulation import simtab as simtab
from ._structural import StructuralModel as StructuralModel
from ._tables import FitComparison as FitComparison
from ._tables import compare_fits as compare_fits
from ._tables import sdtab as sdtab
from ._vpc import vpc as vpc

# Load on first use, so that a closed-form maximum-likelihood fit does not pay for importing
# them: the Bayesian layer (NumPyro, ArviZ), the ODE models (diffrax, ~0.3 s), the figures
# (matplotlib) and the neural covariate models' training (optax).
_LAZY = {
    "BayesianFitResult": "_bayes_results",
    "Priors": "_priors",
    "numpyro_model": "_priors",
    "choose_centred": "_parameterisation",
    "fit_bayes": "_bayes",
    "augment": "_deep",
    "covariate_model": "_deep",
    "partial_dependence": "_deep",
    "population_predictions": "_deep",
    "FixedStepODEModel": "_fixed_step",
    "NetworkEliminationPK": "_network_pk",
    "elimination_curve": "_network_pk",
    "network_elimination_model": "_network_pk",
    "ODEModel": "_ode_model",
    "individual_pages": "_plots",
    "plot_gof": "_plots",
    "plot_individual": "_plots",
    "plot_vpc": "_plots",
    "TransitTurnoverPKPD": "_warfarin",
    "inhibition_curve": "_warfarin",
    "warfarin_pkpd_model": "_warfarin",
}
if TYPE_CHECKING:
    from ._bayes import fit_bayes as fit_bayes
    from ._bayes_results import BayesianFitResult as BayesianFitResult
    from ._deep import augment as augment
    from ._deep import covariate_model as covariate_model
    from ._deep import partial_dependence as partial_dependence
    from ._deep import population_predictions as population_predictions
    from ._fixed_step import FixedStepODEModel as FixedStepODEModel
    from ._network_pk import NetworkEliminationPK as NetworkEliminationPK
    from ._network_pk import elimination_curve as elimination_curve
    from ._network_pk import network_elimination_model as network_elimination_model
    from ._ode_model import ODEModel as ODEModel
    from ._parameterisation import choose_centred as choose_centred
    from ._plots import individual_pages as individual_pages
    from ._plots import plot_gof as plot_gof
    from ._plots import plot_individual as plot_individual
    from ._plots import plot_vpc as plot_vpc
    from ._priors import Priors as Priors
    from ._priors import numpyro_model as numpyro_model
    from ._warfarin import TransitTurnoverPKPD as TransitTurnoverPKPD
    from ._warfarin import inhibition_curve as inhibition_curve
    from ._warfarin import warfarin_pkpd_model as warfarin_pkpd_model


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
