"""Small synthetic dataset trees in the official on-disk layouts, for tests.

``make_fixture(name, root)`` writes a miniature copy of dataset ``name`` (a name of
``iqa_core.datasets.list_datasets()``) under ``root`` and returns the folder to pass to
``load_dataset(name, root=...)``. Images are tiny random RGB pictures (``size`` x ``size``); each
distorted image is its reference plus Gaussian noise that grows with the distortion level, and
its score follows the level in the dataset's direction (DMOS up, MOS/Elo down), so a full-reference
metric correlates with the labels in the expected sense.

The label files use the formats of the official distributions (``.mat`` files written with
``scipy.io.savemat``; TID2013 names in mixed case on disk and in the label file). ``FIXTURE_COUNTS``
gives the number of records each fixture yields with default loader options. Only LIVE has the
full official size (its label files fix the 982-entry order); the others are a few dozen images.

The ``write_*_labels`` functions write one label file (or set of files) in a dataset's official format from
given names and scores (floats in shortest round-trip form, so they read back exactly), and
``write_images`` fills a tree with one tiny image copied to many paths; the makers here and
``tests/test_published_keys.py`` (trees named by the published tables) share them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

__all__ = ["make_fixture", "make_waterloo_fixture", "FIXTURE_COUNTS", "FIXTURE_MAKERS", "write_images",
           "write_live_labels", "write_csiq_labels", "write_score_name_lines", "write_kadid_labels",
           "write_pipal_labels", "write_live_md_labels", "write_ivc_labels"]

# records with default options; LIVE: 779 (982 with include_references=True); CSIQ: 60 (50 without contrast)
FIXTURE_COUNTS: dict[str, int] = {"LIVE": 779, "CSIQ": 60, "TID2013": 30, "KADID-10k": 30, "PIPAL": 12,
                                  "LIVE-MD": 20, "IVC": 10, "QADS": 12}

# LIVE: number of reference copies per folder (official: 779 distorted + 203 copies)
LIVE_REFERENCE_COPIES = {"jp2k": 58, "jpeg": 58, "wn": 29, "gblur": 29, "fastfading": 29}
LIVE_REFS = ("bikes.bmp", "buildings.bmp", "caps.bmp")


class _Painter:
    """Deterministic tiny images: references by name, distorted = reference + noise(level)."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.refs: dict[str, np.ndarray] = {}

    def ref(self, key: str) -> np.ndarray:
        if key not in self.refs:
            self.refs[key] = self.rng.integers(40, 216, size=(self.size, self.size, 3), dtype=np.uint8)
        return self.refs[key]

    def dist(self, key: str, severity: float) -> np.ndarray:
        noise = self.rng.normal(0.0, 4.0 + 12.0 * severity, size=(self.size, self.size, 3))
        return np.clip(self.ref(key).astype(np.float64) + noise, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".bmp": "BMP", ".png": "PNG"}[path.suffix.lower()]
    Image.fromarray(array).save(path, format=fmt)


@lru_cache(maxsize=8)
def _image_bytes(suffix: str, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format={".bmp": "BMP", ".png": "PNG"}[suffix])
    return buffer.getvalue()


def write_images(root: Path, relpaths: Iterable[str], size: int = 8) -> None:
    """A grey ``size`` x ``size`` image at each ``root/<relpath>``, BMP or PNG by the extension (any case).

    The image is encoded once per format and its bytes copied, so tens of thousands of files take a second.
    """
    made: set[Path] = set()
    for rel in relpaths:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(_image_bytes(path.suffix.lower(), size))


def _score(severity: float, higher_is_better: bool, lo: float, hi: float) -> float:
    """A score at ``severity`` in [0, 1]: DMOS grows from lo to hi, MOS falls from hi to lo."""
    value = lo + (hi - lo) * severity
    return round(hi + lo - value if higher_is_better else value, 5)


# ------------------------------------------------------------------------------------------------

