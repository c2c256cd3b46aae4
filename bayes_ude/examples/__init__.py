"""Example factories: simulated data sets with a known truth, for the docs, the notebooks,
the benchmarks and the tests. They sit above the library (``bayes_ude.nlme`` and the other
layers never import them) and use only its public API.

``bayes_ude.examples.covariates``: a population whose clearance depends non-linearly on
weight, age and renal function (and not at all on albumin), the check that a covariate
network recovers a known covariate model (:func:`simulate_covariate_population`,
:func:`compare_covariate_models`).
"""

from .covariates import COVARIATES as COVARIATES
from .covariates import CovariateTruth as CovariateTruth
from .covariates import compare_covariate_models as compare_covariate_models
from .covariates import covariate_table as covariate_table
from .covariates import simulate_covariate_population as simulate_covariate_population

__all__ = ["COVARIATES", "CovariateTruth", "compare_covariate_models", "covariate_table",
           "simulate_covariate_population"]
