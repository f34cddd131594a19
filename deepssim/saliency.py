"""Graph-Based Visual Saliency (GBVS) for DeepSSIM's saliency calibration.

Harel, Koch & Perona, "Graph-Based Visual Saliency", NIPS 2006.

DeepSSIM's authors made their saliency maps with Jonathan Harel's MATLAB ``gbvs`` package run with its
default parameters (``makeGBVSParams.m``); this module re-implements that pipeline with numpy/scipy.
The defaults reproduced here are:

* ``salmapmaxsize = 32``: feature maps live on a grid whose longer side is 32 nodes;
* ``channels = 'DIO'``: DKL colour (luminance + two chromatic axes), intensity (max of R, G, B) and
  orientation (Gabor energy at ``gaborangles = [0 45 90 135]``, stddev 2, elongation 2, period pi);
* ``levels = [2 3 4]``: feature maps taken at 1/4, 1/8 and 1/16 of the input resolution, built by the
  package's 6-tap ``[1 5 10 10 5 1]`` decimation pyramid, then resized (bicubic) to the node grid;
* activation (``activationType = 1``): a Markov chain on the fully connected node graph, edge
  weight ``|M(i) - M(j)| * exp(-d(i, j)^2 / (2 sigma^2))`` with ``sigma = sigma_frac_act * mean(grid
  size)``, ``sigma_frac_act = 0.15``, ``multilevels = []`` (one lattice); its equilibrium distribution
  is found by power iteration from the uniform vector until the step is below ``tol = 1e-4``;
* normalisation (``normalizationType = 1``, the package default): each activation map is raised to
  the power 1.5 (the graph-based normalisation with ``sigma_frac_norm = 0.06`` is only ``type 2``);
* channel maps are summed with unit weights, borders attenuated (4 nodes), rescaled to [0, 1],
  blurred with a Gaussian of ``blurfrac = 0.02`` times the grid's longer side, rescaled again, then
  resized (bicubic) to the input size and rescaled to [0, 1] (the package's ``master_map_resized``).

Where the package's defaults differ from the paper's description they are followed, because they
made the authors' maps: dissimilarity ``|M(i) - M(j)|`` (the paper also gives ``|log(M(i)/M(j))|``)
and power-law rather than graph-based normalisation.  Resizing follows MATLAB's ``imresize`` (Keys
cubic, ``a = -0.5``, antialiased when shrinking, mirrored borders).  The one approximation is the
DKL step's display gamma table, sampled every 16 levels (see ``_GAMMA_RGB``).  On the DeepSSIM demo
pair the maps match the authors' 8-bit maps to within one grey level (Pearson CC > 0.9999).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # scipy is imported where GBVS runs: the package's import stays light
    from scipy import sparse

__all__ = ["gbvs", "saliency_maps", "binarize_saliency", "quantize_8bit"]

# Defaults of makeGBVSParams.m / initGBVS.m.
SALMAP_MAX_SIZE = 32
PYRAMID_LEVELS = (2, 3, 4)
GABOR_ANGLES = (0.0, 45.0, 90.0, 135.0)
GABOR_STDDEV = 2.0
GABOR_ELONGATION = 2.0
GABOR_PERIOD = np.pi
ORIENTATION_BORDER = 13
SIGMA_FRAC_ACT = 0.15
NORMALIZATION_POWER = 1.5
TOLERANCE = 1e-4
MASTER_BORDER = 4
BLUR_FRAC = 0.02
BLUR_NUM_STDS = 2.0

_MAX_POWER_ITERATIONS = 1000
_FLAT_RELATIVE_SPREAD = 1e-9

# RGB -> LMS cone excitations and the adaptation point used by the package's rgb2dkl (constants of
# the DKL conversion in the iLab Neuromorphic Vision toolkit).
_RGB_TO_LMS = np.array([
    [18.32535, 44.60077, 7.46216],
    [4.09544, 28.20135, 6.66066],
    [0.02114, 0.10325, 1.05258],
])
_LMS_ADAPTATION = np.array([34.918538957799996, 19.314796676499999, 0.585610818500000])
_DKL_SCALES = np.array([0.5774, 2.7525, 0.4526])


def _matlab_round(x: float) -> int:
    """Round half away from zero (MATLAB's ``round``) for non-negative ``x``."""
    return int(np.floor(x + 0.5))


def _rescale_to_unit(a: np.ndarray) -> np.ndarray:
    """Min-max rescaling to [0, 1] (MATLAB ``mat2gray``); a constant array maps to zeros."""
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return np.zeros_like(a, dtype=np.float64)
    return (a - lo) / (hi - lo)


# ---------------------------------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------------------------------

def _as_float_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return an (H, W, 3) or (H, W) float64 array in [0, 1] from the accepted input layouts."""
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu")
        t = t.to(torch.float64) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float64)
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"gbvs() takes one image; got a batch of {t.shape[0]}")
            t = t[0]
        if t.dim() == 3:
            if t.shape[0] == 1:
                t = t[0]
            elif t.shape[0] == 3:
                t = t.permute(1, 2, 0)
            else:
                raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        arr = t.numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float64) / 255.0
        else:
            arr = arr.astype(np.float64)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected an HxWx3 or HxW image, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains non-finite values")
    return np.clip(arr, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# Resampling: MATLAB-style bicubic imresize and the package's decimation pyramid
# ---------------------------------------------------------------------------------------------------

def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def _bicubic_resize_matrix(in_len: int, out_len: int) -> np.ndarray:
    """(out_len, in_len) matrix of MATLAB ``imresize`` bicubic weights along one axis."""
    scale = out_len / in_len
    width = 4.0
    if scale < 1.0:  # antialiasing: stretch the kernel when shrinking
        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _keys_cubic(scale * x)
        width /= scale
    else:
        kernel = _keys_cubic
    centres = np.arange(1, out_len + 1) / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coords
    left = np.floor(centres - width / 2.0)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    weights = kernel(centres[:, None] - idx)
    weights /= weights.sum(axis=1, keepdims=True)
    mirrored = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])  # symmetric borders
    src = mirrored[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), src.ravel()), weights.ravel())
    return matrix


def imresize_bicubic(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to ``shape`` like MATLAB ``imresize(a, shape, 'bicubic')``."""
    rows = _bicubic_resize_matrix(a.shape[0], int(shape[0]))
    cols = _bicubic_resize_matrix(a.shape[1], int(shape[1]))
    return rows @ a @ cols.T


@lru_cache(maxsize=64)
def _decimation_matrix(in_len: int) -> sparse.csr_matrix:
    """(in_len // 2, in_len) matrix of the ``[1 5 10 10 5 1]`` low-pass-and-halve filter.

    Output ``k`` is centred between inputs ``2k`` and ``2k + 1``; taps falling outside the signal are
    dropped and the rest renormalised, which reproduces the package's special border kernels.
    """
    taps = np.array([1.0, 5.0, 10.0, 10.0, 5.0, 1.0])
    out_len = max(in_len // 2, 1)
    matrix = np.zeros((out_len, in_len))
    for k in range(out_len):
        positions = 2 * k - 2 + np.arange(6)
        inside = (positions >= 0) & (positions < in_len)
        matrix[k, positions[inside]] = taps[inside] / taps[inside].sum()
    from scipy import sparse

    return sparse.csr_matrix(matrix)


def pyramid_downsample(a: np.ndarray) -> np.ndarray:
    """One pyramid step (the package's ``mySubsample``); maps of side <= 10 are returned unchanged."""
    if min(a.shape) <= 10:
        return a.copy()
    rows = _decimation_matrix(a.shape[0]) @ a
    return np.asarray((_decimation_matrix(a.shape[1]) @ rows.T).T)


def _attenuate_borders(a: np.ndarray, border: int) -> np.ndarray:
    """Linearly fade the outer ``border`` rows/columns towards zero (``attenuateBordersGBVS``)."""
    border = min(border, a.shape[0] // 2, a.shape[1] // 2)
    if border < 1:
        return a.copy()
    ramp = np.ones(a.shape[0]), np.ones(a.shape[1])
    coeffs = np.arange(1, border + 1) / (border + 1.0)
    for r in ramp:
        r[:border] *= coeffs
        r[len(r) - border:] *= coeffs[::-1]
    return a * ramp[0][:, None] * ramp[1][None, :]


# ---------------------------------------------------------------------------------------------------
# Feature channels
# ---------------------------------------------------------------------------------------------------

# Linear light of the calibrated display assumed by the package's DKL conversion: its 256-entry R, G, B
# gamma table sampled every 16 levels (plus level 255) and linearly interpolated in between
# (max. deviation from the full table 0.009; the saliency maps it gives correlate > 0.9999 with the
# full-table ones).
_GAMMA_KNOTS = np.array([0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 255.0])
_GAMMA_RGB = np.array([
    [0.024935, 0.026234, 0.029312, 0.036312, 0.056636, 0.091558, 0.1387, 0.20636, 0.29403,
     0.3926, 0.49286, 0.57675, 0.65364, 0.71948, 0.79351, 0.88961, 1.0],
    [0.0076954, 0.0090581, 0.012373, 0.020369, 0.044409, 0.082766, 0.13499, 0.20729, 0.2998,
     0.4024, 0.501, 0.58998, 0.66533, 0.73226, 0.8024, 0.89178, 1.0],
    [0.042291, 0.043502, 0.046938, 0.056652, 0.083546, 0.12225, 0.17819, 0.25286, 0.34515,
     0.44031, 0.52863, 0.60639, 0.67687, 0.74229, 0.81652, 0.90198, 1.0],
])


def _display_gamma(levels: np.ndarray) -> np.ndarray:
    """Per-channel display linear light for (..., 3) 8-bit ``levels`` (0-255)."""
    return np.stack([np.interp(levels[..., c], _GAMMA_KNOTS, _GAMMA_RGB[c]) for c in range(3)], axis=-1)


def dkl_opponent_maps(rgb: np.ndarray) -> list[np.ndarray]:
    """DKL (Derrington-Krauskopf-Lennie) luminance, L-M and S-(L+M) maps of an (H, W, 3) image.

    As in the package, colours are quantised to 8 bits (``ceil(255 v)``, 1-based table index) before
    the display's gamma is applied; RGB -> LMS -> DKL then uses the package's constants.
    """
    levels = np.clip(np.ceil(rgb * 255.0), 1, 256) - 1.0
    linear = _display_gamma(levels)
    lms = linear @ _RGB_TO_LMS.T - _LMS_ADAPTATION
    l0, m0, s0 = _LMS_ADAPTATION
    fac = 1.0 / (l0 + m0)
    lms_to_dkl = np.array([
        [np.sqrt(3.0) * fac, np.sqrt(3.0) * fac, 0.0],
        [np.hypot(l0, m0) / l0 * fac, -np.hypot(l0, m0) / m0 * fac, 0.0],
        [-fac, -fac, (l0 + m0) / s0 * fac],
    ])
    dkl = (lms @ lms_to_dkl.T) * _DKL_SCALES
    return [dkl[..., i] for i in range(3)]


@lru_cache(maxsize=16)
def gabor_kernel(angle_deg: float, phase_deg: float) -> np.ndarray:
    """Zero-mean, unit-norm Gabor filter of the package's defaults (stddev 2, elongation 2, period pi).

    The carrier runs along ``y cos(theta) - x sin(theta)`` with Gaussian stddev 2 across the stripes
    and 4 along them; the half-size is ``ceil(4 sqrt(10))`` = 13 pixels.
    """
    sd_across = GABOR_STDDEV
    sd_along = GABOR_STDDEV * GABOR_ELONGATION
    half = int(np.ceil(max(sd_across, sd_along) * np.sqrt(10.0)))
    theta = np.deg2rad(angle_deg)
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    across = y * np.cos(theta) - x * np.sin(theta)
    along = -y * np.sin(theta) - x * np.cos(theta)
    envelope = np.exp(-across**2 / (2 * sd_across**2) - along**2 / (2 * sd_along**2))
    g = np.cos(2 * np.pi / GABOR_PERIOD * across + np.deg2rad(phase_deg)) * envelope
    g -= g.mean()
    return g / np.sqrt(np.sum(g**2))


def _convolve_replicate(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same'-size 2-D convolution with replicated borders (the package's ``myconv2``)."""
    pr, pc = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(a, ((pr, pr), (pc, pc)), mode="edge")
    from scipy import signal

    return signal.fftconvolve(padded, kernel, mode="valid")


def gabor_energy_map(intensity: np.ndarray, angle_deg: float) -> np.ndarray:
    """Orientation feature: ``|even| + |odd|`` Gabor responses, borders attenuated over 13 pixels."""
    even = _convolve_replicate(intensity, gabor_kernel(angle_deg, 0.0))
    odd = _convolve_replicate(intensity, gabor_kernel(angle_deg, 90.0))
    return _attenuate_borders(np.abs(even) + np.abs(odd), ORIENTATION_BORDER)


def _pyramid(a: np.ndarray, top_level: int) -> dict[int, np.ndarray]:
    """Levels 1..top_level of the decimation pyramid (level n is 2^-n of the input size)."""
    levels = {1: pyramid_downsample(a)}
    for n in range(2, top_level + 1):
        levels[n] = pyramid_downsample(levels[n - 1])
    return levels


def _usable_levels(shape: tuple[int, int]) -> list[int]:
    """Pyramid levels of ``PYRAMID_LEVELS`` kept after the package's minimum-size (3 px) pruning."""
    h, w = shape
    kept = []
    for n in range(1, max(PYRAMID_LEVELS) + 1):
        h, w = (h // 2, w // 2) if min(h, w) > 10 else (h, w)
        if n in PYRAMID_LEVELS:
            kept.append(n)
        if min(h, w) < 3 and n >= 2:
            break
    return kept


def feature_maps(image: np.ndarray, grid: tuple[int, int]) -> dict[str, list[np.ndarray]]:
    """Raw D, I and O feature maps at pyramid levels 2-4, each resized (bicubic) to ``grid``."""
    colour = image.ndim == 3
    intensity = image.max(axis=2) if colour else image
    levels = _usable_levels(intensity.shape)
    top = max(levels)
    int_pyr = _pyramid(intensity, top)
    rgb_pyr = [_pyramid(image[..., c], top) for c in range(3)] if colour else None

    maps: dict[str, list[np.ndarray]] = {"dkl": [], "intensity": [], "orientation": []}
    for n in levels:
        if rgb_pyr is not None:
            rgb = np.stack([p[n] for p in rgb_pyr], axis=-1)
            maps["dkl"].extend(dkl_opponent_maps(rgb))
        maps["intensity"].append(int_pyr[n])
        maps["orientation"].extend(gabor_energy_map(int_pyr[n], a) for a in GABOR_ANGLES)
    return {name: [imresize_bicubic(m, grid) for m in ms] for name, ms in maps.items() if ms}


# ---------------------------------------------------------------------------------------------------
# Graph-based activation and normalisation
# ---------------------------------------------------------------------------------------------------

def saliency_grid_size(shape: tuple[int, int]) -> tuple[int, int]:
    """Node-grid size: the image scaled so its longer side is ``salmapmaxsize`` (initGBVS.m)."""
    scale = SALMAP_MAX_SIZE / max(shape)
    return max(_matlab_round(shape[0] * scale), 1), max(_matlab_round(shape[1] * scale), 1)


@lru_cache(maxsize=16)
def _distance_falloff(grid: tuple[int, int], sigma_frac: float) -> np.ndarray:
    """``exp(-d^2 / (2 sigma^2))`` between all node pairs, ``sigma = sigma_frac * mean(grid)``."""
    rows, cols = np.indices(grid)
    pos = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    sq_dist = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(axis=-1)
    sigma = sigma_frac * float(np.mean(grid))
    return np.exp(-sq_dist / (2.0 * sigma**2))


def stationary_distribution(transition: np.ndarray, tol: float = TOLERANCE,
                            max_iterations: int = _MAX_POWER_ITERATIONS) -> np.ndarray:
    """Equilibrium of a column-stochastic matrix by power iteration from the uniform vector.

    Stops once the Euclidean step ``||v_{k+1} - v_k||`` is at most ``tol``
    (``principalEigenvectorRaw.m``), then normalises to unit sum.  A chain that has not converged
    after ``max_iterations`` steps (a periodic one, e.g. a two-valued map's bipartite graph) gets the
    mean of its last two iterates.
    """
    v = np.full(transition.shape[0], 1.0 / transition.shape[0])
    for _ in range(max_iterations):
        nxt = transition @ v
        step = np.linalg.norm(nxt - v)
        prev, v = v, nxt
        if step <= tol:
            return v / v.sum()
    v = 0.5 * (v + prev)
    return v / v.sum()


def _is_flat(feature: np.ndarray) -> bool:
    """True when a map's spread is zero or only floating-point noise relative to its magnitude."""
    spread = float(feature.max() - feature.min())
    return spread <= _FLAT_RELATIVE_SPREAD * float(np.abs(feature).max())


def markov_activation(feature: np.ndarray, sigma_frac: float = SIGMA_FRAC_ACT) -> np.ndarray:
    """GBVS activation map: equilibrium mass of the dissimilarity-weighted random walk on the nodes.

    The feature map is first rescaled to [0, 1]; the edge ``j -> i`` weighs
    ``|M(i) - M(j)| * exp(-d(i, j)^2 / (2 sigma^2))``, and outgoing weights are normalised to sum to
    one.  A flat map has no edges; its activation is then uniform (as the package ends up).
    """
    if _is_flat(feature):
        return np.full(feature.shape, 1.0 / feature.size)
    values = _rescale_to_unit(feature).ravel()
    weights = _distance_falloff(feature.shape, sigma_frac) * np.abs(values[:, None] - values[None, :])
    return stationary_distribution(weights / weights.sum(axis=0)).reshape(feature.shape)


def normalize_activation(activation: np.ndarray) -> np.ndarray:
    """Default GBVS normalisation (``normalizationType = 1``): raise the map to the power 1.5."""
    return activation**NORMALIZATION_POWER


# ---------------------------------------------------------------------------------------------------
# Combination and output
# ---------------------------------------------------------------------------------------------------

def _gaussian_taps(std: float, num_stds: float = BLUR_NUM_STDS) -> np.ndarray:
    """Normalised Gaussian taps over ``+-round(num_stds * std)`` (the package's ``mygausskernel``)."""
    half = _matlab_round(std * num_stds)
    x = np.arange(-half, half + 1, dtype=np.float64)
    taps = np.exp(-x**2 / (2.0 * std**2))
    return taps / taps.sum()


def _final_blur(master: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur, stddev ``blurfrac`` times the grid's longer side, replicated borders."""
    taps = _gaussian_taps(max(master.shape) * BLUR_FRAC)
    from scipy import ndimage

    blurred = ndimage.correlate1d(master, taps, axis=0, mode="nearest")
    return ndimage.correlate1d(blurred, taps, axis=1, mode="nearest")


def gbvs_grid_map(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """GBVS master map on the node grid (``out.master_map``), in [0, 1]."""
    img = _as_float_image(image)
    grid = saliency_grid_size(img.shape[:2])
    master = np.zeros(grid)
    for maps in feature_maps(img, grid).values():
        for m in maps:
            master += normalize_activation(markov_activation(m))
    master = _rescale_to_unit(_attenuate_borders(master, MASTER_BORDER))
    if BLUR_FRAC > 0:
        master = _rescale_to_unit(_final_blur(master))
    return master


def gbvs(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """GBVS saliency map of one image at the input resolution (``out.master_map_resized``).

    Args:
        image: HxWx3 (or HxW) uint8 or float array in [0, 1], or a torch tensor (3, H, W) or
            (1, 3, H, W) in [0, 1].

    Returns:
        HxW float64 map in [0, 1].
    """
    img = _as_float_image(image)
    master = gbvs_grid_map(img)
    return _rescale_to_unit(imresize_bicubic(master, img.shape[:2]))


def saliency_maps(images: torch.Tensor) -> torch.Tensor:
    """GBVS maps of a batch: (B, 3, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1], same device and dtype.

    Computed on the CPU with numpy, one image at a time.
    """
    if images.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    maps = [torch.from_numpy(gbvs(img)) for img in images.detach().cpu()]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    return torch.stack(maps).unsqueeze(1).to(device=images.device, dtype=dtype)


def quantize_8bit(maps: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] maps to the 256 levels of an 8-bit file (``round(255 m) / 255``).

    The authors binarised maps read back from 8-bit PNGs, where values below 0.5/255 became 0;
    quantising before :func:`binarize_saliency` reproduces their masks from :func:`saliency_maps`.
    """
    return torch.round(maps.clamp(0, 1) * 255.0) / 255.0


def binarize_saliency(maps: torch.Tensor | np.ndarray, threshold: float = 0.0) -> torch.Tensor:
    """Binary saliency mask: 1 where ``map > threshold``, else 0 (DeepSSIM's rule with threshold 0).

    Maps read from the authors' 8-bit files should be divided by 255 first; maps computed here should
    go through :func:`quantize_8bit` first to match masks made from 8-bit files.
    """
    t = torch.as_tensor(maps)
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return (t > threshold).to(dtype)
