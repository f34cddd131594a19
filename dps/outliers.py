"""Outliers of the IPRIA 2023 analysis: the spectral content of images and how far a metric disagrees on a pair.

* **high-frequency energy share** of an image: luminance Y = 0.299 R + 0.587 G + 0.114 B, mean removed,
  2-D Hann window, power spectrum P = |FFT2|^2 on the frequency grid (cycles/pixel, |f_x|, |f_y| <= 1/2),
  radial frequency rho = sqrt(f_x^2 + f_y^2); share = sum P[rho >= 1/4] / sum P[rho > 0] (the top octave
  below Nyquist and the corners beyond it; the DC bin excluded). Radial octave bands :data:`BAND_EDGES`.
  White noise gives the band-area fraction 1 - pi/16 = 0.80; a flat image 0.
* **disagreement** of a pair, without MOS: the rank error |R(s~) - R(l)| / n among the n aligned pairs of the
  same distortion type (pooled over images; s~ = s for distances, -s for similarities; average ranks for
  ties), in [0, 1); it is large when a content's scores sit too high or too low for their level. With MOS:
  |q - f(s)| / std(q), the absolute residual after the 5-parameter logistic f fitted to the MOS
  (:func:`iqa_core.stats.fit_logistic5`), in MOS standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from iqa_core.stats import fit_logistic5

__all__ = ["HF_CUTOFF", "BAND_EDGES", "luminance", "power_spectrum", "band_energy_shares", "hf_energy_share",
           "rank_disagreement", "logistic_disagreement"]

#: Radial cut-off of the high-frequency band, cycles/pixel (Nyquist is 1/2): the top octave.
HF_CUTOFF = 0.25
#: Radial octave band edges, cycles/pixel; the last edge is the corner of the frequency grid, sqrt(2)/2.
BAND_EDGES = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, math.sqrt(0.5))

def luminance(image: Any) -> np.ndarray:
    """BT.601 luma 0.299 R + 0.587 G + 0.114 B of a (1, 3, H, W) / (3, H, W) tensor or an (H, W, 3) array
    (a 2-D input is taken as the luminance itself), float64 (H, W)."""
    if isinstance(image, torch.Tensor):
        x = image.detach().to("cpu", torch.float64)
        x = x[0] if x.dim() == 4 else x
        if x.dim() == 2:
            return x.numpy()
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        return a
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def power_spectrum(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """(P, rho): the power spectrum |FFT2(w (Y - mean Y))|^2 of the luminance with a 2-D Hann window w, and the
    radial frequency of each bin in cycles/pixel (numpy's FFT layout, DC at [0, 0])."""
    y = luminance(image)
    h, w = y.shape
    window = np.outer(np.hanning(h), np.hanning(w)) if min(h, w) > 2 else np.ones((h, w))
    centred = y - y.mean() if np.ptp(y) > 0 else np.zeros_like(y)  # a flat image has no energy (not round-off)
    power = np.abs(np.fft.fft2(centred * window)) ** 2
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return power, np.sqrt(fx**2 + fy**2)


def band_energy_shares(image: Any, edges: Sequence[float] = BAND_EDGES) -> np.ndarray:
    """Share of the (non-DC) spectral energy in each radial band [edges[k], edges[k+1]) (the last band closed);
    zeros for a flat image."""
    power, rho = power_spectrum(image)
    total = power[rho > 0].sum()
    shares = []
    for k in range(len(edges) - 1):
        upper = rho <= edges[k + 1] if k == len(edges) - 2 else rho < edges[k + 1]
        shares.append(power[(rho >= edges[k]) & upper & (rho > 0)].sum())
    return np.asarray(shares) / total if total > 0 else np.zeros(len(edges) - 1)


def hf_energy_share(image: Any, cutoff: float = HF_CUTOFF) -> float:
    """sum P[rho >= cutoff] / sum P[rho > 0] (see :func:`power_spectrum`); 0 for a flat image."""
    power, rho = power_spectrum(image)
    total = power[rho > 0].sum()
    return float(power[rho >= cutoff].sum() / total) if total > 0 else 0.0


def rank_disagreement(scores: Any, levels: Any, groups: Any, higher_is_better: bool) -> np.ndarray:
    """|R(s~) - R(l)| / n within each group (distortion type) of n pairs: R = average ranks, s~ = s for
    distances, -s for similarities. 0 where the metric orders the pairs exactly as the levels."""
    s = np.asarray(scores, dtype=np.float64) * (-1.0 if higher_is_better else 1.0)
    lv = np.asarray(levels, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    out = np.full(s.shape, np.nan)
    for key in pd.unique(g):
        m = g == key
        out[m] = np.abs(stats.rankdata(s[m]) - stats.rankdata(lv[m])) / m.sum()
    return out


def logistic_disagreement(scores: Any, mos: Any) -> tuple[np.ndarray | None, str]:
    """(|q - f(s)| / std(q), message) with f the 5-parameter logistic fitted to the MOS; (None, reason) when the
    fit fails (the caller reports it)."""
    q = np.asarray(mos, dtype=np.float64)
    fit = fit_logistic5(scores, q)
    if not fit["ok"]:
        return None, fit["message"]
    sd = float(np.std(q))
    return np.abs(q - fit["fitted"]) / (sd if sd > 0 else 1.0), fit["message"]
