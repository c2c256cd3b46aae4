"""Parameter recovery and Wald-interval coverage of FOCEI over 20 simulated replicates.

Each replicate: 100 subjects from a one-compartment oral model with known theta, omega
(exponential BSV on ka, CL, V) and combined error, simulated with numpy (not with the
package). Reports per parameter the mean relative error, the largest one, and how often the
95 % Wald interval (estimate ± 1.96 SE) contains the truth (target >= 85 %), plus warm fit
time per replicate.

Usage: python benchmarks/nlme_recovery.py [--replicates 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bayes_ude import nlme  # noqa: E402
from tests.nlme.test_estimate import OMEGA_SD, SIGMA, TRUTH, _oral_model, _simulate_oral  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicates", type=int, default=20)
    args = parser.parse_args()
    model = _oral_model()
    truth = {**TRUTH, **{f"omega_eta_{p}": sd**2 for p, sd in zip(("ka", "cl", "v"), OMEGA_SD,
                                                                   strict=True)}, **SIGMA}
    est, se, times = [], [], []
    for seed in range(args.replicates):
        pop = _simulate_oral(100, 1000 + seed, TRUTH, OMEGA_SD, **SIGMA)
        t = time.perf_counter()
        fit = nlme.fit(model, pop, "focei", progress=False)
        times.append(time.perf_counter() - t)
        est.append(fit.estimates[list(truth)].to_numpy())
        se.append(fit.se[list(truth)].to_numpy())
    est, se = np.array(est), np.array(se)
    true = np.array(list(truth.values()))
    print(f"{args.replicates} replicates x 100 subjects, FOCEI; first fit (with compilation) "
          f"{times[0]:.1f} s, then median {np.median(times[1:]):.2f} s per fit")
    print(f"{'parameter':<14}{'true':>9}{'mean est':>10}{'mean rel err':>14}{'max |rel err|':>15}"
          f"{'95% Wald coverage':>19}")
    for j, name in enumerate(truth):
        # theta are log-scale: compare exp(theta) relative errors
        e, tv = (np.exp(est[:, j]), np.exp(true[j])) if name in TRUTH else (est[:, j], true[j])
        rel = e / tv - 1
        cover = np.mean(np.abs(est[:, j] - true[j]) <= 1.96 * se[:, j])
        print(f"{name:<14}{true[j]:>9.4f}{est[:, j].mean():>10.4f}{rel.mean():>14.3%}"
              f"{np.abs(rel).max():>15.3%}{cover:>19.0%}")
    theta_cover = np.mean(np.abs(est[:, :3] - true[:3]) <= 1.96 * se[:, :3])
    print(f"theta coverage over all: {theta_cover:.0%} (target >= 85 %)")


if __name__ == "__main__":
    main()
