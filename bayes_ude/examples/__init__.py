"""Example factories: simulated data sets with a known truth, for the docs, the notebooks,
the benchmarks and the tests. They sit above the library (``bayes_ude.nlme`` and the other
layers never import them) and use only its public API.

``bayes_ude.examples.covariates``: a population whose clearance depends non-linearly on
weight, age and renal function (and not at all on albumin), the check that a covariate
network recovers a known covariate model (:func:`simulate_covariate_population`,
:func:`compare_covariate_models`).

``bayes_ude.examples.michaelis_menten``: a population with saturable (Michaelis–Menten)
elimination, for the network-elimination check (:func:`michaelis_menten_population`,
truth :data:`MM_TRUTH`).
"""

from .covariates import COVARIATES as COVARIATES
from .covariates import CovariateTruth as CovariateTruth
from .covariates import compare_covariate_models as compare_covariate_models
from .covariates import covariate_table as covariate_table
from .covariates import simulate_covariate_population as simulate_covariate_population
from .michaelis_menten import MM_TRUTH as MM_TRUTH
from .michaelis_menten import michaelis_menten_population as michaelis_menten_population

__all__ = ["COVARIATES", "MM_TRUTH", "CovariateTruth", "compare_covariate_models",
           "covariate_table", "michaelis_menten_population", "simulate_covariate_population"]
