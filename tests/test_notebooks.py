"""Every notebook runs, at tiny size, so that none can rot."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# Notebooks whose tiny run still takes minutes (compilation of stiff or NUTS programs): run
# with `pytest -m heavy`, outside the default suite's time budget.
HEAVY: set[str] = set()  # none at present (bayesian_ude left in 2026-12: 115 s)
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
