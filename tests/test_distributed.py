"""One fit as several processes (``jax.distributed``): the same results as one process.

The processes run on this machine (coordinator on 127.0.0.1, one CPU device each, gloo
between them), as they would on several hosts. Each runs ``bayes-ude pk fit`` (FOCEI, in
the process itself through ``cli.main``) and then a short NUTS run through the Python API,
on a tiny simulated oral population; a single process with two CPU devices runs the same
script at the same time. The subjects are split over two devices in both (the FOCEI
objective; each NUTS chain's log density), so the computation is the same program and the
results must agree to the last bit. (One device against several:
``tests/test_batching.py``.)
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayes_ude import _distributed
from bayes_ude.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in (_distributed.ENV_ADDRESS, _distributed.ENV_COUNT, _distributed.ENV_ID)}
    env.update(extra)
    return env


def _tiny_population(path: Path) -> None:
    """7 subjects (an odd number: padded to 8 over two devices), one oral dose each."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(1, 8):
        ka, cl, v = 1.5 * np.exp(0.3 * rng.normal()), 2.7 * np.exp(0.3 * rng.normal()), 30.0
        rows.append(dict(ID=i, TIME=0.0, DV=".", AMT=320.0, EVID=1, CMT=1))
        for t in (0.5, 1, 2, 4, 8, 12, 24):
            k = cl / v
            c = 320 * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
            rows.append(dict(ID=i, TIME=t, DV=round(c * (1 + 0.1 * rng.normal()), 4),
                             AMT=".", EVID=0, CMT=2))
    pd.DataFrame(rows).to_csv(path, index=False)


# argv: CSV, output folder, then any options of the distributed run. The JSON line goes to
# the real stdout: on processes other than 0 the command discards sys.stdout.
_SCRIPT = textwrap.dedent("""
    import json, sys
    from bayes_ude.cli import main

    stdout = sys.stdout
    csv, out = sys.argv[1], sys.argv[2]
    # --max-iter 5: far from converged (a warning on process 0; the others print none),
    # enough to compare 5 BFGS steps and a covariance step
    code = main(["pk", "fit", csv, "--error", "proportional", "--eta", "ka,cl",
                 "--max-iter", "5", "--devices", "all", "--no-plots", "--out", out,
                 "--json", out + ".json", *sys.argv[3:]])

    import jax, numpy as np
    from bayes_ude import nlme

    pop = nlme.read_nonmem(csv)
    model = nlme.builtin_model("oral1cmt", pop, "proportional", eta=["ka", "cl"])
    # as many warmup draws as draws: one compiled chunk program for both. Every gradient
    # gathers the subjects between the processes (gloo), so the trees are kept short: on
    # a busy machine thousands of those exchanges took minutes
    post = nlme.fit(model, pop, "nuts", num_warmup=10, num_samples=10, num_chains=2,
                    max_tree_depth=4, key=jax.random.key(3), progress=False,
                    devices="all")
    draws = {k: np.asarray(v).tolist() for k, v in post.idata.posterior.items()}
    print("RESULT", json.dumps(dict(code=code, process=jax.process_index(),
                                    processes=jax.process_count(),
                                    devices=len(jax.devices()), draws=draws)),
          file=stdout, flush=True)
""")

