"""The command's store of traced programs (bayes_ude/_programs.py) and quick compilation
(bayes_ude/_compile.py): a loaded program computes what tracing it afresh computes, any
difference in the call or the run gives another program, and a damaged store falls back
to tracing. References: numpy, and the function run without the store."""

import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import _compile, _programs
from bayes_ude._compile import filter_jit
from bayes_ude._programs import ProgramStore, program_store, run_key


@filter_jit
def _solve(power, a, b):
    # LAPACK (a Cholesky factorisation and triangular solves) and a static argument
    chol = jnp.linalg.cholesky(a)
    return {"x": jax.scipy.linalg.cho_solve((chol, True), b) ** power, "power": power}


def _spd(n, seed=0):
    m = np.random.default_rng(seed).normal(size=(n, n))
    return m @ m.T + n * np.eye(n)


def _reference(power, a, b):
    return np.linalg.solve(a, b) ** power


def test_a_stored_program_is_loaded_and_computes_the_same(tmp_path, monkeypatch):
    a, b = _spd(4), np.arange(4.0)
    with program_store(tmp_path, "run") as store:
        first = _solve(2, jnp.asarray(a), jnp.asarray(b))
        _solve(2, jnp.asarray(a), jnp.asarray(b))  # the same call: the same program
    assert (store.misses, store.hits) == (1, 0)
    assert len(list((tmp_path / "run").glob("*.program"))) == 1
    np.testing.assert_allclose(first["x"], _reference(2, a, b), rtol=1e-12)
    assert first["power"] == 2  # a static output comes back as it was

    # a new process's store: loaded, not traced (tracing is made to fail)
    monkeypatch.setattr(ProgramStore, "_compile", lambda *a, **k: pytest.fail("traced"))
    with program_store(tmp_path, "run") as store:
        second = _solve(2, jnp.asarray(a), jnp.asarray(b))
    assert (store.misses, store.hits) == (0, 1)
    np.testing.assert_array_equal(second["x"], first["x"])
    assert second["power"] == 2


def test_another_call_or_run_is_another_program(tmp_path):
    a, b = _spd(3), np.arange(3.0)
    with program_store(tmp_path, "run") as store:
        _solve(1, a, b)
        other_static = _solve(3, a, b)  # a static argument
        other_shape = _solve(1, _spd(5), np.arange(5.0))  # shapes
        other_dtype = _solve(1, a.astype(np.float32), b.astype(np.float32))  # dtypes
    assert (store.misses, store.hits) == (4, 0)
    np.testing.assert_allclose(other_static["x"], _reference(3, a, b), rtol=1e-12)
    np.testing.assert_allclose(other_shape["x"], _reference(1, _spd(5), np.arange(5.0)),
                               rtol=1e-12)
    assert other_dtype["x"].dtype == np.float32
    with program_store(tmp_path, "another run") as store:
        _solve(1, a, b)
    assert (store.misses, store.hits) == (1, 0)


class _Scaled(eqx.Module):  # a model-like argument: a static field and an array
    power: int = eqx.field(static=True)
    a: jax.Array


@filter_jit
def _solve_module(m, b):
    return jnp.linalg.solve(m.a, b) ** m.power


def test_a_static_field_of_a_module_is_part_of_the_call(tmp_path):
    a, b = _spd(3), np.arange(3.0)
    with program_store(tmp_path, "run") as store:
        x1 = _solve_module(_Scaled(1, a), b)
        x2 = _solve_module(_Scaled(2, a), b)
    assert (store.misses, store.hits) == (2, 0)
    np.testing.assert_allclose(x2, _reference(2, a, b), rtol=1e-12)
    np.testing.assert_allclose(x1, _reference(1, a, b), rtol=1e-12)


def test_a_damaged_program_is_traced_again(tmp_path):
    a, b = _spd(3), np.arange(3.0)
    with program_store(tmp_path, "run"):
        _solve(1, a, b)
    (path,) = (tmp_path / "run").glob("*.program")
    path.write_bytes(path.read_bytes()[:100])  # e.g. a disk filled during a write
    with program_store(tmp_path, "run") as store:
        x = _solve(1, a, b)["x"]
    assert (store.misses, store.hits) == (1, 0)
    np.testing.assert_allclose(x, _reference(1, a, b), rtol=1e-12)
    with program_store(tmp_path, "run") as store:  # and stored again, whole
        _solve(1, a, b)
    assert (store.misses, store.hits) == (0, 1)


