"""Loaders for full-reference IQA databases in the layouts their authors distribute.

Every loader reads the label files and image folders **as shipped** (no conversion step) and
returns a :class:`Dataset`: an ordered list of :class:`IQARecord` (distorted image, reference image,
subjective score, distortion type, level) plus metadata (score kind, score direction, expected
count). ``load_dataset(name, root=None, **options)`` is the entry point; ``list_datasets()`` names
the official loaders.

Where the data are looked for: ``root`` if given, otherwise ``$IQA_DATA_DIR/<dir>`` or
``<repository>/data/<dir>`` with ``<dir>`` one of the folder names in :func:`dataset_info`
(``LIVE``, ``CSIQ``, ``TID2013``, ``KADID-10k``, ``PIPAL``, ``LIVE-MD``, ``IVC``, ``QADS``). A root
may also be the folder *above* the distribution's own top folder (``databaserelease2/``,
``kadid10k/``, ``LIVEmultidistortiondatabase/`` ...): the loader steps into it.

Official layouts (see the docstring of each ``_load_*`` function for details):

=========  ===========================================================================  ======
name       layout under the root                                                        images
=========  ===========================================================================  ======
LIVE       ``jp2k/ jpeg/ wn/ gblur/ fastfading/ refimgs/``, ``dmos.mat``,                 779
           ``dmos_realigned.mat``, ``refnames_all.mat`` (LIVE IQA Release 2)            (982)
CSIQ       ``dst_imgs/<type>/<ref>.<TYPE>.<lvl>.png``, ``src_imgs/<ref>.png`` + labels    866
                                                                                        (750)
TID2013    ``distorted_images/``, ``reference_images/``, ``mos_with_names.txt``           3000
KADID-10k  ``images/``, ``dmos.csv`` (dist_img,ref_img,dmos,var)                          10125
PIPAL      ``Train_Ref/``, ``Train_Dis/`` (or ``Distortion_1..4/``), ``Train_Label/*.txt``  23200
LIVE-MD    ``Part 1/blurjpeg/``, ``Part 2/blurnoise/``, ``Imagelists.mat``/``Scores.mat``   450
IVC        flat: ``<ref>_<type>_<r|f><lvl>.bmp``, ``<ref>.bmp`` and a MOS text file          185
QADS       ``super-resolved_images/``, ``source_images/``, ``mos_with_names.txt``          980
=========  ===========================================================================  ======

File names are resolved case-insensitively (TID2013 ships ``I01_01_1.bmp`` beside
``i01_01_2.bmp`` and ``I01_11_1.BMP``; its reference 25 is ``i25.bmp``).

The unified Waterloo label files (github.com/icbcbicc/IQA-Dataset, ``<NAME>.csv`` with header
``dis_img_path,dis_type,ref_img_path,score``) are a second source for any of their 17 databases:
``load_dataset("TID2013", source="waterloo")`` or ``load_dataset("A57")``.

A missing or incomplete dataset raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``)
naming the root that was searched, the expected layout and the first missing files.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IQARecord",
    "Dataset",
    "DatasetSpec",
    "DatasetNotFoundError",
    "load_dataset",
    "list_datasets",
    "dataset_info",
    "default_root",
    "resolve_path",
    "WATERLOO_DATASETS",
]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_MAX_LISTED = 8  # how many missing files an error message names


# ------------------------------------------------------------------------------------------------
# Records, datasets, errors
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IQARecord:
    """One distorted image with its reference and subjective score.

    ``key`` is the distorted image's path relative to the dataset root in the official layout,
    spelled as in ``../shared/published`` (``dist_image`` column): e.g. ``jp2k/img1.bmp`` (LIVE),
    ``distorted_images/i01_01_1.bmp`` (TID2013, lower-cased), ``Part 1/blurjpeg/x.bmp`` (LIVE-MD).
    ``dist``/``ref`` are the files as found on disk (actual case) or, where missing, the
    expected paths.
    """

    dist: Path
    ref: Path | None
    score: float
    distortion: str
    level: int | None = None
    key: str = ""
    is_reference_copy: bool = False


class DatasetNotFoundError(FileNotFoundError):
    """A dataset, or some of its label or image files, is not where it should be."""

    def __init__(self, name: str, root: Path, layout: str, missing: Sequence[str], n_missing: int | None = None,
                 hint: str = ""):
        self.dataset = name
        self.root = Path(root)
        self.layout = layout
        self.missing = list(missing)
        self.n_missing = len(self.missing) if n_missing is None else n_missing
        super().__init__(self._message(hint))

    def _message(self, hint: str) -> str:
        shown = ", ".join(self.missing[:_MAX_LISTED])
        more = f" (and {self.n_missing - _MAX_LISTED} more)" if self.n_missing > _MAX_LISTED else ""
        lines = [
            f"{self.dataset} dataset not found or incomplete at {self.root}",
            f"  expected layout: {self.layout}",
            f"  missing ({self.n_missing}): {shown}{more}",
            f"  Put the dataset under {self.root} (or pass root=..., or set IQA_DATA_DIR to the folder "
            f"that holds it).",
        ]
        if hint:
            lines.append(f"  {hint}")
        return "\n".join(lines)


@dataclass
class Dataset:
    """An ordered set of :class:`IQARecord` with the metadata needed to evaluate a metric on it."""

    name: str
    root: Path
    records: list[IQARecord]
    score_kind: str  # "MOS", "DMOS", "Elo"
    score_higher_is_better: bool
    expected_count: int | None = None
    source: str = "official"
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[IQARecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> IQARecord:
        return self.records[index]

    @property
    def complete(self) -> bool:
        """True if the number of records equals the count of the full database (with these options)."""
        return self.expected_count is None or len(self.records) == self.expected_count

    @property
    def scores(self) -> np.ndarray:
        return np.array([r.score for r in self.records], dtype=np.float64)

    def distortions(self) -> list[str]:
        """Distortion types in order of first appearance."""
        return list(dict.fromkeys(r.distortion for r in self.records))

    def missing_files(self) -> list[Path]:
        """Distorted and reference files that do not exist (in record order, no duplicates)."""
        paths = [p for r in self.records for p in (r.dist, r.ref) if p is not None]
        return [p for p in dict.fromkeys(paths) if not p.is_file()]

    def to_frame(self):  # -> pandas.DataFrame (pandas imported lazily)
        """The records as a pandas DataFrame (columns key, dist, ref, score, distortion, level, ...)."""
        import pandas as pd

        return pd.DataFrame({
            "key": [r.key for r in self.records],
            "dist": [str(r.dist) for r in self.records],
            "ref": [None if r.ref is None else str(r.ref) for r in self.records],
            "score": self.scores,
            "distortion": [r.distortion for r in self.records],
            "level": pd.array([r.level for r in self.records], dtype="Int64"),
            "is_reference_copy": [r.is_reference_copy for r in self.records],
        })


# ------------------------------------------------------------------------------------------------
# Paths: default roots and case-insensitive resolution
# ------------------------------------------------------------------------------------------------

def default_root(dirname: str) -> Path:
    """``$IQA_DATA_DIR/<dirname>`` if the variable is set, else ``<repository>/data/<dirname>``."""
    base = os.environ.get("IQA_DATA_DIR")
    return (Path(base) if base else _REPO_ROOT / "data") / dirname


@lru_cache(maxsize=4096)
def _listing(directory: str, mtime_ns: int) -> tuple[dict[str, str], dict[str, str]]:
    """Names in ``directory``: exact -> name and lower-case -> name (cached per directory state)."""
    del mtime_ns  # part of the cache key only
    names = os.listdir(directory)
    exact = {n: n for n in names}
    lower: dict[str, str] = {}
    for n in sorted(names):
        lower.setdefault(n.lower(), n)
    return exact, lower


def _child(directory: Path, name: str) -> Path | None:
    exact_path = directory / name
    if os.path.lexists(exact_path):
        return exact_path
    try:
        exact, lower = _listing(str(directory), directory.stat().st_mtime_ns)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    found = exact.get(name) or lower.get(name.lower())
    return directory / found if found else None


def resolve_path(root: Path, relpath: str) -> Path | None:
    """``root / relpath`` with each component matched case-insensitively; None if absent.

    An exact-case match wins over a case-insensitive one.
    """
    current = Path(root)
    for part in Path(relpath.replace("\\", "/")).parts:
        nxt = _child(current, part)
        if nxt is None:
            return None
        current = nxt
    return current


def _resolve_or_expected(root: Path, relpath: str) -> Path:
    return resolve_path(root, relpath) or Path(root) / relpath


def _step_into(root: Path, subdirs: Sequence[str], marker: str) -> Path:
    """``root`` if it holds ``marker``, else the first ``root/<subdir>`` that does; else ``root``."""
    if resolve_path(root, marker) is not None:
        return root
    for sub in subdirs:
        candidate = resolve_path(root, sub)
        if candidate is not None and resolve_path(candidate, marker) is not None:
            return candidate
    return root


def _read_text(path: Path) -> str:
    """Text of a label file: UTF-16 if it starts with a BOM, else UTF-8 (with or without BOM)."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    return scipy.io.loadmat(str(path))


