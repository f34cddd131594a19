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
skipped.csv and summary.md. Scoring runs through the engine (iqa_core.engine): DataLoader workers make the distorted
images, the images of one reference go through the backbone in batches (--batch-size), each (tap, distance) cell is
a key of the one store; under ``torchrun --standalone --nproc_per_node=N experiments/fm_layer_study.py ...`` the
references are shared out among the processes and rank 0 writes the tables. Outputs in results/fm_layer_study/
(dataset mode: results/fm_layer_study/<dataset>/): scores.csv (the store: one row per (backbone/tap/distance cell,
pair), keyed by weights, precision, settings and the files' identity; a rerun skips what is there, so an interrupted
run resumes, and a line cut short by a kill is scored again; cells that refuse a pair are in scores.errors.csv),
layer_srcc.csv, all_taps_srcc.csv (the registered all-tap ZS-IQA metric, for comparison, where it is the sum of the
per-tap scores), one PNG per backbone (SRCC vs tap depth, one line per distance) and curves.png (all backbones),
skipped.csv and summary.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core.backbones import TapBackbone, create_backbone, list_backbones  # noqa: E402
from iqa_core.cli import (  # noqa: E402
    RenamedOption,
    device_argument,
    engine_arguments,
    precision_argument,
    run_main,
    warn_renamed_options,
)
from iqa_core.deep_features import TapGrid  # noqa: E402
from iqa_core.distortions import distort  # noqa: E402
from iqa_core.distributed import local_device, world_from_env  # noqa: E402
from iqa_core.engine import GridScorer, PairSource, Plan, current_scores, group_by_reference, score_pairs  # noqa: E402
from iqa_core.engine import Pair as EnginePair  # noqa: E402
from iqa_core.io import load_image  # noqa: E402
from iqa_core.report import markdown_table  # noqa: E402
from iqa_core.resumable_csv import StopRequested  # noqa: E402
from iqa_core.samples import load_samples, sample_images  # noqa: E402
from iqa_core.stats import direction_sign, spearman  # noqa: E402
from iqa_core.store import file_identity  # noqa: E402
from iqa_core.weights import WeightsNotFoundError  # noqa: E402
from zs_iqa.distances import DISTANCES  # noqa: E402
from zs_iqa.metrics import CNN_BACKBONES, FOUNDATION_BACKBONES  # noqa: E402

COLUMNS = ["backbone", "tap", "distance", "image", "distortion", "level", "score"]
SCORE_COLUMNS = ("image", "distortion", "level", "setup", "files")  # the pair key of scores.csv (iqa_core.store)
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
    engine_arguments(p)
    precision_argument(p)
    args = p.parse_args(argv)
    args.precision = args.precision or "fp32"
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


class StudyImages:
    """The pair source's loaders, run in the engine's DataLoader workers: a reference is a resized bundled image
    (samples) or a file (dataset); a distorted image is the reference distorted (seeded) or a file."""

    def __init__(self, images: dict[str, torch.Tensor] | None, seed: int) -> None:
        self.images, self.seed = images, seed

    def reference(self, ref: str) -> torch.Tensor:
        return load_image(ref) if self.images is None else self.images[ref]

    def distorted(self, recipe: tuple[str, int] | Path, ref: torch.Tensor) -> torch.Tensor:
        if isinstance(recipe, Path):
            return load_image(recipe)
        distortion, level = recipe
        return distort(distortion, ref, level, seed=self.seed)


def pair_source(pairs: list[Pair], images: dict[str, torch.Tensor] | None, args: argparse.Namespace) -> PairSource:
    """The study's pairs grouped by reference. Key columns: the pair's name, the settings that change its pixels
    (short side and seed; ``dataset`` for files) and the files' identity."""
    if images is not None:
        setup = f"short_side={args.short_side};seed={args.seed}"
        files = {path.stem: file_identity(path) for path in sample_images()}
        items = ((p.ref, p.ref, EnginePair(row, (p.image, p.distortion, str(p.level), setup, files.get(p.ref, "")),
                                           (p.distortion, p.level))) for row, p in enumerate(pairs, start=1))
    else:
        items = ((p.ref, p.ref, EnginePair(row, (p.image, p.distortion, str(p.level), "dataset",
                                                 f"{file_identity(p.ref)} {file_identity(p.dist_path)}"),
                                           Path(p.dist_path))) for row, p in enumerate(pairs, start=1))
    loaders = StudyImages(images, args.seed)
    return PairSource(SCORE_COLUMNS, group_by_reference(items), loaders.reference, loaders.distorted,
                      identity_columns=("files",))


