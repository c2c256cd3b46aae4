"""Compilation settings shared by the package's large programs.

Two trade-offs are made here, both on CPU only (elsewhere XLA's defaults stand):

* XLA's older (non-MLIR) fusion emitters, always: they compile these loop-heavy programs
  about twice as fast, and the programs run as fast.
* *Quick* compilation (LLVM without optimisation passes, ``xla_backend_optimization_level
  = 0``) for a program whose inputs are small: it compiles 2-10x faster and runs ~2-2.5x
  slower, which pays while the run is short next to the compile. Each compiled function
  says below how many input elements (all array arguments together) it compiles quickly
  for: :data:`ITERATIVE` for programs evaluated many times (a fit's iterations),
  :data:`ONE_OFF` for programs run once (diagnostics, simulations, figures). Measured on
  the 2-core CPU machine (oral one-compartment FOCEI, ~10 observations per subject): at
  12 subjects the fit compiles in 2.6 s instead of 3.5 s and runs 0.11 s instead of
  0.06 s; at 200 subjects the two are even (compile 3.6 s + run 1.9 s against 5.2 s +
  0.9 s); the NPDE diagnostics (500 replicates) compile in 0.7 s instead of 2.7 s, and
  at 200 subjects still win by 2 s. Not where an argument says it is costly to evaluate
  (``compile_quickly = False``: nlme's ODE models, whose fits run 2.2x longer unoptimised
  for a compilation barely shorter). Only in a process with one device: with several,
  programs are compiled in full, where a fit gives the same numbers to the last bit on
  any number of them (quickly compiled, FOCEI estimates on 1 and 4 CPU devices were
  3.7e-9 apart: the unoptimised code rounds differently for different block shapes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np

from ._programs import active_store

__all__ = ["ITERATIVE", "ONE_OFF", "compiler_options", "filter_jit"]

#: input elements up to which a program evaluated many times is compiled quickly
#: (about 100 subjects of ~10 observations in a population program)
ITERATIVE = 10_000
#: input elements up to which a program run once is compiled quickly (~1,000 subjects)
ONE_OFF = 100_000


@functools.cache
def compiler_options(quick: bool = False) -> dict | None:
    """XLA options for the package's large programs (``jax.jit(..., compiler_options=...)``);
    ``quick``: compile fast rather than run fast (see the module's docstring).

    On CPU, XLA's older (non-MLIR) fusion emitters compile these loop-heavy programs
    about twice as fast, and the programs run as fast (Theophylline NUTS: the sampler's
    compilation 14.9 s -> 7.0 s; the FOCEI outer step 21 s -> 9 s under load, same time
    per iteration). ``None`` elsewhere, or where this XLA does not know the options."""
    if jax.default_backend() != "cpu":
        return None
    opts = {"xla_cpu_use_fusion_emitters": False}
    if quick:
        opts["xla_backend_optimization_level"] = 0
    try:
        jax.jit(lambda x: x + 1.0).lower(1.0).compile(opts)
    except Exception:  # an XLA without the option refuses it
        return None if not quick else compiler_options()
    return opts


def _n_elements(leaves) -> int:
    return sum(int(np.size(x)) for x in leaves if isinstance(x, (jax.Array, np.ndarray)))


def _vetoed(tree) -> bool:
    """Whether an argument says its programs are costly to run (``compile_quickly``
    false: a population model with ODEs, say), whatever their inputs' size."""
    found = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "compile_quickly"))
    return any(getattr(x, "compile_quickly", True) is False for x in found)


def filter_jit(fn: Callable | None = None, *, quick_below: int | None = None) -> Callable:
    """``equinox.filter_jit`` with :func:`compiler_options`, set up at the first call (so
    that importing the package neither starts a backend nor compiles anything).

    ``quick_below``: a call whose array arguments hold at most this many elements in all
    is compiled quickly (:data:`ITERATIVE`, :data:`ONE_OFF`) when the process has a
    single device and no argument has ``compile_quickly`` false; ``None``: never. Use as
    ``@filter_jit`` or ``@filter_jit(quick_below=ONE_OFF)``."""
    if fn is None:
        return functools.partial(filter_jit, quick_below=quick_below)
    compiled = {}

    def quick(leaves, args, kwargs) -> bool:
        return (quick_below is not None and jax.device_count() == 1
                and _n_elements(leaves) <= quick_below and not _vetoed((args, kwargs)))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        leaves = jax.tree.leaves((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            # called inside another jitted function: compiler options belong to the
            # top-level program only, and the body is inlined there anyway
            return fn(*args, **kwargs)
        fast = quick(leaves, args, kwargs)
        store = active_store()
        if store is not None:  # a command's run: the program may be on disk already
            return store.call(fn, compiler_options(fast), fast, args, kwargs)
        if fast not in compiled:
            compiled[fast] = eqx.filter_jit(fn, compiler_options=compiler_options(fast))
        return compiled[fast](*args, **kwargs)

    def precompile(*args, **kwargs) -> None:
        """Inside a command's program store (:func:`bayes_ude._programs.program_store`),
        load or compile the program a call with these arguments runs (their shapes and
        static values count, not their numbers) without running it; elsewhere nothing."""
        store = active_store()
        if store is not None:
            fast = quick(jax.tree.leaves((args, kwargs)), args, kwargs)
            store.prepare(fn, compiler_options(fast), fast, args, kwargs)

    wrapper.precompile = precompile
    return wrapper
