"""Record keys of the official-layout loaders against the authors' published per-image tables.

``experiments/verify_published.py`` joins per-image scores to ``data/published/deepwsd_tip2024.csv.gz``
(DeepWSD, TIP 2024) and ``zs_iqa_icassp2025.csv.gz`` (ZS-IQA, ICASSP 2025) by ``IQARecord.key == dist_image``.
For every dataset with a loader and published rows, this module writes a tree in the official layout whose
images are exactly the files the tables name (``dist_image``, ``ref_image``: one tiny 8x8 image of the right
format copied to every path, all rows of the tables), with label files in the official formats written from
the published names and labels. It loads the tree with the options that match each table and checks the keys
(as a sequence where the label file or a loader option fixes the order, else as a set), that each key names
the file found, the reference paths relative to the root (where ``ref_image`` is given) and the scores (read
back exactly as written, which checks the label parsing).

Per dataset, rows and loader options:

* LIVE: DeepWSD 982 = 779 distorted + 203 reference copies (``dmos="original", include_references=True,
  order="deepwsd"``; ``dmos.mat`` holds its DMOS and copy flags) and ZS-IQA 779 (defaults: realigned
  ``dmos_realigned.mat``, written from its ``mos``, in the official dmos.mat order). The tables name no
  reference for the copies; ``refnames_all.mat`` gives them the first reference (not checked).
* CSIQ: DeepWSD 750 (``include_contrast=False``). ``csiq_dmos.csv`` also holds 120 placeholder contrast rows
  (30 references x levels 1-4, with images; not the real 116, which no table lists) that the option drops.
* TID2013: DeepWSD and ZS-IQA, 3000 each. ``mos_with_names.txt`` in the official reference-major order, names
  spelled as the label source (``src_label``, mixed case; the same names on disk), MOS of the DeepWSD table.
  DeepWSD: ``order="deepwsd"`` (type-major); ZS-IQA: official order, its ``mos`` is 100 - MOS.
* KADID-10k: DeepWSD 10125; ``dmos.csv`` in the official reference-major order, ``order="deepwsd"``
  (type-major); ``var`` is a placeholder.
* PIPAL: DeepWSD and ZS-IQA, 23200 each; ``Train_Label/AXXXX.txt`` lines in name order (the DeepWSD order).
  The ZS-IQA rows are in another order: compared as a set, scores and references per key.
* IVC: DeepWSD 185; the MOS file uses the label names (``X_blur_rN.bmp``), the disk the ``dist_image`` names
  (``X_flou_fN.bmp``).
* LIVE-MD: DeepWSD 450 under ``LIVEmultidistortiondatabase/``; ``Scores.mat`` holds the published score as a
  stand-in (Buka-Xing's MOS-like values, not the database's DMOS), so there the score check is of parsing only.

Not covered: QADS has a loader but no published rows. SCID (1800 DeepWSD rows) and DLF (336) have no loader,
and the tables cannot tell their layouts: SCID's ``DistortedSCIs/SCIxx_t_l.bmp`` / ``ReferenceSCIs/`` paths are
those of third-party loaders, not checked against a copy of the database, and its rows carry no scores from
which to write a label file; DLF's ``dist_image`` is a light-field sequence id (``Room_DQ_Skip1``), not a file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fixtures_datasets import (
    write_csiq_labels,
    write_images,
    write_ivc_labels,
    write_kadid_labels,
    write_live_labels,
    write_live_md_labels,
    write_pipal_labels,
    write_score_name_lines,
)

from iqa_core.datasets import Dataset, list_datasets, load_dataset
from iqa_core.published import DDM_TABLE, PUBLISHED_DIR, TABLE_FILES, ZS_TABLE, read_published

Rows = dict[str, pd.DataFrame]  # table -> the dataset's rows of that table, in published order

NO_LOADER = ("SCID", "DLF")
# LIVE Release 2: folders of dmos.mat / refnames_all.mat in their official order, with their entry counts
LIVE_OFFICIAL = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
CSIQ_CONTRAST_LEVELS = (1, 2, 3, 4)


# ------------------------------------------------------------------------------------------------
# trees in the official layouts, named by the published tables
# ------------------------------------------------------------------------------------------------

def _numbers(name: str) -> tuple[int, ...]:
    """``i01_11_2.bmp`` -> (1, 11, 2): the official (reference, type, level) order of TID2013 and KADID-10k."""
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _basename(paths: pd.Series) -> list[str]:
    return paths.str.rsplit("/", n=1).str[-1].tolist()


def _images(rows: Rows) -> list[str]:
    """Every distorted and reference image the dataset's tables name."""
    frames = list(rows.values())
    return list(dict.fromkeys(p for f in frames for col in ("dist_image", "ref_image") for p in f[col].dropna()))


