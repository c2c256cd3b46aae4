"""CRNN and B-CRNN: the rate law and solutions against hand-written mass action (scipy),
and Ji & Deng's benchmark at reduced size: the mechanism recovered after pruning, rate
constants within 10 %, NUTS credible intervals of the rates containing the true rates and
widening with four times the noise (the truth of the simulated data is the reference),
pSGLD checked against NUTS."""

import warnings

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from bayes_ude import crnn, solvers

# Ji & Deng (2021), case 1: 2A -> B, A -> C, C -> D, B + D -> E.
K_TRUE = np.array([0.1, 0.2, 0.13, 0.3])
NU_TRUE = np.array([[-2, 1, 0, 0, 0],
                    [-1, 0, 1, 0, 0],
                    [0, 0, -1, 1, 0],
                    [0, -1, 0, -1, 1]], float)


def mass_action(t, c):
    """The benchmark written out by hand (the independent reference)."""
    a, b, c_, d, _ = c
    r = K_TRUE * np.array([a**2, a, c_, b * d])
    return NU_TRUE.T @ r


def classic_data(n_experiments, n_times, noise, seed=0):
    """A and B start uniform on [0.2, 1.2], C-E at 0; times on [0, 40]; multiplicative
    Gaussian noise of relative size ``noise``."""
    rng = np.random.default_rng(seed)
    ts = np.linspace(0.0, 40.0, n_times)
    u0 = np.zeros((n_experiments, 5))
    u0[:, :2] = rng.uniform(0.2, 1.2, (n_experiments, 2))
    clean = np.stack([solve_ivp(mass_action, (0, 40), u, t_eval=ts, method="LSODA",
                                rtol=1e-10, atol=1e-12).y.T for u in u0])
    noisy = clean * (1 + noise * rng.normal(size=clean.shape))
    return ts, u0, np.maximum(noisy, 0.0), clean


def match_reactions(model):
    """For each true reaction, the learned (active) reaction whose stoichiometry is
    closest; None if the model has a different number of reactions."""
    nu = np.asarray(model.nu)
    active = np.flatnonzero(crnn.active_reactions(model))
    if len(active) != len(K_TRUE):
        return None
    return [int(active[np.argmin(np.abs(nu[active] - row).sum(axis=1))]) for row in NU_TRUE]


# ---------------------------------------------------------------------- the layer


def test_rates_and_vector_field_are_mass_action():
    model = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    c = np.array([0.7, 0.4, 0.3, 0.2, 0.1])
    a, b, c_, d, _ = c
    expected_rates = K_TRUE * np.array([a**2, a, c_, b * d])
    np.testing.assert_allclose(model.rates(jnp.asarray(c)), expected_rates, rtol=1e-12)
    np.testing.assert_allclose(model(0.0, jnp.asarray(c)), mass_action(0.0, c), rtol=1e-12)


def test_tied_orders_are_clipped_negative_stoichiometry():
    nu = np.array([[-3.0, 0.5, -0.2]])
    model = crnn.CRNN.from_mechanism(nu, [1.0])
    # Order of a reactant = its coefficient, clipped at 2.5; products do not enter.
    np.testing.assert_allclose(model.reaction_orders, [[2.5, 0.0, 0.2]])
    c = np.array([0.5, 2.0, 0.3])
    np.testing.assert_allclose(model.rates(jnp.asarray(c)), [0.5**2.5 * 0.3**0.2], rtol=1e-12)


def test_free_orders_are_separate_weights():
    model = crnn.CRNN.from_mechanism([[-1.0, 1.0]], [0.5], orders=[[0.5, 1.5]])
    c = np.array([0.4, 0.9])
    np.testing.assert_allclose(model.rates(jnp.asarray(c)), [0.5 * 0.4**0.5 * 0.9**1.5],
                               rtol=1e-12)


