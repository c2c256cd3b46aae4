"""NUTS runner (NumPyro and BlackJAX backends) against closed-form posteriors, ArviZ
output, network priors, and calibration (coverage over replicate data sets)."""

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Predictive

from bayes_ude import inference, nn, solvers

PRIOR_SD = 10.0


def normal_mean(y=None, n=20):
    """y_i ~ N(mu, 1), mu ~ N(0, 10^2): the posterior of mu is normal in closed form."""
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("obs_plate", n):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(1.5, 1.0, size=20)


@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_posterior_matches_closed_form(backend, data):
    idata = inference.run_nuts(normal_mean, data, backend=backend, num_warmup=300,
                               num_samples=500, num_chains=4, progress=False,
                               dims={"y": ["obs"]})
    precision = len(data) + 1 / PRIOR_SD**2
    post_mean, post_sd = data.sum() / precision, precision**-0.5
    summary = az.summary(idata, var_names=["mu"], round_to="none")
    assert abs(summary.loc["mu", "mean"] - post_mean) <= 4 * summary.loc["mu", "mcse_mean"]
    assert abs(summary.loc["mu", "sd"] / post_sd - 1) <= 0.1
    assert summary.loc["mu", "r_hat"] <= 1.01
    # Everything ArviZ needs is there, with the named dimension.
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data",
            "posterior_predictive"} <= set(idata.groups())
    assert idata.posterior["mu"].shape == (4, 500)
    for stat in ("diverging", "step_size", "tree_depth", "energy", "acceptance_rate", "lp"):
        assert idata.sample_stats[stat].shape == (4, 500), stat
    assert not idata.sample_stats["diverging"].values.any()
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert idata.posterior_predictive["y"].shape == (4, 500, 20)
    np.testing.assert_array_equal(idata.observed_data["y"].values, data)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    assert idata.attrs["backend"] == backend and idata.attrs["partial"] == 0


def positive_rate(y=None, n=30):
    """y_i ~ Exponential(lam), lam ~ Gamma(2, 1): the posterior is Gamma(2 + n, 1 + sum y),
    and on NumPyro's unconstrained scale (log lam, with the log-Jacobian) its mode is
    at lam = (2 + n) / (1 + sum y)."""
    lam = numpyro.sample("lam", dist.Gamma(2.0, 1.0))
    with numpyro.plate("obs_plate", n):
        numpyro.sample("y", dist.Exponential(lam), obs=y)


@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_map_start_is_the_mode_and_samples_the_posterior(backend):
    from bayes_ude.inference import _nuts

    y = np.random.default_rng(1).exponential(1 / 2.5, size=30)
    a, b = 2.0 + y.size, 1.0 + y.sum()
    starts = _nuts._map_starts(positive_rate, (y,), {}, jax.random.key(3), 3)
    np.testing.assert_allclose(np.exp(np.asarray(starts["lam"])), a / b, rtol=1e-6)
    idata = inference.run_nuts(positive_rate, y, backend=backend, init="map", num_warmup=300,
                               num_samples=500, num_chains=2, progress=False)
    summary = az.summary(idata, var_names=["lam"], round_to="none")
    assert abs(summary.loc["lam", "mean"] - a / b) <= 4 * summary.loc["lam", "mcse_mean"]
    assert abs(summary.loc["lam", "sd"] / (np.sqrt(a) / b) - 1) <= 0.1
    assert summary.loc["lam", "r_hat"] <= 1.01


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="backend"):
        inference.run_nuts(normal_mean, data, backend="stan")
    with pytest.raises(ValueError, match="num_chains"):
        inference.run_nuts(normal_mean, data, num_chains=0)
    with pytest.raises(ValueError, match="target_accept"):
        inference.run_nuts(normal_mean, data, target_accept=1.5)
    with pytest.raises(ValueError, match="init"):
        inference.run_nuts(normal_mean, data, init="random")
    # a misspelt name was ignored (chains started from uniform draws)
    with pytest.raises(ValueError, match=r"init names \['muu'\], not latent sites"):
        inference.run_nuts(normal_mean, data, init={"muu": 1.0})


