"""Write ``dinov2_hf_legacy.json``: a Hugging Face transformers 4.44 ``Dinov2Model`` (dinov2-base configuration) at a
224 x 224 input, the last transformers release that resized DINOv2's 37 x 37 position embeddings with
``scale_factor=(16.1 / 37, 16.1 / 37)`` (the "+0.1" trick; 4.45 switched to ``size=(16, 16)``).

Run once, outside the project's environment (transformers 4.44 must not go into the venv), e.g.::

    pip install --target /tmp/tf444 --no-deps transformers==4.44.2 tokenizers==0.19.1 huggingface_hub==0.24.7 \
        requests==2.32.3 urllib3==2.2.3 idna==3.10 charset-normalizer==3.4.0 certifi==2024.8.30
    PYTHONPATH=/tmp/tf444 python tests/reference/make_dinov2_hf_legacy.py

(the venv's torch, numpy, safetensors, regex, PyYAML, tqdm, filelock, packaging are used as they are). The weights
and the input are the closed-form ones of ``dinov2_formula.py``; the model runs in float64 (transformers itself
interpolates the position embeddings in float32). Not imported by the tests.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "dinov2_hf_legacy.json"
#: facebook/dinov2-base's config.json (the fields that matter; the rest are Dinov2Config defaults).
CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14,
          "image_size": 518, "layerscale_value": 1.0, "layer_norm_eps": 1e-6, "qkv_bias": True,
          "use_swiglu_ffn": False, "hidden_act": "gelu"}
SIZE = 224
TAP_SAMPLES = 32
POS_SAMPLES = 64


def _formula():
    spec = importlib.util.spec_from_file_location("dinov2_formula", HERE / "dinov2_formula.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_legacy_resize(transformers) -> None:
    from transformers.models.dinov2 import modeling_dinov2

    source = inspect.getsource(modeling_dinov2.Dinov2Embeddings.interpolate_pos_encoding)
    if "height + 0.1" not in source or "scale_factor=" not in source:
        sys.exit(f"transformers {transformers.__version__} does not have the legacy (+0.1, scale_factor) resize")


def _build(transformers, formula) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model in float64 and its formula state dict (float32)."""
    model = transformers.Dinov2Model(transformers.Dinov2Config(**CONFIG))
    state = formula.formula_state_dict({k: list(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(state, strict=True)
    return model.double().eval(), state


def main() -> None:
    import transformers

    formula = _formula()
    _check_legacy_resize(transformers)
    torch.set_num_threads(1)
    model, state = _build(transformers, formula)
    x = formula.formula_image(SIZE)
    hooked: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, o: hooked.append(o[0])) for layer in model.encoder.layer]
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        dummy = torch.zeros(1, 1 + (SIZE // CONFIG["patch_size"]) ** 2, CONFIG["hidden_size"], dtype=torch.float64)
        pos = model.embeddings.interpolate_pos_encoding(dummy, SIZE, SIZE)
    for hook in hooks:
        hook.remove()
    hidden = out.hidden_states  # [0] = embeddings, [i] = output of encoder.layer[i - 1]
    assert len(hidden) == 13 and all(torch.equal(hidden[i + 1], h) for i, h in enumerate(hooked))
    report = {
        "what": "transformers Dinov2Model (facebook/dinov2-base configuration) with the closed-form weights of "
                "dinov2_formula.py, one 224 x 224 formula image, float64; taps block<i> = hidden_states[i] = "
                "output of encoder.layer[i-1]",
        "generator": "tests/reference/make_dinov2_hf_legacy.py",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "config": CONFIG,
        "dtype": "float64 (weights and input float32-representable; position embeddings interpolated in float32 "
                 "by transformers)",
        "input": {"rule": "dinov2_formula.formula_image(224)", **formula.digest(x, TAP_SAMPLES)},
        "state_dict": {k: {"shape": list(v.shape), "sum": v.double().sum().item()} for k, v in state.items()},
        "pos_embed": formula.digest(pos, POS_SAMPLES),
        "taps": {f"block{i}": formula.digest(hidden[i], TAP_SAMPLES) for i in range(1, 13)},
        "last_hidden_state": formula.digest(out.last_hidden_state, TAP_SAMPLES),
    }
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): transformers {transformers.__version__}, "
          f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
