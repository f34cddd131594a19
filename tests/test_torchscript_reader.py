"""zs_iqa.torchscript_archive: TorchScript archives read as data, never compiled or run.

``torch.jit.load`` is used here only as the oracle, on archives the tests write themselves with ``torch.jit.trace``
/ ``torch.jit.script``: the reader must give what ``torch.jit.load(path).state_dict()`` gives, key for key (in the
same order), bit for bit, with the same shapes, strides, offsets and storage sharing. Crafted archives check that
anything else than tensors and module attributes is refused before it can run.
"""

import importlib.util
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from zs_iqa import backbones as zb
from zs_iqa.torchscript_archive import STORAGE_DTYPES, UnsafeArchiveError, read_torchscript_state_dict


@pytest.fixture(autouse=True)
def _quiet_jit():
    with warnings.catch_warnings():  # torch.jit is deprecated in recent torch; the archive format is what matters
        warnings.simplefilter("ignore")
        yield


def _openai_clip_model_module():
    """OpenAI's ``clip/model.py`` (PyPI ``openai-clip``) loaded on its own: ``clip/__init__`` needs pkg_resources."""
    spec = importlib.util.find_spec("clip")
    path = Path(spec.submodule_search_locations[0]) / "model.py" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        pytest.skip("OpenAI CLIP (pip install openai-clip) is not installed")
    module_spec = importlib.util.spec_from_file_location("openai_clip_model_ts", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


class Holder(torch.nn.Module):
    """A whole-model archive as OpenAI ships it: the tower is an attribute, forward does not matter."""

    def __init__(self, **modules: torch.nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and float buffer drawn at random, so that no two tensors are alike by chance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return module


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _storage_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped by the memory they share."""
    groups: dict[int, list[str]] = {}
    for name, t in state.items():
        groups.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    return sorted(groups.values())


def assert_same_as_jit_load(path: Path) -> dict[str, torch.Tensor]:
    ours = read_torchscript_state_dict(path)
    oracle = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    assert list(ours) == list(oracle)
    for name, expected in oracle.items():
        got = ours[name]
        assert type(got) is torch.Tensor and not got.requires_grad, name
        assert (got.dtype, got.shape, got.stride(), got.storage_offset()) == \
            (expected.dtype, expected.shape, expected.stride(), expected.storage_offset()), name
        assert torch.equal(_bits(got), _bits(expected)), name
    assert _storage_groups(ours) == _storage_groups(oracle)
    return ours


# ---------------------------------------------------------------------------------------------------------------
# Equal to torch.jit.load on OpenAI CLIP's towers and whole models
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tower", ["rn50", "vit"])
def test_traced_clip_towers_read_as_jit_load_reads_them(tower, dtype, tmp_path):
    clip_model = _openai_clip_model_module()
    if tower == "rn50":  # RN50's ModifiedResNet with one block per stage and small widths
        visual, x = clip_model.ModifiedResNet((1, 1, 1, 1), 64, 4, 64, 16), torch.zeros(1, 3, 64, 64)
    else:
        visual, x = clip_model.VisionTransformer(32, 16, 64, 2, 4, 32), torch.zeros(1, 3, 32, 32)
    visual = _randomised(visual).eval()
    torch.jit.trace(Holder(visual=visual.to(dtype)), torch.zeros(1)).save(str(tmp_path / "whole.pt"))
    state = assert_same_as_jit_load(tmp_path / "whole.pt")
    assert {t.dtype for k, t in state.items() if not k.endswith("num_batches_tracked")} == {dtype}
    if dtype == torch.float32:  # tracing runs the tower; float16 convolutions need not run on every CPU build
        torch.jit.trace(visual, x).save(str(tmp_path / "tower.pt"))
        assert_same_as_jit_load(tmp_path / "tower.pt")


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_whole_clip_from_build_model_reads_as_jit_load_reads_it(kind, tmp_path):
    """``clip.model.build_model`` from a random state dict (its weights float16, as in OpenAI's files), with the
    ``input_resolution``, ``context_length`` and ``vocab_size`` buffers OpenAI's archives carry."""
    clip_model = _openai_clip_model_module()
    vision = (2, 64, 16) if kind == "vit" else ((1, 1, 1, 1), 16, None)
    template = clip_model.CLIP(32, 64 if kind == "rn" else 32, *vision, 16, 100, 128, 2, 2)
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in template.state_dict().items()}
    model = clip_model.build_model(state).eval()
    for name, value in (("input_resolution", 64), ("context_length", 16), ("vocab_size", 100)):
        if hasattr(model, name):
            delattr(model, name)  # plain ints in clip.model; buffers in OpenAI's archives (clip.load drops them)
        model.register_buffer(name, torch.tensor(value))
    torch.jit.trace(Holder(model=model), torch.zeros(1)).save(str(tmp_path / "clip.pt"))
    read = assert_same_as_jit_load(tmp_path / "clip.pt")
    assert read["model.visual.conv1.weight"].dtype == torch.float16
    assert "model.input_resolution" in read and not any("attn_mask" in k for k in read)


class Attributes(torch.nn.Module):
    """What a scripted module's data.pkl can hold beside parameters: plain tensor attributes (not in state_dict),
    frozen parameters, non-persistent buffers, ``bias=None``, tied weights, views of one storage, integer and
    boolean buffers, TorchScript lists, dicts, tuples and devices."""

    ints: list[int]
    table: dict[str, int]
    tensors: list[torch.Tensor]

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 3, bias=False, dtype=dtype)
        self.second = torch.nn.Linear(4, 3, dtype=dtype)
        self.second.weight = self.first.weight
        self.norm = torch.nn.BatchNorm1d(3, dtype=dtype)
        self.frozen = torch.nn.Parameter(torch.randn(2, 5, dtype=dtype), requires_grad=False)
        base = torch.randn(6, 8, dtype=dtype)
        self.register_buffer("window", base[1:4, 2:7])
        self.register_buffer("transposed", base.t())
        self.register_buffer("count", torch.arange(5))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.plain = torch.randn(3, dtype=dtype)
        self.ints, self.table, self.tensors = [1, 2], {"a": 1}, [torch.ones(2)]
        self.pair: tuple[int, str] = (3, "x")
        self.device = torch.device("cpu")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.norm(self.second(t) + self.first(t)) + self.plain.sum() + self.tensors[0].sum() + self.ints[0]


def test_scripted_module_attributes_read_as_jit_load_reads_them(tmp_path):
    torch.jit.script(_randomised(Attributes(torch.float16), seed=2)).save(str(tmp_path / "scripted.pt"))
    state = assert_same_as_jit_load(tmp_path / "scripted.pt")
    assert "plain" not in state and "first.bias" not in state and "scratch" in state
    assert not state["window"].is_contiguous() and state["window"].storage_offset() == 10
    assert state["first.weight"].data_ptr() == state["second.weight"].data_ptr()  # tied
    torch.jit.trace(_randomised(Attributes(), seed=2), torch.zeros(2, 4)).save(str(tmp_path / "traced.pt"))
    assert_same_as_jit_load(tmp_path / "traced.pt")


def test_scripted_clip_bottleneck_reads_as_jit_load_reads_it(tmp_path):
    clip_model = _openai_clip_model_module()
    block = _randomised(clip_model.Bottleneck(16, 8, stride=2)).half()
    torch.jit.script(block).save(str(tmp_path / "block.pt"))
    assert_same_as_jit_load(tmp_path / "block.pt")


def test_big_endian_archive_reads_as_the_little_endian_one(tmp_path):
    module = _randomised(Attributes(), seed=3)
    torch.jit.script(module).save(str(tmp_path / "little.pt"))
    with zipfile.ZipFile(tmp_path / "little.pt") as little, zipfile.ZipFile(tmp_path / "big.pt", "w") as big:
        sizes = _record_itemsizes(little)
        for info in little.infolist():
            data = little.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif info.filename in sizes:
                data = _swapped(data, sizes[info.filename])
            big.writestr(info, data)
    little_state = read_torchscript_state_dict(tmp_path / "little.pt")
    big_state = read_torchscript_state_dict(tmp_path / "big.pt")
    assert list(big_state) == list(little_state)
    assert all(torch.equal(_bits(big_state[k]), _bits(v)) for k, v in little_state.items())


def test_archive_without_buffer_lists_takes_the_other_tensors_as_buffers(tmp_path):
    """Older torch versions declared ``__parameters__`` only; a traced archive stores no plain tensor attributes
    (they become constants), so its other tensors are exactly the buffers."""
    clip_model = _openai_clip_model_module()
    visual = _randomised(clip_model.ModifiedResNet((1, 1, 1, 1), 64, 4, 64, 16))
    torch.jit.trace(Holder(visual=visual), torch.zeros(1)).save(str(tmp_path / "new.pt"))
    with zipfile.ZipFile(tmp_path / "new.pt") as new, zipfile.ZipFile(tmp_path / "old.pt", "w") as old:
        for info in new.infolist():
            data = new.read(info)
            if info.filename.endswith(".py"):
                data = b"".join(line for line in data.splitlines(keepends=True) if b"__buffers__" not in line)
            old.writestr(info, data)
        assert b"__buffers__" not in b"".join(old.read(n) for n in old.namelist() if n.endswith(".py"))
    oracle = torch.jit.load(str(tmp_path / "new.pt")).state_dict()
    read = read_torchscript_state_dict(tmp_path / "old.pt")
    assert set(read) == set(oracle)
    assert all(torch.equal(_bits(read[k]), _bits(v)) for k, v in oracle.items())


def _record_itemsizes(archive: zipfile.ZipFile) -> dict[str, int]:
    """Element size of each ``data/<key>`` record, from the storage ids of data.pkl."""
    sizes: dict[str, int] = {}

    class Ids(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            return STORAGE_DTYPES[name].itemsize if name in STORAGE_DTYPES else _Anything

        def persistent_load(self, pid):
            sizes[f"{folder}data/{pid[2]}"] = pid[1]
            return torch.empty(0)

    folder = next(n for n in archive.namelist() if n.endswith("/data.pkl"))[: -len("data.pkl")]
    Ids(archive.open(f"{folder}data.pkl")).load()
    return sizes


class _Anything:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _swapped(data: bytes, itemsize: int) -> bytes:
    return b"".join(data[i: i + itemsize][::-1] for i in range(0, len(data), itemsize))


# ---------------------------------------------------------------------------------------------------------------
# Nothing from the archive runs
# ---------------------------------------------------------------------------------------------------------------

def _archive_with_data_pkl(tmp_path: Path, data_pkl: bytes, name: str = "crafted.pt") -> Path:
    """A real archive (code/, constants.pkl, storages) whose data.pkl is replaced."""
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "real.pt"))
    path = tmp_path / name
    with zipfile.ZipFile(tmp_path / "real.pt") as real, zipfile.ZipFile(path, "w") as crafted:
        for info in real.infolist():
            crafted.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else real.read(info))
    return path


