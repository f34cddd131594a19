"""Reliability: nothing loaded from a file runs code; every user mistake ends in one line (exit status 2 in the
command line, a documented exception in the API); every metric's smallest image is its true minimum; every metric
takes float16/32/64 tensors; DeepSSIM's tiled evaluation of large images is exact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_core import IQAInputError, create_metric, list_metrics
from iqa_core.weights import InvalidWeightsError, WeightsNotFoundError, random_features, resolve_weights

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
PIXEL = {"psnr", "ssim", "ms-ssim", "fsim", "fsimc", "gmsd", "vif", "vsi"}


class _Payload:
    """Unpickling this runs ``touch <marker>``: a stand-in for any code a crafted file could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    """A torch.save file whose unpickling would run code (a plain pickle.load would create ``marker``)."""
    torch.save(wrap(_Payload(marker)), path)
    return path


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or "error: " in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, IQA_NO_DOWNLOAD="1", TORCH_HOME=str(tmp_path / "torch_home"))
    return subprocess.run([sys.executable, "-m", "iqa_core", *argv], capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.fixture
def image_pair(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ref, dist = tmp_path / "ref.png", tmp_path / "dist.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(ref)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(dist)
    return ref, dist


# ------------------------------------------------------------------------------------- nothing in a file runs code

def test_the_payload_would_run_if_unpickled(tmp_path):
    """The control: a plain pickle load of the crafted file does run it, so the tests below mean something."""
    marker = tmp_path / "ran"
    with open(crafted(tmp_path / "evil.pth", marker), "rb") as fh:
        torch.load(fh, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"features.0.weight": p}])
def test_crafted_weights_are_refused_explicit_and_in_the_weights_folder(tmp_path, monkeypatch, wrap):
    marker = tmp_path / "ran"
    evil = crafted(tmp_path / "vgg16_features.pth", marker, wrap)
    with pytest.raises(InvalidWeightsError, match="not a PyTorch file of tensors only"):
        resolve_weights("vgg16", evil)
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("IQA_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsNotFoundError, match="refused .*vgg16_features.pth"):
        resolve_weights("vgg16")
    assert not marker.exists()


def test_crafted_heads_and_foundation_checkpoints_are_refused(tmp_path):
    from iqa_core.baselines import load_lpips_heads
    from zs_iqa.backbones import read_checkpoint

    marker = tmp_path / "ran"
    with pytest.raises(InvalidWeightsError):
        load_lpips_heads("alex", heads=crafted(tmp_path / "heads.pth", marker))
    with pytest.raises(InvalidWeightsError):
        read_checkpoint(crafted(tmp_path / "dino_vitbase16_pretrain.pth", marker, lambda p: {"model": p}))
    assert not marker.exists()


@pytest.mark.parametrize("script, extra", [("recover.py", ["--metric", "psnr"]),
                                          ("train_restoration.py", ["--losses", "l1", "--eval-metrics", "psnr"])])
def test_a_crafted_checkpoint_in_an_output_folder_never_runs(tmp_path, script, extra):
    """The scripts resume from checkpoints in their output folders: a crafted one ends the run with one line."""
    marker, out = tmp_path / "ran", tmp_path / "out"
    if script == "recover.py":
        out.mkdir()
        crafted(out / "checkpoint.pt", marker, lambda p: {"config": p})
    else:
        (out / "checkpoints").mkdir(parents=True)
        crafted(out / "checkpoints" / "l1.pt", marker, lambda p: {"config": p})
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--out", str(out), "--device",
                           "cpu", *extra], capture_output=True, text=True)
    _one_line_error(proc, "checkpoint file", "not a PyTorch file of tensors only")
    assert not marker.exists()


# ---------------------------------------------------------------------------------- weights that cannot be used

def _corrupt_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.pth"
    torch.save(random_features("alexnet"), good)
    files = {"empty": folder / "empty.pth", "garbage": folder / "garbage.pth", "truncated": folder / "truncated.pth"}
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(b"this is not a checkpoint\n" * 40)
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    nan = dict(random_features("alexnet"))
    nan["features.0.weight"] = nan["features.0.weight"].clone().fill_(float("nan"))
    torch.save(nan, folder / "nan.pth")
    files["nan"] = folder / "nan.pth"
    shapes = {k: v[..., :1] if v.ndim == 4 else v for k, v in random_features("alexnet").items()}
    torch.save(shapes, folder / "shapes.pth")
    files["shapes"] = folder / "shapes.pth"
    return files


