"""How the data layer names rows, values and observation types in its messages (the
reader's checks, ``_assemble.py``, ``_structural.py``, :class:`._data.Population`): one
spelling everywhere. Imports nothing from the package."""

from __future__ import annotations

import math
from collections.abc import Sequence

# How many rows a message lists before "... (N in all)"; and how many non-numeric cells
# of one column get a line each before they are summarised in one line for the column.
_MAX_ROWS = 10
_MAX_CELLS = 3


def _rows_text(rows: Sequence[int], limit: int = _MAX_ROWS) -> str:
    """``"row 4"``, ``"rows 4, 9, 12"``, ``"rows 4, 9, ... (37 in all)"``."""
    rows = [int(r) for r in rows]
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(map(str, rows[:limit]))
    return f"rows {shown}" + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def _id_value(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _fmt(x: float) -> str:
    return str(_id_value(x)) if math.isfinite(x) else "missing"


def describe_dvids(kinds: dict[int, int]) -> str:
    """``{1: 251, 2: 232}`` as ``"1 (251 observations), 2 (232)"``."""
    parts = [f"{k} ({n} observation{'s' if n != 1 else ''})" if i == 0 else f"{k} ({n})"
             for i, (k, n) in enumerate(kinds.items())]
    return ", ".join(parts)
