"""Dataset loaders (iqa_core.datasets) on miniature trees in the official layouts."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import ROOT, shared_file
from fixtures_datasets import FIXTURE_COUNTS, FIXTURE_MAKERS, make_fixture, make_waterloo_fixture

from iqa_core.datasets import (
    WATERLOO_DATASETS,
    Dataset,
    DatasetNotFoundError,
    dataset_info,
    list_datasets,
    load_dataset,
    resolve_path,
)

WATERLOO_DIR = ROOT / "data" / "iqa_labels_waterloo"  # the repository's copy of the unified label lists


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """One fixture tree per dataset (written once for the module)."""
    base = tmp_path_factory.mktemp("datasets")
    return {name: make_fixture(name, base / name) for name in FIXTURE_MAKERS}


def _copy(tree: Path, tmp_path: Path) -> Path:
    dst = tmp_path / tree.name
    shutil.copytree(tree, dst)
    return dst


def _spearman_sign(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


# ------------------------------------------------------------------------------------------------
# registry and generic behaviour
# ------------------------------------------------------------------------------------------------

def test_registry_lists_official_loaders():
    assert list_datasets() == ["LIVE", "CSIQ", "TID2013", "KADID-10k", "PIPAL", "LIVE-MD", "IVC", "QADS"]
    extra = set(list_datasets(include_waterloo=True)) - set(list_datasets())
    assert {"A57", "Toyama", "TID2008", "MDID2016"} <= extra and "LIVE_MD" not in extra
    assert dataset_info("kadid10k").name == "KADID-10k"
    assert dataset_info("live_md").name == "LIVE-MD"
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("no-such-set")


@pytest.mark.parametrize("name", list(FIXTURE_MAKERS))
def test_every_fixture_loads_with_its_metadata(trees, name):
    ds = load_dataset(name, trees[name])
    spec = dataset_info(name)
    assert isinstance(ds, Dataset) and ds.name == spec.name and ds.source == "official"
    assert len(ds) == FIXTURE_COUNTS[name]
    assert ds.score_higher_is_better == spec.score_higher_is_better
    assert ds.score_kind == spec.score_kind
    assert ds.missing_files() == []
    assert all(r.dist.is_file() and r.ref is not None and r.ref.is_file() for r in ds)
    assert len({r.key for r in ds}) == len(ds)
    # the fixture's scores follow its noise level in the dataset's direction: check the labels' sense
    noise = np.array([np.abs(np.asarray(_img(r.dist), float) - np.asarray(_img(r.ref), float)).mean() for r in ds])
    sign = _spearman_sign(noise, ds.scores)
    assert (sign < -0.5) if ds.score_higher_is_better else (sign > 0.5), sign
    frame = ds.to_frame()
    assert list(frame.columns[:6]) == ["key", "dist", "ref", "score", "distortion", "level"] and len(frame) == len(ds)


def _img(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").copy()


def test_expected_counts_of_the_full_databases():
    counts = {n: dataset_info(n).expected_count for n in list_datasets()}
    assert counts == {"LIVE": 779, "CSIQ": 866, "TID2013": 3000, "KADID-10k": 10125, "PIPAL": 23200,
                      "LIVE-MD": 450, "IVC": 185, "QADS": 980}
    assert [dataset_info(n).score_higher_is_better for n in ("LIVE", "CSIQ", "LIVE-MD")] == [False] * 3
    assert all(dataset_info(n).score_higher_is_better for n in ("TID2013", "KADID-10k", "PIPAL", "IVC", "QADS"))


def test_unknown_option_is_rejected(trees):
    with pytest.raises(TypeError, match="include_contrast"):
        load_dataset("TID2013", trees["TID2013"], include_contrast=False)


def test_default_root_comes_from_iqa_data_dir(trees, monkeypatch):
    monkeypatch.setenv("IQA_DATA_DIR", str(trees["QADS"].parent))
    assert len(load_dataset("QADS")) == FIXTURE_COUNTS["QADS"]
    monkeypatch.setenv("IQA_DATA_DIR", str(trees["KADID-10k"].parent))
    assert len(load_dataset("kadid10k")) == FIXTURE_COUNTS["KADID-10k"]


# ------------------------------------------------------------------------------------------------
# LIVE
# ------------------------------------------------------------------------------------------------

def test_live_779_by_default_982_with_references(trees):
    ds = load_dataset("LIVE", trees["LIVE"])
    assert len(ds) == 779 and ds.complete and not any(r.is_reference_copy for r in ds)
    per_folder = {d: sum(r.distortion == d for r in ds) for d in ds.distortions()}
    assert per_folder == {"jp2k": 169, "jpeg": 175, "wn": 145, "gblur": 145, "fastfading": 145}
    full = load_dataset("LIVE", trees["LIVE"], include_references=True)
    assert len(full) == 982 and full.complete and sum(r.is_reference_copy for r in full) == 203
    # official dmos.mat order: jp2k 227, jpeg 233, wn 174, gblur 174, fastfading 174, imgN ascending
    assert [r.key for r in full][:2] == ["jp2k/img1.bmp", "jp2k/img2.bmp"]
    assert full[227].key == "jpeg/img1.bmp" and full[460].key == "wn/img1.bmp"
    assert full[-1].key == "fastfading/img174.bmp"
    assert all(r.score == 0.0 for r in full if r.is_reference_copy)


def test_live_realigned_is_default_and_original_is_an_option(trees):
    root = trees["LIVE"] / "databaserelease2"
    realigned = scipy.io.loadmat(root / "dmos_realigned.mat")["dmos_new"].ravel()
    original = scipy.io.loadmat(root / "dmos.mat")["dmos"].ravel()
    orgs = scipy.io.loadmat(root / "dmos.mat")["orgs"].ravel() == 1
    default = load_dataset("LIVE", trees["LIVE"])
    assert default.options["dmos"] == "realigned"
    np.testing.assert_array_equal(default.scores, realigned[~orgs])
    orig = load_dataset("LIVE", trees["LIVE"], dmos="original")
    np.testing.assert_array_equal(orig.scores, original[~orgs])
    assert [r.key for r in orig] == [r.key for r in default]
    with pytest.raises(ValueError, match="realigned"):
        load_dataset("LIVE", trees["LIVE"], dmos="new")


def test_live_deepwsd_order_sorts_folders_alphabetically(trees):
    ds = load_dataset("LIVE", trees["LIVE"], include_references=True, order="deepwsd")
    assert ds[0].key == "fastfading/img1.bmp" and ds[1].key == "fastfading/img2.bmp"
    assert [d for d in ds.distortions()] == ["fastfading", "gblur", "jp2k", "jpeg", "wn"]
    assert ds[-1].key == "wn/img174.bmp"


def test_live_realigned_labels_of_the_shared_copy_match_waterloo(tmp_path):
    """The real dmos_realigned.mat (its 'orgs' is a non-standard 1x779 array: the loader falls back
    to dmos_new == 0) gives exactly the Waterloo LIVE list."""
    mat, waterloo = shared_file("data", "live_release2_labels", "dmos_realigned.mat"), WATERLOO_DIR / "LIVE.csv"
    shutil.copy(mat, tmp_path / "dmos_realigned.mat")
    (tmp_path / "refimgs").mkdir()
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": np.array([["x.bmp"] * 982], dtype=object)})
    ds = load_dataset("LIVE", tmp_path, check_files=False)
    assert len(ds) == 779
    rows = list(csv.DictReader(waterloo.open()))
    assert [r.key for r in ds] == [row["dis_img_path"].removeprefix("LIVE/") for row in rows]
    np.testing.assert_allclose(ds.scores, [float(row["score"]) for row in rows], rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# CSIQ
# ------------------------------------------------------------------------------------------------

def test_csiq_contrast_option_and_types(trees):
    ds = load_dataset("CSIQ", trees["CSIQ"])
    assert ds.expected_count == 866 and not ds.complete  # the fixture is a miniature
    assert ds.distortions() == ["awgn", "jpeg", "jpeg2000", "fnoise", "blur", "contrast"]
    assert {r.level for r in ds} == {1, 2, 3, 4, 5}
    assert ds[0].key == "dst_imgs/awgn/1600.AWGN.1.png" and ds[0].ref.name == "1600.png"
    no_contrast = load_dataset("CSIQ", trees["CSIQ"], include_contrast=False)
    assert len(no_contrast) == 50 and no_contrast.expected_count == 750
    assert "contrast" not in no_contrast.distortions()


def test_csiq_accepts_the_waterloo_label_file(tmp_path):
    root = make_fixture("CSIQ", tmp_path / "csiq", label_format="waterloo")
    ref = load_dataset("CSIQ", make_fixture("CSIQ", tmp_path / "csiq_csv"))
    ds = load_dataset("CSIQ", root)
    assert ds.options["labels"].endswith("CSIQ.csv")
    assert [r.key for r in ds] == [r.key for r in ref]
    np.testing.assert_allclose(ds.scores, ref.scores)


def test_csiq_without_labels_names_the_accepted_label_files(trees, tmp_path):
    root = _copy(trees["CSIQ"], tmp_path)
    (root / "csiq_dmos.csv").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("CSIQ", root)
    assert "csiq_dmos.csv or csiq.DMOS.xlsx or CSIQ.csv" in str(err.value)


# ------------------------------------------------------------------------------------------------
# TID2013: case-insensitive names
# ------------------------------------------------------------------------------------------------

def test_tid2013_mixed_case_names_resolve(trees):
    ds = load_dataset("TID2013", trees["TID2013"])
    on_disk = {p.name for p in (trees["TID2013"] / "distorted_images").iterdir()}
    assert {r.dist.name for r in ds} == on_disk  # actual on-disk spelling
    assert {"I01_01_1.bmp", "i01_01_2.bmp", "I01_01_3.BMP", "i25_01_1.bmp"} <= on_disk
    by_key = {r.key: r for r in ds}
    assert by_key["distorted_images/i01_01_3.bmp"].dist.name == "I01_01_3.BMP"
    assert by_key["distorted_images/i25_24_5.bmp"].ref.name == "i25.bmp"
    assert by_key["distorted_images/i01_11_2.bmp"].ref.name == "I01.BMP"
    assert by_key["distorted_images/i01_11_2.bmp"].distortion == "jp2k"
    assert by_key["distorted_images/i01_11_2.bmp"].level == 2
    assert ds.distortions() == ["awgn", "jp2k", "sparse_sampling"]


def test_tid2013_deepwsd_order_is_type_major(trees):
    ds = load_dataset("TID2013", trees["TID2013"], order="deepwsd")
    keys = [r.key for r in ds]
    assert keys[:6] == [f"distorted_images/i01_01_{lvl}.bmp" for lvl in range(1, 6)] + ["distorted_images/i25_01_1.bmp"]
    assert keys[-1] == "distorted_images/i25_24_5.bmp"


def test_tid2013_real_piq_pair_resolves(tmp_path):
    pair = shared_file("data", "tid2013_piq_pair")
    (tmp_path / "distorted_images").mkdir()
    (tmp_path / "reference_images").mkdir()
    shutil.copy(pair / "i01_01_5.bmp", tmp_path / "distorted_images")
    shutil.copy(pair / "I01.BMP", tmp_path / "reference_images")
    (tmp_path / "mos_with_names.txt").write_text("3.86486 I01_01_5.bmp\n")
    (rec,) = load_dataset("TID2013", tmp_path).records
    assert rec.dist.name == "i01_01_5.bmp" and rec.ref.name == "I01.BMP" and rec.score == 3.86486
    assert rec.distortion == "awgn" and rec.level == 5


def test_resolve_path_prefers_exact_case(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "x.BMP").write_bytes(b"")
    assert resolve_path(tmp_path, "a/X.bmp") == tmp_path / "A" / "x.BMP"
    assert resolve_path(tmp_path, "A/y.bmp") is None


# ------------------------------------------------------------------------------------------------
# KADID-10k, PIPAL, LIVE-MD, IVC, QADS
# ------------------------------------------------------------------------------------------------

def test_kadid_types_levels_and_orders(trees):
    ds = load_dataset("KADID-10k", trees["KADID-10k"])
    assert ds.root.name == "kadid10k"  # stepped into the distribution's top folder
    assert ds.distortions() == ["gblur", "jpeg", "contrast_change"]
    assert [r.key for r in ds][:2] == ["images/I01_01_01.png", "images/I01_01_02.png"]
    assert ds[0].ref.name == "I01.png" and ds[0].level == 1
    tm = load_dataset("KADID-10k", trees["KADID-10k"], order="deepwsd")
    assert [r.key for r in tm][5:7] == ["images/I02_01_01.png", "images/I02_01_02.png"]


def test_pipal_train_dis_or_distortion_folders(trees, tmp_path):
    ds = load_dataset("PIPAL", trees["PIPAL"])
    assert ds[0].key == "Train_Dis/A0001_00_00.bmp" and ds[0].score == 1600.0
    assert ds.distortions() == ["00", "01"]
    split = load_dataset("PIPAL", make_fixture("PIPAL", tmp_path / "pipal", split_dis=True))
    assert [r.key for r in split] == [r.key for r in ds]
    assert {r.dist.parent.name for r in split} == {"Distortion_1", "Distortion_2"}


def test_live_md_parts_and_references(trees):
    ds = load_dataset("LIVE-MD", trees["LIVE-MD"])
    keys = [r.key for r in ds]
    assert keys[0] == "Part 1/blurjpeg/babygirl_blur1.bmp" and keys[10] == "Part 2/blurnoise/babygirl_blur1.bmp"
    assert all(r.ref.parent == r.dist.parent for r in ds)
    assert ds.distortions() == ["blur", "blur+jpeg", "jpeg", "blur+noise", "noise"]


def test_ivc_blur_names_map_to_flou_files(trees):
    ds = load_dataset("IVC", trees["IVC"])
    blur = [r for r in ds if r.distortion == "blur"]
    assert [r.dist.name for r in blur] == ["barba_flou_f1.bmp", "barba_flou_f2.bmp"]
    assert [r.key for r in blur] == ["barba_flou_f1.bmp", "barba_flou_f2.bmp"]
    assert {r.ref.name for r in ds} == {"avion.bmp", "barba.bmp"}
    assert "jpeg_lumichr" in ds.distortions() and [r.level for r in blur] == [1, 2]


def test_qads_scale_is_the_level(trees):
    ds = load_dataset("QADS", trees["QADS"])
    assert ds[0].key == "super-resolved_images/img01_2_1.bmp" and ds[0].ref.name == "img01.bmp"
    assert {r.level for r in ds} == {2, 3, 4} and ds.distortions() == ["sr1", "sr2"]


# ------------------------------------------------------------------------------------------------
# Waterloo label files
# ------------------------------------------------------------------------------------------------

def test_waterloo_mode_on_the_tarball_layout(tmp_path):
    data_root, label = make_waterloo_fixture(tmp_path)
    official = load_dataset("TID2013", data_root / "TID2013")
    for root in (data_root, data_root / "TID2013"):  # the folder above, or the dataset folder
        ds = load_dataset("TID2013", root, source="waterloo", label_file=str(label))
        assert ds.source == "waterloo" and len(ds) == len(official)
        assert [r.key for r in ds] == [r.key for r in official]
        assert [r.dist for r in ds] == [r.dist for r in official]  # resolved to the mixed-case files
        np.testing.assert_allclose(ds.scores, official.scores, atol=1e-4)
    found = load_dataset("TID2013", data_root, source="waterloo")  # label found in root/iqa_labels_waterloo
    assert found.options["label_file"] == str(label)


@pytest.mark.parametrize("name", sorted(WATERLOO_DATASETS))
def test_shared_waterloo_label_files_parse(name, tmp_path):
    ds = load_dataset(name, tmp_path, source="waterloo", label_file=str(WATERLOO_DIR / f"{name}.csv"),
                      check_files=False)
    assert len(ds) == WATERLOO_DATASETS[name][2] == ds.expected_count
    assert np.isfinite(ds.scores).all()
    assert ds.score_higher_is_better == WATERLOO_DATASETS[name][1]
    rows = list(csv.DictReader((WATERLOO_DIR / f"{name}.csv").open()))
    assert [r.key for r in ds] == [row["dis_img_path"].split("/", 1)[1] for row in rows]


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

def test_missing_root_says_where_and_what(tmp_path):
    root = tmp_path / "nowhere" / "TID2013"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("TID2013", root)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(root) in msg and "mos_with_names.txt" in msg and "distorted_images" in msg
    assert "IQA_DATA_DIR" in msg and err.value.root == root


def test_empty_root_lists_the_missing_label_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("LIVE", tmp_path)
    assert err.value.missing == ["dmos_realigned.mat", "refnames_all.mat", "refimgs"]
    assert "jp2k" in str(err.value)  # the layout line names the folders
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("LIVE-MD", tmp_path)
    assert "Part 1/Imagelists.mat" in err.value.missing and "Part 2/Scores.mat" in err.value.missing


def test_missing_image_is_reported(trees, tmp_path):
    root = _copy(trees["KADID-10k"], tmp_path)
    (root / "kadid10k" / "images" / "I02_10_03.png").unlink()
    (root / "kadid10k" / "images" / "I01.png").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("KADID-10k", root)
    assert err.value.missing == ["images/I01.png", "images/I02_10_03.png"]
    assert "images/I02_10_03.png" in str(err.value) and "check_files=False" in str(err.value)
    assert len(load_dataset("KADID-10k", root, check_files=False)) == FIXTURE_COUNTS["KADID-10k"]


def test_many_missing_images_are_summarised(trees, tmp_path):
    root = _copy(trees["LIVE"], tmp_path)
    shutil.rmtree(root / "databaserelease2" / "wn")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("LIVE", root)
    assert err.value.n_missing == 145 and "(and 137 more)" in str(err.value)


def test_ivc_mos_file_given_explicitly_in_another_column_order(trees, tmp_path):
    root = _copy(trees["IVC"], tmp_path)
    lines = (root / "ivc_mos.txt").read_text().split()
    pairs = list(zip(lines[0::2], lines[1::2], strict=True))
    (root / "ivc_mos.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="ivc_mos.txt"):
        load_dataset("IVC", root)
    label = tmp_path / "scores.txt"
    label.write_text("".join(f"{i} {name} {mos} 0.7\n" for i, (name, mos) in enumerate(pairs, start=1)))
    ds = load_dataset("IVC", root, labels=str(label))
    np.testing.assert_allclose(ds.scores, [float(m) for _, m in pairs])
