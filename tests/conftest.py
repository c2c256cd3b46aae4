"""Test configuration: float64 everywhere (numerics at tight tolerances need it)."""

import jax

jax.config.update("jax_enable_x64", True)
