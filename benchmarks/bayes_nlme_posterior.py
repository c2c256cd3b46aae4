"""Same posterior as Stan? Theophylline, ours (defaults) and Stan, each run with several seeds of
4 chains x (4000 warmup + 4000 draws), the model and priors of benchmarks/bayes_nlme.py.

Issue 21 asks for "all medians within 2 MCSE of Stan's". Every difference of two Monte
Carlo medians is noisy, so this prints the z score (difference over the combined median
MCSE, ArviZ) of every pair of runs: ours against Stan, and each sampler against itself
with another seed. If the z of ours against Stan look like those of Stan against Stan,
the two posteriors agree as far as Monte Carlo error can tell. A median beyond 2 MCSE
then says nothing about either sampler. Pooled over the seeds, the medians and means are
compared too. With three seeds or more, a paired t test over the seeds' medians follows,
which uses no MCSE at all, and the measured run-to-run spread of each sampler's medians
is set against the MCSE it reported.

First, the log density itself: ours and Stan's (rstan's ``log_prob``) at the same 30
points must differ by one constant, and their gradients not at all.

A correctness check, not a timing: ~8 minutes on the 2-core CPU machine with two seeds,
~14 with eight (benchmarks/results/bayes_nlme_posterior_cpu_2026-12-07b.txt).
Environment as benchmarks/bayes_nlme.py (``BAYES_NLME_DRAWS`` sets warmup = draws per
chain, here default 4000), and ``BAYES_NLME_SEEDS`` (default ``1,2``): the seeds, one run of
each sampler per seed (Stan's seed is 100 more).

Usage: python benchmarks/bayes_nlme_posterior.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("BAYES_NLME_DRAWS", "4000")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import subprocess  # noqa: E402
import tempfile  # noqa: E402

import arviz as az  # noqa: E402
import bayes_nlme as B  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pandas as pd  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402

from bayes_ude import nlme  # noqa: E402

SEEDS = tuple(int(x) for x in os.environ.get("BAYES_NLME_SEEDS", "1,2").split(","))


def ours(model, pop, seed: int) -> dict:
    res = nlme.fit(model, pop, "nuts", num_warmup=B.WARMUP, num_samples=B.SAMPLES,
                   num_chains=B.CHAINS, progress=False, key=jax.random.key(seed),
                   priors=nlme.Priors(omega_sd=B.OMEGA_SD_PRIOR))
    print(f"ours, seed {seed}: {res.idata.attrs['num_divergent']} divergent", flush=True)
    return {**{k: np.asarray(res.draws[k]) for k in B.POP},
            "eta": np.asarray(res.idata.posterior["eta"])}  # chain, draw, subject, eta


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


# ------------------------------------------------------------ the density itself
def _unconstrained_points(run: dict, n_posterior: int = 20, n_far: int = 10) -> np.ndarray:
    """Points in Stan's unconstrained order (tka, tcl, tv, log omega_sd[3], log add_sd,
    eta_z column-major): posterior draws of ``run``, and as many again moved by N(0, 0.5²)
    on every coordinate (away from where the sampler went)."""
    rng = np.random.default_rng(0)
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in run.items()}
    pick = rng.choice(flat["tka"].shape[0], n_posterior, replace=False)
    sd = np.sqrt(np.stack([flat[f"omega_{e}"][pick] for e in B.ETA_NAMES], -1))
    eta_z = flat["eta"][pick] / sd[:, None, :]
    u = np.column_stack([flat["tka"][pick], flat["tcl"][pick], flat["tv"][pick], np.log(sd),
                         np.log(flat["add_sd"][pick]),
                         eta_z.transpose(0, 2, 1).reshape(n_posterior, -1)])
    far = u[rng.choice(n_posterior, n_far)] + 0.5 * rng.normal(size=(n_far, u.shape[1]))
    return np.concatenate([u, far])


def _constrained(u, n: int) -> dict:
    return {"tka": u[0], "tcl": u[1], "tv": u[2], "omega_sd": jnp.exp(u[3:6]),
            "add_sd": jnp.exp(u[6]), "eta_z": u[7:].reshape(3, n).T}


def stan_log_density(pop, model, u: np.ndarray) -> np.ndarray | None:
    """Stan's log density (constrained, no Jacobian) and its gradient with respect to the
    unconstrained parameters at each row of ``u``: columns lp, g1..gK."""
    n = pop.n_subjects
    points = []
    for row in u:
        p = {k: np.asarray(v) for k, v in _constrained(jnp.asarray(row), n).items()}
        points.append(B._r_list({k: B._r(v) for k, v in p.items()}))
    text = B.stan_input(model, pop).split("\ninits <- ")[0]  # the data only
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.R", Path(tmp) / "lp.csv"
        inp.write_text(f"{text}\npoints <- list({', '.join(points)})\n")
        proc = subprocess.run(["Rscript", str(B.ROOT / "benchmarks/stan/theoph_1cmt_logprob.R"),
                               str(inp), str(out)], capture_output=True, text=True)
        if proc.returncode:
            print("Stan's log_prob failed:\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
            return None
        return pd.read_csv(out).to_numpy()


def log_density_check(model, pop, run: dict) -> None:
    """Ours against Stan's log density at the same points. The two differ by a constant (the
    terms Stan's ``~`` drops) if and only if they define the same posterior; the gradients,
    which no constant touches, must agree outright. With every random effect centred, ours
    is the density of each subject's log ka, log cl, log v (eta shifted by the typical
    values), not of eta_z: Stan's plus the Jacobian -N sum(log omega_sd)."""
    u = _unconstrained_points(run)
    stan = stan_log_density(pop, model, u)
    if stan is None:
        return
    n = pop.n_subjects
    priors = nlme.Priors(omega_sd=B.OMEGA_SD_PRIOR)
    fns = {c: nlme.numpyro_model(model, pop, priors, centred=c)
           for c in ((), B.ETA_NAMES)}

    def ours_lp(u, centred):
        p = _constrained(u, n)
        if centred:  # a subject's own log ka, log cl, log v: eta shifted by the typical value
            p["eta_c"] = p.pop("eta_z") * p["omega_sd"] + u[:3]
        return log_density(fns[centred], (), {}, p)[0]

    # what Stan's `~` drops: every normal's -log(2 pi)/2 - log(scale) where the scale is
    # data, the half-distributions' log 2, a Cauchy's -log(pi) - log(scale)
    half = np.log(2) - 0.5 * np.log(2 * np.pi)
    om = B.OMEGA_SD_PRIOR
    om_const = (np.log(2) - np.log(np.pi) if isinstance(om, dist.HalfCauchy) else half)
    m = int(np.asarray(pop.obs_mask).sum())
    expected = (-(3 + 3 * n + m) * 0.5 * np.log(2 * np.pi) - 3 * np.log(2.0)
                + 3 * (om_const - np.log(float(om.scale)))
                + half - np.log(5.0 * model.sigma["add_sd"]))
    print(f"\nlog density at {len(u)} points ({len(u) // 3 * 2} posterior draws of ours, "
          f"{len(u) // 3} moved off them), ours - Stan:")
    lp_nc = jax.vmap(lambda x: ours_lp(x, ()))(jnp.asarray(u))
    d = np.asarray(lp_nc) - stan[:, 0]
    print(f"  non-centred (eta_z): constant {d.mean():.6f} (the terms Stan drops: "
          f"{expected:.6f}), spread (max - min) "
          f"{np.ptp(d):.1e} over log densities {stan[:, 0].min():.1f} to {stan[:, 0].max():.1f}")
    g = np.asarray(jax.vmap(jax.grad(lambda x: ours_lp(x, ())))(jnp.asarray(u)))
    dg = np.abs(g - stan[:, 1:])
    print(f"  its gradient (unconstrained, {g.shape[1]} coordinates): max |difference| "
          f"{dg.max():.1e}, largest |gradient| {np.abs(stan[:, 1:]).max():.1f}")
    lp_c = jax.vmap(lambda x: ours_lp(x, B.ETA_NAMES))(jnp.asarray(u))
    d = np.asarray(lp_c) - (stan[:, 0] - n * u[:, 3:6].sum(1))
    print(f"  all centred (log ka_i, ...): constant {d.mean():.6f}, spread {np.ptp(d):.1e}",
          flush=True)


