"""Reliability of run_nuts (issue 20): the posterior predictive is simulated (and
calibrated), factors stay out of the log-likelihood (``az.loo`` works), Ctrl-C after
sampling never loses the draws, and warmup that gets stuck says so.

One tiny model serves the first three: u' = -k u, u(0) = a, y ~ N(u, sigma^2) at
``N_TRAIN`` training times, the solution passed through ``reject_failed_solve`` (a factor
site), and ``N_HELD`` held-out times masked out of the likelihood, so that the posterior
sees the training data only while ``posterior_predictive`` simulates every time. The
solution is the exact one, packaged as a ``Solution``: these tests check the sampler's
assembly, not a solver, and compile no ODE solver (an ODE solve made each fit take ~40 s).
The fits share their settings, so that their compiled programs are shared (JAX's
persistent cache).
"""

import os
import signal
import sys
import threading

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from bayes_ude import inference, solvers
from bayes_ude.inference import _interrupt, _nuts

# Ctrl-C sent in-process must meet Python's handler, whatever the worker started with
pytestmark = pytest.mark.usefixtures("python_sigint")

K_TRUE, A_TRUE, SIGMA_TRUE = 0.6, 2.0, 0.1
N_TRAIN = N_HELD = 400
TS = np.linspace(0.0, 4.0, N_TRAIN + N_HELD)
TRAIN = np.arange(TS.size) % 2 == 0  # training and held-out times alternate over [0, 4]
# 2 x 250 draws: enough for the 5 % and 95 % quantiles; in chunks of 250, so that warmup
# and sampling run one compiled program
SETTINGS = {"num_warmup": 250, "num_samples": 250, "num_chains": 2, "chunk_size": 250,
            "progress": False}


def exact_decay(ts, k, a):
    """The solve of u' = -k u, u(0) = a, in closed form; failed where not finite."""
    ys = (a * jnp.exp(-k * ts))[:, None]
    status = jnp.where(jnp.all(jnp.isfinite(ys)), solvers.Status.SUCCESS,
                       solvers.Status.NONFINITE)
    return solvers.Solution(ts=ts, ys=ys, status=status, num_steps=jnp.asarray(0))


