"""Shared fixtures: the ../shared folder beside the checkout (reference values, images, weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The shared folder beside the checkout; IQA_SHARED_DIR points elsewhere (e.g. on a GPU machine).
SHARED = Path(os.environ.get("IQA_SHARED_DIR", ROOT.parent / "shared")).resolve()
SHARED_DATA = SHARED / "data"
REFERENCE_JSON = SHARED / "reference" / "reference_values.json"

# Tests use the verified weights of the shared folder unless the caller chose a weights folder.
if "IQA_WEIGHTS_DIR" not in os.environ and (SHARED / "weights").is_dir():
    os.environ["IQA_WEIGHTS_DIR"] = str(SHARED / "weights")

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def needs_shared(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not present (the shared folder beside the checkout)")


@pytest.fixture(scope="session")
def reference_values() -> dict:
    needs_shared(REFERENCE_JSON)
    return json.loads(REFERENCE_JSON.read_text())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    needs_shared(SHARED_DATA)
    return SHARED_DATA


@pytest.fixture(scope="session")
def formula_weights(tmp_path_factory):
    """Per architecture: the formula state dict of ../shared/reference/formula_weights.py and a file of it."""
    import importlib.util

    import torchvision

    path = SHARED / "reference" / "formula_weights.py"
    needs_shared(path)
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


@pytest.fixture(scope="session")
def example_dir() -> Path:
    return ROOT / "data" / "examples"


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
