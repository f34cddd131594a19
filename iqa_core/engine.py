"""The scoring engine: metrics (or grid cells) x a pair source, into the resumable store, in one or many processes.

    from iqa_core.engine import MetricScorer, pairs_from_csv, score_pairs
    source = pairs_from_csv("pairs.csv")
    report = score_pairs([MetricScorer(create_metric("deepssim"))], source, "scores.csv", batch_size=8)
    print(report.summary())

What it does:

- A **pair source** (:class:`PairSource`) lists pairs grouped by reference: the rows of a pairs CSV
  (:func:`pairs_from_csv`), a dataset's records (:func:`pairs_from_records`), or a generated sweep (a
  :class:`PairSource` built with loaders that make the distorted images). Its key columns identify a pair in the
  store: root-relative paths and the files' identity, or the sweep's parameters.
- A group is cut into **units** of at most ``batch_size`` consecutive pairs. A ``torch.utils.data.DataLoader``
  with ``workers`` processes decodes (for sweeps: makes) the images of the coming units while the current one is
  scored; on a GPU they come in pinned memory and are copied without blocking.
- Each **scorer** (:class:`Scorer`; :class:`MetricScorer` for a registered metric) encodes a group's reference
  once, then scores the unit's distorted images of one size as one batch. Units are fixed by the source alone, so
  the batches, and hence the float32 scores, are the same however a run was split (a resumed unit is recomputed
  whole; only its missing rows are written).
- Pairs already in the store under the same key are not scored; a pair that cannot be (unreadable, too small,
  another size than its reference where the metric needs equal sizes) goes to the errors table and the run goes on.
- Under ``torchrun`` the reference groups are shared out among the ranks (iqa_core.distributed), each rank writes
  its shard and rank 0 merges them; shards left by a killed run are merged first, whatever its world size.
- A progress bar counts pairs per second.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from iqa_core.distributed import World, assign_groups, barrier, broadcast, gather, init_world
from iqa_core.io import ImageReadError, load_image, load_map
from iqa_core.metric import FeatureMetric, Metric
from iqa_core.precision import DEFAULT_PRECISION, apply_precision, check_autocast_used, precision_scope
from iqa_core.resumable_csv import StopRequested
from iqa_core.store import (
    METRIC_KEY,
    MetricKey,
    ScoreStore,
    errors_path,
    file_identity,
    options_text,
    shard_files,
    shard_path,
    weights_digest,
)
from iqa_core.validation import IQAInputError, check_image, check_pair

if TYPE_CHECKING:
    import pandas as pd

    from iqa_core.deep_features import TapGrid

__all__ = ["Pair", "Group", "PairSource", "group_by_reference", "Scorer", "MetricScorer", "GridScorer", "RunReport",
           "Plan",
           "score_pairs", "pairs_from_csv", "pairs_from_records", "read_pairs", "current_scores", "current_errors",
           "root_relative"]

#: What a pair that cannot be scored raises while its images are read or checked: it goes to the errors table.
PAIR_ERRORS = (ImageReadError, IQAInputError, OSError)


# ------------------------------------------------------------------------------------------------------ pair sources

@dataclass(frozen=True)
class Pair:
    """One (reference, distorted) pair of a source."""

    row: int  # its row in the source (pairs CSV line, record number), named in the errors table
    key: tuple[str, ...]  # its values of the source's key columns
    dist: Any  # what the source's ``load_dist`` makes the distorted image from (a path, a recipe)
    extras: Any = None  # what ``load_extras`` reads the metric's extra inputs from (saliency maps)


@dataclass
class Group:
    """The pairs of one reference."""

    ref_id: str
    ref: Any  # what the source's ``load_ref`` makes the reference from
    pairs: list[Pair]


@dataclass
class PairSource:
    """Pairs grouped by reference, their key columns, and the loaders the DataLoader's workers run.

    ``load_ref(group.ref) -> (1, 3, H, W)``; ``load_dist(pair.dist, ref) -> (1, 3, H, W)`` (a sweep makes it from
    the reference); ``load_extras(pair.extras) -> dict`` of keyword tensors for the metric (``None``: none). A
    loader signals a bad pair by raising one of :data:`PAIR_ERRORS`.
    """

    columns: tuple[str, ...]
    groups: list[Group]
    load_ref: Callable[[Any], torch.Tensor]
    load_dist: Callable[[Any, torch.Tensor], torch.Tensor]
    load_extras: Callable[[Any], dict[str, torch.Tensor]] | None = None
    identity_columns: tuple[str, ...] = ()  # key columns that hold the files' identity, not the pair's name

    def __len__(self) -> int:
        return sum(len(g.pairs) for g in self.groups)


def root_relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (POSIX separators) when inside it, else absolute: the store's path key."""
    path, root = Path(path).absolute(), Path(root).absolute()
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).as_posix()
    except ValueError:
        return Path(os.path.normpath(path)).as_posix()


