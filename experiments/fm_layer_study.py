"""ZS-IQA intermediate-layer study: how well each tap of each backbone, on its own, orders image quality.

    python experiments/fm_layer_study.py                    # bundled images, VGG16 + AlexNet here: ~8 min, 2-core CPU
    python experiments/fm_layer_study.py --quick            # AlexNet, 3 taps, 2 distances, 12 pairs (tests)
    python experiments/fm_layer_study.py --backbones dinov1,vgg16 --checkpoints dinov1=dino_vitbase16_pretrain.pth
    python experiments/fm_layer_study.py --backbones clip-vitb32 --checkpoints clip-vitb32=random  # plumbing, timing
    python experiments/fm_layer_study.py --dataset KADID-10k --limit 2000    # SRCC against MOS instead

For every backbone (default: the ZS-IQA foundation backbones that are registered, then VGG16 and AlexNet), every
tap of it ON ITS OWN and every ZS-IQA distance (l2, cos, wsd, jsd, skld, swd), each pair is scored with
``DeepFeatureMetric(backbone, distance, taps=[tap])``, computed through :class:`iqa_core.deep_features.TapGrid`:
one backbone pass per image (per 224-pixel window for the ViTs), the reference's taps once per reference.

Default mode (no dataset): the bundled images (data/samples/, 256 px on the long side) are resized (bicubic) so
their SHORT side is 224 px, the ViTs' window (256x256 -> 224x224, one window; 256x170 -> 337x224, two windows),
so every backbone sees the same pixels; the first four (--images) are distorted (iqa_core.distortions, seeded)
with blur, noise, JPEG and contrast reduction at levels 1..5: 80 pairs. Figures of merit per (backbone, tap,
distance), signed so that 1 means "more distortion, worse score" for every distance:

- srcc: the Spearman correlation between the scores and the true levels, within each (image, distortion type)
  sequence of levels, averaged over the sequences (does the tap order the levels of ONE content and type?);
- srcc_pooled: the same over all pairs pooled (are its scores also comparable across contents and types? The
  levels of different types are not matched in strength, so this is a relative figure). The summary ranks taps
  by srcc_pooled: srcc is about 1 for nearly every tap and cannot tell them apart.

Dataset mode (--dataset): every pair of a rated dataset at native resolution; srcc = srcc_pooled = the Spearman
correlation with the MOS over all pairs, signed so that 1 means perfect agreement with the observers.

Backbones whose weights do not resolve are skipped with one printed line naming the missing file, and listed in
skipped.csv and summary.md. Outputs in results/fm_layer_study/ (dataset mode: results/fm_layer_study/<dataset>/):
scores.csv (every scored (backbone, tap, distance, pair); appended as pairs are scored, a rerun skips what is
there, so an interrupted run resumes; a line cut short by a kill is scored again), layer_srcc.csv, all_taps_srcc.csv
(the registered all-tap ZS-IQA metric, for comparison, where it is the sum of the per-tap scores), one PNG per
backbone (SRCC vs tap depth, one line per distance) and curves.png (all backbones), skipped.csv and summary.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core.backbones import TapBackbone, create_backbone, list_backbones  # noqa: E402
from iqa_core.cli import RenamedOption, device_argument, run_main, warn_renamed_options  # noqa: E402
from iqa_core.deep_features import TapGrid  # noqa: E402
from iqa_core.distortions import distort  # noqa: E402
from iqa_core.io import load_image  # noqa: E402
from iqa_core.report import markdown_table  # noqa: E402
from iqa_core.resumable_csv import ResumableCSV, StopRequested  # noqa: E402
from iqa_core.samples import load_samples  # noqa: E402
from iqa_core.stats import direction_sign, spearman  # noqa: E402
from iqa_core.validation import IQAInputError  # noqa: E402
from iqa_core.weights import WeightsNotFoundError  # noqa: E402
from zs_iqa.distances import DISTANCES  # noqa: E402
from zs_iqa.metrics import CNN_BACKBONES, FOUNDATION_BACKBONES  # noqa: E402

COLUMNS = ["backbone", "tap", "distance", "image", "distortion", "level", "score"]
KEY = COLUMNS[:-1]
DEFAULT_DISTORTIONS = "gaussian_blur,gaussian_noise,jpeg,contrast_change"
QUICK = {"backbones": "alexnet", "taps": "relu1,relu3,relu5", "distances": "l2,wsd", "images": 2,
         "distortions": "gaussian_blur,jpeg", "levels": "1,3,5"}
TABLE_COLUMNS = ["backbone", "tap", "tap_index", "distance", "srcc", "srcc_pooled", "n"]
AXIS_LABELS = {"srcc_pooled": "SRCC with level, all pairs pooled", "srcc": "SRCC with level, per sequence"}


@dataclass(frozen=True)
class Pair:
    """One (distorted, reference) pair: sample mode makes ``dist`` from ``ref`` on the fly, dataset mode reads files."""

    image: str  # sample name, or the dataset record's key
    distortion: str
    level: int
    ref: str  # sample name, or the reference file
    dist_path: str = ""
    mos: float = float("nan")


@dataclass
class BackboneRun:
    """A backbone that was built, the taps studied and what is needed to read its results."""

    name: str
    taps: list[str]
    all_taps: tuple[str, ...]  # every intermediate tap, in depth order
    layout: str  # "map" or "tokens"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="default", help="'default' (the registered ZS-IQA foundation backbones, "
                   "then vgg16, alexnet) or comma-separated registered backbone names")
    p.add_argument("--taps", help="comma-separated tap names (default: every intermediate tap); each backbone uses "
                   "the listed taps it has")
    p.add_argument("--distances", default=",".join(DISTANCES), help="comma-separated comparators")
    p.add_argument("--checkpoints", default="", help="BACKBONE=PATH[,BACKBONE=PATH]: a checkpoint per backbone "
                   "(default: resolved as usual, $IQA_WEIGHTS_DIR first)")
    p.add_argument("--weights", dest="checkpoints", action=RenamedOption, new_name="--checkpoints")
    p.add_argument("--images", type=int, default=4, help="how many bundled images (sorted by name)")
    p.add_argument("--distortions", default=DEFAULT_DISTORTIONS)
    p.add_argument("--levels", default="1,2,3,4,5")
    p.add_argument("--short-side", type=int, default=224, help="resize the bundled images to this short side "
                   "(>= 224 for the ViTs' windows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="rated dataset name (iqa_core.datasets.load_dataset): SRCC against MOS")
    p.add_argument("--root", help="dataset root")
    p.add_argument("--limit", type=int, help="dataset mode: first N pairs")
    p.add_argument("--stride", type=int, help="sliding-window stride of windowed backbones (default: the backbone's "
                   "rule, ZS-IQA's 200)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default). One is the "
                   "default: on a shared 2-core CPU it ran the VGG16 cells 2-3x faster than two")
    p.add_argument("--out", help="output folder (default results/fm_layer_study[/<dataset>])")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop once N new score rows are written, as if "
                   "interrupted (a rerun resumes); splits a long run over several sessions")
    p.add_argument("--quick", action="store_true", help="; ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    warn_renamed_options(args)
    if args.quick:  # the quick sweep, where the command line kept the defaults
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if args.out is None:
        base = ROOT / "results" / "fm_layer_study"
        args.out = str(base / args.dataset if args.dataset else base)
    return args


def _names(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def default_backbones() -> tuple[list[str], dict[str, str]]:
    """The registered foundation backbones then the CNNs; unregistered foundation backbones as skipped."""
    registered = set(list_backbones())
    names = [b for b in FOUNDATION_BACKBONES if b in registered] + list(CNN_BACKBONES)
    skipped = {b: "not registered (zs_iqa/backbones.py is not part of this checkout)"
               for b in FOUNDATION_BACKBONES if b not in registered}
    return names, skipped


def parse_checkpoints(text: str) -> dict[str, str]:
    """``"dinov1=a.pth,vgg16=b.pth"`` -> the checkpoint file of each named backbone."""
    checkpoints = {}
    for item in _names(text):
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--checkpoints expects BACKBONE=PATH[,BACKBONE=PATH], got {item!r}")
        checkpoints[name.strip()] = path.strip()
    return checkpoints


def build_backbone(name: str, weights: str | None, device: str) -> tuple[TapBackbone | None, str]:
    """The backbone, or None and the one-line reason it could not be built (missing weights or package)."""
    try:
        return create_backbone(name, weights=weights).to(device), ""
    except (WeightsNotFoundError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return None, first.split(" Looked in:")[0]


def select_taps(backbone: TapBackbone, wanted: list[str]) -> list[str]:
    if not wanted:
        return list(backbone.default_taps)
    known = set(backbone.taps) | ({"embedding"} if backbone.has_embedding else set())
    taps = [t for t in backbone.taps if t in wanted] + (["embedding"] if "embedding" in wanted and
                                                        "embedding" in known else [])
    if not taps:
        raise KeyError(f"backbone {backbone.name!r} has none of the taps {wanted}; its taps are "
                       f"{list(backbone.taps)}")
    return taps


def tap_index(tap: str, all_taps: tuple[str, ...]) -> int:
    """Depth of a tap: 1 for the first intermediate tap, ...; 0 for the input image, last + 1 for the embedding."""
    if tap == "image":
        return 0
    return all_taps.index(tap) + 1 if tap in all_taps else len(all_taps) + 1


# --------------------------------------------------------------------------------------------------------------
# Pairs and images
# --------------------------------------------------------------------------------------------------------------


def resize_short_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """Resize a (1, 3, H, W) image so its shorter side is ``side`` (bicubic, antialiased when shrinking)."""
    h, w = image.shape[-2:]
    scale = side / min(h, w)
    size = (max(side, round(h * scale)), max(side, round(w * scale)))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bicubic", antialias=scale < 1, align_corners=False).clamp(0, 1)


def study_images(n_images: int, short_side: int) -> dict[str, torch.Tensor]:
    return {name: resize_short_side(img, short_side) for name, img in list(load_samples().items())[:n_images]}


def sample_pairs(images: dict[str, torch.Tensor], distortions: list[str], levels: list[int]) -> list[Pair]:
    return [Pair(image, d, lv, image) for image in images for d in distortions for lv in levels]


def dataset_pairs(name: str, root: str | None, limit: int | None) -> tuple[list[Pair], bool]:
    """The dataset's pairs (first ``limit``) and whether its scores are higher-is-better."""
    from iqa_core.datasets import load_dataset

    dataset = load_dataset(name, root=root)
    records = list(dataset)[:limit] if limit else list(dataset)
    pairs = [Pair(r.key, r.distortion, int(r.level or 0), str(r.ref), str(r.dist), float(r.score)) for r in records
             if r.ref is not None]
    return pairs, dataset.score_higher_is_better


