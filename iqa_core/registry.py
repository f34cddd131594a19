"""One name -> entry registry, used for metrics, backbones and comparators.

Paper packages depend on ``iqa_core``, not the reverse, so a registry imports the packages that fill it by name
the first time it is asked for its entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries (dataclasses with a ``factory`` attribute) by name; ``kind`` names them in error messages."""

    def __init__(self, kind: str, plugin_packages: Sequence[str] = ()) -> None:
        self.kind = kind
        self.plugin_packages = tuple(plugin_packages)
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False

    def add(self, name: str, entry: Entry) -> None:
        known = self._entries.get(name)
        if known is not None and _factory(known) is not _factory(entry):
            raise ValueError(f"{self.kind} name {name!r} is registered twice")
        self._entries[name] = entry

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True  # set first: the packages being imported register into this registry
            try:
                for package in self.plugin_packages:
                    importlib.import_module(package)
            except BaseException:
                self._plugins_loaded = False
                raise

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}") from None


def _factory(entry: Any) -> Any:
    return getattr(entry, "factory", entry)
