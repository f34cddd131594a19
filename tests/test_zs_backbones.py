"""zs_iqa.backbones: the six ZS-IQA foundation-model backbones (timm), their taps, weights and checkpoint formats.

Everything runs offline with random weights. Most checks use small inputs (the real architectures, fewer patches);
the shapes at the official 224 x 224 are asserted from the declared table, and by real forwards for the two cheap
CLIP towers and in the equivalence tests. The equivalence tests build the official model classes (OpenAI ``clip``,
``open_clip``, ``transformers``) with random weights, where those packages are installed, and check that the taps
equal the outputs of the modules the official ``run.py`` hooks.
"""

from __future__ import annotations

import ast
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from iqa_core.backbones import EMBEDDING, backbone_info, create_backbone
from iqa_core.weights import WeightsNotFoundError
from zs_iqa import backbones as zb

NAMES = ("clip-vitb32", "clip-rn50", "dinov1", "dinov2", "imagenet-vit", "clip-convnext-b")
#: Input side of the fast tests: 2 x 2 patches for the ViTs, stride-32 CNNs at 64.
SMALL = {"clip-vitb32": 64, "clip-rn50": 64, "dinov1": 32, "dinov2": 28, "imagenet-vit": 32, "clip-convnext-b": 64}

_VIT224 = {f"block{i}": None for i in range(1, 13)}
#: The documented per-image shapes at 224 x 224 (module docstring of zs_iqa.backbones).
SHAPES_224 = {
    "clip-vitb32": {**{t: (50, 768) for t in _VIT224}, EMBEDDING: (512,)},
    "clip-rn50": {"stem": (64, 56, 56), "layer1": (256, 56, 56), "layer2": (512, 28, 28), "layer3": (1024, 14, 14),
                  "layer4": (2048, 7, 7), EMBEDDING: (1024,)},
    "dinov1": {**{t: (197, 768) for t in _VIT224}, EMBEDDING: (197, 768)},
    "dinov2": {**{t: (257, 768) for t in _VIT224}, EMBEDDING: (257, 768)},
    "imagenet-vit": {**{t: (197, 768) for t in _VIT224}, EMBEDDING: (197, 768)},
    "clip-convnext-b": {**{f"s1b{b}": (128, 56, 56) for b in range(1, 4)},
                        **{f"s2b{b}": (256, 28, 28) for b in range(1, 4)},
                        **{f"s3b{b}": (512, 14, 14) for b in range(1, 28)},
                        **{f"s4b{b}": (1024, 7, 7) for b in range(1, 4)}, EMBEDDING: (640,)},
}
TOP1 = {"clip-vitb32": (63.2, "zero-shot"), "clip-rn50": (59.6, "zero-shot"), "dinov1": (78.2, "linear-probe"),
        "dinov2": (84.5, "linear-probe"), "imagenet-vit": (81.786, "supervised"),
        "clip-convnext-b": (70.8, "zero-shot")}


