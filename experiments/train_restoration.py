"""Perceptual optimisation: train small restoration networks with each metric as the loss, compare them on every metric.

    python experiments/train_restoration.py --task sr4        # x4 super-resolution, about 20 min on a 2-core CPU
    python experiments/train_restoration.py --task denoise    # denoising at sigma 25, about 15 min
    python experiments/train_restoration.py --task sr4 --train-dir DIV2K/DIV2K_train_HR --device cuda --steps 20000
    python experiments/train_restoration.py --task sr4 --losses l1,deepssim-lite+l1 --quick

One network per training loss, everything else identical: the same initial weights (seeded), the same patches in
the same order (patch k of every run is drawn from a generator seeded with (seed, k), so it does not depend on
which loss is trained or on an interruption), the same noise, optimiser (Adam, linear warm-up then cosine decay)
and number of steps. The networks are residual on top of the untrained baseline with a zero-initialised last
layer, so every run starts exactly at the baseline:

- sr4: an ESPCN-size network on the low-resolution image (5x5 conv 64, 3x3 conv 32, 3x3 conv 48, pixel shuffle
  x4, tanh between), added to the bicubic upsampling; low-resolution patches are antialiased bicubic x1/4
  downscales of the high-resolution ones. Baseline: bicubic upsampling.
- denoise: a DnCNN-style residual denoiser (8 conv layers of 32 channels, ReLU, no batch normalisation; the paper's
  has 17 x 64) predicting the noise, output = noisy - net(noisy); Gaussian noise sigma 25/255, the noisy image
  clipped to [0, 1] as a stored image would be. Baseline: the noisy input.

Training losses: l1, mse, and the ``loss()`` of registered metrics (ssim, ms-ssim, lpips-vgg, dists, deepwsd-vgg16,
deepssim-lite, ...); ``a+b`` sums two per-image losses with weight 1 each (deepssim-lite+l1). SSIM and MS-SSIM are
trained on the three RGB channels (``color="rgb"``; the registered default, luma only, would leave the colour
unconstrained) and evaluated with their registered defaults. MS-SSIM needs 161-pixel patches for its five scales;
on smaller patches (--quick) it keeps the scales that fit, exponents renormalised, and says so. Network outputs are
clamped to [0, 1], which the metrics' range check requires; the gradient is zero where the clamp acts (a
straight-through clamp, tried first, let the SSIM- and DeepSSIM-Lite-trained denoisers drift into saturation). A loss
that cannot be built (missing weights), has no loss form, is not differentiable or cannot run on the patches is
skipped with a printed line and listed in skipped.csv and metrics.md.

Evaluation: the held-out images (by default the bundled chelsea and coffee, never used for training) are degraded
the same way and restored by every network; every registered metric whose weights resolve scores each output
against the clean image (plus l1, the mean absolute error), as does each network's own training loss, against the
untrained baseline.

Outputs in results/train_restoration/<task>/: metrics.csv and metrics.md (rows: training loss, columns: evaluation
metric; means over the held-out images), own_loss.csv (each network's own training loss on the held-out images
against the baseline's), scores.csv and scores.errors.csv (the store of the scoring engine, iqa_core.engine, which
runs the evaluation: every score keyed by metric, options, weights digest, precision, row, its fingerprint and
image, so a rerun only computes what is missing; the outputs a metric refused, and that metric is skipped),
loss_curves.png with loss_curves.csv (per-step training loss) and monitor.csv (the loss on a fixed batch of training
patches every few steps), crops.png with crops.csv (the same regions for every loss, the baseline and the ground
truth), skipped.csv, and checkpoints/<loss>.pt (model, optimiser, step, history) written every --checkpoint-every
steps and at the end: a rerun resumes each loss from its last checkpoint and skips finished ones.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core import (  # noqa: E402
    IQAInputError,
    WeightsNotFoundError,
    create_metric,
    list_metrics,
    load_image,
    metric_info,
)
from iqa_core.baselines import MS_SSIM_EXPONENTS, WINDOW_SIZE, ms_ssim  # noqa: E402
from iqa_core.cli import device_argument, run_main  # noqa: E402
from iqa_core.engine import (  # noqa: E402
    MetricScorer,
    Pair,
    PairSource,
    Scorer,
    current_errors,
    current_scores,
    group_by_reference,
    score_pairs,
)
from iqa_core.metric import Metric, create_available_metrics  # noqa: E402
from iqa_core.samples import sample_images, shrink  # noqa: E402
from iqa_core.store import MetricKey, errors_path, options_text  # noqa: E402
from iqa_core.weights import read_state_file  # noqa: E402

LOSSES = ("l1", "mse", "ssim", "ms-ssim", "lpips-vgg", "dists", "deepwsd-vgg16", "deepssim-lite", "deepssim-lite+l1")
HELD_OUT = ("chelsea", "coffee")
#: Column order of the evaluation tables (metrics not listed here follow, sorted).
METRIC_ORDER = ("psnr", "l1", "ssim", "ms-ssim", "fsim", "fsimc", "gmsd", "vif", "vsi", "lpips-alex", "lpips-vgg",
                "dists", "deepssim", "deepssim-sc", "deepssim-lite", "deepwsd-vgg16", "deepjsd-vgg16",
                "deepskld-vgg16", "deepwsd-alexnet", "deepjsd-alexnet", "deepskld-alexnet")
#: The columns of the first (headline) table of metrics.md: the metric of each training loss, the paper's DeepSSIM,
#: and three that no network was trained on (FSIM, LPIPS-AlexNet, DeepWSD on AlexNet). The full table follows it.
HEADLINE_METRICS = ("psnr", "l1", "ssim", "ms-ssim", "fsim", "lpips-alex", "lpips-vgg", "dists", "deepssim",
                    "deepssim-lite", "deepwsd-vgg16", "deepwsd-alexnet")
QUICK_EVAL_METRICS = ("psnr", "ssim", "lpips-vgg", "dists", "deepssim", "deepssim-lite", "deepwsd-vgg16")
#: The evaluation metric each training loss is judged by first ("beats the baseline on its own metric").
OWN_METRIC = {"l1": "l1", "mse": "psnr", "ssim": "ssim", "ms-ssim": "ms-ssim", "lpips-vgg": "lpips-vgg",
              "dists": "dists", "deepwsd-vgg16": "deepwsd-vgg16", "deepssim-lite": "deepssim-lite"}
PIXEL_LOSSES = {"l1": lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)),
                "mse": lambda x, y: ((x - y) ** 2).mean(dim=(1, 2, 3))}
#: Key columns of an evaluation pair in the store: the table row, its fingerprint, the evaluation image.
PAIR_COLUMNS = ("training_loss", "fingerprint", "image")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
TRAIN, MONITOR, EVAL = 0, 1, 2  # purposes of the seeded generators: training batches, monitor batch, eval noise

#: Defaults of the full run per task, chosen so that each task fits in 15-22 minutes on a 2-core CPU.
DEFAULTS = {"sr4": {"steps": 250, "patch": 164, "batch": 4},
            "denoise": {"steps": 150, "patch": 164, "batch": 4}}
QUICK = {"steps": 32, "patch": 96, "batch": 2, "pool": 4, "warmup": 8, "monitor_every": 8, "checkpoint_every": 8,
         "eval_max_side": 128, "crop": 32}

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(DEFAULTS), default="sr4")
    p.add_argument("--losses", default="default", help="'default' (" + ",".join(LOSSES) + ") or comma-separated "
                   "names: l1, mse, registered metrics with a loss form, and sums such as deepssim-lite+l1")
    p.add_argument("--eval-metrics", default="all", help="'all' (every registered metric whose weights resolve) "
                   "or comma-separated names; l1 (mean absolute error) is always added")
    p.add_argument("--steps", type=int, help="training steps per loss (default: sr4 250, denoise 150)")
    p.add_argument("--patch", type=int, help="high-resolution / clean patch side in pixels (default 164)")
    p.add_argument("--batch", type=int, help="patches per step (default 4)")
    p.add_argument("--pool", type=int, help="cycle through this many fixed batches instead of drawing new ones "
                   "(--quick uses 4, so that a few dozen steps show a clear decrease of every loss)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default: 10%% of the steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-dir", help="train on random patches of the images in this folder (e.g. DIV2K_train_HR) "
                   "instead of the bundled samples")
    p.add_argument("--eval-dir", help="evaluate on the images in this folder instead of the held-out bundled ones")
    p.add_argument("--eval-max-side", type=int, help="downscale evaluation images to this longer side")
    p.add_argument("--crop", type=int, default=64, help="side of the regions shown in crops.png")
    p.add_argument("--monitor-every", type=int, help="log the loss on a fixed batch every N steps (default: steps/10)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--stop-after", type=int, help="train at most this many steps per loss in this invocation, then "
                   "checkpoint and stop (a later run resumes); splits a long run over several sessions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    p.add_argument("--out", help="output folder (default results/train_restoration/<task>)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and scores and start over")
    p.add_argument("--quick", action="store_true", help="32 steps of 2 patches of 96 px, 2 held-out images at "
                   f"128 px, metrics {','.join(QUICK_EVAL_METRICS)} (tests)")
    args = p.parse_args(argv)
    defaults = {**DEFAULTS[args.task], **(QUICK if args.quick else {})}
    for name, value in defaults.items():
        if getattr(args, name) is None or (args.quick and getattr(args, name) == p.get_default(name)):
            setattr(args, name, value)
    if args.quick and args.eval_metrics == p.get_default("eval_metrics"):
        args.eval_metrics = ",".join(QUICK_EVAL_METRICS)
    args.warmup = max(1, args.steps // 10) if args.warmup is None else args.warmup
    args.monitor_every = args.monitor_every or max(1, args.steps // 10)
    args.out = Path(args.out) if args.out else ROOT / "results" / "train_restoration" / args.task
    if args.task == "sr4" and args.patch % 4:
        p.error("--patch must be a multiple of 4 for sr4")
    return args


def loss_names(spec: str) -> list[str]:
    return list(LOSSES) if spec == "default" else [n.strip() for n in spec.split(",") if n.strip()]


# --------------------------------------------------------------------------------------------------
# Data: image folders and the seeded patch stream
# --------------------------------------------------------------------------------------------------

class ImageFolder:
    """Images read lazily (a few kept decoded), sizes from the file headers."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.sizes = []
        for path in paths:
            with Image.open(path) as img:
                self.sizes.append((img.height, img.width))
        self._load = lru_cache(maxsize=16)(load_image)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> torch.Tensor:
        return self._load(self.paths[index])

    def names(self) -> list[str]:
        return [p.stem for p in self.paths]