class ImageSource:
    """Reference and distorted tensors of the pairs: generated (seeded) from the samples, or read from files."""

    def __init__(self, images: dict[str, torch.Tensor] | None, seed: int) -> None:
        self.images, self.seed = images, seed
        self._distorted: dict[Pair, torch.Tensor] = {}
        self._last_ref: tuple[str, torch.Tensor] | None = None

    def ref(self, pair: Pair) -> torch.Tensor:
        if self.images is not None:
            return self.images[pair.ref]
        if self._last_ref is None or self._last_ref[0] != pair.ref:  # pairs come grouped by reference
            self._last_ref = (pair.ref, load_image(pair.ref))
        return self._last_ref[1]

    def dist(self, pair: Pair) -> torch.Tensor:
        if self.images is None:
            return load_image(pair.dist_path)
        if pair not in self._distorted:  # kept for the next backbone
            self._distorted[pair] = distort(pair.distortion, self.images[pair.ref], pair.level, seed=self.seed)
        return self._distorted[pair]


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def missing_cells(cache: ResumableCSV, backbone: str, taps: list[str], distances: list[str],
                  pairs: list[Pair]) -> dict[Pair, list[tuple[str, str]]]:
    todo = {}
    for pair in pairs:
        cells = [(t, d) for t in taps for d in distances
                 if (backbone, t, d, pair.image, pair.distortion, pair.level) not in cache]
        if cells:
            todo[pair] = cells
    return todo


