"""One XLA setting for the CPU backend, made when the package is imported.

XLA's CPU backend compiles a ``while_loop`` whose carried state is at most 1 KiB into one
kernel, and runs a larger loop operation by operation, each a separately dispatched thunk.
An adaptive ODE solve with sensitivities carries more than that (the Runge-Kutta stages of
the lynx-hare model with its 12 sensitivities are 784 bytes alone), so every solver step
pays the dispatch of dozens of tiny operations: the lynx-hare gradient takes ~390 us with
the default threshold and ~47 us with it raised to 64 KiB (benchmarks/bayes_lv.py). The
threshold changes how a loop is compiled, not what it computes: results agree to
rounding (operations fused in another order), which a long optimisation can amplify into a
slightly different optimum.

It is an ``XLA_FLAGS`` option, read once when JAX starts its CPU backend (not per program:
``jax.jit(..., compiler_options=...)`` cannot carry it), so the package adds it to
``XLA_FLAGS`` at import time when

* the backend has not started yet (importing ``jax`` does not start it; the first
  computation does),
* the user has not set the threshold already (a value in ``XLA_FLAGS`` wins), and
* ``BAYES_UDE_XLA_TUNING`` is not ``0`` (the way to turn it off).

When the backend had already started, nothing is changed and :func:`status` says so.
"""

from __future__ import annotations

import os
import re
import sys

THRESHOLD_OPTION = "xla_cpu_small_while_loop_byte_threshold"
THRESHOLD_BYTES = 65536
_EXTRA = "--xla_backend_extra_options="
_state = "not applied"


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def with_threshold(flags: str, value: int = THRESHOLD_BYTES) -> str:
    """``flags`` (an ``XLA_FLAGS`` string) with the small-loop threshold added to its
    backend extra options (merged into an existing ``--xla_backend_extra_options``)."""
    option = f"{THRESHOLD_OPTION}={value}"
    match = re.search(r"--xla_backend_extra_options=(\S*)", flags)
    if match is None:
        return f"{flags} {_EXTRA}{option}".strip()
    merged = f"{match.group(1)},{option}" if match.group(1) else option
    return flags[:match.start(1)] + merged + flags[match.end(1):]


def apply() -> str:
    """Add the threshold to ``XLA_FLAGS`` if possible (see the module notes); returns
    what happened (also kept for :func:`status`)."""
    global _state
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("BAYES_UDE_XLA_TUNING", "1") == "0":
        _state = "off (BAYES_UDE_XLA_TUNING=0)"
    elif THRESHOLD_OPTION in flags:
        _state = "set by the user in XLA_FLAGS"
    elif _backend_started():
        _state = "not applied: the JAX backend had started before bayes_ude was imported"
    else:
        os.environ["XLA_FLAGS"] = with_threshold(flags)
        _state = f"applied ({THRESHOLD_OPTION}={THRESHOLD_BYTES})"
    return _state


def status() -> str:
    """Whether the small-loop threshold is in force for this process, and why."""
    return _state
