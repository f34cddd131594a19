"""The bundled natural sample images (data/samples/, see its README for licences)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from iqa_core.io import load_image

__all__ = ["SAMPLES_DIR", "sample_images", "load_samples"]

#: Folder of the bundled PNG samples (256 px on the longer side).
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"


def sample_images() -> list[Path]:
    """Paths of the bundled sample PNGs, sorted by name."""
    return sorted(SAMPLES_DIR.glob("*.png"))


def shrink(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Downscale an (N, 3, H, W) image (antialiased bicubic) so its longer side is at most ``max_side``; never
    upscales, and ``None`` leaves the image as it is."""
    if max_side is None:
        return image
    h, w = image.shape[-2:]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def load_samples(max_side: int | None = None) -> dict[str, torch.Tensor]:
    """Load every sample as a (1, 3, H, W) float32 tensor in [0, 1], keyed by file stem.

    ``max_side`` optionally downscales images whose longer side exceeds it (never upscales).
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side}")
    images = {path.stem: load_image(path) for path in sample_images()}
    if max_side is not None:
        images = {name: shrink(image, max_side) for name, image in images.items()}
    return images
