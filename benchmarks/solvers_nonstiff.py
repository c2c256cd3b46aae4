"""Lotka-Volterra solve and gradient: bayes_ude vs plain diffrax and scipy, one process.

Run: ``python benchmarks/solvers_nonstiff.py``. Prints ``name ours peer ratio`` lines
(steady state, after compilation) and the compile times separately. Problem as in the
design notes: 2 states, 4 parameters, 21 save points on [0, 10], rtol 1e-6, atol 1e-8.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("EQX_ON_ERROR", "nan")  # diffrax's runtime checks off for both
sys.path.insert(0, os.path.dirname(__file__))

import diffrax as dfx  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import compare, compile_time, report, time_py  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from bayes_ude import solvers  # noqa: E402


def lv(t, u, p):
    a, b, c, d = p
    return jnp.stack([a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]])


P = jnp.array([1.5, 1.0, 3.0, 1.0])
U0 = jnp.array([1.0, 1.0])
TS = jnp.linspace(0.0, 10.0, 21)
RTOL, ATOL = 1e-6, 1e-8


def diffrax_solve(p, adjoint=None):
    return dfx.diffeqsolve(
        dfx.ODETerm(lv), dfx.Tsit5(), TS[0], TS[-1], None, U0, args=p,
        saveat=dfx.SaveAt(ts=TS), stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
        adjoint=adjoint or dfx.RecursiveCheckpointAdjoint(), max_steps=10_000, throw=False,
    ).ys


def ours(p, sensitivity="auto"):
    return solvers.solve(lv, U0, TS, p, rtol=RTOL, atol=ATOL, sensitivity=sensitivity).ys


def main():
    print(f"jax {jax.__version__}, devices {jax.devices()}; best of interleaved rounds")
    lines, compile_lines = [], []

    # Solve.
    f_ours, f_dfx = jax.jit(ours), jax.jit(diffrax_solve)
    compile_lines.append(("solve", compile_time(f_ours, P), compile_time(f_dfx, P)))
    t_ours, t_dfx = compare([f_ours, f_dfx], P)
    lines.append(("solve", t_ours, t_dfx, "diffrax Tsit5, same tolerances"))

    def scipy_lv(t, u):
        a, b, c, d = 1.5, 1.0, 3.0, 1.0
        return [a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]]

    t_scipy = time_py(lambda: solve_ivp(scipy_lv, (0, 10), [1.0, 1.0], t_eval=np.asarray(TS),
                                        rtol=RTOL, atol=ATOL, method="DOP853"))
    lines.append(("solve", t_ours, t_scipy, "scipy DOP853"))

    # Gradients of a scalar loss, each of our sensitivities vs diffrax's reverse mode.
    def grad_ours(sens):
        return jax.jit(jax.grad(lambda p: jnp.sum(ours(p, sens) ** 2)))

    g_dfx = jax.jit(jax.grad(lambda p: jnp.sum(diffrax_solve(p) ** 2)))
    c_dfx = compile_time(g_dfx, P)
    for sens in ("forward", "reverse", "auto"):
        g = grad_ours(sens)
        compile_lines.append((f"grad ({sens})", compile_time(g, P), c_dfx))
        t_g, t_p = compare([g, g_dfx], P, rounds=20)
        lines.append((f"grad ({sens})", t_g, t_p, "diffrax reverse (checkpointed)"))
        if sens == "auto":
            t_auto = t_g

    # Forward-mode Jacobian: ours (error control on the sensitivities too) vs diffrax
    # ForwardMode (error control on the state only: fewer steps, less accurate).
    j_dfx = jax.jit(jax.jacfwd(lambda p: diffrax_solve(p, dfx.ForwardMode())))
    j_ours = jax.jit(jax.jacfwd(lambda p: ours(p, "forward")))
    compile_lines.append(("jacfwd (forward)", compile_time(j_ours, P), compile_time(j_dfx, P)))
    t_j, t_p = compare([j_ours, j_dfx], P, rounds=20)
    lines.append(("jacfwd (forward)", t_j, t_p, "diffrax ForwardMode jacfwd"))

    # scipy has no gradients: central differences, 2 x 4 solves.
    def fd():
        for i in range(4):
            for s in (1, -1):
                pp = np.array([1.5, 1.0, 3.0, 1.0])
                pp[i] += s * 1e-6
                solve_ivp(lambda t, u, pp=pp: [pp[0] * u[0] - pp[1] * u[0] * u[1],
                                                pp[2] * u[0] * u[1] - pp[3] * u[1]],
                          (0, 10), [1.0, 1.0], t_eval=np.asarray(TS), rtol=RTOL, atol=ATOL)

    lines.append(("grad (auto)", t_auto, time_py(fd, repeat=3, number=1),
                  "scipy RK45 central differences"))

    print(f"{'name':<28}{'ours':>15}{'peer':>15}{'ratio':>9}")
    for line in lines:
        report(*line)
    print("\ncompile time of the first call (s)")
    print(f"{'name':<28}{'ours':>12}{'diffrax':>12}")
    for name, c_o, c_p in compile_lines:
        print(f"{name:<28}{c_o:>12.2f}{c_p:>12.2f}")


if __name__ == "__main__":
    main()