class _Payload:
    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _creating(marker: Path, function: str) -> bytes:
    """A module state whose weight is a call that creates ``marker``."""
    payload = (_Payload(exec, f"open({str(marker)!r}, 'w').close()") if function == "exec"
               else _Payload(os.system, f"touch '{marker}'"))
    return pickle.dumps({"weight": payload, "training": False}, protocol=2)


@pytest.mark.parametrize("function", ["exec", "os.system"])
def test_code_in_data_pkl_is_refused_and_never_runs(function, tmp_path):
    control, marker = tmp_path / "control", tmp_path / "marker"
    pickle.loads(_creating(control, function))  # the payload is live for a plain unpickler
    assert control.exists()
    data_pkl = _creating(marker, function)
    path = _archive_with_data_pkl(tmp_path, data_pkl)
    refused = r"(__builtin__|builtins)\.exec" if function == "exec" else rf"{os.system.__module__}\.system"
    for read in (read_torchscript_state_dict, zb.read_checkpoint):
        with pytest.raises(zb.CheckpointMismatchError, match=f"refuses to load {refused} from .*crafted.pt"):
            read(path)
    assert not marker.exists()


@pytest.mark.parametrize("what", ["getattr", "persistent id", "overrun"])
def test_other_unsafe_or_malformed_records_are_refused(what, tmp_path):
    if what == "getattr":
        data_pkl = pickle.dumps(_Payload(getattr, _Payload(__import__, "os"), "system"), protocol=2)
        message = r"refuses to load (__builtin__|builtins)\.getattr"
    elif what == "persistent id":
        class Pid(pickle.Pickler):
            def persistent_id(self, obj):
                return ("module", "os") if obj is os else None

        buffer = io.BytesIO()
        Pid(buffer, protocol=2).dump({"x": os})
        data_pkl, message = buffer.getvalue(), "refuses persistent id"
    else:
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "real.pt"))
        with zipfile.ZipFile(tmp_path / "real.pt") as real:
            original = real.read(next(n for n in real.namelist() if n.endswith("/data.pkl")))
        data_pkl = original.replace(b"(K\x02K\x02t", b"(K\x09K\x09t", 1)  # weight size (2, 2) -> (9, 9)
        assert data_pkl != original
        message = "overruns its storage"
    with pytest.raises(UnsafeArchiveError, match=message):
        read_torchscript_state_dict(_archive_with_data_pkl(tmp_path, data_pkl))