def _mat_strings(value: Any) -> list[str]:
    """Flatten a MATLAB cell array of strings (as scipy.io.loadmat returns it) to a list."""
    out: list[str] = []
    for item in np.asarray(value, dtype=object).ravel():
        if isinstance(item, str):
            out.append(item.strip())
        elif isinstance(item, np.ndarray):
            if item.dtype.kind in "US":
                out.extend(str(s).strip() for s in item.ravel())
            else:
                out.extend(_mat_strings(item))
        else:
            out.append(str(item).strip())
    return out


def _mat_vector(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).ravel()


# ------------------------------------------------------------------------------------------------
# Specs and registry
# ------------------------------------------------------------------------------------------------

Loader = Callable[..., tuple[list[IQARecord], dict[str, Any]]]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and where/how it is stored."""

    name: str
    dirnames: tuple[str, ...]  # folder names tried under the data folder, first = default
    layout: str  # one-line description of the official layout (shown in errors)
    score_kind: str
    score_higher_is_better: bool
    expected_count: int | None
    loader: Loader
    aliases: tuple[str, ...] = ()
    waterloo_name: str | None = None
    citation: str = ""


_REGISTRY: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    _REGISTRY[spec.name] = spec


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _find_spec(name: str) -> DatasetSpec | None:
    key = _norm(name)
    for spec in _REGISTRY.values():
        if key == _norm(spec.name) or key in {_norm(a) for a in spec.aliases}:
            return spec
    return None


def list_datasets(include_waterloo: bool = False) -> list[str]:
    """Names of the datasets with an official-layout loader (plus the Waterloo-only ones if asked)."""
    names = list(_REGISTRY)
    if include_waterloo:
        covered = {s.waterloo_name for s in _REGISTRY.values()}
        names += [n for n in WATERLOO_DATASETS if n not in covered]
    return names


def dataset_info(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset (accepts aliases such as ``kadid10k``, ``live_md``)."""
    spec = _find_spec(name)
    if spec is None:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list_datasets(include_waterloo=True))}")
    return spec


def _default_dataset_root(dirnames: Sequence[str]) -> Path:
    for d in dirnames:
        candidate = default_root(d)
        if candidate.is_dir():
            return candidate
    return default_root(dirnames[0])


def load_dataset(name: str, root: str | os.PathLike | None = None, *, source: str = "official",
                 check_files: bool = True, **options: Any) -> Dataset:
    """Load a dataset from its official layout (or from a Waterloo label file).

    Args:
        name: a name from :func:`list_datasets` (case and punctuation ignored: ``kadid10k``,
            ``live_md``), or any Waterloo name (``A57``, ``Toyama``...), which implies
            ``source="waterloo"``.
        root: the dataset folder; default ``$IQA_DATA_DIR/<dir>`` or ``<repository>/data/<dir>``.
        source: ``"official"`` (the authors' label files) or ``"waterloo"`` (the unified label
            file ``<NAME>.csv``; see :func:`_load_waterloo` for where it is looked for).
        check_files: verify that every listed image exists; missing ones raise
            :class:`DatasetNotFoundError` naming the first few.
        **options: per-dataset options, e.g. LIVE ``dmos="realigned"|"original"``,
            ``include_references=False``; CSIQ ``include_contrast=True``; LIVE/TID2013/KADID-10k
            ``order="official"|"deepwsd"``. Unknown options raise ``TypeError``.
    """
    spec = _find_spec(name)
    waterloo_name = _waterloo_name(name) if spec is None else spec.waterloo_name
    if spec is None and waterloo_name is None:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list_datasets(include_waterloo=True))}")
    if source not in ("official", "waterloo"):
        raise ValueError(f"source must be 'official' or 'waterloo', not {source!r}")
    if spec is None or source == "waterloo":
        if waterloo_name is None:
            raise ValueError(f"{spec.name} has no Waterloo label file; use source='official'")
        return _load_waterloo(waterloo_name, root, check_files=check_files, spec=spec, **options)

    root_path = Path(root) if root is not None else _default_dataset_root(spec.dirnames)
    if not root_path.is_dir():
        raise DatasetNotFoundError(spec.name, root_path, spec.layout, [f"{root_path}/ (the folder itself)"])
    records, meta = spec.loader(root_path, spec=spec, **options)
    dataset = Dataset(
        name=spec.name, root=Path(meta.pop("root", root_path)), records=records, score_kind=spec.score_kind,
        score_higher_is_better=spec.score_higher_is_better, expected_count=meta.pop("expected_count",
                                                                                    spec.expected_count),
        source="official", options=meta,
    )
    if check_files:
        _check_files(dataset, spec.layout)
    return dataset


