"""The six foundation-model backbones of ZS-IQA (Ghildyal, Barman, Zadtootaghaj, ICASSP 2025), built with timm.

The official code (abhijay9/ZS-IQA, ``models.py`` and ``run.py``) loads each model from its own library (OpenAI
``clip``, ``open_clip``, Hugging Face ``transformers``) and registers forward hooks on its blocks. Here every
model is the equivalent timm architecture, and each tap is the output of the module the official code hooks:

- ``clip-vitb32``: OpenAI CLIP ViT-B/32 ``model.visual``, hooks on ``transformer.resblocks[i]``.
  Taps ``block1``..``block12``: (B, 50, 768), tokens.
- ``clip-rn50``: OpenAI CLIP RN50 ``model.visual``, hooks on the stem ``avgpool`` and ``layer1``..``layer4``.
  Taps ``stem`` (B, 64, 56, 56), ``layer1`` (B, 256, 56, 56), ``layer2`` (B, 512, 28, 28),
  ``layer3`` (B, 1024, 14, 14), ``layer4`` (B, 2048, 7, 7), maps.
- ``dinov1``: HF ``facebook/dino-vitb16`` ViTModel, hooks on ``encoder.layer[i]`` (first output).
  Taps ``block1``..``block12``: (B, 197, 768), tokens.
- ``dinov2``: HF ``facebook/dinov2-base`` Dinov2Model at 224 input, hooks on ``encoder.layer[i]``.
  Taps ``block1``..``block12``: (B, 257, 768), tokens (no register tokens).
- ``imagenet-vit``: HF ``google/vit-base-patch16-224`` ViTForImageClassification, hooks on ``vit.encoder.layer[i]``.
  Taps ``block1``..``block12``: (B, 197, 768), tokens.
- ``clip-convnext-b``: open_clip ``hf-hub:laion/CLIP-convnext_base_w-laion2B-s13B-b82K`` ``model.visual``, hooks on
  every block of ``trunk.stages``. Taps ``s<stage>b<block>``, 36 of them, ``s1b1``..``s4b3`` (3, 3, 27, 3 blocks):
  (B, 128, 56, 56), (B, 256, 28, 28), (B, 512, 14, 14), (B, 1024, 7, 7), maps.

Token taps are whole block outputs, class token first (batch-first; OpenAI CLIP's own blocks work sequence-first,
(50, B, 768)). Every backbone also has the tap :data:`iqa_core.backbones.EMBEDDING` (``"embedding"``), the
final-embedding baselines of the paper, L2-normalised along the last dimension as the official code does:
CLIP ViT-B/32, RN50 and ConvNeXt give ``encode_image`` (after the projection / attention pool), shapes (B, 512),
(B, 1024) and (B, 640); DINO, DINOv2 and the ImageNet ViT give the last hidden state after the final LayerNorm,
per token, (B, T, 768) (the official ``F.normalize(outputs.last_hidden_state, dim=-1)``).

Facts carried over from the official code and the libraries it used:

- Images are float RGB in [0, 1] and go to every model without mean/std normalisation (the official
  ``prepare_image`` is ``ToTensor`` only); ``normalize=True`` applies the mean/std of the weights' timm
  ``pretrained_cfg`` instead (a documented deviation).
- Every model sees 224 x 224 windows (``window = 224``), placed by ZS-IQA's rule (:func:`zs_iqa.protocol.window_grid`,
  stride 200).
- LayerNorm epsilon follows the official models: 1e-12 for the two HF ViT checkpoints (``ViTConfig`` default,
  used by the HF conversions of DINO and of Google's ViT), 1e-6 for DINOv2, 1e-5 for OpenAI CLIP.
- DINOv2 stores 37 x 37 position embeddings (518 px) and HF resizes them for a 224 input (16 x 16) on every
  forward. transformers <= 4.44 did it with ``F.interpolate(scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")``
  (the DINO "+0.1" trick); from 4.45 (25 Sep 2024) with ``size=(16, 16)``. The paper's arXiv version (11 Sep
  2024) predates 4.45, so ``pos_embed_resize="hf-legacy"`` is the default for DINOv2; ``"hf"`` gives the newer
  result and ``"timm"`` timm's own (antialiased) resampling. Resizing happens once, when the weights are loaded.
- ``imagenet-vit``'s embedding tap is an extension: the official ``embed_imagenet_vit`` is commented out.
- The official code runs OpenAI CLIP ViT-B/32 and RN50 in float16 on CUDA (``clip.load`` on a GPU, inputs cast
  to ``HalfTensor``); everything here is float32 unless the caller casts the module.

Weights are never downloaded. The project's one resolver, :mod:`iqa_core.weights`, finds them (this module declares
what to look for, :func:`weights_query`, and converts what is found), in this order: the ``weights=`` argument (a
file, a folder holding one of the expected files, a state dict, or ``"random"``: timm's initialisation seeded with
0, for tests and timing only); ``$IQA_WEIGHTS_DIR``; the torch hub cache (``$TORCH_HOME/hub/checkpoints``); the
OpenAI CLIP cache (``~/.cache/clip``); the Hugging Face hub cache (``$HF_HUB_CACHE``, read offline with
``huggingface_hub.try_to_load_from_cache``). :func:`expected_weight_files` lists the file names per backbone: the
official release's name (``ViT-B-32.pt``, ``RN50.pt``, ...), timm's (``timm_<arch>.<tag>.safetensors``), and Hugging
Face folders named after the hub id (``facebook/dino-vitb16/model.safetensors``, ``timm/<arch>.<tag>/...``,
``laion/CLIP-convnext_base_w-laion2B-s13B-b82K/open_clip_pytorch_model.bin``; the last part of the id alone,
``dino-vitb16/``, works too) holding one of :data:`HUB_FILES`. Accepted formats: timm, OpenAI CLIP
(TorchScript archive or state dict, full model or ``visual`` only), open_clip, Hugging Face ViT / DINOv2
(``ViTModel``, ``ViTForImageClassification``, ``Dinov2Model``), the original DINO / DINOv2 releases. Conversion is
timm's own ``checkpoint_filter_fn`` where timm has one (OpenAI CLIP, open_clip, original DINOv2) and the key maps of
this module for Hugging Face checkpoints; loading is strict (:class:`CheckpointMismatchError` lists what does not
fit).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iqa_core.backbones import EMBEDDING, TapBackbone, register_backbone
from iqa_core.validation import IQAInputError
from iqa_core.weights import (
    InvalidWeightsError,
    WeightsFormat,
    WeightsQuery,
    WeightsSource,
    find_first_file,
    folder_place,
    load_weights,
    read_first_found,
    read_weights_file,
)
from zs_iqa.protocol import STRIDE, window_grid

__all__ = ["FoundationSpec", "FOUNDATION_SPECS", "FoundationBackbone", "ViTTapBackbone", "ConvNeXtTapBackbone",
           "CLIPResNetTapBackbone", "CheckpointMismatchError", "HUB_FILES", "POS_EMBED_RESIZE",
           "expected_weight_files", "weights_query", "find_foundation_weights", "read_checkpoint",
           "convert_checkpoint", "TORCHSCRIPT",
           "tap_shapes", "resize_pos_embed"]

#: File names of a Hugging Face hub repository that may hold the weights (timm, transformers, open_clip).
HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: How a checkpoint's position embeddings are resized to the model's token grid (see the module docstring).
POS_EMBED_RESIZE = ("hf-legacy", "hf", "timm")
#: Smallest input side of the two CNNs (stride 32 at their deepest tap).
CNN_MIN_SIZE = 32


class CheckpointMismatchError(InvalidWeightsError):
    """A checkpoint's tensors do not fit the backbone (missing, unexpected or differently shaped keys)."""


