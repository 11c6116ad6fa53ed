"""Plain-text tables for the terminal, the one formatter every ``gpsk`` subcommand prints its rows with.

Pure Python (no NumPy import: a NumPy bool is recognised by its type name), so a sub-package's command line uses
it without importing the top-level :mod:`gpsk_materials.cli`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _cell(v: Any) -> str:
    """One cell: booleans as yes/no, floats with 4 decimals, None as ``-``."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def format_table(records: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str]]) -> str:
    """Left-aligned text table of ``records`` (dicts) for ``cols``, a list of (key, header) pairs."""
    rows = [[_cell(r.get(k)) for k, _ in cols] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (_, h) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


__all__ = ["format_table"]
