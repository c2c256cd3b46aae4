"""Subjects of very different sizes: size groups against padding to the largest (issue 19,
part 5).

The populations of ``benchmarks/scaling.py`` (oral one-compartment, 6-10 observations per
subject), with a few subjects (``--long``, default 1 %) sampled far more densely
(``--long-obs`` observations, default 200, over 48 h). Padding every subject to the
largest computes ~20 times the slots the data hold; the package computes the subjects in
size groups instead (``bayes_ude.nlme._buckets``). For each N this prints the padding
efficiency both ways and, for the FOCEI objective + gradient and the NUTS gradient, the
warm time (best of 5) and the compile time of the padded program (the peer) and of the
grouped one, with their ratio, and the objective of both (equal to rounding)::

    python benchmarks/padding.py                 # N = 1000
    python benchmarks/padding.py --n 300 3000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from scaling import _best, _compiled, _population_model, simulate_table  # noqa: E402


def ragged_table(n: int, long_fraction: float, long_obs: int, seed: int = 0):
    """``simulate_table(n)`` with ``long_fraction`` of the subjects observed ``long_obs``
    times over 48 h (their predictions from the same closed form, numpy only)."""
    import numpy as np
    import pandas as pd

    table = simulate_table(n, seed)
    rng = np.random.default_rng(seed + 1)
    ids = np.unique(table.ID)
    dense = rng.choice(ids, max(1, round(long_fraction * n)), replace=False)
    extra = []
    for sid in dense:
        rows = table[(table.ID == sid) & (table.EVID == 0)]
        # a dense grid between its first and last samples, the values interpolated
        # log-linearly between its own simulated observations, with the same error
        t, y = rows.TIME.to_numpy(), rows.DV.to_numpy()
        grid = np.sort(rng.uniform(t.min(), t.max(), long_obs - t.size))
        dv = np.exp(np.interp(grid, t, np.log(np.maximum(y, 1e-6))))
        dv = dv * (1 + 0.15 * rng.normal(size=grid.size))
        extra.append(pd.DataFrame({"ID": sid, "TIME": grid, "DV": np.abs(dv), "AMT": np.nan,
                                   "EVID": 0, "CMT": 2, "ADDL": 0, "II": 0.0,
                                   "WT": rows.WT.iloc[0]}))
    out = pd.concat([table, *extra], ignore_index=True)
    return out.sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False],
                           kind="stable").reset_index(drop=True)


def measure(n: int, long_fraction: float, long_obs: int) -> None:
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import initialize_model, potential_energy

    from bayes_ude import nlme
    from bayes_ude.nlme import _buckets
    from bayes_ude.nlme._likelihood import population_objective

    jax.config.update("jax_enable_x64", True)
    pop = nlme.read_nonmem(ragged_table(n, long_fraction, long_obs))
    report = _buckets.padding_report(pop)
    plan = _buckets.subject_buckets(pop)
    print(f"N={n}: {pop.n_obs} observations, padded to {pop.obs_mask.shape[1]} per subject; "
          f"padding efficiency {report['padding_efficiency']:.1%} padded, "
          f"{report['computed_padding_efficiency']:.1%} in {report['size_groups']} "
          f"size groups ({plan})")
    model = _population_model().specialised(pop)
    u = jnp.asarray(model.initial_vector())
    eta0 = jnp.zeros((pop.n_subjects, model.n_eta))
    dev = tuple(jax.local_devices()[:1])
    rows = {}
    for name, buckets in (("padded", None), ("grouped", plan)):
        def focei(u, buckets=buckets):
            return jax.value_and_grad(lambda v: population_objective(
                model, "focei", v, pop, eta0, dev, buckets)[0])(u)

        compile_s, _, fn = _compiled(focei, u)
        value = float(fn(u)[0])
        warm = _best(fn, u)
        with _patched(_buckets, buckets):
            model_fn = nlme.numpyro_model(_population_model(), pop)
        z = initialize_model(jax.random.key(0), model_fn)[0].z
        n_compile, _, grad = _compiled(jax.grad(lambda p, f=model_fn: potential_energy(
            f, (), {}, p)), z)
        rows[name] = (compile_s, warm, value, n_compile, _best(grad, z))
    (pc, pw, pv, pnc, pnw), (gc, gw, gv, gnc, gnw) = rows["padded"], rows["grouped"]
    print(f"  FOCEI objective+gradient: padded {pw * 1e3:.1f} ms, grouped {gw * 1e3:.1f} ms "
          f"(padded/grouped {pw / gw:.2f}x); compile {pc:.1f} s vs {gc:.1f} s; "
          f"OFV {pv:.6f} vs {gv:.6f} (relative difference {abs(pv - gv) / abs(pv):.1e})")
    print(f"  NUTS gradient:            padded {pnw * 1e3:.1f} ms, grouped {gnw * 1e3:.1f} ms "
          f"(padded/grouped {pnw / gnw:.2f}x); compile {pnc:.1f} s vs {gnc:.1f} s")


class _patched:
    """Padded (``plan`` None): the NUTS model built with size groups switched off."""

    def __init__(self, module, plan):
        self.module, self.off = module, plan is None

    def __enter__(self):
        self.saved = self.module.MAX_WASTE
        if self.off:
            self.module.MAX_WASTE = float("inf")

    def __exit__(self, *exc):
        self.module.MAX_WASTE = self.saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000])
    parser.add_argument("--long", type=float, default=0.01,
                        help="fraction of subjects sampled densely (default 0.01)")
    parser.add_argument("--long-obs", type=int, default=200)
    args = parser.parse_args()
    for n in args.n:
        measure(n, args.long, args.long_obs)


if __name__ == "__main__":
    main()
