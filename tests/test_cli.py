"""The `bayes-ude` command: the demo fit against the Stan case study's published posterior."""

import os
import subprocess
import sys

import pytest

from bayes_ude import cli


@pytest.mark.slow
def test_demo_matches_stan_case_study(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "RMSE" in printed
    assert (tmp_path / "lynx_hare_fit.png").stat().st_size > 10_000
    table = dict(line.split(",") for line in
                 (tmp_path / "lynx_hare_map.csv").read_text().splitlines()[1:])
    # Posterior means of the Stan case study (Carpenter, "Predator-Prey Population
    # Dynamics"): alpha 0.55, beta 0.028, gamma 0.80, delta 0.024. The MAP of this
    # well-identified model lies within 10 % of them.
    for name, stan in (("alpha", 0.55), ("beta", 0.028), ("gamma", 0.80), ("delta", 0.024)):
        assert abs(float(table[name]) / stan - 1) < 0.10, (name, table[name])
    assert table["converged"] == "True"


def test_datasets_command(capsys):
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "theophylline (NONMEM)" in out and "144 rows" in out
    assert "phenobarbital           744 rows" in out  # `pk fit phenobarbital` takes it


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "bayes_ude.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "demo" in out


def test_the_program_exits_at_once_with_its_output_and_exit_handlers():
    # run(): main(), the atexit handlers, a flush, os._exit (no clean-up of the modules)
    script = ("import atexit, sys\n"
              "from bayes_ude import cli\n"
              "atexit.register(lambda: print('exit handler ran'))\n"
              "cli.main = lambda: print('the output') or 3\n"
              "cli.run()\n"
              "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["the output", "exit handler ran"]


def test_a_reader_that_stops_early_ends_the_program_quietly():
    # as `bayes-ude datasets | head -1`: the pipe closed after the first line
    # (unbuffered: the first line written meets the closed pipe)
    reader = subprocess.Popen([sys.executable, "-m", "bayes_ude.cli", "datasets"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reader.stdout.close()
    assert reader.wait(timeout=120) == 141
    assert reader.stderr.read() == b""


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit-everything"])
    assert exc.value.code == 2


def test_pk_fit_help_says_the_folder_is_replaced(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["pk", "fit", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "replaced as a whole" in text and "--allow-degenerate" in text


def test_ctrl_c_outside_a_fit_exits_130_without_traceback(monkeypatch, tmp_path, capsys):
    def interrupted(out, quiet=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_lynx_hare_map", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "bayes-ude: interrupted\n"
