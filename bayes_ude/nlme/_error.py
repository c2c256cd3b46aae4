"""Residual error models: ``y = f + error``, with the residual variance ``R(f, sigma)``.

Each model names its own parameters (standard deviations, estimated on the log scale).
The exponential (log-normal) model is an additive model on ``log y``: its observations and
predictions are log-transformed before the likelihood, and ``R`` is the variance on the log
scale.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["Additive", "Combined", "ErrorModel", "Exponential", "Proportional"]

# A proportional error at a prediction of exactly 0 (a pre-dose sample) would have zero
# variance and infinite weight; this floor (in squared concentration units) keeps such a
# record harmless. Use a combined error model when pre-dose samples carry information.
_VARIANCE_FLOOR = 1e-12
# Predictions below this are treated as this value inside the log of the exponential model.
_LOG_FLOOR = 1e-300


class ErrorModel(eqx.Module):
    """Abstract residual error model."""

    @property
    @abc.abstractmethod
    def sigma_names(self) -> tuple[str, ...]:
        """Names of the model's standard-deviation parameters."""

    @abc.abstractmethod
    def variance(self, f: Array, sigma: Mapping[str, Array]) -> Array:
        """Residual variance at prediction ``f`` (on the transformed scale)."""

    def transform(self, x: Array) -> Array:
        """Scale on which the error is additive Gaussian (identity by default)."""
        return x

    def sample(self, key, f: Array, sigma: Mapping[str, Array]) -> Array:
        """Simulated observations around predictions ``f``."""
        z = jax.random.normal(key, jnp.shape(f))
        return f + jnp.sqrt(self.variance(f, sigma)) * z


class Additive(ErrorModel):
    """``y = f + a * e``: constant variance ``a**2``."""

    name: str = eqx.field(static=True, default="add_sd")

    @property
    def sigma_names(self):
        return (self.name,)

    def variance(self, f, sigma):
        return jnp.broadcast_to(sigma[self.name] ** 2, jnp.shape(f))


class Proportional(ErrorModel):
    """``y = f (1 + b * e)``: variance ``(b f)**2``."""

    name: str = eqx.field(static=True, default="prop_sd")

    @property
    def sigma_names(self):
        return (self.name,)

    def variance(self, f, sigma):
        return (sigma[self.name] * f) ** 2 + _VARIANCE_FLOOR


class Combined(ErrorModel):
    """``y = f + sqrt(a**2 + (b f)**2) e``: additive plus proportional (nlmixr2's
    ``combined2``, NONMEM's usual combined model)."""

    add: str = eqx.field(static=True, default="add_sd")
    prop: str = eqx.field(static=True, default="prop_sd")

    @property
    def sigma_names(self):
        return (self.add, self.prop)

    def variance(self, f, sigma):
        return sigma[self.add] ** 2 + (sigma[self.prop] * f) ** 2


class Exponential(ErrorModel):
    """``log y = log f + s e`` (log-normal); observations must be positive."""

    name: str = eqx.field(static=True, default="exp_sd")

    @property
    def sigma_names(self):
        return (self.name,)

    def transform(self, x):
        return jnp.log(jnp.maximum(x, _LOG_FLOOR))

    def variance(self, f, sigma):
        return jnp.broadcast_to(sigma[self.name] ** 2, jnp.shape(f))

    def sample(self, key, f, sigma):
        z = jax.random.normal(key, jnp.shape(f))
        return f * jnp.exp(sigma[self.name] * z)