def three_means(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([3]))
    numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)


def test_init_values_take_their_sites_shapes():
    """A number fills its site; a value of another shape is refused. {"mu": 0.5} for a
    site of three made a site of one: one mu with its prior counted three times (posterior
    mean 0.52 for all three, where each has its own: y / 1.01)."""
    y = jnp.array([0.2, 0.5, 0.9])
    idata = inference.run_nuts(three_means, y, init={"mu": 0.5}, num_warmup=200,
                               num_samples=200, num_chains=1, progress=False,
                               posterior_predictive=False)
    mu = idata.posterior["mu"].values
    assert mu.shape == (1, 200, 3)
    np.testing.assert_allclose(mu.mean(axis=(0, 1)), y / 1.01, atol=0.03)  # sd 0.0995
    with pytest.raises(ValueError, match=r"init\['mu'\] has shape \(2, 3\); the site 'mu' "
                                         r"has shape \(3,\)"):
        inference.run_nuts(three_means, y, init={"mu": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"init\['mu'\] has shape \(2,\)"):
        inference.run_nuts(three_means, y, init={"mu": np.zeros(2)})


def scale_model(y=None):
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(0.0, s).expand([4]), obs=y)


def test_a_start_with_no_finite_log_density_is_an_error():
    """NumPyro's check of the start is skipped under jit: the chains stayed frozen at it,
    every transition divergent (BlackJAX raised already)."""
    for backend in ("numpyro", "blackjax"):
        with pytest.raises(RuntimeError, match="not finite|Cannot find valid initial"):
            inference.run_nuts(scale_model, jnp.array([0.1, jnp.nan, 0.3, 0.2]),
                               backend=backend, num_warmup=5, num_samples=5, num_chains=1,
                               progress=False)


def broadcast_mean(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)  # a scalar mean for 4 values


def test_predictive_of_a_site_broadcast_to_its_data_has_the_data_shape():
    """It had one value per draw for the 4 observations (az.plot_ppc compared them)."""
    y = jnp.array([0.3, 2.0, -1.0, 0.5])
    idata = inference.run_nuts(broadcast_mean, y, num_warmup=100, num_samples=100,
                               num_chains=2, progress=False)
    pred = idata.posterior_predictive["y"].values
    assert pred.shape == (2, 100, 4) == idata.log_likelihood["y"].shape
    # each draw's 4 values are independent N(mu, 0.5^2) around that draw's mu
    resid = pred - idata.posterior["mu"].values[..., None]
    assert 0.4 < resid.std() < 0.6
    assert abs(np.corrcoef(resid[..., 0].ravel(), resid[..., 1].ravel())[0, 1]) < 0.2


def test_network_prior_names_shapes_and_scales():
    net = nn.MLP(2, 1, (3,), "tanh", key=jax.random.key(0))

    def model():
        inference.network_prior("nn", net, scale={"layers.0": 2.0, "bias": 0.5})

    draws = Predictive(model, num_samples=4000)(jax.random.key(1))
    assert set(draws) == {"nn.layers.0.weight", "nn.layers.0.bias", "nn.layers.1.weight",
                          "nn.layers.1.bias"}
    assert draws["nn.layers.0.weight"].shape == (4000, 3, 2)
    np.testing.assert_allclose(np.std(draws["nn.layers.0.weight"]), 2.0, rtol=0.05)
    np.testing.assert_allclose(np.std(draws["nn.layers.0.bias"]), 2.0, rtol=0.05)
    np.testing.assert_allclose(np.std(draws["nn.layers.1.bias"]), 0.5, rtol=0.05)
    np.testing.assert_allclose(np.std(draws["nn.layers.1.weight"]), 1.0, rtol=0.05)

    def hierarchical():
        sampled = inference.network_prior("nn", net, scale=1.0, learned_scale=True)
        numpyro.deterministic("out", sampled(jnp.ones(2)))

    draws = Predictive(hierarchical, num_samples=10)(jax.random.key(2))
    assert "nn.scale" in draws and draws["out"].shape == (10, 1)
    with pytest.raises(ValueError, match="no floating-point"):
        inference.network_prior("x", eqx.nn.Lambda(jnp.tanh))
    # a key that matches no site (a typo) left every weight at the default scale 1.0
    with pytest.raises(ValueError, match=r"scale keys \['layer.0', 'Bias'\] match no site"):
        Predictive(lambda: inference.network_prior("nn", net, scale={"layer.0": 0.01,
                                                                     "Bias": 0.1}),
                   num_samples=1)(jax.random.key(3))
    # keys match whole name components: "layers.1" is not "layers.10" or "layers.11"
    deep = nn.MLP(1, 1, (2,) * 11, "tanh", key=jax.random.key(0))
    draws = Predictive(lambda: inference.network_prior("nn", deep, scale={"layers.1": 0.01}),
                       num_samples=2000)(jax.random.key(4))
    assert np.std(draws["nn.layers.1.weight"]) < 0.02
    for k in (10, 11):
        np.testing.assert_allclose(np.std(draws[f"nn.layers.{k}.weight"]), 1.0, rtol=0.1)


