"""Test configuration: float64 everywhere (numerics at tight tolerances need it), and one
persistent JAX compilation cache for the whole session.

The cache is shared by the xdist workers, the notebooks' kernels and the command-line tests
(through the environment), so a program that several tests compile -- the Theophylline
FOCEI step, a lynx-hare NUTS chunk -- is compiled once per run. Entries are keyed by the
program, the JAX version and the flags, so a warm cache changes timings, never results.
Set ``JAX_COMPILATION_CACHE_DIR`` to choose the folder.
"""

import getpass
import os
import tempfile
from pathlib import Path

import jax

_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(tempfile.gettempdir()) / f"bayes_ude_jax_cache_{getpass.getuser()}"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_enable_x64", True)
