"""How the cost of population fits grows with the number of subjects (issue 19, part 1).

Simulates one-compartment oral populations from known truth (3 log-normal random effects on
ka, CL, V; proportional error; 6-10 observations per subject at random protocol times; a
third of the subjects dosed twice, at 0 h and 12 h, through ADDL/II), writes each as a
NONMEM CSV and measures, for every N:

* reading the CSV (``nlme.read_nonmem``),
* one FOCEI objective + gradient (warm; the function the outer BFGS evaluates),
* one full FOCEI fit (up to ``--fit-max`` subjects; estimates against the simulation
  truth and against what the simulated subjects hold, :func:`sample_truth`), and the
  peer's fit of the same model to the same data: R's ``nlme`` (``Rscript``, when
  installed; ``benchmarks/r/scaling_nlme.R``), with the ratio of fit times,
* one NUTS gradient (the potential of ``nlme.numpyro_model``, all subjects' etas),
* one SGLD step on a minibatch of 100 subjects (gathered on the device),
* peak resident memory of the process, and the compiled programs' temporary memory per
  subject (an N x N or (N*obs)^2 array would make it grow with N),

each N in a fresh process (so that peak memory is per N), then the growth exponent (the
log-log slope) between consecutive N. Usage::

    python benchmarks/scaling.py                      # N = 100, 1000, 10000 on this machine
    python benchmarks/scaling.py --n 100 1000 --fit-max 1000
    python benchmarks/scaling.py --one 10000 --json out.json   # one N, this process
    python benchmarks/scaling.py --n --bias-seeds 8 --bias-methods focei laplace

Compile times are reported apart from the warm timings (best of several calls).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the simulation truth (natural scale)
TRUTH = {"ka": 1.5, "cl": 2.7, "v": 30.0}
OMEGA_SD = {"ka": 0.4, "cl": 0.3, "v": 0.2}
PROP_SD = 0.15
PROTOCOL = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.5, 16.0, 24.0, 36.0)
MINIBATCH = 100


def _etas(rng, n: int):
    import numpy as np

    return rng.normal(size=(n, 3)) * np.array([OMEGA_SD[p] for p in ("ka", "cl", "v")])


def sample_truth(n: int, seed: int = 0) -> dict:
    """What the simulated subjects themselves hold: the geometric means of their ka, CL and
    V (``exp`` of the mean eta, times the typical value) and the variances of their etas.
    An estimate cannot be closer to the simulation truth than these are (at N = 1,000
    the variance of 1,000 normal draws is within +-4.5 % of omega^2 only 2 times in 3)."""
    import numpy as np

    eta = _etas(np.random.default_rng(seed), n)
    out = {f"t{p}": TRUTH[p] * math.exp(eta[:, j].mean()) for j, p in enumerate(TRUTH)}
    out.update({f"omega_eta_{p}": float(eta[:, j].var()) for j, p in enumerate(TRUTH)})
    out["prop_sd"] = PROP_SD
    return out


def simulate_table(n: int, seed: int = 0):
    """A NONMEM table (pandas) of ``n`` subjects, computed with numpy alone."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    eta = _etas(rng, n)
    ka, cl, v = (TRUTH[p] * np.exp(eta[:, j]) for j, p in enumerate(("ka", "cl", "v")))
    k = cl / v
    wt = rng.uniform(50, 100, n)
    dose = np.round(4.0 * wt)
    twice = rng.random(n) < 1 / 3  # second dose at 12 h (ADDL 1, II 12)
    n_obs = rng.integers(6, 11, n)  # 6-10 observations each
    # a random subset of the protocol times per subject: the n_obs smallest random keys
    keys = rng.random((n, len(PROTOCOL)))
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    chosen = rank < n_obs[:, None]
    sub, col = np.nonzero(chosen)
    t = np.asarray(PROTOCOL)[col]

    def unit(tt, s):  # concentration after one dose at time 0
        tt = np.maximum(tt, 0.0)
        return dose[s] * ka[s] / (v[s] * (ka[s] - k[s])) * (np.exp(-k[s] * tt)
                                                            - np.exp(-ka[s] * tt))

    c = unit(t, sub) + np.where(twice[sub] & (t > 12.0), unit(t - 12.0, sub), 0.0)
    y = c * (1.0 + PROP_SD * rng.normal(size=c.size))
    ids = np.arange(1, n + 1)
    doses = pd.DataFrame({"ID": ids, "TIME": 0.0, "DV": np.nan, "AMT": dose, "EVID": 1,
                          "CMT": 1, "ADDL": twice.astype(int), "II": np.where(twice, 12.0, 0.0),
                          "WT": wt})
    obs = pd.DataFrame({"ID": ids[sub], "TIME": t, "DV": y, "AMT": np.nan, "EVID": 0,
                        "CMT": 2, "ADDL": 0, "II": 0.0, "WT": wt[sub]})
    table = pd.concat([doses, obs], ignore_index=True)
    return table.sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False],
                             kind="stable").reset_index(drop=True)