class DoublesOnLoad(torch.nn.Module):
    """A TorchScript ``__setstate__`` that changes the stored weight when ``torch.jit.load`` runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((3,), 1.5))

    @torch.jit.export
    def __getstate__(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    @torch.jit.export
    def __setstate__(self, state: dict[str, torch.Tensor]) -> None:
        self.weight = state["weight"] * 2
        self.training = False

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.weight


class DoublesOnLoadFromTuple(DoublesOnLoad):
    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0] * 2
        self.training = state[1]


def test_torchscript_setstate_does_not_run(tmp_path):
    torch.jit.script(DoublesOnLoad()).save(str(tmp_path / "doubles.pt"))
    assert torch.equal(torch.jit.load(str(tmp_path / "doubles.pt")).state_dict()["weight"], torch.full((3,), 3.0))
    assert torch.equal(read_torchscript_state_dict(tmp_path / "doubles.pt")["weight"], torch.full((3,), 1.5))
    # a state that is not a dict of attributes only means something to the __setstate__ that is not run
    torch.jit.script(DoublesOnLoadFromTuple()).save(str(tmp_path / "tuple.pt"))
    with pytest.raises(UnsafeArchiveError, match=r"tuple.pt: module __torch__\..*DoublesOnLoadFromTuple is stored "
                                                 r"as a tuple"):
        read_torchscript_state_dict(tmp_path / "tuple.pt")


def test_read_checkpoint_does_not_call_torch_jit_load(tmp_path, monkeypatch):
    scripted = torch.jit.script(_randomised(Attributes(), seed=4))
    scripted.save(str(tmp_path / "archive.pt"))
    expected = scripted.state_dict()  # of the module in memory: non-persistent buffers included, as in archives

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    state = zb.read_checkpoint(tmp_path / "archive.pt")
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