def decay(ts, y=None, train=None):
    k = numpyro.sample("k", dist.LogNormal(jnp.log(0.5), 0.5))
    a = numpyro.sample("a", dist.LogNormal(0.0, 0.5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
    u = inference.reject_failed_solve(exact_decay(ts, k, a))[:, 0]
    numpyro.sample("y", dist.Normal(u, sigma).mask(train), obs=y)


def decay_data():
    truth = A_TRUE * np.exp(-K_TRUE * TS)
    return truth + SIGMA_TRUE * np.random.default_rng(0).standard_normal(TS.size)


def fit(backend, **kwargs):
    return inference.run_nuts(decay, jnp.asarray(TS), jnp.asarray(decay_data()),
                              jnp.asarray(TRAIN), backend=backend, **SETTINGS, **kwargs)


@pytest.fixture(scope="module", params=["numpyro", "blackjax"])
def fitted(request):
    return request.param, fit(request.param)


# ------------------------------------------------------------ posterior predictive (8)


def test_posterior_predictive_is_simulated_and_covers_held_out_data(fitted):
    backend, idata = fitted
    y = decay_data()
    pred = idata.posterior_predictive["y"].values.reshape(-1, TS.size)
    assert pred.shape == (2 * 250, TS.size)
    # Simulated, not the data: no draw equals an observation, and the draws spread around
    # each observation by about the noise (posterior mean of sigma, plus the small
    # parameter uncertainty).
    assert not np.any(pred == y)
    spread = pred.std(axis=0)
    assert 0.9 * SIGMA_TRUE < np.median(spread) < 1.3 * SIGMA_TRUE, np.median(spread)
    # Calibration: the central 90 % predictive interval covers a held-out observation with
    # probability ~0.9 (the 5 % and 95 % quantiles of 500 draws: ~0.898). The covered
    # share of N_HELD = 400 points varies by sd(binomial) = sqrt(0.9 * 0.1 / 400) = 0.015
    # and, because all points share one posterior, by the error of its sigma: relative sd
    # 1 / sqrt(2 N_TRAIN) = 0.035, which moves the coverage 2 phi(1.645) 1.645 = 0.34
    # times as much (0.012); the error of the curve (a, k) is far smaller. Bounds: 3 sd of
    # both combined (0.058). With the observed values returned as "predictions" (the bug)
    # every interval is the point itself: coverage 1.
    sd = np.hypot(np.sqrt(0.9 * 0.1 / N_HELD), 0.34 / np.sqrt(2 * N_TRAIN))
    lo, hi = np.quantile(pred[:, ~TRAIN], [0.05, 0.95], axis=0)
    held = y[~TRAIN]
    coverage = np.mean((lo <= held) & (held <= hi))
    print(f"{backend}: held-out coverage of the 90 % predictive intervals {coverage:.3f}, "
          f"sigma {float(idata.posterior['sigma'].mean()):.4f}")
    assert abs(coverage - 0.9) <= 3 * sd, coverage


# ------------------------------------------------------------------ factors, loo (9)


def test_factor_is_not_data_and_loo_waic_ppc_work(fitted):
    backend, idata = fitted
    for group in ("observed_data", "log_likelihood", "posterior_predictive"):
        assert list(getattr(idata, group).data_vars) == ["y"], group
    # no var_name needed ("Found several log likelihood arrays" before); the held-out
    # points are not data (they counted, with log-likelihood 0, before)
    assert np.isfinite(az.loo(idata).elpd_loo)
    assert az.loo(idata).n_data_points == N_TRAIN
    assert np.isfinite(az.waic(idata).elpd_waic)
    import matplotlib

    matplotlib.use("Agg")
    az.plot_ppc(idata, num_pp_samples=20)


def test_factor_sites_are_recognised_under_plates_and_masks():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("plain", -x**2)
        with numpyro.plate("p", 3), numpyro.handlers.mask(mask=jnp.array([True, False, True])):
            numpyro.factor("in_plate", -x**2 * jnp.ones(3))
        numpyro.sample("obs", dist.Normal(x, 1.0).expand([3]).mask(False), obs=jnp.zeros(3))

    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace()
    assert {k for k, s in trace.items() if s["type"] == "sample" and _nuts._is_factor(s)} == {
        "plain", "in_plate"}
    observed, held_out = _nuts._observed_sites(model, (), {}, jax.random.key(0))
    assert list(observed) == ["obs"]
    assert list(held_out) == ["obs"] and not held_out["obs"].any()  # .mask(False)


# ------------------------------------------------------------------------ Ctrl-C (3)


main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals reach only the main thread")


def _sigint():
    os.kill(os.getpid(), signal.SIGINT)


@main_thread_only
@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_ctrl_c_during_assembly_keeps_every_draw(backend, monkeypatch, capsys):
    """A real SIGINT as soon as sampling has its draws (while the constrained values, the
    observed data, the log-likelihood and the predictive are still to come): the draws
    come back complete, the optional groups are skipped and the result says so."""
    original, before = _nuts.run_chunks, signal.getsignal(signal.SIGINT)

    def run_chunks_then_ctrl_c(*args, **kwargs):
        out = original(*args, **kwargs)
        if kwargs.get("guard") is not None:  # the sampling loop, not warmup
            _sigint()
        return out

    monkeypatch.setattr(_nuts, "run_chunks", run_chunks_then_ctrl_c)
    with pytest.warns(UserWarning, match="without log_likelihood, posterior_predictive"):
        idata = fit(backend)
    assert idata.posterior["k"].shape == (2, 250)
    assert np.all(np.isfinite(idata.posterior["k"].values))
    assert "log_likelihood" not in idata.groups()
    assert "posterior_predictive" not in idata.groups()
    np.testing.assert_array_equal(idata.observed_data["y"].values, decay_data())
    assert idata.attrs["partial"] == 1
    assert idata.attrs["skipped"] == "log_likelihood, posterior_predictive"
    assert "interrupt received: finishing the draws" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_ctrl_c_in_the_predictive_skips_only_the_predictive(monkeypatch):
    class Interrupted:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(_nuts, "Predictive", Interrupted)
    with pytest.warns(UserWarning, match="without posterior_predictive"):
        idata = fit("numpyro")
    assert idata.posterior["k"].shape == (2, 250)
    assert idata.log_likelihood["y"].shape == (2, 250, N_TRAIN)  # the held-out points: none
    assert "posterior_predictive" not in idata.groups()
    assert idata.attrs["partial"] == 1 and idata.attrs["skipped"] == "posterior_predictive"


@main_thread_only
def test_ctrl_c_after_nlme_sampling_keeps_the_fit(monkeypatch, capsys):
    """nlme.fit(..., "nuts") on a tiny linear mixed model: a SIGINT while the posterior
    predictive is simulated skips it, and one while the result is being built (natural-
    scale draws) is deferred: the fit comes back whole, marked partial."""
    from bayes_ude import nlme
    from bayes_ude.nlme import _bayes
    from tests.nlme.test_estimate import Line, _linear_population

    pop, _ = _linear_population(n=6)
    model = nlme.PopulationModel(
        Line(), lambda th, eta, cov: {"a": th["ta"] + eta["eta_a"], "b": th["tb"]},
        theta={"ta": 1.7, "tb": -0.4}, omega=nlme.Omega(("eta_a",), np.array([0.5])),
        sigma={"add_sd": 0.5}, error=nlme.Additive())
    replicate, natural = _bayes._replicate, _bayes._natural_draws

    def replicate_then_ctrl_c(*args):
        _sigint()  # raised here: the optional step is skipped
        return replicate(*args)

    def ctrl_c_then_natural(*args):
        _sigint()  # deferred: the draws are finished
        return natural(*args)

    monkeypatch.setattr(_bayes, "_replicate", replicate_then_ctrl_c)
    monkeypatch.setattr(_bayes, "_natural_draws", ctrl_c_then_natural)
    with pytest.warns(UserWarning, match="without posterior_predictive"):
        result = nlme.fit(model, pop, "nuts", num_warmup=50, num_samples=50, num_chains=2,
                          progress=False)
    assert result.draws["ta"].shape == (2, 50) and np.all(np.isfinite(result.draws["ta"]))
    assert result.idata.attrs["partial"] == 1
    assert result.idata.attrs["skipped"] == "posterior_predictive"
    assert "posterior_predictive" not in result.idata.groups()
    assert "log_likelihood" in result.idata.groups()  # taken before the interrupts
    assert "interrupt received" in capsys.readouterr().err


@main_thread_only
def test_interrupt_guard_defers_only_after_the_draws_and_nests():
    before = signal.getsignal(signal.SIGINT)
    with _interrupt.interrupt_guard() as outer:
        with pytest.raises(KeyboardInterrupt):  # sampling: interruptible
            _sigint()
        with _interrupt.interrupt_guard() as inner:  # e.g. run_nuts inside fit_bayes
            assert inner is outer and not inner.deferring
            inner.defer()
        assert outer.deferring  # the caller now holds the draws
        _sigint()  # recorded, not raised
        assert outer.received
        assert outer.optional(lambda: 1) == (None, False)  # skipped after an interrupt
        with pytest.warns(UserWarning, match="without posterior_predictive"):
            attrs = outer.mark({"partial": 0}, ["posterior_predictive"])
    assert attrs == {"partial": 1, "skipped": "posterior_predictive"}
    assert signal.getsignal(signal.SIGINT) is before
    with _interrupt.interrupt_guard() as fresh:  # a new run starts clean
        assert not fresh.received and not fresh.deferring
        assert fresh.optional(lambda: 1) == (1, True)


class _SwallowsCtrlC:
    """Ctrl-C arriving inside ``__del__`` (as inside JAX's gc callback while XLA
    compiles): Python prints "Exception ignored" and goes on."""

    def __del__(self):
        _sigint()
        for _ in range(10_000):  # the handler runs between these bytecodes
            pass


@main_thread_only
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_that_python_swallowed_is_raised_at_the_next_checkpoint():
    from bayes_ude import _sigint as sigint
    from bayes_ude.inference._chunks import run_chunks

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    printed, hook = [], sys.unraisablehook
    sys.unraisablehook = printed.append  # Python's "Exception ignored ... Traceback"
    try:
        with sigint.counted_sigint():
            _SwallowsCtrlC()  # garbage at once: its __del__ swallows the interrupt
            with pytest.raises(KeyboardInterrupt):
                sigint.raise_pending()
            sigint.raise_pending()  # accounted for: nothing more to raise
        assert printed == []  # counted, so not printed (the command prints one line)
        _SwallowsCtrlC()  # outside the block Python's own behaviour is unchanged
        assert [type(u.exc_value) for u in printed] == [KeyboardInterrupt]
        sys.unraisablehook = hook

        def advance(done, n):  # the second chunk "compiles" through a swallowed Ctrl-C
            if done == 1:
                _SwallowsCtrlC()
            return done

        class Bar:
            def update(self, n):
                pass

        with pytest.warns(UserWarning, match="returning the 2 draws"):
            pieces, done, partial = run_chunks(5, 1, advance, Bar(), what="draws")
        assert pieces == [0, 1] and done == 2 and partial
        with sigint.counted_sigint():  # a caught interrupt is not raised again
            with pytest.raises(KeyboardInterrupt):
                _sigint()
            sigint.handled()
            sigint.raise_pending()
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


# -------------------------------------------------------------------- stuck warmup (11)


def funnel():
    """Neal's funnel: at v = -40 the scale of x is exp(-20) ~ 2e-9."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([5]))


@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_stuck_warmup_warns_and_progress_shows_step_size(backend, capsys):
    """Chains started deep in the funnel's neck cannot leave it: the step size collapses
    (to ~1e-8) and, with max_tree_depth=3, every tree saturates; both warnings name the
    two chains. The progress bar shows the step size and acceptance rate."""
    with pytest.warns(UserWarning) as record:
        inference.run_nuts(funnel, backend=backend, num_warmup=50, num_samples=5,
                           num_chains=2, max_tree_depth=3, progress=True,
                           init={"v": -40.0, "x": jnp.zeros(5)})
    messages = [str(w.message) for w in record]
    assert any("step size of chain(s) [0, 1] collapsed" in m for m in messages), messages
    assert any("chain(s) [0, 1] reached max_tree_depth=3" in m for m in messages), messages
    err = capsys.readouterr().err
    assert "step size" in err and "acceptance" in err


def test_healthy_warmup_does_not_warn():
    """The closed-form check of the warnings' thresholds (no sampling)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _nuts._check_warmup(np.array([0.3, 0.5]), np.array([0.0, 0.5]), 10)
    with pytest.warns(UserWarning, match=r"chain\(s\) \[1\] collapsed"):
        _nuts._check_warmup(np.array([0.3, np.nan]), np.array([0.0, 0.0]), 10)


def lynx_hare_fixed_start(ts, y_init, y=None):
    """The lynx-hare model with the initial state fixed at the 1900 pelts (only theta and
    sigma sampled): started uniformly, its warmup ended at step sizes of 1e-7 and 1e-10
    with every tree at depth 10 (issue 20: 7.5e-9, stalled for minutes)."""
    from bayes_ude.inference import models

    theta = numpyro.sample("theta", dist.TruncatedNormal(
        jnp.array([1.0, 0.05, 1.0, 0.05]), jnp.array([0.5, 0.05, 0.5, 0.05]), low=0.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]))
    sol = solvers.solve(models._lotka_volterra, jnp.asarray(y_init), ts, theta, t0=0.0,
                        rtol=1e-5, atol=1e-3)
    z = inference.reject_failed_solve(sol)
    numpyro.sample("y", dist.LogNormal(jnp.log(jnp.maximum(z, 1e-12)), sigma).to_event(2),
                   obs=y)


@pytest.mark.slow
@pytest.mark.heavy  # an ODE model: ~40 s on 2 shared cores, mostly compilation
def test_default_start_does_not_get_stuck_on_lynx_hare_with_fixed_initial_state():
    """The issue's case with the default start (init="map"): no warmup warning, step
    sizes of order 0.1, and both chains at the main mode (alpha 0.45, gamma 1.02, found
    by L-BFGS; a start at the prior median left most chains in a mode with the wrong
    period, alpha ~0.7, gamma ~1.6, 38 nats lower)."""
    import warnings

    from bayes_ude.inference import models

    ts, y_init, y = models.lynx_hare_data()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="NUTS warmup")
        idata = inference.run_nuts(lynx_hare_fixed_start, ts, y_init, y, num_warmup=50,
                                   num_samples=20, num_chains=2, progress=False,
                                   posterior_predictive=False)
    assert np.all(idata.sample_stats["step_size"].values > 1e-2)
    assert float(idata.sample_stats["tree_depth"].mean()) < 8
    theta = idata.posterior["theta"].values.mean(axis=1)
    np.testing.assert_allclose(theta[:, [0, 2]], [[0.45, 1.02]] * 2, rtol=0.2)
