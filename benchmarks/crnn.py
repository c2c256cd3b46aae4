"""CRNN benchmark on Ji & Deng's classic case (2A -> B, A -> C, C -> D, B + D -> E; 20
experiments x 100 times on [0, 40], 5 % noise):

1. the CRNN vector field + its gradient (one VJP) per call, and one training loss +
   gradient over all 20 experiments (Tsit5, rtol 1e-6, atol 1e-8, reverse mode), each
   against a hand-written version of the same model (plain ``jnp`` rate law; a direct
   ``diffrax.diffeqsolve`` with the same solver, controller and adjoint), checked to agree
   before timing; ratio ours / hand-written printed (interleaved rounds);
2. wall time of ``crnn.discover`` to the pruned mechanism (compilation included);
3. pSGLD steps per second (all chains), compilation excluded by differencing two warm runs.

``python benchmarks/crnn.py [--quick]``: ``--quick`` uses 8 experiments x 40 times and
shorter runs for parts 2 and 3.
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
    warm_up_diffrax,
)
from scipy.integrate import solve_ivp  # noqa: E402

from bayes_ude import crnn  # noqa: E402

K_TRUE = np.array([0.1, 0.2, 0.13, 0.3])
NU_TRUE = np.array([[-2, 1, 0, 0, 0], [-1, 0, 1, 0, 0], [0, 0, -1, 1, 0], [0, -1, 0, -1, 1]],
                   float)
RTOL, ATOL = 1e-6, 1e-8


def data(n_experiments, n_times, noise=0.05, seed=0):
    def rhs(t, c):
        a, b, c_, d, _ = c
        return NU_TRUE.T @ (K_TRUE * np.array([a**2, a, c_, b * d]))

    rng = np.random.default_rng(seed)
    ts = np.linspace(0.0, 40.0, n_times)
    u0 = np.zeros((n_experiments, 5))
    u0[:, :2] = rng.uniform(0.2, 1.2, (n_experiments, 2))
    clean = np.stack([solve_ivp(rhs, (0, 40), u, t_eval=ts, method="LSODA", rtol=1e-10,
                                atol=1e-12).y.T for u in u0])
    return crnn.Experiments(ts, np.maximum(clean * (1 + noise * rng.normal(size=clean.shape)),
                                           0.0), u0)


def hand_field(params, c):
    """The CRNN rate law written out: r = exp(clip(-nu, 0, 2.5) @ ln clip(c) + ln k)."""
    nu, log_k = params
    log_c = jnp.log(jnp.clip(c, 1e-6, 1e6))
    return jnp.exp(jnp.clip(-nu, 0.0, 2.5) @ log_c + log_k) @ nu


def main(quick: bool) -> None:
    train = data(20, 100)
    model = crnn.CRNN(5, 4, key=jax.random.key(0))  # a random initial network
    params = (model.stoichiometry, model.log_rate)
    c = jnp.asarray(train.ys[0, 10])
    v = jnp.ones(5)

    # ---- 1a. vector field + VJP
    ours_vf = jax.jit(lambda m, c: eqx.filter_vjp(lambda m_: m_(0.0, c), m)[1](v))
    hand_vf = jax.jit(lambda p, c: jax.vjp(lambda p_: hand_field(p_, c), p)[1](v))
    g1 = ours_vf(model, c)[0]
    g2 = hand_vf(params, c)[0]
    diff = float(jnp.max(jnp.abs(g1.stoichiometry - g2[0])))
    print(f"vector field VJP: max |difference| {diff:.1e}")
    t_ours, t_hand = compare([lambda c: ours_vf(model, c), lambda c: hand_vf(params, c)], c,
                             rounds=20, number=200)
    report("CRNN field + VJP", t_ours, t_hand, "hand-written jnp")

    # ---- 1b. loss + gradient over the 20 experiments
    loss = crnn.TrajectoryLoss(train, "mae", crnn.DEFAULT_SOLVE.replace(
        rtol=RTOL, atol=ATOL, sensitivity="reverse"))
    ours = eqx.filter_jit(eqx.filter_value_and_grad(loss))

    def hand_loss_data(p, ts, ys, u0, scale):
        def one(u):
            sol = dfx.diffeqsolve(
                dfx.ODETerm(lambda t, c, p: hand_field(p, c)), dfx.Tsit5(), ts[0], ts[-1],
                None, u, args=p, saveat=dfx.SaveAt(ts=ts),
                stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
                max_steps=4096)
            return sol.ys

        return jnp.mean(jnp.abs((jax.vmap(one)(u0) - ys) / scale))

    data_j = tuple(jnp.asarray(x) for x in (train.ts, train.ys, train.u0, train.scale))

    def hand_loss(p):  # the classic peer: its data closed over
        return hand_loss_data(p, *data_j)

    # The same jit wrapper as ours: eqx.filter_jit waits for each call's result (its
    # runtime-error check), jax.jit returns at once and overlaps the next call's Python
    # work with this one's computation: ~6 % of a 2 ms call here, not the library's.
    hand = eqx.filter_jit(jax.value_and_grad(hand_loss))
    warm_up_diffrax()  # neither pays the process's first compilation
    compiles = {"ours": compile_time(ours, model), "diffrax by hand": compile_time(hand, params)}
    (l1, gr1), (l2, gr2) = ours(model), hand(params)
    print(f"loss ours {float(l1):.6f}, diffrax {float(l2):.6f}; max |grad difference| "
          f"{float(jnp.max(jnp.abs(gr1.stoichiometry - gr2[0]))):.1e}")

    def hand_m(m):
        return hand((m.stoichiometry, m.log_rate))

    t_ours, t_hand = compare([ours, hand_m], model, rounds=10, number=3)
    report("loss+grad (20 experiments)", t_ours, t_hand, "hand-written diffrax (reverse)")
    hand_data = eqx.filter_jit(jax.value_and_grad(hand_loss_data))

    def hand_args(m):  # like ours: its data as arguments
        return hand_data((m.stoichiometry, m.log_rate), *data_j)

    like_for_like(loss, ours, hand_m, hand_args, model, number=3)
    report_compile("loss+grad (20 experiments)", compiles["ours"], compiles["diffrax by hand"],
                   "hand-written diffrax")
    print("\ncompile time of the first call (s)")
    for name, seconds in compiles.items():
        print(f"{name:<28}{seconds:>8.2f}")

    # ---- 2. training to the pruned mechanism
    small = data(8, 40) if quick else train
    settings = (dict(restarts=6, collocation_steps=2000, steps=150, refit_steps=150) if quick
                else dict(restarts=8, collocation_steps=3000, steps=300, refit_steps=300))
    found = crnn.discover(small, 4, progress=False, **settings)
    print(f"\ntraining to the pruned mechanism ({small.n_experiments} experiments x "
          f"{small.ts.shape[0]} times, {settings}): {found.seconds:.1f} s")
    print(crnn.format_mechanism(found.model))

    # ---- 3. pSGLD steps per second: two warm runs of different lengths, differenced (the
    # first runs compile; their chunked programs may differ with the length, so a cold
    # pair does not cancel: it printed a negative rate)
    chains = 4
    short, long = (20, 120) if quick else (50, 550)

    def run(n):
        start = time.perf_counter()
        crnn.run_psgld(crnn.unprune(found.model), small, num_steps=n, burn_in=0, thin=1,
                       num_chains=chains, progress=False)
        return time.perf_counter() - start

    cold = {n: run(n) for n in (short, long)}
    warm = {n: run(n) for n in (short, long)}
    rate = (long - short) * chains / (warm[long] - warm[short])
    print(f"pSGLD ({chains} chains, full batch of {small.n_experiments} experiments): "
          f"{rate:.0f} steps per second (all chains; compile + setup of the first run "
          f"{cold[short] - warm[short]:.1f} s)")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
