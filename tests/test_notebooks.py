"""Every notebook runs, at tiny size, so that none can rot; the few whose tiny run still
takes minutes run under ``-m heavy``, and every notebook's use of the package's API (the
names it reaches and the keyword arguments it passes) is checked in the default suite."""

import ast
import importlib
import inspect
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# Notebooks whose tiny run still takes minutes (compilation of stiff or NUTS programs): run
# with `pytest -m heavy`, outside the default suite's time budget.
# Each is a tiny run of a workflow that its own tests cover in full (2-core machine, 2026-12:
# missing_physics 121 s <- tests/ude/test_missing_physics.py, fisher_kpp 116 s <-
# tests/pde/test_fisher_kpp.py, bayesian_ude 116 s <- tests/inference/test_bayesian_ude.py,
# bcrnn 89 s <- tests/crnn/); test_notebook_uses_the_api_as_it_is checks their calls.
HEAVY: set[str] = {"missing_physics", "fisher_kpp", "bayesian_ude", "bcrnn"}
CASES = [pytest.param(p, id=p.stem, marks=[pytest.mark.heavy] if p.stem in HEAVY else [])
         for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", CASES)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("BAYES_UDE_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert os.environ["BAYES_UDE_NOTEBOOK_TINY"] == "1"


def test_notebooks_in_step_with_their_sources():
    """Each notebook's cells are those of its percent-format source in notebooks/src
    (``python notebooks/sync.py`` rewrites them)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "notebooks" / "sync.py"
    spec = importlib.util.spec_from_file_location("notebook_sync", path)
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    assert sync.pairs()
    problems = [p for src, nb in sync.pairs() for p in sync.differences(src, nb)]
    assert not problems, problems


def _api_problems(source: str) -> list[str]:
    """Names of ``bayes_ude`` that ``source`` reaches and that do not exist, and keyword
    arguments that its calls pass and that the called function does not take."""
    tree = ast.parse(source)
    bound: dict[str, object] = {}
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bayes_ude"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                try:
                    bound[alias.asname or alias.name] = getattr(module, alias.name)
                except AttributeError:
                    try:
                        bound[alias.asname or alias.name] = importlib.import_module(
                            f"{node.module}.{alias.name}")
                    except ImportError:
                        problems.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bayes_ude") and alias.asname:
                    bound[alias.asname] = importlib.import_module(alias.name)

    def resolve(expr):
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            owner = resolve(expr.value)
            if owner is None or not (inspect.ismodule(owner) or inspect.isclass(owner)):
                return None
            if not hasattr(owner, expr.attr):
                problems.append(f"{ast.unparse(expr)}: no such name")
                return None
            return getattr(owner, expr.attr)
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            resolve(node)
        if isinstance(node, ast.Call):
            fn = resolve(node.func)
            if fn is None or not callable(fn):
                continue
            try:
                params = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                continue
            if any(p.kind is p.VAR_KEYWORD for p in params):
                continue
            names = {p.name for p in params}
            problems += [f"{ast.unparse(node.func)}(..., {kw.arg}=...): no such argument"
                         for kw in node.keywords if kw.arg and kw.arg not in names]
    return sorted(set(problems))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_the_api_as_it_is(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join("\n".join(line for line in cell.source.splitlines()
                                 if not line.lstrip().startswith(("%", "!")))
                       for cell in nb.cells if cell.cell_type == "code")
    assert _api_problems(source) == []


def test_the_api_check_finds_renamed_names_and_arguments():
    source = ("from bayes_ude import ude, solvers\n"
              "ude.fit(None, None, steps=1, no_such_option=2)\n"
              "solvers.NoSuchSolver()\n")
    assert _api_problems(source) == ["solvers.NoSuchSolver: no such name",
                                     "ude.fit(..., no_such_option=...): no such argument"]