PROBLEMS = {"empty": "not a PyTorch file", "garbage": "not a PyTorch file", "truncated": "not a PyTorch file",
            "nan": "NaN or infinite", "shapes": "do not fit torchvision's alexnet"}


def test_unusable_weights_raise_invalid_weights_error(tmp_path):
    for kind, path in _corrupt_files(tmp_path).items():
        with pytest.raises(InvalidWeightsError, match=PROBLEMS[kind]):
            create_metric("lpips-alex", weights=path)


def test_unusable_weights_end_the_cli_in_one_line(tmp_path, image_pair):
    ref, dist = image_pair
    for kind, path in _corrupt_files(tmp_path).items():
        proc = _cli(tmp_path, "score", "--metric", "lpips-alex", "--weights", str(path), str(ref), str(dist))
        _one_line_error(proc, PROBLEMS[kind])


def test_a_corrupt_file_in_the_weights_folder_is_refused_and_named(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "alexnet_features.pth").write_bytes(b"garbage")
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("IQA_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("alexnet")
    message = str(err.value)
    assert "\n" not in message and "refused" in message and "alexnet_features.pth" in message
    assert "downloads (disabled by IQA_NO_DOWNLOAD)" in message


# ------------------------------------------------------------------------------------ the command line's mistakes

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("device, problem", [("cuda", "CUDA is not available"), ("cuda:3", "CUDA is not available"),
                                             ("tpu", "unknown device 'tpu'")])
def test_unavailable_devices_end_in_one_line_and_leave_no_file(tmp_path, image_pair, device, problem):
    ref, dist = image_pair
    proc = _cli(tmp_path, "score", "--metric", "psnr", "--device", device, str(ref), str(dist))
    assert proc.returncode == 2 and problem in proc.stderr.strip().splitlines()[-1]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"ref,dist\n{ref},{dist}\n")
    out = tmp_path / "scores.csv"
    proc = _cli(tmp_path, "batch", "--metric", "psnr", "--pairs", str(pairs), "--out", str(out), "--device", device)
    assert proc.returncode == 2 and problem in proc.stderr and not out.exists()


def test_batch_input_mistakes(tmp_path, image_pair):
    ref, dist = image_pair
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"ref,dist\n{ref},{dist}\n{ref},\n")
    _one_line_error(_cli(tmp_path, "batch", "--metric", "psnr", "--pairs", str(pairs), "--out",
                         str(tmp_path / "s.csv")), "line 3: no 'dist' value")
    pairs.write_text(f"reference,dist\n{ref},{dist}\n")
    _one_line_error(_cli(tmp_path, "batch", "--metric", "psnr", "--pairs", str(pairs), "--out",
                         str(tmp_path / "s.csv")), "needs columns 'ref' and 'dist'")
    pairs.write_text(f"ref,dist\n{ref},{dist}\n")
    _one_line_error(_cli(tmp_path, "batch", "--metric", "psnr", "--pairs", str(pairs), "--out", str(tmp_path)),
                    "is a directory")
    _one_line_error(_cli(tmp_path, "batch", "--metric", "psnr", "--pairs", str(tmp_path / "none.csv"), "--out",
                         str(tmp_path / "s.csv")), "pairs file not found")


@pytest.mark.parametrize("metric, side", [("deepwsd-alexnet", 94), ("deepwsd-vgg16", 64), ("dists", 16)])
def test_images_below_a_metric_minimum_end_in_one_line(tmp_path, metric, side):
    rng = np.random.default_rng(1)
    paths = []
    for name in ("r.png", "d.png"):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    _one_line_error(_cli(tmp_path, "score", "--metric", metric, "--weights", "random", *paths),
                    f"{side}x{side} pixels is too small")


def test_degenerate_and_huge_images_end_in_one_line(tmp_path, image_pair):
    from test_io_validation import _png_header_only

    ref, _ = image_pair
    line = tmp_path / "line.png"
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(line)
    _one_line_error(_cli(tmp_path, "score", "--metric", "deepssim", "--weights", "random", str(line), str(line)),
                    "1x2000 pixels is too small")
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 30000, 30000)
    _one_line_error(_cli(tmp_path, "score", "--metric", "psnr", str(ref), str(huge)), "900.0 megapixels exceeds")


# ---------------------------------------------------------------------------------- every registered metric

