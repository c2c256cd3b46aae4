"""Subjects (and any batch) in blocks and over devices: the same results as one ``vmap``.

Several devices on one CPU need ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
before JAX starts, so the multi-device checks run in one subprocess with 4 CPU devices; the
in-process tests check the blocking itself (one device).
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude._batching import batch_map, resolve_devices


def _loop(x, p):
    """A while loop whose trip count depends on the member (as an inner Newton solve's)."""

    def cond(c):
        return c[1] < 10 * x[0] + 1

    def body(c):
        return c[0] * p + jnp.sin(c[0]), c[1] + 1.0

    return jax.lax.while_loop(cond, body, (x[1], 0.0))[0]


XS = jnp.asarray(np.random.default_rng(0).random((37, 2)))


@pytest.mark.parametrize("block", ["auto", None, 1, 5, 37, 100])
def test_blocks_give_the_vmap_result_and_gradient(block):
    ref = jax.vmap(_loop, in_axes=(0, None))(XS, 0.9)
    out = jax.jit(lambda xs, p: batch_map(_loop, xs, p, block=block))(XS, 0.9)
    assert out.shape == (37,)
    np.testing.assert_allclose(out, ref, rtol=1e-14)
    # forward mode (a while loop has no reverse mode; the FOCEI objective's gradient goes
    # around its inner loop, checked in the subprocess test)
    grad = jax.jacfwd(lambda p: jnp.sum(batch_map(_loop, XS, p, block=block)))(0.9)
    grad_ref = jax.jacfwd(lambda p: jnp.sum(jax.vmap(_loop, in_axes=(0, None))(XS, p)))(0.9)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-12)


def test_bad_devices_are_clear_errors():
    with pytest.raises(ValueError, match="local device"):
        resolve_devices(len(jax.local_devices()) + 1)
    with pytest.raises(ValueError, match="devices must be"):
        resolve_devices("gpus")
    with pytest.raises(ValueError, match="empty"):
        resolve_devices([])
    assert resolve_devices(None) == jax.local_devices()[:1]  # one device on a CPU


def test_batched_inputs_of_different_sizes_are_refused():
    # Padding repeated the shorter input's last member and the result was cut to the first
    # input's size: on several devices, 4 initial states with 3 rates solved the 4th with
    # the 3rd rate (one device: vmap's "inconsistent sizes"); batch_map in blocks did it
    # on one device too.
    with pytest.raises(ValueError, match="same leading"):
        batch_map(lambda x, a: x[0] + x[1], (jnp.arange(10.0), jnp.arange(7.0)), block=5)
    with pytest.raises(ValueError, match="leading batch axis.*scalar"):
        batch_map(lambda x, a: x[0] + x[1], (jnp.arange(10.0), jnp.float64(1.0)))
    from bayes_ude.solvers import solve_ensemble

    with pytest.raises(ValueError, match=r"args has 3, u0 has 4 \(use batch_u0=False"):
        solve_ensemble(lambda t, u, k: -k * u, jnp.ones((4, 1)), jnp.array([0.0, 1.0]),
                       jnp.array([1.0, 2.0, 3.0]))