N_REPLICATES = 20
TS = jnp.linspace(0.0, 4.0, 9)
K_TRUE, A_TRUE, SIGMA = 0.7, 2.0, 0.1


def replicated_decay(ys=None):
    """20 independent data sets, one model: u' = -k_r u, u(0) = A_r, y ~ N(u, 0.1^2) per
    replicate r. The joint posterior is the product of the 20 posteriors, so one NUTS run
    fits all of them (the ODE solves are vmapped over replicates)."""
    with numpyro.plate("replicate", N_REPLICATES):
        k = numpyro.sample("k", dist.LogNormal(jnp.log(0.5), 0.5))
        a = numpyro.sample("a", dist.LogNormal(jnp.log(1.5), 0.5))
    sols = jax.vmap(lambda k_, a_: solvers.solve(lambda t, u, kk: -kk * u, a_[None], TS, k_))(
        k, a)
    u = inference.reject_failed_solve(sols)[..., 0]
    numpyro.sample("y", dist.Normal(u, SIGMA).to_event(2), obs=ys)


@pytest.mark.slow
def test_credible_intervals_cover_the_truth():
    rng = np.random.default_rng(3)
    truth = A_TRUE * np.exp(-K_TRUE * np.asarray(TS))
    ys = truth + SIGMA * rng.normal(size=(N_REPLICATES, TS.size))
    idata = inference.run_nuts(replicated_decay, jnp.asarray(ys), backend="blackjax",
                               num_warmup=400, num_samples=400, num_chains=2, progress=False)
    assert idata.attrs["num_divergent"] == 0
    for name, true in (("k", K_TRUE), ("a", A_TRUE)):
        draws = idata.posterior[name].values.reshape(-1, N_REPLICATES)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        coverage = np.mean((lo <= true) & (true <= hi))
        assert coverage >= 0.8, (name, coverage)


_DEVICES_SCRIPT = """
import sys, jax, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from test_nuts import normal_mean
from bayes_ude import inference
from bayes_ude.inference import _nuts
y = np.random.default_rng(0).normal(1.5, 1.0, size=20)
out = {"devices": _nuts._chain_devices(4)}
for backend in ("numpyro", "blackjax"):
    idata = inference.run_nuts(normal_mean, y, backend=backend, num_warmup=200,
                               num_samples=300, num_chains=4, progress=False)
    out[backend] = idata.posterior["mu"].values.tolist()
print(repr(out))
"""


