"""The cost factor of the IPRIA 2023 analysis: time and peak memory of a cell on a 512x384 pair.

* **cost** = milliseconds per 512x384 pair (both images through the backbone up to the tap, then the
  comparator) and the peak memory, measured on the machine (:func:`cell_costs`); normalised across the cells
  as c_norm = 1 / (1 + log10(c / c_min)): 1 for the cheapest cell, 1/2 at 10x its cost, 1/3 at 100x.
"""

from __future__ import annotations

import ctypes
import gc
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from iqa_core.deep_features import TapGrid, windowed_taps
from iqa_core.timing import time_ms

__all__ = ["COST_SIZE", "synthetic_pair", "time_ms", "peak_memory_mib", "cell_costs"]

#: (height, width) of the synthetic pair on which costs are measured.
COST_SIZE = (384, 512)


def synthetic_pair(height: int = COST_SIZE[0], width: int = COST_SIZE[1], seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(dist, ref): a seeded smooth random RGB image (noise upsampled from 1/8 size) and a noisy copy, (1,3,H,W)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 8), max(1, width // 8), generator=gen)
    ref = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    dist = (ref + 0.05 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    return dist.to(device), ref.to(device)


_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if not match:
        raise OSError(f"{field} not in {_STATUS}")
    return int(match.group(1))


def _reset_peak_rss() -> int:
    """Give freed heap memory back (glibc malloc_trim), reset the peak RSS (Linux: ``5`` to /proc/self/clear_refs)
    and return the current RSS in KiB. Raises OSError where that is not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_memory_mib(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Peak memory that ``fn()`` adds, in MiB: on CUDA the peak allocation above the allocation before the call
    (``torch.cuda.max_memory_allocated``); on the CPU the peak resident set above the RSS before the call (Linux:
    VmHWM after resetting it through /proc/self/clear_refs); NaN where neither is available. The value returned
    by ``fn`` is kept alive until the peak is read."""
    device = torch.device(device)
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = fn()
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            del result
            return float(peak)
        try:
            base = _reset_peak_rss()
        except OSError:
            return math.nan
        result = fn()
        peak = (_status_kib("VmHWM") - base) / 1024
        del result
        return float(max(peak, 0.0))


def _tap_bytes(outs: list[list[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for window in outs for t in window)


def cell_costs(grid: TapGrid, height: int = COST_SIZE[0], width: int = COST_SIZE[1], repeats: int = 3,
               warmup: int = 1, seed: int = 0, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Cost of every cell of ``grid`` on a synthetic ``height`` x ``width`` pair (:func:`synthetic_pair`).

    Per tap, ``backbone_ms`` = median time of one image's pass up to that tap (windows included); per cell,
    ``compare_ms`` = median time of the comparator on the two images' taps (both ``prepare`` and ``compare``),
    and ``cost_ms = 2 backbone_ms + compare_ms``: the time to score one pair from scratch. ``peak_mib`` = the
    larger of the peak memory of the two passes (:func:`peak_memory_mib`) and the two images' taps plus the
    comparator's peak: what scoring the pair needs above the loaded backbone. Returns one row per cell
    (tap, comparator, cost_ms, backbone_ms, compare_ms, peak_mib)."""
    device = next((p.device for p in grid.backbone.parameters()), torch.device("cpu"))
    dist, ref = synthetic_pair(height, width, seed, device)
    rows = []
    for tap in grid.tap_names:
        cells = [(name, comp) for (t, name), comp in grid.cells.items() if t == tap]
        if cells:
            if progress:
                progress(tap)
            rows += _tap_costs(grid, tap, cells, dist, ref, repeats, warmup, device)
    return pd.DataFrame(rows, columns=["tap", "comparator", "cost_ms", "backbone_ms", "compare_ms", "peak_mib"])


def _tap_costs(grid: TapGrid, tap: str, cells: list[tuple[str, Any]], dist: torch.Tensor, ref: torch.Tensor,
               repeats: int, warmup: int, device: torch.device) -> list[dict[str, Any]]:
    """The rows of :func:`cell_costs` for the cells of one tap."""

    def run(x: torch.Tensor) -> list[list[torch.Tensor]]:
        return windowed_taps(grid.backbone, x, [tap], grid.stride, grid.windows_per_pass)

    backbone_ms = time_ms(lambda: run(dist), repeats, warmup, device)
    peak_passes = peak_memory_mib(lambda: (run(dist), run(ref)), device)
    with torch.no_grad():
        d_outs, r_outs = run(dist), run(ref)
    taps_mib = (_tap_bytes(d_outs) + _tap_bytes(r_outs)) / 2**20
    rows = []
    for name, comp in cells:
        def compare(comp: Any = comp) -> list[torch.Tensor]:
            return [comp(d, r) for d, r in zip(d_outs, r_outs, strict=True)]

        compare_ms = time_ms(compare, repeats, warmup, device)
        peak = max(peak_passes, taps_mib + peak_memory_mib(compare, device))
        rows.append({"tap": tap, "comparator": name, "cost_ms": 2 * backbone_ms + compare_ms,
                     "backbone_ms": backbone_ms, "compare_ms": compare_ms, "peak_mib": peak})
    return rows