def by_reference(pairs: list[Pair]) -> Iterator[tuple[str, list[Pair]]]:
    """Pairs grouped by reference, in order of first appearance."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.ref, []).append(pair)
    yield from groups.items()


def pair_scores(grid: TapGrid, dist: torch.Tensor, ref: torch.Tensor, ref_prepared: dict[tuple[str, str], list]
                ) -> dict[tuple[str, str], torch.Tensor]:
    """Every cell of ``grid`` for one distorted image against the reference prepared once (``TapGrid.prepare``)."""
    if dist.shape[-2:] != ref.shape[-2:]:
        raise IQAInputError(f"dist {tuple(dist.shape[-2:])} and ref {tuple(ref.shape[-2:])} differ in size")
    return grid.score_prepared(grid.tap_outputs(dist, "dist"), ref_prepared)


def write_pair(cache: ResumableCSV, backbone: str, pair: Pair, cells: list[tuple[str, str]],
               scores: dict[tuple[str, str], torch.Tensor]) -> None:
    for tap, distance in cells:
        if (tap, distance) in scores:
            value = float(scores[(tap, distance)][0])
            cache.add([backbone, tap, distance, pair.image, pair.distortion, pair.level, repr(value)])
    cache.flush()  # one pair at a time: a kill loses at most the pair being written


def score_backbone(run: BackboneRun, backbone: TapBackbone, distances: list[str], pairs: list[Pair],
                   source: ImageSource, cache: ResumableCSV, args: argparse.Namespace) -> None:
    """Score every missing (tap, distance) cell of every pair: one backbone pass per image."""
    todo = missing_cells(cache, run.name, run.taps, distances, pairs)
    print(f"{run.name}: {len(run.taps)} taps x {len(distances)} distances x {len(pairs)} pairs; "
          f"{len(todo)} pairs to score")
    if not todo:
        return
    needed = {cell for cells in todo.values() for cell in cells}
    grid = TapGrid(backbone, [t for t in run.taps if any(c[0] == t for c in needed)],
                   [d for d in distances if any(c[1] == d for c in needed)], stride=args.stride)
    errors: list[str] = []
    with torch.no_grad(), tqdm(total=len(todo), desc=run.name, unit="pair") as bar:
        for _, group in by_reference(list(todo)):
            ref_prepared = None
            for pair in group:
                try:
                    ref = source.ref(pair)
                    if ref_prepared is None:  # the reference's taps and comparator states, once for all its pairs
                        ref_prepared = grid.prepare(grid.tap_outputs(ref, "ref"))
                    scores = pair_scores(grid, source.dist(pair), ref, ref_prepared)
                    write_pair(cache, run.name, pair, todo[pair], scores)
                except IQAInputError as err:
                    errors.append(f"{pair.image}: {err}")
                bar.update()
    if errors:
        print(f"{run.name}: {len(errors)} pairs could not be scored, e.g. {errors[0]}")
    for (tap, distance), reason in grid.skipped.items():
        print(f"{run.name}: {distance} cannot score tap {tap}: {reason}")


# --------------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------------


def scores_frame(cache: ResumableCSV, runs: list[BackboneRun], distances: list[str], pairs: list[Pair]
                 ) -> pd.DataFrame:
    """The cached scores of this study's grid (other rows of scores.csv are left out), with the MOS."""
    wanted = {(r.name, t, d) for r in runs for t in r.taps for d in distances}
    pair_of = {(p.image, p.distortion, str(p.level)): p for p in pairs}
    rows = []
    for row in cache:
        pair = pair_of.get((row["image"], row["distortion"], row["level"]))
        if pair is not None and (row["backbone"], row["tap"], row["distance"]) in wanted:
            rows.append({**row, "level": pair.level, "score": float(row["score"]), "mos": pair.mos})
    return pd.DataFrame(rows, columns=[*COLUMNS, "mos"])