def group_by_reference(items: Iterable[tuple[str, Any, Pair]]) -> list[Group]:
    """Pairs grouped by reference id in order of first appearance; a pair whose key repeats is kept once."""
    groups: dict[str, Group] = {}
    seen: set[tuple[str, ...]] = set()
    for ref_id, ref, pair in items:
        if pair.key in seen:
            continue
        seen.add(pair.key)
        groups.setdefault(ref_id, Group(ref_id, ref, [])).pairs.append(pair)
    return list(groups.values())


class _FileReader:
    """Picklable loaders of image files (for the DataLoader's workers)."""

    def __init__(self, read: Callable[..., torch.Tensor]) -> None:
        self.read = read

    def ref(self, path: Path) -> torch.Tensor:
        return self.read(path)

    def dist(self, path: Path, ref: torch.Tensor) -> torch.Tensor:
        return self.read(path)

    @staticmethod
    def saliency(paths: tuple[Path | None, Path | None]) -> dict[str, torch.Tensor]:
        names = ("saliency_ref", "saliency_dist")
        return {name: load_map(path) for name, path in zip(names, paths, strict=True) if path is not None}


def read_pairs(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a pairs CSV; a missing column or an empty ``ref`` / ``dist`` is named with its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"ref", "dist"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns 'ref' and 'dist', found {reader.fieldnames}")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        missing = [c for c in ("ref", "dist") if not (row.get(c) or "").strip()]
        if missing:
            raise ValueError(f"{path} line {line}: no {' and no '.join(repr(c) for c in missing)} value; every row "
                             "needs both")
    return rows


def pairs_from_csv(path: str | os.PathLike, root: str | os.PathLike | None = None,
                   read: Callable[..., torch.Tensor] = load_image) -> PairSource:
    """The pairs of a CSV with columns ``ref,dist`` (optionally ``saliency_ref,saliency_dist``); relative paths start
    at ``root`` (default: the CSV's folder). Key columns: the root-relative paths and ``files``, the identity (size
    and modification time) of every file of the pair."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rows = read_pairs(path)
    saliency = any((row.get("saliency_ref") or row.get("saliency_dist")) for row in rows)
    columns = ("ref", "dist", *(("saliency_ref", "saliency_dist") if saliency else ()), "files")
    reader = _FileReader(read)

    def items() -> Iterator[tuple[str, Any, Pair]]:
        for line, row in enumerate(rows, start=2):
            names = [row["ref"].strip(), row["dist"].strip()]
            if saliency:
                names += [(row.get("saliency_ref") or "").strip(), (row.get("saliency_dist") or "").strip()]
            files = [root / n if n else None for n in names]
            key = (*(root_relative(f, root) if f else "" for f in files),
                   " ".join(file_identity(f) for f in files if f))
            extras = tuple(files[2:]) if saliency and any(files[2:]) else None
            yield key[0], files[0], Pair(line, key, files[1], extras)

    return PairSource(columns, group_by_reference(items()), reader.ref, reader.dist,
                      reader.saliency if saliency else None, ("files",))


def pairs_from_records(records: Sequence[Any], root: str | os.PathLike,
                       read: Callable[..., torch.Tensor] = load_image) -> PairSource:
    """A dataset's records (objects with ``key``, ``ref`` and ``dist``: iqa_core.datasets.IQARecord). Key columns:
    ``dist`` (the record's key), ``ref`` (root-relative) and ``files`` (both files' identity)."""
    reader = _FileReader(read)
    items = ((str(Path(r.ref)), Path(r.ref),
              Pair(i, (r.key, root_relative(r.ref, root), f"{file_identity(r.ref)} {file_identity(r.dist)}"),
                   Path(r.dist))) for i, r in enumerate(records, start=1))
    return PairSource(("dist", "ref", "files"), group_by_reference(items), reader.ref, reader.dist,
                      identity_columns=("files",))


# ------------------------------------------------------------------------------------------------------ scorers

class Scorer:
    """What the engine runs: one or more outputs (store keys) per pair from one pass of the backbone per image.

    Subclasses set :attr:`keys`, :attr:`min_size`, :attr:`requires_same_size`, :attr:`device` and implement
    :meth:`encode` (a reference, once per group) and :meth:`score` (a batch of distorted images of one size against
    it: per key a (B,) tensor, or a string saying why that output cannot be scored for this batch, which sends the
    batch's pairs of that key to the errors table). :class:`GridScorer` is the scorer of a TapGrid (every tap x
    comparator cell of one backbone), one key per cell.
    """

    keys: tuple[MetricKey, ...] = ()
    min_size: int = 1
    requires_same_size: bool = False
    device: torch.device = torch.device("cpu")
    precision: str = DEFAULT_PRECISION

    def encode(self, ref: torch.Tensor) -> Any:
        raise NotImplementedError

    def score(self, dists: torch.Tensor, ref: torch.Tensor, encoded: Any) -> list[torch.Tensor | str]:
        raise NotImplementedError

    def score_with(self, dist: torch.Tensor, ref: torch.Tensor, extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One pair with extra inputs (saliency maps): no cached reference, no batch."""
        raise IQAInputError(f"{self.keys[0].metric} takes no extra inputs (saliency maps)")


class MetricScorer(Scorer):
    """A registered metric: :class:`FeatureMetric` s encode the reference once (``reference_features`` /
    ``score_against``), the others get the reference with every batch. ``name`` and ``options`` (the constructor
    options the metric was built with) go into the store's key with the digest of its weights and ``precision``;
    the metric is converted for the precision in place (iqa_core.precision)."""

    def __init__(self, metric: Metric, name: str | None = None, options: dict[str, Any] | None = None,
                 precision: str = DEFAULT_PRECISION) -> None:
        self.name = name or metric.name
        digest = weights_digest(metric)  # of the weights as built, before a float64 conversion
        self.metric = apply_precision(metric.eval(), precision)
        self.precision = precision
        self.keys = (MetricKey(self.name, options_text(options), digest, precision),)
        self.min_size = metric.min_size
        self.requires_same_size = metric.requires_same_size
        self.device = metric.device
        self._checked = precision not in ("bf16", "fp16")

    def _check_autocast(self) -> None:
        if not self._checked:
            check_autocast_used(self.metric, self.precision)
            self._checked = True

    def encode(self, ref: torch.Tensor) -> Any:
        if isinstance(self.metric, FeatureMetric):
            return self.metric.reference_features(ref)
        return ref

    def score(self, dists: torch.Tensor, ref: torch.Tensor, encoded: Any) -> list[torch.Tensor]:
        if isinstance(self.metric, FeatureMetric):
            out = self.metric.score_against(dists, encoded)
        else:
            out = self.metric(dists, ref)
        self._check_autocast()
        return [out]

    def score_with(self, dist: torch.Tensor, ref: torch.Tensor, extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = self.metric(dist, ref, **extras)
        self._check_autocast()
        return [out]


def _cell_digest(backbone_digest: str, comparator: torch.nn.Module) -> str:
    """A cell's weights: the backbone's digest, combined with the comparator's where it has weights (LPIPS heads)."""
    own = weights_digest(comparator)
    if own == "-":
        return backbone_digest
    return hashlib.sha256(f"{backbone_digest}|{own}".encode()).hexdigest()[:16]


class GridScorer(Scorer):
    """Every cell of a :class:`~iqa_core.deep_features.TapGrid` from one backbone pass per image: one store key per
    (tap, comparator) cell, named ``<name>/<tap>/<comparator>`` (``name``: default the backbone's), with ``options``
    and the grid's ``stride`` (when set) in its options and the backbone's (and comparator's) weights digest.

    ``encode`` prepares the reference's taps for every cell once; ``score`` runs the backbone once on the batch and
    every cell's comparator. A cell whose comparator refuses an image's taps (a tap too small for its windows) sends
    that cell of those pairs to the errors table, with the reason; the other cells are scored. :attr:`cells` lists
    the cells in the order of :attr:`keys`."""

    def __init__(self, grid: TapGrid, name: str | None = None, options: dict[str, Any] | None = None,
                 precision: str = DEFAULT_PRECISION) -> None:
        digest = weights_digest(grid.backbone)  # of the weights as built, before a float64 conversion
        self.grid = apply_precision(grid.eval(), precision)
        self.name = name or grid.backbone.name
        self.precision = precision
        self.cells = list(grid.cells)
        options = {**({"stride": grid.stride} if grid.stride is not None else {}), **(options or {})}
        self.keys = tuple(MetricKey(f"{self.name}/{tap}/{comparator}", options_text(options),
                                    _cell_digest(digest, grid.cells[(tap, comparator)]), precision)
                          for tap, comparator in self.cells)
        self.min_size = grid.min_size
        self.requires_same_size = grid.backbone.window is not None or any(
            c.requires_same_size for c in grid.cells.values())
        anchor = next(iter(grid.backbone.parameters()), None)
        self.device = anchor.device if anchor is not None else torch.device("cpu")
        self._checked = precision not in ("bf16", "fp16")

    def cell_of(self, key: MetricKey) -> tuple[str, str]:
        """The (tap, comparator) cell of one of :attr:`keys`."""
        return self.cells[self.keys.index(key)]

    def encode(self, ref: torch.Tensor) -> tuple[dict[tuple[str, str], list[Any]], dict[tuple[str, str], str]]:
        refused: dict[tuple[str, str], str] = {}
        return self.grid.prepare(self.grid.tap_outputs(ref, "ref"), refused), refused

    def score(self, dists: torch.Tensor, ref: torch.Tensor, encoded: Any) -> list[torch.Tensor | str]:
        prepared, refused = encoded
        errors = {cell: f"reference: {reason}" for cell, reason in refused.items()}
        scores = self.grid.score_prepared(self.grid.tap_outputs(dists, "dist"), prepared, errors)
        if not self._checked:
            check_autocast_used(self.grid, self.precision)
            self._checked = True
        return [scores[cell] if cell in scores else errors.get(cell, "not scored") for cell in self.cells]


# ------------------------------------------------------------------------------------------------------ units

@dataclass(frozen=True)
class Unit:
    """At most ``batch_size`` consecutive pairs of one group: what a DataLoader item holds."""

    group: int
    pairs: tuple[Pair, ...]


def cut_units(source: PairSource, batch_size: int) -> list[Unit]:
    """Every group cut into runs of ``batch_size`` pairs, from the source alone (not from what is done)."""
    return [Unit(g, tuple(group.pairs[i:i + batch_size]))
            for g, group in enumerate(source.groups) for i in range(0, len(group.pairs), batch_size)]


def _reason(err: BaseException) -> str:
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    return " ".join(text.split()) or type(err).__name__


@dataclass
class LoadedUnit:
    """A unit's images as the DataLoader delivers them; a failed read is kept as its reason."""

    index: int
    ref: torch.Tensor | None
    ref_error: str | None
    dists: list[torch.Tensor | None]
    errors: list[str | None]
    extras: list[dict[str, torch.Tensor] | None]

    def pin_memory(self) -> LoadedUnit:
        """Called by the DataLoader (``pin_memory=True``, GPU runs): page-locked copies for non-blocking transfers."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return LoadedUnit(self.index, pin(self.ref), self.ref_error, [pin(d) for d in self.dists], self.errors,
                          [None if e is None else {k: pin(v) for k, v in e.items()} for e in self.extras])


class UnitImages(Dataset):
    """``units[i]``'s images, read (or made) in a DataLoader worker."""

    def __init__(self, source: PairSource, units: Sequence[Unit], indices: Sequence[int]) -> None:
        self.source, self.units, self.indices = source, units, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> LoadedUnit:
        index = self.indices[i]
        unit = self.units[index]
        group = self.source.groups[unit.group]
        ref, ref_error = None, None
        try:
            ref = self.source.load_ref(group.ref)
        except PAIR_ERRORS as err:
            ref_error = f"reference: {_reason(err)}"
        dists: list[torch.Tensor | None] = []
        errors: list[str | None] = []
        extras: list[dict[str, torch.Tensor] | None] = []
        for pair in unit.pairs:
            dist, error, extra = None, ref_error, None
            if ref is not None:
                try:
                    dist = self.source.load_dist(pair.dist, ref)
                    if pair.extras is not None and self.source.load_extras is not None:
                        extra = self.source.load_extras(pair.extras)
                except PAIR_ERRORS as err:
                    dist, error = None, _reason(err)
            dists.append(dist)
            errors.append(error)
            extras.append(extra)
        return LoadedUnit(index, ref, ref_error, dists, errors, extras)


# ------------------------------------------------------------------------------------------------------ the run

@dataclass
class Plan:
    """What a run has to do: ``pairs`` x ``outputs`` (store keys: one per metric, one per grid cell) scores,
    ``cached`` of them already in the store."""

    pairs: int
    outputs: int
    cached: int
    todo: int
    out: Path
    world_size: int = 1
    pairs_todo: int = 0  # (scorer, pair) jobs with some output missing: with one scorer, the pairs to score

    @property
    def total(self) -> int:
        return self.pairs * self.outputs

    @property
    def where(self) -> str:
        """`` on N processes`` in a distributed run, else nothing (for announcements)."""
        return f" on {self.world_size} processes" if self.world_size > 1 else ""


@dataclass
class RunReport:
    """What a run did (all ranks together, on rank 0)."""

    plan: Plan
    scored: int = 0
    failed: int = 0
    stopped: StopRequested | None = None
    is_main: bool = True
    errors_file: Path | None = None

    def summary(self) -> str:
        line = f"{self.scored} scored, {self.plan.cached} already in {self.plan.out}, {self.failed} failed"
        if self.failed:
            line += f" (pair and reason in {self.errors_file})"
        return line


@dataclass
class _RefCache:
    """Per scorer: the group whose reference is encoded, and the encoding (or why it failed)."""

    group: int = -1
    encoded: Any = None
    error: str | None = None


@dataclass
class _Counters:
    scored: int = 0
    failed: int = 0
    refs: dict[int, _RefCache] = field(default_factory=dict)


def _missing(scorer: Scorer, pairs: Sequence[Pair], store: ScoreStore, extra: ScoreStore | None
             ) -> list[list[bool]]:
    """For each pair, for each of the scorer's outputs (keys): whether it is missing from the store(s)."""
    def done(key: MetricKey, pair: Pair) -> bool:
        return store.has(key, pair.key) or (extra is not None and extra.has(key, pair.key))

    return [[not done(k, p) for k in scorer.keys] for p in pairs]


def _todo(scorer: Scorer, pairs: Sequence[Pair], store: ScoreStore, extra: ScoreStore | None) -> list[bool]:
    """For each pair: whether one of the scorer's outputs is missing from the store(s)."""
    return [any(keys) for keys in _missing(scorer, pairs, store, extra)]


def _size_batches(indices: Sequence[int], dists: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by image size, in order of first appearance."""
    batches: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        batches.setdefault(tuple(dists[i].shape[-2:]), []).append(i)
    return list(batches.values())


def _encode_reference(scorer: Scorer, loaded: LoadedUnit, group: int, cache: _RefCache) -> _RefCache:
    if cache.group == group:
        return cache
    cache = _RefCache(group)
    if loaded.ref_error is not None:
        cache.error = loaded.ref_error
        return cache
    try:
        ref = check_image(loaded.ref, "reference", scorer.min_size)
        cache.encoded = scorer.encode(ref.to(scorer.device, non_blocking=True))
    except IQAInputError as err:
        text = _reason(err)
        cache.error = text if text.startswith("reference") else f"reference: {text}"
    return cache


def _checked_pairs(scorer: Scorer, loaded: LoadedUnit) -> tuple[list[int], dict[int, str]]:
    """The unit's pairs the scorer can take (indices) and the reasons of the others."""
    good, bad = [], {}
    for i, (dist, error) in enumerate(zip(loaded.dists, loaded.errors, strict=True)):
        if dist is None:
            bad[i] = error or "not read"
            continue
        try:
            check_pair(dist, loaded.ref, min_size=scorer.min_size, same_size=scorer.requires_same_size)
            good.append(i)
        except IQAInputError as err:
            bad[i] = _reason(err)
    return good, bad


def _values(outs: Sequence[torch.Tensor | str], k: int) -> list[float | str]:
    """Pair ``k``'s value of each output: a float, or the reason (a string) the output refused the batch."""
    return [o if isinstance(o, str) else float(o[k]) for o in outs]


def _score_indices(scorer: Scorer, loaded: LoadedUnit, indices: list[int], encoded: Any
                   ) -> tuple[dict[int, list[float | str]], dict[int, str]]:
    """Scores of the pairs ``indices`` (one size), as one batch; pairs a batch refuses are tried one at a time."""
    ref = loaded.ref.to(scorer.device, non_blocking=True)
    extras = [i for i in indices if loaded.extras[i] is not None]
    plain = [i for i in indices if loaded.extras[i] is None]
    scores: dict[int, list[float | str]] = {}
    errors: dict[int, str] = {}
    for i in extras:
        try:
            extra = {k: v.to(scorer.device, non_blocking=True) for k, v in loaded.extras[i].items()}
            scores[i] = _values(scorer.score_with(loaded.dists[i].to(scorer.device), ref, extra), 0)
        except IQAInputError as err:
            errors[i] = _reason(err)
    if not plain:
        return scores, errors
    batch = torch.cat([loaded.dists[i] for i in plain]).to(scorer.device, non_blocking=True)
    try:
        outs = scorer.score(batch, ref, encoded)
        scores.update({i: _values(outs, k) for k, i in enumerate(plain)})
    except IQAInputError:
        for k, i in enumerate(plain):
            try:
                scores[i] = _values(scorer.score(batch[k:k + 1], ref, encoded), 0)
            except IQAInputError as err:
                errors[i] = _reason(err)
    return scores, errors


def _score_unit(scorers: Sequence[Scorer], loaded: LoadedUnit, unit: Unit, writer: ScoreStore,
                main: ScoreStore | None, counters: _Counters) -> int:
    """Score one unit with every scorer that misses some of its outputs; returns the (scorer, pair) jobs done."""
    resolved = 0
    for s, scorer in enumerate(scorers):
        missing = _missing(scorer, unit.pairs, writer, main)
        if not any(any(keys) for keys in missing):
            continue
        with precision_scope(scorer.precision), torch.inference_mode():
            cache = counters.refs[s] = _encode_reference(scorer, loaded, unit.group, counters.refs.get(s, _RefCache()))
            if cache.error is not None:
                scores, errors = {}, dict.fromkeys(range(len(unit.pairs)), cache.error)
            else:
                good, errors = _checked_pairs(scorer, loaded)
                scores = {}
                for indices in _size_batches(good, loaded.dists):
                    got, failed = _score_indices(scorer, loaded, indices, cache.encoded)
                    scores.update(got)
                    errors.update(failed)
        for i, pair in enumerate(unit.pairs):
            if not any(missing[i]):
                continue
            resolved += 1
            values = scores.get(i) or [errors[i]] * len(scorer.keys)
            for key, value, todo in zip(scorer.keys, values, missing[i], strict=True):
                if not todo:
                    continue
                if isinstance(value, str):
                    counters.failed += 1
                    writer.add_error(key, pair.row, pair.key, value)
                else:
                    counters.scored += 1
                    writer.add_score(key, pair.key, value)
    return resolved


def _loader(source: PairSource, units: Sequence[Unit], indices: Sequence[int], workers: int,
            device: torch.device) -> DataLoader:
    return DataLoader(UnitImages(source, units, indices), batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)


def _merge_shards(store: ScoreStore) -> int:
    return sum(store.merge(path) for path in shard_files(store.path))


def _plan_counts(scorers: Sequence[Scorer], source: PairSource, units: Sequence[Unit], store: ScoreStore
                 ) -> tuple[int, int, list[int]]:
    """Outputs already in the store, outputs to score, and the (scorer, pair) jobs to do per group."""
    per_group = [0] * len(source.groups)
    todo = 0
    for unit in units:
        for scorer in scorers:
            missing = _missing(scorer, unit.pairs, store, None)
            per_group[unit.group] += sum(any(keys) for keys in missing)
            todo += sum(sum(keys) for keys in missing)
    outputs = sum(len(s.keys) for s in scorers)
    return len(source) * outputs - todo, todo, per_group


def _announce_default(plan: Plan) -> None:
    what = f"{plan.pairs} pairs" + (f" x {plan.outputs} outputs" if plan.outputs > 1 else "")
    print(f"{what}, {plan.cached} already in {plan.out}, {plan.todo} to score{plan.where}", file=sys.stderr)


def score_pairs(scorers: Sequence[Scorer], source: PairSource, out: str | os.PathLike, *, batch_size: int = 8,
                workers: int = 1, stop_after: int | None = None, progress: bool = True,
                announce: Callable[[Plan], None] | None = _announce_default, desc: str = "scoring") -> RunReport:
    """Score every pair of ``source`` with every scorer into the store at ``out`` (iqa_core.store), skipping what is
    there; see the module docstring. Under torchrun the ranks share the work (call it on every rank); the report's
    counts are the whole run's on rank 0. ``stop_after`` (per process) raises :class:`StopRequested` once that many
    new rows are written, after the shards are merged."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    out = Path(out)
    device = scorers[0].device if scorers else torch.device("cpu")
    world = init_world(device)
    units = cut_units(source, batch_size)
    main = _open_main_store(out, source, world, stop_after)
    try:
        cached, todo, per_group = _plan_counts(scorers, source, units, main)
        plan = Plan(len(source), sum(len(s.keys) for s in scorers), cached, todo, out, world.size, sum(per_group))
        owners = broadcast(world, assign_groups(per_group, world.size))
        if announce is not None and world.is_main:
            announce(plan)
        mine = [i for i, u in enumerate(units) if owners[u.group] == world.rank]
        counters, stopped = _run_units(scorers, source, units, mine, main, world, stop_after, workers, device,
                                       progress and world.is_main, desc, per_group, owners)
    except BaseException:
        main.close()
        raise
    return _finish(main, world, plan, counters, stopped)


def _open_main_store(out: Path, source: PairSource, world: World, stop_after: int | None) -> ScoreStore:
    """The store every rank reads; rank 0 first merges shards a killed run left (any world size)."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory: give the CSV file to write, e.g. {out / 'scores.csv'}")
    main = None
    if world.is_main:
        main = ScoreStore(out, source.columns, None if world.is_distributed else stop_after,
                          identity_columns=source.identity_columns)
        _merge_shards(main)
        main.refresh()
    barrier(world)
    return main if main is not None else ScoreStore(out, source.columns, prune_errors=False,
                                                    identity_columns=source.identity_columns)


def _run_units(scorers: Sequence[Scorer], source: PairSource, units: Sequence[Unit], mine: list[int],
               main: ScoreStore, world: World, stop_after: int | None, workers: int, device: torch.device,
               progress: bool, desc: str, per_group: list[int], owners: list[int]
               ) -> tuple[_Counters, StopRequested | None]:
    """This rank's units, into the main store (one process) or this rank's shard."""
    from tqdm import tqdm

    counters = _Counters()
    shard = (ScoreStore(shard_path(main.path, world.rank), source.columns, stop_after, prune_errors=False,
                        identity_columns=source.identity_columns) if world.is_distributed else None)
    writer = shard or main
    total = sum(n for g, n in enumerate(per_group) if owners[g] == world.rank)
    bar = tqdm(total=total, desc=desc, unit="pair", disable=not progress or total == 0, file=sys.stderr)
    stopped = None
    try:
        todo_units = [i for i in mine if any(any(_todo(s, units[i].pairs, main, None)) for s in scorers)]
        for loaded in _loader(source, units, todo_units, workers if todo_units else 0, device):
            if shard is None:
                main.refresh()  # another writer may have scored these pairs meanwhile
            bar.update(_score_unit(scorers, loaded, units[loaded.index], writer, None if shard is None else main,
                                   counters))
            writer.flush()
    except StopRequested as stop:
        stopped = stop
    finally:
        bar.close()
        if shard is not None:
            shard.close()
    return counters, stopped


def _finish(main: ScoreStore, world: World, plan: Plan, counters: _Counters, stopped: StopRequested | None
            ) -> RunReport:
    """Merge the shards (rank 0), add up the counts, close the store; re-raise a stop once all is on disk."""
    barrier(world)
    if world.is_distributed and world.is_main:
        _merge_shards(main)
    main.close()
    counts = gather(world, (counters.scored, counters.failed, stopped is not None))
    report = RunReport(plan, sum(c[0] for c in counts), sum(c[1] for c in counts), stopped, world.is_main,
                       errors_path(main.path))
    barrier(world)
    if stopped is not None:
        raise stopped
    return report


def current_scores(out: str | os.PathLike, scorers: Sequence[Scorer], source: PairSource) -> pd.DataFrame:
    """The store's scores of exactly these scorers' keys and these pairs (older keys' rows are left out): columns
    ``metric``, the source's key columns, ``score``; one row per (output, pair) that has a score."""
    import pandas as pd  # here: the command line starts faster without it

    rows = []
    with ScoreStore(out, source.columns, prune_errors=False, identity_columns=source.identity_columns) as store:
        for scorer in scorers:
            for key in scorer.keys:
                for group in source.groups:
                    for pair in group.pairs:
                        value = store.score_of(key, pair.key)
                        if value is not None:
                            rows.append((key.metric, *pair.key, value))
    return pd.DataFrame(rows, columns=["metric", *source.columns, "score"])



def current_errors(out: str | os.PathLike, scorers: Sequence[Scorer], source: PairSource) -> pd.DataFrame:
    """The errors table's rows of exactly these scorers' keys and these pairs: columns ``metric``, ``row``, the
    source's key columns and ``reason`` (empty when nothing failed)."""
    import pandas as pd

    columns = ["metric", "row", *source.columns, "reason"]
    if not errors_path(out).is_file():
        return pd.DataFrame(columns=columns)
    keys = {key.values() for scorer in scorers for key in scorer.keys}
    named = [i for i, c in enumerate(source.columns) if c not in source.identity_columns]
    pairs = {tuple(pair.key[i] for i in named) for group in source.groups for pair in group.pairs}
    rows = []
    with ScoreStore(out, source.columns, prune_errors=False, identity_columns=source.identity_columns) as store:
        for row in store.errors:
            if (tuple(row[c] for c in METRIC_KEY) in keys
                    and tuple(row[source.columns[i]] for i in named) in pairs):
                rows.append([row[c] for c in columns])
    return pd.DataFrame(rows, columns=columns)
