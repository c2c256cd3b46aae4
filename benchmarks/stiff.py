"""Stiff solvers on Robertson: bayes_ude Rodas5P / Rosenbrock23 vs diffrax Kvaerno5 and
scipy LSODA (analytic Jacobian), one process.

Robertson (k = 0.04, 3e7, 1e4; u0 = [1, 0, 0]) to t = 1e5 at rtol 1e-6, atol 1e-10 (and
Rodas5P one notch tighter, at better accuracy than the peers). Prints
``name ours peer ratio`` (steady state, interleaved rounds), step counts, the accuracy of
each against scipy Radau at rtol 1e-12, and compile times. Then an ensemble of 1000 solves
with the rates perturbed by up to +-50 % (vmapped), ours vs Kvaerno5.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("EQX_ON_ERROR", "nan")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import compare, compile_time, report, time_py  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from bayes_ude import solvers  # noqa: E402

K = jnp.array([0.04, 3e7, 1e4])
U0 = jnp.array([1.0, 0.0, 0.0])
TS = jnp.array([0.0, 1e-2, 1.0, 1e2, 1e4, 1e5])
RTOL, ATOL = 1e-6, 1e-10


def robertson(t, y, k):
    k1, k2, k3 = k
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2],
                      k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2], k2 * y[1] ** 2])


def np_rhs(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 3e7 * y[1] ** 2 - 1e4 * y[1] * y[2],
            3e7 * y[1] ** 2]


def np_jac(t, y):
    return [[-0.04, 1e4 * y[2], 1e4 * y[1]], [0.04, -6e7 * y[1] - 1e4 * y[2], -1e4 * y[1]],
            [0.0, 6e7 * y[1], 0.0]]


def make(solver, rtol=RTOL, atol=ATOL):
    def run(k):
        sol = solvers.solve(robertson, U0, TS, k, solver=solver, rtol=rtol, atol=atol)
        return sol.ys, sol.num_steps

    return jax.jit(run)


def main():
    print(f"jax {jax.__version__}, {jax.devices()}; Robertson to 1e5, rtol {RTOL}, atol {ATOL}")
    ref = solve_ivp(np_rhs, (0, 1e5), [1.0, 0, 0], t_eval=np.asarray(TS), method="Radau",
                    rtol=1e-12, atol=1e-16, jac=np_jac).y.T
    scale = np.max(np.abs(ref), axis=0)

    fns = {name: make(s) for name, s in (("Rodas5P", solvers.Rodas5P()),
                                         ("Rosenbrock23", solvers.Rosenbrock23()),
                                         ("Kvaerno5", solvers.Kvaerno5()))}
    # At the same tolerances Rodas5P is less accurate than Kvaerno5 and LSODA; one notch
    # tighter (rtol 1e-7, atol 1e-11) it is more accurate than both: the fair comparison.
    fns["Rodas5P tight"] = make(solvers.Rodas5P(), rtol=1e-7, atol=1e-11)
    fns["Auto"] = make(solvers.Auto())
    compiles = {name: compile_time(f, K) for name, f in fns.items()}
    times = dict(zip(fns, compare(list(fns.values()), K, rounds=10, number=3), strict=True))
    lsoda = time_py(lambda: solve_ivp(np_rhs, (0, 1e5), [1.0, 0, 0], t_eval=np.asarray(TS),
                                      method="LSODA", jac=np_jac, rtol=RTOL, atol=ATOL))
    lsoda_sol = solve_ivp(np_rhs, (0, 1e5), [1.0, 0, 0], t_eval=np.asarray(TS),
                          method="LSODA", jac=np_jac, rtol=RTOL, atol=ATOL)
    print(f"{'solver':<14}{'steps':>7}{'max rel. error':>16}   (tight: rtol 1e-7, atol 1e-11)")
    for name, f in fns.items():
        ys, steps = f(K)
        err = np.max(np.abs(np.asarray(ys) - ref) / scale)
        print(f"{name:<14}{int(steps):>7}{err:>16.2e}")
    print(f"{'LSODA':<14}{lsoda_sol.nfev:>7}{np.max(np.abs(lsoda_sol.y.T - ref) / scale):>16.2e}"
          "  (function evaluations, not steps)")
    print()
    for name in ("Rodas5P", "Rodas5P tight", "Rosenbrock23", "Auto"):
        report(f"robertson {name}", times[name], times["Kvaerno5"], "diffrax Kvaerno5")
        report(f"robertson {name}", times[name], lsoda, "scipy LSODA + analytic J")

    # Ensemble: 1000 rate vectors, each rate scaled by a factor in [0.5, 1.5].
    factors = jax.random.uniform(jax.random.key(0), (1000, 3), minval=0.5, maxval=1.5)
    ks = K * factors
    ens = {name: jax.jit(jax.vmap(lambda k, s=s: solvers.solve(
        robertson, U0, TS, k, solver=s, rtol=RTOL, atol=ATOL).ys))
        for name, s in (("Rodas5P", solvers.Rodas5P()), ("Kvaerno5", solvers.Kvaerno5()))}
    ens_compile = {name: compile_time(f, ks) for name, f in ens.items()}
    t_ours, t_peer = compare([ens["Rodas5P"], ens["Kvaerno5"]], ks, rounds=3, number=1)
    report("ensemble 1000 Rodas5P (vmap)", t_ours, t_peer, "diffrax Kvaerno5 vmapped")
    auto_on_nonstiff()
    pollu_vs_scipy()
    print("\ncompile time of the first call (s)")
    for name, c in {**compiles, **{f"ensemble {k}": v for k, v in ens_compile.items()}}.items():
        print(f"{name:<28}{c:>8.2f}")


def lotka_volterra(t, u, p):
    a, b, c, d = p
    return jnp.stack([a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]])


def auto_on_nonstiff():
    """Auto on a non-stiff problem: the same steps as Tsit5; the time ratio is the price
    of the mode switch (a lax.cond per step) and one JVP per step."""
    ts = jnp.linspace(0.0, 20.0, 41)
    u0 = jnp.array([1.0, 1.0])

    def run(solver):
        return jax.jit(lambda p: solvers.solve(lotka_volterra, u0, ts, p, solver=solver))

    p = jnp.array([1.5, 1.0, 3.0, 1.0])
    auto, tsit5 = run(solvers.Auto()), run(solvers.Tsit5())
    steps = (int(auto(p).num_steps), int(tsit5(p).num_steps))
    t_auto, t_tsit5 = compare([lambda p: auto(p).ys, lambda p: tsit5(p).ys], p, rounds=20)
    print(f"\nnon-stiff Lotka-Volterra to t=20: steps Auto {steps[0]}, Tsit5 {steps[1]}")
    report("LV Auto", t_auto, t_tsit5, "Tsit5 (ours on diffrax)")


def pollu_vs_scipy():
    """POLLU (20 species, 25 reactions) to t = 60 at rtol 1e-8, atol 1e-12."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tests.solvers import pollu

    ts = np.linspace(0.0, 60.0, 13)
    ref = solve_ivp(lambda t, y: pollu.rhs(t, y, pollu.RATES), (0, 60), pollu.Y0,
                    t_eval=ts, method="Radau", rtol=1e-12, atol=1e-16).y.T
    scale = np.max(np.abs(ref), axis=0)
    k = jnp.asarray(pollu.RATES)
    run = jax.jit(lambda k: solvers.solve(lambda t, y, k: pollu.rhs(t, y, k, jnp),
                                          jnp.asarray(pollu.Y0), jnp.asarray(ts), k,
                                          solver=solvers.Rodas5P(), rtol=1e-8, atol=1e-12))
    c = compile_time(run, k)
    sol = run(k)
    (t_ours,) = compare([lambda k: run(k).ys], k, rounds=10, number=3)
    print(f"\nPOLLU: Rodas5P {int(sol.num_steps)} steps, max rel. error "
          f"{np.max(np.abs(np.asarray(sol.ys) - ref) / scale):.1e}, compile {c:.2f} s")
    for method in ("Radau", "LSODA"):
        fn = lambda m=method: solve_ivp(lambda t, y: pollu.rhs(t, y, pollu.RATES),  # noqa: E731
                                        (0, 60), pollu.Y0, t_eval=ts, method=m,
                                        rtol=1e-8, atol=1e-12)
        err = np.max(np.abs(fn().y.T - ref) / scale)
        report("POLLU Rodas5P", t_ours, time_py(fn, repeat=3, number=1),
               f"scipy {method} (max rel. error {err:.1e})")


if __name__ == "__main__":
    main()
