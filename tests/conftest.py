"""Test configuration: float64 everywhere (numerics at tight tolerances need it), and one
persistent JAX compilation cache for the whole session.

The cache is shared by the xdist workers, the notebooks' kernels and the command-line tests
(through the environment), so a program that several tests compile -- the Theophylline
FOCEI step, a lynx-hare NUTS chunk -- is compiled once per run. Entries are keyed by the
program, the JAX version and the flags, so a warm cache changes timings, never results.
Set ``JAX_COMPILATION_CACHE_DIR`` to choose the folder.
"""

import gc
import getpass
import os
import signal
import tempfile
import threading
from pathlib import Path

import jax
import pytest

_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(tempfile.gettempdir()) / f"bayes_ude_jax_cache_{getpass.getuser()}"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
# The command's store of traced programs (bayes_ude/_programs.py) is keyed on the package's
# source, not on what a test monkeypatches in-process: off, except where tested on purpose.
os.environ.setdefault("BAYES_UDE_PROGRAM_STORE", "0")
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled programs after it (``jax.clear_caches``). An xdist
    worker otherwise keeps every program it compiled, and each holds memory mappings for
    its code (XLA's CPU backend: ~3 per compiled function, thousands per test module): a
    worker of the whole suite passed 30,000 mappings in its first 3 minutes and, near the
    end, XLA aborted in a compilation when Linux's default limit of 65,530 mappings
    (``vm.max_map_count``) was reached. A program needed again is traced again and, if it
    took over a second to compile, loaded from the persistent cache above."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def python_sigint():
    """SIGINT as in a terminal, Python's handler raising ``KeyboardInterrupt``, for a test
    that sends itself Ctrl-C in-process. pytest-xdist's workers start with SIGINT ignored,
    and under SIG_IGN the package rightly leaves Ctrl-C alone: such a test then passed
    only if an earlier test on the same worker (a notebook run) had put Python's handler
    back, and failed when the scheduler ran it first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