TIMEOUT_S = 400  # each process; a 2-core machine shared with other jobs


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def _run_all(commands: dict) -> dict:
    """Start every command at once; wait for all (each under TIMEOUT_S)."""
    procs = {name: subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (argv, env) in commands.items()}
    done = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=TIMEOUT_S)
            done[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


@pytest.mark.slow  # three processes compiling a FOCEI fit and NUTS: ~35 s on 2 idle cores
def test_two_processes_give_the_results_of_one(tmp_path):
    """FOCEI (``bayes-ude pk fit``: estimates, SEs, EBEs, OFV, diagnostics) and NUTS
    (draws) on two processes of one CPU device each equal those of one process with two
    CPU devices, exactly; only process 0 writes files and prints; process 1 prints only
    the script's own line."""
    csv = tmp_path / "tiny.csv"
    _tiny_population(csv)
    port = _free_port()
    script = [sys.executable, "-c", _SCRIPT, str(csv)]
    options = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    start = time.perf_counter()
    runs = _run_all({
        "one": (script + [str(tmp_path / "one")],
                _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")),
        # process 0 from options, process 1 from JAX's environment variables
        0: (script + [str(tmp_path / "p0"), *options, "--process-id", "0"],
            _env(XLA_FLAGS="")),
        1: (script + [str(tmp_path / "p1")],
            _env(XLA_FLAGS="", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")),
    })
    seconds = time.perf_counter() - start
    for name, (code, out, err) in runs.items():
        assert code == 0, f"{name}: exit {code}\n{out[-2000:]}\n{err[-4000:]}"
    one, p0, p1 = (_result(runs[k][1]) for k in ("one", 0, 1))
    assert (one["processes"], one["devices"]) == (1, 2)
    assert (p0["process"], p0["processes"], p0["devices"]) == (0, 2, 2)
    assert (p1["process"], p1["processes"], p1["devices"]) == (1, 2, 2)

    # FOCEI: written once, by process 0, and equal to the single process's files
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p1.json").exists()
    ref, got = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "p0"))
    assert got["ofv"] == ref["ofv"] and got["minus2ll"] == ref["minus2ll"]
    for name in ("estimates.csv", "ebe.csv", "diagnostics.csv"):
        a = pd.read_csv(tmp_path / "one" / name)
        b = pd.read_csv(tmp_path / "p0" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    assert np.isfinite(pd.read_csv(tmp_path / "p0" / "estimates.csv")["se"]).all()

    # NUTS: every process runs the chains, each chain's log density with its subjects
    # split over the two processes (devices="all"): each has the single process's draws
    for p in (p0, p1):
        assert p["draws"].keys() == one["draws"].keys()
        for site, values in one["draws"].items():
            np.testing.assert_array_equal(p["draws"][site], values, err_msg=site)

    # what each process printed: process 0 the command's table and its warning;
    # process 1 nothing of the command's (stdout discarded, warnings dropped)
    assert "omega_eta_ka" in runs[0][1] and "did not converge" in runs[0][2]
    # (gloo's own "[Gloo] Rank 1 is connected ..." comes from C++, not through Python)
    assert [line for line in runs[1][1].splitlines()
            if not line.startswith(("RESULT ", "[Gloo]"))] == []
    assert "did not converge" not in runs[1][2] and "warning" not in runs[1][2].lower()
    print(f"two processes and one: {seconds:.1f} s")


def test_a_coordinator_that_cannot_be_reached_is_a_clear_error_within_the_timeout(tmp_path):
    """Process 1 with no coordinator listening, and process 0 whose partner never comes:
    each exits with status 1 and a message naming the address and what to check, a few
    seconds after the 2 s timeout, and writes nothing; so does ``--distributed`` with no
    launcher to read the run from."""
    csv = tmp_path / "tiny.csv"
    _tiny_population(csv)
    # two runs of their own, each with a port nobody else uses: process 1 finds no
    # coordinator, process 0 (which serves one) never sees its process 1
    address = {i: f"127.0.0.1:{_free_port()}" for i in (0, 1)}
    start = time.perf_counter()
    command = [sys.executable, "-m", "bayes_ude.cli", "pk", "fit", str(csv),
               "--coordinator-timeout", "2"]
    runs = _run_all({
        **{i: (command + ["--coordinator", address[i], "--num-processes", "2",
                          "--process-id", str(i), "--out", str(tmp_path / f"o{i}")], _env())
           for i in (0, 1)},
        # --distributed outside srun/mpirun: nothing to read the run from
        "launcher": (command + ["--distributed", "--out", str(tmp_path / "o2")],
                     {k: v for k, v in _env().items()
                      if not k.startswith(("SLURM_", "OMPI_"))}),
    })
    seconds = time.perf_counter() - start
    assert seconds < 60, seconds  # 2 s + starting Python and JAX on a busy machine
    code, out, err = runs.pop("launcher")
    assert code == 1 and "no cluster launcher (srun, mpirun)" in err, (code, out, err[-3000:])
    assert not (tmp_path / "o2").exists()
    for i, (code, out, err) in runs.items():
        assert code == 1, (i, code, out, err[-3000:])
        assert address[i] in err and "within 2 s" in err, err[-3000:]
        assert "process ids 0..1" in err and "firewall" in err
        assert "Check failure" not in err  # not JAX's own abort
        assert not (tmp_path / f"o{i}").exists()
    assert "cannot be reached" in runs[1][2]
    assert "not every process registered" in runs[0][2]


@pytest.mark.parametrize(("options", "message"), [
    (["--num-processes", "2"], "missing the coordinator address"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"], "missing this process's id"),
    (["--coordinator", "host-without-port", "--num-processes", "2", "--process-id", "0"],
     "must be HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "process id must be in 0..1"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"],
     "number of processes must be >= 1"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1",
      "--coordinator-timeout", "0"], "timeout must be > 0"),
])
def test_bad_process_options_fail_before_any_work(tmp_path, capsys, monkeypatch, options,
                                                  message):
    for name in (_distributed.ENV_ADDRESS, _distributed.ENV_COUNT, _distributed.ENV_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as err:
        main(["pk", "fit", "theophylline", "--out", str(tmp_path / "out"), *options])
    assert message in str(err.value.code) + capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_settings_come_from_arguments_then_the_environment(monkeypatch):
    for name in (_distributed.ENV_ADDRESS, _distributed.ENV_COUNT, _distributed.ENV_ID):
        monkeypatch.delenv(name, raising=False)
    assert _distributed.settings() is None  # nothing given: one process
    assert _distributed.settings("h:1", 1, 0) is None  # a run of one: nothing to join
    monkeypatch.setenv(_distributed.ENV_ADDRESS, "10.0.0.1:1234")
    monkeypatch.setenv(_distributed.ENV_COUNT, "4")
    monkeypatch.setenv(_distributed.ENV_ID, "3")
    assert _distributed.settings() == ("10.0.0.1:1234", 4, 3)
    assert _distributed.settings(process_id=2) == ("10.0.0.1:1234", 4, 2)
    monkeypatch.setenv(_distributed.ENV_ID, "three")
    with pytest.raises(_distributed.DistributedError, match="whole number"):
        _distributed.settings()
    # a launcher (srun, mpirun) fills in what is missing: nothing to complain about here
    monkeypatch.delenv(_distributed.ENV_ID)
    assert _distributed.settings(cluster=True) == ("10.0.0.1:1234", 4, None)


def test_joining_after_jax_has_started_is_a_clear_error():
    import jax

    jax.devices()  # started
    with pytest.raises(_distributed.DistributedError, match="before any JAX computation"):
        _distributed.initialize("127.0.0.1:1", 2, 1, timeout=1)
    assert _distributed.is_main_process()
