"""iqa_core.report.markdown_table: the pipe-table writer behind the experiments' Markdown reports."""

import math

import pandas as pd

from iqa_core.report import markdown_table


def test_markdown_table_layout_and_cell_formatting():
    frame = pd.DataFrame({"metric": ["psnr", "dists"], "srcc": [0.91234, math.nan], "n": [3, 4]})
    assert markdown_table(frame) == ("| metric | srcc | n |\n|---|---|---|\n"
                                     "| psnr | 0.91234 | 3 |\n| dists | nan | 4 |")
    fmt = markdown_table(frame, lambda v: "-" if isinstance(v, float) and math.isnan(v) else
                         f"{v:.2f}" if isinstance(v, float) else str(v))
    assert fmt.splitlines()[2:] == ["| psnr | 0.91 | 3 |", "| dists | - | 4 |"]


def test_markdown_table_of_no_rows_keeps_the_header():
    assert markdown_table(pd.DataFrame(columns=["a", "b"])) == "| a | b |\n|---|---|"