def _check_files(dataset: Dataset, layout: str) -> None:
    missing = dataset.missing_files()
    if missing:
        rel = [_relative(p, dataset.root) for p in missing]
        raise DatasetNotFoundError(dataset.name, dataset.root, layout, rel,
                                   hint=f"{len(missing)} image file(s) listed by the labels are absent; "
                                        f"check_files=False skips this check.")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _require(name: str, root: Path, layout: str, relpaths: Sequence[str]) -> dict[str, Path]:
    """Resolve the label files/folders a loader needs; raise one error naming all that are missing."""
    found = {rel: resolve_path(root, rel) for rel in relpaths}
    missing = [rel for rel, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(name, root, layout, missing)
    return {rel: p for rel, p in found.items() if p is not None}


def _no_extra_options(spec: DatasetSpec, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"{spec.name}: unknown option(s) {', '.join(sorted(options))}")


def _check_order(order: str) -> None:
    if order not in ("official", "deepwsd"):
        raise ValueError(f"order must be 'official' or 'deepwsd', not {order!r}")


# ------------------------------------------------------------------------------------------------
# LIVE Release 2
# ------------------------------------------------------------------------------------------------

LIVE_FOLDERS: tuple[tuple[str, int], ...] = (
    ("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
_LIVE_LAYOUT = ("LIVE IQA Release 2: <root>/[databaserelease2/]{jp2k,jpeg,wn,gblur,fastfading}/imgN.bmp, "
                "refimgs/<name>.bmp, dmos.mat (dmos, orgs), dmos_realigned.mat (dmos_new), refnames_all.mat")


def _live_index() -> list[tuple[str, int]]:
    """(folder, N) of the 982 entries of dmos.mat in their official order."""
    return [(folder, i) for folder, count in LIVE_FOLDERS for i in range(1, count + 1)]


def _live_orgs(files: dict[str, Path], dmos_file: str, scores: np.ndarray) -> np.ndarray:
    """Reference-copy flags: ``orgs`` of dmos.mat, else of dmos_realigned.mat, else score == 0."""
    for rel in ("dmos.mat", dmos_file):
        if rel in files:
            mat = _loadmat(files[rel])
            if "orgs" in mat and _mat_vector(mat["orgs"]).size == scores.size:
                return _mat_vector(mat["orgs"]).astype(bool)
    return scores == 0.0


def _load_live(root: Path, *, spec: DatasetSpec, dmos: str = "realigned", include_references: bool = False,
               order: str = "official", **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """LIVE IQA Release 2 (Sheikh, Sabir, Bovik; live.ece.utexas.edu/research/quality).

    Layout as in ``databaserelease2.zip``: five folders ``jp2k`` (227), ``jpeg`` (233), ``wn``,
    ``gblur``, ``fastfading`` (174 each) holding ``img1.bmp`` ... ``imgN.bmp`` (plus ``info.txt``),
    ``refimgs/`` with the 29 references, ``dmos.mat`` (``dmos``, ``orgs``: 1x982 each),
    ``dmos_realigned.mat`` (``dmos_new``, ``dmos_std``, ``orgs``) and ``refnames_all.mat``
    (``refnames_all``: 1x982 cell). The 982 entries are in that folder order.

    Options:
        dmos: ``"realigned"`` (default; ``dmos_realigned.mat`` ``dmos_new``) or ``"original"``
            (``dmos.mat`` ``dmos``). Realigned is the default because it is the DMOS the LIVE
            authors published for cross-session comparability (realignment, Sheikh et al. TIP 2006)
            and the one the Waterloo unified labels and ZS-IQA use. The DeepWSD (TIP 2024) files
            were scored against the *original* DMOS, so use ``dmos="original"`` to reproduce them.
        include_references: False (default) keeps the 779 distorted images (``orgs == 0``); True
            keeps all 982 entries, the 203 reference copies flagged ``is_reference_copy``.
        order: ``"official"`` (dmos.mat order) or ``"deepwsd"`` (folders alphabetically, imgN
            ascending: the line order of the DeepWSD score files).
    """
    _no_extra_options(spec, options)
    _check_order(order)
    if dmos not in ("realigned", "original"):
        raise ValueError(f"LIVE dmos must be 'realigned' or 'original', not {dmos!r}")
    root = _step_into(root, ("databaserelease2", "LIVE", "live_release2"), "refnames_all.mat")
    dmos_file, dmos_key = ("dmos_realigned.mat", "dmos_new") if dmos == "realigned" else ("dmos.mat", "dmos")
    files = _require(spec.name, root, _LIVE_LAYOUT, [dmos_file, "refnames_all.mat", "refimgs"])
    if dmos == "realigned" and resolve_path(root, "dmos.mat") is not None:
        files["dmos.mat"] = resolve_path(root, "dmos.mat")  # type: ignore[assignment]
    scores = _mat_vector(_loadmat(files[dmos_file])[dmos_key])
    refnames = _mat_strings(_loadmat(files["refnames_all.mat"])["refnames_all"])
    index = _live_index()
    if scores.size != len(index) or len(refnames) != len(index):
        raise ValueError(f"LIVE: {dmos_file} has {scores.size} scores and refnames_all.mat {len(refnames)} names; "
                         f"the official files have {len(index)} each")
    orgs = _live_orgs(files, dmos_file, scores)
    records = []
    for (folder, n), score, ref, is_org in zip(index, scores, refnames, orgs, strict=True):
        if is_org and not include_references:
            continue
        key = f"{folder}/img{n}.bmp"
        records.append(IQARecord(dist=_resolve_or_expected(root, key),
                                 ref=_resolve_or_expected(root, f"refimgs/{ref}"), score=float(score),
                                 distortion=folder, level=None, key=key, is_reference_copy=bool(is_org)))
    if order == "deepwsd":
        records.sort(key=lambda r: (r.distortion, int(r.key.split("img")[-1].split(".")[0])))
    meta = {"root": root, "dmos": dmos, "include_references": include_references, "order": order,
            "expected_count": len(index) if include_references else 779}
    return records, meta


# ------------------------------------------------------------------------------------------------
# CSIQ
# ------------------------------------------------------------------------------------------------

# folder name -> type token in the file names (``1600.AWGN.1.png``, ``1600.jpeg2000.1.png``)
CSIQ_TYPES: dict[str, str] = {"awgn": "AWGN", "jpeg": "JPEG", "jpeg2000": "jpeg2000", "fnoise": "fnoise",
                              "blur": "BLUR", "contrast": "contrast"}
# dst_type spellings of csiq.DMOS.xlsx (and the Waterloo folder names) -> folder name
_CSIQ_TYPE_ALIASES = {"noise": "awgn", "awgn": "awgn", "jpeg": "jpeg", "jpeg2000": "jpeg2000", "jp2k": "jpeg2000",
                      "fnoise": "fnoise", "pinknoise": "fnoise", "blur": "blur", "gblur": "blur",
                      "contrast": "contrast"}
_CSIQ_LABELS = ("csiq_dmos.csv", "csiq.DMOS.xlsx", "CSIQ.csv")
_CSIQ_LAYOUT = ("CSIQ: <root>/dst_imgs/{awgn,blur,contrast,fnoise,jpeg,jpeg2000}/<ref>.<TYPE>.<lvl>.png, "
                "src_imgs/<ref>.png, and labels: csiq_dmos.csv (CSV export of sheet 'all_by_image' of "
                "csiq.DMOS.xlsx: image,dst_type,dst_lev,dmos), csiq.DMOS.xlsx (needs openpyxl) "
                "or the Waterloo CSIQ.csv")


def _csiq_type(value: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", str(value).lower())
    if key not in _CSIQ_TYPE_ALIASES:
        raise ValueError(f"CSIQ: unknown distortion type {value!r}")
    return _CSIQ_TYPE_ALIASES[key]


def _csiq_rows_from_table(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, float]]:
    """(ref, type, level, dmos) from rows with columns image, dst_type, dst_lev, dmos."""
    out = []
    for row in rows:
        low = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        if low.get("image") in (None, "") or low.get("dmos") in (None, ""):
            continue
        image = str(low["image"]).strip()
        image = image[:-2] if image.endswith(".0") else image  # numeric names (1600) read as floats
        out.append((image, _csiq_type(low["dst_type"]), int(float(low["dst_lev"])), float(low["dmos"])))
    return out


def _csiq_rows_from_waterloo(path: Path) -> list[tuple[str, str, int, float]]:
    out = []
    for row in csv.DictReader(_read_text(path).splitlines()):
        fname = Path(row["dis_img_path"]).name  # <ref>.<TYPE>.<lvl>.png
        ref, typ, lvl = fname.rsplit(".", 1)[0].rsplit(".", 2)
        out.append((ref, _csiq_type(typ), int(lvl), float(row["score"])))
    return out


def _csiq_read_xlsx(path: Path) -> list[dict[str, Any]]:
    try:
        import openpyxl
    except ImportError as err:
        raise ImportError(f"reading {path.name} needs openpyxl (pip install openpyxl); or export its sheet "
                          f"'all_by_image' as csiq_dmos.csv next to it") from err
    book = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    sheet = book["all_by_image"] if "all_by_image" in book.sheetnames else book.worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    header_at = next(i for i, r in enumerate(rows) if r and "dmos" in [str(c).strip().lower() for c in r if c])
    header = [str(c).strip() if c is not None else None for c in rows[header_at]]
    return [dict(zip(header, r, strict=False)) for r in rows[header_at + 1:]]


def _csiq_labels(path: Path) -> list[tuple[str, str, int, float]]:
    if path.suffix.lower() == ".xlsx":
        return _csiq_rows_from_table(_csiq_read_xlsx(path))
    text = _read_text(path)
    header = text.splitlines()[0].lower() if text else ""
    if "dis_img_path" in header:
        return _csiq_rows_from_waterloo(path)
    return _csiq_rows_from_table(list(csv.DictReader(text.splitlines())))


def _load_csiq(root: Path, *, spec: DatasetSpec, include_contrast: bool = True, labels: str | None = None,
               **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """CSIQ (Larson & Chandler, J. Electronic Imaging 2010; vision.eng.shizuoka.ac.jp).

    Images as distributed: ``dst_imgs/<type>/<ref>.<TYPE>.<lvl>.png`` with type folders ``awgn``,
    ``blur``, ``contrast``, ``fnoise``, ``jpeg``, ``jpeg2000`` (tokens ``AWGN``, ``BLUR``,
    ``contrast``, ``fnoise``, ``JPEG``, ``jpeg2000``), references ``src_imgs/<ref>.png``.
    Labels, first found: ``labels`` if given, ``csiq_dmos.csv`` (CSV export of sheet
    ``all_by_image`` of the official ``csiq.DMOS.xlsx``: columns ``image,dst_type,dst_lev,dmos``,
    extra columns ignored), ``csiq.DMOS.xlsx`` itself (needs openpyxl, not a dependency), or the
    Waterloo ``CSIQ.csv`` placed in the root. Scores are DMOS in [0, 1], lower = better.
    Record order = label file order.

    Options: ``include_contrast`` (True: 866 images; False: 750, the subset the DeepWSD files use),
    ``labels`` (path of the label file).
    """
    _no_extra_options(spec, options)
    root = _step_into(root, ("CSIQ",), "dst_imgs")
    if labels is not None:
        label_path = Path(labels)
        if not label_path.is_file():
            raise DatasetNotFoundError(spec.name, root, _CSIQ_LAYOUT, [str(label_path)])
    else:
        found = [p for p in (resolve_path(root, n) for n in _CSIQ_LABELS) if p is not None]
        missing_dirs = [d for d in ("dst_imgs", "src_imgs") if resolve_path(root, d) is None]
        if not found or missing_dirs:
            missing = missing_dirs + ([" or ".join(_CSIQ_LABELS)] if not found else [])
            raise DatasetNotFoundError(spec.name, root, _CSIQ_LAYOUT, missing)
        label_path = found[0]
    records = []
    for ref, typ, lvl, dmos in _csiq_labels(label_path):
        if typ == "contrast" and not include_contrast:
            continue
        key = f"dst_imgs/{typ}/{ref}.{CSIQ_TYPES[typ]}.{lvl}.png"
        records.append(IQARecord(dist=_resolve_or_expected(root, key),
                                 ref=_resolve_or_expected(root, f"src_imgs/{ref}.png"), score=dmos,
                                 distortion=typ, level=lvl, key=key))
    meta = {"root": root, "include_contrast": include_contrast, "labels": str(label_path),
            "expected_count": 866 if include_contrast else 750}
    return records, meta


# ------------------------------------------------------------------------------------------------
# TID2013
# ------------------------------------------------------------------------------------------------

TID2013_TYPES: tuple[str, ...] = (
    "awgn", "color_noise", "correlated_noise", "masked_noise", "high_freq_noise", "impulse_noise",
    "quantization_noise", "gblur", "denoising", "jpeg", "jp2k", "jpeg_transmission", "jp2k_transmission",
    "non_eccentricity_noise", "block_distortion", "mean_shift", "contrast", "saturation",
    "multiplicative_noise", "comfort_noise", "noisy_compression", "color_quantization_dither",
    "chromatic_aberration", "sparse_sampling")
_TID_NAME = re.compile(r"^i(\d+)_(\d+)_(\d+)\.bmp$", re.IGNORECASE)
_TID_LAYOUT = ("TID2013: <root>/distorted_images/iXX_YY_Z.bmp (any case), reference_images/IXX.BMP "
               "(i25.bmp), mos_with_names.txt ('<MOS> <name>' per line)")


def _parse_tid_name(name: str) -> tuple[int, int, int]:
    m = _TID_NAME.match(name)
    if m is None:
        raise ValueError(f"TID2013: unexpected image name {name!r}")
    return int(m[1]), int(m[2]), int(m[3])


def _score_name_lines(path: Path) -> Iterator[tuple[float, str]]:
    """(score, file name) from a '<score> <name>' label file (TID2013's and QADS's mos_with_names.txt)."""
    for line in _read_text(path).splitlines():
        parts = line.split()
        if len(parts) >= 2:
            yield float(parts[0]), parts[1]


def _load_tid2013(root: Path, *, spec: DatasetSpec, order: str = "official",
                  **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """TID2013 (Ponomarenko et al., Signal Processing: Image Communication 2015; ponomarenko.info).

    ``mos_with_names.txt``: one ``<MOS> <name>`` line per image (3000, reference-major), MOS in
    [0, 9], higher = better. Images ``distorted_images/iRR_TT_L.bmp``; the distribution mixes the
    case (``I01_01_1.bmp``, ``i01_01_2.bmp``, ``.BMP``), so names are resolved case-insensitively;
    references ``reference_images/IRR.BMP`` (``i25.bmp``). ``key`` is the lower-cased name.

    Options: ``order`` ``"official"`` (file order) or ``"deepwsd"`` (distortion-type-major:
    type, reference, level: the line order of the DeepWSD score files).
    """
    _no_extra_options(spec, options)
    _check_order(order)
    root = _step_into(root, ("tid2013", "TID2013"), "mos_with_names.txt")
    files = _require(spec.name, root, _TID_LAYOUT, ["mos_with_names.txt", "distorted_images", "reference_images"])
    records = []
    for score, name in _score_name_lines(files["mos_with_names.txt"]):
        ref_i, typ, lvl = _parse_tid_name(name)
        key = f"distorted_images/{name.lower()}"
        records.append(IQARecord(dist=_resolve_or_expected(root, f"distorted_images/{name}"),
                                 ref=_resolve_or_expected(root, f"reference_images/I{ref_i:02d}.BMP"),
                                 score=score,
                                 distortion=TID2013_TYPES[typ - 1] if typ <= len(TID2013_TYPES) else f"type{typ}",
                                 level=lvl, key=key))
    if order == "deepwsd":
        records.sort(key=lambda r: _parse_tid_name(Path(r.key).name)[1::-1] + (r.level,))
    return records, {"root": root, "order": order}


# ------------------------------------------------------------------------------------------------
# KADID-10k
# ------------------------------------------------------------------------------------------------

KADID_TYPES: tuple[str, ...] = (
    "gblur", "lens_blur", "motion_blur", "color_diffusion", "color_shift", "color_quantization",
    "color_saturation_hsv", "color_saturation_lab", "jp2k", "jpeg", "white_noise", "white_noise_color",
    "impulse_noise", "multiplicative_noise", "denoise", "brighten", "darken", "mean_shift", "jitter",
    "non_eccentricity_patch", "pixelate", "quantization", "color_block", "high_sharpen", "contrast_change")
_KADID_NAME = re.compile(r"^I(\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)
_KADID_LAYOUT = "KADID-10k: <root>/[kadid10k/]images/IXX_YY_ZZ.png + IXX.png, dmos.csv (dist_img,ref_img,dmos,var)"


def _load_kadid(root: Path, *, spec: DatasetSpec, order: str = "official",
                **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """KADID-10k (Lin, Hosu, Saupe, QoMEX 2019; database.mmsp-kn.de/kadid-10k-database.html).

    ``dmos.csv`` with header ``dist_img,ref_img,dmos,var``; images and references together in
    ``images/`` (``I01_01_01.png``, ``I01.png``). Despite its name the ``dmos`` column is a MOS on
    1-5 (higher = better). 10125 images: 81 references x 25 types x 5 levels.

    Options: ``order`` ``"official"`` (dmos.csv order) or ``"deepwsd"`` (type-major).
    """
    _no_extra_options(spec, options)
    _check_order(order)
    root = _step_into(root, ("kadid10k", "KADID-10k"), "dmos.csv")
    files = _require(spec.name, root, _KADID_LAYOUT, ["dmos.csv", "images"])
    records = []
    for row in csv.DictReader(_read_text(files["dmos.csv"]).splitlines()):
        name = row["dist_img"].strip()
        m = _KADID_NAME.match(name)
        typ, lvl = (int(m[2]), int(m[3])) if m else (0, None)
        records.append(IQARecord(dist=_resolve_or_expected(root, f"images/{name}"),
                                 ref=_resolve_or_expected(root, f"images/{row['ref_img'].strip()}"),
                                 score=float(row["dmos"]),
                                 distortion=KADID_TYPES[typ - 1] if 1 <= typ <= len(KADID_TYPES) else "unknown",
                                 level=lvl, key=f"images/{name}"))
    if order == "deepwsd":
        records.sort(key=lambda r: (KADID_TYPES.index(r.distortion) if r.distortion in KADID_TYPES else 99,
                                    r.ref.name if r.ref else "", r.level or 0))
    return records, {"root": root, "order": order}


# ------------------------------------------------------------------------------------------------
# PIPAL (NTIRE 2021 training set)
# ------------------------------------------------------------------------------------------------

_PIPAL_LAYOUT = ("PIPAL training set: <root>/Train_Ref/AXXXX.bmp, Train_Dis/AXXXX_TT_NN.bmp (or Distortion_1..4/), "
                 "Train_Label/AXXXX.txt ('AXXXX_TT_NN.bmp,<Elo>' per line)")


def _pipal_dis_dirs(root: Path) -> list[Path]:
    dirs = [p for p in (resolve_path(root, "Train_Dis"),) if p is not None]
    dirs += sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"distortion_\d+", p.name.lower()))
    return dirs


def _pipal_find(dirs: Sequence[Path], name: str) -> Path | None:
    for d in dirs:
        found = _child(d, name)
        if found is not None:
            return found
    return None


def _load_pipal(root: Path, *, spec: DatasetSpec, **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """PIPAL training set (Jinjin Gu et al., ECCV 2020; NTIRE 2021 perceptual IQA challenge).

    ``Train_Label/AXXXX.txt`` (200 files, read in name order) hold ``AXXXX_TT_NN.bmp,<Elo>``
    lines; distorted images in ``Train_Dis/`` (some copies split them into ``Distortion_1`` ...
    ``Distortion_4``, as the Waterloo list does: both are searched), references
    ``Train_Ref/AXXXX.bmp``. Scores are Elo ratings, higher = better. 23200 images.
    ``distortion`` is the ``TT`` field (distortion group), ``level`` None.
    """
    _no_extra_options(spec, options)
    root = _step_into(root, ("PIPAL", "pipal"), "Train_Label")
    files = _require(spec.name, root, _PIPAL_LAYOUT, ["Train_Label", "Train_Ref"])
    dis_dirs = _pipal_dis_dirs(root)
    if not dis_dirs:
        raise DatasetNotFoundError(spec.name, root, _PIPAL_LAYOUT, ["Train_Dis (or Distortion_1..4)"])
    label_files = sorted(p for p in files["Train_Label"].iterdir() if p.suffix.lower() == ".txt")
    if not label_files:
        raise DatasetNotFoundError(spec.name, root, _PIPAL_LAYOUT, ["Train_Label/*.txt"])
    records = []
    for label_file in label_files:
        for line in _read_text(label_file).splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 2 or not parts[0]:
                continue
            name = parts[0]
            stem = Path(name).stem.split("_")
            dist = _pipal_find(dis_dirs, name) or dis_dirs[0] / name
            records.append(IQARecord(dist=dist, ref=_resolve_or_expected(root, f"Train_Ref/{stem[0]}.bmp"),
                                     score=float(parts[1]), distortion=stem[1] if len(stem) > 1 else "unknown",
                                     level=None, key=f"Train_Dis/{name}"))
    return records, {"root": root}


# ------------------------------------------------------------------------------------------------
# LIVE Multiply Distorted
# ------------------------------------------------------------------------------------------------

LIVE_MD_PARTS: tuple[tuple[str, str], ...] = (("Part 1", "blurjpeg"), ("Part 2", "blurnoise"))
_LIVE_MD_LAYOUT = ("LIVE-MD: <root>/[LIVEmultidistortiondatabase/]Part 1/{Imagelists.mat,Scores.mat,blurjpeg/*.bmp}, "
                   "Part 2/{Imagelists.mat,Scores.mat,blurnoise/*.bmp}; references <ref>.bmp beside the "
                   "distorted images")


def _live_md_distortion(stem: str) -> str:
    kinds = [re.sub(r"\d+$", "", tok) for tok in stem.split("_")[1:]]
    return "+".join(kinds) if kinds else "reference"


def _live_md_part_dir(root: Path, part: str) -> Path | None:
    return resolve_path(root, part) or resolve_path(root, part.replace(" ", "_"))


def _load_live_md(root: Path, *, spec: DatasetSpec, **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """LIVE Multiply Distorted IQA database (Jayaraman et al., Asilomar 2012).

    Per part (``Part 1``: blur then JPEG, folder ``blurjpeg``; ``Part 2``: blur then noise,
    folder ``blurnoise``) ``Imagelists.mat`` (``distimgs``: cell of file names) and
    ``Scores.mat`` (``DMOSscores``, same order). The reference of ``<ref>_blur1_jpeg2.bmp`` is
    ``<ref>.bmp`` in the same folder (``Ref_Images/`` at the root is searched too). Scores are
    DMOS, lower = better; 225 images per part, 450 in all. ``distortion`` is the combination
    (``blur``, ``jpeg``, ``blur+jpeg``, ``noise``, ``blur+noise``), ``level`` None.
    """
    _no_extra_options(spec, options)
    root = _step_into(root, ("LIVEmultidistortiondatabase", "To_Release"), "Part 1")
    if _live_md_part_dir(root, "Part 1") is None:
        root = _step_into(root, ("LIVEmultidistortiondatabase", "To_Release"), "Part_1")
    records: list[IQARecord] = []
    missing: list[str] = []
    parts = []
    for part, sub in LIVE_MD_PARTS:
        pdir = _live_md_part_dir(root, part)
        need = [f"{part}/Imagelists.mat", f"{part}/Scores.mat", f"{part}/{sub}"]
        if pdir is None:
            missing += need
            continue
        missing += [n for n in need if resolve_path(pdir, n.split("/", 1)[1]) is None]
        parts.append((part, sub, pdir))
    if missing:
        raise DatasetNotFoundError(spec.name, root, _LIVE_MD_LAYOUT, missing)
    for part, sub, pdir in parts:
        names = _mat_strings(_loadmat(resolve_path(pdir, "Imagelists.mat"))["distimgs"])  # type: ignore[arg-type]
        scores = _mat_vector(_loadmat(resolve_path(pdir, "Scores.mat"))["DMOSscores"])  # type: ignore[arg-type]
        if len(names) != scores.size:
            raise ValueError(f"LIVE-MD {part}: {len(names)} names in Imagelists.mat but {scores.size} DMOS values")
        sub_dir = resolve_path(pdir, sub) or pdir / sub
        for name, score in zip(names, scores, strict=True):
            stem = Path(name).stem
            ref_name = f"{stem.split('_')[0]}.bmp"
            ref = _child(sub_dir, ref_name) or resolve_path(root, f"Ref_Images/{ref_name}") or sub_dir / ref_name
            records.append(IQARecord(dist=_child(sub_dir, name) or sub_dir / name, ref=ref, score=float(score),
                                     distortion=_live_md_distortion(stem), level=None, key=f"{part}/{sub}/{name}"))
    return records, {"root": root}


# ------------------------------------------------------------------------------------------------
# IVC
# ------------------------------------------------------------------------------------------------

_IVC_LABELS = ("ivc_mos.txt", "mos_with_names.txt", "mos.txt", "ivc_mos.csv", "mos.csv")
_IVC_NAME = re.compile(r"^([a-z]+)_([a-z0-9_]+?)_([rf])(\d+)\.bmp$", re.IGNORECASE)
_IVC_LAYOUT = ("IVC (IRCCyN): flat <root>/<ref>_<type>_<r|f><lvl>.bmp (blur stored as <ref>_flou_f<lvl>.bmp), "
               "<ref>.bmp, and a MOS text file (" + " / ".join(_IVC_LABELS) + ", or labels=...) with one "
               "'<name> <MOS>' pair per line")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _ivc_pairs(path: Path) -> list[tuple[str, float]]:
    """(image name, MOS) from each line holding a ``*.bmp`` token and a number.

    The MOS is the first number after the name (``name mos [std]``, ``index name mos``), else the
    last number before it (``mos name``).
    """
    pairs = []
    for line in _read_text(path).splitlines():
        tokens = [t for t in re.split(r"[\s,;]+", line.strip()) if t]
        at = next((i for i, t in enumerate(tokens) if t.lower().endswith(".bmp")), None)
        if at is None:
            continue
        after = [t for t in tokens[at + 1:] if _NUMBER.match(t)]
        before = [t for t in tokens[:at] if _NUMBER.match(t)]
        if after or before:
            pairs.append((tokens[at], float(after[0] if after else before[-1])))
    return pairs


def _ivc_on_disk(root: Path, name: str) -> Path | None:
    """The file for a MOS-file name; the MOS file says ``X_blur_rN``, the disk ``X_flou_fN``."""
    found = _child(root, name)
    if found is None:
        m = _IVC_NAME.match(name)
        if m and m[2].lower() == "blur":
            found = _child(root, f"{m[1]}_flou_f{m[4]}.bmp")
    return found


def _load_ivc(root: Path, *, spec: DatasetSpec, labels: str | None = None,
              **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """IRCCyN/IVC image quality database (Le Callet & Autrusseau 2005).

    All images in one folder: ``<ref>_<type>_r<lvl>.bmp`` (types ``j2000``, ``jpeg``,
    ``jpeg_lumichr``, ``lar``; blur images are stored as ``<ref>_flou_f<lvl>.bmp``) and the ten
    references ``<ref>.bmp`` (inferred from the name prefix). MOS 1-5, higher = better, from a MOS
    text file (``labels`` or the first of ``ivc_mos.txt``, ``mos_with_names.txt``, ``mos.txt``,
    ``ivc_mos.csv``, ``mos.csv`` found) whose lines each hold an image name and its MOS; the blur
    images may be named ``<ref>_blur_r<lvl>.bmp`` there. Record order = MOS file order; the
    distortion ``flou`` is reported as ``blur``.
    """
    _no_extra_options(spec, options)
    root = _step_into(root, ("IVC_SubQualityDB", "ivcdb", "IVC"), "avion.bmp")
    if labels is not None:
        label_path: Path | None = Path(labels) if Path(labels).is_file() else None
    else:
        label_path = next((p for p in (resolve_path(root, n) for n in _IVC_LABELS) if p is not None), None)
    if label_path is None:
        raise DatasetNotFoundError(spec.name, root, _IVC_LAYOUT, [labels or " or ".join(_IVC_LABELS)])
    records = []
    for name, mos in _ivc_pairs(label_path):
        m = _IVC_NAME.match(name)
        if m is None:
            raise ValueError(f"IVC: unexpected image name {name!r} in {label_path}")
        dist = _ivc_on_disk(root, name)
        typ = "blur" if m[2].lower() in ("blur", "flou") else m[2].lower()
        records.append(IQARecord(dist=dist or root / name, ref=_resolve_or_expected(root, f"{m[1]}.bmp"),
                                 score=mos, distortion=typ, level=int(m[4]),
                                 key=dist.name if dist is not None else name))
    return records, {"root": root, "labels": str(label_path)}


# ------------------------------------------------------------------------------------------------
# QADS (super-resolution)
# ------------------------------------------------------------------------------------------------

_QADS_LAYOUT = ("QADS: <root>/super-resolved_images/<ref>_<scale>_<method>.bmp, source_images/<ref>.bmp, "
                "mos_with_names.txt ('<MOS>  <name>' per line)")


def _load_qads(root: Path, *, spec: DatasetSpec, **options: Any) -> tuple[list[IQARecord], dict[str, Any]]:
    """QADS, quality assessment database for super-resolved images (Zhou et al., TIP 2019).

    ``mos_with_names.txt``: ``<MOS>  <name>`` per line (980 images: 20 sources x 3 scale factors
    x SR methods), MOS in [0, 1], higher = better. ``super-resolved_images/<ref>_<s>_<k>.bmp`` with
    ``s`` the scale factor (``level``) and ``k`` the SR method index (``distortion`` = ``sr<k>``);
    sources ``source_images/<ref>.bmp``.
    """
    _no_extra_options(spec, options)
    root = _step_into(root, ("QADS",), "mos_with_names.txt")
    files = _require(spec.name, root, _QADS_LAYOUT, ["mos_with_names.txt", "super-resolved_images", "source_images"])
    records = []
    for score, name in _score_name_lines(files["mos_with_names.txt"]):
        fields = Path(name).stem.split("_")
        level = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        method = f"sr{fields[2]}" if len(fields) > 2 else "sr"
        records.append(IQARecord(dist=_resolve_or_expected(root, f"super-resolved_images/{name}"),
                                 ref=_resolve_or_expected(root, f"source_images/{fields[0]}.bmp"),
                                 score=score, distortion=method, level=level,
                                 key=f"super-resolved_images/{name}"))
    return records, {"root": root}


# ------------------------------------------------------------------------------------------------
# Waterloo unified label files
# ------------------------------------------------------------------------------------------------

# name -> (score kind, higher is better, rows). Directions of LIVE, CSIQ, TID2008/2013, KADID-10k,
# PIPAL, LIVE_MD, A57 and Toyama are as documented in ../shared/data/iqa_labels_waterloo/SOURCE.txt;
# the others are inferred from the scores' trend with the distortion level.
WATERLOO_DATASETS: dict[str, tuple[str, bool, int]] = {
    "A57": ("DMOS", False, 54), "CIDIQ_MOS100": ("MOS", True, 690), "CIDIQ_MOS50": ("MOS", True, 690),
    "CSIQ": ("DMOS", False, 866), "KADID-10k": ("MOS", True, 10125), "LIVE": ("DMOS", False, 779),
    "LIVE_MD": ("DMOS", False, 450), "MDID2013": ("DMOS", False, 324), "MDID2016": ("MOS", True, 1600),
    "MDIVL": ("MOS", True, 750), "PDAP-HDDS": ("MOS", True, 12000), "PIPAL": ("Elo", True, 23200),
    "SDIVL": ("MOS", True, 380), "TID2008": ("MOS", True, 1700), "TID2013": ("MOS", True, 3000),
    "Toyama": ("MOS", True, 196), "VCLFER": ("MOS", True, 552),
}
_WATERLOO_LAYOUT = ("Waterloo unified labels (github.com/icbcbicc/IQA-Dataset): <label dir>/<NAME>.csv with header "
                    "dis_img_path,dis_type,ref_img_path,score; paths start with <NAME>/ and are resolved under the "
                    "root (or under its parent)")


def _waterloo_name(name: str) -> str | None:
    key = _norm(name)
    return next((n for n in WATERLOO_DATASETS if _norm(n) == key), None)


def _waterloo_label_dirs(root: Path | None) -> list[Path]:
    dirs = []
    if os.environ.get("IQA_WATERLOO_LABELS"):
        dirs.append(Path(os.environ["IQA_WATERLOO_LABELS"]))
    if root is not None:
        dirs += [root, root / "iqa_labels_waterloo", root.parent / "iqa_labels_waterloo"]
    dirs.append(default_root("iqa_labels_waterloo"))
    shared = Path(os.environ.get("IQA_SHARED_DIR", _REPO_ROOT.parent / "shared"))
    dirs.append(shared / "data" / "iqa_labels_waterloo")
    return dirs


def _waterloo_label_file(name: str, root: Path | None, label_file: str | None) -> Path:
    if label_file is not None:
        return Path(label_file)
    for d in _waterloo_label_dirs(root):
        for fname in (f"{name}.csv", f"{name}.txt"):
            found = resolve_path(d, fname)
            if found is not None and found.is_file():
                return found
    return _waterloo_label_dirs(root)[0] / f"{name}.csv"


def _strip_first(path: str) -> tuple[str, str]:
    head, _, tail = path.replace("\\", "/").partition("/")
    return head, tail


def _waterloo_base(root: Path, rows: list[dict[str, str]]) -> Path:
    """The folder the label paths (minus their ``<NAME>/`` prefix) hang from: root or root/<NAME>."""
    if rows:
        head, tail = _strip_first(rows[0]["dis_img_path"].strip())
        nested = resolve_path(root, head)
        if resolve_path(root, tail) is None and nested is not None and resolve_path(nested, tail) is not None:
            return nested
    return root


def _load_waterloo(name: str, root: str | os.PathLike | None, *, check_files: bool = True,
                   spec: DatasetSpec | None = None, label_file: str | None = None, **options: Any) -> Dataset:
    """Any of the 17 databases from its Waterloo label file ``<NAME>.csv``.

    The label file is ``label_file`` if given, else the first ``<NAME>.csv`` found in
    ``$IQA_WATERLOO_LABELS``, the root, ``<root>/../iqa_labels_waterloo``,
    ``<data folder>/iqa_labels_waterloo`` and ``../shared/data/iqa_labels_waterloo``. Its paths
    (``TID2013/distorted_images/i01_01_1.bmp``) lose their first component and are resolved
    case-insensitively under the root (default: the official loader's data folder, else
    ``<data folder>/<NAME>``), or under ``<root>/<NAME>`` if the root is the folder above.
    ``key`` is the path without the ``<NAME>/`` prefix.
    """
    if options:
        raise TypeError(f"{name} (waterloo): unknown option(s) {', '.join(sorted(options))}")
    kind, higher, count = WATERLOO_DATASETS[name]
    if root is not None:
        root_path = Path(root)
    else:
        root_path = _default_dataset_root(spec.dirnames if spec else (name,))
    label_path = _waterloo_label_file(name, root_path, label_file)
    if not label_path.is_file():
        raise DatasetNotFoundError(name, root_path, _WATERLOO_LAYOUT, [str(label_path)])
    if not root_path.is_dir():
        raise DatasetNotFoundError(name, root_path, _WATERLOO_LAYOUT, [f"{root_path}/ (the folder itself)"])
    rows = list(csv.DictReader(_read_text(label_path).splitlines()))
    base = _waterloo_base(root_path, rows)
    records = []
    for row in rows:
        key = _strip_first(row["dis_img_path"].strip())[1]
        ref_rel = _strip_first(row["ref_img_path"].strip())[1] if row.get("ref_img_path") else ""
        dtype = row["dis_type"].strip()
        records.append(IQARecord(dist=_resolve_or_expected(base, key),
                                 ref=_resolve_or_expected(base, ref_rel) if ref_rel else None,
                                 score=float(row["score"]), distortion=dtype, level=None, key=key,
                                 is_reference_copy=dtype.lower() == "reference"))
    dataset = Dataset(name=spec.name if spec else name, root=base, records=records, score_kind=kind,
                      score_higher_is_better=higher, expected_count=count, source="waterloo",
                      options={"label_file": str(label_path)})
    if check_files:
        _check_files(dataset, _WATERLOO_LAYOUT)
    return dataset


# ------------------------------------------------------------------------------------------------
# Registry entries
# ------------------------------------------------------------------------------------------------

for _spec in (
    DatasetSpec("LIVE", ("LIVE", "databaserelease2", "live_release2"), _LIVE_LAYOUT, "DMOS", False, 779, _load_live,
                aliases=("live2", "liverelease2", "liveiqa"), waterloo_name="LIVE",
                citation="H.R. Sheikh, M.F. Sabir, A.C. Bovik, IEEE TIP 15(11), 2006"),
    DatasetSpec("CSIQ", ("CSIQ",), _CSIQ_LAYOUT, "DMOS", False, 866, _load_csiq, waterloo_name="CSIQ",
                citation="E.C. Larson, D.M. Chandler, J. Electronic Imaging 19(1), 2010"),
    DatasetSpec("TID2013", ("TID2013", "tid2013"), _TID_LAYOUT, "MOS", True, 3000, _load_tid2013, aliases=("tid",),
                waterloo_name="TID2013", citation="N. Ponomarenko et al., Signal Process. Image Commun. 30, 2015"),
    DatasetSpec("KADID-10k", ("KADID-10k", "kadid10k"), _KADID_LAYOUT, "MOS", True, 10125, _load_kadid,
                aliases=("kadid",), waterloo_name="KADID-10k", citation="H. Lin, V. Hosu, D. Saupe, QoMEX 2019"),
    DatasetSpec("PIPAL", ("PIPAL",), _PIPAL_LAYOUT, "Elo", True, 23200, _load_pipal, aliases=("pipal_train",),
                waterloo_name="PIPAL", citation="J. Gu et al., ECCV 2020"),
    DatasetSpec("LIVE-MD", ("LIVE-MD", "LIVEmultidistortiondatabase", "LIVE_MD"), _LIVE_MD_LAYOUT, "DMOS", False,
                450, _load_live_md, aliases=("livemd", "live_multidist", "livemultidistort"), waterloo_name="LIVE_MD",
                citation="D. Jayaraman, A. Mittal, A.K. Moorthy, A.C. Bovik, Asilomar 2012"),
    DatasetSpec("IVC", ("IVC", "IVC_SubQualityDB"), _IVC_LAYOUT, "MOS", True, 185, _load_ivc,
                aliases=("irccyn_ivc",), citation="P. Le Callet, F. Autrusseau, IRCCyN/IVC database, 2005"),
    DatasetSpec("QADS", ("QADS",), _QADS_LAYOUT, "MOS", True, 980, _load_qads,
                citation="F. Zhou, R. Yao, B. Liu, G. Qiu, IEEE TIP 28(8), 2019"),
):
    _register(_spec)
del _spec