def _live_tree(root: Path, rows: Rows) -> Path:
    base = root / "databaserelease2"
    entries = rows[DDM_TABLE].set_index("dist_image").reindex(
        [f"{folder}/img{n}.bmp" for folder, count in LIVE_OFFICIAL for n in range(1, count + 1)])
    realigned = rows[ZS_TABLE].set_index("dist_image").mos.reindex(entries.index)
    refnames = entries.ref_image.fillna(sorted(entries.ref_image.dropna())[0]).str.removeprefix("refimgs/")
    write_live_labels(base, dmos=entries.mos.tolist(), dmos_new=realigned.fillna(0.0).tolist(),
                      orgs=entries.is_reference_copy.tolist(), refnames=refnames.tolist())
    write_images(base, _images(rows))
    return root


def _csiq_label_row(dist_image: str, dmos: float) -> tuple[str, str, int, float]:
    _, folder, name = dist_image.split("/")  # dst_imgs/<folder>/<ref>.<TOKEN>.<lvl>.png
    ref, _, lvl = name.removesuffix(".png").rsplit(".", 2)
    return ref, folder, int(lvl), dmos


def _csiq_contrast(refs: Sequence[str]) -> list[tuple[str, str, int, float]]:
    return [(ref, "contrast", lvl, 0.1 * lvl) for ref in refs for lvl in CSIQ_CONTRAST_LEVELS]


def _csiq_tree(root: Path, rows: Rows) -> Path:
    ddm = rows[DDM_TABLE]
    labels = [_csiq_label_row(k, m) for k, m in zip(ddm.dist_image, ddm.mos, strict=True)]
    contrast = _csiq_contrast(sorted({row[0] for row in labels}))
    at = next(i for i, row in enumerate(labels) if row[1] > "contrast")  # type blocks are in folder order
    write_csiq_labels(root / "csiq_dmos.csv", labels[:at] + contrast + labels[at:])
    write_images(root, _images(rows) + [f"dst_imgs/contrast/{r}.contrast.{lvl}.png" for r, _, lvl, _ in contrast])
    return root


def _tid2013_tree(root: Path, rows: Rows) -> Path:
    ddm = rows[DDM_TABLE]
    pairs = sorted(zip(ddm.mos, ddm.src_label, strict=True), key=lambda p: _numbers(p[1]))
    write_score_name_lines(root / "mos_with_names.txt", pairs)
    write_images(root, [f"distorted_images/{name}" for _, name in pairs] + ddm.ref_image.unique().tolist())
    return root


def _kadid_tree(root: Path, rows: Rows) -> Path:
    base = root / "kadid10k"
    ddm = rows[DDM_TABLE]
    labels = zip(_basename(ddm.dist_image), _basename(ddm.ref_image), ddm.mos, strict=True)
    write_kadid_labels(base / "dmos.csv", [(d, r, m, 0.0) for d, r, m in sorted(labels, key=lambda t: _numbers(t[0]))])
    write_images(base, _images(rows))
    return root


def _pipal_tree(root: Path, rows: Rows) -> Path:
    ddm = rows[DDM_TABLE]
    labels = pd.DataFrame({"name": _basename(ddm.dist_image), "elo": ddm.mos})
    for ref, group in labels.groupby(labels.name.str.split("_").str[0]):
        write_pipal_labels(root / "Train_Label" / f"{ref}.txt", sorted(zip(group.name, group.elo, strict=True)))
    write_images(root, _images(rows))
    return root


def _ivc_tree(root: Path, rows: Rows) -> Path:
    ddm = rows[DDM_TABLE]
    write_ivc_labels(root / "ivc_mos.txt", zip(ddm.src_label, ddm.mos, strict=True))
    write_images(root, _images(rows))
    return root


def _live_md_tree(root: Path, rows: Rows) -> Path:
    base = root / "LIVEmultidistortiondatabase"
    ddm = rows[DDM_TABLE]
    folders = ddm.dist_image.str.rsplit("/", n=1).str[0]  # Part k/<sub>
    for folder, group in ddm.groupby(folders, sort=False):
        write_live_md_labels(base / folder.split("/")[0], _basename(group.dist_image), group.mos.tolist())
    write_images(base, _images(rows))
    return root


BUILDERS: dict[str, Callable[[Path, Rows], Path]] = {
    "LIVE": _live_tree, "CSIQ": _csiq_tree, "TID2013": _tid2013_tree, "KADID-10k": _kadid_tree,
    "PIPAL": _pipal_tree, "IVC": _ivc_tree, "LIVE-MD": _live_md_tree,
}

# (dataset, table, loader options, keys in published order?, score column)
CASES: list[tuple[str, str, dict[str, Any], bool, str]] = [
    ("LIVE", DDM_TABLE, {"dmos": "original", "include_references": True, "order": "deepwsd"}, True, "mos"),
    ("LIVE", ZS_TABLE, {}, True, "mos"),
    ("CSIQ", DDM_TABLE, {"include_contrast": False}, True, "mos"),
    ("TID2013", DDM_TABLE, {"order": "deepwsd"}, True, "mos"),
    ("TID2013", ZS_TABLE, {}, True, "mos_official"),
    ("KADID-10k", DDM_TABLE, {"order": "deepwsd"}, True, "mos"),
    ("PIPAL", DDM_TABLE, {}, True, "mos"),
    ("PIPAL", ZS_TABLE, {}, False, "mos"),
    ("IVC", DDM_TABLE, {}, True, "mos"),
    ("LIVE-MD", DDM_TABLE, {}, True, "mos"),
]


