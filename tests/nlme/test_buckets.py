"""Subjects of very different sizes in size groups (``nlme._buckets``): the groups keep
every record, cut the padding waste under 2x, and every result computed through them (the
objective, EBEs, a FOCEI fit, diagnostics, the NUTS log density) is the padded one's."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayes_ude import nlme
from bayes_ude.nlme import _buckets
from bayes_ude.nlme._command_run import _padding_text
from bayes_ude.nlme._likelihood import _objective_jit

N_SMALL, N_BIG, BIG = 22, 2, 30


def _table(seed=2):
    """Oral one-compartment subjects, 3-4 observations each but two with 30 (placed
    among the others, so that the groups are not contiguous in the table)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N_SMALL + N_BIG):
        n_obs = BIG if i in (3, 15) else int(rng.integers(3, 5))
        ka, cl, v = (m * np.exp(0.3 * rng.normal()) for m in (1.2, 2.2, 25.0))
        amt = 100.0 if i % 3 else 60.0
        rows.append(dict(ID=i + 1, TIME=0.0, DV=np.nan, AMT=amt, EVID=1, CMT=1,
                         WT=60 + i))
        if i % 4 == 0:  # a second dose for some
            rows.append(dict(ID=i + 1, TIME=12.0, DV=np.nan, AMT=amt, EVID=1, CMT=1,
                             WT=60 + i))
        t = np.sort(rng.uniform(0.25, 24.0, n_obs))
        k = cl / v
        c = amt * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
        if i % 4 == 0:
            tt = np.maximum(t - 12.0, 0.0)
            c = c + amt * ka / (v * (ka - k)) * (np.exp(-k * tt) - np.exp(-ka * tt))
        for tj, cj in zip(t, c * (1 + 0.15 * rng.normal(size=n_obs)), strict=True):
            rows.append(dict(ID=i + 1, TIME=tj, DV=cj, AMT=np.nan, EVID=0, CMT=2,
                             WT=60 + i))
    return pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False],
                                          kind="stable")


def _model(population):
    return nlme.builtin_model("oral1cmt", population, "proportional")


@pytest.fixture(scope="module")
def ragged():
    return nlme.read_nonmem(_table())


@pytest.fixture(scope="module")
def fits(ragged):
    """The same FOCEI fit with size groups (the default here) and padded."""
    bucketed = nlme.fit(_model(ragged), ragged, covariance=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_buckets, "MAX_WASTE", np.inf)
        padded = nlme.fit(_model(ragged), ragged, covariance=False)
        padded_diag = nlme.diagnostics(padded, n_sim=50)
    return bucketed, padded, padded_diag


def test_groups_keep_every_record_and_cut_the_waste(ragged):
    plan = _buckets.subject_buckets(ragged)
    assert plan is not None and len(plan.groups) == 2
    assert sorted(i for g in plan.groups for i in g) == list(range(ragged.n_subjects))
    assert {3, 15} == set(plan.groups[-1])  # the two long subjects together
    report = _buckets.padding_report(ragged)
    real = ragged.n_obs
    assert report["padding_efficiency"] == pytest.approx(real / (ragged.n_subjects * BIG))
    assert report["padding_efficiency"] < 0.5 <= report["computed_padding_efficiency"]
    assert report["size_groups"] == 2
    for members, widths in zip(plan.groups, plan.widths, strict=True):
        part = _buckets.take_bucket(ragged, members, widths)
        whole = ragged.take(members)
        pd.testing.assert_frame_equal(part.to_frame(), whole.to_frame())
        for kind in ("dose", "cov"):
            mask = np.asarray(getattr(whole, f"{kind}_mask"))
            assert np.asarray(getattr(part, f"{kind}_mask")).sum() == mask.sum()
        np.testing.assert_array_equal(np.asarray(part.dose_amt)[np.asarray(part.dose_mask)],
                                      np.asarray(whole.dose_amt)[np.asarray(whole.dose_mask)])
    # similar sizes: no groups; subjects taken from a larger population (``take`` keeps
    # its widths) are cut to their own
    table = _table()
    similar = nlme.read_nonmem(table[table.ID.isin([1, 2, 3, 5])])
    assert _buckets.subject_buckets(similar) is None
    taken = _buckets.subject_buckets(ragged.take([0, 1, 2, 4]))
    assert len(taken.groups) == 1 and taken.widths[0]["obs"] < BIG
    # observations masked out later (here a held-out split keeping the shapes) keep
    # their slots: the same plan, so the programs compiled for the full data serve
    for seed in range(4):  # some seeds hold out a long subject
        train, _ = nlme.split_subjects(ragged, 0.3, seed=seed, keep_shape=True)
        assert _buckets.subject_buckets(train) == plan
    # slots without a record in the table anywhere are cut (a hand-made population)
    mask = np.asarray(ragged.obs_mask).copy()
    row = np.asarray(ragged.obs_row).copy()
    mask[:, 5:], row[:, 5:] = False, -1
    short = _buckets.subject_buckets(ragged.__class__(**{
        **{f: getattr(ragged, f) for f in ragged.__dataclass_fields__}, "obs_mask": mask,
        "obs_row": row}))
    assert len(short.groups) == 1 and short.widths[0]["obs"] == 5


