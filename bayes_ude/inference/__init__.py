"""Bayesian inference on differential-equation models: priors on networks, NUTS (NumPyro
or BlackJAX), SG-MCMC kernels (SGLD, pSGLD, SGHMC), ArviZ output, and failed solves as
rejected proposals."""

from .._sampler_options import SAMPLERS as SAMPLERS
from .._sampler_options import SamplerOptions as SamplerOptions
from ._arviz import add_to_inference_data as add_to_inference_data
from ._arviz import to_inference_data as to_inference_data
from ._failure import reject_failed_solve as reject_failed_solve
from ._metric import laplace_inverse_mass as laplace_inverse_mass
from ._nuts import run_nuts as run_nuts
from ._priors import network_prior as network_prior
from ._sgmcmc import PSGLDState as PSGLDState
from ._sgmcmc import SGLDState as SGLDState
from ._sgmcmc import SGMCMCKernel as SGMCMCKernel
from ._sgmcmc import grad_estimator as grad_estimator
from ._sgmcmc import polynomial_schedule as polynomial_schedule
from ._sgmcmc import posterior_pytree as posterior_pytree
from ._sgmcmc import psgld as psgld
from ._sgmcmc import run_sgmcmc as run_sgmcmc
from ._sgmcmc import sghmc as sghmc
from ._sgmcmc import sgld as sgld

__all__ = [
    "SAMPLERS",
    "PSGLDState",
    "SamplerOptions",
    "SGLDState",
    "SGMCMCKernel",
    "add_to_inference_data",
    "grad_estimator",
    "laplace_inverse_mass",
    "network_prior",
    "polynomial_schedule",
    "posterior_pytree",
    "psgld",
    "reject_failed_solve",
    "run_nuts",
    "run_sgmcmc",
    "sghmc",
    "sgld",
    "to_inference_data",
]