def _make_live(root: Path, size: int) -> Path:
    """LIVE Release 2 under ``root/databaserelease2`` (982 entries, 203 reference copies)."""
    base = root / "databaserelease2"
    paint = _Painter(size, seed=1)
    for ref in LIVE_REFS:
        _save(paint.ref(ref), base / "refimgs" / ref)
    dmos, orgs, refnames = [], [], []
    for folder, count in (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174)):
        copies = set(np.linspace(1, count, LIVE_REFERENCE_COPIES[folder]).round().astype(int).tolist())
        info = []
        for i in range(1, count + 1):
            ref = LIVE_REFS[i % len(LIVE_REFS)]
            is_org = i in copies
            severity = ((i * 7) % 10) / 9.0
            image = paint.ref(ref) if is_org else paint.dist(ref, severity)
            _save(image, base / folder / f"img{i}.bmp")
            dmos.append(0.0 if is_org else _score(severity, False, 10.0, 90.0))
            orgs.append(1.0 if is_org else 0.0)
            refnames.append(ref)
            info.append(f"{ref} img{i}.bmp {severity:.3f}")
        (base / folder / "info.txt").write_text("\n".join(info) + "\n")
    realigned = np.where(np.array(orgs) == 1, 0.0, np.array(dmos) * 0.9 + 5.0)
    write_live_labels(base, dmos, realigned, orgs, refnames)
    return root


def write_live_labels(base: Path, dmos: Sequence[float], dmos_new: Sequence[float], orgs: Sequence[float],
                      refnames: Sequence[str]) -> None:
    """LIVE Release 2 ``dmos.mat`` (dmos, orgs), ``dmos_realigned.mat`` (dmos_new, dmos_std, orgs) and
    ``refnames_all.mat`` (refnames_all), each 1 x N in the official entry order."""
    base.mkdir(parents=True, exist_ok=True)
    dmos_arr = np.array([dmos], dtype=np.float64)
    realigned = np.array([dmos_new], dtype=np.float64)
    orgs_arr = np.array([orgs], dtype=np.float64)
    scipy.io.savemat(base / "dmos.mat", {"dmos": dmos_arr, "orgs": orgs_arr})
    scipy.io.savemat(base / "dmos_realigned.mat",
                     {"dmos_new": realigned, "dmos_std": np.full_like(realigned, 10.0), "orgs": orgs_arr})
    scipy.io.savemat(base / "refnames_all.mat", {"refnames_all": np.array([list(refnames)], dtype=object)})