def test_objective_equals_the_padded_one(ragged):
    model = _model(ragged).specialised(ragged)
    u = jnp.asarray(model.initial_vector())
    eta0 = jnp.zeros((ragged.n_subjects, model.n_eta))
    dev = tuple(jax.local_devices()[:1])
    padded = _objective_jit(model, "focei", u, ragged, eta0, dev, None)
    grouped = nlme.objective(_model(ragged), ragged)
    assert float(grouped) == pytest.approx(float(padded), rel=1e-12)


def test_fit_and_diagnostics_equal_the_padded_ones(fits):
    bucketed, padded, padded_diag = fits
    assert bucketed.converged and padded.converged
    assert bucketed.ofv == pytest.approx(padded.ofv, rel=1e-10)
    np.testing.assert_allclose(bucketed.estimates, padded.estimates, rtol=1e-6)
    np.testing.assert_allclose(bucketed.eta, padded.eta, rtol=0, atol=1e-7)
    summary = bucketed.summary()
    assert summary["size_groups"] == 2 and summary["computed_padding_efficiency"] >= 0.5
    diag = nlme.diagnostics(bucketed, n_sim=50)
    pd.testing.assert_frame_equal(diag[["ID", "TIME", "DV", "ROW"]],
                                  padded_diag[["ID", "TIME", "DV", "ROW"]])
    for col in ("PRED", "IPRED", "CWRES", "NPDE"):
        np.testing.assert_allclose(diag[col], padded_diag[col], rtol=1e-5, atol=1e-7)
    sims = nlme.simulate(bucketed, n=2)
    assert sims.shape == (2, bucketed.population.n_subjects, BIG)
    assert np.isfinite(sims[:, np.asarray(bucketed.population.obs_mask)]).all()
    assert "in 2 size groups" in _padding_text(bucketed.population)


def test_nuts_log_density_equals_the_padded_one(ragged, monkeypatch):
    from numpyro.infer.util import initialize_model, potential_energy

    def potential(model_fn):
        params = initialize_model(jax.random.key(0), model_fn)[0].z
        params = jax.tree.map(lambda a: a + 0.1, params)  # off the start: eta not 0
        return float(jax.jit(lambda p: potential_energy(model_fn, (), {}, p))(params))

    bucketed = potential(nlme.numpyro_model(_model(ragged), ragged))
    monkeypatch.setattr(_buckets, "MAX_WASTE", np.inf)
    padded = potential(nlme.numpyro_model(_model(ragged), ragged))
    assert bucketed == pytest.approx(padded, rel=1e-12)


def test_held_out_density_and_posterior_replicates_equal_the_padded_ones(fits, ragged):
    """The per-draw work of a Bayesian result, grouped against padded at the same draws
    and keys: held-out log densities (Laplace), new subjects' simulations, replicates of
    the same subjects."""
    from bayes_ude.nlme._bayes import _replicate_impl
    from bayes_ude.nlme._bayes_results import _simulate_draws
    from bayes_ude.nlme._likelihood import subject_log_densities

    fit = fits[0]
    model = fit.model.specialised(ragged)
    plan = _buckets.subject_buckets(ragged)
    us = jnp.stack([jnp.asarray(fit.u), jnp.asarray(fit.u) + 0.02])
    etas = jnp.stack([jnp.asarray(fit.eta.to_numpy())] * 2)
    key = jax.random.key(3)
    mask = np.asarray(ragged.obs_mask)
    for grouped, padded in (
            (subject_log_densities(model, "laplace", us, ragged, plan),
             subject_log_densities(model, "laplace", us, ragged, None)),
            (np.asarray(_simulate_draws(model, us, ragged, key, plan))[:, mask],
             np.asarray(_simulate_draws(model, us, ragged, key, None))[:, mask]),
            (np.asarray(_replicate_impl(model, us, etas, ragged, key, plan))[:, mask],
             np.asarray(_replicate_impl(model, us, etas, ragged, key, None))[:, mask])):
        np.testing.assert_allclose(grouped, padded, rtol=1e-10)
