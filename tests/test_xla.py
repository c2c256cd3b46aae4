"""The XLA small-loop setting made at import (bayes_ude/_xla.py)."""

import os
import subprocess
import sys

from bayes_ude import _xla

OPTION = "xla_cpu_small_while_loop_byte_threshold=65536"


def test_with_threshold_merges_into_existing_extra_options():
    assert _xla.with_threshold("") == f"--xla_backend_extra_options={OPTION}"
    assert _xla.with_threshold("--xla_foo=1") == f"--xla_foo=1 --xla_backend_extra_options={OPTION}"
    assert (_xla.with_threshold("--a=1 --xla_backend_extra_options=k=v --b")
            == f"--a=1 --xla_backend_extra_options=k=v,{OPTION} --b")
    assert _xla.with_threshold("--xla_backend_extra_options=") == \
        f"--xla_backend_extra_options={OPTION}"


def _status(env_extra, code="import bayes_ude, os"):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "BAYES_UDE_XLA_TUNING")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; print(bayes_ude._xla.status()); "
         "print(os.environ.get('XLA_FLAGS', ''))"],
        capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    return out[0], out[1]


def test_applied_at_import_unless_turned_off_set_or_too_late():
    state, flags = _status({})
    assert state.startswith("applied") and OPTION in flags
    state, flags = _status({"BAYES_UDE_XLA_TUNING": "0"})
    assert state.startswith("off") and OPTION not in flags
    mine = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=2048"
    state, flags = _status({"XLA_FLAGS": mine})
    assert state == "set by the user in XLA_FLAGS" and flags == mine
    # the backend already started: the flag would be ignored, so nothing is changed
    state, flags = _status({}, code="import jax, os; jax.numpy.ones(1); import bayes_ude")
    assert state.startswith("not applied") and OPTION not in flags


def test_threshold_changes_speed_not_results():
    """The same solve and gradient with the threshold and without (bitwise close)."""
    code = ("import jax, numpy as np; jax.config.update('jax_enable_x64', True); "
            "import jax.numpy as jnp; from bayes_ude import solvers; "
            "f = lambda t, u, p: jnp.stack([p[0]*u[0] - p[1]*u[0]*u[1], "
            "p[2]*u[0]*u[1] - p[3]*u[1]]); "
            "ts = jnp.linspace(0, 10, 21); p = jnp.array([1.5, 1.0, 3.0, 1.0]); "
            "g = jax.grad(lambda p: solvers.solve(f, jnp.ones(2), ts, p).ys.sum())(p); "
            "print(repr(np.asarray(g).tolist()))")
    outs = []
    for tuning in ("1", "0"):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["BAYES_UDE_XLA_TUNING"] = tuning
        outs.append(eval(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                        text=True, env=env, check=True).stdout))
    assert max(abs(a - b) / abs(b) for a, b in zip(*outs, strict=True)) < 1e-10
