"""DINOv2 with ``pos_embed_resize="hf-legacy"`` against numbers stored from the real transformers 4.44.

``reference/dinov2_hf_legacy.json`` was written once by ``reference/make_dinov2_hf_legacy.py`` with transformers 4.44.2
(the last release resizing the 37 x 37 position embeddings with ``scale_factor=16.1 / 37``): a ``Dinov2Model`` of the
dinov2-base configuration carrying the closed-form weights of ``reference/dinov2_formula.py``, run in float64 on one
224 x 224 formula image. Here the same weights go through our Hugging Face conversion into timm, without transformers.

Errors are max |ours - reference| over the stored samples, mean and std, divided by the tap's largest magnitude.
Measured (torch 2.14.1, CPU): float64 <= 3e-16 and position embeddings identical; float32 <= 2.2e-7. Tolerances:
float64 1e-6, because both sides interpolate the position embeddings in float32, so another torch build's bicubic
kernel may move them by an ulp (~6e-8 relative) -- far above float64 noise, far below the 2-5 % by which the ``"hf"``
and ``"timm"`` resizes miss; float32 1e-5 (float32 rounding through 12 layers, with room for other BLAS builds).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from iqa_core.backbones import create_backbone

REFERENCE = Path(__file__).resolve().parent / "reference"
TAPS = tuple(f"block{i}" for i in range(1, 13))
TOL64 = 1e-6
TOL32 = 1e-5
#: The other resizes must miss by more than this (they miss by 2-5 % of the largest magnitude).
MISS = 1e-3


def _load_formula():
    spec = importlib.util.spec_from_file_location("dinov2_formula", REFERENCE / "dinov2_formula.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


formula = _load_formula()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core runner competing OpenMP threads are slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((REFERENCE / "dinov2_hf_legacy.json").read_text())


@pytest.fixture(scope="module")
def state(reference) -> dict[str, torch.Tensor]:
    """The Hugging Face Dinov2Model state dict of the reference run (hub key names, float32)."""
    return formula.formula_state_dict({k: v["shape"] for k, v in reference["state_dict"].items()})


def error(ours: torch.Tensor, stored: dict) -> float:
    """Largest difference to the stored samples, mean and std, relative to the stored largest magnitude."""
    assert list(ours.shape) == stored["shape"]
    ours = ours.detach().to(torch.float64)
    sampled = ours.flatten()[stored["index"]]
    diffs = [(sampled - torch.tensor(stored["values"], dtype=torch.float64)).abs().max().item(),
             abs(ours.mean().item() - stored["mean"]), abs(ours.std().item() - stored["std"])]
    return max(diffs) / stored["abs_max"]


def tap_errors(backbone, reference: dict, dtype: torch.dtype) -> dict[str, float]:
    x = formula.formula_image(224).to(dtype)
    with torch.no_grad():
        outs = backbone.to(dtype)(x, list(TAPS))
    return {tap: error(out, reference["taps"][tap]) for tap, out in zip(TAPS, outs, strict=True)}


def test_weights_and_input_are_those_of_the_reference_run(reference, state):
    """The formula still gives the reference run's tensors (a changed torch RNG would fail here, not later)."""
    assert reference["versions"]["transformers"].startswith("4.44.")
    assert len(state) == 223 and "embeddings.position_embeddings" in state
    for key, stored in reference["state_dict"].items():
        assert list(state[key].shape) == stored["shape"], key
        assert state[key].double().sum().item() == pytest.approx(stored["sum"], rel=1e-12, abs=1e-9), key
    assert error(formula.formula_image(224), reference["input"]) == 0


def test_hf_legacy_equals_transformers_4_44(reference, state):
    backbone = create_backbone("dinov2", weights=state, pos_embed_resize="hf-legacy")
    assert error(backbone.model.pos_embed, reference["pos_embed"]) <= TOL64
    errors32 = tap_errors(backbone, reference, torch.float32)
    errors64 = tap_errors(backbone, reference, torch.float64)  # float32 weights, exactly representable
    assert max(errors64.values()) <= TOL64, errors64
    assert max(errors32.values()) <= TOL32, errors32


@pytest.mark.parametrize("method", ["hf", "timm"])
def test_other_resizes_do_not_match(reference, state, method):
    """The reference tells the resizes apart: a regression of the legacy one cannot pass."""
    backbone = create_backbone("dinov2", weights=state, pos_embed_resize=method)
    assert error(backbone.model.pos_embed, reference["pos_embed"]) > MISS
    errors = tap_errors(backbone, reference, torch.float32)
    assert min(errors.values()) > MISS, errors
