"""Float64 for the whole process, switched on once when the package is imported.

JAX computes in float32 unless ``jax_enable_x64`` is on, and the switch is process-global:
it decides the dtype of every array created after it, and arrays created before it keep
theirs. Numerical work in this package needs float64: adaptive solves at tolerances below
about 1e-6 cannot be resolved in float32 (see ``bayes_ude.solvers.solve``), population
estimation differentiates through inner Newton solves whose FOCE/FOCEI gradients stall
far from the optimum in float32, and samplers compare log densities that differ in their
eighth digit. Switching it on in one subpackage (``bayes_ude.nlme`` did) made the
precision of an array depend on whether that subpackage had been imported yet.

So ``import bayes_ude`` turns x64 on, once, for the whole process: every array created
after the first import of the package is float64 by default. Arrays created *before*
it (``x = jnp.ones(3); import bayes_ude``) are float32; :func:`bayes_ude.solvers.solve`
promotes float32 inputs to float64, so nothing is lost there, but import the package
first to avoid surprises elsewhere.

The opt-out is the environment variable ``BAYES_UDE_X64=0``, read at import: x64 is then
left as it is (off, unless the user turned it on). Solves then run in float32, say so
once per process with a warning, and refuse tolerances that float32 cannot resolve.
"""

from __future__ import annotations

import os

ENV = "BAYES_UDE_X64"
_state = "not applied"


def apply() -> str:
    """Turn JAX's x64 mode on unless ``BAYES_UDE_X64=0``; returns what happened (also
    kept for :func:`status`)."""
    global _state
    if os.environ.get(ENV, "1") == "0":
        _state = f"off ({ENV}=0): jax_enable_x64 left as it is"
    else:
        import jax  # importing jax does not start its backend (see _xla.py)

        jax.config.update("jax_enable_x64", True)
        _state = "on: jax_enable_x64 enabled by bayes_ude at import"
    return _state


def status() -> str:
    """Whether ``import bayes_ude`` switched x64 on for this process, and why (not)."""
    return _state


def promote(tree, dtype=None):
    """Floating arrays of ``tree`` with fewer bits than ``dtype`` (default: JAX's default
    float, float64 with x64 on) cast to it; everything else as it is. Used wherever user
    input enters a computation (solves, SG-MCMC starts, SINDy data), so that a float32
    array does not carry the work into float32 unannounced."""
    import equinox as eqx  # lazily, like jax in apply(): this module is imported first
    import jax
    import jax.numpy as jnp

    dtype = jnp.result_type(float) if dtype is None else dtype

    def cast(x):
        if (eqx.is_inexact_array(x) and jnp.issubdtype(x.dtype, jnp.floating)
                and jnp.finfo(x.dtype).bits < jnp.finfo(dtype).bits):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)