def _r_observations(table, path: Path) -> None:
    """The observations with each subject's dose and whether it had a second one, for R."""
    doses = table[table["EVID"] == 1].set_index("ID")
    obs = table[table["EVID"] == 0][["ID", "TIME", "DV"]].copy()
    obs["DOSE"] = doses.loc[obs["ID"], "AMT"].to_numpy()
    obs["TWICE"] = doses.loc[obs["ID"], "ADDL"].to_numpy()
    obs.to_csv(path, index=False)


def r_nlme_fit(table, timeout: float) -> dict | None:
    """R's nlme (Lindstrom-Bates, ML) on the same data and model: wall seconds of the fit
    (timed inside R) and its estimates; ``None`` without Rscript, a note if it failed or
    ran past ``timeout``."""
    import shutil

    import pandas as pd

    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        obs, out = Path(tmp) / "obs.csv", Path(tmp) / "out.csv"
        _r_observations(table, obs)
        try:
            done = subprocess.run(["Rscript", str(ROOT / "benchmarks" / "r" / "scaling_nlme.R"),
                                   str(obs), str(out)], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"note": f"did not finish in {timeout:.0f} s"}
        if done.returncode != 0 or not out.exists():
            return {"note": "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]}
        values = pd.read_csv(out).set_index("name")["value"]
    est = {k: float(values[k]) for k in values.index if k not in ("loglik", "seconds")}
    return {"seconds": float(values["seconds"]), "loglik": float(values["loglik"]),
            "estimates": est}


def _errors(est: dict, truth: dict) -> dict:
    """Relative errors of natural-scale estimates (theta on the log scale in ``est``)."""
    out = {f"t{p}": math.exp(est[f"t{p}"]) / truth[f"t{p}"] - 1 for p in TRUTH}
    out.update({f"omega_eta_{p}": est[f"omega_eta_{p}"] / truth[f"omega_eta_{p}"] - 1
                for p in TRUTH})
    out["prop_sd"] = est["prop_sd"] / truth["prop_sd"] - 1
    return {k: float(v) for k, v in out.items()}


def _population_model():
    import jax.numpy as jnp

    from bayes_ude import nlme

    def individual(th, eta, cov):
        return {p: jnp.exp(th[f"t{p}"] + eta[f"eta_{p}"]) for p in ("ka", "cl", "v")}

    return nlme.PopulationModel(
        nlme.OneCompartmentOral(), individual,
        theta={"tka": 0.2, "tcl": 0.8, "tv": 3.2},
        omega={"eta_ka": 0.1, "eta_cl": 0.1, "eta_v": 0.1},
        sigma={"prop_sd": 0.2}, error=nlme.Proportional())


def _best(fn, *args, repeat: int = 5) -> float:
    import jax

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _compiled(fn, *args):
    """(compile seconds, temporary bytes of the compiled program, compiled function)."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        temp = -1
    return seconds, temp, compiled


def measure(n: int, fit_max: int, seed: int = 0, r_timeout: float = 1800.0) -> dict:
    """Every measurement for one N, in this process."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from numpyro.infer.util import initialize_model

    from bayes_ude import inference, nlme
    from bayes_ude.inference._sgmcmc import sample_indices
    from bayes_ude.nlme._likelihood import LOG_2PI, SubjectLikelihood
    from bayes_ude.nlme._optimise import Problem

    out = {"n": n, "backend": jax.default_backend(), "devices": len(jax.devices())}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"pop{n}.csv"
        table = simulate_table(n, seed)
        table.to_csv(path, index=False, na_rep=".")
        out["rows"] = len(table)
        start = time.perf_counter()
        pop = nlme.read_nonmem(path)
        out["read_s"] = time.perf_counter() - start
    out["n_obs"] = int(pop.n_obs)
    out["padding_efficiency"] = float(np.mean(np.asarray(pop.obs_mask)))
    model = _population_model().specialised(pop)
    pop = jax.device_put(pop)
    u0 = np.asarray(model.initial_vector(), float)

    # FOCEI objective + gradient: what the outer BFGS evaluates once per iteration
    problem = Problem(model, "focei", tuple(range(u0.size)), jnp.asarray(u0), pop)
    eta0 = jnp.zeros((n, model.n_eta))
    value_and_grad = jax.value_and_grad(problem.value, has_aux=True)
    out["focei_compile_s"], temp, f = _compiled(value_and_grad, jnp.asarray(u0), eta0)
    out["focei_temp_bytes_per_subject"] = temp / n if temp >= 0 else None
    out["focei_grad_s"] = _best(f, jnp.asarray(u0), eta0)

    # NUTS: gradient of the potential (population parameters and every subject's etas)
    fn = nlme.numpyro_model(_population_model(), pop)
    init, potential, _, _ = initialize_model(jax.random.key(seed), fn, dynamic_args=False)
    out["nuts_compile_s"], temp, g = _compiled(jax.grad(potential), init.z)
    out["nuts_temp_bytes_per_subject"] = temp / n if temp >= 0 else None
    out["nuts_grad_s"] = _best(g, init.z)

    # SGLD: one step on a minibatch of MINIBATCH subjects, gathered on the device
    theta_names = list(model.theta)

    def logprior(u):
        return -0.5 * jnp.sum((u - jnp.asarray(u0)) ** 2) / 4.0  # N(u0, 2^2), a stand-in

    def loglik(u, subject):
        theta, omega, sigma = model.unpack(u)
        m2, _ = SubjectLikelihood(model, "focei", theta, omega, sigma, subject).minus2ll(
            jnp.zeros(model.n_eta))
        return -0.5 * (m2 + jnp.sum(subject.obs_mask) * LOG_2PI)

    kernel = inference.sgld(inference.grad_estimator(logprior, loglik, n))
    batch = min(MINIBATCH, n)

    def sgld_step(key, position, population):
        k_idx, k_step = jax.random.split(key)
        idx = sample_indices(k_idx, n, batch)  # as run_sgmcmc draws its minibatches
        minibatch = jax.tree.map(lambda a: a[idx], population)
        return kernel.step(k_step, kernel.init(position), minibatch, 1e-4).position

    key = jax.random.key(seed)
    out["sgld_compile_s"], _, s = _compiled(sgld_step, key, jnp.asarray(u0), pop)
    out["sgld_step_s"] = _best(s, key, jnp.asarray(u0), pop, repeat=20)
    del theta_names

    if n <= fit_max:
        fit_model = _population_model()  # one object: the second fit reuses its programs
        start = time.perf_counter()
        result = nlme.fit(fit_model, pop, "focei", progress=False, covariance=False)
        out["fit_s"] = time.perf_counter() - start
        start = time.perf_counter()  # again, compiled: the fit's own work
        nlme.fit(fit_model, pop, "focei", progress=False, covariance=False)
        out["fit_warm_s"] = time.perf_counter() - start
        out["fit_iterations"] = int(result.iterations)
        out["fit_converged"] = bool(result.converged)
        est = result.estimates.to_dict()
        truth = {f"t{p}": TRUTH[p] for p in TRUTH}
        truth.update({f"omega_eta_{p}": OMEGA_SD[p] ** 2 for p in OMEGA_SD})
        truth["prop_sd"] = PROP_SD
        sample = sample_truth(n, seed)
        out["fit_rel_errors"] = _errors(est, truth)
        out["fit_rel_errors_sample"] = _errors(est, sample)
        out["fit_minus2ll"] = float(result.minus2ll)
        peer = r_nlme_fit(table, r_timeout)
        if peer is not None:
            if "estimates" in peer:
                peer["rel_errors"] = _errors(peer["estimates"], truth)
                peer["rel_errors_sample"] = _errors(peer["estimates"], sample)
            out["r_nlme"] = peer
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def bias_study(n: int, seeds: int, method: str = "focei") -> dict:
    """``method`` fits of ``seeds`` simulated data sets of ``n`` subjects (seeds 0 ...):
    each estimate's relative error against the simulation truth and against what the
    simulated subjects hold (:func:`sample_truth`), their means over the data sets (the
    estimator's bias, with its Monte Carlo standard error) and spread."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from bayes_ude import nlme

    truth = {f"t{p}": TRUTH[p] for p in TRUTH}
    truth.update({f"omega_eta_{p}": OMEGA_SD[p] ** 2 for p in OMEGA_SD})
    truth["prop_sd"] = PROP_SD
    model = _population_model()
    rows, sample_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            path = Path(tmp) / f"pop{seed}.csv"
            simulate_table(n, seed).to_csv(path, index=False, na_rep=".")
            result = nlme.fit(model, nlme.read_nonmem(path), method, progress=False,
                              covariance=False)
            est = result.estimates.to_dict()
            rows.append(_errors(est, truth))
            sample_rows.append(_errors(est, sample_truth(n, seed)))
            print(f"bias study {method} N={n} seed {seed}: " + ", ".join(
                f"{k} {v:+.1%}" for k, v in rows[-1].items()), file=sys.stderr, flush=True)

    def summary(table):
        out = {}
        for k in table[0]:
            v = np.array([r[k] for r in table])
            out[k] = {"mean": float(v.mean()), "mc_se": float(v.std(ddof=1) / math.sqrt(v.size)),
                      "sd": float(v.std(ddof=1)), "errors": v.tolist()}
        return out

    return {"n": n, "seeds": seeds, "method": method, "params": summary(rows),
            "against_sample": summary(sample_rows)}


def report_bias(study: dict) -> None:
    params = study["params"].values()
    within = sum(all(abs(p["errors"][i]) <= 0.05 for p in params)
                 for i in range(study["seeds"]))
    print(f"{study.get('method', 'focei').upper()} over {study['seeds']} simulated data sets "
          f"of N={study['n']} (seeds 0-{study['seeds'] - 1}): relative error, mean (bias) +- "
          f"MC SE and sd over data sets, against the truth and against what the subjects "
          f"hold; within 5 % of the truth on every parameter in {within} of {study['seeds']}")
    print(f"    {'':<14} {'against the truth':>26}   {'against the sample':>26}")
    for k, p in study["params"].items():
        q = study["against_sample"][k]
        print(f"    {k:<14} {p['mean']:+7.1%} +- {p['mc_se']:.1%}  sd {p['sd']:4.1%}   "
              f"{q['mean']:+7.1%} +- {q['mc_se']:.1%}  sd {q['sd']:4.1%}")


def slope(xs, ys) -> float:
    return (math.log(ys[1]) - math.log(ys[0])) / (math.log(xs[1]) - math.log(xs[0]))


def report(rows: list[dict]) -> None:
    cols = [("read_s", "read CSV s"), ("focei_grad_s", "FOCEI f+g s"),
            ("nuts_grad_s", "NUTS grad s"), ("sgld_step_s", "SGLD step s"),
            ("fit_s", "FOCEI fit s"), ("peak_rss_mb", "peak RSS MB")]
    print(f"backend {rows[0]['backend']} ({rows[0]['devices']} device(s))")
    print(f"{'N':>7}{'obs':>8}" + "".join(f"{h:>14}" for _, h in cols))
    for r in rows:
        print(f"{r['n']:>7}{r['n_obs']:>8}" + "".join(
            f"{r[k]:>14.4g}" if k in r else f"{'-':>14}" for k, _ in cols))
    print("compile s (FOCEI f+g / NUTS grad / SGLD step): " + "; ".join(
        f"N={r['n']}: {r['focei_compile_s']:.1f} / {r['nuts_compile_s']:.1f} / "
        f"{r['sgld_compile_s']:.1f}" for r in rows))
    print("temporary bytes per subject of the compiled FOCEI f+g / NUTS grad: " + "; ".join(
        f"N={r['n']}: {r['focei_temp_bytes_per_subject']:.0f} / "
        f"{r['nuts_temp_bytes_per_subject']:.0f}" for r in rows
        if r.get("focei_temp_bytes_per_subject") is not None))
    print("padding efficiency (observed / padded records): " + ", ".join(
        f"{r['padding_efficiency']:.2f}" for r in rows))
    for a, b in zip(rows, rows[1:], strict=False):
        parts = []
        for k, h in cols[:5]:
            if k in a and k in b:
                parts.append(f"{h.removesuffix(' s')} {slope((a['n'], b['n']), (a[k], b[k])):.2f}")
        print(f"log-log slope N={a['n']}->{b['n']}: " + ", ".join(parts))
    def errors(label, errs):
        worst = max(errs.items(), key=lambda kv: abs(kv[1]))
        return (f"    {label}: largest {worst[0]} {worst[1]:+.1%}; " + ", ".join(
            f"{k} {v:+.1%}" for k, v in errs.items()))

    for r in rows:
        if "fit_rel_errors" not in r:
            continue
        print(f"FOCEI fit N={r['n']}: {r['fit_s']:.1f} s (compile included), "
              f"{r['fit_warm_s']:.1f} s warm, {r['fit_iterations']} iterations, "
              f"converged={r['fit_converged']}")
        print(errors("vs the simulation truth", r["fit_rel_errors"]))
        print(errors("vs the simulated subjects (sample_truth)", r["fit_rel_errors_sample"]))
        peer = r.get("r_nlme")
        if peer is None:
            print("    R nlme: Rscript not found (apt-get install r-base-core r-cran-nlme)")
        elif "note" in peer:
            print(f"    R nlme: {peer['note']}")
        else:
            print(f"  R nlme (Lindstrom-Bates, ML) N={r['n']}: {peer['seconds']:.2f} s; "
                  f"bayes_ude FOCEI fit / R nlme fit: {r['fit_s'] / peer['seconds']:.2f}x "
                  f"with our compile, {r['fit_warm_s'] / peer['seconds']:.2f}x warm")
            print(errors("vs the simulation truth", peer["rel_errors"]))
            print(errors("vs the simulated subjects", peer["rel_errors_sample"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="*", default=[100, 1000, 10000],
                        help="the N to measure (none: only the bias study)")
    parser.add_argument("--fit-max", type=int, default=1000,
                        help="run the full FOCEI fit up to this N (default %(default)s)")
    parser.add_argument("--r-timeout", type=float, default=1800.0,
                        help="seconds R's nlme may take per N (default %(default)s)")
    parser.add_argument("--bias-seeds", type=int, default=0, metavar="K",
                        help="also fit K simulated data sets of --fit-max subjects and print "
                             "the estimator's bias (mean relative error over them)")
    parser.add_argument("--bias-methods", nargs="+", default=["focei"], metavar="METHOD",
                        help="estimation methods of the bias study (default focei; e.g. "
                             "focei laplace)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None,
                        help="write the measurements (a list of rows) here")
    args = parser.parse_args()
    if args.one is not None:
        row = measure(args.one, args.fit_max, r_timeout=args.r_timeout)
        text = json.dumps(row)
        if args.json:
            args.json.write_text(text)
        print(text)
        return
    rows = []
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--one", str(n), "--fit-max", str(args.fit_max),
                   "--r-timeout", str(args.r_timeout), "--json", str(target)]
            done = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                raise SystemExit(f"N={n} failed (exit {done.returncode})")
            rows.append(json.loads(target.read_text()))
        print(f"N={n} done", file=sys.stderr, flush=True)
    if rows:
        report(rows)
    studies = []
    for method in args.bias_methods if args.bias_seeds else ():
        studies.append(bias_study(args.fit_max, args.bias_seeds, method))
        report_bias(studies[-1])
    if args.json:
        args.json.write_text(json.dumps(rows if not studies else
                                        {"rows": rows, "bias_study": studies}, indent=1))


if __name__ == "__main__":
    main()
