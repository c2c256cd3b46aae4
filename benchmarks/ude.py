"""One loss + gradient of the Lotka-Volterra UDE (missing-physics example): bayes_ude vs a
hand-written diffrax loss and vs torchdiffeq (``odeint_adjoint``) on the same network and
data; then the wall time of a full training run.

UDE: u1' = 1.3 u1 + NN1(u), u2' = -1.8 u2 + NN2(u), NN 2-5-5-5-2 with rbf activations,
t in [0, 5] saved every 0.25 (21 points), Tsit5 / dopri5 at rtol 1e-6, atol 1e-8. All
three use the same weights and the same data, and the script checks that they return the
same loss and gradient before timing. Prints ``name ours peer ratio`` (interleaved rounds)
and compile times.
"""

from __future__ import annotations

import os
import sys
import time

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
    time_py,
    warm_up_diffrax,
)
from scipy.integrate import solve_ivp  # noqa: E402

from bayes_ude import nn, ude  # noqa: E402

P = (1.3, 0.9, 0.8, 1.8)
RTOL, ATOL = 1e-6, 1e-8


def data():
    ts = np.arange(0.0, 5.0001, 0.25)
    a, b, c, d = P
    x = solve_ivp(lambda t, u: [a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]],
                  (0, 5), [0.44249296, 4.6280594], t_eval=ts, rtol=1e-10, atol=1e-12).y.T
    rng = np.random.default_rng(0)
    return ts, x + 0.05 * x.mean(axis=0) * rng.normal(size=x.shape)


def physics(t, u, theta):
    return jnp.stack([P[0] * u[0], -P[3] * u[1]])


def main():
    ts, ys = data()
    net = nn.MLP(2, 2, (5, 5, 5), "rbf", key=jax.random.key(0))
    model = ude.UDE(physics, net)
    loss = ude.SingleShooting(ts, ys, rtol=RTOL, atol=ATOL, scale=1.0)

    ours = eqx.filter_jit(eqx.filter_value_and_grad(loss))

    # Hand-written diffrax: the same loss, reverse mode through diffeqsolve. The classic
    # peer closes over its data (hand_loss); hand_args passes them (like ours).
    ts_j, ys_j = jnp.asarray(ts), jnp.asarray(ys)

    def hand_loss_data(m, ts, ys):
        sol = dfx.diffeqsolve(dfx.ODETerm(lambda t, u, m: m(t, u)), dfx.Tsit5(), ts[0],
                              ts[-1], None, ys[0], args=m, saveat=dfx.SaveAt(ts=ts),
                              stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
                              max_steps=10_000)
        return jnp.mean((sol.ys - ys) ** 2)

    def hand_loss(m):
        return hand_loss_data(m, ts_j, ys_j)

    hand_data = eqx.filter_jit(eqx.filter_value_and_grad(hand_loss_data))

    def hand_args(m):
        return hand_data(m, ts_j, ys_j)

    hand = eqx.filter_jit(eqx.filter_value_and_grad(hand_loss))
    warm_up_diffrax()  # neither pays the process's first compilation
    compiles = {"ours": compile_time(ours, model), "diffrax by hand": compile_time(hand, model)}
    (v1, g1), (v2, g2) = ours(model), hand(model)
    g1v, g2v = nn.flatten(g1)[0], nn.flatten(g2)[0]
    print(f"loss ours {float(v1):.6f}, diffrax {float(v2):.6f}; "
          f"max |grad difference| {float(jnp.max(jnp.abs(g1v - g2v))):.2e}")
    t_ours, t_hand = compare([ours, hand], model, rounds=20, number=5)
    report("UDE loss+grad", t_ours, t_hand, "hand-written diffrax (reverse)")
    like_for_like(loss, ours, hand, hand_args, model)
    report_compile("UDE loss+grad", compiles["ours"], compiles["diffrax by hand"],
                   "hand-written diffrax")

    try:
        torch_time = torchdiffeq_time(net, ts, ys, float(v1))
    except ImportError:
        print("torchdiffeq not installed (pip install '.[bench]'): skipped")
    else:
        report("UDE loss+grad", t_ours, torch_time, "torchdiffeq odeint_adjoint (dopri5)")

    # A full training run: collocation init, then single shooting Adam + L-BFGS.
    start = time.perf_counter()
    init = ude.fit(ude.Collocation(ts, ys), model, steps=2000, learning_rate=1e-2,
                   lbfgs_steps=200, progress=False)
    final = ude.fit(ude.SingleShooting(ts, ys), init.params, steps=500, learning_rate=1e-3,
                    lbfgs_steps=1000, progress=False)
    print(f"\nfull training (collocation 2000 Adam + 200 L-BFGS; shooting 500 Adam + "
          f"{final.lbfgs_steps} L-BFGS): {time.perf_counter() - start:.1f} s, final loss "
          f"{final.final_loss:.5f}")
    print("\ncompile time of the first call (s)")
    for name, c in compiles.items():
        print(f"{name:<28}{c:>8.2f}")


def torchdiffeq_time(net, ts, ys, expected_loss):
    import torch
    from torchdiffeq import odeint_adjoint

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(2)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for lin in net.layers:
                layer = torch.nn.Linear(lin.in_features, lin.out_features)
                layer.weight.data = torch.tensor(np.asarray(lin.weight))
                layer.bias.data = torch.tensor(np.asarray(lin.bias))
                self.layers.append(layer)

        def forward(self, t, u):
            h = u
            for layer in self.layers[:-1]:
                h = torch.exp(-layer(h) ** 2)
            learned = self.layers[-1](h)
            phys = torch.stack([P[0] * u[0], -P[3] * u[1]])
            return phys + learned

    field = Field()
    ts_t, ys_t = torch.tensor(ts), torch.tensor(ys)

    def step():
        field.zero_grad()
        pred = odeint_adjoint(field, ys_t[0], ts_t, rtol=RTOL, atol=ATOL, method="dopri5")
        value = torch.mean((pred - ys_t) ** 2)
        value.backward()
        return float(value)

    value = step()
    print(f"loss torchdiffeq {value:.6f} (ours {expected_loss:.6f})")
    return time_py(step, repeat=5, number=3)


if __name__ == "__main__":
    main()
