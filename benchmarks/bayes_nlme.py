"""Bayesian Theophylline fit, 4 chains x (1000 warmup + 1000 draws): bayes_ude's NUTS on the
built-in one-compartment oral model vs Stan (rstan) on the same closed-form model, measured
in the same run. Prints min-ESS per second (compile included, and without it), the ratio
ours / Stan (target >= 2), and checks that both give the same posterior (medians within
Monte Carlo error).

The model (``bayes_ude.nlme.numpyro_model(builtin_model("oral1cmt", pop), pop)``, written
out in benchmarks/stan/theoph_1cmt.stan): log-normal ka, cl, v, additive error; priors
theta ~ Normal(initial value, 2), omega_sd ~ HalfNormal(1), add_sd ~ HalfNormal(5 x
initial add_sd), eta ~ Normal(0, omega_sd). Doses in mg (``AMT = Dose x Wt``),
concentrations in mg/L, F = 1. Both samplers start every chain at the model's initial
values jittered by U(-0.2, 0.2) on the unconstrained scale (etas at 0), with target
acceptance 0.8 and maximum tree depth 10. Stan samples non-centred etas (``eta = z *
omega_sd``, z ~ Normal(0, 1)) with a diagonal metric, its default. Ours runs twice:

* with its defaults: ``random_effects="auto"`` centres the etas the data inform (all three
  here) on their typical values (the sites are each subject's ``log ka``, ``log cl``,
  ``log v``), and with every eta centred the metric is dense;
* as before that choice existed: non-centred and diagonal, as Stan.

Each run follows ``jax.clear_caches()``, so both compile everything they need, and each
is compared with Stan. The parameterisation changes how NUTS moves, not the posterior;
the medians are compared. Numbers and what they mean are in docs/performance.md
("Bayesian NLME per draw", "Bayesian NLME: centred random effects").

ESS is ArviZ's bulk ESS on the same quantities for both: the 7 population parameters of
``res.table()`` (theta, omega variances, add_sd), and separately the 36 etas. "Compile"
is, for ours, the time JAX spent tracing, lowering and compiling during the fit (summed
from ``jax.monitoring`` events), for Stan ``stan_model()`` (C++ compilation).

Environment: ``BAYES_UDE_XLA_TUNING=0`` keeps XLA's default CPU small-while-loop
threshold (the package raises it; see bayes_ude/_xla.py); ``BAYES_NLME_DRAWS`` sets
warmup = draws per chain (default 1000); ``BAYES_NLME_BACKEND`` picks ours' NUTS backend
(``numpyro``, default, or ``blackjax``); ``BAYES_NLME_STAN=0`` skips Stan;
``BAYES_NLME_OMEGA_PRIOR`` sets both samplers' prior on the omega SDs, as ``bayes-ude pk
fit --omega-prior`` takes it (default ``halfnormal:1``; e.g. ``halfcauchy:0.1``);
``BAYES_NLME_STAN_METRIC`` Stan's metric (``diag_e``, default, or ``dense_e``).

Usage: python benchmarks/bayes_nlme.py

Where the time goes (measured 2026-11-28 on 2 shared cores, so seconds swing by a factor
of ~1.5 between runs; ratios are from one process):

* With the runner as first written (chains ``vmap``-ed, NumPyro's own initialisation)
  compilation was ~3/4 of the run: 52 of 71 s (Stan: 117 s compile + 28 s run, ratio
  1.64). Tracing + lowering + XLA compilation of the initialisation (~10-20 s: NumPyro's
  search for valid initial values doubles that program) and of the sampler step (~22-30
  s), then the posterior-predictive replicates (~2-4 s).
* One gradient of the potential costs ~13 us (~36 us for 4 chains vmapped) against ~5-8
  us for a hand-written closed form; the structural model is not the difference (a
  minimal single-dose closed form in the same NumPyro model: 13.2 -> 11.8 us). A NUTS
  leapfrog step costs ~30-50 us per chain, Stan's ~33 us: the sampler's bookkeeping, not
  the model, dominates. Both take ~43-49 leapfrog steps per draw.
* ``vmap`` over chains triples the sampler program (6,700 vs 2,300 lines of StableHLO):
  trace + lower 8.5 s -> 1.5 s and compile 20.6 s -> 14.1 s with the chains run one after
  the other (``lax.map``), at the same time per draw (200 draws x 4 chains: 1.90 vs
  1.94 s; vmap runs the most leapfrog steps of the 4 chains, 70.8 per draw against a
  mean of 49.3, but batches them).
* XLA's CPU fusion emitters: ``xla_cpu_use_fusion_emitters=False`` (a per-program
  compiler option) compiles the sampler in 7.0 s instead of 14.9 s, same speed.
* Initial values drawn once and handed to ``kernel.init`` (no search loop): the
  initialisation program compiles in 2.3-4.0 s instead of 6.3-9.2 s.
* XLA's small-while-loop threshold (``BAYES_UDE_XLA_TUNING=0`` vs 1) changes nothing here
  (39 vs 48 us per chain-step vmapped, 48.6 vs 49.3 us with lax.map: noise). BlackJAX
  compiles two NUTS programs (adaptation 22 s + sampling 27 s) and its draws were ~3x
  slower; not a way out.
* With those three changes in bayes_ude.inference._nuts (chains by lax.map on CPU, fusion
  emitters off, drawn initial values): ours 34.9 s (19.4 s compile), Stan 107.9 s
  (83.7 s compile), min-ESS/s ratio 2.26 compile included, 1.14 without compilation,
  0.80 on the sampling phase alone (Stan's min ESS 1355 against ours ~1000-1090).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pandas as pd  # noqa: E402

from bayes_ude import nlme  # noqa: E402
from bayes_ude.nlme._command import DEFAULT_OMEGA_PRIOR  # noqa: E402
from bayes_ude.nlme._command_bayes import omega_prior  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WARMUP = SAMPLES = int(os.environ.get("BAYES_NLME_DRAWS", "1000"))
CHAINS = 4
BACKEND = os.environ.get("BAYES_NLME_BACKEND", "numpyro")
OMEGA_PRIOR = os.environ.get("BAYES_NLME_OMEGA_PRIOR", DEFAULT_OMEGA_PRIOR)
OMEGA_SD_PRIOR = omega_prior(OMEGA_PRIOR)  # parsed once, for both samplers
STAN_METRIC = os.environ.get("BAYES_NLME_STAN_METRIC", "diag_e")
ETA_NAMES = ("eta_ka", "eta_cl", "eta_v")
POP = ("tka", "tcl", "tv", "omega_eta_ka", "omega_eta_cl", "omega_eta_v", "add_sd")

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _compile.update({event: secs}) if event in _COMPILE_EVENTS
    else None)


# ------------------------------------------------------------------------------ ours
def run_ours(model, pop, label="default", **settings):
    jax.clear_caches()  # each run compiles everything it needs, as a fresh process would
    _compile.clear()
    start = time.perf_counter()
    res = nlme.fit(model, pop, "nuts", num_warmup=WARMUP, num_samples=SAMPLES,
                   num_chains=CHAINS, progress=False, backend=BACKEND,
                   priors=nlme.Priors(omega_sd=OMEGA_SD_PRIOR), **settings)
    seconds = time.perf_counter() - start
    compile_s = sum(_compile.values())
    a = res.idata.attrs
    draws = {k: np.asarray(res.draws[k]) for k in POP}
    eta = np.asarray(res.idata.posterior["eta"])  # chain, draw, subject, eta
    n_steps = np.asarray(res.idata.sample_stats["n_steps"])
    a_centred = a.get("centred", "")
    name = (f"ours ({BACKEND}, {label}: {'dense' if a['dense_mass'] else 'diag'}, "
            f"{'centred ' + a_centred if a_centred else 'non-centred'})")
    return {"name": name, "total": seconds, "compile": compile_s,
            "sampling": a["seconds_sampling"] - a["seconds_warmup"],
            "draws": draws, "eta": eta, "divergent": int(a["num_divergent"]),
            "steps": float(n_steps.mean())}


# ------------------------------------------------------------------------------ Stan
def _r(x) -> str:
    """An R literal for a scalar, vector or matrix (column-major)."""
    x = np.asarray(x)
    fmt = (lambda v: f"{int(v)}L") if x.dtype.kind in "iub" else (lambda v: repr(float(v)))
    if x.ndim == 0:
        return fmt(x)
    body = "c(" + ", ".join(fmt(v) for v in x.ravel(order="F")) + ")"
    if x.ndim == 1:
        return body
    return f"structure({body}, .Dim = c({', '.join(str(d) for d in x.shape)}))"


def _r_list(d: dict) -> str:
    return "list(" + ", ".join(f"{k} = {v}" for k, v in d.items()) + ")"


def stan_input(model, pop, seed: int = 123) -> str:
    """The data, initial values and settings for theoph_1cmt.R, as R source."""
    mask = np.asarray(pop.obs_mask)
    dmask = np.asarray(pop.dose_mask)
    if not (np.all(dmask.sum(1) == 1) and np.all(np.asarray(pop.dose_cmt)[dmask] == 1)
            and not np.any(np.asarray(pop.dose_rate)[dmask] > 0)
            and not np.any(np.asarray(pop.dose_ss)[dmask])):
        raise ValueError("the Stan model takes one oral bolus (CMT 1) per subject")
    n = pop.n_subjects
    subj = np.broadcast_to(np.arange(1, n + 1)[:, None], mask.shape)[mask]
    data = {"N": _r(n), "M": _r(int(mask.sum())), "subj": _r(subj.astype(int)),
            "time": _r(np.asarray(pop.obs_time)[mask]), "dv": _r(np.asarray(pop.obs_dv)[mask]),
            "dose_time": _r(np.asarray(pop.dose_time)[dmask]),
            "dose_amt": _r(np.asarray(pop.dose_amt)[dmask]),
            "theta_init": _r([float(model.theta[k]) for k in ("tka", "tcl", "tv")]),
            "theta_scale": _r(2.0), "add_sd_scale": _r(5.0 * model.sigma["add_sd"]),
            "omega_cauchy": _r(int(isinstance(OMEGA_SD_PRIOR, dist.HalfCauchy))),
            "omega_scale": _r(float(OMEGA_SD_PRIOR.scale))}
    # as ours (bayes_ude.nlme._priors.init_near): initial values, U(-0.2, 0.2) jitter on
    # the unconstrained scale
    rng = np.random.default_rng(seed)
    sd0 = np.sqrt(np.diag(np.asarray(model.omega.init)))

    def j(shape=()):
        return rng.uniform(-0.2, 0.2, shape)

    inits = []
    for _ in range(CHAINS):
        inits.append(_r_list({
            **{k: _r(float(model.theta[k]) + j()) for k in ("tka", "tcl", "tv")},
            "omega_sd": _r(sd0 * np.exp(j(3))),
            "add_sd": _r(model.sigma["add_sd"] * np.exp(j())),
            "eta_z": _r(j((n, 3)))}))
    return (f"data <- {_r_list(data)}\ninits <- list({', '.join(inits)})\n"
            f"warmup <- {WARMUP}L\ndraws <- {SAMPLES}L\nseed <- {seed}L\n"
            f"metric <- \"{STAN_METRIC}\"\n")


def run_stan(model, pop):
    if os.environ.get("BAYES_NLME_STAN") == "0" or not shutil.which("Rscript"):
        print("Stan skipped (BAYES_NLME_STAN=0 or no Rscript)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        inp, out, timing = (Path(tmp) / n for n in ("in.R", "draws.csv", "timing.csv"))
        inp.write_text(stan_input(model, pop))
        proc = subprocess.run(["Rscript", str(ROOT / "benchmarks/stan/theoph_1cmt.R"),
                               str(inp), str(out), str(timing)], capture_output=True, text=True)
        if proc.returncode:
            print("Stan failed:\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
            return None
        t = pd.read_csv(timing).iloc[0]
        df = pd.read_csv(out)
    df.columns = [re.sub(r"[\[\],]", ".", c) for c in df.columns]  # eta[1,2] -> eta.1.2.
    df = df.sort_values(["chain", "draw"])

    def arr(col):
        return df[col].to_numpy().reshape(CHAINS, -1)

    draws = {k: arr(k) for k in ("tka", "tcl", "tv")}
    for i, e in enumerate(ETA_NAMES):
        draws[f"omega_{e}"] = arr(f"omega_sd.{i + 1}.") ** 2
    draws["add_sd"] = arr("add_sd")
    n = pop.n_subjects
    eta = np.stack([np.stack([arr(f"eta.{i + 1}.{j + 1}.") for j in range(3)], -1)
                    for i in range(n)], -2)
    return {"name": f"Stan (rstan, {STAN_METRIC}, 1 core)",
            "total": float(t.compile_s + t.run_s), "compile": float(t.compile_s),
            "sampling": float(t.sampling_s), "draws": draws, "eta": eta,
            "divergent": int(df["divergent"].sum()), "steps": float(df["n_leapfrog"].mean())}


# ---------------------------------------------------------------------------- report
def compare_medians(ours, stan, focei):
    """Posterior medians of ours and Stan's, the difference in units of its Monte Carlo
    standard error (both runs' MCSEs combined), and nlmixr2's FOCEI estimates."""
    print(f"\n{ours['name']}")
    print(f"{'parameter':<15}{'ours':>9}{'Stan':>9}{'z':>7}{'FOCEI':>9}{'ours/FOCEI':>12}"
          f"   (z: difference / MCSE)")
    z = {}
    for k in POP:
        a, b = ours["draws"][k], stan["draws"][k]
        se = np.hypot(float(az.mcse(a, method="median")), float(az.mcse(b, method="median")))
        z[k] = (np.median(a) - np.median(b)) / se
        print(f"{k:<15}{np.median(a):>9.4f}{np.median(b):>9.4f}{z[k]:>7.2f}{focei[k]:>9.4f}"
              f"{np.median(a) / focei[k]:>12.3f}")
    beyond = [k for k, v in z.items() if abs(v) > 2]
    # with the same posterior each z is ~N(0, 1): 7 parameters put one beyond 2 in ~28 %
    # of runs by chance, one beyond 4 almost never
    print(f"medians beyond 2 MCSE: {beyond or 'none'} (chance alone: ~0.3 of 7 expected); "
          + ("none beyond 4" if max(abs(v) for v in z.values()) < 4 else
             "WARNING: a median differs by more than 4 Monte Carlo SEs"))



def ess(run):
    pop_ess = {k: float(az.ess(v, method="bulk")) for k, v in run["draws"].items()}
    eta = run["eta"]
    eta_ess = min(float(az.ess(eta[..., i, j], method="bulk"))
                  for i in range(eta.shape[2]) for j in range(eta.shape[3]))
    return pop_ess, eta_ess


def main():
    from bayes_ude import _xla

    pop = nlme.load_theophylline_population()
    model = nlme.builtin_model("oral1cmt", pop)
    print(f"Theophylline oral1cmt, {CHAINS} chains x ({WARMUP} warmup + {SAMPLES} draws), "
          f"omega SD prior {OMEGA_PRIOR}; XLA small-loop threshold: {_xla.status()}",
          flush=True)
    runs = [run_ours(model, pop),
            run_ours(model, pop, "before", random_effects="noncentred", dense_mass=False)]
    print(f"ours done in {runs[0]['total']:.1f} s (as before, non-centred and diagonal: "
          f"{runs[1]['total']:.1f} s)", flush=True)
    stan = run_stan(model, pop)
    if stan is not None:
        runs.append(stan)
    print(f"\n{'sampler':<64}{'compile':>8}{'run':>7}{'total':>7}{'draws':>7}"
          f"{'minESS':>8}{'ESS/s':>7}{'ESS/s':>7}{'etaESS':>8}{'steps':>7}{'div':>5}")
    print(f"{'':<64}{'s':>8}{'s':>7}{'s':>7}{'s':>7}{'(pop)':>8}{'all':>7}{'run':>7}"
          f"{'(min)':>8}{'/draw':>7}")
    rates = []
    for r in runs:
        pop_ess, eta_ess = ess(r)
        r["pop_ess"] = pop_ess
        e = min(pop_ess.values())
        run_s = r["total"] - r["compile"]
        rates.append((e / r["total"], e / run_s, e / r["sampling"]))
        print(f"{r['name']:<64}{r['compile']:>8.1f}{run_s:>7.1f}{r['total']:>7.1f}"
              f"{r['sampling']:>7.1f}{e:>8.0f}{rates[-1][0]:>7.2f}{rates[-1][1]:>7.2f}"
              f"{eta_ess:>8.0f}{r['steps']:>7.1f}{r['divergent']:>5}")
    print("(run = total - compile: warmup + draws + post-processing; draws: the sampling "
          "phase alone, for Stan summed over chains)")
    if stan is None:
        return 0
    for r, rate in zip(runs[:-1], rates[:-1], strict=True):
        print(f"\nmin-ESS/s ratio {r['name']} / Stan: compile included "
              f"{rate[0] / rates[-1][0]:.2f} (target >= 4); compile excluded "
              f"{rate[1] / rates[-1][1]:.2f}; sampling phase only {rate[2] / rates[-1][2]:.2f} "
              "(target >= 2)")
    # same posterior? medians, with the Monte Carlo standard error of each
    # and nlmixr2's FOCEI estimates (tests/reference), which our FOCEI reproduces
    ref = pd.read_csv(ROOT / "tests/reference/theoph_nlmixr2.csv", comment="#",
                      index_col="parameter")
    focei = {k: float(ref.loc[k, "estimate"]) for k in ("tka", "tcl", "tv", "add_sd")}
    for eta, cv in ref["bsv_cv_pct"].dropna().items():
        focei[f"omega_eta_{eta[1:]}"] = float(np.log(1 + (cv / 100) ** 2))
    for r in runs[:-1]:
        compare_medians(r, stan, focei)
    return 0


if __name__ == "__main__":
    sys.exit(main())
