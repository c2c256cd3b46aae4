"""Traced programs kept on disk between runs of the same command on the same data.

JAX's persistent compilation cache spares a second run the compilation, but not the
tracing and lowering in Python that come before it (to find the cache entry): for the
Theophylline FOCEI command, ~1.7 s of its ~6 s. A *program store* skips the tracing: inside
:func:`program_store`, each top-level call of a :func:`bayes_ude._compile.filter_jit`
function looks for its traced program under a key made of

* the *run key*: everything that determines the programs -- the package's source (a hash
  of every ``.py`` file under ``bayes_ude/``), the versions of JAX, jaxlib and the
  libraries traced through, the backend, device kinds and count, the JAX/XLA/bayes_ude
  environment variables, the CPU, the command's options, and the bytes of every data
  array (so constants that a program took from the data are the same);
* the call: the function's name, its static (non-array) arguments as text, and the
  shapes, dtypes and tree structure of its array arguments.

and, when there is none, traces as usual and stores the traced program (``jax.export``,
StableHLO; written atomically). A stored program is compiled when loaded, from JAX's
persistent compilation cache when it is there, so only the Python side is skipped; a
program JAX cannot export (a host callback) runs unstored. Runs that differ in anything
above never share a program. The store is off for code the key cannot see (a model file
of the user's, which may import anything), with several processes or chosen devices, and
with ``BAYES_UDE_COMPILATION_CACHE=0`` or ``BAYES_UDE_PROGRAM_STORE=0``. Any failure to
read or write the store falls back to tracing, never to an error. It keeps the newest
:data:`KEEP_RUNS` runs' programs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import pickle
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

__all__ = ["KEEP_RUNS", "ProgramStore", "active_store", "program_store", "run_key"]

#: runs (distinct run keys) whose programs are kept; older ones are deleted
KEEP_RUNS = 16
#: libraries whose code is traced into the programs
_LIBRARIES = ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix", "numpy",
              "numpyro", "optax")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

#: environment variables that change no program (where programs are kept, or whether)
_NOT_KEYED = ("JAX_COMPILATION_CACHE_DIR", "BAYES_UDE_COMPILATION_CACHE",
              "BAYES_UDE_PROGRAM_STORE")

_active: ProgramStore | None = None


def active_store() -> ProgramStore | None:
    """The store of the :func:`program_store` block being run, if any."""
    return _active


def _initialize_lapack() -> None:
    """Register the LAPACK kernels a program may call (JAX does it when lowering one)."""
    from jax._src.lax.linalg import initialize_lapack

    initialize_lapack()


def _source_hash() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    flags = re.search(r"^(flags|Features)\s*:(.*)$", text, re.M)
    model = re.search(r"^model name\s*:(.*)$", text, re.M)
    return f"{model.group(1) if model else ''}|{flags.group(2) if flags else ''}"


def _versions() -> str:
    out = []
    for name in _LIBRARIES:
        try:
            out.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name}=none")
    return ",".join(out)


def run_key(options: dict, arrays) -> str:
    """The run key of a command with ``options`` (text-like values) on data whose arrays
    are the leaves of the pytree ``arrays`` (see the module's docstring)."""
    digest = hashlib.sha256()
    devices = jax.devices()
    env = sorted((k, v) for k, v in os.environ.items()
                 if k.startswith(("JAX_", "XLA_", "BAYES_UDE_")) and k not in _NOT_KEYED)
    for part in (_source_hash(), _versions(), sys.version, _cpu(), jax.default_backend(),
                 str([d.device_kind for d in devices]), str(jax.process_count()),
                 str(jax.config.jax_enable_x64), repr(env), repr(sorted(options.items()))):
        digest.update(part.encode())
        digest.update(b"\0")
    for leaf in jax.tree.leaves(arrays):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _call_key(fn: Callable, quick: bool, static, treedef, leaves) -> str:
    static_leaves, static_def = jax.tree.flatten(static)
    text = "\0".join([
        f"{fn.__module__}.{fn.__qualname__}", str(quick),
        _ADDRESS.sub("", str(static_def)), _ADDRESS.sub("", repr(static_leaves)),
        _ADDRESS.sub("", str(treedef)),
        repr([(tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))
              for x in leaves])])
    return hashlib.sha256(text.encode()).hexdigest()


