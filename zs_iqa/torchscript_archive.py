"""The parameters and buffers of a TorchScript archive (OpenAI's ``ViT-B-32.pt``, ``RN50.pt``), read without running it.

``torch.jit.load`` compiles the archive's ``code/`` and runs any ``__setstate__`` it defines. This reader only parses
data: it unpickles ``<archive>/data.pkl`` with an allow-list, reads the storages from ``<archive>/data/<key>`` and
takes which attributes are parameters and buffers from the class declarations in ``code/``.

How an archive records a module (as ``torch.jit.save`` of torch 2.x writes it; the tests check the reader against
``torch.jit.load`` on traced and scripted modules):

- ``data.pkl`` (pickle protocol 2) is the root module: ``NEWOBJ`` of a class ``__torch__.<path> <Name>``, then
  ``BUILD`` with a dict of every attribute (slot) in the order of the class type: tensors, plain values, submodules
  (nested objects of the same kind). A module with a TorchScript ``__getstate__`` pickles what that returns instead.
- A tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())``;
  the storage is a persistent id ``('storage', torch.<Type>Storage, key, location, numel)``, its bytes in
  ``data/<key>``, in the byte order of the ``byteorder`` record (little when absent). Tensors sharing memory share
  a key; views keep their offset and strides.
- The state does not say which tensors are parameters or buffers: ``requires_grad`` is False for frozen parameters
  too, and plain tensor attributes (``self.attn_mask = t`` of a scripted module) are stored like buffers but are not
  in ``state_dict()``. Each module class's declaration in ``code/`` lists them, e.g. ``__parameters__ = ["weight",
  "bias", ]`` and ``__buffers__ = ["running_mean", ]``; a ``None`` entry (``bias=False``) is left out of
  ``state_dict()``, non-persistent buffers are in it (TorchScript does not track persistence).
"""

from __future__ import annotations

import ast
import collections
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zs_iqa.backbones import CheckpointMismatchError

__all__ = ["UnsafeArchiveError", "read_torchscript_state_dict"]

#: Legacy typed storage classes named by the storage persistent ids, and the dtype of their elements.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
}
#: Built-in TorchScript (C++) classes: no declaration in ``code/``, never modules.
_CUSTOM_CLASSES = "__torch__.torch.classes."
_CLASS_LINE = re.compile(r"class (\w+)(?:\((\w*)\))?:")
_LIST_LINE = re.compile(r"  (__parameters__|__buffers__) = (\[.*\])\s*$")


class UnsafeArchiveError(CheckpointMismatchError):
    """A TorchScript archive holds something that cannot be read without running code, or is malformed."""


@dataclass(frozen=True)
class ClassDeclaration:
    """What ``code/`` declares about one TorchScript class. ``buffers`` is None for archives of older torch
    versions, whose classes list ``__parameters__`` only; their buffers are the other tensor attributes."""

    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] | None = None


class ScriptObject:
    """Inert stand-in for an instance of a ``__torch__`` class: records what the pickle gives it, runs nothing."""

    qualified_name = ""
    args: tuple[Any, ...] = ()
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _archive_folder(names: list[str], origin: str) -> str:
    """The top-level folder of the archive (``ViT-B-32/``): the one holding ``data.pkl``."""
    folders = {n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1}
    if len(folders) != 1:
        raise UnsafeArchiveError(f"{origin}: expected one <archive>/data.pkl, found {len(folders)} "
                                 "(the older TorchScript format without data.pkl is not supported)")
    return folders.pop()


def _declarations_in(source: str, module: str) -> dict[str, ClassDeclaration]:
    """Class declarations of one ``code/`` file, keyed by qualified name; only literal lists are parsed."""
    found: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in source.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            match = _CLASS_LINE.fullmatch(line.strip())
            current = None if match is None else found.setdefault(f"{module}.{match[1]}",
                                                                   {"is_module": match[2] == "Module"})
        elif current is not None and (entry := _LIST_LINE.match(line)):
            names = ast.literal_eval(entry[2])
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ValueError(f"{entry[1]} of {module} is not a list of names")
            current["parameters" if entry[1] == "__parameters__" else "buffers"] = tuple(names)
    return {name: ClassDeclaration(**fields) for name, fields in found.items()}