def score_backbone(run: BackboneRun, backbone: TapBackbone, distances: list[str], source: PairSource,
                   args: argparse.Namespace) -> GridScorer:
    """Every (tap, distance) cell of every pair not yet in scores.csv, through the engine: one backbone pass per
    image, the reference's taps once per reference, the distorted images in batches."""
    scorer = GridScorer(TapGrid(backbone, run.taps, distances, stride=args.stride), name=run.name,
                        precision=args.precision)

    def announce(plan: Plan) -> None:
        print(f"{run.name}: {len(run.taps)} taps x {len(distances)} distances x {plan.pairs} pairs; {plan.todo} of "
              f"{plan.total} scores to compute{plan.where}")

    report = score_pairs([scorer], source, Path(args.out) / "scores.csv", batch_size=args.batch_size,
                         workers=args.workers, stop_after=args.stop_after, announce=announce, desc=run.name)
    if report.failed and report.is_main:
        print(f"{run.name}: {report.summary()}")
    for (tap, distance), reason in scorer.grid.skipped.items():
        print(f"{run.name}: {distance} cannot score tap {tap}: {reason}")
    return scorer


# --------------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------------


def scores_frame(out: Path, scorers: dict[str, GridScorer], source: PairSource, pairs: list[Pair]) -> pd.DataFrame:
    """The stored scores of this study's cells and pairs (older keys' rows of scores.csv are left out), one column per
    cell coordinate, with the MOS."""
    mos = {(p.image, p.distortion, str(p.level)): p.mos for p in pairs}
    frames = []
    for name, scorer in scorers.items():
        frame = current_scores(out / "scores.csv", [scorer], source)
        cells = {key.metric: scorer.cell_of(key) for key in scorer.keys}
        frame["backbone"] = name
        frame["tap"] = [cells[m][0] for m in frame.metric]
        frame["distance"] = [cells[m][1] for m in frame.metric]
        frame["mos"] = [mos[k] for k in zip(frame.image, frame.distortion, frame.level, strict=True)]
        frames.append(frame.astype({"level": int}))
    return pd.concat(frames, ignore_index=True)[[*COLUMNS, "mos"]] if frames else pd.DataFrame(
        columns=[*COLUMNS, "mos"])


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


def study_pairs(args: argparse.Namespace) -> tuple[list[Pair], PairSource, bool | None]:
    if args.dataset:
        pairs, mos_higher = dataset_pairs(args.dataset, args.root, args.limit)
        return pairs, pair_source(pairs, None, args), mos_higher
    images = study_images(args.images, args.short_side)
    levels = [int(v) for v in _names(args.levels)]
    pairs = sample_pairs(images, _names(args.distortions), levels)
    return pairs, pair_source(pairs, images, args), None


def backbone_names(spec: str) -> tuple[list[str], dict[str, str]]:
    if spec == "default":
        return default_backbones()
    names = _names(spec)
    registered = set(list_backbones())
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise KeyError(f"unknown backbone(s) {unknown}; registered: {', '.join(sorted(registered))}")
    return names, {}


def run_backbones(args: argparse.Namespace, names: list[str], skipped: dict[str, str], source: PairSource
                  ) -> tuple[list[BackboneRun], dict[str, GridScorer]]:
    checkpoints = parse_checkpoints(args.checkpoints)
    distances, wanted_taps = _names(args.distances), _names(args.taps)
    device = str(local_device(args.device, world_from_env()))
    runs, scorers = [], {}
    for name in names:
        backbone, reason = build_backbone(name, checkpoints.get(name), device)
        if backbone is None:
            print(f"skipped {name}: {reason}")
            skipped[name] = reason
            continue
        run = BackboneRun(name, select_taps(backbone, wanted_taps), tuple(backbone.default_taps), backbone.layout)
        scorers[name] = score_backbone(run, backbone, distances, source, args)
        runs.append(run)
        del backbone
    return runs, scorers


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
    try:
        runs, scorers = run_backbones(args, names, skipped, source)
    except StopRequested as stop:
        print(stop)
        return 0
    if not world_from_env().is_main:  # under torchrun, rank 0 writes the tables
        return 0
    scores = scores_frame(out, scorers, source, pairs)
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