def run(backbone: zb.FoundationBackbone, x: torch.Tensor, taps=None) -> list[torch.Tensor]:
    with torch.no_grad():
        return backbone(x, taps)


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_rel(ours: torch.Tensor, official: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """Largest absolute difference at most ``tol`` times the largest official magnitude."""
    assert ours.shape == official.shape, what
    err = (ours - official).abs().max() / official.abs().max()
    assert err <= tol, f"{what}: relative error {err:.3g}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while this module runs: its forwards are tiny, and on a shared 2-core runner the OpenMP
    threads of tiny ops spin against each other (5 forwards of a 64 px ViT: 4.8 s with 2 threads, 0.6 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small():
    """Random backbones at the small sizes, built once per module."""
    cache: dict[str, zb.FoundationBackbone] = {}

    def get(name: str) -> zb.FoundationBackbone:
        if name not in cache:
            cache[name] = create_backbone(name, weights="random", img_size=SMALL[name])
        return cache[name]

    return get


@pytest.fixture
def no_weights_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty $IQA_WEIGHTS_DIR, torch hub, OpenAI CLIP and Hugging Face caches."""
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return empty


# ---------------------------------------------------------------------------------------------------------------
# Registry and declared facts
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_registered_with_top1_and_weights_hint(name):
    info = backbone_info(name)
    top1, kind = TOP1[name]
    assert info.top1 == pytest.approx(top1)
    assert kind in info.top1_source
    assert zb.FOUNDATION_SPECS[name].files[0] in info.weights_hint
    assert "Official" in info.description


def test_timm_is_imported_only_when_a_backbone_is_built():
    """Registration stays light: no module-level import of timm (or of the official libraries)."""
    tree = ast.parse(Path(zb.__file__).read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top_level for a in n.names} | {
        (n.module or "").split(".")[0] for n in top_level if isinstance(n, ast.ImportFrom)}
    assert not names & {"timm", "open_clip", "transformers", "clip", "huggingface_hub", "safetensors"}


@pytest.mark.parametrize("name", NAMES)
def test_declared_shapes_at_224_are_the_documented_ones(name):
    assert zb.tap_shapes(name, 224) == SHAPES_224[name]
    spec = zb.FOUNDATION_SPECS[name]
    assert list(SHAPES_224[name])[:-1] == list(spec.taps)


# ---------------------------------------------------------------------------------------------------------------
# Taps
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_tap_has_its_shape_and_the_embedding_unit_norm(small, name):
    backbone = small(name)
    vit = backbone.spec.family == "vit"
    assert backbone.window == SMALL[name]
    assert backbone.min_size == (SMALL[name] if vit else zb.CNN_MIN_SIZE)
    assert backbone.layout == ("tokens" if vit else "map")
    taps = [*backbone.taps, EMBEDDING]
    x = images(2, SMALL[name])
    outs = run(backbone, x, taps)
    expected = zb.tap_shapes(name, SMALL[name])
    assert {t: tuple(o.shape) for t, o in zip(taps, outs, strict=True)} == {t: (2, *s) for t, s in expected.items()}
    norms = outs[-1].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    for tap, alone, batched in zip(taps, run(backbone, x[1:], taps), outs, strict=True):  # images do not interact
        assert_rel(alone[0], batched[1], tap)


@pytest.mark.parametrize("name", ["clip-vitb32", "clip-rn50"])
def test_shapes_at_224(name):
    backbone = create_backbone(name, weights="random")
    assert backbone.window == 224
    taps = [*backbone.taps, EMBEDDING]
    outs = run(backbone, images(1, 224), taps)
    assert {t: tuple(o.shape[1:]) for t, o in zip(taps, outs, strict=True)} == SHAPES_224[name]


@pytest.mark.parametrize("name", NAMES)
def test_taps_come_back_in_the_order_asked(small, name):
    backbone = small(name)
    x = images(1, SMALL[name], seed=3)
    first, middle, last = backbone.taps[0], backbone.taps[len(backbone.taps) // 2], backbone.taps[-1]
    asked = [last, EMBEDDING, first, middle]
    together = run(backbone, x, asked)
    for tap, out in zip(asked, together, strict=True):
        assert torch.equal(out, run(backbone, x, [tap])[0]), tap
    assert len(run(backbone, x)) == len(backbone.taps)  # taps=None: every intermediate tap, no embedding


def _step_modules(backbone: zb.FoundationBackbone) -> list[torch.nn.Module]:
    m = backbone.model
    if backbone.spec.family == "vit":
        return list(m.blocks)
    if backbone.spec.family == "convnext":
        return [block for stage in m.stages for block in stage.blocks]
    return [m.stem, *m.stages]


@pytest.mark.parametrize("name", NAMES)
def test_only_the_needed_blocks_run(small, name):
    backbone = small(name)
    calls: list[int] = []
    modules = _step_modules(backbone)
    head = backbone.model.head if backbone.spec.family != "vit" else backbone.model.norm
    hooks = [mod.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, mod in enumerate(modules)]
    hooks.append(head.register_forward_hook(lambda *_: calls.append(-1)))
    try:
        run(backbone, images(1, SMALL[name]), [backbone.taps[1]])
        assert calls == [0, 1]
        calls.clear()
        run(backbone, images(1, SMALL[name]), [EMBEDDING])
        assert calls == [*range(len(modules)), -1]
    finally:
        for hook in hooks:
            hook.remove()


def test_input_errors(small):
    vit, cnn = small("dinov1"), small("clip-rn50")
    with pytest.raises(ValueError, match="32 x 32 windows"):
        run(vit, images(1, 48))
    with pytest.raises(ValueError, match="at least 32"):
        run(cnn, images(1, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        run(cnn, torch.rand(1, 1, 64, 64))
    with pytest.raises(KeyError, match="block13"):
        run(vit, images(1, 32), ["block13"])


def test_normalize_uses_the_weights_mean_and_std(small):
    plain = small("dinov1")
    normed = create_backbone("dinov1", weights=plain.model.state_dict(), img_size=32, normalize=True)
    x = images(1, 32)
    mean = torch.tensor(plain.model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(plain.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    assert mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert torch.allclose(run(normed, x, ["block2"])[0], run(plain, (x - mean) / std, ["block2"])[0], atol=1e-6)
    assert not plain.normalize  # paper-faithful default: no normalisation


# ---------------------------------------------------------------------------------------------------------------
# Weights: resolution, round trips, wrong checkpoints
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_round_trip_through_iqa_weights_dir(small, name, tmp_path, monkeypatch):
    """timm-format safetensors saved under its expected name in $IQA_WEIGHTS_DIR load to identical outputs."""
    backbone = small(name)
    file = next(f for f in zb.FOUNDATION_SPECS[name].files if f.endswith(".safetensors"))
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, tmp_path / file)
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(tmp_path))
    loaded = create_backbone(name, img_size=SMALL[name])
    assert loaded.weights_origin == str(tmp_path / file)
    x = images(1, SMALL[name], seed=5)
    taps = [backbone.taps[0], backbone.taps[-1], EMBEDDING]
    for a, b in zip(run(loaded, x, taps), run(backbone, x, taps), strict=True):
        assert torch.equal(a, b)


def test_weights_path_folder_and_state_dict(small, tmp_path):
    backbone = small("clip-rn50")
    state = backbone.model.state_dict()
    torch.save(state, tmp_path / "mine.pth")
    hub = tmp_path / "timm" / "resnet50_clip.openai"
    hub.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, hub / "pytorch_model.bin")
    x = images(1, 64)
    want = run(backbone, x, ["layer4", EMBEDDING])
    for weights in (tmp_path / "mine.pth", str(tmp_path)):  # a file; a folder holding timm/<arch>.<tag>/
        got = run(create_backbone("clip-rn50", weights=weights), x, ["layer4", EMBEDDING])
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), weights


def test_local_caches_are_searched_offline(small, no_weights_anywhere, tmp_path):
    """The Hugging Face hub cache (timm's repository of the weights) and OpenAI CLIP's ~/.cache/clip are found."""
    state = small("clip-rn50").model.state_dict()
    snapshot = tmp_path / "hf_cache" / "models--timm--resnet50_clip.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "open_clip_model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    found, _ = zb.find_foundation_weights("clip-rn50")
    assert found == snapshot / "open_clip_model.safetensors"
    clip_cache = tmp_path / "home" / ".cache" / "clip"
    clip_cache.mkdir(parents=True)
    (clip_cache / "RN50.pt").symlink_to(found)  # an earlier place in the search order wins
    assert zb.find_foundation_weights("clip-rn50")[0] == clip_cache / "RN50.pt"
    x = images(1, 64)
    assert torch.equal(run(create_backbone("clip-rn50"), x, ["stem"])[0], run(small("clip-rn50"), x, ["stem"])[0])


def test_taps_are_differentiable_with_respect_to_the_input(small):
    x = images(1, 28).requires_grad_(True)
    small("dinov2")(x, ["block2"])[0].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in small("dinov2").parameters())


def test_wrong_checkpoints_fail_clearly(small):
    with pytest.raises(zb.CheckpointMismatchError, match="missing keys.*unexpected keys"):
        create_backbone("dinov1", weights=small("clip-rn50").model.state_dict(), img_size=32)
    with pytest.raises(zb.CheckpointMismatchError, match="16x16 patches"):
        create_backbone("dinov2", weights=small("dinov1").model.state_dict(), img_size=28)
    with pytest.raises(zb.CheckpointMismatchError, match="do not fit timm resnet50_clip"):
        create_backbone("clip-rn50", weights=small("clip-convnext-b").model.state_dict())
    partial_state = dict(small("clip-convnext-b").model.state_dict())
    partial_state.pop("head.fc.weight")
    with pytest.raises(zb.CheckpointMismatchError, match="missing keys: 1 \\(head.fc.weight\\)"):
        create_backbone("clip-convnext-b", weights=partial_state)


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_name_the_expected_files(no_weights_anywhere, name):
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone(name)
    message = str(err.value)
    for expected in zb.FOUNDATION_SPECS[name].files:
        assert expected in message
    assert str(no_weights_anywhere) in message
    assert "Hugging Face hub cache" in message and "torch hub cache" in message
    assert "random" in message


def test_weights_argument_that_does_not_exist(no_weights_anywhere, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_backbone("dinov1", weights=tmp_path / "nope.pth")
    with pytest.raises(WeightsNotFoundError, match="dino_vitbase16_pretrain.pth"):
        create_backbone("dinov1", weights=no_weights_anywhere)


def test_expected_weight_files_cover_official_timm_and_hub_names():
    assert "ViT-B-32.pt" in zb.expected_weight_files("clip-vitb32")
    assert "RN50.pt" in zb.expected_weight_files("clip-rn50")
    assert "facebook/dino-vitb16/pytorch_model.bin" in zb.expected_weight_files("dinov1")
    assert "facebook/dinov2-base/model.safetensors" in zb.expected_weight_files("dinov2")
    assert "google/vit-base-patch16-224/model.safetensors" in zb.expected_weight_files("imagenet-vit")
    assert ("laion/CLIP-convnext_base_w-laion2B-s13B-b82K/open_clip_pytorch_model.bin"
            in zb.expected_weight_files("clip-convnext-b"))


def test_pos_embed_resize_methods():
    pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    legacy, hf, timm_ = (zb.resize_pos_embed(pos, (16, 16), m) for m in ("hf-legacy", "hf", "timm"))
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    # transformers <= 4.44 (Dinov2Embeddings.interpolate_pos_encoding): scale factor (16 + 0.1) / 37, bicubic;
    # test_dinov2_reference.py checks the whole model against numbers stored from transformers 4.44.2 itself
    old = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", align_corners=False)
    assert torch.equal(legacy[:, 1:], old.permute(0, 2, 3, 1).reshape(1, 256, 8))
    new = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.equal(hf[:, 1:], new.permute(0, 2, 3, 1).reshape(1, 256, 8))
    for out in (legacy, hf, timm_):
        assert out.shape == (1, 257, 8) and torch.equal(out[:, 0], pos[:, 0])
    assert not torch.allclose(legacy, hf) and not torch.allclose(hf, timm_)
    assert zb.resize_pos_embed(pos, (37, 37), "hf") is pos
    with pytest.raises(ValueError, match="pos_embed_resize"):
        zb.resize_pos_embed(pos, (16, 16), "nearest")


# ---------------------------------------------------------------------------------------------------------------
# Equivalence with the official model classes (random weights, 224 x 224, batch 1 as the official code runs)
# ---------------------------------------------------------------------------------------------------------------

def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every norm weight, bias, layer scale and BatchNorm statistic distinct (freshly built models have ones and
    zeros there, which would hide swapped keys). Weight matrices are random already."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 or p.shape[0] == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
    return model.eval()


def _hooked(modules, call, unpack=lambda o: o) -> tuple[object, list[torch.Tensor]]:
    """Run ``call()`` with forward hooks on ``modules``, as the official run.py collects its features."""
    feats: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: feats.append(unpack(o))) for m in modules]
    try:
        with torch.no_grad():
            out = call()
    finally:
        for hook in hooks:
            hook.remove()
    return out, feats


def _check_taps(backbone: zb.FoundationBackbone, x: torch.Tensor, feats, embedding: torch.Tensor) -> None:
    outs = run(backbone, x, [*backbone.taps, EMBEDDING])
    assert len(feats) == len(backbone.taps)
    for tap, ours, official in zip(backbone.taps, outs[:-1], feats, strict=True):
        assert_rel(ours, official, tap)
    assert_rel(outs[-1], embedding, EMBEDDING)


def _openai_clip_model_module():
    """OpenAI's ``clip/model.py`` (PyPI ``openai-clip``) loaded on its own: ``clip/__init__`` needs pkg_resources."""
    spec = importlib.util.find_spec("clip")
    path = Path(spec.submodule_search_locations[0]) / "model.py" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        pytest.skip("OpenAI CLIP (pip install openai-clip) is not installed")
    module_spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "ModifiedResNet"):
        pytest.skip(f"{path} is not OpenAI's CLIP model code")
    return module


def _as_openai_file(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a whole OpenAI CLIP model: the image tower under ``visual.`` beside text-tower keys."""
    return {"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(4, 8),
            **{f"visual.{k}": v for k, v in visual.state_dict().items()}}


def test_clip_vitb32_equals_openai_clip():
    clip_model = _openai_clip_model_module()
    # clip.model.build_model for ViT-B/32: input 224, patch 32, width 768, 12 layers, 12 heads, embedding 512
    visual = _perturb(clip_model.VisionTransformer(224, 32, 768, 12, 12, 512))
    x = images(1, 224, seed=11)
    emb, feats = _hooked(visual.transformer.resblocks, lambda: visual(x))
    feats = [f.permute(1, 0, 2) for f in feats]  # OpenAI blocks work sequence-first (50, B, 768)
    backbone = create_backbone("clip-vitb32", weights=_as_openai_file(visual))
    _check_taps(backbone, x, feats, F.normalize(emb, dim=-1))


def test_clip_rn50_equals_openai_clip_also_from_a_torchscript_archive(tmp_path):
    clip_model = _openai_clip_model_module()
    # clip.model.build_model for RN50: layers (3, 4, 6, 3), width 64, heads 64 * 32 // 64, embedding 1024
    visual = _perturb(clip_model.ModifiedResNet((3, 4, 6, 3), 1024, 32, 224, 64))
    x = images(1, 224, seed=12)
    emb, feats = _hooked([visual.avgpool, visual.layer1, visual.layer2, visual.layer3, visual.layer4],
                         lambda: visual(x))
    _check_taps(create_backbone("clip-rn50", weights=_as_openai_file(visual)), x, feats, F.normalize(emb, dim=-1))

    class Archive(torch.nn.Module):  # OpenAI's RN50.pt is a TorchScript archive of the whole model
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t

    with warnings.catch_warnings():  # torch.jit is deprecated in recent torch; the archive format is what matters
        warnings.simplefilter("ignore")
        torch.jit.trace(Archive(), torch.zeros(1)).save(str(tmp_path / "RN50.pt"))
    _check_taps(create_backbone("clip-rn50", weights=tmp_path / "RN50.pt"), x, feats, F.normalize(emb, dim=-1))


def _hf_layers(model) -> list[torch.nn.Module]:
    """``encoder.layer`` (transformers 4) or ``layers`` (transformers 5) of a HF ViT / DINOv2 model."""
    return list(model.layers) if hasattr(model, "layers") else list(model.encoder.layer)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name", ["dinov1", "imagenet-vit"])
def test_hf_vit_equals_transformers(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig()  # the configuration of facebook/dino-vitb16 and google/vit-base-patch16-224
    if name == "dinov1":
        official = _perturb(transformers.ViTModel(config))
        encoder = official
    else:
        official = _perturb(transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)))
        encoder = official.vit
    x = images(1, 224, seed=13)
    out, feats = _hooked(_hf_layers(encoder), lambda: encoder(x), _first)
    embedding = F.normalize(out.last_hidden_state, dim=-1)
    official.save_pretrained(tmp_path)  # writes the hub checkpoint's key names
    _check_taps(create_backbone(name, weights=tmp_path), x, feats, embedding)
    if name == "dinov1":  # also the in-memory names of the installed transformers
        _check_taps(create_backbone(name, weights=official.state_dict()), x, feats, embedding)


def test_dinov2_equals_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    major_minor = tuple(int(v) for v in transformers.__version__.split(".")[:2])
    resize = "hf" if major_minor >= (4, 45) else "hf-legacy"  # see zs_iqa.backbones (DINOv2 position embeddings)
    official = _perturb(transformers.Dinov2Model(transformers.Dinov2Config(image_size=518, patch_size=14)))
    x = images(1, 224, seed=14)
    out, feats = _hooked(_hf_layers(official), lambda: official(x), _first)
    official.save_pretrained(tmp_path)
    backbone = create_backbone("dinov2", weights=tmp_path, pos_embed_resize=resize)
    _check_taps(backbone, x, feats, F.normalize(out.last_hidden_state, dim=-1))
    assert zb.FOUNDATION_SPECS["dinov2"].pos_embed_resize == "hf-legacy"  # the default: transformers of Sep 2024


def _open_clip_visual(open_clip, name: str) -> torch.nn.Module:
    """The image tower of open_clip model ``name`` built from its own configuration (the text tower is not needed)."""
    build = getattr(open_clip.model, "_build_vision_tower", None)
    config = open_clip.get_model_config(name)
    if build is None or config is None:
        return open_clip.create_model(name, pretrained=None).visual
    return build(config["embed_dim"], config["vision_cfg"])


def test_clip_convnext_equals_open_clip():
    open_clip = pytest.importorskip("open_clip")
    visual = _perturb(_open_clip_visual(open_clip, "convnext_base_w"))  # encode_image = visual(image)
    x = images(1, 224, seed=15)
    blocks = [block for stage in visual.trunk.stages for block in stage.blocks]
    emb, feats = _hooked(blocks, lambda: visual(x))
    backbone = create_backbone("clip-convnext-b", weights=_as_openai_file(visual))  # open_clip: same "visual." keys
    _check_taps(backbone, x, feats, F.normalize(emb, dim=-1))