@pytest.mark.slow
def test_chains_spread_over_several_devices_match_one_device(data):
    """With two (CPU) devices the 4 chains run 2 per device (shard_map): the same draws
    as on one device (to rounding, which the chains amplify slowly: compared over the first
    100 draws), and the closed-form posterior."""
    import subprocess
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    runs = {}
    for n in (1, 2):
        out = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(n), here],
                             capture_output=True, text=True, check=True)
        runs[n] = eval(out.stdout.strip().splitlines()[-1])
    assert runs[1]["devices"] == 1 and runs[2]["devices"] == 2
    precision = len(data) + 1 / PRIOR_SD**2
    post_mean, post_sd = data.sum() / precision, precision**-0.5
    for backend in ("numpyro", "blackjax"):
        one, two = np.array(runs[1][backend]), np.array(runs[2][backend])
        assert two.shape == (4, 300)
        np.testing.assert_allclose(two[:, :100], one[:, :100], rtol=0, atol=1e-4)
        assert abs(two.mean() - post_mean) <= 4 * post_sd / np.sqrt(two.size / 4)
        assert abs(two.std() / post_sd - 1) <= 0.1


def two_modes():
    """A tall mode at -1.5 and one 13.8 nats lower at +1.5, split near 0, inside the
    uniform start's (-2, 2)."""
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    numpyro.factor("mix", jnp.logaddexp(jnp.log1p(-1e-6) + dist.Normal(-1.5, 0.3).log_prob(x),
                                        jnp.log(1e-6) + dist.Normal(1.5, 0.3).log_prob(x)))


def test_map_start_moves_chains_out_of_a_much_lower_mode():
    """One climb per chain from one uniform draw: some chains reach the low mode. Within
    the 10-nat tolerance they would stay; beyond it they start at the tall mode."""
    from bayes_ude.inference import _nuts

    key = jax.random.key(0)
    kept = _nuts._map_starts(two_modes, (), {}, key, 16, n_candidates=1, n_climbs=1,
                             tolerance=np.inf)["x"]
    moved = _nuts._map_starts(two_modes, (), {}, key, 16, n_candidates=1, n_climbs=1)["x"]
    kept, moved = np.asarray(kept), np.asarray(moved)
    prior_shift = 1.5 * 0.3**2 / 10.0**2  # the N(0, 10) prior moves each mode slightly
    assert np.sum(np.abs(kept - 1.5) < 0.01) >= 2  # some chains climbed to the low mode
    assert np.all((np.abs(kept - 1.5) < 0.01) | (np.abs(kept + 1.5) < 0.01))
    np.testing.assert_allclose(moved, -1.5 + prior_shift, atol=1e-4)


CORR = 0.995
SCALES = np.array([1.0, 20.0])
COV = np.outer(SCALES, SCALES) * np.array([[1.0, CORR], [CORR, 1.0]])


def correlated_gaussian():
    """A 2-D Gaussian with correlation 0.995 and scales 1 and 20: a diagonal mass matrix
    cannot undo the correlation, a dense one makes it N(0, I)."""
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), jnp.asarray(COV)))


@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_dense_mass_matrix_undoes_correlation(backend):
    """Moments against the closed form with both mass matrices, and the dense one's
    trajectories far shorter: measured ~4 leapfrog steps per draw (step size ~0.85, the
    target whitened) against ~20 with the diagonal metric (step size ~0.07, set by the
    narrow direction of the correlation-0.995 ellipse)."""
    runs = {dense: inference.run_nuts(correlated_gaussian, backend=backend, num_warmup=500,
                                      num_samples=1000, num_chains=2, dense_mass=dense,
                                      progress=False, posterior_predictive=False)
            for dense in (False, True)}
    steps = {}
    for dense, idata in runs.items():
        x = idata.posterior["x"].values.reshape(-1, 2)
        np.testing.assert_allclose(x.std(axis=0), SCALES, rtol=0.15)
        assert abs(np.corrcoef(x.T)[0, 1] - CORR) < 0.005
        assert np.all(np.abs(x.mean(axis=0)) < 0.25 * SCALES)
        steps[dense] = float(idata.sample_stats["n_steps"].mean())
        assert not idata.sample_stats["diverging"].values.any()
        assert idata.attrs["dense_mass"] == int(dense)
    assert steps[True] < 0.3 * steps[False], steps
    assert np.cov(runs[True].posterior["x"].values.reshape(-1, 2).T) == pytest.approx(
        COV, rel=0.3)


