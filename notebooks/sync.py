"""Keep each notebook in step with its source in ``notebooks/src`` (jupytext's "percent"
format: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are
commented with ``# ``).

    python notebooks/sync.py            # rewrite the .ipynb cells from the sources
    python notebooks/sync.py --check    # exit 1 if any notebook differs from its source

A cell whose source is unchanged keeps its outputs; new or edited cells have none until
the notebook is executed again. ``tests/test_notebooks.py`` runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def parse(path: Path) -> list[tuple[str, str]]:
    """``[(cell_type, source), ...]`` of a percent-format script."""
    cells: list[tuple[str, list[str]]] = []
    for line in path.read_text().split("\n"):
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, body in cells:
        while body and body[-1] == "":
            body.pop()
        while body and body[0] == "":
            body.pop(0)
        if kind == "markdown":
            body = [ln[2:] if ln.startswith("# ") else ln[1:] if ln.startswith("#") else ln
                    for ln in body]
        out.append((kind, "\n".join(body)))
    return out


def differences(src: Path, notebook: Path) -> list[str]:
    """Human-readable differences between a source and its notebook (empty: in step)."""
    cells = parse(src)
    nb = nbformat.read(notebook, as_version=4)
    problems = []
    if len(cells) != len(nb.cells):
        problems.append(f"{notebook.name}: {len(nb.cells)} cells, its source {len(cells)}")
    for i, ((kind, text), cell) in enumerate(zip(cells, nb.cells, strict=False)):
        if kind != cell.cell_type or text != cell.source:
            problems.append(f"{notebook.name} cell {i}: differs from {src.name}")
    return problems


def update(src: Path, notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    old = {(c.cell_type, c.source): c for c in nb.cells}
    nb.cells = [old.get((kind, text)) or (nbformat.v4.new_code_cell(text) if kind == "code"
                                          else nbformat.v4.new_markdown_cell(text))
                for kind, text in parse(src)]
    nbformat.write(nb, notebook)


def pairs() -> list[tuple[Path, Path]]:
    return [(src, HERE / f"{src.stem}.ipynb") for src in sorted((HERE / "src").glob("*.py"))]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    problems = []
    for src, notebook in pairs():
        if check:
            problems += differences(src, notebook)
        else:
            update(src, notebook)
    print("\n".join(problems) if problems else "notebooks in step with notebooks/src")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