def oriented_srcc(x: np.ndarray, y: np.ndarray, sign: float) -> float:
    """``sign`` x Spearman over the finite pairs (NaN where undefined)."""
    ok = np.isfinite(x) & np.isfinite(y)
    return sign * spearman(x[ok], y[ok])


def cell_srcc(group: pd.DataFrame, dataset_sign: float | None, higher_is_better: bool) -> tuple[float, float]:
    """(srcc, srcc_pooled) of one cell's scores: against the level (per sequence, and pooled) or the MOS."""
    score = group.score.to_numpy(float)
    if dataset_sign is not None:
        srcc = oriented_srcc(score, group.mos.to_numpy(float), dataset_sign)
        return srcc, srcc
    sign = direction_sign(higher_is_better, False)  # more distortion should give a worse score
    pooled = oriented_srcc(group.level.to_numpy(float), score, sign)
    per_seq = [oriented_srcc(g.level.to_numpy(float), g.score.to_numpy(float), sign)
               for _, g in group.groupby(["image", "distortion"], sort=False)]
    per_seq = [v for v in per_seq if np.isfinite(v)]
    return (float(np.mean(per_seq)) if per_seq else float("nan")), pooled


def dataset_sign_for(distance: str, mos_higher_is_better: bool | None) -> int | None:
    """The orientation against the MOS in dataset mode; None in the default mode (SRCC against the level)."""
    return None if mos_higher_is_better is None else direction_sign(TapGrid.higher_is_better(distance),
                                                                     mos_higher_is_better)


