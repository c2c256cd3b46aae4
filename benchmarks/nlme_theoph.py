"""Theophylline population fit: bayes_ude.nlme against R's nlme and pynlme on one model.

Model: nlme's ``conc ~ SSfol(Dose, Time, lKe, lKa, lCl)``, random effects on lKa and lCl
(diagonal), additive error, doses in mg/kg, maximum likelihood. Ours: FOCE, FOCEI and
``lb`` (the Lindstrom-Bates algorithm nlme uses). Peers: R's nlme (``Rscript``, timed in R,
warm) and pynlme (Lindstrom-Bates, in this process), both when installed.

Reports, per method: cold time (a fresh Python process: import, compile, fit, standard
errors) and warm time (best of repeated fits in one process), -2LL and the estimates;
ratios ours / peer (< 1: we are faster).

First, the README's main job (``bayes-ude pk fit theophylline``) cold and run again, with
and without figures.

Usage: python benchmarks/nlme_theoph.py [--repeat N] [--command-only]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bayes_ude import datasets, nlme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

COLD = """
import time; t0 = time.perf_counter()
import jax; jax.config.update("jax_enable_x64", True)
import sys; sys.path.insert(0, {root!r})
from benchmarks.nlme_theoph import model_and_data
from bayes_ude import nlme
model, pop = model_and_data()
fit = nlme.fit(model, pop, {method!r}, progress=False)
print(time.perf_counter() - t0, fit.minus2ll)
"""


def model_and_data():
    df = datasets.load_theophylline_nonmem()
    df["AMT"] = np.where(df["EVID"] == 1, df["DOSE"], 0.0)  # mg/kg, as R's Theoph
    pop = nlme.read_nonmem(df)

    def individual(theta, eta, cov):
        cl = jnp.exp(theta["lCl"] + eta["eta_cl"])
        return {"ka": jnp.exp(theta["lKa"] + eta["eta_ka"]), "cl": cl,
                "v": cl / jnp.exp(theta["lKe"])}

    model = nlme.PopulationModel(
        nlme.OneCompartmentOral(), individual,
        theta={"lKe": -2.4, "lKa": 0.45, "lCl": -3.2},
        omega={"eta_ka": 0.4, "eta_cl": 0.07}, sigma={"add_sd": 0.7}, error=nlme.Additive())
    return model, pop


def cold(method: str, cache_dir: str | None = None) -> tuple[float, float]:
    """A fresh process: import, compile, fit. With ``cache_dir``, JAX's persistent
    compilation cache there (what the ``bayes-ude`` command uses by default)."""
    import os

    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", COLD.format(root=str(ROOT), method=method)],
                         capture_output=True, text=True, check=True, env=env).stdout.split()
    return float(out[0]), float(out[1])


def command(cache_dir: str, *options: str) -> float:
    """Wall time of ``bayes-ude pk fit theophylline --quiet`` (the README's main job) in
    a fresh process with its compilation cache and program store in ``cache_dir``."""
    import os

    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
    env.pop("BAYES_UDE_PROGRAM_STORE", None)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bayes_ude.cli", "pk", "fit", "theophylline",
                        "--quiet", "--out", out, *options], check=True, env=env, cwd=ROOT)
        return time.perf_counter() - t


def report_command(repeat: int = 3) -> None:
    """Issue 21 item 4: the command cold (empty cache) and run again (cache and program
    store filled), with and without the figures; best of ``repeat`` fresh caches."""
    rows = []
    for options in ((), ("--no-plots",)):
        cold_s, again_s = [], []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as cache:
                cold_s.append(command(cache, *options))
                again_s.append(command(cache, *options))
        rows.append((" ".join(options) or "(figures)", min(cold_s), min(again_s)))
    print("bayes-ude pk fit theophylline --quiet (a fresh process each; best of "
          f"{repeat}):")
    print(f"{'options':<14}{'cold s':>9}{'again s':>9}")
    for name, c, a in rows:
        print(f"{name:<14}{c:>9.2f}{a:>9.2f}")
    print("targets (issue 21): cold < 5 s, again < 3 s")


def warm(model, pop, method, repeat):
    nlme.fit(model, pop, method, progress=False)
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fit = nlme.fit(model, pop, method, progress=False)
        best = min(best, time.perf_counter() - t)
    return best, fit


def r_nlme():
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nlme.csv"
        subprocess.run(["Rscript", str(ROOT / "benchmarks" / "r" / "theoph_nlme.R"), str(out)],
                       capture_output=True, check=True)
        rows = dict(line.replace('"', "").split(",") for line in out.read_text().splitlines()[1:])
    return {k: float(v) for k, v in rows.items()}


def pynlme_fit(repeat):
    try:
        import pynlme
    except ImportError:
        return None
    df = datasets.load_theophylline()
    x = df[["Dose", "Time"]].to_numpy(float)
    y = df["conc"].to_numpy(float)
    group = df["Subject"].to_numpy()

    def ssfol(phi, x):
        lke, lka, lcl = phi[..., 0:1], phi[..., 1:2], phi[..., 2:3]
        dose, t = x[:, 0], x[:, 1]
        ke, ka = np.exp(lke[..., 0]), np.exp(lka[..., 0])
        return dose * np.exp(lke[..., 0] + lka[..., 0] - lcl[..., 0]) * (
            np.exp(-ke * t) - np.exp(-ka * t)) / (ka - ke)

    def run():
        return pynlme.nlmefit(x, y, group, None, ssfol, np.array([-2.4, 0.45, -3.2]),
                              REParamsSelect=[2, 3], compat="r")

    out = run()
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--command-only", action="store_true",
                        help="only time the bayes-ude command (cold and again)")
    args = parser.parse_args()
    report_command()
    if args.command_only:
        return
    model, pop = model_and_data()
    print("cold: a fresh process (import + compile + fit); 'cached': the same with JAX's "
          "persistent compilation cache filled by an earlier run (the bayes-ude command "
          "keeps one in ~/.cache/bayes_ude/jax)")
    print(f"{'method':<10}{'cold s':>9}{'cached s':>10}{'warm ms':>10}{'-2LL':>12}  "
          "lKe, lKa, lCl")
    ours = {}
    for method in ("foce", "focei", "lb"):
        c, _ = cold(method)
        with tempfile.TemporaryDirectory() as cache:
            cold(method, cache)  # fills the cache
            cc, _ = cold(method, cache)
        w, fit = warm(model, pop, method, args.repeat)
        ours[method] = (c, w, fit)
        est = fit.estimates
        print(f"{method:<10}{c:>9.2f}{cc:>10.2f}{w * 1e3:>10.1f}{fit.minus2ll:>12.4f}  "
              f"{est['lKe']:.5f}, {est['lKa']:.5f}, {est['lCl']:.5f}")
    r = r_nlme()
    if r is not None:
        print(f"{'R nlme':<10}{'':>9}{r['seconds_warm'] * 1e3:>10.1f}{-2 * r['loglik']:>12.4f}  "
              f"{r['lKe']:.5f}, {r['lKa']:.5f}, {r['lCl']:.5f}")
        for m in ("foce", "lb"):
            print(f"warm {m} / R nlme: {ours[m][1] / r['seconds_warm']:.2f}x")
    py = pynlme_fit(args.repeat)
    if py is not None:
        t, (beta, psi, stats, _) = py
        print(f"{'pynlme':<10}{'':>9}{t * 1e3:>10.1f}{-2 * stats.logl:>12.4f}  "
              f"{beta[0]:.5f}, {beta[1]:.5f}, {beta[2]:.5f}")
        for m in ("foce", "lb"):
            print(f"warm {m} / pynlme: {ours[m][1] / t:.2f}x")
    print("targets: warm FOCE/FOCEI <= R nlme's time; cold <= 10 s")


if __name__ == "__main__":
    main()
