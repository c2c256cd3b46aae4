"""CTESN surrogates against the stiff solves they replace: accuracy, speed, and NUTS.

1. Robertson, the three rate constants each over a factor of 10 (log-uniform box around
   0.04, 3e7, 1e4), log grid of 100 times over [1e-5, 1e5]; 64 training points (Sobol),
   reservoir of 100, linear projection, its weights compressed to the POD modes that keep
   the training error under 1e-3 (15 modes). The cheapest surrogate measured that meets
   the accuracy asked (median <= 0.5 %, 99th percentile <= 2 %) with margin: held-out
   median 0.12-0.14 %, 99th percentile 0.75-1.06 % on two sets of 200 points, against
   0.046 % / 0.21 % with 128 points and 23 modes (pod_tol=1e-4), which costs 1.6x as much
   per evaluation (0.44 against 0.27 ms for 1,000 points). The evaluation is products of
   floating-point operations (RBF terms x coefficients, coefficients x modes x 300
   outputs), so its cost follows the number of centres and modes.
2. POLLU (20 species, 25 reactions), the rates of reactions 1, 2, 3, 15 and 22 each over a
   factor of 4, log grid of 100 times over [1e-3, 60]; 512 training points.
   For both: the error table on 200 held-out points (uniform, independent of the design;
   per species the largest error over the grid relative to the species' largest value),
   training time, and the surrogate against vmapped Rodas5P at rtol 1e-6 on the same 1,000
   points (warm; compile times apart), with the ratio.
3. NUTS on Robertson's rates from noisy data (15 times, 1 % noise): the surrogate's
   likelihood against the full Rodas5P solve's; posterior medians, their MCSE, wall times.

``--quick``: smaller NUTS runs. Prints everything; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import arviz as az  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from _common import compare, compile_time  # noqa: E402

from bayes_ude import inference, solvers, surrogates  # noqa: E402
from tests.solvers import pollu  # noqa: E402

K0 = np.array([0.04, 3e7, 1e4])


def robertson(t, y, k):
    k1, k2, k3 = k
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2],
                      k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
                      k2 * y[1] ** 2])


POLLU_VARIED = [0, 1, 2, 14, 21]


def pollu_rates(t, y, k):
    rates = jnp.asarray(pollu.RATES).at[jnp.array(POLLU_VARIED)].set(k)
    return pollu.rhs(t, y, rates, jnp)


def accuracy_and_speed(name, field, y0, ts, lower, upper, species, atol, n_train,
                       pod_tol=1e-5):
    print(f"\n== {name} ==")
    start = time.perf_counter()
    sur = surrogates.fit_ctesn(field, y0, ts, lower, upper, t0=0.0, n_train=n_train, atol=atol,
                               pod_tol=pod_tol, progress=False)
    train = time.perf_counter() - start
    print(sur.training)
    print(f"training, all in: {train:.1f} s")
    err = surrogates.held_out_error(sur, field, y0, t0=0.0, n=200, atol=atol)
    print(err.table(species))
    print(f"worst median {err.median.max():.3%} (<= 0.5 %), worst 99th percentile "
          f"{err.p99.max():.3%} (<= 2 %)")

    points = sur.box.from_unit(surrogates.design(1000, sur.box.dim, "uniform",
                                                 jax.random.key(7)))
    ours = jax.jit(lambda p: sur(p))

    @jax.jit
    def rodas(p):
        return solvers.solve_ensemble(field, y0, ts, p, batch_u0=False, t0=0.0,
                                      solver=solvers.Rodas5P(), rtol=1e-6, atol=atol,
                                      max_steps=100_000).ys

    c_ours, c_rodas = compile_time(ours, points), compile_time(rodas, points)
    # interleaved, round by round, so that both see the same state of the shared machine
    t_rodas, t_ours = compare([rodas, ours], points, rounds=15, number=[1, 40])
    gap = np.max(np.abs(ours(points) - rodas(points)) / sur.scale)
    print(f"1,000 points: surrogate {t_ours * 1e3:.2f} ms, Rodas5P (rtol 1e-6) "
          f"{t_rodas * 1e3:.0f} ms: {t_rodas / t_ours:.0f}x faster (>= 100x); compile "
          f"{c_ours:.2f} s vs {c_rodas:.1f} s; largest scaled gap {gap:.2e}")
    return sur


def nuts(sur, quick):
    print("\n== NUTS on Robertson's rates: surrogate vs full Rodas5P solve ==")
    t_obs = np.geomspace(1e-4, 1e5, 15)
    sur_obs = sur.at(t_obs)
    k_true = K0 * np.array([1.5, 0.7, 1.3])
    y0 = jnp.array([1.0, 0.0, 0.0])
    truth = solvers.solve(robertson, y0, t_obs, jnp.asarray(k_true), t0=0.0,
                          solver=solvers.Rodas5P(), rtol=1e-10, atol=1e-14,
                          max_steps=100_000).ys
    sigma = 0.01 * sur.scale
    y = truth + sigma * jax.random.normal(jax.random.key(0), truth.shape)

    def model(trajectory, y=None):
        u = numpyro.sample("u", dist.Uniform(0, 1).expand([3]).to_event(1))
        k = numpyro.deterministic("k", sur.box.from_unit(u))
        numpyro.sample("y", dist.Normal(trajectory(k), sigma).to_event(2), obs=y)

    def full(k):
        return solvers.solve(robertson, y0, t_obs, k, t0=0.0, solver=solvers.Rodas5P(),
                             rtol=1e-8, atol=1e-12, max_steps=100_000).ys

    n = 200 if quick else 1000
    out = {}
    for name, trajectory in (("surrogate", sur_obs), ("full", full)):
        start = time.perf_counter()
        idata = inference.run_nuts(model, trajectory, y=y, num_warmup=n, num_samples=n,
                                   num_chains=2, init="uniform", progress=False,
                                   posterior_predictive=False)
        wall = time.perf_counter() - start
        u = idata.posterior["u"]
        out[name] = dict(wall=wall, med=np.asarray(u.median(("chain", "draw"))),
                         mcse=np.asarray(az.mcse(idata, var_names=["u"], method="median")["u"]),
                         ess=np.asarray(az.ess(idata, var_names=["u"])["u"]),
                         k=np.asarray(idata.posterior["k"].median(("chain", "draw"))))
    s, f = out["surrogate"], out["full"]
    print(f"2 chains x {n} warmup + {n} draws; u = position of log k in the box, truth "
          f"{np.asarray(sur.box.to_unit(k_true)).round(4)}")
    print(f"{'':>10}{'median (sur)':>16}{'median (full)':>16}{'|diff|/MCSE':>14}"
          f"{'ESS sur':>10}{'ESS full':>10}")
    for i, label in enumerate(("k1", "k2", "k3")):
        z = abs(s["med"][i] - f["med"][i]) / np.hypot(s["mcse"][i], f["mcse"][i])
        print(f"{label:>10}{s['med'][i]:>16.4f}{f['med'][i]:>16.4f}{z:>14.2f}"
              f"{s['ess'][i]:>10.0f}{f['ess'][i]:>10.0f}")
    print(f"rates (median): surrogate {s['k']}, full {f['k']}")
    print(f"wall time, compile included: surrogate {s['wall']:.1f} s, full {f['wall']:.1f} s: "
          f"{f['wall'] / s['wall']:.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")
    sur = accuracy_and_speed("Robertson (3 rates, factor 10 each)", robertson,
                             jnp.array([1.0, 0.0, 0.0]), np.geomspace(1e-5, 1e5, 100),
                             K0 / np.sqrt(10), K0 * np.sqrt(10), ["y1", "y2", "y3"], 1e-12, 64,
                             pod_tol=1e-3)
    k0 = pollu.RATES[POLLU_VARIED]
    accuracy_and_speed("POLLU (5 rates, factor 4 each)", pollu_rates, jnp.asarray(pollu.Y0),
                       np.geomspace(1e-3, 60.0, 100), k0 / 2, k0 * 2,
                       [f"y{i + 1}" for i in range(20)], 1e-14, 512)
    nuts(sur, quick)


if __name__ == "__main__":
    main()
