"""The one resumable store of scores: a CSV keyed by everything that changes a score, and its errors table.

A row is one (metric, pair): the metric's key (:data:`METRIC_KEY`: its registry name, its options as canonical
JSON, the digest of its weights, the precision it ran in), the pair's key (the pair source's columns: root-relative
paths and the files' identity, or a sweep's parameters) and the score. The rules (iqa_core.resumable_csv does the
file work):

- a score is answered from the store only when every key column matches: other weights, options, precision,
  files (size and modification time) or paths are scored anew, the old rows stay in the file for the record;
- a last line cut short by a kill is dropped and its pair scored again;
- writers lock the file, so two processes on one store never write a row twice;
- a pair that cannot be scored (unreadable, wrong size, too small) goes to ``<stem>.errors.csv`` with its source row
  and the reason; a later run tries it again, and once it is scored it leaves the errors table.

Both files are plain CSV (``pandas.read_csv``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iqa_core.resumable_csv import ResumableCSV

__all__ = ["METRIC_KEY", "MetricKey", "ScoreStore", "options_text", "weights_digest", "file_identity",
           "errors_path", "shard_path", "shard_files"]

METRIC_KEY = ("metric", "options", "weights", "precision")
_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MetricKey:
    """What identifies a metric's scores: name, options (canonical JSON), weights digest and precision."""

    metric: str
    options: str = "{}"
    weights: str = "-"
    precision: str = "fp32"

    def values(self) -> tuple[str, ...]:
        return (self.metric, self.options, self.weights, self.precision)


def options_text(options: Mapping[str, Any] | None) -> str:
    """Canonical JSON of a metric's constructor options (sorted keys, no spaces): equal options, equal text."""
    return json.dumps(dict(options or {}), sort_keys=True, separators=(",", ":"), default=str)


def weights_digest(module: torch.nn.Module) -> str:
    """16 hex digits of the sha256 of the module's parameters and buffers (names, dtypes, shapes and bytes; buffers
    left out of the state dict too, such as LPIPS heads loaded at bind time): pretrained, random, formula or
    fine-tuned weights each get their own. ``-`` for a module with no state (PSNR). Cached per module."""
    if module in _DIGESTS:
        return _DIGESTS[module]
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    if not state:
        return "-"
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    _DIGESTS[module] = value = digest.hexdigest()[:16]
    return value


def file_identity(path: str | os.PathLike) -> str:
    """``size:mtime_ns`` of a file (``missing`` when there is none): a changed or replaced file is scored anew."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def errors_path(path: str | os.PathLike) -> Path:
    """``scores.csv`` -> ``scores.errors.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.errors{path.suffix or '.csv'}")


def shard_path(path: str | os.PathLike, rank: int) -> Path:
    """Rank ``rank``'s shard of a distributed run: ``scores.csv`` -> ``scores.rank3.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix or '.csv'}")


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The shard files of ``path`` left by distributed runs (finished or killed), in rank order."""
    path = Path(path)
    pattern = re.compile(rf"^{re.escape(path.stem)}\.rank(\d+){re.escape(path.suffix or '.csv')}$")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.rank*")
             if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


class ScoreStore:
    """Scores of (metric, pair) at ``path`` and the pairs that failed at :func:`errors_path` of it.

    ``pair_columns`` name the pair source's key. ``stop_after`` as in :class:`ResumableCSV` (new score rows).
    ``prune_errors`` (the main store, not a shard): on :meth:`close`, errors of pairs scored since are removed.
    ``identity_columns`` (the files' identity) are left out of the errors table's key: a pair fails or is scored
    whatever its files were when it failed.
    """

    def __init__(self, path: str | os.PathLike, pair_columns: Sequence[str], stop_after: int | None = None,
                 prune_errors: bool = True, identity_columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.pair_columns = list(pair_columns)
        key = [*METRIC_KEY, *self.pair_columns]
        self.scores = ResumableCSV(self.path, [*key, "score"], key, stop_after)
        self._error_columns = [*METRIC_KEY, "row", *self.pair_columns, "reason"]
        # An error is the pair's, whatever its files were then: a repaired file's pair replaces it.
        self._error_key = [c for c in key if c not in identity_columns]
        self._errors: ResumableCSV | None = None
        self.prune_errors = prune_errors
        if errors_path(self.path).is_file():
            try:
                self._open_errors()
            except BaseException:
                self.scores.close()
                raise

    def _open_errors(self) -> ResumableCSV:
        if self._errors is None:
            self._errors = ResumableCSV(errors_path(self.path), self._error_columns, self._error_key)
        return self._errors

    @property
    def errors(self) -> ResumableCSV:
        """The errors table, opened (and created) when first needed."""
        return self._open_errors()

    @property
    def written(self) -> int:
        return self.scores.written

    def has(self, metric: MetricKey, pair: Sequence[str]) -> bool:
        return (*metric.values(), *pair) in self.scores

    def score_of(self, metric: MetricKey, pair: Sequence[str]) -> float | None:
        row = self.scores.rows.get((*metric.values(), *(str(v) for v in pair)))
        return None if row is None else float(row[-1])

    def add_score(self, metric: MetricKey, pair: Sequence[str], score: float) -> None:
        self.scores.add([*metric.values(), *pair, repr(float(score))])

    def add_error(self, metric: MetricKey, row: int, pair: Sequence[str], reason: str) -> None:
        self.errors.add([*metric.values(), row, *pair, " ".join(reason.split())])

    def refresh(self) -> None:
        """Read what other writers appended (their pairs need not be scored again)."""
        self.scores.refresh()

    def flush(self) -> None:
        if self._errors is not None:
            self._errors.flush()
        self.scores.flush()

    def merge(self, other: str | os.PathLike) -> int:
        """Append the rows of another store file with the same columns (a shard) and of its errors table, then
        delete both. Returns the number of score rows that were new here."""
        other = Path(other)
        before = len(self.scores)
        for table, path in (("scores", other), ("errors", errors_path(other))):
            if path.is_file():
                mine = getattr(self, table)
                theirs = ResumableCSV(path, mine.columns, mine.key_columns)
                for row in theirs.rows.values():
                    mine.add(row)
                theirs.close()
        self.flush()
        for path in (other, errors_path(other)):
            path.unlink(missing_ok=True)
        return len(self.scores) - before

    def close(self) -> None:
        try:
            self.flush()
            if self.prune_errors and self._errors is not None and len(self._errors):
                where = [self.scores.key_columns.index(c) for c in self._error_key]
                scored = {tuple(key[i] for i in where) for key in self.scores.rows}
                self._errors.rewrite(lambda row: tuple(row[c] for c in self._error_key) not in scored)
        finally:
            if self._errors is not None:
                self._errors.close()
            self.scores.close()

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