def test_concentration_clip_keeps_the_log_finite():
    model = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    c = jnp.array([0.5, -1e-3, 0.0, 0.2, 0.0])  # a negative round-off value and zeros
    r = model.rates(c)
    assert bool(jnp.all(jnp.isfinite(r)))
    # B + D -> E with B clipped to conc_min: k * conc_min * D.
    np.testing.assert_allclose(r[3], 0.3 * model.conc_min * 0.2, rtol=1e-12)
    g = eqx.filter_grad(lambda m: jnp.sum(m(0.0, c)))(model)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(
        eqx.filter(g, eqx.is_inexact_array)))


def test_an_exhausted_reactant_is_said():
    """Half-order A -> B (k = 1) from A = 1: A = (1 - t/2)^2 until t = 2, then 0. The clip
    keeps consuming A at k * conc_min ** 0.5 = 1e-3 per time unit once it is gone (A at
    -0.098 by t = 100), which the rate law keeps for training's sake (module notes):
    simulate says so. Until A is gone the solution is the closed form."""
    model = crnn.CRNN.from_mechanism([[-1.0, 1.0]], [1.0], orders=[[0.5, 0.0]])
    ts = np.linspace(0.0, 100.0, 11)
    with pytest.warns(UserWarning, match=r"go negative \(A down to -0.09"):
        ys = np.asarray(crnn.simulate(model, ts, np.array([1.0, 0.0])).ys)
    # after t = 2, A falls by 1e-3 per time unit: the leak the warning names
    np.testing.assert_allclose(ys[3:, 0], -1e-3 * (ts[3:] - 2.0), rtol=0.05)
    early = np.linspace(0.0, 1.9, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing negative before A is used up
        ys = np.asarray(crnn.simulate(model, early, np.array([1.0, 0.0])).ys)
    np.testing.assert_allclose(ys[:, 0], (1 - early / 2) ** 2, atol=1e-6)
    np.testing.assert_allclose(ys.sum(axis=1), 1.0, atol=1e-9)


def test_arrhenius_rate_constants():
    a_pre, b, ea = np.array([2.0e3, 5.0]), np.array([0.5, -1.0]), np.array([50.0, 10.0])
    model = crnn.CRNN.from_mechanism([[-1.0, 1.0], [1.0, -1.0]], a_pre,
                                     temperature_exponent=b, activation_energy=ea)
    temperature = 600.0
    gas_constant = 8.314462618e-3  # kJ / (mol K)
    expected = a_pre * temperature**b * np.exp(-ea / (gas_constant * temperature))
    np.testing.assert_allclose(model.rate_constants(temperature), expected, rtol=1e-12)
    c = jnp.array([0.3, 0.6])
    np.testing.assert_allclose(model(0.0, c, temperature),
                               [-expected[0] * 0.3 + expected[1] * 0.6,
                                expected[0] * 0.3 - expected[1] * 0.6], rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        model.rate_constants(None)
    # several temperatures: each against every reaction (as many temperatures as reactions
    # used to pair them up, reaction j at T[j])
    temps = np.array([300.0, 320.0])
    table = a_pre * temps[:, None] ** b * np.exp(-ea / (gas_constant * temps[:, None]))
    np.testing.assert_allclose(model.rate_constants(temps), table, rtol=1e-12)
    with pytest.raises(ValueError, match="one number"):
        crnn.format_mechanism(model, temps)
    with pytest.raises(ValueError, match="takes one temperature"):
        crnn.simulate(model, np.linspace(0, 1, 3), np.array([1.0, 0.0]), temps)


def test_simulate_matches_scipy_for_tsit5_and_rodas5p():
    ts, u0, _, clean = classic_data(3, 30, noise=0.0)
    model = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    for solver in (solvers.Tsit5(), solvers.Rodas5P()):
        sol = crnn.simulate(model, ts, u0, options=crnn.DEFAULT_SOLVE.replace(
            solver=solver, rtol=1e-9, atol=1e-11))
        assert bool(jnp.all(sol.success))
        # Both integrate the same ODE to 1e-9 relative tolerance: agreement to 1e-6.
        np.testing.assert_allclose(sol.ys, clean, atol=1e-6)


def test_format_mechanism_in_chemistry_notation():
    model = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    assert crnn.format_mechanism(model).splitlines() == [
        "2A -> B  k=0.100", "A -> C  k=0.200", "C -> D  k=0.130", "B + D -> E  k=0.300"]


def test_prune_masks_small_weights_and_refit_keeps_them_zero():
    # The shapes and settings of the benchmark's refit below: its compiled step is reused.
    ts, u0, ys, _ = classic_data(10, 50, noise=0.05)
    nu = NU_TRUE + np.where(NU_TRUE == 0, 0.04, 0.0)  # small spurious coefficients
    model = crnn.prune(crnn.CRNN.from_mechanism(nu, K_TRUE), threshold=0.1)
    np.testing.assert_array_equal(np.asarray(model.nu), NU_TRUE)
    data = crnn.Experiments(ts, ys, u0)
    refit = crnn.fit(model, data, steps=5, learning_rate=5e-3, progress=False).params
    assert np.all(np.asarray(refit.nu)[NU_TRUE == 0] == 0.0)
    back = crnn.unprune(refit)
    assert bool(jnp.all(back.mask)) and np.all(np.asarray(back.nu)[NU_TRUE == 0] == 0.0)


@pytest.mark.parametrize("bad, match", [
    (dict(ys=np.ones((2, 7, 5))), "ys must have shape"),
    (dict(ys=np.ones((2, 10, 4))), "n_species=5"),
    (dict(ys=-np.ones((2, 10, 5))), "negative concentrations"),
    (dict(u0=np.ones((2, 3))), "u0 must have shape"),
    (dict(u0=-np.ones((2, 5))), "u0 must hold"),
    (dict(temperature=np.ones(3)), "temperature must have shape"),
    (dict(ts=np.linspace(1, 0, 10)), "ts must be"),
])
def test_bad_input_is_a_clear_value_error(bad, match):
    args = dict(ts=np.linspace(0, 1, 10), ys=np.ones((2, 10, 5)), u0=None, temperature=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        crnn.Experiments(args["ts"], args["ys"], args["u0"], args["temperature"], n_species=5)


def test_bad_subsets_kinds_orders_and_unused_temperatures():
    ts, u0, ys, _ = classic_data(3, 10, noise=0.0)
    data = crnn.Experiments(ts, ys, u0)
    with pytest.raises(ValueError, match=r"indices in \[0, 3\)"):
        data.subset([5])  # JAX clamped it to experiment 2
    assert data.subset([0, 2]).n_experiments == 2
    truth = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    with pytest.raises(ValueError, match="kind must be one of"):
        crnn.TrajectoryLoss(data, "MAE", crnn.DEFAULT_SOLVE)(truth)  # was the MSE
    with pytest.raises(ValueError, match="orders must be finite and >= 0"):
        crnn.CRNN.from_mechanism([[-1.0, 1.0]], [1.0], orders=[[1.0, -1.0]])
    from bayes_ude.crnn._fit import check_model_data  # what fit, discover, run_* call first

    warm = crnn.Experiments(ts, ys, u0, temperature=[300.0, 320.0, 340.0])
    with pytest.warns(UserWarning, match="temperatures are not used"):
        check_model_data(truth, warm)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="n_species"):
        crnn.CRNN(0, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="orders"):
        crnn.CRNN(3, 2, key=jax.random.key(0), orders="loose")
    with pytest.raises(ValueError, match="species"):
        crnn.CRNN(3, 2, key=jax.random.key(0), species=["A", "B"])
    with pytest.raises(ValueError, match="n_species=4"):
        ts, u0, ys, _ = classic_data(2, 10, noise=0.0)
        crnn.fit(crnn.CRNN(4, 2, key=jax.random.key(0)), crnn.Experiments(ts, ys, u0),
                 steps=1, progress=False)


def test_collocation_loss_is_the_trapezoidal_integral():
    ts, u0, _, clean = classic_data(2, 400, noise=0.0)
    data = crnn.Experiments(ts, clean, u0)
    truth = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    loss = crnn.CollocationLoss(data, jnp.asarray(clean), "mae")
    # Exact states + trapezoidal rule with h = 0.1: error O(h^2 |c''| T) ~ 1e-4 or less.
    assert float(loss(truth)) < 1e-4
    wrong = crnn.CRNN.from_mechanism(NU_TRUE, 1.2 * K_TRUE)
    assert float(loss(wrong)) > 10 * float(loss(truth))


# ------------------------------------------------- the B-CRNN posterior of the rates


def test_round_stoichiometry_reads_the_mechanism():
    nu = NU_TRUE + np.where(NU_TRUE == 0, 0.0, 0.03) + np.where(NU_TRUE == 0, 0.2, 0.0)
    model = crnn.round_stoichiometry(crnn.CRNN.from_mechanism(nu, K_TRUE))
    np.testing.assert_array_equal(np.asarray(model.nu), NU_TRUE)
    assert np.array_equal(np.asarray(model.mask), NU_TRUE != 0)  # 0.2 rounds to 0: pruned


def test_noise_level_estimate_is_unbiased_under_relative_error():
    # At the true mechanism, the relative residuals of 5 % multiplicative noise have rms
    # 0.05; the observations that are exactly zero (C-E at t = 0) are left out.
    ts, u0, ys, _ = classic_data(10, 50, noise=0.05)
    truth = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)
    sigma = crnn.estimate_noise(truth, crnn.Experiments(ts, ys, u0))
    assert abs(sigma - 0.05) < 0.002, sigma  # 2,470 observations: sd of the estimate 0.0007


def _nuts_rates(model, data, **kwargs):
    settings = dict(num_warmup=200, num_samples=150, num_chains=2, progress=False)
    return crnn.run_nuts(model, data, sample_stoichiometry=False, **{**settings, **kwargs})


def _check_calibrated(low, high, index):
    """The checks against the truth of the simulated data shared by the reduced and the
    full-pipeline tests: ``index`` maps the true reactions to the posterior's."""
    lo1, hi1 = crnn.credible_interval(low)
    lo4, hi4 = crnn.credible_interval(high)
    lo1, hi1, lo4, hi4 = lo1[index], hi1[index], lo4[index], hi4[index]
    # All four 95 % intervals contain the true rate constants, at 5 % and at 20 % noise.
    assert np.all((lo1 <= K_TRUE) & (K_TRUE <= hi1)), (lo1, hi1)
    assert np.all((lo4 <= K_TRUE) & (K_TRUE <= hi4)), (lo4, hi4)
    # Four times the noise: in the linear regime the posterior sd scales with sigma, so
    # every interval is about four times wider -- it widens, it does not collapse.
    ratio = (hi4 - lo4) / (hi1 - lo1)
    assert np.all((3.0 < ratio) & (ratio < 5.5)), ratio
    # The noise level is learned, and its intervals contain the levels that made the data.
    for idata, noise in ((low, 0.05), (high, 0.20)):
        s_lo, s_hi = crnn.credible_interval(idata, "sigma")
        assert s_lo <= noise <= s_hi, (noise, s_lo, s_hi)
        summary = az.summary(idata, var_names=["rate_constant", "sigma"])
        assert summary["r_hat"].max() < 1.05, summary
        assert summary["ess_bulk"].min() > 50, summary  # of 300 draws
        assert int(idata.sample_stats["diverging"].sum()) == 0


@pytest.mark.slow
def test_nuts_rate_intervals_contain_the_truth_and_widen_with_the_noise():
    """Reduced size (4 experiments x 25 times), mechanism given: NUTS on the four log
    rates and log sigma, rates started at 0.1 (not at the truth); the same experiments
    with 5 % and with 20 % noise (the same noise draws, scaled by four)."""
    model = crnn.CRNN.from_mechanism(NU_TRUE, [0.1] * 4)
    posteriors = []
    for noise in (0.05, 0.20):
        ts, u0, ys, _ = classic_data(4, 25, noise=noise)
        posteriors.append(_nuts_rates(model, crnn.Experiments(ts, ys, u0)))
    _check_calibrated(*posteriors, index=np.arange(4))


# ------------------------------------------------------- the benchmark, reduced size


def _train(data, key):
    """Collocation restarts, AdamW on the trajectories, prune, refit (the notebook's
    steps, fewer of them)."""
    warm = crnn.fit_collocation(crnn.CRNN(5, 4, key=key), data, steps=3000, restarts=8,
                                progress=False).params
    fitted = crnn.fit(warm, data, steps=300, learning_rate=5e-3, progress=False).params
    return crnn.fit(crnn.prune(fitted, 0.1), data, steps=300, learning_rate=5e-3,
                    progress=False).params


@pytest.fixture(scope="module")
def classic():
    # 10 experiments x 50 times (the full benchmark: 20 x 100), 5 % noise. At this size the
    # loss has a competing local minimum (1.6A -> 0.5B + 0.4C beside 0.9A -> 1.1C, loss 2 %
    # above the true mechanism's); these seeds find the true basin.
    ts, u0, ys, _ = classic_data(10, 50, noise=0.05)
    data = crnn.Experiments(ts, ys, u0)
    return data, _train(data, jax.random.key(0))


@pytest.mark.slow
@pytest.mark.heavy
def test_trained_and_pruned_crnn_recovers_the_mechanism(classic):
    data, model = classic
    match = match_reactions(model)
    assert match is not None, crnn.format_mechanism(model)
    assert len(set(match)) == 4, crnn.format_mechanism(model)
    nu = np.asarray(model.nu)[match]
    # Right stoichiometry: every coefficient within 0.15 of the true integer (so also no
    # extra species in any reaction: those were pruned to exactly 0).
    np.testing.assert_allclose(nu, NU_TRUE, atol=0.15)
    k = np.asarray(model.rate_constants())[match]
    np.testing.assert_allclose(k, K_TRUE, rtol=0.10)
    # Exactly four reactions, each with only its own species (the rest pruned to 0).
    assert len(crnn.mechanism(model)) == 4
    assert np.all((np.asarray(model.nu)[match] != 0) == (NU_TRUE != 0))
    # Read as a mechanism (integer coefficients), it is the true one.
    np.testing.assert_array_equal(np.asarray(crnn.round_stoichiometry(model).nu)[match],
                                  NU_TRUE)


@pytest.fixture(scope="module")
def discovered_posteriors(classic):
    """The mechanism discovered from the reduced data (rounded to integers) and NUTS on
    its rates on the benchmark's full training set (20 experiments x 100 times) with 5 %
    noise and with 20 % (same draws scaled by four); pSGLD on the 5 % data. At 10 x 50 a
    calibrated posterior misses one of four rates too often for an all-four check (seed
    0: B + D -> E's 95 % interval [0.3000, 0.3024], z = 2.1)."""
    _, model = classic
    mechanism = crnn.round_stoichiometry(model)
    full = []
    for noise in (0.05, 0.20):
        ts, u0, ys, _ = classic_data(20, 100, noise=noise)
        full.append(crnn.Experiments(ts, ys, u0))
    low = _nuts_rates(mechanism, full[0], num_warmup=150, num_samples=250)
    high = _nuts_rates(mechanism, full[1], num_warmup=150, num_samples=250)
    # pSGLD starts at a trained CRNN (its whitening is the Fisher information there): the
    # mechanism's rates refitted on these data, as in notebooks/bcrnn.ipynb
    start = crnn.fit(mechanism, full[0], steps=500, progress=False).params
    psgld = crnn.run_psgld(start, full[0], num_steps=1500, burn_in=300, thin=3,
                           num_chains=4, progress=False)
    return model, low, high, psgld


def _reaction_index(idata, match):
    """Positions of the true reactions (``match``: candidate indices) in a posterior."""
    reactions = list(np.asarray(idata.posterior["reaction"].values))
    return np.array([reactions.index(j) for j in match])


@pytest.mark.slow
@pytest.mark.heavy
def test_discovered_mechanism_rate_intervals_contain_the_truth(discovered_posteriors):
    model, low, high, _ = discovered_posteriors
    index = _reaction_index(low, match_reactions(model))
    _check_calibrated(low, high, index)


@pytest.mark.slow
@pytest.mark.heavy
def test_psgld_agrees_with_nuts(discovered_posteriors):
    """pSGLD (the scalable sampler) on the same mechanism also samples its kept
    coefficients, so its rate intervals are those of NUTS widened by the coefficients'
    uncertainty: they contain the truth and NUTS's posterior means, and are not
    narrower than NUTS's."""
    model, low, _, psgld = discovered_posteriors
    match = match_reactions(model)
    lo, hi = (x[match] for x in crnn.credible_interval(psgld))
    assert np.all((lo <= K_TRUE) & (K_TRUE <= hi)), (lo, hi)
    nuts_k = np.asarray(low.posterior["rate_constant"].values).reshape(-1, 4)
    nuts_k = nuts_k[:, _reaction_index(low, match)]
    mean = nuts_k.mean(axis=0)
    assert np.all((lo <= mean) & (mean <= hi)), (lo, hi, mean)
    n_lo, n_hi = np.quantile(nuts_k, [0.025, 0.975], axis=0)
    assert np.all(hi - lo > 0.9 * (n_hi - n_lo)), (hi - lo, n_hi - n_lo)


@pytest.mark.slow
@pytest.mark.heavy
def test_psgld_noise_level_contains_the_truth(discovered_posteriors):
    """Started at a fit to other data (the reduced set), pSGLD's sigma interval was
    [0.080, 0.092] for 5 % noise; started at a fit to its own data it contains 0.05 (the
    full-size notebook: [0.0495, 0.0511], NUTS [0.0493, 0.0507])."""
    s_lo, s_hi = crnn.credible_interval(discovered_posteriors[3], "sigma")
    assert s_lo <= 0.05 <= s_hi, (s_lo, s_hi)


def test_reaction_probability_is_indexed_by_candidate_after_pruning():
    """NUTS samples the active reactions only (here candidates 1 and 3 of 4): entry i was
    the i-th active reaction, read as candidate i."""
    from bayes_ude import inference

    rng = np.random.default_rng(0)
    nu = rng.normal(0.0, 1.0, (2, 50, 2, 3))
    nu[..., 0, :] *= 0.01  # candidate 1 is below the threshold in every draw
    idata = inference.to_inference_data(
        {"stoichiometry": nu, "rate_constant": np.ones((2, 50, 2))},
        dims={"stoichiometry": ["reaction", "species"], "rate_constant": ["reaction"]},
        coords={"reaction": np.array([1, 3])}, attrs={"n_reactions": 4})
    np.testing.assert_array_equal(crnn.reaction_probability(idata), [0.0, 0.0, 0.0, 1.0])


def test_posterior_models_refuses_another_mask_than_the_sampled_one():
    """The mask is not in the draws: the unpruned model would bring back the pruned
    entries at their prior draws as active coefficients."""
    from bayes_ude import inference

    sampled = crnn.CRNN.from_mechanism(NU_TRUE, K_TRUE)  # pruned where NU_TRUE is 0
    nu = np.broadcast_to(np.asarray(sampled.nu), (1, 3) + NU_TRUE.shape)
    idata = inference.to_inference_data({"stoichiometry": nu},
                                        dims={"stoichiometry": ["reaction", "species"]})
    with pytest.raises(ValueError, match="pruning mask differs from the sampled model"):
        crnn.posterior_models(idata, crnn.unprune(sampled))
