"""One name -> entry registry (metrics, backbones, comparators), filled by plugins found through entry points.

Paper packages depend on ``iqa_core``, not the reverse. A package registers its backbones, comparators and metrics
when it is imported, and declares itself in its ``pyproject.toml`` as an entry point of the group
:data:`PLUGIN_GROUP`, the value naming the module to import::

    [project.entry-points."iqa_core.plugins"]
    my_metrics = "my_metrics"

The first time any registry is asked for its entries, every plugin module is imported, once per process
(:func:`load_plugins`). The plugins are the entry points of the installed distributions
(``importlib.metadata.entry_points``), so a separate package adds a metric by being installed. One exception: when
``iqa_core`` itself runs from a source checkout of this project (its folder beside the project's ``pyproject.toml``,
as the tests and a clone on ``PYTHONPATH`` use it), this project's own plugins are read from that ``pyproject.toml``
instead of from its installed metadata, which may be absent (never installed) or stale (an editable install made
before the table changed); other distributions' plugins still come from their metadata. Python 3.10 has no
``tomllib``: there the installed metadata serves for this project too.
"""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "PLUGIN_GROUP", "PluginError", "plugin_entry_points", "load_plugins"]

Entry = TypeVar("Entry")

#: The entry-point group every plugin package declares.
PLUGIN_GROUP = "iqa_core.plugins"
#: This project's distribution name, and the ``pyproject.toml`` of the checkout ``iqa_core`` runs from (if any).
PROJECT = "deep-iqa-repro"
CHECKOUT_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class PluginError(ImportError):
    """A plugin module declared under :data:`PLUGIN_GROUP` could not be imported."""


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def checkout_entry_points(pyproject: Path | None = None) -> list[EntryPoint] | None:
    """This project's plugins as its ``pyproject.toml`` (default :data:`CHECKOUT_PYPROJECT`) declares them; None when
    there is none or it is another project's (``iqa_core`` installed, not run from a checkout), or where it cannot be
    read (Python 3.10: no ``tomllib``)."""
    pyproject = CHECKOUT_PYPROJECT if pyproject is None else pyproject
    try:
        import tomllib
    except ModuleNotFoundError:
        return None
    if not pyproject.is_file():
        return None
    with open(pyproject, "rb") as f:
        project = tomllib.load(f).get("project", {})
    if _normalised(project.get("name", "")) != _normalised(PROJECT):
        return None
    table = project.get("entry-points", {}).get(PLUGIN_GROUP, {})
    return [EntryPoint(name, value, PLUGIN_GROUP) for name, value in table.items()]


def _of_this_project(entry_point: EntryPoint) -> bool:
    dist = getattr(entry_point, "dist", None)
    return dist is not None and _normalised(dist.metadata["Name"] or "") == _normalised(PROJECT)


def plugin_entry_points() -> list[EntryPoint]:
    """Every plugin to import: installed distributions' entry points, this project's from its checkout where
    ``iqa_core`` runs from one (see the module docstring). The same module declared twice is listed once."""
    installed = list(entry_points(group=PLUGIN_GROUP))
    own = checkout_entry_points()
    found = installed if own is None else own + [ep for ep in installed if not _of_this_project(ep)]
    unique: dict[str, EntryPoint] = {}
    for ep in found:
        unique.setdefault(ep.value, ep)
    return list(unique.values())


def _import_plugin(entry_point: EntryPoint) -> None:
    try:
        entry_point.load()
    except Exception as err:
        source = getattr(getattr(entry_point, "dist", None), "name", None) or "this project's pyproject.toml"
        raise PluginError(f"plugin {entry_point.name!r} = {entry_point.value!r} (entry point group {PLUGIN_GROUP}, "
                          f"from {source}) failed to import: {type(err).__name__}: {err}; fix it or uninstall the "
                          "package that declares it") from err


_plugins_loaded = False


def load_plugins() -> None:
    """Import every plugin module, once per process; each registers its entries as it is imported."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # set first: the modules being imported register into the registries (and may read them)
    try:
        for entry_point in plugin_entry_points():
            _import_plugin(entry_point)
    except BaseException:
        _plugins_loaded = False
        raise


class Registry(Generic[Entry]):
    """Entries (dataclasses with a ``factory`` attribute) by name; ``kind`` names them in error messages. Asking for
    the entries imports the plugins first (:func:`load_plugins`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry) -> None:
        known = self._entries.get(name)
        if known is not None and _factory(known) is not _factory(entry):
            raise ValueError(f"{self.kind} name {name!r} is registered twice")
        self._entries[name] = entry

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}") from None


def _factory(entry: Any) -> Any:
    return getattr(entry, "factory", entry)
