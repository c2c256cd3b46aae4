"""Compilation settings shared by the package's large programs."""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax

__all__ = ["compiler_options", "filter_jit"]


@functools.cache
def compiler_options() -> dict | None:
    """XLA options for the package's large programs (``jax.jit(..., compiler_options=...)``).

    On CPU, XLA's older (non-MLIR) fusion emitters compile these loop-heavy programs
    about twice as fast, and the programs run as fast (Theophylline NUTS: the sampler's
    compilation 14.9 s -> 7.0 s; the FOCEI outer step 21 s -> 9 s under load, same time
    per iteration). ``None`` elsewhere, or where this XLA does not know the option."""
    if jax.default_backend() != "cpu":
        return None
    opts = {"xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(lambda x: x + 1.0).lower(1.0).compile(opts)
    except Exception:  # an XLA without the option refuses it
        return None
    return opts


def filter_jit(fn: Callable) -> Callable:
    """``equinox.filter_jit`` with :func:`compiler_options`, set up at the first call (so
    that importing the package neither starts a backend nor compiles anything)."""
    compiled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            # called inside another jitted function: compiler options belong to the
            # top-level program only, and the body is inlined there anyway
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = eqx.filter_jit(fn, compiler_options=compiler_options())
        return compiled(*args, **kwargs)

    return wrapper