def wide_gaussian(dim):
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([dim]).to_event(1))
    numpyro.sample("s", dist.HalfNormal(1.0))


def test_auto_dense_mass_by_dimension_and_warmup():
    """"auto": dense for at most 100 unconstrained dimensions given 10 warmup iterations
    per dimension, else diagonal (decided from shapes alone: nothing is compiled)."""
    from bayes_ude.inference._metric import auto_dense_mass
    assert auto_dense_mass(wide_gaussian, (42,), {}, 430)          # 43 dimensions
    assert not auto_dense_mass(wide_gaussian, (42,), {}, 429)      # too little warmup
    assert not auto_dense_mass(wide_gaussian, (100,), {}, 10_000)  # 101 dimensions
    with pytest.raises(ValueError, match="dense_mass must be True, False or 'auto'"):
        inference.run_nuts(correlated_gaussian, dense_mass="yes", progress=False)
    with pytest.raises(ValueError, match="dense_mass must be None, True, False or 'auto'"):
        inference.SamplerOptions(dense_mass="dense")


def test_short_adaptation_windows_set_a_diagonal_metric():
    """With a dense metric, a warmup window with fewer than 4 draws per dimension sets the
    diagonal of its covariance estimate: the variances, with the matching square roots
    (sqrt_inv sqrt_inv' = inverse mass, sqrt = sqrt_inv^-1); a long window's estimate,
    and a step that closes no window, are kept as they are."""
    import collections

    from bayes_ude.inference._metric import diagonal_after_short_window, short_windows
    # NumPyro's schedule for 1,000 warmup iterations: buffer 75, windows 25, 50, 100, 200,
    # 500, buffer 50; 43 dimensions need windows of 172 draws
    z = {"a": jnp.zeros((4, 40)), "b": jnp.zeros((4, 3))}  # (chain, ...)
    np.testing.assert_array_equal(short_windows(1000, z),
                                  [False, True, True, True, False, False, False, False])
    Adapt = collections.namedtuple("Adapt", "window_idx inverse_mass_matrix mass_matrix_sqrt "
                                            "mass_matrix_sqrt_inv")
    State = collections.namedtuple("State", "adapt_state")
    cov = np.array([[4.0, 1.0, 0.5], [1.0, 2.0, 0.3], [0.5, 0.3, 1.0]])
    sqrt_inv = np.linalg.cholesky(cov)  # any square root: only the diagonal case is checked
    dense = {"imm": jnp.asarray(cov), "sqrt": jnp.asarray(np.linalg.inv(sqrt_inv)),
             "sqrt_inv": jnp.asarray(sqrt_inv)}
    short = jnp.array([False, True, False, False])

    def step(before, after):
        old = State(Adapt(jnp.asarray(before), *dense.values()))
        new = State(Adapt(jnp.asarray(after), *dense.values()))
        return diagonal_after_short_window(old, new, short).adapt_state

    out = step(1, 2)  # closed window 1, short
    np.testing.assert_allclose(out.inverse_mass_matrix, np.diag(np.diag(cov)), rtol=1e-15)
    np.testing.assert_allclose(out.mass_matrix_sqrt_inv @ out.mass_matrix_sqrt_inv.T,
                               np.diag(np.diag(cov)), rtol=1e-14)
    np.testing.assert_allclose(out.mass_matrix_sqrt @ out.mass_matrix_sqrt_inv, np.eye(3),
                               atol=1e-15)
    for before, after in ((2, 3), (1, 1)):  # a long window closed; no window closed
        out = step(before, after)
        np.testing.assert_array_equal(out.inverse_mass_matrix, cov)
        np.testing.assert_array_equal(out.mass_matrix_sqrt_inv, sqrt_inv)