def read_class_declarations(archive: zipfile.ZipFile, folder: str, origin: str) -> dict[str, ClassDeclaration]:
    """Every class declared under ``<archive>/code/``: ``code/__torch__/a/b.py`` holds ``__torch__.a.b.<Name>``."""
    code = f"{folder}code/"
    declarations: dict[str, ClassDeclaration] = {}
    for name in archive.namelist():
        if name.startswith(code) and name.endswith(".py"):
            module = name[len(code): -len(".py")].replace("/", ".")
            try:
                declarations.update(_declarations_in(archive.read(name).decode("utf-8"), module))
            except (ValueError, SyntaxError, UnicodeDecodeError) as err:
                raise UnsafeArchiveError(f"{origin}: cannot read the class declarations of {name}: {err}") from None
    return declarations


def _storage_tensor(data: bytes, dtype: torch.dtype, byte_order: str) -> torch.Tensor:
    """A flat tensor of ``dtype`` over the bytes of one storage record, converted to this machine's byte order."""
    storage = torch.UntypedStorage.from_buffer(data, byte_order=byte_order, dtype=dtype)
    count = len(data) // dtype.itemsize
    return torch.empty(0, dtype=dtype).set_(storage, 0, (count,), (1,))


def _is_view(offset: Any, size: Any, stride: Any) -> bool:
    """Whether a tensor record's geometry is non-negative integers, one stride per dimension."""
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        return False
    return all(type(n) is int and n >= 0 for n in (offset, *size, *stride))


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with an allow-list: tensor rebuilding, TorchScript's list/dict tags, devices and
    inert ``__torch__`` objects. The callables it hands out are bound methods, built-in types or classes made for
    this load, so that a pickle's ``BUILD`` cannot change anything that outlives the load."""

    def __init__(self, archive: zipfile.ZipFile, folder: str, origin: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{folder}data.pkl")))
        self.archive, self.folder, self.origin = archive, folder, origin
        self.byte_order = self._byte_order()
        self.storages: dict[str, torch.Tensor] = {}
        self.storage_ids: set[int] = set()
        self.classes: dict[str, type[ScriptObject]] = {}
        self.allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self.rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch", "device"): torch.device,
            ("torch.jit._pickle", "restore_type_tag"): self.restore_type_tag,
            **{("torch.jit._pickle", f"build_{kind}list"): self.build_list
               for kind in ("int", "double", "bool", "tensor")},
            **{("torch", name): dtype for name, dtype in STORAGE_DTYPES.items()},
        }

    def refuse(self, problem: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{self.origin}: {problem}")

    def _byte_order(self) -> str:
        try:
            order = self.archive.read(f"{self.folder}byteorder").decode("ascii").strip()
        except KeyError:
            return "little"  # older torch versions wrote no byteorder record, and only from little-endian machines
        if order not in ("little", "big"):
            raise self.refuse(f"unknown byte order {order[:20]!r}")
        return order

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self.script_class(f"{module}.{name}")
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafeArchiveError(f"refuses to load {module}.{name} from {self.origin}: a TorchScript archive "
                                     "holds only tensors and module attributes") from None

    def script_class(self, qualified_name: str) -> type[ScriptObject]:
        """A fresh inert class per qualified name and per load, so that nothing a pickle sets on it outlives it."""
        if qualified_name not in self.classes:
            self.classes[qualified_name] = type(qualified_name.rpartition(".")[2], (ScriptObject,),
                                                {"qualified_name": qualified_name})
        return self.classes[qualified_name]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0):
            raise self.refuse(f"refuses persistent id {str(pid)[:80]}: only ('storage', type, key, location, "
                              "numel) records are read")
        _, dtype, key, _location, numel = pid  # storages are read onto the CPU wherever they were saved
        if key not in self.storages:
            self.storages[key] = self.read_storage(key, dtype, numel)
            self.storage_ids.add(id(self.storages[key]))
        storage = self.storages[key]
        if storage.dtype != dtype or storage.numel() != numel:
            raise self.refuse(f"storage {key} is read as {numel} x {dtype} and as {storage.numel()} x {storage.dtype}")
        return storage

    def read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self.folder}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise self.refuse(f"storage record {name} is missing") from None
        if info.file_size != numel * dtype.itemsize:  # checked before reading: the record may be compressed
            raise self.refuse(f"storage record {name} has {info.file_size} bytes, expected {numel} x {dtype}")
        return _storage_tensor(self.archive.read(info), dtype, self.byte_order)

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
        """The view ``_rebuild_tensor_v2`` describes, checked to lie inside its storage; never requires grad
        (``state_dict()`` detaches)."""
        if not (id(storage) in self.storage_ids and _is_view(offset, size, stride)):
            raise self.refuse("a tensor record does not have the form (storage, offset, size, stride, ...)")
        if backward_hooks or metadata:
            raise self.refuse("a tensor record carries backward hooks or metadata; weights have neither")
        if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) >= storage.numel():
            raise self.refuse(f"a tensor of size {size}, stride {stride}, offset {offset} overruns its storage "
                              f"of {storage.numel()} elements")
        return storage.as_strided(size, stride, offset)

    def rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any) -> torch.Tensor:
        if not isinstance(data, torch.Tensor) or backward_hooks:
            raise self.refuse("a parameter record does not hold a plain tensor")
        return data

    def restore_type_tag(self, value: Any, type_name: Any) -> Any:
        return value  # the tag only types an empty container for the TorchScript runtime

    def build_list(self, values: Any) -> Any:
        return values


