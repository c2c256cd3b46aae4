"""One loss + gradient of the Fisher--KPP universal PDE: bayes_ude vs a hand-written diffrax
version of the same model.

Model: rho_t = NN(rho) + D0 conv(rho) on 26 periodic nodes (dx = 0.04), NN 1-10-20-10-1 tanh
applied at every node, a learnable zero-sum 3-point stencil; data every 0.5 to T = 5 (11
snapshots). Tsit5 at rtol 1e-6, atol 1e-8, reverse mode. Ours: ``pde.UniversalPDE`` in
``ude.SingleShooting`` (``solvers.solve``: failure handling, guarded controller). Hand-written:
``jnp.roll`` for the periodic stencil, ``vmap`` of the network, ``diffrax.diffeqsolve`` with
its PID controller and checkpointed reverse mode. The script checks that both return the
same loss and gradient before timing, then prints ``name ours peer ratio`` (interleaved
rounds, best of each) and the compile times.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    compare,
    compile_time,
    like_for_like,
    report,
    report_compile,
    warm_up_diffrax,
)

from bayes_ude import nn, pde, solvers, ude  # noqa: E402

RTOL, ATOL = 1e-6, 1e-8
D_TRUE, DX = 0.01, 0.04


def data():
    grid = pde.Grid(26, DX, "periodic")
    x = grid.x
    rho0 = (np.tanh((x - 0.4) / 0.02) - np.tanh((x - 0.6) / 0.02)) / 2
    ts = np.arange(0.0, 5.0001, 0.5)
    ys = solvers.solve(lambda t, u, a: u * (1 - u) + D_TRUE * pde.laplacian(u, grid),
                       jnp.asarray(rho0), ts, rtol=1e-10, atol=1e-12).ys
    return grid, ts, np.asarray(ys)


def main():
    grid, ts, ys = data()
    k_net, k_stencil = jax.random.split(jax.random.key(0))
    model = pde.UniversalPDE(grid, nn.MLP(1, 1, (10, 20, 10), "tanh", key=k_net),
                             pde.LearnableStencil(3, zero_sum=True, key=k_stencil, scale=0.1),
                             diffusion=1.0)
    loss = ude.SingleShooting(ts, ys, scale=1.0, rtol=RTOL, atol=ATOL)
    ours = eqx.filter_jit(eqx.filter_value_and_grad(loss))

    ts_j, ys_j = jnp.asarray(ts), jnp.asarray(ys)

    def field(t, u, m):
        w = m.stencil.raw - jnp.mean(m.stencil.raw)
        conv = w[0] * jnp.roll(u, 1) + w[1] * u + w[2] * jnp.roll(u, -1)
        react = jax.vmap(lambda v: m.reaction(v[None])[0])(u)
        return react + m.diffusion * conv

    def hand_loss_data(m, ts, ys):
        sol = dfx.diffeqsolve(dfx.ODETerm(field), dfx.Tsit5(), ts[0], ts[-1], None, ys[0],
                              args=m, saveat=dfx.SaveAt(ts=ts),
                              stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
                              max_steps=10_000)
        return jnp.mean((sol.ys - ys) ** 2)

    def hand_loss(m):  # the classic peer: its data closed over
        return hand_loss_data(m, ts_j, ys_j)

    hand_data = eqx.filter_jit(eqx.filter_value_and_grad(hand_loss_data))

    def hand_args(m):  # like ours: its data as arguments
        return hand_data(m, ts_j, ys_j)

    hand = eqx.filter_jit(eqx.filter_value_and_grad(hand_loss))
    warm_up_diffrax()  # neither pays the process's first compilation
    compiles = {"ours": compile_time(ours, model), "diffrax by hand": compile_time(hand, model)}
    (v1, g1), (v2, g2) = ours(model), hand(model)
    g1v, g2v = nn.flatten(g1)[0], nn.flatten(g2)[0]
    print(f"loss ours {float(v1):.8f}, diffrax {float(v2):.8f}; max |grad difference| "
          f"{float(jnp.max(jnp.abs(g1v - g2v))):.2e} (max |grad| "
          f"{float(jnp.max(jnp.abs(g1v))):.2e})")
    t_ours, t_hand = compare([ours, hand], model, rounds=20, number=5)
    report("UPDE loss+grad", t_ours, t_hand, "hand-written diffrax (reverse)")
    like_for_like(loss, ours, hand, hand_args, model, number=5)
    report_compile("UPDE loss+grad", compiles["ours"], compiles["diffrax by hand"],
                   "hand-written diffrax")
    print("\ncompile time of the first call (s)")
    for name, c in compiles.items():
        print(f"{name:<28}{c:>8.2f}")


if __name__ == "__main__":
    main()