@pytest.fixture(scope="module")
def published() -> dict[str, Rows]:
    """table -> dataset -> its rows in published order."""
    out: dict[str, Rows] = {}
    for table, fname in TABLE_FILES.items():
        frame = read_published(PUBLISHED_DIR / fname)
        out[table] = {name: rows.reset_index(drop=True) for name, rows in frame.groupby("dataset", sort=False)}
    return out


@pytest.fixture(scope="module")
def tree(published, tmp_path_factory) -> Callable[[str], Path]:
    """``tree(name)``: the dataset's tree, written once per module on first use."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            rows = {table: frames[name] for table, frames in published.items() if name in frames}
            built[name] = BUILDERS[name](tmp_path_factory.mktemp(name), rows)
        return built[name]

    return get


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------

def _relative(path: Path | None, root: Path) -> str | None:
    return None if path is None else path.relative_to(root).as_posix()


def _assert_same_keys(loaded: list[str], published: list[str], ordered: bool) -> None:
    """Same set, count and (if ordered) sequence; compact messages, as there are up to 23200 keys."""
    missing = sorted(set(published) - set(loaded))
    extra = sorted(set(loaded) - set(published))
    assert not missing and not extra, (f"published, not loaded ({len(missing)}): {missing[:4]}; "
                                       f"loaded, not published ({len(extra)}): {extra[:4]}")
    assert len(loaded) == len(set(loaded)) == len(published)
    if ordered:
        at = next((i for i, (a, b) in enumerate(zip(loaded, published, strict=True)) if a != b), None)
        assert at is None, f"order differs first at {at}: loaded {loaded[at]!r}, published {published[at]!r}"


def _assert_references(ds: Dataset, rows: pd.DataFrame) -> None:
    loaded = {r.key: _relative(r.ref, ds.root) for r in ds}
    given = rows[rows.ref_image.notna()]
    wrong = [(k, loaded[k], ref) for k, ref in zip(given.dist_image, given.ref_image, strict=True) if loaded[k] != ref]
    assert not wrong, f"{len(wrong)} references differ (key, loaded, published): {wrong[:4]}"


def _load(tree: Callable[[str], Path], name: str, **options: Any) -> Dataset:
    return load_dataset(name, root=tree(name), **options)


def test_every_dataset_with_a_loader_and_published_rows_is_covered(published):
    in_tables = {name for frames in published.values() for name in frames}
    assert in_tables & set(list_datasets()) == set(BUILDERS)
    assert in_tables - set(list_datasets()) == set(NO_LOADER)
    pairs = {(name, table) for table, frames in published.items() for name in frames if name in BUILDERS}
    assert pairs == {(name, table) for name, table, *_ in CASES}


@pytest.mark.parametrize(("name", "table", "options", "ordered", "score_column"), CASES,
                         ids=[f"{c[0]}-{'deepwsd' if c[1] == DDM_TABLE else 'zs'}" for c in CASES])
def test_keys_references_and_scores_are_the_published_ones(tree, published, name, table, options, ordered,
                                                           score_column):
    rows = published[table][name]
    ds = _load(tree, name, **options)  # check_files=True (default): every distorted and reference file exists
    _assert_same_keys([r.key for r in ds], rows.dist_image.tolist(), ordered)
    assert all(_relative(r.dist, ds.root).lower() == r.key.lower() for r in ds)  # the key names the file found
    _assert_references(ds, rows)
    by_key = {r.key: r for r in ds}
    np.testing.assert_array_equal([by_key[k].score for k in rows.dist_image], rows[score_column].to_numpy(float))


def test_live_reference_copies_are_the_published_ones(tree, published):
    rows = published[DDM_TABLE]["LIVE"]
    ds = _load(tree, "LIVE", dmos="original", include_references=True, order="deepwsd")
    assert [r.is_reference_copy for r in ds] == (rows.is_reference_copy == 1).tolist()
    assert sum(r.is_reference_copy for r in ds) == 203 and len(ds) == 982 and ds.complete


def test_csiq_contrast_rows_are_what_include_contrast_false_drops(tree, published):
    ds = _load(tree, "CSIQ")
    contrast = [r for r in ds if r.distortion == "contrast"]
    assert len(ds) == 750 + len(contrast) and len(contrast) == 30 * len(CSIQ_CONTRAST_LEVELS)
    assert [r.key for r in ds if r.distortion != "contrast"] == published[DDM_TABLE]["CSIQ"].dist_image.tolist()


def test_tid2013_zs_mos_is_100_minus_the_loaded_mos(tree, published):
    rows = published[ZS_TABLE]["TID2013"]
    ds = _load(tree, "TID2013")
    np.testing.assert_allclose(100.0 - ds.scores, rows.mos.to_numpy(float), rtol=0, atol=1e-9)
    assert [r.dist.name for r in ds] == rows.src_dis.tolist()  # mixed-case files, lower-case keys