CSIQ_XLSX_TYPES = {"awgn": ("noise", "AWGN"), "jpeg": ("jpeg", "JPEG"), "jpeg2000": ("jpeg 2000", "jpeg2000"),
                   "fnoise": ("f noise", "fnoise"), "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}


def _make_csiq(root: Path, size: int, label_format: str = "csv") -> Path:
    """CSIQ: 2 references x 6 types x 5 levels, labels as csiq_dmos.csv (or the Waterloo CSIQ.csv)."""
    paint = _Painter(size, seed=2)
    rows = []
    for folder, (_, token) in CSIQ_XLSX_TYPES.items():
        for ref in ("1600", "aerial_city"):
            _save(paint.ref(ref), root / "src_imgs" / f"{ref}.png")
            for lvl in range(1, 6):
                severity = (lvl - 1) / 4.0
                _save(paint.dist(ref, severity), root / "dst_imgs" / folder / f"{ref}.{token}.{lvl}.png")
                rows.append((ref, folder, lvl, _score(severity, False, 0.05, 0.9)))
    write_csiq_labels(root / ("CSIQ.csv" if label_format == "waterloo" else "csiq_dmos.csv"), rows, label_format)
    return root


def write_csiq_labels(path: Path, rows: Iterable[tuple[str, str, int, float]], label_format: str = "csv") -> None:
    """CSIQ labels from (reference, type folder, level, DMOS) rows, in row order.

    ``label_format="csv"``: ``csiq_dmos.csv``, the CSV export of sheet ``all_by_image`` of ``csiq.DMOS.xlsx``
    (``image,dst_idx,dst_type,dst_lev,dmos_std,dmos``, types spelled as there: ``noise``, ``jpeg 2000``,
    ``f noise`` ...; dmos_std a placeholder). ``"waterloo"``: the Waterloo ``CSIQ.csv``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    type_index = {folder: i for i, folder in enumerate(CSIQ_XLSX_TYPES, start=1)}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if label_format == "waterloo":
            writer.writerow(["dis_img_path", "dis_type", "ref_img_path", "score"])
            for ref, folder, lvl, dmos in rows:
                token = CSIQ_XLSX_TYPES[folder][1]
                writer.writerow([f"CSIQ/dst_imgs/{token}/{ref}.{token}.{lvl}.png", token,
                                 f"CSIQ/src_imgs/{ref}.png", dmos])
        else:
            writer.writerow(["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"])
            for ref, folder, lvl, dmos in rows:
                writer.writerow([ref, type_index[folder], CSIQ_XLSX_TYPES[folder][0], lvl, 0.1, dmos])


TID_TYPES = (1, 11, 24)
TID_REFS = (1, 25)


def tid_disk_name(ref: int, typ: int, lvl: int) -> str:
    """On-disk spelling in the fixture: mixed case as in the official TID2013 distribution."""
    stem = f"{ref:02d}_{typ:02d}_{lvl}"
    if ref == 25:
        return f"i{stem}.bmp"
    return {1: f"I{stem}.bmp", 2: f"i{stem}.bmp", 3: f"I{stem}.BMP"}.get(lvl, f"i{stem}.bmp")


def tid_label_name(ref: int, typ: int, lvl: int) -> str:
    """Spelling in the fixture's mos_with_names.txt (upper-case I for reference 1, as shipped)."""
    return f"I{ref:02d}_{typ:02d}_{lvl}.bmp" if ref == 1 else f"i{ref:02d}_{typ:02d}_{lvl}.bmp"


def _make_tid2013(root: Path, size: int) -> Path:
    """TID2013: references I01.BMP and i25.bmp x types 1, 11, 24 x 5 levels (mixed-case names)."""
    paint = _Painter(size, seed=3)
    _save(paint.ref("1"), root / "reference_images" / "I01.BMP")
    _save(paint.ref("25"), root / "reference_images" / "i25.bmp")
    lines = []
    for ref in TID_REFS:
        for typ in TID_TYPES:
            for lvl in range(1, 6):
                severity = (lvl - 1) / 4.0
                _save(paint.dist(str(ref), severity), root / "distorted_images" / tid_disk_name(ref, typ, lvl))
                lines.append((_score(severity, True, 1.0, 7.0), tid_label_name(ref, typ, lvl)))
    write_score_name_lines(root / "mos_with_names.txt", lines)
    return root


def write_score_name_lines(path: Path, pairs: Iterable[tuple[float, str]], sep: str = " ") -> None:
    """A ``mos_with_names.txt`` of TID2013 (``<MOS> <name>`` per line) or QADS (``sep="  "``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{float(score)!r}{sep}{name}\n" for score, name in pairs))


KADID_TYPES_USED = (1, 10, 25)


def _make_kadid(root: Path, size: int) -> Path:
    """KADID-10k under ``root/kadid10k``: I01, I02 x types 1, 10, 25 x 5 levels; dmos.csv (MOS 1-5)."""
    base = root / "kadid10k"
    paint = _Painter(size, seed=4)
    rows = []
    for ref in ("I01", "I02"):
        _save(paint.ref(ref), base / "images" / f"{ref}.png")
        for typ in KADID_TYPES_USED:
            for lvl in range(1, 6):
                severity = (lvl - 1) / 4.0
                name = f"{ref}_{typ:02d}_{lvl:02d}.png"
                _save(paint.dist(ref, severity), base / "images" / name)
                rows.append((name, f"{ref}.png", _score(severity, True, 1.0, 5.0), 0.5))
    write_kadid_labels(base / "dmos.csv", rows)
    return root


def write_kadid_labels(path: Path, rows: Iterable[tuple[str, str, float, float]]) -> None:
    """KADID-10k ``dmos.csv`` (``dist_img,ref_img,dmos,var``) from (distorted, reference, MOS, variance) rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dist_img", "ref_img", "dmos", "var"])
        writer.writerows(rows)


def _make_pipal(root: Path, size: int, split_dis: bool = False) -> Path:
    """PIPAL training set: A0001, A0002 x groups 00, 01 x 3 images; Train_Dis (or Distortion_1/2)."""
    paint = _Painter(size, seed=5)
    for ref_i, ref in enumerate(("A0001", "A0002")):
        _save(paint.ref(ref), root / "Train_Ref" / f"{ref}.bmp")
        lines = []
        for group in ("00", "01"):
            for k in range(3):
                severity = k / 2.0
                name = f"{ref}_{group}_{k:02d}.bmp"
                folder = f"Distortion_{ref_i + 1}" if split_dis else "Train_Dis"
                _save(paint.dist(ref, severity), root / folder / name)
                lines.append((name, _score(severity, True, 1100.0, 1600.0)))
        write_pipal_labels(root / "Train_Label" / f"{ref}.txt", lines)
    return root


def write_pipal_labels(path: Path, pairs: Iterable[tuple[str, float]]) -> None:
    """One PIPAL ``Train_Label/AXXXX.txt``: ``AXXXX_TT_NN.bmp,<Elo>`` per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name},{float(elo)!r}\n" for name, elo in pairs))


LIVE_MD_SUFFIXES = {"blurjpeg": ("blur1", "blur1_jpeg1", "blur2_jpeg2", "jpeg1", "jpeg3"),
                    "blurnoise": ("blur1", "blur1_noise1", "blur3_noise2", "noise1", "noise3")}


def _make_live_md(root: Path, size: int) -> Path:
    """LIVE-MD under ``root/LIVEmultidistortiondatabase``: 2 parts x 2 references x 5 images."""
    base = root / "LIVEmultidistortiondatabase"
    paint = _Painter(size, seed=6)
    for part, sub in (("Part 1", "blurjpeg"), ("Part 2", "blurnoise")):
        names, scores = [], []
        for ref in ("babygirl", "wheel"):
            _save(paint.ref(ref), base / part / sub / f"{ref}.bmp")
            for k, suffix in enumerate(LIVE_MD_SUFFIXES[sub]):
                severity = k / 4.0
                name = f"{ref}_{suffix}.bmp"
                _save(paint.dist(ref, severity), base / part / sub / name)
                names.append(name)
                scores.append(_score(severity, False, 5.0, 75.0))
        write_live_md_labels(base / part, names, scores)
    return root


def write_live_md_labels(part_dir: Path, names: Sequence[str], scores: Sequence[float]) -> None:
    """A LIVE-MD part's ``Imagelists.mat`` (distimgs, refimgs, ref4dist) and ``Scores.mat`` (DMOSscores).

    The reference of ``<ref>_blur1_jpeg2.bmp`` is ``<ref>.bmp``; refimgs lists them in order of first use.
    """
    part_dir.mkdir(parents=True, exist_ok=True)
    refs = [f"{name.split('_')[0]}.bmp" for name in names]
    refimgs = list(dict.fromkeys(refs))
    scipy.io.savemat(part_dir / "Imagelists.mat", {
        "distimgs": np.array(names, dtype=object).reshape(-1, 1),
        "refimgs": np.array(refimgs, dtype=object).reshape(-1, 1),
        "ref4dist": np.array([refimgs.index(r) + 1 for r in refs], dtype=np.float64).reshape(-1, 1)})
    scipy.io.savemat(part_dir / "Scores.mat", {"DMOSscores": np.array([scores], dtype=np.float64)})


# (name in the MOS file, name on disk, level severity)
IVC_IMAGES = (
    ("avion_j2000_r1.bmp", "avion_j2000_r1.bmp", 0.0), ("avion_j2000_r2.bmp", "avion_j2000_r2.bmp", 0.5),
    ("avion_j2000_r3.bmp", "avion_j2000_r3.bmp", 1.0), ("avion_jpeg_r1.bmp", "avion_jpeg_r1.bmp", 0.2),
    ("avion_jpeg_r2.bmp", "avion_jpeg_r2.bmp", 0.8), ("barba_blur_r1.bmp", "barba_flou_f1.bmp", 0.1),
    ("barba_blur_r2.bmp", "barba_flou_f2.bmp", 0.9), ("barba_jpeg_lumichr_r1.bmp", "barba_jpeg_lumichr_r1.bmp", 0.3),
    ("barba_lar_r1.bmp", "barba_lar_r1.bmp", 0.4), ("barba_lar_r2.bmp", "barba_lar_r2.bmp", 0.7),
)


def _make_ivc(root: Path, size: int) -> Path:
    """IVC: flat folder, references avion.bmp, barba.bmp, blur stored as *_flou_fN.bmp; ivc_mos.txt."""
    paint = _Painter(size, seed=7)
    lines = []
    for label_name, disk_name, severity in IVC_IMAGES:
        ref = label_name.split("_")[0]
        _save(paint.ref(ref), root / f"{ref}.bmp")
        _save(paint.dist(ref, severity), root / disk_name)
        lines.append((label_name, _score(severity, True, 1.0, 5.0)))
    write_ivc_labels(root / "ivc_mos.txt", lines)
    return root


def write_ivc_labels(path: Path, pairs: Iterable[tuple[str, float]]) -> None:
    """An IVC MOS text file: one tab-separated ``<name> <MOS>`` pair per line (names as the MOS file spells them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\t{float(mos)!r}\n" for name, mos in pairs))


def _make_qads(root: Path, size: int) -> Path:
    """QADS: img01, img02 x scales 2, 3, 4 x SR methods 1, 2; mos_with_names.txt ('<MOS>  <name>')."""
    paint = _Painter(size, seed=8)
    lines = []
    for ref in ("img01", "img02"):
        _save(paint.ref(ref), root / "source_images" / f"{ref}.bmp")
        for scale in (2, 3, 4):
            for method in (1, 2):
                severity = (scale - 2) / 2.0 * 0.8 + 0.2 * (method - 1)
                name = f"{ref}_{scale}_{method}.bmp"
                _save(paint.dist(ref, severity), root / "super-resolved_images" / name)
                lines.append((_score(severity, True, 0.0, 1.0), name))
    write_score_name_lines(root / "mos_with_names.txt", lines, sep="  ")
    return root


FIXTURE_MAKERS: dict[str, Callable[..., Path]] = {
    "LIVE": _make_live, "CSIQ": _make_csiq, "TID2013": _make_tid2013, "KADID-10k": _make_kadid,
    "PIPAL": _make_pipal, "LIVE-MD": _make_live_md, "IVC": _make_ivc, "QADS": _make_qads,
}


def make_fixture(name: str, root: Path | str, size: int = 8, **kwargs) -> Path:
    """Write a miniature dataset ``name`` in its official layout under ``root``; return the root.

    ``size``: side of the square images. Extra keyword arguments: CSIQ ``label_format="waterloo"``
    (write the Waterloo CSIQ.csv instead of csiq_dmos.csv); PIPAL ``split_dis=True``
    (``Distortion_1/``, ``Distortion_2/`` instead of ``Train_Dis/``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return FIXTURE_MAKERS[name](root, size, **kwargs)


def make_waterloo_fixture(root: Path | str, size: int = 8) -> tuple[Path, Path]:
    """The TID2013 fixture as the Waterloo tarball has it (``root/TID2013/...``) plus its label file.

    Returns (data root holding ``TID2013/``, label file ``root/iqa_labels_waterloo/TID2013.csv``).
    """
    root = Path(root)
    _make_tid2013(root / "TID2013", size)
    label_dir = root / "iqa_labels_waterloo"
    label_dir.mkdir(parents=True, exist_ok=True)
    label = label_dir / "TID2013.csv"
    lines = (root / "TID2013" / "mos_with_names.txt").read_text().split("\n")
    with open(label, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dis_img_path", "dis_type", "ref_img_path", "score"])
        for line in filter(None, lines):
            mos, name = line.split()
            ref = name.lower()[1:3]
            writer.writerow([f"TID2013/distorted_images/{name.lower()}", "AWGN",
                             f"TID2013/reference_images/i{ref}.bmp", round(float(mos), 4)])
    return root, label