class ProgramStore:
    """The programs of one run key in ``folder / key``; :meth:`call` runs a function
    through them. ``hits``/``misses`` count the programs loaded and compiled."""

    def __init__(self, folder: Path, key: str):
        self.folder = Path(folder) / key
        self.hits = 0
        self.misses = 0
        self._loaded: dict[str, tuple] = {}

    def call(self, fn: Callable, options: dict | None, quick: bool, args, kwargs):
        """``fn(*args, **kwargs)`` compiled with XLA ``options``, from the store when
        there."""
        (compiled, out_def, out_static), leaves = self._entry(fn, options, quick, args,
                                                              kwargs)
        return eqx.combine(jax.tree.unflatten(out_def, compiled(*leaves)), out_static)

    def has_programs(self) -> bool:
        """Whether this run key has stored programs (an earlier run of it)."""
        try:
            return any(self.folder.glob("*.program"))
        except OSError:
            return False

    def prepare(self, fn: Callable, options: dict | None, quick: bool, args, kwargs) -> None:
        """Load or compile the program of ``fn(*args, **kwargs)`` without running it: a
        later :meth:`call` with arguments of the same shapes and static values finds it
        ready. Safe in another thread (at worst a program is compiled twice)."""
        self._entry(fn, options, quick, args, kwargs)

    def _entry(self, fn, options, quick, args, kwargs) -> tuple:
        dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
        leaves, treedef = jax.tree.flatten(dynamic)
        key = _call_key(fn, quick, static, treedef, leaves)
        entry = self._loaded.get(key) or self._load(key, options, leaves)
        if entry is None:
            entry = self._compile(key, fn, options, static, treedef, leaves)
        return entry, leaves

    def _load(self, key: str, options, leaves):
        path = self.folder / f"{key}.program"
        try:
            payload, out_def, out_static = pickle.loads(path.read_bytes())
            exported = jax.export.deserialize(bytearray(payload))
            _initialize_lapack()
            entry = (_compiled(exported, options, leaves), out_def, out_static)
        except Exception:  # absent, partial, or from an incompatible build: trace again
            return None
        self.hits += 1
        self._loaded[key] = entry
        return entry

    def _compile(self, key, fn, options, static, treedef, leaves):
        box = {}

        def flat(*xs):
            args, kwargs = eqx.combine(jax.tree.unflatten(treedef, xs), static)
            out_dynamic, box["out_static"] = eqx.partition(fn(*args, **kwargs), eqx.is_array)
            out_leaves, box["out_def"] = jax.tree.flatten(out_dynamic)
            return out_leaves

        self.misses += 1
        try:
            # refused for a host callback or a custom call JAX does not keep stable
            exported = jax.export.export(jax.jit(flat))(*leaves)
        except Exception:
            exported = None
        compiled = (jax.jit(flat, compiler_options=options).lower(*leaves).compile()
                    if exported is None else _compiled(exported, options, leaves))
        entry = self._loaded[key] = (compiled, box["out_def"], box["out_static"])
        if exported is not None:
            self._write(key, exported, box)
        return entry

    def _write(self, key, exported, box) -> None:
        """The exported program, written atomically under its key."""
        tmp = None
        try:
            data = pickle.dumps((bytes(exported.serialize()), box["out_def"],
                                 box["out_static"]))
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.folder / f"{key}.program")
        except Exception:  # an unpicklable output or a read-only folder: run unstored
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _compiled(exported, options, leaves):
    """``exported`` compiled once (JAX's persistent cache may hold it), for arguments
    like ``leaves`` however they are placed on the device."""
    return jax.jit(exported.call, compiler_options=options).lower(*leaves).compile()


def _prune(folder: Path, keep: int) -> None:
    runs = sorted((p for p in folder.iterdir() if p.is_dir()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[keep:]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def program_store(folder: Path | str | None, key: str | None) -> Iterator[ProgramStore | None]:
    """Run the block with the store of run ``key`` in ``folder`` (``None`` for either:
    no store). Yields the store (for its counters)."""
    global _active
    if folder is None or key is None or _active is not None:
        yield None
        return
    store = ProgramStore(Path(folder), key)
    with contextlib.suppress(OSError):
        store.folder.mkdir(parents=True, exist_ok=True)
        os.utime(store.folder, (time.time(), time.time()))
        _prune(Path(folder), KEEP_RUNS)
    _active = store
    try:
        yield store
    finally:
        _active = None