def layer_table(scores: pd.DataFrame, runs: list[BackboneRun], distances: list[str],
                mos_higher_is_better: bool | None) -> pd.DataFrame:
    rows = []
    groups = dict(list(scores.groupby(["backbone", "tap", "distance"], sort=False)))
    for run in runs:
        for tap in run.taps:
            for distance in distances:
                group = groups.get((run.name, tap, distance))
                if group is None:
                    continue
                srcc, pooled = cell_srcc(group, dataset_sign_for(distance, mos_higher_is_better),
                                         TapGrid.higher_is_better(distance))
                rows.append([run.name, tap, tap_index(tap, run.all_taps), distance, srcc, pooled, len(group)])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def all_taps_table(scores: pd.DataFrame, runs: list[BackboneRun], distances: list[str],
                   mos_higher_is_better: bool | None) -> pd.DataFrame:
    """SRCC of the registered all-tap metric (``zs-<backbone>-<distance>``) where it equals the sum of the per-tap
    scores: every intermediate tap studied, and tap maps (or l2/cos, which sum per tap on token backbones too)."""
    rows = []
    for run in runs:
        if list(run.taps) != list(run.all_taps):
            continue
        for distance in distances:
            if run.layout != "map" and distance not in ("l2", "cos"):
                continue  # token taps are stacked into one tensor for wsd/jsd/skld/swd: not a sum over taps
            cell = scores[(scores.backbone == run.name) & (scores.distance == distance)]
            summed = cell.groupby(["image", "distortion", "level"], sort=False).agg(
                score=("score", "sum"), taps=("tap", "nunique"), mos=("mos", "first")).reset_index()
            summed = summed[summed.taps == len(run.taps)]
            if summed.empty:
                continue
            srcc, pooled = cell_srcc(summed, dataset_sign_for(distance, mos_higher_is_better),
                                     TapGrid.higher_is_better(distance))
            rows.append([run.name, distance, srcc, pooled, len(summed)])
    return pd.DataFrame(rows, columns=["backbone", "distance", "srcc", "srcc_pooled", "n"])


