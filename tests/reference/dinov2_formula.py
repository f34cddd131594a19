"""Deterministic DINOv2 ViT-B/14 weights, input and digests behind ``dinov2_hf_legacy.json`` (torch only).

Shared by the generator ``make_dinov2_hf_legacy.py`` (run once with transformers 4.44) and the test
``tests/test_dinov2_reference.py`` (no transformers), both loading this file by its path.

Weights: every tensor of a Hugging Face ``Dinov2Model`` state dict (hub key names) is drawn from its own
``torch.Generator`` seeded with ``zlib.crc32(key)``, in float64, scaled roughly like a trained network, then rounded
to float32 (so a float64 run of either implementation starts from exactly the same numbers):

- ``*.position_embeddings`` (1, 1 + S*S, D): class token ``0.02 * n``; patches ``0.5 * sin(2 pi (f_y y + f_x x) + p)
  + 0.1 * n`` on the S x S grid (y, x in [0, 1)), per channel ``f_y, f_x ~ U[0, 4)`` cycles and ``p ~ U[0, 2 pi)``,
  drawn in that order (f as a (2, D) tensor, then p, then the noise n ~ N(0, 1)): smooth and varied, so that
  how the grid is resized matters;
- ``*.cls_token``, ``*.mask_token``: ``0.02 * n``;
- ``*.lambda1`` (layer scales): ``0.1 + 0.03 * n``;
- ``*.bias``: ``0.02 * n``; 1-D ``*.weight`` (LayerNorms): ``1 + 0.1 * n``;
- other ``*.weight`` (linear, patch convolution): ``n / sqrt(fan_in)``, ``fan_in = numel / shape[0]``.

Input: one 224 x 224 RGB image in [0, 1] (no mean/std normalisation, as ZS-IQA), see :func:`formula_image`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch

F64 = torch.float64


def _normal(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=F64)


def _position_embeddings(gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
    _, tokens, dim = shape
    side = math.isqrt(tokens - 1)
    freq = torch.rand((2, dim), generator=gen, dtype=F64) * 4
    phase = torch.rand((dim,), generator=gen, dtype=F64) * 2 * math.pi
    y, x = torch.meshgrid(torch.arange(side, dtype=F64) / side, torch.arange(side, dtype=F64) / side, indexing="ij")
    smooth = torch.sin(2 * math.pi * (freq[0] * y[..., None] + freq[1] * x[..., None]) + phase)
    patches = 0.5 * smooth.reshape(side * side, dim) + 0.1 * _normal(gen, side * side, dim)
    cls = 0.02 * _normal(gen, 1, dim)
    return torch.cat([cls, patches]).reshape(shape)


def formula_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The float32 tensor of ``key`` (a Hugging Face Dinov2Model key) with ``shape``."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = tuple(int(s) for s in shape)
    if key.endswith("position_embeddings"):
        value = _position_embeddings(gen, shape)
    elif key.endswith(("cls_token", "mask_token")):
        value = 0.02 * _normal(gen, *shape)
    elif key.endswith("lambda1"):
        value = 0.1 + 0.03 * _normal(gen, *shape)
    elif key.endswith("bias"):
        value = 0.02 * _normal(gen, *shape)
    elif key.endswith("weight") and len(shape) == 1:
        value = 1 + 0.1 * _normal(gen, *shape)
    elif key.endswith("weight"):
        value = _normal(gen, *shape) / math.sqrt(math.prod(shape) / shape[0])
    else:
        raise ValueError(f"no formula for {key!r}")
    return value.to(torch.float32)


def formula_state_dict(keys_shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Every tensor of ``{key: shape}`` from :func:`formula_tensor`, in sorted key order."""
    return {key: formula_tensor(key, keys_shapes[key]) for key in sorted(keys_shapes)}


def formula_image(size: int = 224) -> torch.Tensor:
    """(1, 3, size, size) float64 (float32-representable) RGB in [0, 1]: two crossing gratings per channel."""
    c = torch.arange(3, dtype=F64).view(3, 1, 1)
    y = torch.arange(size, dtype=F64).view(1, size, 1)
    x = torch.arange(size, dtype=F64).view(1, 1, size)
    image = (0.5 + 0.25 * torch.sin(2 * math.pi * (y * (c + 1) / 37 + x / 23))
             + 0.25 * torch.cos(2 * math.pi * (x * (c + 2) / 29 - y / 41)))
    return image.unsqueeze(0).to(torch.float32).to(F64)


def sample_indices(numel: int, count: int) -> list[int]:
    """``count`` fixed flat indices spread over ``numel`` entries (one per equal stretch, at a varying offset)."""
    stretch = numel // count
    return [k * stretch + (k * 7919) % stretch for k in range(count)]


def digest(t: torch.Tensor, count: int) -> dict:
    """Shape, mean, std (unbiased), sum, sum of squares, largest magnitude and ``count`` sampled entries."""
    t = t.detach().to(F64)
    flat = t.flatten()
    index = sample_indices(flat.numel(), count)
    return {"shape": list(t.shape), "mean": t.mean().item(), "std": t.std().item(), "sum": t.sum().item(),
            "sum_sq": t.square().sum().item(), "abs_max": t.abs().max().item(), "index": index,
            "values": flat[index].tolist()}