@dataclass(frozen=True)
class FoundationSpec:
    """Everything that differs between the six backbones, declared once."""

    name: str  #: registry name
    timm_model: str  #: timm ``<architecture>.<pretrained tag>``
    family: str  #: ``"vit"``, ``"convnext"`` or ``"clip-resnet"``
    official: str  #: the official model and the modules whose outputs the taps are
    taps: tuple[str, ...]
    layout: str  #: ``"tokens"`` (B, T, D) or ``"map"`` (B, C, H, W)
    files: tuple[str, ...]  #: file names looked for directly in each weights folder
    hub_ids: tuple[str, ...]  #: Hugging Face repositories (folders ``<id>/`` or the hub cache) holding HUB_FILES
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  #: extra ``timm.create_model`` arguments
    patch: int | None = None  #: ViT patch size
    embedding: str = "projection"  #: ``"projection"`` (B, E) or ``"tokens"`` (B, T, D)
    pos_embed_resize: str = "timm"  #: default resize of checkpoint position embeddings (ViTs)
    description: str = ""
    top1: float | None = None
    top1_source: str = ""

    @property
    def architecture(self) -> str:
        return self.timm_model.split(".", 1)[0]


def _vit_blocks(n: int = 12) -> tuple[str, ...]:
    return tuple(f"block{i}" for i in range(1, n + 1))