def main() -> int:
    pop = nlme.load_theophylline_population()
    model = nlme.builtin_model("oral1cmt", pop)
    print(f"Theophylline oral1cmt, {len(SEEDS)} seeds x {B.CHAINS} chains x ({B.WARMUP} "
          f"warmup + {B.SAMPLES} draws) per sampler", flush=True)
    o = [ours(model, pop, s) for s in SEEDS]
    log_density_check(model, pop, o[0])
    s = [stan(model, pop, seed) for seed in SEEDS]
    pairs = {f"ours{i + 1}-Stan{i + 1}": (o[i], s[i]) for i in range(len(SEEDS))}
    if len(SEEDS) == 2:
        pairs.update({"ours1-Stan2": (o[0], s[1]), "ours2-Stan1": (o[1], s[0])})
    if len(SEEDS) >= 2:
        pairs.update({"ours1-ours2": (o[0], o[1]), "Stan1-Stan2": (s[0], s[1])})
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
    if len(SEEDS) >= 3:
        between_seeds(o, s)
    return 0


def between_seeds(o: list, s: list) -> None:
    """A test that does not trust ArviZ's MCSE: the seeds are independent runs, so the
    spread of their medians is the Monte Carlo error, measured. Per parameter, a paired t
    test of d_i = median(ours_i) - median(Stan_i), and how the measured spread of each
    sampler's medians compares with the mean MCSE it reported (1 = MCSE right; above 1 =
    MCSE too small, z scores above too large)."""
    from scipy import stats

    n = len(o)
    print(f"\nbetween the {n} seeds (no MCSE used): paired t test of median(ours_i) - "
          f"median(Stan_i), t({n - 1});\nmeasured sd of the {n} medians / mean reported MCSE\n"
          f"{'parameter':<14}{'mean d':>10}{'sd d':>10}{'t':>7}{'p':>7}"
          f"{'ours sd/MCSE':>14}{'Stan sd/MCSE':>14}")
    for k in B.POP:
        mo = np.array([np.median(r[k]) for r in o])
        ms = np.array([np.median(r[k]) for r in s])
        d = mo - ms
        t = d.mean() / (d.std(ddof=1) / np.sqrt(n))
        p = 2 * stats.t.sf(abs(t), n - 1)
        cal = [m.std(ddof=1) / np.mean([float(az.mcse(r[k], method="median")) for r in runs])
               for m, runs in ((mo, o), (ms, s))]
        print(f"{k:<14}{d.mean():>10.5f}{d.std(ddof=1):>10.5f}{t:>7.2f}{p:>7.3f}"
              f"{cal[0]:>14.2f}{cal[1]:>14.2f}")
    print("7 tests: with the same posterior, one p below 0.05 happens in ~30 % of runs, "
          "below 0.05/7 (Bonferroni) in ~5 %.")


if __name__ == "__main__":
    raise SystemExit(main())