def image_paths(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


def training_images(args: argparse.Namespace) -> ImageFolder:
    """The bundled samples except the held-out ones, or --train-dir; images smaller than a patch are left out."""
    paths = image_paths(Path(args.train_dir)) if args.train_dir else [
        p for p in sample_images() if p.stem not in HELD_OUT]
    folder = ImageFolder(paths)
    keep = [p for p, (h, w) in zip(paths, folder.sizes, strict=True) if min(h, w) >= args.patch]
    for p in sorted(set(paths) - set(keep)):
        print(f"left out of training (smaller than a {args.patch}-px patch): {p}")
    if not keep:
        raise ValueError(f"no training image is at least {args.patch} px on its shorter side")
    return ImageFolder(keep) if len(keep) < len(paths) else folder


def evaluation_images(args: argparse.Namespace, multiple: int) -> dict[str, torch.Tensor]:
    """Held-out clean images, optionally downscaled, cropped to a multiple of the scale factor."""
    paths = image_paths(Path(args.eval_dir)) if args.eval_dir else [
        p for p in sample_images() if p.stem in HELD_OUT]
    images = {}
    for path in paths:
        img = shrink(load_image(path), args.eval_max_side or None)
        h, w = (d - d % multiple for d in img.shape[-2:])
        images[path.stem] = img[..., :h, :w].contiguous()
    return images


def _rng(seed: int, purpose: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, index])