#: ConvNeXt-B blocks per stage (timm ``convnext_base``: depths 3, 3, 27, 3; widths 128, 256, 512, 1024).
CONVNEXT_B_DEPTHS = (3, 3, 27, 3)
CONVNEXT_B_WIDTHS = (128, 256, 512, 1024)
_CONVNEXT_TAPS = tuple(f"s{s + 1}b{b + 1}" for s, depth in enumerate(CONVNEXT_B_DEPTHS) for b in range(depth))
_HF_VIT_EPS = {"norm_layer": partial(nn.LayerNorm, eps=1e-12)}

FOUNDATION_SPECS: dict[str, FoundationSpec] = {spec.name: spec for spec in (
    FoundationSpec(
        "clip-vitb32", "vit_base_patch32_clip_quickgelu_224.openai", "vit",
        "OpenAI CLIP ViT-B/32 (clip.load('ViT-B/32')) model.visual; tap block<i> = transformer.resblocks[i-1] output",
        _vit_blocks(), "tokens",
        files=("ViT-B-32.pt", "timm_vit_base_patch32_clip_quickgelu_224.openai.safetensors",
               "timm_vit_base_patch32_clip_224.openai.safetensors"),
        hub_ids=("timm/vit_base_patch32_clip_224.openai",),
        timm_kwargs={"num_classes": 512}, patch=32,
        description="OpenAI CLIP ViT-B/32 image tower (QuickGELU), 12 residual blocks' tokens (50 x 768) + embedding",
        top1=63.2, top1_source="zero-shot ImageNet top-1 (not a trained classifier), CLIP paper: Radford et al., "
                               "ICML 2021, ViT-B/32"),
    FoundationSpec(
        "clip-rn50", "resnet50_clip.openai", "clip-resnet",
        "OpenAI CLIP RN50 (clip.load('RN50')) model.visual; taps = outputs of the stem avgpool and layer1..layer4",
        ("stem", "layer1", "layer2", "layer3", "layer4"), "map",
        files=("RN50.pt", "timm_resnet50_clip.openai.safetensors"),
        hub_ids=("timm/resnet50_clip.openai",),
        timm_kwargs={"num_classes": 1024},
        description="OpenAI CLIP RN50 image tower (attention pool), stem + 4 stages + embedding",
        top1=59.6, top1_source="zero-shot ImageNet top-1 (not a trained classifier), CLIP paper: Radford et al., "
                               "ICML 2021, RN50"),
    FoundationSpec(
        "dinov1", "vit_base_patch16_224.dino", "vit",
        "DINO ViT-B/16, HF facebook/dino-vitb16 ViTModel; tap block<i> = encoder.layer[i-1] output[0]",
        _vit_blocks(), "tokens",
        files=("dino_vitbase16_pretrain.pth", "timm_vit_base_patch16_224.dino.safetensors"),
        hub_ids=("facebook/dino-vitb16", "timm/vit_base_patch16_224.dino"),
        timm_kwargs={"num_classes": 0, **_HF_VIT_EPS}, patch=16, embedding="tokens",
        description="DINO ViT-B/16 (self-supervised, ImageNet-1k), 12 encoder layers' tokens (197 x 768)",
        top1=78.2, top1_source="linear-probe ImageNet top-1, DINO paper: Caron et al., ICCV 2021, ViT-B/16"),
    FoundationSpec(
        "dinov2", "vit_base_patch14_dinov2.lvd142m", "vit",
        "DINOv2 ViT-B/14, HF facebook/dinov2-base Dinov2Model at 224 input; tap block<i> = encoder.layer[i-1] output",
        _vit_blocks(), "tokens",
        files=("dinov2_vitb14_pretrain.pth", "timm_vit_base_patch14_dinov2.lvd142m.safetensors"),
        hub_ids=("facebook/dinov2-base", "timm/vit_base_patch14_dinov2.lvd142m"),
        timm_kwargs={"num_classes": 0}, patch=14, embedding="tokens", pos_embed_resize="hf-legacy",
        description="DINOv2 ViT-B/14 (LVD-142M, no registers) at 224 x 224, 12 layers' tokens (257 x 768)",
        top1=84.5, top1_source="linear-probe ImageNet top-1, DINOv2 paper: Oquab et al., TMLR 2024, ViT-B/14 "
                               "(distilled)"),
    FoundationSpec(
        "imagenet-vit", "vit_base_patch16_224.orig_in21k_ft_in1k", "vit",
        "Google ViT-B/16, HF google/vit-base-patch16-224 ViTForImageClassification; tap block<i> = "
        "vit.encoder.layer[i-1] output[0]",
        _vit_blocks(), "tokens",
        files=("jx_vit_base_p16_224-80ecf9dd.pth", "timm_vit_base_patch16_224.orig_in21k_ft_in1k.safetensors"),
        hub_ids=("google/vit-base-patch16-224", "timm/vit_base_patch16_224.orig_in21k_ft_in1k"),
        timm_kwargs={"num_classes": 0, **_HF_VIT_EPS}, patch=16, embedding="tokens",
        description="supervised ViT-B/16 (ImageNet-21k, fine-tuned on ImageNet-1k at 224), 12 layers' tokens",
        top1=81.786, top1_source="supervised ImageNet top-1, timm results-imagenet.csv "
                                 "(vit_base_patch16_224.orig_in21k_ft_in1k, 224 px, crop 0.9)"),
    FoundationSpec(
        "clip-convnext-b", "convnext_base.clip_laion2b", "convnext",
        "open_clip hf-hub:laion/CLIP-convnext_base_w-laion2B-s13B-b82K model.visual; tap s<j>b<k> = "
        "trunk.stages[j-1].blocks[k-1] output",
        _CONVNEXT_TAPS, "map",
        files=("timm_convnext_base.clip_laion2b.safetensors", "CLIP-convnext_base_w-laion2B-s13B-b82K.bin"),
        hub_ids=("laion/CLIP-convnext_base_w-laion2B-s13B-b82K", "timm/convnext_base.clip_laion2b"),
        timm_kwargs={"num_classes": 640},
        description="OpenCLIP ConvNeXt-B (LAION-2B, 13B samples) image tower, all 36 blocks + embedding",
        top1=70.8, top1_source="zero-shot ImageNet top-1 (not a trained classifier), model card of "
                               "laion/CLIP-convnext_base_w-laion2B-s13B-b82K (71.5 is the -augreg variant)"),
)}


