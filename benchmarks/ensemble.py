"""A large stiff ensemble: Robertson with every member's rates perturbed, Rodas5P, vmapped.

Members draw ``k = (0.04, 3e7, 1e4) * exp(0.3 z)`` (z standard normal, fixed seed); each is
solved to t = 1e5 (rtol 1e-6, atol 1e-10) with :func:`bayes_ude.solvers.solve_ensemble`.
Prints compile time, the warm time of the whole ensemble (best of ``--repeat``), the time per
member, the steps of the slowest member, the number of failed members, and the largest error
of the first 20 members against scipy's Radau at rtol 1e-12. ``--members`` sets the size
(default 1000; the GPU check uses 100,000). Usage::

    python benchmarks/ensemble.py --members 10000
    python benchmarks/ensemble.py --members 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("EQX_ON_ERROR", "nan")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bayes_ude import solvers  # noqa: E402

K = np.array([0.04, 3e7, 1e4])
TS = jnp.array([0.0, 1e-2, 1.0, 1e2, 1e4, 1e5])


def robertson(t, y, k):
    k1, k2, k3 = k
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2],
                      k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2], k2 * y[1] ** 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ks = jnp.asarray(K * np.exp(0.3 * rng.normal(size=(args.members, 3))))

    @jax.jit
    def run(ks):
        sol = solvers.solve_ensemble(robertson, jnp.array([1.0, 0.0, 0.0]), TS, ks,
                                     batch_u0=False, solver=solvers.Rodas5P(), rtol=1e-6,
                                     atol=1e-10)
        return sol.ys, sol.num_steps, sol.success

    start = time.perf_counter()
    jax.block_until_ready(run(ks))
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        ys, steps, ok = jax.block_until_ready(run(ks))
        best = min(best, time.perf_counter() - start)
    ys, steps, ok = (np.asarray(a) for a in (ys, steps, ok))
    from scipy.integrate import solve_ivp

    worst = 0.0
    for i in range(min(20, args.members)):
        k1, k2, k3 = np.asarray(ks[i])

        def rhs(t, y, k1=k1, k2=k2, k3=k3):
            return [-k1 * y[0] + k3 * y[1] * y[2],
                    k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2], k2 * y[1] ** 2]

        ref = solve_ivp(rhs, (0, 1e5), [1.0, 0, 0], t_eval=np.asarray(TS), method="Radau",
                        rtol=1e-12, atol=1e-16).y.T
        worst = max(worst, float(np.max(np.abs(ys[i] - ref) / np.max(np.abs(ref), axis=0))))
    row = {"backend": jax.default_backend(), "members": args.members, "compile_s": compile_s,
           "seconds": best, "us_per_member": best / args.members * 1e6,
           "max_steps": int(np.max(steps)), "mean_steps": float(np.mean(steps)),
           "failed": int(np.sum(~ok)), "max_rel_error_first20": worst}
    print(f"Robertson ensemble, Rodas5P, {args.members} members on {row['backend']}: compile "
          f"{compile_s:.1f} s, warm {best:.3f} s ({row['us_per_member']:.1f} us/member), steps "
          f"mean {row['mean_steps']:.0f} max {row['max_steps']}, failed {row['failed']}, "
          f"max rel. error vs Radau (first 20) {worst:.1e}")
    if args.json:
        args.json.write_text(json.dumps(row))


if __name__ == "__main__":
    main()
