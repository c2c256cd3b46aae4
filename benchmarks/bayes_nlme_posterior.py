"""Same posterior as Stan? Theophylline, ours (defaults) and Stan, each run with two seeds of
4 chains x (4000 warmup + 4000 draws), the model and priors of benchmarks/bayes_nlme.py.

Issue 21 asks for "all medians within 2 MCSE of Stan's". Every difference of two Monte
Carlo medians is noisy, so this prints the z score (difference over the combined median
MCSE, ArviZ) of every pair of runs: ours against Stan, and each sampler against itself
with another seed. If the z of ours against Stan look like those of Stan against Stan,
the two posteriors agree as far as Monte Carlo error can tell. A median beyond 2 MCSE
then says nothing about either sampler. Pooled over the two seeds, the means are
compared too.

A correctness check, not a timing: ~4 minutes on the 2-core CPU machine (Stan's model is
compiled once, or loaded from rstan's cache). Environment as benchmarks/bayes_nlme.py
(``BAYES_NLME_DRAWS`` sets warmup = draws per chain, here default 4000).

Usage: python benchmarks/bayes_nlme_posterior.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("BAYES_NLME_DRAWS", "4000")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import arviz as az  # noqa: E402
import bayes_nlme as B  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from bayes_ude import nlme  # noqa: E402

SEEDS = (1, 2)


def ours(model, pop, seed: int) -> dict:
    res = nlme.fit(model, pop, "nuts", num_warmup=B.WARMUP, num_samples=B.SAMPLES,
                   num_chains=B.CHAINS, progress=False, key=jax.random.key(seed),
                   priors=nlme.Priors(omega_sd=B.OMEGA_SD_PRIOR))
    print(f"ours, seed {seed}: {res.idata.attrs['num_divergent']} divergent", flush=True)
    return {k: np.asarray(res.draws[k]) for k in B.POP}


def stan(model, pop, seed: int) -> dict:
    original = B.stan_input
    B.stan_input = lambda m, p: original(m, p, seed=100 + seed)
    try:
        run = B.run_stan(model, pop)
    finally:
        B.stan_input = original
    if run is None:
        raise SystemExit("Stan did not run (see above)")
    print(f"Stan, seed {100 + seed}: {run['divergent']} divergent", flush=True)
    return run["draws"]


def z_median(a, b) -> float:
    se = np.hypot(float(az.mcse(a, method="median")), float(az.mcse(b, method="median")))
    return float((np.median(a) - np.median(b)) / se)


def main() -> int:
    pop = nlme.load_theophylline_population()
    model = nlme.builtin_model("oral1cmt", pop)
    print(f"Theophylline oral1cmt, {len(SEEDS)} seeds x {B.CHAINS} chains x ({B.WARMUP} "
          f"warmup + {B.SAMPLES} draws) per sampler", flush=True)
    o = [ours(model, pop, s) for s in SEEDS]
    s = [stan(model, pop, seed) for seed in SEEDS]
    pairs = {"ours1-Stan1": (o[0], s[0]), "ours2-Stan2": (o[1], s[1]),
             "ours1-Stan2": (o[0], s[1]), "ours2-Stan1": (o[1], s[0]),
             "ours1-ours2": (o[0], o[1]), "Stan1-Stan2": (s[0], s[1])}
    print(f"\nz of the medians (difference / combined MCSE), per pair of runs\n"
          f"{'parameter':<14}" + "".join(f"{p:>13}" for p in pairs))
    z = {p: {} for p in pairs}
    for k in B.POP:
        for p, (a, b) in pairs.items():
            z[p][k] = z_median(a[k], b[k])
        print(f"{k:<14}" + "".join(f"{z[p][k]:>13.2f}" for p in pairs))
    print(f"{'beyond 2':<14}" + "".join(
        f"{sum(abs(v) > 2 for v in z[p].values()):>13d}" for p in pairs))
    print(f"\npooled over the seeds\n{'parameter':<14}{'ours':>10}{'Stan':>10}{'z':>7}"
          f"{'ours mean':>11}{'Stan mean':>11}{'z':>7}")
    for k in B.POP:
        a = np.concatenate([r[k] for r in o])
        b = np.concatenate([r[k] for r in s])
        zm = (a.mean() - b.mean()) / np.hypot(float(az.mcse(a)), float(az.mcse(b)))
        print(f"{k:<14}{np.median(a):>10.4f}{np.median(b):>10.4f}{z_median(a, b):>7.2f}"
              f"{a.mean():>11.4f}{b.mean():>11.4f}{zm:>7.2f}")
    print("\nWith the same posterior each z is ~N(0, 1), if the MCSEs are right: 7 parameters "
          "put at least one beyond 2 in ~28 % of pairs by chance alone.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
