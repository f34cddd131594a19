"""Full-reference baselines: PSNR, SSIM, MS-SSIM, LPIPS v0.1 (AlexNet, VGG16) and DISTS.

Written from the papers and from what the authors' code computes; only constants and facts are carried
over from that code (each is cited where it is used). Every metric scores one value per image, is
differentiable w.r.t. ``dist`` and has a :meth:`~iqa_core.metric.Metric.loss` form.

========== ========================== ===== ================================================
name       paper                      ideal loss()
========== ========================== ===== ================================================
psnr       --                         +inf  MSE (monotone in PSNR, 0 for identical images)
ssim       Wang et al., TIP 2004      1     1 - SSIM
ms-ssim    Wang et al., Asilomar 2003 1     1 - MS-SSIM
lpips-alex Zhang et al., CVPR 2018    0     the score itself
lpips-vgg  Zhang et al., CVPR 2018    0     the score itself
dists      Ding et al., TPAMI 2022    0     the score itself
========== ========================== ===== ================================================

How the numbers relate to the authors' code
-------------------------------------------
* LPIPS and DISTS reproduce the official PyTorch packages (``lpips==0.1.4``, ``DISTS-pytorch==0.1``)
  within 1e-7 relative (float32, CPU; the same on an H100) on the reference pairs of the shared folder
  (tests/test_baselines.py).
* SSIM and MS-SSIM follow Zhou Wang's MATLAB code (``ssim.m`` of 2009 with its automatic
  downsampling, ``msssim.m`` of 2003) step by step, but no MATLAB was run here: they are checked
  against piq 0.8.0 (agreement 1e-6 relative on the TID2013 pair, where piq's average pooling coincides
  with MATLAB's box filter: factor 2, even sides) and therefore compare with official MATLAB values
  only indirectly. Differences that remain by design: the
  luminance is not rounded to 8 bits as MATLAB's ``rgb2gray`` of a uint8 image would be, and the
  computation is in float32 (MATLAB: double).
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from iqa_core.backbones import BACKBONES, LPIPS_SCALE, LPIPS_SHIFT, TapRequirement
from iqa_core.comparators import Comparator, as_channel_map, register_comparator, unit_normalize
from iqa_core.deep_features import Preset, PresetMetric
from iqa_core.metric import Metric, register_metric
from iqa_core.validation import IQAInputError
from iqa_core.weights import InvalidWeightsError, WeightsQuery, WeightsSource, load_weights, read_weights_file

__all__ = [
    "PSNR", "SSIM", "MSSSIM", "LPIPS", "LPIPSAlex", "LPIPSVGG", "DISTS",
    "psnr", "ssim", "ms_ssim", "to_luminance", "matlab_box_downsample", "gaussian_window", "ssim_downsample_factor",
    "load_lpips_heads", "load_dists_alpha_beta", "unit_normalize", "dists_terms",
    "HEADS_SHA256", "lpips_heads_filename", "DISTS_FILENAME",
    "COLOR_MODES", "MS_SSIM_EXPONENTS", "MS_SSIM_WEIGHTS", "LPIPS_SHIFT", "LPIPS_SCALE", "LPIPS_TAPS", "DISTS_TAPS",
    "DISTS_CHANNELS",
]

PAPER_SSIM = ("Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, Image Quality Assessment: From Error "
              "Visibility to Structural Similarity, IEEE TIP 13(4), 2004")
PAPER_MS_SSIM = ("Z. Wang, E. P. Simoncelli, A. C. Bovik, Multiscale Structural Similarity for Image Quality "
                 "Assessment, 37th Asilomar Conference on Signals, Systems and Computers, 2003")
PAPER_LPIPS = ("R. Zhang, P. Isola, A. A. Efros, E. Shechtman, O. Wang, The Unreasonable Effectiveness of Deep "
               "Features as a Perceptual Metric, CVPR 2018")
PAPER_DISTS = ("K. Ding, K. Ma, S. Wang, E. P. Simoncelli, Image Quality Assessment: Unifying Structure and "
               "Texture Similarity, IEEE TPAMI 44(5), 2022 (arXiv 2020)")

# --------------------------------------------------------------------------------------------------
# Colour handling
# --------------------------------------------------------------------------------------------------

#: ``"y"``: BT.601 luma 0.299 R + 0.587 G + 0.114 B in [0, 1] (MATLAB ``rgb2gray`` uses the same
#: weights to four decimals, 0.2989/0.5870/0.1140, and rounds to uint8 for uint8 input; no rounding here).
#: ``"ycbcr"``: the Y of MATLAB ``rgb2ycbcr`` (BT.601 studio swing, 16..235 of 255, divided by 255), the
#: "test_y_channel" convention of super-resolution benchmarks (BasicSR, pyiqa).
#: ``"rgb"``: every channel separately, then the mean over the three (piq's convention for RGB input).
COLOR_MODES = ("y", "ycbcr", "rgb")
_BT601 = (0.299, 0.587, 0.114)
_YCBCR_Y = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)  # MATLAB rgb2ycbcr, Y row, for inputs in [0, 1]


def _check_color(color: str) -> str:
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {COLOR_MODES}, got {color!r}")
    return color


def to_luminance(x: torch.Tensor, color: str = "y") -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) luminance for ``"y"``/``"ycbcr"``; unchanged for ``"rgb"``."""
    _check_color(color)
    if color == "rgb":
        return x
    coeffs = _BT601 if color == "y" else _YCBCR_Y
    w = torch.tensor(coeffs, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    y = (x * w).sum(dim=1, keepdim=True)
    return y + 16.0 / 255.0 if color == "ycbcr" else y


class _NoBackbone(Metric):
    """Shared constructor of the pixel-domain metrics: ``weights=`` is accepted for a uniform signature
    (the CLI passes it when asked) but these metrics have no backbone, so anything but None is an error."""

    requires_same_size = True

    def __init__(self, color: str, weights: WeightsSource = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if weights is not None:
            raise ValueError(f"{self.name} has no backbone; weights= must be None, got {weights!r}")
        self.color = _check_color(color)
        self.set_dtype(dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, color={self.color!r}"


# --------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------

def _mse(dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((dist - ref) ** 2).mean(dim=(1, 2, 3))


def psnr(dist: torch.Tensor, ref: torch.Tensor, color: str = "rgb") -> torch.Tensor:
    """Per-image PSNR in dB for data range 1: 10 log10(1 / MSE), the MSE taken over all pixels and the
    channels of ``color`` (``"rgb"``: all three, as skimage's ``peak_signal_noise_ratio`` and piq do).
    Identical images give +inf (as MATLAB's ``psnr`` and skimage do; no epsilon is added)."""
    return -10.0 * torch.log10(_mse(to_luminance(dist, color), to_luminance(ref, color)))


@register_metric("psnr", description="PSNR in dB (data range 1; RGB MSE, or luminance with color='y')")
class PSNR(_NoBackbone):
    """Peak signal-to-noise ratio, data range 1, one value per image. Higher is better, +inf = identical.

    ``color="rgb"`` (default) takes the MSE over the three channels; ``"y"`` / ``"ycbcr"`` over the
    luminance (see :data:`COLOR_MODES`). :meth:`loss` is the MSE itself: a monotone transform of PSNR
    (PSNR = -10 log10 MSE) that is 0 for identical images and has well-scaled gradients, unlike -PSNR.
    """

    name = "psnr"
    higher_is_better = True
    paper = "peak signal-to-noise ratio (no single paper)"

    def __init__(self, color: str = "rgb", weights: WeightsSource = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(color, weights, dtype)

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return psnr(dist, ref, self.color)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        dist, ref = self.prepare_pair(dist, ref)
        return _mse(to_luminance(dist, self.color), to_luminance(ref, self.color))


# --------------------------------------------------------------------------------------------------
# SSIM and MS-SSIM
# --------------------------------------------------------------------------------------------------

K1, K2 = 0.01, 0.03  # Wang et al. 2004, section III-C; data range L = 1 here
WINDOW_SIZE, WINDOW_SIGMA = 11, 1.5  # circular-symmetric Gaussian window, same section
#: MS-SSIM exponents beta_1..beta_5 (= gamma_j; alpha_M = beta_M), Wang et al. 2003, section 3.2;
#: the ``weight`` vector of the official msssim.m.
MS_SSIM_EXPONENTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WEIGHTS = MS_SSIM_EXPONENTS  # the former name, kept for existing imports


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """1-D normalised Gaussian g; the 2-D window is g g^T = MATLAB ``fspecial('gaussian', size, sigma)``."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of every channel with g g^T (MATLAB ``filter2(w, x, 'valid')``)."""
    c = x.shape[1]
    k = g.shape[0]
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel means of the SSIM map and of the contrast-structure map cs (Wang et al. 2004 eq. 13
    with alpha = beta = gamma = 1 and C3 = C2 / 2; cs is the MS-SSIM c*s term). Returns (B, C) each."""
    c1, c2 = K1**2, K2**2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_xx = _filter_valid(x * x, g) - mu_xx
    sigma_yy = _filter_valid(y * y, g) - mu_yy
    sigma_xy = _filter_valid(x * y, g) - mu_xy
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs
    return ssim_map.mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def _symmetric_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Pad the last two dims by mirroring including the edge sample (MATLAB 'symmetric': d c b a | a b c d)."""
    if before == 0 and after == 0:
        return x
    for dim in (-2, -1):
        n = x.shape[dim]
        idx = torch.arange(-before, n + after, device=x.device)
        idx = torch.where(idx < 0, -idx - 1, idx)
        idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
        if bool((idx < 0).any()) or bool((idx >= n).any()):
            raise ValueError(f"cannot pad a side of {n} samples by {max(before, after)} symmetrically")
        x = x.index_select(dim if dim >= 0 else x.dim() + dim, idx)
    return x


def matlab_box_downsample(x: torch.Tensor, f: int) -> torch.Tensor:
    """MATLAB ``x = imfilter(x, ones(f)/f^2, 'symmetric', 'same'); x = x(1:f:end, 1:f:end)``.

    imfilter anchors an even-sized kernel at index floor((f+1)/2), so output i averages inputs
    i-(c-1) .. i+(f-c) (c that anchor, 1-based), mirrored at the borders; keeping every f-th sample from
    the first gives ceil(n/f) samples per side. For f = 2 and even sides this equals ``avg_pool2d(x, 2)``;
    for odd sides or f >= 3 it does not (plain average pooling drops the last samples and is anchored
    differently). Used by ssim.m (factor f) and between the scales of msssim.m (f = 2).
    """
    if f <= 1:
        return x
    c = (f + 1) // 2
    x = _symmetric_pad(x, c - 1, f - c)
    return F.avg_pool2d(x, kernel_size=f, stride=f)


def ssim_downsample_factor(height: int, width: int) -> int:
    """ssim.m's ``f = max(1, round(min(M, N) / 256))`` with MATLAB rounding (halves away from zero, so
    a 640-pixel side gives f = 3 where Python's round would give 2)."""
    return max(1, int(math.floor(min(height, width) / 256 + 0.5)))


def ssim(dist: torch.Tensor, ref: torch.Tensor, color: str = "y", downsample: bool = True) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al. 2004), images in [0, 1], as Zhou Wang's ``ssim.m`` (2009 version):
    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 1, 'valid' filtering (no padding), mean of
    the SSIM map; with ``downsample`` the images are first box-filtered and subsampled by
    f = max(1, round(min(H, W) / 256)) exactly as ssim.m does (:func:`matlab_box_downsample`).
    ``color`` picks the luminance (default BT.601 luma) or averages the three RGB channels' SSIMs."""
    x, y = to_luminance(dist, color), to_luminance(ref, color)
    if downsample:
        f = ssim_downsample_factor(*x.shape[-2:])
        x, y = matlab_box_downsample(x, f), matlab_box_downsample(y, f)
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise IQAInputError(f"SSIM needs at least {WINDOW_SIZE}x{WINDOW_SIZE} pixels (after downsampling), "
                         f"got {tuple(x.shape[-2:])}")
    ssim_val, _ = _ssim_maps(x, y, gaussian_window(dtype=x.dtype, device=x.device))
    return ssim_val.mean(dim=1)


def ms_ssim(dist: torch.Tensor, ref: torch.Tensor, color: str = "y",
            exponents: Sequence[float] = MS_SSIM_EXPONENTS) -> torch.Tensor:
    """Per-image MS-SSIM (Wang et al. 2003) as the official ``msssim.m``: at scales 1..M the SSIM
    statistics with the ssim window and constants; between scales :func:`matlab_box_downsample` by 2;
    result prod_{j<M} cs_j^w_j * ssim_M^w_M ('product' method) with the per-scale ``exponents`` w (M of them),
    no initial ssim.m downsampling.

    Deviation: cs_j and ssim_M are clamped at 0 before the powers (msssim.m would produce complex numbers
    for negative values; piq clamps the same way). With ``color="rgb"`` each channel's MS-SSIM is computed
    and the three are averaged (piq's convention)."""
    x, y = to_luminance(dist, color), to_luminance(ref, color)
    levels = len(exponents)
    need = (WINDOW_SIZE - 1) * 2 ** (levels - 1) + 1
    if min(x.shape[-2:]) < need:
        raise IQAInputError(f"MS-SSIM with {levels} scales needs at least {need}x{need} pixels, got "
                            f"{tuple(x.shape[-2:])}")
    g = gaussian_window(dtype=x.dtype, device=x.device)
    w = torch.tensor(exponents, dtype=x.dtype, device=x.device)
    result = None
    for level in range(levels):
        if level > 0:
            x, y = matlab_box_downsample(x, 2), matlab_box_downsample(y, 2)
        ssim_val, cs = _ssim_maps(x, y, g)
        term = (ssim_val if level == levels - 1 else cs).clamp_min(0) ** w[level]
        result = term if result is None else result * term
    return result.mean(dim=1)


@register_metric("ssim", description="SSIM (Wang et al. 2004) on BT.601 luma, ssim.m downsampling rule")
class SSIM(_NoBackbone):
    """Mean SSIM per image, as :func:`ssim`. Higher is better, 1 = identical; :meth:`loss` = 1 - SSIM.

    Options: ``color`` (``"y"`` default, ``"ycbcr"``, ``"rgb"``) and ``downsample`` (ssim.m's automatic
    downsampling, default on; off gives the 2004 paper's single-scale SSIM at native resolution)."""

    name = "ssim"
    higher_is_better = True
    paper = PAPER_SSIM
    min_size = WINDOW_SIZE

    def __init__(self, color: str = "y", downsample: bool = True, weights: WeightsSource = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(color, weights, dtype)
        self.downsample = downsample

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return ssim(dist, ref, self.color, self.downsample)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return 1 - self(dist, ref)


@register_metric("ms-ssim", description="MS-SSIM (Wang et al. 2003), 5 scales, on BT.601 luma")
class MSSSIM(_NoBackbone):
    """MS-SSIM per image, as :func:`ms_ssim` with the 5 standard weights. Higher is better, 1 = identical;
    :meth:`loss` = 1 - MS-SSIM. Needs at least 161 x 161 pixels (11-pixel window at the 5th scale)."""

    name = "ms-ssim"
    higher_is_better = True
    paper = PAPER_MS_SSIM
    min_size = (WINDOW_SIZE - 1) * 2 ** (len(MS_SSIM_EXPONENTS) - 1) + 1

    def __init__(self, color: str = "y", weights: WeightsSource = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(color, weights, dtype)

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return ms_ssim(dist, ref, self.color)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return 1 - self(dist, ref)


# --------------------------------------------------------------------------------------------------
# Learned heads: where LPIPS's linear layers and DISTS's alpha/beta come from
# --------------------------------------------------------------------------------------------------

HeadsSource = str | PathLike | Mapping[str, torch.Tensor] | None
#: sha256 of the data files of the official wheels (lpips==0.1.4, DISTS-pytorch==0.1), by the file name they
#: have in $IQA_WEIGHTS_DIR; a file found by the search (not given as heads=) with another digest is used
#: with a warning.
HEADS_SHA256 = {
    "lpips_alex_v0.1.pth": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "lpips_vgg_v0.1.pth": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "dists_alpha_beta.pt": "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
}
#: File name of the DISTS alpha/beta file in $IQA_WEIGHTS_DIR (a copy of DISTS-pytorch==0.1's weights.pt).
DISTS_FILENAME = "dists_alpha_beta.pt"


def lpips_heads_filename(net: str) -> str:
    """File name of the LPIPS v0.1 heads in $IQA_WEIGHTS_DIR: a copy of lpips==0.1.4's weights/v0.1/<net>.pth."""
    return f"lpips_{net}_v0.1.pth"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_state(source: HeadsSource, query: WeightsQuery) -> tuple[Mapping[str, object], str]:
    """(state, origin) of learned head weights: ``heads=`` (a state dict or a file), else the query's search (a file
    it finds whose sha256 is not the official wheel's is used with a warning)."""
    if isinstance(source, Mapping):
        return source, "heads= state dict"
    if source is not None:
        path = query.given_file(source)
        return read_weights_file(path, query.subject), str(path)
    state, path = load_weights(query, lambda found: read_weights_file(found, query.subject))
    expected = HEADS_SHA256.get(query.names[0])
    if expected is not None and _sha256(path) != expected:
        warnings.warn(f"{path}: sha256 differs from the official file ({query.note.rstrip('.')}); using it anyway",
                      stacklevel=3)
    return state, str(path)


def _heads_query(subject: str, filename: str, package: str, parts: tuple[str, ...], pip_name: str,
                 extra_files: tuple[tuple[str, Path], ...] = ()) -> WeightsQuery:
    """Head files: ``$IQA_WEIGHTS_DIR/<filename>`` (a copy of the wheel's data file), then the installed wheel."""
    return WeightsQuery(subject, (filename,), argument="heads", package_file=(package, *parts),
                        extra_files=extra_files, remedy=f"`pip install {pip_name}` (only its data file is used)",
                        note=f"{filename} is a copy of {pip_name}'s {'/'.join(parts)}.")


# --------------------------------------------------------------------------------------------------
# LPIPS v0.1
# --------------------------------------------------------------------------------------------------

#: Backbone taps of the official code (lpips/pretrained_networks.py slices 1..5).
LPIPS_TAPS = {"alex": ("alexnet", BACKBONES["alexnet"].stage_taps), "vgg": ("vgg16", BACKBONES["vgg16"].stage_taps)}
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
LPIPS_EPS = 1e-10  # normalize_tensor's eps in the official code
_LIN_KEY = re.compile(r"^lin(\d+)\.(?:model\.\d+\.)?weight$")


def load_lpips_heads(net: str, heads: HeadsSource = None) -> list[torch.Tensor]:
    """The five LPIPS v0.1 linear heads of ``net`` (``"alex"`` or ``"vgg"``) as (1, C_k, 1, 1) tensors.

    Found in this order: ``heads=`` (file path or state dict with keys ``lin<k>.model.1.weight``, the
    official format, or ``lin<k>.weight``); ``lpips_<net>_v0.1.pth`` in ``$IQA_WEIGHTS_DIR`` or the torch hub
    cache (the search of :mod:`iqa_core.weights`); the data file
    ``lpips/weights/v0.1/<net>.pth`` of an installed ``lpips==0.1.4`` (its code is not imported).
    sha256 of the 0.1.4 files: alex.pth df73285e..., vgg.pth a78928a0... (see tests)."""
    if net not in LPIPS_TAPS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_TAPS)}, got {net!r}")
    query = _heads_query(f"LPIPS v0.1 {net} linear heads", lpips_heads_filename(net), "lpips",
                         ("weights", "v0.1", f"{net}.pth"), "lpips==0.1.4")
    state, origin = _load_state(heads, query)
    found = {}
    for key, value in state.items():
        m = _LIN_KEY.match(key)
        if m and isinstance(value, torch.Tensor):
            found[int(m.group(1))] = value
    channels = LPIPS_CHANNELS[net]
    out = []
    for k, c in enumerate(channels):
        w = found.get(k)
        if w is None or w.numel() != c:
            raise InvalidWeightsError(f"{origin}: LPIPS {net} head lin{k} must hold {c} weights, found "
                                      f"{None if w is None else tuple(w.shape)} (keys: {sorted(state)[:8]})")
        out.append(w.detach().float().reshape(1, c, 1, 1).clone())
    return out


def _as_map(tap: torch.Tensor) -> torch.Tensor:
    """A tap as a (B, C, H, W) map; token (B, T, D) and embedding taps as (B, D, T, 1) / (B, E, 1, 1)."""
    return tap if tap.dim() == 4 else as_channel_map(tap).unsqueeze(-1)


@register_comparator("lpips", "LPIPS v0.1 learned linear heads on unit-normalised channels (VGG16, AlexNet taps)")
class LPIPSHeads(Comparator):
    """LPIPS v0.1 (Zhang et al. 2018) as the official ``lpips.LPIPS(net=..., version='0.1')`` computes it after its
    backbone: each tap divided by its channel-wise L2 norm (+ 1e-10), squared difference, 1x1 linear head
    (non-negative weights, no bias), spatial mean, sum over the taps. The heads exist for the five LPIPS taps of
    VGG16 and AlexNet (``heads=``: see :func:`load_lpips_heads`). Lower is better; the loss is the score."""

    #: backbone -> lpips net name
    NETS = {"vgg16": "vgg", "alexnet": "alex"}

    def __init__(self, heads: HeadsSource = None) -> None:
        super().__init__()
        self.heads_source = heads
        self.n_taps = 0

    def bind(self, backbone: str, taps: Sequence[str]) -> None:
        net = self.NETS.get(backbone)
        if net is None:
            raise KeyError(f"LPIPS heads exist for {sorted(self.NETS)} only, not {backbone!r}")
        head_taps = LPIPS_TAPS[net][1]
        missing = [t for t in taps if t not in head_taps]
        if missing:
            raise KeyError(f"LPIPS has no head for {backbone} tap(s) {missing}; heads exist for {list(head_taps)}")
        heads = load_lpips_heads(net, self.heads_source)
        for k, tap in enumerate(taps):
            self.register_buffer(f"lin{k}", heads[head_taps.index(tap)], persistent=False)
        self.n_taps = len(taps)

    @property
    def heads(self) -> list[torch.Tensor]:
        return [getattr(self, f"lin{k}") for k in range(self.n_taps)]

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [unit_normalize(_as_map(t)) for t in taps]

    def layer_distances(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        """(B, taps): the spatially averaged weighted squared difference of each tap; their sum is the score."""
        per_layer = []
        for fd, fr, w in zip(dist, ref, self.heads, strict=True):
            per_layer.append(F.conv2d((fd - fr) ** 2, w.to(fd.dtype)).mean(dim=(1, 2, 3)))
        return torch.stack(per_layer, dim=1)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return self.layer_distances(dist, ref).sum(dim=1)


class LPIPS(PresetMetric):
    """LPIPS v0.1 (Zhang et al. 2018) with a torchvision AlexNet or VGG16 backbone: the preset of backbone ``alexnet``
    / ``vgg16`` with LPIPS's input scaling (x in [0, 1] -> 2x - 1 -> (x - shift) / scale), the five LPIPS taps
    (AlexNet relu1..relu5, VGG16 relu1_2 .. relu5_3) and the ``lpips`` comparator. Lower is better, 0 = identical;
    :meth:`loss` is the score. Backbone weights from the project's resolver (``weights=``), heads from
    :func:`load_lpips_heads` (``heads=``)."""

    paper = PAPER_LPIPS
    higher_is_better = False
    requires_same_size = True
    net = ""

    def __init__(self, net: str | None = None, weights: WeightsSource = None, heads: HeadsSource = None,
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        net = net or self.net
        if net not in LPIPS_TAPS:
            raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_TAPS)}, got {net!r}")
        super().__init__(weights=weights, dtype=dtype, preset=lpips_preset(net),
                         comparator_options={"heads": heads}, **options)
        self.net = net

    @property
    def heads(self) -> list[torch.Tensor]:
        return self.comparator.heads


def lpips_preset(net: str) -> Preset:
    arch, taps = LPIPS_TAPS[net]
    return Preset(arch, "lpips", taps, backbone_options={"normalize": "lpips"})


@register_metric("lpips-alex", description="LPIPS v0.1 (CVPR 2018), AlexNet backbone, official linear heads")
class LPIPSAlex(LPIPS):
    """LPIPS v0.1 with AlexNet (the authors' recommended "forward metric"). Lower is better."""

    name = "lpips-alex"
    net = "alex"
    preset = lpips_preset("alex")


@register_metric("lpips-vgg", description="LPIPS v0.1 (CVPR 2018), VGG16 backbone, official linear heads")
class LPIPSVGG(LPIPS):
    """LPIPS v0.1 with VGG16 (the authors' recommendation as a training loss). Lower is better."""

    name = "lpips-vgg"
    net = "vgg"
    preset = lpips_preset("vgg")


# --------------------------------------------------------------------------------------------------
# DISTS
# --------------------------------------------------------------------------------------------------

#: Taps of the official DISTS_pt.py: the raw image, then VGG16 (max pools -> L2 pooling) stage outputs.
DISTS_TAPS = BACKBONES["vgg16"].stage_taps
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
DISTS_C1 = DISTS_C2 = 1e-6  # official c1, c2


def load_dists_alpha_beta(heads: HeadsSource = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DISTS's learned alpha and beta, each (1, 1475, 1, 1), as trained by the authors.

    Found in this order: ``heads=`` (file path or state dict with keys ``alpha``, ``beta``);
    ``dists_alpha_beta.pt`` in ``$IQA_WEIGHTS_DIR`` or the torch hub cache (the search of :mod:`iqa_core.weights`);
    the data file ``DISTS_pytorch/weights.pt`` of an installed
    ``DISTS-pytorch==0.1`` (its code is not imported; sha256 f5e65c96...); ``<sys.prefix>/weights.pt``, where
    that wheel also installs it and where its own code loads it from."""
    query = _heads_query("DISTS alpha/beta weights", DISTS_FILENAME, "DISTS_pytorch", ("weights.pt",),
                         "DISTS-pytorch==0.1",
                         extra_files=(("DISTS-pytorch==0.1's install prefix", Path(sys.prefix) / "weights.pt"),))
    state, origin = _load_state(heads, query)
    total = sum(DISTS_CHANNELS)
    out = []
    for key in ("alpha", "beta"):
        value = state.get(key)
        if not isinstance(value, torch.Tensor) or value.numel() != total:
            raise InvalidWeightsError(f"{origin}: DISTS {key!r} must be a tensor of {total} values, found "
                                      f"{None if not isinstance(value, torch.Tensor) else tuple(value.shape)}")
        out.append(value.detach().float().reshape(1, total, 1, 1).clone())
    return out[0], out[1]


def dists_terms(dist_features: list[torch.Tensor], ref_features: list[torch.Tensor],
                c1: float = DISTS_C1, c2: float = DISTS_C2) -> tuple[torch.Tensor, torch.Tensor]:
    """DISTS's per-channel terms over (B, C, H, W) maps, concatenated over the maps: l (mean) and s (structure).

    l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1), s = (2 cov + c2) / (var_x + var_y + c2), statistics over
    each channel's positions (population variances, cov = E[xy] - E[x]E[y], as the official code).
    """
    ls, ss = [], []
    for fx, fy in zip(ref_features, dist_features, strict=True):
        mx = fx.mean(dim=(2, 3), keepdim=True)
        my = fy.mean(dim=(2, 3), keepdim=True)
        vx = ((fx - mx) ** 2).mean(dim=(2, 3))
        vy = ((fy - my) ** 2).mean(dim=(2, 3))
        cov = (fx * fy).mean(dim=(2, 3)) - (mx * my).flatten(2).squeeze(2)
        mx, my = mx.flatten(1), my.flatten(1)
        l_term = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        s_term = (2 * cov + c2) / (vx + vy + c2)
        batch = max(l_term.shape[0], s_term.shape[0])
        ls.append(l_term.expand(batch, -1))
        ss.append(s_term.expand(batch, -1))
    return torch.cat(ls, dim=1), torch.cat(ss, dim=1)


@register_comparator("dists", "DISTS (TPAMI 2020) texture and structure terms with the learned alpha/beta")
class DISTSTerms(Comparator):
    """DISTS (Ding et al.) after its backbone, as the official ``DISTS_pt.py`` of ``DISTS-pytorch==0.1``: per
    channel j of every tap, with global spatial means mu, variances sigma^2 and covariance sigma_xy,
    l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1), s = (2 sigma_xy + c2) / (sigma_x^2 + sigma_y^2 + c2),
    c1 = c2 = 1e-6, and D = 1 - sum_j (alpha_j l_j + beta_j s_j) / sum_j (alpha_j + beta_j). The learned
    alpha/beta (``heads=``, :func:`load_dists_alpha_beta`) belong to the six DISTS taps ``[pixels, relu1_2, relu2_2,
    relu3_3, relu4_3, relu5_3]`` of the L2-pooled VGG16. Lower is better; the loss is the score."""

    requires_same_size = True  # the covariance term pairs the two feature maps position by position
    tap_requirement = TapRequirement(min_positions=2)  # statistics over each channel's positions

    def __init__(self, heads: HeadsSource = None) -> None:
        super().__init__()
        self.heads_source = heads

    def bind(self, backbone: str, taps: Sequence[str]) -> None:
        if backbone != "vgg16-l2pool" or tuple(taps) != ("pixels", *DISTS_TAPS):
            raise KeyError(f"DISTS's alpha/beta belong to the taps {['pixels', *DISTS_TAPS]} of vgg16-l2pool, not "
                           f"{list(taps)} of {backbone!r}; use dists-uniform on other taps")
        alpha, beta = load_dists_alpha_beta(self.heads_source)
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("beta", beta, persistent=False)

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [_as_map(t) for t in taps]

    def similarity_terms(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel structure-of-means l (B, channels) and texture s (B, channels) terms of every tap."""
        return dists_terms(dist, ref)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        l_term, s_term = self.similarity_terms(dist, ref)
        alpha = self.alpha.flatten().to(l_term.dtype)
        beta = self.beta.flatten().to(l_term.dtype)
        total = alpha.sum() + beta.sum()
        return 1 - ((l_term * (alpha / total)).sum(dim=1) + (s_term * (beta / total)).sum(dim=1))


@register_comparator("dists-uniform", "DISTS-style texture + structure terms with uniform weights")
class DISTSUniform(Comparator):
    """1 - mean over every channel of every tap of (l + s) / 2, DISTS's terms (c1 = c2 = 1e-6) with the learned
    alpha/beta replaced by uniform weights, on any taps. Tokens count as channels D at T positions."""

    requires_same_size = False
    tap_requirement = TapRequirement(min_positions=2)  # statistics over positions

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [as_channel_map(t).unsqueeze(-1) for t in taps]  # (B, C, N, 1) for dists_terms

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        l_term, s_term = dists_terms(dist, ref)
        return 1 - (l_term + s_term).mean(1) / 2


@register_metric("dists", description="DISTS (TPAMI 2020): structure and texture similarity of L2-pooled "
                 "VGG16 features, official alpha/beta")
class DISTS(PresetMetric):
    """DISTS (Ding et al.), without resizing: the preset of the L2-pooled VGG16 (ImageNet-normalised input; max
    pools replaced by :class:`~iqa_core.backbones.L2Pool`, the filter of ``np.hanning(5)[1:-1]``), the taps
    ``[pixels, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]`` (``pixels``: the image in [0, 1]) and the ``dists``
    comparator. Lower is better, 0 = identical; :meth:`loss` is the score. The official code resizes nothing unless
    asked (``prepare_image(resize=True)``); neither does this."""

    name = "dists"
    higher_is_better = False
    paper = PAPER_DISTS
    requires_same_size = True
    preset = Preset("vgg16", "dists", ("pixels", *DISTS_TAPS), backbone_options={"l2_pooling": True})

    def __init__(self, weights: WeightsSource = None, heads: HeadsSource = None,
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        super().__init__(weights=weights, dtype=dtype, comparator_options={"heads": heads}, **options)

    @property
    def alpha(self) -> torch.Tensor:
        return self.comparator.alpha

    @property
    def beta(self) -> torch.Tensor:
        return self.comparator.beta

    def similarity_terms(self, dist_features: list[list[torch.Tensor]],
                         ref_features: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel l and s terms (B, 1475) of the prepared features."""
        return self.comparator.similarity_terms(dist_features[0], ref_features[0])


# --------------------------------------------------------------------------------------------------
# FSIM, GMSD, VIF, VSI: piq's implementations (piq==0.8.0), which piq's own tests compare with the
# authors' MATLAB code on the TID2013 pair I01 / i01_01_5 (tests/test_{fsim,gmsd,vif,vsi}.py @ 9948a52).
# --------------------------------------------------------------------------------------------------

class _PiqMetric(Metric):
    """A classical metric computed by piq (data range 1, one value per image)."""

    requires_same_size = True
    piq_function: str = ""
    piq_kwargs: dict[str, Any] = {}

    def __init__(self, weights: WeightsSource = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if weights is not None:
            raise ValueError(f"{self.name} has no backbone; weights= must be None, got {weights!r}")
        self.set_dtype(dtype)

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import piq

        if ref.shape[0] != dist.shape[0]:  # one reference for the batch: piq wants equal shapes
            ref = ref.expand_as(dist)
        return getattr(piq, self.piq_function)(dist, ref, data_range=1.0, reduction="none", **self.piq_kwargs)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        value = self(dist, ref)
        return 1 - value if self.higher_is_better else value


@register_metric("fsim", description="FSIM (Zhang et al. 2011) on luminance, piq's implementation")
class FSIM(_PiqMetric):
    """Feature similarity index on luminance. Higher is better, 1 = identical."""

    name, higher_is_better, piq_function = "fsim", True, "fsim"
    paper = "L. Zhang, L. Zhang, X. Mou, D. Zhang, FSIM, IEEE TIP 20(8), 2011"
    piq_kwargs = {"chromatic": False}
    min_size = 2  # its phase congruency of a 1x1 image is NaN


@register_metric("fsimc", description="FSIMc (Zhang et al. 2011) with chromatic information, piq's implementation")
class FSIMc(FSIM):
    """Feature similarity index with the chromatic term. Higher is better, 1 = identical."""

    name = "fsimc"
    piq_kwargs = {"chromatic": True}


@register_metric("gmsd", description="GMSD (Xue et al. 2014), piq's implementation")
class GMSD(_PiqMetric):
    """Gradient magnitude similarity deviation. Lower is better, 0 = identical."""

    name, higher_is_better, piq_function = "gmsd", False, "gmsd"
    paper = "W. Xue, L. Zhang, X. Mou, A.C. Bovik, GMSD, IEEE TIP 23(2), 2014"


@register_metric("vif", description="VIFp, pixel-domain visual information fidelity (Sheikh & Bovik 2006), piq's")
class VIF(_PiqMetric):
    """Pixel-domain VIF (dist, ref order matters: ``ref`` is the reference). Higher is better."""

    name, higher_is_better, piq_function = "vif", True, "vif_p"
    paper = "H.R. Sheikh, A.C. Bovik, Image information and visual quality, IEEE TIP 15(2), 2006"
    min_size = 41  # four scales of Gaussian windows 17, 9, 5, 3 with downsampling by 2 (piq refuses smaller)


@register_metric("vsi", description="VSI (Zhang et al. 2014), piq's implementation")
class VSI(_PiqMetric):
    """Visual saliency-induced index. Higher is better, 1 = identical."""

    name, higher_is_better, piq_function = "vsi", True, "vsi"
    paper = "L. Zhang, Y. Shen, H. Li, VSI, IEEE TIP 23(10), 2014"