def _plot_backbone(axes: list, part: pd.DataFrame, metrics: list[str]) -> None:
    for ax, metric in zip(axes, metrics, strict=True):
        for distance, lines in part.groupby("distance", sort=False):
            lines = lines.sort_values("tap_index")
            ax.plot(lines.tap_index, lines[metric], marker="o", ms=3, label=distance)
        ticks = part.drop_duplicates("tap").sort_values("tap_index")
        ax.set_xticks(ticks.tap_index, ticks.tap, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(AXIS_LABELS[metric] if len(metrics) > 1 else "SRCC with MOS", fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)


def plot_curves(table: pd.DataFrame, out: Path, dataset_mode: bool) -> None:
    metrics = ["srcc"] if dataset_mode else ["srcc_pooled", "srcc"]
    backbones = list(table.backbone.unique())
    fig, grid = plt.subplots(len(metrics), len(backbones), figsize=(3.6 * len(backbones), 3.2 * len(metrics)),
                             squeeze=False)
    for col, backbone in enumerate(backbones):
        part = table[table.backbone == backbone]
        single, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
        _plot_backbone(list(axes[0]), part, metrics)
        _plot_backbone(list(grid[:, col]), part, metrics)
        for ax in axes[0]:
            ax.set_title(backbone, fontsize=9)
        axes[0, -1].legend(fontsize=7)
        single.tight_layout()
        single.savefig(out / f"{backbone}.png", dpi=110)
        plt.close(single)
        grid[0, col].set_title(backbone, fontsize=9)
    grid[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def _best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, distance) the tap with the highest srcc_pooled (ties: the highest srcc, then the shallowest).
    The pooled value ranks: the per-sequence srcc is 1 for nearly every tap (each orders the levels of one image
    and distortion type), so it cannot tell taps apart."""
    ranked = table.assign(_a=table.srcc_pooled.fillna(-np.inf), _b=table.srcc.fillna(-np.inf))
    ranked = ranked.sort_values(["_a", "_b", "tap_index"], ascending=[False, False, True], kind="stable")
    return ranked.drop_duplicates(["backbone", "distance"]).drop(columns=["_a", "_b"])


def _tap_tables(table: pd.DataFrame, values: list[str]) -> list[str]:
    lines = []
    for backbone, part in table.groupby("backbone", sort=False):
        for value in values:
            pivot = part.pivot_table(index=["tap_index", "tap"], columns="distance", values=value, sort=False)
            rows = pivot.reset_index(level="tap_index", drop=True).reset_index()  # columns: tap, then the distances
            lines += [f"### {backbone}: {value}", "",
                      markdown_table(rows, lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)), ""]
    return lines


def write_summary(table: pd.DataFrame, all_taps: pd.DataFrame, skipped: dict[str, str], setup: str,
                  path: Path, dataset_mode: bool = False) -> None:
    lines = ["# ZS-IQA intermediate-layer study", "", setup, "",
             "## Best tap per backbone and distance (highest srcc_pooled)", "",
             "| backbone | distance | best tap | srcc | srcc_pooled | all taps (registered metric): srcc | pooled |",
             "|---|---|---|---|---|---|---|"]
    every = all_taps.set_index(["backbone", "distance"]) if len(all_taps) else None
    for row in _best_rows(table).sort_values(["backbone", "distance"], kind="stable").itertuples():
        whole = every.loc[(row.backbone, row.distance)] if every is not None and (
            row.backbone, row.distance) in every.index else None
        tail = f"{whole.srcc:.3f} | {whole.srcc_pooled:.3f}" if whole is not None else "n/a | n/a"
        lines.append(f"| {row.backbone} | {row.distance} | {row.tap} | {row.srcc:.3f} | {row.srcc_pooled:.3f} "
                     f"| {tail} |")
    lines += ["", "## SRCC of every tap (rows) and distance (columns)", ""]
    lines += _tap_tables(table, ["srcc"] if dataset_mode else ["srcc_pooled", "srcc"])
    lines += ["## Skipped backbones", ""]
    lines += [f"- {name}: {reason}" for name, reason in skipped.items()] or ["none"]
    path.write_text("\n".join(lines) + "\n")


def setup_text(args: argparse.Namespace, pairs: list[Pair]) -> str:
    if args.dataset:
        return (f"Mode: dataset {args.dataset}, {len(pairs)} pairs at native resolution; srcc = srcc_pooled = "
                "Spearman correlation with the subjective scores, signed so that 1 = perfect agreement.")
    images = sorted({p.image for p in pairs})
    return (f"Mode: bundled images ({', '.join(images)}; short side resized to {args.short_side} px), distortions "
            f"{args.distortions.replace(',', ', ')} at levels {args.levels}, seed {args.seed}; {len(pairs)} pairs. "
            "srcc: Spearman correlation of score and level within each (image, distortion) sequence, averaged; "
            "srcc_pooled: over all pairs (levels are not matched in strength across types, so this also asks whether "
            "the scores are comparable across contents and types); signed so that 1 = more distortion always scores "
            "worse.")


# --------------------------------------------------------------------------------------------------------------


def study_pairs(args: argparse.Namespace) -> tuple[list[Pair], ImageSource, bool | None]:
    if args.dataset:
        pairs, mos_higher = dataset_pairs(args.dataset, args.root, args.limit)
        return pairs, ImageSource(None, args.seed), mos_higher
    images = study_images(args.images, args.short_side)
    levels = [int(v) for v in _names(args.levels)]
    return sample_pairs(images, _names(args.distortions), levels), ImageSource(images, args.seed), None


def backbone_names(spec: str) -> tuple[list[str], dict[str, str]]:
    if spec == "default":
        return default_backbones()
    names = _names(spec)
    registered = set(list_backbones())
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise KeyError(f"unknown backbone(s) {unknown}; registered: {', '.join(sorted(registered))}")
    return names, {}


def run_backbones(args: argparse.Namespace, names: list[str], skipped: dict[str, str], pairs: list[Pair],
                  source: ImageSource, cache: ResumableCSV) -> list[BackboneRun]:
    checkpoints = parse_checkpoints(args.checkpoints)
    distances, wanted_taps = _names(args.distances), _names(args.taps)
    runs = []
    for name in names:
        backbone, reason = build_backbone(name, checkpoints.get(name), args.device)
        if backbone is None:
            print(f"skipped {name}: {reason}")
            skipped[name] = reason
            continue
        run = BackboneRun(name, select_taps(backbone, wanted_taps), tuple(backbone.default_taps), backbone.layout)
        score_backbone(run, backbone, distances, pairs, source, cache, args)
        runs.append(run)
        del backbone
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, skipped = backbone_names(args.backbones)
    distances = _names(args.distances)
    pairs, source, mos_higher = study_pairs(args)
    with ResumableCSV(out / "scores.csv", COLUMNS, KEY, args.stop_after) as cache:
        try:
            runs = run_backbones(args, names, skipped, pairs, source, cache)
        except StopRequested as stop:
            print(stop)
            return 0
        scores = scores_frame(cache, runs, distances, pairs)
    pd.DataFrame(list(skipped.items()), columns=["backbone", "reason"]).to_csv(out / "skipped.csv", index=False)
    if not runs:
        write_summary(pd.DataFrame(columns=TABLE_COLUMNS), pd.DataFrame(), skipped, setup_text(args, pairs),
                      out / "summary.md")
        print("error: no backbone could be built (see the lines above)")
        return 2
    table = layer_table(scores, runs, distances, mos_higher)
    all_taps = all_taps_table(scores, runs, distances, mos_higher)
    table.to_csv(out / "layer_srcc.csv", index=False, float_format="%.6f")
    all_taps.to_csv(out / "all_taps_srcc.csv", index=False, float_format="%.6f")
    plot_curves(table, out, dataset_mode=bool(args.dataset))
    write_summary(table, all_taps, skipped, setup_text(args, pairs), out / "summary.md", bool(args.dataset))
    print((out / "summary.md").read_text())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