# ---------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------

def tap_shapes(name: str, size: int = 224) -> dict[str, tuple[int, ...]]:
    """Shape (without the batch dimension) of every tap and of the embedding for a ``size`` x ``size`` input."""
    spec = FOUNDATION_SPECS[name]
    if spec.family == "vit":
        tokens = 1 + (size // spec.patch) ** 2
        shapes = {tap: (tokens, 768) for tap in spec.taps}
        shapes[EMBEDDING] = (512,) if spec.embedding == "projection" else (tokens, 768)
        return shapes
    if spec.family == "clip-resnet":
        s4 = size // 4  # stem: three 3x3 convs (the first with stride 2) + 2x2 average pool
        sides = (s4, s4, s4 // 2, s4 // 4, s4 // 8)
        channels = (64, 256, 512, 1024, 2048)
        shapes = {tap: (c, side, side) for tap, c, side in zip(spec.taps, channels, sides, strict=True)}
        shapes[EMBEDDING] = (1024,)
        return shapes
    shapes = {}
    side = size // 4  # ConvNeXt stem: 4x4 conv, stride 4; each later stage halves
    for stage, (depth, width) in enumerate(zip(CONVNEXT_B_DEPTHS, CONVNEXT_B_WIDTHS, strict=True)):
        for block in range(depth):
            shapes[f"s{stage + 1}b{block + 1}"] = (width, side >> stage, side >> stage)
    shapes[EMBEDDING] = (640,)
    return shapes


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------------------------

def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (OpenAI's ``ViT-B-32.pt``) carry ``constants.pkl`` and a ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _unwrap(obj: object, origin: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.``."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{origin}: expected a state dict, found {type(obj).__name__}")
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointMismatchError(f"{origin}: no tensors found")
    for prefix in ("module.", "model."):  # DataParallel wrappers; the state dict of a FoundationBackbone itself
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    from zs_iqa.torchscript_archive import read_torchscript_state_dict  # imports this module

    return read_torchscript_state_dict(path)


#: OpenAI's CLIP releases: TorchScript archives, read as data by :mod:`zs_iqa.torchscript_archive`, never run.
TORCHSCRIPT = WeightsFormat("TorchScript archive", _is_torchscript, _read_torchscript)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, a TorchScript archive (its parameters and buffers, read as data by
    :mod:`zs_iqa.torchscript_archive`, nothing in it compiled or run) or a ``torch.save`` file (loaded weights-only),
    told apart by their content, not their names (:func:`iqa_core.weights.read_weights_file`)."""
    return _unwrap(read_weights_file(path, formats=(TORCHSCRIPT,)), str(path))


# ---------------------------------------------------------------------------------------------------------------
# Where weights are looked for (the search itself is iqa_core.weights')
# ---------------------------------------------------------------------------------------------------------------

def expected_weight_files(name: str) -> list[str]:
    """Relative paths looked for in a weights folder (``$IQA_WEIGHTS_DIR``, a ``weights=`` folder, the caches)."""
    spec = FOUNDATION_SPECS[name]
    return list(spec.files) + [f"{hub_id}/{file}" for hub_id in spec.hub_ids for file in HUB_FILES]


def weights_query(name: str) -> WeightsQuery:
    """The search for backbone ``name``'s checkpoint: its file names in the weights folders (hub folders also under
    the last part of the id, ``dino-vitb16/``), OpenAI CLIP's cache and the Hugging Face hub cache; no download."""
    spec = FOUNDATION_SPECS[name]
    return WeightsQuery(
        f"pretrained weights for {spec.name!r} ({spec.official.split(';')[0]})", tuple(expected_weight_files(name)),
        folder_aliases=tuple(f"{hub_id.split('/')[-1]}/{file}" for hub_id in spec.hub_ids for file in HUB_FILES),
        openai_clip_cache=True, hub_repos=spec.hub_ids, hub_files=HUB_FILES,
        note="weights='random' builds the architecture with seeded random weights, for tests only; nothing is "
             "downloaded.")


def find_foundation_weights(name: str) -> tuple[Path | None, list[str]]:
    """The first local weights file for backbone ``name`` and a description of every place looked in before it."""
    return find_first_file(weights_query(name).places())


def _from_folder(query: WeightsQuery, folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A ``weights=`` folder: the query's file names in it, or the files of a downloaded hub repository itself."""
    names = (*query.names, *query.folder_aliases, *HUB_FILES)
    found, looked = read_first_found([folder_place("weights= folder", folder, names)], read_checkpoint)
    if found is None:
        raise query.not_found(looked, where=f" in {folder}")
    return found[0], str(found[1])


def _resolve(spec: FoundationSpec, weights: WeightsSource) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(raw state dict, origin) from the first source that works; ``(None, "random")`` for ``weights="random"``."""
    if isinstance(weights, str) and weights == "random":
        return None, "random"
    if isinstance(weights, Mapping):
        return _unwrap(weights, "weights= state dict"), "weights= state dict"
    query = weights_query(spec.name)
    if weights is None:
        state, path = load_weights(query, read_checkpoint)
        return state, str(path)
    if Path(weights).expanduser().is_dir():
        return _from_folder(query, Path(weights).expanduser())
    path = query.given_file(weights)
    return read_checkpoint(path), str(path)


# ---------------------------------------------------------------------------------------------------------------
# Converting checkpoints to timm's names
# ---------------------------------------------------------------------------------------------------------------

#: Hugging Face ViT / DINOv2 top-level keys -> timm VisionTransformer keys.
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
#: HF ViTLayer (DINO, google/vit) module names -> timm Block module names.
_HF_VIT_LAYER = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
                 "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
#: HF Dinov2Layer module names -> timm Block module names (layer scales: ``lambda1`` -> ``gamma``).
_HF_DINOV2_LAYER = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
                    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "layer_scale1": "ls1", "layer_scale2": "ls2"}
#: HF keys with no counterpart in the tapped backbone, dropped explicitly.
_HF_DROP = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias", "classifier.weight",
            "classifier.bias")
_HF_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
#: transformers >= 5 names modules differently in memory (its ``save_pretrained`` writes the hub names above).
_HF_V5_NAMES = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
                "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense."}
_HF_V5_VIT_MLP = {"mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."}


def _hf_hub_names(state: Mapping[str, torch.Tensor], dinov2: bool) -> dict[str, torch.Tensor]:
    """Rename a transformers >= 5 in-memory ViT / DINOv2 state dict to the hub checkpoints' names (no-op on those)."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.", r"encoder.layer.\1.", key)
        for new, old in {**_HF_V5_NAMES, **({} if dinov2 else _HF_V5_VIT_MLP)}.items():
            key = re.sub(rf"^(encoder\.layer\.\d+\.){re.escape(new)}", rf"\g<1>{old}", key)
        out[key] = value
    return out


def _is_hf_vit(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def _hf_vit_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ViTModel / ViTForImageClassification / Dinov2Model state dict to timm's names.

    Accepts the hub files' names (``encoder.layer.{i}.attention.attention.query.weight``, ...) and the in-memory
    names of transformers >= 5 (``layers.{i}.attention.q_proj.weight``, ...). Query, key and value projections
    are concatenated into timm's fused ``qkv`` (in that order). Keys this map does not know are passed through
    unchanged, so that strict loading reports them.
    """
    state = {re.sub(r"^(vit|dinov2)\.", "", k): v for k, v in state.items()}
    dinov2 = any(".layer_scale1." in k for k in state)
    state = _hf_hub_names(state, dinov2)
    table = _HF_DINOV2_LAYER if dinov2 else _HF_VIT_LAYER
    out, qkv = {}, {}
    for key, value in state.items():
        if key in _HF_DROP:
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_LAYER_KEY.match(key)
        if match is None:
            out[key] = value
            continue
        layer, module, param = int(match.group(1)), match.group(2), match.group(3)
        if module.startswith("attention.attention."):
            qkv.setdefault((layer, param), {})[module.rsplit(".", 1)[-1]] = value
            continue
        if module in table:
            out[f"blocks.{layer}.{table[module]}.{'gamma' if param == 'lambda1' else param}"] = value
        else:
            out[key] = value
    for (layer, param), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:
            out.update({f"encoder.layer.{layer}.attention.attention.{p}.{param}": v for p, v in parts.items()})
    return out


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], method: str) -> torch.Tensor:
    """Resize (1, 1 + N, D) ViT position embeddings (class token first, square N) to a ``grid`` of patches.

    ``"hf-legacy"``: transformers <= 4.44 (``scale_factor = (g + 0.1) / sqrt(N)``, bicubic, no antialiasing);
    ``"hf"``: transformers >= 4.45 (``size = grid``, bicubic, no antialiasing); ``"timm"``: timm's
    ``resample_abs_pos_embed`` (bicubic, antialiased). All interpolate in float32.
    """
    if method not in POS_EMBED_RESIZE:
        raise ValueError(f"pos_embed_resize must be one of {POS_EMBED_RESIZE}, got {method!r}")
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointMismatchError(f"position embeddings of {n} patches are not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    if method == "timm":
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pos_embed, list(grid), old_size=[side, side], num_prefix_tokens=1)
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    if method == "hf":
        patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
    else:
        scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise ValueError(f"resizing position embeddings gave {tuple(patch_pos.shape[-2:])}, wanted {tuple(grid)}")
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


def _patch_kernel(state: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    for key in ("patch_embed.proj.weight", "visual.conv1.weight", "visual.trunk.patch_embed.proj.weight"):
        if key in state and state[key].ndim == 4:
            return tuple(state[key].shape[-2:])
    return None


def _convert_vit(state: dict[str, torch.Tensor], model: nn.Module, spec: FoundationSpec,
                 pos_embed_resize: str) -> dict[str, torch.Tensor]:
    from timm.models.vision_transformer import checkpoint_filter_fn

    if _is_hf_vit(state):
        state = _hf_vit_to_timm(state)
    elif "class_embedding" in state and "conv1.weight" in state:  # OpenAI CLIP ``visual`` alone
        state = {f"visual.{k}": v for k, v in state.items()}
    kernel = _patch_kernel(state)
    if kernel is not None and kernel != (spec.patch, spec.patch):
        raise CheckpointMismatchError(f"{spec.name}: checkpoint has {kernel[0]}x{kernel[1]} patches, the model "
                                      f"{spec.patch}x{spec.patch}: weights of another architecture")
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state = {**state, "pos_embed": resize_pos_embed(state["pos_embed"], model.patch_embed.grid_size,
                                                        pos_embed_resize)}
    state = checkpoint_filter_fn(state, model)
    if model.num_classes == 0:  # DINO / DINOv2 / ImageNet ViT are tapped without a classifier head
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return state


def _convert_convnext(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.convnext import checkpoint_filter_fn

    if "trunk.stem.0.weight" in state:  # open_clip ``visual`` alone
        state = {f"visual.{k}": v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


def _convert_clip_resnet(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.byobnet import checkpoint_filter_fn

    if "conv1.weight" in state and "attnpool.c_proj.weight" in state:  # OpenAI CLIP ``visual`` alone
        state = {f"visual.{k}": v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


def convert_checkpoint(name: str, state: Mapping[str, torch.Tensor], model: nn.Module,
                       pos_embed_resize: str | None = None) -> dict[str, torch.Tensor]:
    """Convert a checkpoint of backbone ``name`` (any accepted format) to the keys of its timm ``model``."""
    spec = FOUNDATION_SPECS[name]
    state = _unwrap(state, "checkpoint")
    if spec.family == "vit":
        return _convert_vit(state, model, spec, pos_embed_resize or spec.pos_embed_resize)
    if spec.family == "convnext":
        return _convert_convnext(state, model)
    return _convert_clip_resnet(state, model)


def _shorten(keys: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(list(keys)[:n])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > n else ''})"


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, origin: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with one clear error listing everything that does not fit.

    A model built on the ``meta`` device (no memory, no initialisation) receives copies of the checkpoint's tensors
    (``assign=True``), floating point ones as float32 (OpenAI's files are float16).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        problems = [f"missing keys: {_shorten(missing)}" if missing else "",
                    f"unexpected keys: {_shorten(unexpected)}" if unexpected else "",
                    f"shape mismatches (checkpoint vs model): {_shorten(mismatched, 3)}" if mismatched else ""]
        raise CheckpointMismatchError(f"weights from {origin} do not fit {what}: "
                                      + "; ".join(p for p in problems if p))
    if any(t.is_meta for t in own.values()):
        state = {k: (v.to(torch.float32) if v.is_floating_point() else v).detach().clone().contiguous()
                 for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{what}: tensors left uninitialised after loading {origin}: {left[:5]}")
    else:
        model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------------------

def _create_timm(spec: FoundationSpec, seeded: bool, **kwargs: Any) -> nn.Module:
    import timm

    kwargs = {**spec.timm_kwargs, **kwargs}
    if not seeded:
        return timm.create_model(spec.timm_model, pretrained=False, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(spec.timm_model, pretrained=False, **kwargs)


class FoundationBackbone(TapBackbone):
    """A timm foundation model with the taps of its :class:`FoundationSpec`, frozen, in eval mode.

    ``forward(x, taps)`` takes float RGB in [0, 1], (B, 3, H, W), and returns the requested taps in the order asked,
    running the network only as deep as the deepest of them (the embedding needs the whole network and is computed
    only when asked). ``self.model`` is the timm model; ``self.weights_origin`` says where its weights came from.

    Arguments: ``weights`` (see the module docstring; ``None`` searches the local folders and caches),
    ``normalize`` (``False``, paper-faithful: no mean/std; ``True``: the weights' own mean/std from timm's
    ``pretrained_cfg``), ``img_size`` (the window side, default 224; ViTs are built for exactly this size, the CNNs
    accept any size from 32 px), ``pos_embed_resize`` (ViTs: how checkpoint position embeddings of another grid
    are resized, one of :data:`POS_EMBED_RESIZE`; default per backbone, ``"hf-legacy"`` for DINOv2).
    """

    layout = "tokens"
    has_embedding = True

    def __init__(self, spec: FoundationSpec, weights: WeightsSource = None, normalize: bool = False,
                 img_size: int | None = None, pos_embed_resize: str | None = None) -> None:
        super().__init__()
        if pos_embed_resize is not None and pos_embed_resize not in POS_EMBED_RESIZE:
            raise ValueError(f"pos_embed_resize must be one of {POS_EMBED_RESIZE}, got {pos_embed_resize!r}")
        self.spec = spec
        self.name = spec.name
        self.taps = spec.taps
        self.layout = spec.layout
        self.window = int(img_size or 224)
        self.normalize = normalize
        state, self.weights_origin = _resolve(spec, weights)
        if state is None:
            self.model = self._build(seeded=True)
        else:  # built without initialising (meta device), then every tensor comes from the checkpoint
            with torch.device("meta"):
                self.model = self._build(seeded=False)
            try:
                converted = convert_checkpoint(spec.name, state, self.model, pos_embed_resize)
                load_strict(self.model, converted, f"timm {spec.architecture} ({spec.name})", self.weights_origin)
            except CheckpointMismatchError as err:
                raise CheckpointMismatchError(
                    f"{err}. Expected weights of {spec.official.split(';')[0]} in one of the accepted formats "
                    "(timm, OpenAI CLIP, open_clip, Hugging Face transformers, original DINO / DINOv2)") from None
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    # -- per family -----------------------------------------------------------------------------------------
    def _build(self, seeded: bool) -> nn.Module:
        return _create_timm(self.spec, seeded)

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        """What runs before the first tap."""
        return x

    def _steps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """One callable per tap, in forward order; tap i is steps[i] applied to tap i-1."""
        raise NotImplementedError

    def _embedding(self, last: torch.Tensor) -> torch.Tensor:
        """The final embedding from the output of the last tap, L2-normalised along the last dimension."""
        raise NotImplementedError

    def _check_size(self, height: int, width: int) -> None:
        if min(height, width) < self.min_size:
            raise IQAInputError(f"{self.name} needs images of at least {self.min_size} x {self.min_size} pixels, "
                             f"got {height} x {width}")

    # -- shared ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, taps: Sequence[str] | None = None) -> list[torch.Tensor]:
        taps = self.check_taps(taps)
        if x.ndim != 4 or x.shape[1] != 3:
            raise IQAInputError(f"{self.name} takes (B, 3, H, W) RGB batches, got shape {tuple(x.shape)}")
        self._check_size(x.shape[-2], x.shape[-1])
        x = (x - self.mean) / self.std if self.normalize else x
        wanted = set(taps)
        depth = len(self.taps) if EMBEDDING in wanted else 1 + max(self.taps.index(t) for t in wanted)
        outs: dict[str, torch.Tensor] = {}
        h = self._prefix(x)
        for tap, step in zip(self.taps[:depth], self._steps()[:depth], strict=True):
            h = step(h)
            outs[tap] = h
        if EMBEDDING in wanted:
            outs[EMBEDDING] = self._embedding(h)
        return [outs[t] for t in taps]

    def tap_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image shape of every tap and of the embedding for one ``window`` x ``window`` input."""
        return tap_shapes(self.name, self.window)

    def window_grid(self, height: int, width: int, stride: int | None = None) -> list[tuple[int, int]]:
        """ZS-IQA's sliding windows (stride 200 unless given)."""
        return window_grid(height, width, self.window, stride or STRIDE)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, window={self.window}, normalize={self.normalize}, "
                f"weights={self.weights_origin!r}")


class ViTTapBackbone(FoundationBackbone):
    """timm VisionTransformer: taps ``block1``..``block12`` are the blocks' full outputs (B, 1 + N, 768), class
    token first; ``img_size`` sizes the position embeddings and fixes the input (``window`` = ``min_size``)."""

    def __init__(self, spec: FoundationSpec, weights: WeightsSource = None, normalize: bool = False,
                 img_size: int | None = None, pos_embed_resize: str | None = None) -> None:
        self._img_size = int(img_size or 224)
        super().__init__(spec, weights, normalize, img_size, pos_embed_resize)
        self.min_size = self.window

    def _build(self, seeded: bool) -> nn.Module:
        return _create_timm(self.spec, seeded, img_size=self._img_size)

    def _check_size(self, height: int, width: int) -> None:
        if (height, width) != (self.window, self.window):
            raise IQAInputError(f"{self.name} takes {self.window} x {self.window} windows (fixed position embeddings), "
                             f"got {height} x {width}; cut the image into windows first")

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def _steps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return list(self.model.blocks)

    def _embedding(self, last: torch.Tensor) -> torch.Tensor:
        tokens = self.model.norm(last)
        if self.spec.embedding == "tokens":  # DINO, DINOv2, ImageNet ViT: last_hidden_state, per token
            return F.normalize(tokens, dim=-1)
        return F.normalize(self.model.forward_head(tokens), dim=-1)  # CLIP: ln_post(class token) @ proj


class ConvNeXtTapBackbone(FoundationBackbone):
    """timm ConvNeXt (open_clip's ``trunk``): tap ``s<j>b<k>`` is block k of stage j (stage j >= 2 starts with its
    downsampling layer); the embedding is open_clip's head: global average pool, LayerNorm, linear projection."""

    min_size = CNN_MIN_SIZE

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.stem(x)

    def _steps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for stage in self.model.stages:  # stage 1's downsample is an identity (the stem already reduced by 4)
            steps.append(partial(_then, stage.downsample, stage.blocks[0]))
            steps.extend(stage.blocks[1:])
        return steps

    def _embedding(self, last: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.forward_head(self.model.norm_pre(last)), dim=-1)


class CLIPResNetTapBackbone(FoundationBackbone):
    """timm ``resnet50_clip`` (ByobNet): ``stem`` = three 3x3 convolutions + 2x2 average pool (OpenAI's
    ``avgpool``), ``layer1``..``layer4`` = ``stages[0..3]``; the embedding is the attention pool (its position
    embeddings are resized by timm for inputs other than 224)."""

    min_size = CNN_MIN_SIZE

    def _steps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return [self.model.stem, *self.model.stages]

    def _embedding(self, last: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.forward_head(self.model.final_conv(last)), dim=-1)


def _then(first: Callable[[torch.Tensor], torch.Tensor], second: Callable[[torch.Tensor], torch.Tensor],
          x: torch.Tensor) -> torch.Tensor:
    return second(first(x))


_FAMILY_CLASS: dict[str, type[FoundationBackbone]] = {
    "vit": ViTTapBackbone, "convnext": ConvNeXtTapBackbone, "clip-resnet": CLIPResNetTapBackbone}


def _factory(spec: FoundationSpec) -> Callable[..., FoundationBackbone]:
    return partial(_FAMILY_CLASS[spec.family], spec)


def _weights_hint(spec: FoundationSpec) -> str:
    return (f"{weights_query(spec.name).advice()} (also searched: the torch hub cache, ~/.cache/clip, the Hugging Face "
            "hub cache); never downloaded")


def _register() -> None:
    for spec in FOUNDATION_SPECS.values():
        register_backbone(spec.name, _factory(spec), description=f"{spec.description}. Official: {spec.official}",
                          top1=spec.top1, top1_source=spec.top1_source, weights_hint=_weights_hint(spec))


_register()