class _SharedFoundationBackbones:
    """Builds each foundation backbone (random weights) once for the whole module: the metrics of one backbone
    differ only in their comparator, and building 41 ViTs would dominate the test."""

    def __init__(self) -> None:
        self.built: dict[str, torch.nn.Module] = {}

    def __call__(self, original):
        def create(name, weights=None, **kwargs):
            if name in PIXEL or kwargs or not name.startswith(("clip-", "dino", "imagenet-vit")):
                return original(name, weights=weights, **kwargs)
            if name not in self.built:
                self.built[name] = original(name, weights="random")
            return self.built[name]
        return create


_SHARED = _SharedFoundationBackbones()


@pytest.fixture
def shared_backbones(monkeypatch):
    import iqa_core.deep_features as deep_features

    monkeypatch.setattr(deep_features, "create_backbone", _SHARED(deep_features.create_backbone))


def _random_pair(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(side)
    return torch.rand(1, 3, side, side, generator=g), torch.rand(1, 3, side, side, generator=g)


@pytest.mark.parametrize("name", list_metrics())
def test_every_metric_scores_at_its_min_size_refuses_one_pixel_less_and_takes_every_float_dtype(
        name, shared_backbones):
    metric = create_metric(name) if name in PIXEL else create_metric(name, weights="random")
    side = metric.min_size
    x, y = _random_pair(side)
    with torch.no_grad():
        value = metric(x, y)
        assert value.shape == (1,) and torch.isfinite(value).all() and value.dtype == torch.float32
        if side > 1:
            for h, w in ((side - 1, side), (side, side - 1)):
                with pytest.raises(IQAInputError, match="too small"):
                    metric(x[..., :h, :w], y[..., :h, :w])
        wide = metric(x.double(), y.double())  # the metric's float32 computation, on the same (exact) values
        torch.testing.assert_close(wide, value, rtol=0, atol=0)
        half = metric(x.half(), y.half())
        assert half.dtype == torch.float32 and torch.isfinite(half).all()


@pytest.mark.parametrize("name", ["psnr", "ssim", "ms-ssim", "fsim", "vif", "deepssim", "deepssim-sc",
                                  "deepssim-lite", "deepwsd-alexnet", "deepjsd-mobilenet", "lpips-alex", "dists",
                                  "zs-alexnet-skld", "zs-dinov1-cos"])
def test_dtype_float64_runs_end_to_end(name):
    kwargs = {} if name in PIXEL else {"weights": "random"}
    metric32, metric64 = create_metric(name, **kwargs), create_metric(name, dtype=torch.float64, **kwargs)
    assert metric64.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in metric64.parameters())  # the backbone too
    x, y = _random_pair(max(metric64.min_size, 48))
    with torch.no_grad():
        value = metric64(x, y)
        assert value.dtype == torch.float64
        torch.testing.assert_close(value.float(), metric32(x, y), rtol=2e-4, atol=1e-6)
    assert create_metric(name, **kwargs).double().dtype == torch.float64  # .double() is the same switch


def test_parameterless_metrics_follow_to_and_report_their_device():
    """PSNR has no tensors of its own; .to() still places it (its device used to read "cpu" for any request)."""
    metric = create_metric("psnr").to("meta")
    assert metric.device.type == "meta"
    assert create_metric("psnr").to(torch.float64).dtype == torch.float64


# -------------------------------------------------------------------------------------------- large images

@pytest.mark.parametrize("name", ["deepssim", "deepssim-lite", "deepssim-sc"])
def test_tiled_deepssim_equals_the_whole_image(name, monkeypatch):
    """A 400 x 520 pair in 128-pixel tiles (4 x 5 tiles with 80-pixel halos) gives the untiled Gram matrices; too
    small a halo would not, which shows that the test can fail."""
    import importlib

    ds = importlib.import_module("deepssim.deepssim")  # the module, not the function of that name
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(1, 3, 400, 520, generator=g)
    dist = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    kwargs = {"saliency_dist": (torch.rand(1, 1, 400, 520, generator=g) > 0.3).float(),
              "saliency_ref": (torch.rand(1, 1, 400, 520, generator=g) > 0.3).float()} if name == "deepssim-sc" else {}
    whole, tiled = create_metric(name, weights="random"), create_metric(name, weights="random", tile=128)
    with torch.no_grad():
        expected = whole(dist, ref, **kwargs)
        torch.testing.assert_close(tiled(dist, ref, **kwargs), expected, rtol=1e-5, atol=0)
        monkeypatch.setattr(ds, "HALO", 16)
        assert abs(tiled(dist, ref, **kwargs).item() - expected.item()) > 1e-5 * abs(expected.item())
    with pytest.raises(ValueError, match="multiple of 16"):
        create_metric(name, weights="random", tile=100)
