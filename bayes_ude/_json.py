"""JSON that every reader can parse: non-finite floats written as ``null``."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["json_safe"]


def json_safe(value, where: str = "", replaced: list[str] | None = None):
    """``value`` (dicts, lists, numbers, strings) with every non-finite float replaced by
    ``None`` (JSON has no NaN or Infinity) and numpy scalars made Python ones; the path of
    each replaced number (e.g. ``"theta.tka"``) is appended to ``replaced``."""
    if isinstance(value, Mapping):
        return {k: json_safe(v, f"{where}.{k}" if where else str(k), replaced)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, f"{where}[{i}]", replaced) for i, v in enumerate(value)]
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # a numpy scalar (numpy itself is not imported here)
    if isinstance(value, float) and not math.isfinite(value):
        if replaced is not None:
            replaced.append(f"{where} ({value})")
        return None
    return value