_MULTI = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, pandas as pd
    jax.config.update("jax_enable_x64", True)
    from bayes_ude import nlme
    from bayes_ude._batching import batch_map
    assert len(jax.devices()) == 4, jax.devices()

    def loop(x, p):
        def cond(c): return c[1] < 10 * x[0] + 1
        def body(c): return c[0] * p + jnp.sin(c[0]), c[1] + 1.0
        return jax.lax.while_loop(cond, body, (x[1], 0.0))[0]

    xs = jnp.asarray(np.random.default_rng(0).random((37, 2)))
    ref = jax.vmap(loop, in_axes=(0, None))(xs, 0.9)
    for dev in (2, 3, 4):   # 37 members do not divide over 2, 3 or 4 devices: padded
        out = jax.jit(lambda xs, p: batch_map(loop, xs, p, devices=dev, block=4))(xs, 0.9)
        assert out.shape == (37,) and float(jnp.max(jnp.abs(out - ref))) < 1e-13, dev

    # an ensemble over devices: exponential decay, 10 members over 3 devices (padded)
    from bayes_ude import solvers
    ks = jnp.linspace(0.5, 2.0, 10)
    ts = jnp.linspace(0.0, 2.0, 5)
    decay = lambda t, u, k: -k * u
    one = solvers.solve_ensemble(decay, jnp.ones(1), ts, ks, batch_u0=False)
    three = solvers.solve_ensemble(decay, jnp.ones(1), ts, ks, batch_u0=False, devices=3)
    assert three.ys.shape == (10, 5, 1) and bool(three.success.all())
    assert float(jnp.max(jnp.abs(three.ys - one.ys))) < 1e-13
    exact = jnp.exp(-ks[:, None] * ts[None, :])[..., None]
    assert float(jnp.max(jnp.abs(three.ys - exact))) < 1e-5  # rtol 1e-6 (default)

    # a small oral population (13 subjects: padded on 2 and 4 devices), FOCEI
    rng = np.random.default_rng(1)
    rows = []
    for i in range(1, 14):
        ka, cl, v = 1.5 * np.exp(0.3 * rng.normal()), 2.7 * np.exp(0.3 * rng.normal()), 30.0
        rows.append(dict(ID=i, TIME=0.0, DV=".", AMT=320.0, EVID=1, CMT=1))
        for t in (0.5, 1, 2, 4, 8, 12, 24):
            k = cl / v
            c = 320 * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
            rows.append(dict(ID=i, TIME=t, DV=c * (1 + 0.1 * rng.normal()), AMT=".", EVID=0,
                             CMT=2))
    pop = nlme.read_nonmem(pd.DataFrame(rows))
    model = nlme.builtin_model("oral1cmt", pop, "proportional", eta=["ka", "cl"])
    results, fits = {}, {}
    for dev in (1, 2, 4):
        ofv = float(nlme.objective(model, pop, "focei", devices=dev))
        fits[dev] = nlme.fit(model, pop, "focei", devices=dev, progress=False,
                             covariance=dev == 2)
        results[dev] = (ofv, fits[dev].estimates.to_numpy(), fits[dev].minus2ll)
    for dev in (2, 4):
        assert abs(results[dev][0] - results[1][0]) < 1e-10, (dev, results[dev][0], results[1][0])
        assert abs(results[dev][2] - results[1][2]) < 1e-10, dev
        # (measured: identical, since each member has its own copy of the parameters and
        # the members' results are gathered before they are summed; before, each device
        # summed its own members' gradients and BFGS stopped ~4e-9 apart)
        d = np.max(np.abs(results[dev][1] - results[1][1]))
        assert d < 1e-10, (dev, d)
    # diagnostics over the fit's devices: CWRES, NPDE (a key per subject)
    diag = {dev: fits[dev].diagnostics(n_sim=200) for dev in (1, 2, 4)}
    for dev in (2, 4):
        for col in ("PRED", "IPRED", "CWRES", "NPDE"):
            d = np.max(np.abs(diag[dev][col].to_numpy() - diag[1][col].to_numpy()))
            assert d < 1e-8, (dev, col, d)
        # simulation (VPC): each replicate's subjects over the fit's devices, the same keys
        sim = fits[dev].simulate(n=20)
        assert sim.shape == (20, 13, 7)
        assert np.max(np.abs(sim - fits[1].simulate(n=20))) < 1e-8, dev

    # NUTS: the subjects of each chain's log density over the devices (the chains stay on
    # them together). With devices given on a CPU the subjects run in blocks inside a loop
    # (batch_map's isolate), so one device runs exactly what several do: the same draws,
    # to the last bit (NUTS amplifies any difference: without the loop, one device's
    # predictions were 2e-15 apart and its draws others of the same posterior)
    draws = {}
    for dev in (1, 2, 4):
        post = nlme.fit(model, pop, "nuts", devices=dev, num_warmup=10, num_samples=10,
                        num_chains=2, progress=False, key=jax.random.key(5), init=fits[2])
        draws[dev] = post.u_draws
    for dev in (2, 4):
        d = np.max(np.abs(draws[dev] - draws[1]))
        assert d < 1e-10, (dev, d)
    # SGLD: each minibatch's subjects over the devices, the same draws (the FOCEI marginal
    # likelihood's inner Newton loop isolates the subjects' code, as in the fit)
    sg = {dev: nlme.fit(model, pop, "sgld", devices=dev, init=fits[2], num_steps=20,
                        batch_size=5, num_chains=2, progress=False,
                        control_variates=False).u_draws
          for dev in (1, 2, 4)}
    for dev in (2, 4):
        d = np.max(np.abs(sg[dev] - sg[1]))
        assert d == 0.0, (dev, d)  # the minibatch in blocks in a loop (it was 1e-11)

    # a ragged population (subject 5 sampled 47 times, the others 7): two size groups
    # (nlme._buckets), each split over the devices. The objective is the same; the
    # estimates differ (3.7e-10 measured): the groups' gradient sums round differently on
    # 1 device than on several (3e-14 on the gradient at the start), which BFGS carries;
    # the equal-size population above stays exact
    from bayes_ude.nlme import _buckets
    rows = [r for r in rows if r["ID"] != 5]
    rows.append(dict(ID=5, TIME=0.0, DV=".", AMT=320.0, EVID=1, CMT=1))
    for t in np.linspace(0.3, 30.0, 47):
        c = 320 * 1.5 / (30.0 * (1.5 - 0.09)) * (np.exp(-0.09 * t) - np.exp(-1.5 * t))
        rows.append(dict(ID=5, TIME=t, DV=c * (1 + 0.1 * rng.normal()), AMT=".", EVID=0,
                         CMT=2))
    ragged = nlme.read_nonmem(pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable"))
    assert len(_buckets.subject_buckets(ragged).groups) == 2
    rfits = {dev: nlme.fit(model, ragged, "focei", devices=dev, progress=False,
                           covariance=False) for dev in (1, 2, 4)}
    for dev in (2, 4):
        ofv = float(nlme.objective(model, ragged, "focei", devices=dev))
        assert abs(ofv - float(nlme.objective(model, ragged, "focei", devices=1))) < 1e-10
        d = np.max(np.abs(rfits[dev].estimates.to_numpy() - rfits[1].estimates.to_numpy()))
        assert d < 1e-7, (dev, d)
        assert abs(rfits[dev].minus2ll - rfits[1].minus2ll) < 1e-9, dev
    print("ok", {d: r[0] for d, r in results.items()})
""")


def test_sharded_and_unsharded_runs_agree_on_4_cpu_devices():
    """batch_map over 2, 3 and 4 devices (padding when the batch does not divide), an
    ensemble solve over 3 devices against one and the closed form; on 1, 2 and 4 devices
    FOCEI objective, -2LL and estimates, NUTS and SGLD draws (same keys) the same to 1e-10,
    diagnostics (CWRES, NPDE) and simulations to 1e-8; a population in two size groups:
    the objective to 1e-10, the estimates to 1e-7."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", _MULTI], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.startswith("ok")
    # more CPU devices than cores: said once (XLA's gather can then wait forever)
    cores = len(os.sched_getaffinity(0))
    assert (done.stderr.count("CPU devices on") == 1) == (cores < 4), done.stderr[-2000:]


def test_cli_devices_option_is_checked_before_any_work(tmp_path, capsys):
    from bayes_ude.cli import main

    for extra, message in ((["--devices", "x"], "--devices must be 'all' or a count"),
                           (["--devices", "0"], "--devices must be 'all' or a count")):
        with pytest.raises(SystemExit) as err:
            main(["pk", "fit", "theophylline", "--out", str(tmp_path / "out"), *extra])
        assert message in str(err.value.code) + capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["focei", "nuts", "sgld"])
def test_cli_devices_beyond_this_process_is_a_one_line_error(method, tmp_path):
    """Every method takes --devices; more devices than the process has is the command's
    one-line error (not a traceback), before any fitting, and nothing is written."""
    from bayes_ude.cli import main

    with pytest.raises(SystemExit) as err:
        main(["pk", "fit", "theophylline", "--method", method, "--quiet", "--devices",
              str(len(jax.local_devices()) + 1), "--out", str(tmp_path / "out")])
    assert "--devices" in str(err.value.code) and "local device" in str(err.value.code)
    assert not (tmp_path / "out").exists()