def test_no_store_without_a_folder_or_key_and_old_runs_are_pruned(tmp_path, monkeypatch):
    with program_store(None, "run") as store:
        assert store is None and _programs.active_store() is None
    monkeypatch.setattr(_programs, "KEEP_RUNS", 2)
    for k in range(4):
        with program_store(tmp_path, f"run{k}"):
            _solve(1, _spd(2), np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run2", "run3"]


def test_the_run_key_follows_options_and_every_data_byte():
    data = {"dv": np.arange(6.0).reshape(2, 3), "mask": np.ones((2, 3), bool)}
    key = run_key({"method": "focei"}, data)
    assert run_key({"method": "focei"}, data) == key
    assert run_key({"method": "foce"}, data) != key
    changed = dict(data, dv=data["dv"].copy())
    changed["dv"][1, 2] += 1e-12
    assert run_key({"method": "focei"}, changed) != key
    assert run_key({"method": "focei"}, dict(data, dv=data["dv"].reshape(3, 2))) != key


@pytest.fixture
def compile_options(monkeypatch):
    """The XLA options of every program filter_jit compiles from here on, in order."""
    seen = []
    real = _compile.eqx.filter_jit

    def recording(fn, compiler_options=None):
        seen.append(compiler_options)
        return real(fn, compiler_options=compiler_options)

    monkeypatch.setattr(_compile.eqx, "filter_jit", recording)
    return seen


def test_small_inputs_compile_quickly_and_compute_the_same(compile_options):
    seen = compile_options

    @filter_jit(quick_below=10)
    def f(x):
        return jnp.cumsum(jnp.exp(x))

    small, large = np.linspace(0, 1, 10), np.linspace(0, 1, 11)
    np.testing.assert_allclose(f(small), np.cumsum(np.exp(small)), rtol=1e-14)
    np.testing.assert_allclose(f(large), np.cumsum(np.exp(large)), rtol=1e-14)
    if jax.default_backend() == "cpu" and jax.device_count() == 1:
        assert seen[0]["xla_backend_optimization_level"] == 0
        assert "xla_backend_optimization_level" not in seen[1]


def test_the_command_run_again_loads_every_program_and_writes_the_same(tmp_path,
                                                                       monkeypatch):
    from bayes_ude import cli

    monkeypatch.setenv("BAYES_UDE_PROGRAM_STORE", "1")
    # a run key of this test's own (BAYES_UDE_* variables are part of it)
    monkeypatch.setenv("BAYES_UDE_TEST_RUN", str(tmp_path))

    def run(out):
        assert cli.main(["pk", "fit", "theophylline", "--quiet", "--no-plots",
                         "--out", str(tmp_path / out)]) == 0
        return {name: (tmp_path / out / name).read_text()
                for name in ("estimates.csv", "diagnostics.csv", "ebe.csv", "vpc.csv")}

    # the first run compiles the programs run after the fit in a thread of their own,
    # during the fit; the calls after it then find them all (the same keys)
    compiled_by = {}
    compile_program = ProgramStore._compile

    def recording(self, key, fn, *args):
        compiled_by.setdefault(fn.__name__, set()).add(threading.current_thread().name)
        return compile_program(self, key, fn, *args)

    monkeypatch.setattr(ProgramStore, "_compile", recording)
    first = run("first")
    after_fit = ("_residuals", "_npde", "_individual", "_simulate", "_population_pred")
    assert {name: compiled_by.get(name) for name in after_fit} == {
        name: {"bayes-ude-compile-ahead"} for name in after_fit}
    monkeypatch.setattr(ProgramStore, "_compile", lambda *a, **k: pytest.fail("traced"))
    assert run("second") == first
    estimates = {row.split(",")[0]: float(row.split(",")[2])
                 for row in first["estimates.csv"].splitlines()[1:]}
    # nlmixr2's FOCEi of this model, to the digits printed (tests/reference/theoph_nlmixr2.csv)
    for name, value in (("tka", 0.464), ("tcl", 1.01), ("tv", 3.46)):
        assert abs(estimates[name] - value) < 0.006, (name, estimates[name])


def test_an_argument_costly_to_evaluate_vetoes_quick_compilation(compile_options):
    seen = compile_options

    class Model:  # as nlme's PopulationModel says it of an ODE model
        def __init__(self, quick):
            self.compile_quickly = quick

    @filter_jit(quick_below=100)
    def f(model, x):
        return jnp.sum(x ** 2)

    x = np.arange(3.0)
    assert float(f(Model(True), x)) == float(f(Model(False), x)) == 5.0
    if jax.default_backend() == "cpu" and jax.device_count() == 1:
        assert seen[0]["xla_backend_optimization_level"] == 0
        assert "xla_backend_optimization_level" not in seen[1]
    from bayes_ude import nlme

    pop = nlme.load_theophylline_population()
    assert nlme.builtin_model("oral1cmt", pop, "additive").compile_quickly
    # nlme's models say it by their structural model: cheap closed forms, costly ODEs
    assert not nlme.ODEModel.compile_quickly and not nlme.FixedStepODEModel.compile_quickly
