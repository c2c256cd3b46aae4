"""Lynx-hare Lotka-Volterra posterior, 4 chains x (1000 warmup + 1000 draws): bayes_ude's
NUTS (BlackJAX and NumPyro backends) vs a hand-written NumPyro + diffrax model (reverse
mode, NumPyro's MCMC with sequential chains) vs Stan.

Stan runs through Rscript when R and rstan are installed (see benchmarks/stan/lynx_hare.R);
otherwise its timing is read from tests/reference/lynx_hare_stan_timing.csv (measured on
this project's reference machine). Prints min-ESS per second, compile included, and ratios.

``BAYES_LV_DRAWS`` sets warmup = draws per chain (default 1000); ``BAYES_UDE_XLA_TUNING=0``
runs with XLA's default CPU "small while loop" threshold instead of the package's (below).

Measured 2026-12-01 (2 cores, Stan through Rscript in the same run; chains started with
``init="map"``): NumPyro backend 30.8 s, min ESS 974, 31.6 ESS/s; BlackJAX 44.4 s, 1120,
25.2; Stan 89.9 s, 925, 10.3: ours 3.1x Stan's ESS per second. The hand-written model
(uniform start) took 368 s with chains stuck in a local mode (min ESS 5). Since 2026-11-28
the chains run one after the other on CPU (``lax.map``; BlackJAX 75 s -> 32 s).

Where the time goes (measured 2026-11-28: one gradient of
the log density at the posterior mode; interleaved timings, 2 shared cores):

* the plain solve takes 33 steps (~40 us); the gradient with forward sensitivities takes
  48-52 steps, because the error control includes the 12 sensitivities (2 states x 6
  parameters): ~400 us.
* the cost per step is not the sensitivity right-hand side: a plain solve of a
  hand-written 14-dimensional system takes as long as the sensitivity solve. It is XLA's
  CPU backend, which compiles a while loop whose carried state is at most 1 KiB into a
  single kernel and runs larger loops operation by operation. The Runge-Kutta stage
  array of the augmented system (7 x 14 doubles) alone is 784 bytes; the loops cross the
  threshold and each operation becomes a separately dispatched thunk. Raising the
  threshold (``--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=
  65536`` in ``XLA_FLAGS``, set before JAX starts) takes the gradient from ~390 us to
  ~47 us (8x) and the plain solve from ~46 to ~19 us. It is a process-wide XLA setting,
  which ``import bayes_ude`` now makes (``bayes_ude/_xla.py``) unless the JAX backend had
  already started or ``BAYES_UDE_XLA_TUNING=0``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import arviz as az  # noqa: E402
import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pandas as pd  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from bayes_ude import inference  # noqa: E402
from bayes_ude.inference import models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WARMUP = SAMPLES = int(os.environ.get("BAYES_LV_DRAWS", "1000"))
# Chains start at posterior modes: from NumPyro's default uniform start, chains of this
# posterior can settle in a local mode 40 nats below the main one and never leave it
# (measured: with the NumPyro backend, min ESS 4.7 from "uniform"). BAYES_LV_INIT=uniform
# for the default start.
INIT = os.environ.get("BAYES_LV_INIT", "map")
VARS = ["theta", "z_init", "sigma"]


def hand_written(ts, y_init=None, y=None):
    theta = numpyro.sample("theta", dist.TruncatedNormal(
        jnp.array([1.0, 0.05, 1.0, 0.05]), jnp.array([0.5, 0.05, 0.5, 0.05]), low=0.0))
    z_init = numpyro.sample("z_init", dist.LogNormal(jnp.log(10.0), 1.0).expand([2]))
    sigma = numpyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]))

    def f(t, z, th):
        return jnp.stack([(th[0] - th[1] * z[1]) * z[0], (-th[2] + th[3] * z[0]) * z[1]])

    sol = dfx.diffeqsolve(dfx.ODETerm(f), dfx.Tsit5(), 0.0, ts[-1], None, z_init, args=theta,
                          saveat=dfx.SaveAt(ts=ts),
                          stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-3),
                          max_steps=10_000, throw=False)  # a failed solve: NaN, rejected
    z = jnp.maximum(sol.ys, 1e-12)
    numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma).to_event(1), obs=y_init)
    numpyro.sample("y", dist.LogNormal(jnp.log(z), sigma).to_event(2), obs=y)


def min_ess(idata):
    return float(az.ess(idata, var_names=VARS).to_array().min())


def stan_numbers():
    """Stan's compile and sampling seconds and min ESS: measured now through Rscript when R
    and rstan are installed, else the stored reference measurement."""
    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            out, timing = Path(tmp) / "s.csv", Path(tmp) / "t.csv"
            run = subprocess.run(["Rscript", str(ROOT / "benchmarks/stan/lynx_hare.R"),
                                  str(out), str(timing)], capture_output=True, text=True)
            if run.returncode == 0:
                row = pd.read_csv(timing).iloc[0]
                return (float(row.compile_s), float(row.sampling_s), float(row.min_ess),
                        "measured now (Rscript)")
            print("Rscript failed (is rstan installed?):", run.stderr.strip()[-300:])
    row = pd.read_csv(ROOT / "tests/reference/lynx_hare_stan_timing.csv").iloc[0]
    return (float(row.compile_s), float(row.sampling_s), float(row.min_ess),
            "from tests/reference/lynx_hare_stan_timing.csv")


def main():
    ts, y_init, y = models.lynx_hare_data()
    rows = []
    for backend in ("blackjax", "numpyro"):
        start = time.perf_counter()
        idata = inference.run_nuts(models.lynx_hare, ts, y_init, y, backend=backend,
                                   num_warmup=WARMUP, num_samples=SAMPLES, num_chains=4,
                                   init=INIT, progress=False)
        seconds = time.perf_counter() - start
        rows.append((f"bayes_ude run_nuts ({backend})", seconds, min_ess(idata),
                     idata.attrs["num_divergent"]))
        print(*rows[-1], flush=True)
    start = time.perf_counter()
    mcmc = MCMC(NUTS(hand_written), num_warmup=WARMUP, num_samples=SAMPLES, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(0), jnp.asarray(ts), jnp.asarray(y_init), jnp.asarray(y),
             extra_fields=("diverging",))
    seconds = time.perf_counter() - start
    hand = az.from_numpyro(mcmc)
    rows.append(("hand-written NumPyro+diffrax (reverse, sequential)", seconds, min_ess(hand),
                 int(mcmc.get_extra_fields()["diverging"].sum())))
    c, s, ess, source = stan_numbers()
    rows.append((f"Stan 2.21 ({source})", c + s, ess, 0))
    from bayes_ude import _xla

    print(f"lynx-hare, 4 chains x ({WARMUP} warmup + {SAMPLES} draws); compile included; "
          f"bayes_ude init={INIT!r}; XLA small-loop threshold: {_xla.status()}")
    print(f"{'sampler':<58}{'seconds':>9}{'min ESS':>9}{'ESS/s':>8}{'div':>5}")
    for name, sec, e, div in rows:
        print(f"{name:<58}{sec:>9.1f}{e:>9.0f}{e / sec:>8.2f}{div:>5}")
    ours = max(rows[:2], key=lambda r: r[2] / r[1])
    for name, sec, e, _ in rows[2:]:
        ratio = (ours[2] / ours[1]) / (e / sec)
        print(f"ESS/s ratio {ours[0]} / {name}: {ratio:.2f} (wall time {name} / ours: "
              f"{sec / ours[1]:.2f})")


if __name__ == "__main__":
    sys.exit(main())
