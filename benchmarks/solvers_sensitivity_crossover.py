"""Where forward sensitivities stop beating reverse mode: the `auto` threshold.

Lotka-Volterra plus a small tanh network (hidden width h, 4h weights) so that the number
of differentiated parameters P grows while the ODE stays the same size. For each P, the
gradient of a sum-of-squares loss is timed with sensitivity="forward" and "reverse"
(interleaved rounds, best of each). ``bayes_ude.solvers.AUTO_FORWARD_MAX_PARAMS`` is set
from this table; rerun it on new hardware.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("EQX_ON_ERROR", "nan")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from _common import compare  # noqa: E402

from bayes_ude import solvers  # noqa: E402

TS = jnp.linspace(0.0, 10.0, 21)
U0 = jnp.array([1.0, 1.0])


def field(t, u, w):
    h = w.shape[0] // 4
    w1, w2 = w[: 2 * h].reshape(h, 2), w[2 * h:].reshape(2, h)
    lv = jnp.stack([1.5 * u[0] - u[0] * u[1], u[0] * u[1] - 3.0 * u[1]])
    return lv + jnp.tanh(w2 @ jnp.tanh(w1 @ u))


def main():
    print(f"{'P':>5}{'forward (us)':>15}{'reverse (us)':>15}{'fwd/rev':>10}")
    for h in (1, 2, 4, 8, 16, 32):
        w = 0.05 * jax.random.normal(jax.random.key(0), (4 * h,))
        grads = [
            jax.jit(jax.grad(lambda w, s=s: jnp.sum(
                solvers.solve(field, U0, TS, w, sensitivity=s).ys ** 2)))
            for s in ("forward", "reverse")
        ]
        t_f, t_r = compare(grads, w, rounds=10, number=3)
        print(f"{4 * h:>5}{t_f * 1e6:>15.1f}{t_r * 1e6:>15.1f}{t_f / t_r:>10.2f}")
    print(f"AUTO_FORWARD_MAX_PARAMS = {solvers.AUTO_FORWARD_MAX_PARAMS}")


if __name__ == "__main__":
    main()