def sample_patches(folder: ImageFolder, patch: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    """``batch`` random patches (random image, position, 90-degree rotation and flip) as (B, 3, P, P)."""
    out = []
    for _ in range(batch):
        index = int(rng.integers(len(folder)))
        h, w = folder.sizes[index]
        top, left = int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
        rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
        p = folder.image(index)[..., top:top + patch, left:left + patch]
        p = torch.rot90(p, rotations, dims=(-2, -1))
        out.append(p.flip(-1) if flip else p)
    return torch.cat(out).contiguous()


# --------------------------------------------------------------------------------------------------
# Tasks and networks
# --------------------------------------------------------------------------------------------------

def bicubic_up(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


class ResidualESPCN(nn.Module):
    """ESPCN-size x``scale`` super-resolution (Shi et al. 2016) added to the bicubic upsampling."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, 64, 5, padding=2), nn.Tanh(), nn.Conv2d(64, 32, 3, padding=1),
                                  nn.Tanh(), nn.Conv2d(32, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale))
        for layer in (self.body[0], self.body[2]):  # fan-in initialisation with the tanh gain
            nn.init.kaiming_normal_(layer.weight, nonlinearity="tanh")
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.body[4].weight)
        nn.init.zeros_(self.body[4].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return (bicubic_up(lr, self.scale) + self.body(lr - 0.5)).clamp(0, 1)


class ResidualDnCNN(nn.Module):
    """DnCNN-style residual denoiser (Zhang et al. 2017), smaller and without batch norm: noisy - net(noisy)."""

    def __init__(self, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        for layer in layers[::2]:  # He initialisation keeps the signal's scale through the ReLU layers
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return (noisy - self.body(noisy - 0.5)).clamp(0, 1)


@dataclass(frozen=True)
class Task:
    """A restoration task: how a clean image is degraded, the untrained baseline and the network."""

    name: str
    title: str
    baseline_label: str
    multiple: int = 1  # image sides must be multiples of this (the scale factor)
    scale: int = 1
    sigma: float = 0.0

    def degrade(self, clean: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.scale > 1:
            h, w = clean.shape[-2:]
            return F.interpolate(clean, size=(h // self.scale, w // self.scale), mode="bicubic", antialias=True,
                                 align_corners=False).clamp(0, 1)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        return (clean + self.sigma / 255.0 * noise).clamp(0, 1)

    def baseline(self, degraded: torch.Tensor) -> torch.Tensor:
        return bicubic_up(degraded, self.scale).clamp(0, 1) if self.scale > 1 else degraded

    def network(self) -> nn.Module:
        return ResidualESPCN(self.scale) if self.scale > 1 else ResidualDnCNN()


TASKS = {"sr4": Task("sr4", "x4 super-resolution", "bicubic", multiple=4, scale=4),
         "denoise": Task("denoise", "denoising, sigma 25", "noisy input", sigma=25.0)}


def training_pair(task: Task, folder: ImageFolder, args: argparse.Namespace, step: int,
                  purpose: int = TRAIN) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded, clean) batch number ``step``: the same for every loss and every run with this seed."""
    index = step % args.pool if args.pool and purpose == TRAIN else step
    rng = _rng(args.seed, purpose, index)
    clean = sample_patches(folder, args.patch, args.batch, rng)
    return task.degrade(clean, rng), clean


def monitor_pair(task: Task, folder: ImageFolder, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch whose loss is logged during training: a batch of its own, or the whole --pool."""
    if not args.pool:
        return training_pair(task, folder, args, 0, purpose=MONITOR)
    pairs = [training_pair(task, folder, args, i) for i in range(args.pool)]
    return torch.cat([d for d, _ in pairs]), torch.cat([c for _, c in pairs])


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------

class Skipped(Exception):
    """A training loss or evaluation metric that cannot be used here; the message says why."""


def metric_loss(name: str, patch: int, device: torch.device) -> LossFn:
    """The per-image ``loss()`` of a registered metric (SSIM / MS-SSIM on RGB, see the module docstring)."""
    try:
        if name == "ms-ssim" and patch < (WINDOW_SIZE - 1) * 2 ** (len(MS_SSIM_EXPONENTS) - 1) + 1:
            return ms_ssim_fallback(patch)
        metric = create_metric(name, **({"color": "rgb"} if name in ("ssim", "ms-ssim") else {}))
    except WeightsNotFoundError as err:
        raise Skipped(f"weights not found: {str(err).splitlines()[0]}") from err
    metric = metric.to(device).eval()
    return metric.loss


def ms_ssim_fallback(patch: int) -> LossFn:
    """1 - MS-SSIM with the scales that fit in ``patch`` pixels (their exponents renormalised to sum 1)."""
    levels = max(k for k in range(1, len(MS_SSIM_EXPONENTS) + 1) if (WINDOW_SIZE - 1) * 2 ** (k - 1) + 1 <= patch)
    kept = MS_SSIM_EXPONENTS[:levels]
    exponents = tuple(e / sum(kept) for e in kept)
    print(f"note: ms-ssim on {patch}-px patches uses {levels} of 5 scales (161 px are needed for all five)")
    return lambda x, y: 1 - ms_ssim(x, y, color="rgb", exponents=exponents)


def build_loss(name: str, patch: int, device: torch.device) -> LossFn:
    """Per-image loss function for ``name`` ('l1', 'mse', a registered metric, or 'a+b')."""
    parts = name.split("+")
    if len(parts) > 1:
        fns = [build_loss(part, patch, device) for part in parts]
        return lambda x, y: sum(fn(x, y) for fn in fns)
    if name in PIXEL_LOSSES:
        return PIXEL_LOSSES[name]
    if name not in list_metrics():
        raise KeyError(f"unknown loss {name!r}; use l1, mse or one of: {', '.join(list_metrics())}")
    return metric_loss(name, patch, device)


def check_loss(fn: LossFn, degraded: torch.Tensor, clean: torch.Tensor, task: Task, device: torch.device) -> None:
    """Raise Skipped unless ``fn`` gives one finite, differentiable loss per image on a training batch."""
    net = task.network().to(device)
    with torch.no_grad():  # a nudge away from the zero last layer, so that the probe sees real gradients
        for param in net.parameters():
            param.add_(1e-3 * torch.randn_like(param))
    try:
        value = fn(net(degraded.to(device)), clean.to(device))
    except NotImplementedError as err:
        raise Skipped("no loss form (metric.loss is not implemented)") from err
    except IQAInputError as err:
        raise Skipped(f"cannot run on {clean.shape[-1]}-px patches: {err}") from err
    if value.shape != (clean.shape[0],):
        raise Skipped(f"expected one loss per image, got shape {tuple(value.shape)}")
    if not value.requires_grad:
        raise Skipped("not differentiable (the loss does not depend on the network output through autograd)")
    value.mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads) or not torch.isfinite(value).all():
        raise Skipped("not differentiable here (missing or non-finite gradients)")


# --------------------------------------------------------------------------------------------------
# Training with checkpoints
# --------------------------------------------------------------------------------------------------

def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 1 % of the peak at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def run_config(args: argparse.Namespace, loss: str, folder: ImageFolder) -> dict:
    """What must match for a checkpoint (and the scores computed from it) to be reused."""
    keys = ("task", "steps", "patch", "batch", "pool", "lr", "warmup", "seed")
    return {"loss": loss, **{k: getattr(args, k) for k in keys},
            "train_images": [[str(p), *s] for p, s in zip(folder.paths, folder.sizes, strict=True)]}


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_path(out: Path, loss: str) -> Path:
    return out / "checkpoints" / f"{loss.replace('+', '_plus_')}.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint, even when killed while saving


def load_checkpoint(path: Path, config: dict, device: torch.device) -> dict | None:
    if not path.is_file():
        return None
    state = dict(read_state_file(path, "checkpoint"))  # tensors and plain values only: a crafted file is refused
    if state.get("config") != config:
        print(f"{config['loss']}: {path.name} was made with another configuration; training from the start")
        return None
    return state


def train_loss(name: str, fn: LossFn, task: Task, folder: ImageFolder, args: argparse.Namespace,
               device: torch.device) -> dict:
    """Train (or resume) one network with loss ``fn``; returns its final checkpoint state."""
    config = run_config(args, name, folder)
    path = checkpoint_path(args.out, name)
    state = None if args.fresh else load_checkpoint(path, config, device)
    if state is not None and state["done"]:
        print(f"{name}: finished ({state['step']} steps) in {path.name}; not retrained")
        return state
    torch.manual_seed(args.seed)  # identical initial weights for every loss
    net = task.network().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr_at(0, args))
    if state is None:
        state = {"config": config, "step": 0, "history": [], "monitor": [], "seconds": 0.0, "done": False}
    else:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"{name}: resuming from step {state['step']} ({path.name})")
    monitor_batch = monitor_pair(task, folder, args)
    stop = args.steps if args.stop_after is None else min(args.steps, state["step"] + args.stop_after)
    bar = tqdm(range(state["step"], stop), initial=state["step"], total=args.steps, desc=name)
    started = time.perf_counter()
    for step in bar:
        if step % args.monitor_every == 0:
            state["monitor"].append((step, monitor_loss(net, fn, monitor_batch, device)))
        degraded, clean = training_pair(task, folder, args, step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        net.train()
        loss = fn(net(degraded.to(device)), clean.to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["history"].append((step, loss.item(), lr_at(step, args), float(clean.sum())))
        bar.set_postfix(loss=f"{loss.item():.4g}")
        state["step"] = step + 1
        if state["step"] % args.checkpoint_every == 0 or state["step"] in (stop, args.steps):
            finish_state(state, net, optimizer, args, fn, monitor_batch, device, started)
            started = time.perf_counter()
            save_checkpoint(path, state)
    bar.close()
    return state


def finish_state(state: dict, net: nn.Module, optimizer: torch.optim.Optimizer, args: argparse.Namespace,
                 fn: LossFn, monitor_batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                 started: float) -> None:
    """Bring the checkpoint state up to date (the final monitor value once the last step is done)."""
    state["done"] = state["step"] >= args.steps
    if state["done"] and (not state["monitor"] or state["monitor"][-1][0] != args.steps):
        state["monitor"].append((args.steps, monitor_loss(net, fn, monitor_batch, device)))
    state["seconds"] += time.perf_counter() - started
    state["model"] = net.state_dict()
    state["optimizer"] = optimizer.state_dict()


def monitor_loss(net: nn.Module, fn: LossFn, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> float:
    net.eval()
    with torch.no_grad():
        return float(fn(net(batch[0].to(device)), batch[1].to(device)).mean())


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def evaluation_metrics(spec: str, device: torch.device) -> tuple[dict[str, Metric], dict[str, str]]:
    """Every requested metric that can be built here, and the reason for each that cannot."""
    names = list_metrics() if spec == "all" else [n.strip() for n in spec.split(",") if n.strip() and n != "l1"]
    for name in names:
        metric_info(name)  # an unknown name is the user's mistake: its KeyError ends the run before any work
    metrics: dict[str, Metric] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            built, missing = create_available_metrics([name], device)
        except Exception as err:  # a metric that fails to build is reported, never fatal
            built, missing = {}, {name: f"could not be built: {type(err).__name__}: {err}"}
        metrics.update(built)
        skipped.update(missing)
    return metrics, skipped


class L1Metric(Metric):
    """Mean absolute error over RGB (the evaluation counterpart of the l1 loss). Lower is better."""

    name = "l1"
    higher_is_better = False
    requires_same_size = True

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return (dist - ref).abs().mean(dim=(1, 2, 3))


class LossScorer(Scorer):
    """A training loss as a scorer of the engine (store key ``loss:<label>``): its value per restored image."""

    def __init__(self, label: str, fn: LossFn, patch: int, device: torch.device) -> None:
        self.fn = fn
        # The patch side picks MS-SSIM's scales (ms_ssim_fallback), which changes the baseline's value too.
        self.keys = (MetricKey(f"loss:{label}", options_text({"patch": patch})),)
        self.requires_same_size = True
        self.device = device

    def encode(self, ref: torch.Tensor) -> torch.Tensor:
        return ref

    def score(self, dists: torch.Tensor, ref: torch.Tensor, encoded: torch.Tensor) -> list[torch.Tensor]:
        # One image at a time, as in training: a loss takes (output, clean) batches of equal length.
        return [torch.stack([self.fn(dist[None], ref).mean() for dist in dists])]


@dataclass
class Row:
    """One line of the tables: a trained network or the untrained baseline."""

    label: str
    fingerprint: str
    kind: str  # "baseline" or "trained"
    net: nn.Module | None = None
    steps: int = 0
    seconds: float = 0.0


#: (metric or ``loss:<label>``, row label, image) -> score.
Scores = dict[tuple[str, str, str], float]


def restore(row: Row, task: Task, degraded: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        if row.net is None:
            return task.baseline(degraded)
        return row.net.eval()(degraded.to(device)).clamp(0, 1).cpu()


def degraded_eval_images(task: Task, images: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    return {name: task.degrade(img, _rng(seed, EVAL, i)) for i, (name, img) in enumerate(images.items())}


def output_pairs(rows: list[Row], outputs: dict[str, dict[str, torch.Tensor]],
                 images: dict[str, torch.Tensor]) -> PairSource:
    """The restored outputs as a pair source: one group per evaluation image (its clean image the reference), one
    pair per row, keyed by the row's label and fingerprint and the image."""
    items = ((image, image, Pair(n, (row.label, row.fingerprint, image), (row.label, image)))
             for n, (image, row) in enumerate(itertools.product(images, rows), start=1))
    return PairSource(PAIR_COLUMNS, group_by_reference(items), images.__getitem__,
                      lambda dist, ref: outputs[dist[0]][dist[1]])


def scores_file(out: Path, fresh: bool) -> Path:
    """``out/scores.csv``, the engine's store; ``fresh`` deletes its scores and errors first."""
    path = out / "scores.csv"
    if fresh:
        for old in (path, errors_path(path)):
            old.unlink(missing_ok=True)
    return path


def score_outputs(scorers: list[Scorer], source: PairSource, store: Path, **options: object) -> None:
    """Score what the store lacks, the rows of one image as one batch."""
    batch = max((len(g.pairs) for g in source.groups), default=1)
    # workers=0: the outputs are tensors in this process already; a DataLoader worker would only copy them.
    score_pairs(scorers, source, store, batch_size=batch, workers=0, **options)


def refused(store: Path, scorers: list[Scorer], source: PairSource) -> dict[str, str]:
    """The scorers' outputs (metric names, ``loss:<label>``) that refused an evaluation image, from the store's
    errors table, each with its first reason."""
    errors = current_errors(store, scorers, source).drop_duplicates("metric")
    return {metric: f"cannot score evaluation image {image}: {reason}"
            for metric, image, reason in zip(errors.metric, errors.image, errors.reason, strict=True)}


def score_own_losses(rows: list[Row], losses: dict[str, LossFn], outputs: dict[str, dict[str, torch.Tensor]],
                     images: dict[str, torch.Tensor], store: Path, patch: int,
                     device: torch.device) -> list[LossScorer]:
    """Each trained row's training loss on the held-out images, for it and for the baseline; returns the scorers."""
    scorers = []
    for row in rows[1:]:
        scorer = LossScorer(row.label, losses[row.label], patch, device)
        score_outputs([scorer], output_pairs([rows[0], row], outputs, images), store, progress=False, announce=None)
        scorers.append(scorer)
    return scorers


def stored_scores(store: Path, scorers: list[Scorer], source: PairSource) -> Scores:
    """The store's scores of exactly these scorers' keys and these pairs."""
    frame = current_scores(store, scorers, source)
    return {(m, label, image): s for m, label, image, s in
            zip(frame.metric, frame.training_loss, frame.image, frame.score, strict=True)}


# --------------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------------

def ordered_metrics(names: list[str]) -> list[str]:
    first = [m for m in METRIC_ORDER if m in names]
    return first + sorted(set(names) - set(first))


def mean_score(scores: Scores, metric: str, label: str, images: list[str]) -> float:
    """The row's mean over the evaluation images; NaN when one has no score."""
    values = [scores.get((metric, label, image)) for image in images]
    return float(np.mean(values)) if None not in values else float("nan")


def metrics_table(rows: list[Row], images: list[str], metric_names: list[str], scores: Scores) -> pd.DataFrame:
    """Rows: training loss (baseline first); columns: mean score over the evaluation images per metric."""
    table = []
    for row in rows:
        entry = {"training_loss": row.label, "kind": row.kind, "steps": row.steps}
        for metric in metric_names:
            entry[metric] = mean_score(scores, metric, row.label, images)
        table.append(entry)
    return pd.DataFrame(table)


def own_loss_table(rows: list[Row], images: list[str], scores: Scores, table: pd.DataFrame,
                   directions: dict[str, bool], states: dict[str, dict]) -> pd.DataFrame:
    """Per trained row: its own training loss on the held-out images against the baseline's, the same on the fixed
    batch of training patches (the monitor: step 0 is the baseline, since every network starts there), and its own
    metric."""
    baseline = rows[0]
    by_loss = table.set_index("training_loss")
    out = []
    for row in rows[1:]:
        key = f"loss:{row.label}"
        trained = mean_score(scores, key, row.label, images)
        untrained = mean_score(scores, key, baseline.label, images)
        metric = OWN_METRIC.get(row.label.split("+")[0], "")
        metric = metric if metric in table.columns else ""
        monitor = states[row.label]["monitor"]
        entry = {"training_loss": row.label, "baseline_loss": untrained, "trained_loss": trained,
                 "relative_change": trained / untrained - 1 if untrained else float("nan"),
                 "beats_baseline_on_loss": trained < untrained,
                 "baseline_loss_train_patches": monitor[0][1], "trained_loss_train_patches": monitor[-1][1],
                 "beats_baseline_on_train_patches": monitor[-1][1] < monitor[0][1], "own_metric": metric,
                 "baseline_metric": float(by_loss.loc[baseline.label, metric]) if metric else float("nan"),
                 "trained_metric": float(by_loss.loc[row.label, metric]) if metric else float("nan"),
                 "train_seconds": round(row.seconds, 1)}
        if metric:
            better = (entry["trained_metric"] > entry["baseline_metric"]) if directions[metric] else (
                entry["trained_metric"] < entry["baseline_metric"])
            entry["beats_baseline_on_metric"] = bool(better)
        else:
            entry["beats_baseline_on_metric"] = None
        out.append(entry)
    return pd.DataFrame(out)


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "inf" if value == np.inf else "n/a"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def markdown_table(table: pd.DataFrame, metric_names: list[str], directions: dict[str, bool]) -> list[str]:
    """The metrics table as Markdown, the best value of each column in bold."""
    header = "| training loss | " + " | ".join(f"{m} {'↑' if directions[m] else '↓'}" for m in metric_names) + " |"
    lines = [header, "|---|" + "---:|" * len(metric_names)]
    best = {}
    for m in metric_names:
        col = table[m].replace([np.inf, -np.inf], np.nan)
        best[m] = col.max() if directions[m] else col.min()
    for _, r in table.iterrows():
        cells = [f"**{_fmt(r[m])}**" if r[m] == best[m] else _fmt(r[m]) for m in metric_names]
        label = f"*{r.training_loss}* (untrained)" if r.kind == "baseline" else r.training_loss
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: Path, task: Task, args: argparse.Namespace, table: pd.DataFrame, own: pd.DataFrame,
                   metric_names: list[str], directions: dict[str, bool], skipped: list[tuple[str, str, str]],
                   folder: ImageFolder, images: list[str], eval_seconds: float) -> None:
    lines = [f"# Perceptual optimisation: {task.title}", "",
             f"{args.steps} steps x {args.batch} patches of {args.patch} px per loss, Adam lr {args.lr:g} "
             f"(warm-up {args.warmup}, cosine), seed {args.seed}; trained on {len(folder)} images "
             f"({', '.join(folder.names()[:8])}{', ...' if len(folder) > 8 else ''}); means over the held-out "
             f"images {', '.join(images)}. Best value of each column in bold. Training time "
             f"{own.train_seconds.sum() / 60 if len(own) else 0:.1f} min (all losses, summed over sessions), "
             f"evaluation {eval_seconds:.0f} s (this session), device {args.device}.", ""]
    headline = [m for m in HEADLINE_METRICS if m in metric_names]
    if len(headline) < len(metric_names) and len(headline) >= 3:
        lines += [f"Headline metrics (all {len(metric_names)} below):", "",
                  *markdown_table(table, headline, directions), "", f"All {len(metric_names)} metrics:", ""]
    lines += [*markdown_table(table, metric_names, directions), ""]
    if len(own):
        lines += ["Each network's own training loss on the held-out images, against the untrained baseline's:", "",
                  "| training loss | baseline | trained | change | beats baseline on its loss | own metric | "
                  "beats baseline on it | training time |", "|---|---:|---:|---:|---|---|---|---:|"]
        for _, r in own.iterrows():
            on_metric = "" if r.beats_baseline_on_metric is None else ("yes" if r.beats_baseline_on_metric else "NO")
            lines.append(f"| {r.training_loss} | {_fmt(r.baseline_loss)} | {_fmt(r.trained_loss)} | "
                         f"{100 * r.relative_change:+.1f} % | {'yes' if r.beats_baseline_on_loss else 'NO'} | "
                         f"{r.own_metric} | {on_metric} | {r.train_seconds:.0f} s |")
        lines.append("")
    if skipped:
        lines += ["Skipped (full reasons in skipped.csv):", "", *skipped_lines(skipped), ""]
    path.write_text("\n".join(lines))


def skipped_lines(skipped: list[tuple[str, str, str]]) -> list[str]:
    """One line per skipped training loss; evaluation metrics grouped by the first clause of their reason."""
    lines = [f"- training loss `{name}`: {reason}" for kind, name, reason in skipped if kind == "training loss"]
    groups: dict[str, list[str]] = {}
    for kind, name, reason in skipped:
        if kind != "training loss":
            why = reason.split(": put ")[0]  # the weights resolver's message up to its advice
            groups.setdefault(why if len(why) <= 160 else why[:157] + "...", []).append(name)
    lines += [f"- evaluation metric{'s' if len(names) > 1 else ''} {', '.join(f'`{n}`' for n in names)}: {why}"
              for why, names in groups.items()]
    return lines


def plot_loss_curves(out: Path, states: dict[str, dict]) -> None:
    """loss_curves.png: per loss, the per-step training loss, its running mean and the monitored loss."""
    records = [(name, *h) for name, s in states.items() for h in s["history"]]
    pd.DataFrame(records, columns=["loss", "step", "train_loss", "lr", "batch_checksum"]).to_csv(
        out / "loss_curves.csv", index=False)
    monitor = [(name, step, value) for name, s in states.items() for step, value in s["monitor"]]
    pd.DataFrame(monitor, columns=["loss", "step", "monitor_loss"]).to_csv(out / "monitor.csv", index=False)
    n = len(states)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, state) in zip(axes.flat, states.items(), strict=False):
        steps = np.array([h[0] for h in state["history"]])
        values = np.array([h[1] for h in state["history"]])
        window = max(1, len(values) // 10)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps, values, lw=0.6, alpha=0.4, label="per step")
        ax.plot(steps[window - 1:], smooth, lw=1.4, label=f"running mean ({window})")
        if state["monitor"]:
            ms, mv = zip(*state["monitor"], strict=True)
            ax.plot(ms, mv, "o-", ms=3, lw=1, label="fixed batch")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)


def crop_regions(images: dict[str, torch.Tensor], size: int) -> list[tuple[str, int, int]]:
    """Per image, the most detailed ``size``-pixel square (largest mean gradient magnitude), on a coarse grid."""
    regions = []
    stride = max(1, size // 4)
    for name, img in images.items():
        gray = img[0].mean(0)
        grad = (gray[1:, :-1] - gray[:-1, :-1]).abs() + (gray[:-1, 1:] - gray[:-1, :-1]).abs()
        energy = F.avg_pool2d(grad[None, None], size, stride=stride)[0, 0]
        r, c = divmod(int(energy.argmax()), energy.shape[1])
        regions.append((name, min(r * stride, img.shape[-2] - size), min(c * stride, img.shape[-1] - size)))
    return regions


def plot_crops(out: Path, rows: list[Row], outputs: dict[str, dict[str, torch.Tensor]],
               images: dict[str, torch.Tensor], size: int, scores: pd.DataFrame, first_metric: str) -> None:
    """crops.png: the same regions for the ground truth, the baseline and every trained network."""
    size = min(size, *(min(img.shape[-2:]) for img in images.values()))
    regions = crop_regions(images, size)
    pd.DataFrame(regions, columns=["image", "top", "left"]).assign(size=size).to_csv(out / "crops.csv", index=False)
    columns = [("ground truth", None), *((r.label, r) for r in rows)]
    fig, axes = plt.subplots(len(regions), len(columns), figsize=(1.5 * len(columns), 1.65 * len(regions)),
                             squeeze=False)
    for i, (image, top, left) in enumerate(regions):
        for j, (label, row) in enumerate(columns):
            source = images[image] if row is None else outputs[row.label][image]
            crop = source[0, :, top:top + size, left:left + size].permute(1, 2, 0).clamp(0, 1).numpy()
            ax = axes[i, j]
            ax.imshow(crop, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label + (" (untrained)" if row is not None and row.kind == "baseline" else ""),
                             fontsize=7)
            if j == 0:
                ax.set_ylabel(image, fontsize=7)
            if row is not None and first_metric:
                value = scores.get((row.label, image))
                if value is not None:
                    ax.set_xlabel(f"{first_metric} {value:.2f}", fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "crops.png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def prepare_losses(names: list[str], task: Task, folder: ImageFolder, args: argparse.Namespace,
                   device: torch.device) -> tuple[dict[str, LossFn], list[tuple[str, str, str]]]:
    """Build and check every training loss; a loss that cannot be used is reported and skipped."""
    probe = training_pair(task, folder, args, 0)
    losses, skipped = {}, []
    for name in names:
        try:
            fn = build_loss(name, args.patch, device)
            check_loss(fn, *probe, task, device)
        except Skipped as err:
            print(f"skipped training loss {name}: {err}")
            skipped.append(("training loss", name, str(err)))
            continue
        losses[name] = fn
    return losses, skipped


def load_trained_rows(states: dict[str, dict], task: Task, device: torch.device) -> list[Row]:
    rows = []
    for name, state in states.items():
        net = task.network().to(device)
        net.load_state_dict(state["model"])
        rows.append(Row(name, fingerprint(state["config"]), "trained", net, state["step"], state["seconds"]))
    return rows


def evaluate(rows: list[Row], outputs: dict[str, dict[str, torch.Tensor]], images: dict[str, torch.Tensor],
             metrics: dict[str, Metric], metric_skips: dict[str, str], losses: dict[str, LossFn],
             args: argparse.Namespace, device: torch.device) -> Scores:
    """Every row's outputs scored with every metric and with the trained rows' own losses, through the engine into
    scores.csv; a metric that refuses an image is added to ``metric_skips``. Returns this evaluation's scores."""
    store = scores_file(args.out, args.fresh)
    source = output_pairs(rows, outputs, images)
    scorers = [MetricScorer(metric, name) for name, metric in metrics.items()]
    score_outputs(scorers, source, store, desc="evaluation")
    for name, reason in refused(store, scorers, source).items():
        metric_skips[name] = reason
        print(f"skipped evaluation metric {name}: {reason}")
    loss_scorers = score_own_losses(rows, losses, outputs, images, store, args.patch, device)
    for name, reason in refused(store, loss_scorers, source).items():
        print(f"{name} is n/a in own_loss.csv: {reason}")
    return stored_scores(store, [*scorers, *loss_scorers], source)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    task = TASKS[args.task]
    out: Path = args.out
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    folder = training_images(args)
    print(f"{task.title}: training on {len(folder)} images, {args.steps} steps x {args.batch} patches of "
          f"{args.patch} px per loss, device {device}; output {out}")

    losses, skipped = prepare_losses(loss_names(args.losses), task, folder, args, device)
    states = {name: train_loss(name, fn, task, folder, args, device) for name, fn in losses.items()}
    unfinished = [n for n, s in states.items() if not s["done"]]
    plot_loss_curves(out, states)
    if unfinished:
        print(f"stopped before the end (--stop-after): {', '.join(unfinished)}; run again to resume")
        return 0

    images = evaluation_images(args, task.multiple)
    degraded = degraded_eval_images(task, images, args.seed)
    eval_fp = fingerprint({"task": task.name, "seed": args.seed, "images": {k: list(v.shape) for k, v in
                                                                            images.items()}})
    rows = [Row(task.baseline_label, eval_fp, "baseline"), *load_trained_rows(states, task, device)]
    for row in rows[1:]:
        row.fingerprint = fingerprint({"eval": eval_fp, "run": row.fingerprint})
    outputs = {r.label: {name: restore(r, task, degraded[name], device) for name in images} for r in rows}

    metrics, metric_skips = evaluation_metrics(args.eval_metrics, device)
    metrics = {"l1": L1Metric(), **metrics}
    for name, reason in metric_skips.items():
        print(f"skipped evaluation metric {name}: {reason[:200]}")
    eval_started = time.perf_counter()
    scores = evaluate(rows, outputs, images, metrics, metric_skips, losses, args, device)
    eval_seconds = time.perf_counter() - eval_started

    metric_names = ordered_metrics([m for m in metrics if m not in metric_skips])
    directions = {m: metrics[m].higher_is_better for m in metric_names}
    table = metrics_table(rows, list(images), metric_names, scores)
    table.to_csv(out / "metrics.csv", index=False, float_format="%.6g")
    own = own_loss_table(rows, list(images), scores, table, directions, states)
    own.to_csv(out / "own_loss.csv", index=False, float_format="%.6g")
    skipped += [("evaluation metric", name, reason) for name, reason in metric_skips.items()]
    pd.DataFrame(skipped, columns=["kind", "name", "reason"]).to_csv(out / "skipped.csv", index=False)
    write_markdown(out / "metrics.md", task, args, table, own, metric_names, directions, skipped, folder,
                   list(images), eval_seconds)
    first = "psnr" if "psnr" in metric_names else ""
    per_image = {(r.label, i): scores.get((first, r.label, i)) for r in rows for i in images}
    plot_crops(out, rows, outputs, images, args.crop, per_image, first)
    print((out / "metrics.md").read_text())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