def gaussian_and_lognormal():
    """x: the correlated Gaussian; s: LogNormal(0.3, 0.5), whose potential on its
    unconstrained (log) scale is (y - 0.3)^2 / (2 0.5^2) + const (the density's 1/s and
    the Jacobian's s cancel): curvature 4 at any y."""
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), jnp.asarray(COV)))
    numpyro.sample("s", dist.LogNormal(0.3, 0.5))


def test_laplace_metric_is_the_inverse_hessian_and_samples_the_target():
    """The Laplace metric of a Gaussian is its covariance, and of the log-normal site 0.5^2
    whatever point it is taken at (closed forms; sites in sorted order: s, then x); NUTS
    with it kept fixed gets the moments right in a few leapfrog steps (measured 4.4)."""
    values = {"x": jnp.array([3.0, -40.0]), "s": jnp.asarray(2.0)}
    inv_mass = inference.laplace_inverse_mass(gaussian_and_lognormal, values=values)
    expected = np.zeros((3, 3))
    expected[0, 0] = 0.25
    expected[1:, 1:] = COV
    np.testing.assert_allclose(inv_mass, expected, rtol=1e-8, atol=1e-10)
    idata = inference.run_nuts(gaussian_and_lognormal, num_warmup=300, num_samples=1000,
                               num_chains=2, inverse_mass_matrix=inv_mass, progress=False,
                               posterior_predictive=False)
    x = idata.posterior["x"].values.reshape(-1, 2)
    np.testing.assert_allclose(x.std(axis=0), SCALES, rtol=0.15)
    assert abs(np.corrcoef(x.T)[0, 1] - CORR) < 0.005
    log_s = np.log(idata.posterior["s"].values.ravel())
    assert log_s.mean() == pytest.approx(0.3, abs=0.1) and log_s.std() == pytest.approx(
        0.5, rel=0.15)
    assert float(idata.sample_stats["n_steps"].mean()) < 8
    assert not idata.sample_stats["diverging"].values.any()


def test_laplace_metric_bad_inputs():
    with pytest.raises(ValueError, match=r"no entry for the latent sites \['s'\]"):
        inference.laplace_inverse_mass(gaussian_and_lognormal, values={"x": jnp.zeros(2)})
    with pytest.raises(ValueError, match="floor must be > 0"):
        inference.laplace_inverse_mass(correlated_gaussian, values={"x": jnp.zeros(2)},
                                       floor=0.0)
    with pytest.raises(ValueError, match=r"finite 2 x 2 matrix"):
        inference.run_nuts(correlated_gaussian, inverse_mass_matrix=np.eye(3), progress=False)
    with pytest.raises(ValueError, match="backend='numpyro'"):
        inference.run_nuts(correlated_gaussian, backend="blackjax",
                           inverse_mass_matrix=np.eye(2), progress=False)
    with pytest.raises(ValueError, match="not both"):
        inference.run_nuts(correlated_gaussian, dense_mass=True,
                           inverse_mass_matrix=np.eye(2), progress=False)


def held_out_mean(y=None, train=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    numpyro.sample("y", dist.Normal(mu * jnp.ones(y.shape[0]), 1.0).mask(train), obs=y)


def test_points_a_mask_holds_out_have_no_log_likelihood(data):
    """Held-out points entered log_likelihood as 0: az.loo counted 20 points for 10
    observations (and their se was 3x too large)."""
    train = np.arange(20) < 10
    idata = inference.run_nuts(held_out_mean, jnp.asarray(data), train, num_warmup=200,
                               num_samples=300, num_chains=2, progress=False)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "y_observed") and ll.shape == (2, 300, 10)
    assert list(ll["y_observed"].values) == list(range(10))
    # the same as the model fitted to the 10 points alone
    alone = inference.run_nuts(normal_mean, data[:10], 10, num_warmup=200, num_samples=300,
                               num_chains=2, progress=False)
    loo, loo_alone = az.loo(idata), az.loo(alone)
    assert loo.n_data_points == 10
    assert abs(loo.elpd_loo - loo_alone.elpd_loo) < 0.5
    assert idata.posterior_predictive["y"].shape == (2, 300, 20)  # held-out points predicted