def _attributes(obj: ScriptObject, origin: str) -> dict[str, Any]:
    """The attributes a module object was built with; a non-dict state comes from a TorchScript ``__getstate__``
    whose ``__setstate__`` alone could say what the attributes are."""
    state = obj.state
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
        raise UnsafeArchiveError(f"{origin}: module {obj.qualified_name} is stored as a {type(state).__name__}, "
                                 "which only running its TorchScript __setstate__ could turn into attributes")
    return state


def _declaration(obj: ScriptObject, declarations: dict[str, ClassDeclaration], origin: str) -> ClassDeclaration:
    if obj.qualified_name.startswith(_CUSTOM_CLASSES):
        return ClassDeclaration(is_module=False)
    try:
        return declarations[obj.qualified_name]
    except KeyError:
        raise UnsafeArchiveError(f"{origin}: class {obj.qualified_name} has no declaration in code/") from None


def _tensor_names(attributes: dict[str, Any], declaration: ClassDeclaration) -> list[str]:
    """Parameters then buffers, each in attribute order, as ``nn.Module.state_dict`` lists them."""
    parameters = [k for k in attributes if k in declaration.parameters]
    if declaration.buffers is None:
        buffers = [k for k, v in attributes.items() if isinstance(v, torch.Tensor) and k not in declaration.parameters]
    else:
        buffers = [k for k in attributes if k in declaration.buffers]
    return [k for k in parameters + buffers if attributes[k] is not None]


def _collect(obj: ScriptObject, prefix: str, declarations: dict[str, ClassDeclaration], origin: str,
             ancestors: tuple[int, ...], out: dict[str, torch.Tensor]) -> None:
    """Adds the parameters and buffers of module ``obj`` and of its submodules to ``out`` under dotted names."""
    if id(obj) in ancestors:
        raise UnsafeArchiveError(f"{origin}: module {obj.qualified_name} contains itself")
    attributes = _attributes(obj, origin)
    for name in _tensor_names(attributes, _declaration(obj, declarations, origin)):
        value = attributes[name]
        if type(value) is not torch.Tensor:
            raise UnsafeArchiveError(f"{origin}: {prefix}{name} of {obj.qualified_name} is a "
                                     f"{type(value).__name__}, not a tensor")
        out[prefix + name] = value.detach()
    for name, value in attributes.items():
        if isinstance(value, ScriptObject) and _declaration(value, declarations, origin).is_module:
            _collect(value, f"{prefix}{name}.", declarations, origin, (*ancestors, id(obj)), out)


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """What ``torch.jit.load(path).state_dict()`` returns (same names, order and bits, on the CPU), read without
    compiling or running anything from the archive. Raises :class:`UnsafeArchiveError` (a
    :class:`~zs_iqa.backbones.CheckpointMismatchError`) for anything but tensors and plain module attributes."""
    origin = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            folder = _archive_folder(archive.namelist(), origin)
            declarations = read_class_declarations(archive, folder, origin)
            root = _ArchiveUnpickler(archive, folder, origin).load()
    except UnsafeArchiveError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, TypeError, ValueError, AttributeError,
            RuntimeError, IndexError, KeyError, RecursionError) as err:
        raise UnsafeArchiveError(f"{origin}: data.pkl cannot be read as a TorchScript module: "
                                 f"{type(err).__name__}: {err}") from None
    if not isinstance(root, ScriptObject) or not _declaration(root, declarations, origin).is_module:
        raise UnsafeArchiveError(f"{origin}: data.pkl does not hold a TorchScript module")
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", declarations, origin, (), state)
    return state

