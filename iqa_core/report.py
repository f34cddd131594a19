"""Small writers shared by the experiment scripts' reports."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

__all__ = ["markdown_table"]


def markdown_table(frame: pd.DataFrame, cell: Callable[[object], str] = str) -> str:
    """``frame`` as a GitHub pipe table (header, rule, one line per row; no trailing newline).

    ``cell`` formats each value. Written here rather than with ``DataFrame.to_markdown`` to keep tabulate out of the
    dependencies and the tables free of alignment padding."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
