"""d<z>/d rho of Lorenz 63 at rho = 28: one NILSS (and LSS) gradient against the
finite-difference ensemble that reaches the same accuracy.

Accuracy of a shadowing gradient: the standard deviation of its value over starts on the
attractor (window T = 100). The finite-difference estimate (rho +- 1, common starts) of
ensembles of trajectories of the same length: its Monte Carlo standard error, from a pilot
ensemble, falls as 1/sqrt(n); the ensemble size that matches the shadowing gradient's
accuracy -- its spread alone, and its spread with its bias against a large reference
ensemble -- is timed (warm, compiled; compile times printed apart).
Prints the table and the ratio FD / ours. ``--quick``: fewer starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import compile_time  # noqa: E402

from bayes_ude import solvers  # noqa: E402

RHO, WINDOW, SPINUP, DT = 28.0, 100.0, 20.0, 0.01


def lorenz(t, u, p):
    x, y, z = u
    return jnp.stack([10.0 * (y - x), x * (p["rho"] - z) - y, x * y - 8.0 / 3.0 * z])


def mean_z(u, p):
    return u[2]


def starts(n, key=0):
    return jnp.array([1.0, 1.0, 25.0]) + jax.random.normal(jax.random.key(key), (n, 3))


def _rk4(u, rho):
    f = lambda v: lorenz(0.0, v, {"rho": rho})  # noqa: E731
    k1 = f(u)
    k2 = f(u + 0.5 * DT * k1)
    k3 = f(u + 0.5 * DT * k2)
    k4 = f(u + DT * k3)
    return u + DT / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def _average(u, rho, window):
    u = jax.lax.fori_loop(0, int(SPINUP / DT), lambda _, v: _rk4(v, rho), u)

    def body(carry, _):
        v, total = carry
        return (_rk4(v, rho), total + v[2]), None

    (_, total), _ = jax.lax.scan(body, (u, 0.0), None, length=int(window / DT))
    return total / int(window / DT)


@jax.jit
def fd_ensemble(u0s):
    """Central difference (rho +- 1) of ensemble means, per start (common random numbers)."""
    hi = jax.vmap(lambda u: _average(u, RHO + 1.0, WINDOW))(u0s)
    lo = jax.vmap(lambda u: _average(u, RHO - 1.0, WINDOW))(u0s)
    return (hi - lo) / 2.0


def shadowing_gradient(method):
    @jax.jit
    def one(u0):
        return solvers.shadowing_gradient(lorenz, u0, {"rho": jnp.asarray(RHO)}, mean_z,
                                          (0.0, WINDOW), method=method, spinup=SPINUP)["rho"]
    return one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 starts instead of 24")
    args = parser.parse_args(argv)
    n_starts = 8 if args.quick else 24

    reference = np.asarray(fd_ensemble(starts(256, key=7)))
    ref, ref_se = reference.mean(), reference.std(ddof=1) / math.sqrt(reference.size)
    print(f"reference: finite differences over 256 trajectories of T = {WINDOW:g}: "
          f"d<z>/d rho = {ref:.4f} +- {ref_se:.4f}")
    pilot = np.asarray(fd_ensemble(starts(64, key=3)))
    per_trajectory_sd = pilot.std(ddof=1)

    rows = []
    for method in ("nilss", "lss"):
        fn = shadowing_gradient(method)
        compile_s = compile_time(fn, starts(1)[0])
        values, seconds = [], []
        for u0 in starts(n_starts, key=11):
            t0 = time.perf_counter()
            values.append(float(jax.block_until_ready(fn(u0))))
            seconds.append(time.perf_counter() - t0)
        values = np.asarray(values)
        spread = values.std(ddof=1)
        one_s = float(np.median(seconds))
        rms = math.sqrt(spread**2 + (values.mean() - ref) ** 2)  # spread and bias
        for target, accuracy in (("sd", spread), ("rms", rms)):
            # the finite-difference ensemble whose standard error equals that accuracy
            n_fd = max(2, math.ceil((per_trajectory_sd / accuracy) ** 2))
            u0s = starts(n_fd, key=5)
            fd_compile = compile_time(fd_ensemble, u0s)
            t0 = time.perf_counter()
            fd_values = np.asarray(jax.block_until_ready(fd_ensemble(u0s)))
            fd_s = time.perf_counter() - t0
            rows.append((method, target, values.mean(), accuracy, one_s, compile_s, n_fd,
                         fd_values.mean(), fd_s, fd_compile))
    print("\naccuracy 'sd': the gradient's spread over starts; 'rms': spread and its bias "
          "against the reference together")
    print(f"{'method':<7}{'acc.':<5}{'mean':>8}{'acc':>8}{'s/grad':>9}{'compile':>9}"
          f"{'FD n':>7}{'FD mean':>9}{'FD s':>8}{'FD comp':>9}{'FD/ours':>9}")
    for method, target, mean, acc, one_s, comp, n_fd, fd_mean, fd_s, fd_comp in rows:
        print(f"{method:<7}{target:<5}{mean:>8.4f}{acc:>8.4f}{one_s:>9.3f}{comp:>9.2f}"
              f"{n_fd:>7d}{fd_mean:>9.4f}{fd_s:>8.3f}{fd_comp:>9.2f}{fd_s / one_s:>9.2f}")
        assert abs(mean - ref) < 0.05 * ref, (method, mean, ref)
    print(f"\nper-trajectory sd of the FD estimate (T = {WINDOW:g}, rho +- 1): "
          f"{per_trajectory_sd:.3f}; ratio FD/ours > 1: shadowing is cheaper for the same "
          f"accuracy")


if __name__ == "__main__":
    main()
