"""Deep perceptual similarity analysis (after Khatami & Mahmoudi-Aznaveh, IPRIA 2023): one grid over backbones x
taps x comparators, four factors and a figure of merit per cell, accuracy vs ImageNet top-1, and the outliers'
high-frequency content.

    python experiments/dps_analysis.py                  # bundled images, every VGG16/AlexNet tap x 8 comparators
    python experiments/dps_analysis.py --quick          # one backbone, 3 taps, 2 comparators, 2 images (tests)
    python experiments/dps_analysis.py --backbones vgg16,vgg19 --comparators all --device cuda
    python experiments/dps_analysis.py --dataset TID2013 --limit 600 --max-side 256   # accuracy against MOS
    python experiments/dps_analysis.py --factor-weights accuracy=0.55,robustness=0.15,monotonicity=0.15,cost=0.15

Cells: every registered backbone whose weights resolve (the others are listed as skipped, with the reason) x each
of its taps (``--taps``) x each comparator (``--comparators``; default unit-l2, lpips, cos-channel, gram-ssim,
deepwsd, deepjsd, deepskld, dists-uniform); each tap is compared on its own (iqa_core.deep_features.TapGrid).
Cells a comparator cannot score (LPIPS heads on a tap that has none) are listed as skipped.

Data. Default mode: the bundled images (data/samples/, downscaled to ``--max-side``), each distortion type
(``--distortions``) at levels 1..5 (iqa_core.distortions), plus the distorted image at level 1 under each
misalignment (1-4 px translation, 1-2 degree rotation, reflect borders; dps.MISALIGNMENTS). Dataset
mode (``--dataset NAME``): the rated pairs, and the misalignments of each (reference, distortion) sequence's
weakest level. Backbones with a fixed input window (ViTs) see both images upscaled so that the shorter side is
the window.

Factors and merit (formulas in the dps package and the README): accuracy = |SRCC| with the levels (or the MOS);
robustness = 1 / (1 + median r), r = score change under misalignment / score change from level 1 to 2;
monotonicity = fraction of sequences strictly ordered across levels; cost = ms and peak memory per 512x384 pair
on this machine, normalised as 1 / (1 + log10(c / c_min)); merit = weighted geometric mean (``--factor-weights``).

Outputs in results/dps_analysis/: grid.csv, ranking.{csv,md,tex}, heatmap_<backbone>.png (+ .csv),
top1_vs_accuracy.png (+ .csv), outliers.png, outliers.csv, hf_energy.csv, hf_disagreement.png (+
hf_correlation.csv; every cell in hf_correlation_all.csv), skipped.csv, summary.md; scores.csv is the engine's store
(iqa_core.engine: one row per (backbone/tap/comparator cell, pair), keyed by weights, precision, the settings that
change the pixels and the files' identity; cells that refuse a pair in scores.errors.csv) and cost.csv the per-cell
timings: a rerun skips what is there, so an interrupted run resumes, and other settings are scored anew. Under
``torchrun --standalone --nproc_per_node=N experiments/dps_analysis.py ...`` the references are shared out among the
processes; rank 0 measures the costs and writes the analysis.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dps  # noqa: E402
from iqa_core.backbones import backbone_info, create_backbone, list_backbones  # noqa: E402
from iqa_core.cli import (  # noqa: E402
    RenamedOption,
    device_argument,
    engine_arguments,
    run_main,
    warn_renamed_options,
)
from iqa_core.comparators import comparator_info, list_comparators  # noqa: E402
from iqa_core.deep_features import TapGrid  # noqa: E402
from iqa_core.distortions import distort  # noqa: E402
from iqa_core.distributed import local_device, world_from_env  # noqa: E402
from iqa_core.engine import (  # noqa: E402
    GridScorer,
    PairSource,
    Plan,
    current_errors,
    current_scores,
    group_by_reference,
    score_pairs,
)
from iqa_core.engine import Pair as EnginePair  # noqa: E402
from iqa_core.io import load_image  # noqa: E402
from iqa_core.report import markdown_table  # noqa: E402
from iqa_core.resumable_csv import ResumableCSV, StopRequested  # noqa: E402
from iqa_core.samples import load_samples, sample_images, shrink  # noqa: E402
from iqa_core.stats import bootstrap_ci, spearman  # noqa: E402
from iqa_core.store import file_identity  # noqa: E402
from iqa_core.weights import WeightsNotFoundError  # noqa: E402

DEFAULT_COMPARATORS = ["unit-l2", "lpips", "cos-channel", "gram-ssim", "deepwsd", "deepjsd", "deepskld",
                       "dists-uniform"]
DEFAULT_DISTORTIONS = "gaussian_blur,gaussian_noise,jpeg,contrast_change"
DEFAULT_MAX_SIDE = 192  # bundled images' longer side in the default mode (fits the 30-minute CPU budget)
QUICK = {"backbones": "alexnet", "taps": "relu1,relu3,relu5", "comparators": "unit-l2,gram-ssim", "images": 2,
         "distortions": "gaussian_blur,gaussian_noise", "max_side": 128}
KUMAR = ("M. Kumar, N. Houlsby, N. Kalchbrenner, E. D. Cubuk, \"Do better ImageNet classifiers assess perceptual "
         "similarity better?\", TMLR 2022")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="all", help="'all' (every registered backbone; those without weights "
                   "are listed as skipped) or comma-separated names")
    p.add_argument("--taps", default="all", help="'all' or comma-separated tap names (kept where a backbone has them)")
    p.add_argument("--comparators", default="default", help=f"'default' ({','.join(DEFAULT_COMPARATORS)}), 'all' "
                   "or comma-separated names")
    p.add_argument("--images", type=int, default=7, help="default mode: how many bundled images (sorted by name)")
    p.add_argument("--distortions", default=DEFAULT_DISTORTIONS)
    p.add_argument("--levels", default="1,2,3,4,5")
    p.add_argument("--misalignments", default=",".join(dps.MISALIGNMENTS),
                   help="robustness perturbations of the weakest level (dps.MISALIGNMENTS)")
    p.add_argument("--max-side", type=int, default=None, help=f"downscale images to this longer side (default "
                   f"{DEFAULT_MAX_SIDE} for the bundled images, native size for a dataset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="rated dataset name (iqa_core.load_dataset): accuracy against its MOS")
    p.add_argument("--root", help="dataset root")
    p.add_argument("--limit", type=int, help="dataset mode: first N records")
    p.add_argument("--factor-weights", default="", help="weights of the factors in the merit, e.g. accuracy=0.4,"
                   "robustness=0.2,monotonicity=0.2,cost=0.2 (the defaults; unnamed factors keep theirs)")
    p.add_argument("--weights", dest="factor_weights", action=RenamedOption, new_name="--factor-weights")
    p.add_argument("--batch", dest="batch_size", type=int, action=RenamedOption, new_name="--batch-size")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (after one warm-up)")
    p.add_argument("--best", type=int, default=3, help="cells (by merit) in the outlier study")
    p.add_argument("--gallery", type=int, default=6, help="outlier pairs shown in outliers.png")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    p.add_argument("--out", default=str(ROOT / "results" / "dps_analysis"))
    p.add_argument("--stop-after", type=int, metavar="N", help="stop once N new score rows are written, as if "
                   "interrupted (a rerun resumes); splits a long run over several sessions")
    p.add_argument("--quick", action="store_true", help="backbone alexnet, taps relu1,relu3,relu5, comparators "
                   "unit-l2,gram-ssim, 2 images, 2 distortions, 128 px")
    engine_arguments(p)
    args = p.parse_args(argv)
    warn_renamed_options(args)
    if args.quick:  # the quick form, where the command line kept the defaults
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if args.max_side is None and not args.dataset:
        args.max_side = DEFAULT_MAX_SIDE
    args.factor_weight_map = dps.parse_factor_weights(args.factor_weights)
    return args


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """One scored pair: ``ref`` names the reference, ``group`` its (reference, distortion) sequence."""

    key: str
    ref: str
    distortion: str
    level: float
    misalign: str
    mos: float = math.nan
    dist_path: str = ""

    @property
    def group(self) -> str:
        return f"{self.ref}|{self.distortion}"


class SampleSource:
    """Default mode: bundled images, synthetic distortions at graded levels, misalignments of level 1."""

    target = "level"
    target_higher_is_better = False  # a higher level is a worse image
    description = ""

    def __init__(self, args: argparse.Namespace) -> None:
        images = load_samples(max_side=args.max_side)
        self.refs = dict(list(images.items())[: args.images])
        self.seed = args.seed
        distortions, levels = _names(args.distortions), [int(v) for v in _names(args.levels)]
        misalignments = _names(args.misalignments)
        pairs = [Pair(f"{img}|{d}|{lv}|{dps.ALIGNED}", img, d, float(lv), dps.ALIGNED)
                 for img in self.refs for d in distortions for lv in levels]
        pairs += [Pair(f"{img}|{d}|{min(levels)}|{m}", img, d, float(min(levels)), m)
                  for img in self.refs for d in distortions for m in misalignments]
        self.pairs = pairs
        self.files_of = {path.stem: file_identity(path) for path in sample_images()}
        sizes = sorted({f"{x.shape[-1]}x{x.shape[-2]}" for x in self.refs.values()})
        self.description = (f"{len(self.refs)} bundled images ({', '.join(self.refs)}; {', '.join(sizes)} px), "
                            f"{len(distortions)} distortion types ({', '.join(distortions)}) at levels "
                            f"{','.join(map(str, levels))}, and the level-{min(levels)} image under "
                            f"{len(misalignments)} misalignments ({', '.join(misalignments)}): {len(pairs)} pairs")

    def reference(self, name: str) -> torch.Tensor:
        return self.refs[name]

    def distorted(self, pair: Pair) -> torch.Tensor:
        base = distort(pair.distortion, self.refs[pair.ref], int(pair.level), seed=self.seed)
        return dps.misalign(base, pair.misalign)

    def files(self, pair: Pair) -> str:
        """The identity of the pair's files (iqa_core.store.file_identity): the bundled image's."""
        return self.files_of.get(pair.ref, "")


class DatasetSource:
    """Dataset mode: the rated pairs (MOS), and misalignments of each sequence's weakest level."""

    target = "mos"

    def __init__(self, args: argparse.Namespace) -> None:
        from iqa_core.datasets import load_dataset

        dataset = load_dataset(args.dataset, root=args.root)
        records = [r for r in dataset if r.ref is not None]
        records = records[: args.limit] if args.limit else records
        self.max_side = args.max_side
        self.target_higher_is_better = dataset.score_higher_is_better
        self.ref_paths = {str(r.ref): r.ref for r in records}
        pairs = []
        for r in records:
            level = float(r.level) if r.level is not None else math.nan
            pairs.append(Pair(f"{r.key}|{dps.ALIGNED}", str(r.ref), r.distortion, level, dps.ALIGNED, float(r.score),
                              str(r.dist)))
        weakest = self._weakest(pairs)
        misalignments = _names(args.misalignments)
        pairs += [Pair(p.key.rsplit("|", 1)[0] + f"|{m}", p.ref, p.distortion, p.level, m, p.mos, p.dist_path)
                  for p in weakest for m in misalignments]
        self.pairs = pairs
        self.description = (f"{dataset.name} ({len(records)} rated pairs, {dataset.score_kind}; "
                            f"{len(self.ref_paths)} references), plus {len(weakest)} weakest-level images under "
                            f"{len(misalignments)} misalignments: {len(pairs)} pairs")

    @staticmethod
    def _weakest(pairs: list[Pair]) -> list[Pair]:
        """The pairs at the lowest level of each (reference, distortion) sequence that has two levels or more."""
        groups: dict[str, list[Pair]] = {}
        for p in pairs:
            if not math.isnan(p.level):
                groups.setdefault(p.group, []).append(p)
        out = []
        for members in groups.values():
            levels = sorted({p.level for p in members})
            if len(levels) >= 2:
                out += [p for p in members if p.level == levels[0]]
        return out

    def reference(self, name: str) -> torch.Tensor:
        return shrink(load_image(self.ref_paths[name]), self.max_side)

    def distorted(self, pair: Pair) -> torch.Tensor:
        return dps.misalign(shrink(load_image(pair.dist_path), self.max_side), pair.misalign)

    def files(self, pair: Pair) -> str:
        return f"{file_identity(self.ref_paths[pair.ref])} {file_identity(pair.dist_path)}"


# ---------------------------------------------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------------------------------------------

COST_COLUMNS = ["backbone", "tap", "comparator", "cost_ms", "backbone_ms", "compare_ms", "peak_mib", "device"]
COST_KEY = ["backbone", "tap", "comparator", "device"]


def cached_costs(path: Path, backbone: str, grid: TapGrid, device: str, repeats: int) -> pd.DataFrame:
    """The backbone's cells' costs from cost.csv, measuring (and appending) them when some are missing."""
    with ResumableCSV(path, COST_COLUMNS, COST_KEY) as cache:
        if not all((backbone, tap, comp, device) in cache.rows for tap, comp in grid.cells):
            bar = tqdm(total=len(grid.tap_names), desc=f"{backbone} cost (512x384)")
            costs = dps.cell_costs(grid, repeats=repeats, progress=lambda tap: bar.update(1))
            bar.close()
            for row in costs.itertuples(index=False):
                cache.add([backbone, row.tap, row.comparator, repr(row.cost_ms), repr(row.backbone_ms),
                           repr(row.compare_ms), repr(row.peak_mib), device])
        else:
            print(f"{backbone}: costs cached in {path.name}")
        known = pd.DataFrame([r for r in cache if r["backbone"] == backbone and r["device"] == device],
                             columns=COST_COLUMNS)
    for col in ("cost_ms", "backbone_ms", "compare_ms", "peak_mib"):
        known[col] = pd.to_numeric(known[col], errors="coerce")
    return known


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------

def fit_window(x: torch.Tensor, window: int | None) -> torch.Tensor:
    """Upscale (bicubic) so the shorter side is at least a windowed backbone's ``window``; others unchanged."""
    if window is None or min(x.shape[-2:]) >= window:
        return x
    s = window / min(x.shape[-2:])
    size = (max(window, math.ceil(x.shape[-2] * s)), max(window, math.ceil(x.shape[-1] * s)))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


class GridImages:
    """The pair source's loaders (run in the engine's DataLoader workers): the mode's reference and distorted images,
    upscaled to a windowed backbone's window (:func:`fit_window`)."""

    def __init__(self, source: Any, window: int | None) -> None:
        self.source, self.window = source, window

    def reference(self, name: str) -> torch.Tensor:
        return fit_window(self.source.reference(name), self.window)

    def distorted(self, pair: Pair, ref: torch.Tensor) -> torch.Tensor:
        return fit_window(self.source.distorted(pair), self.window)


PAIR_COLUMNS = ("pair", "setup", "files")  # the pair key of scores.csv (iqa_core.store)


def pair_source(source: Any, args: argparse.Namespace, window: int | None) -> PairSource:
    """The mode's pairs grouped by reference, for one backbone. Key columns: the pair's name, the settings that
    change its pixels (dataset, size, seed, the window fit) and the files' identity."""
    setup = f"dataset={args.dataset or '-'};max_side={args.max_side};seed={args.seed};window={window}"
    items = ((pair.ref, pair.ref, EnginePair(row, (pair.key, setup, source.files(pair)), pair))
             for row, pair in enumerate(source.pairs, start=1))
    loaders = GridImages(source, window)
    return PairSource(PAIR_COLUMNS, group_by_reference(items), loaders.reference, loaders.distorted,
                      identity_columns=("files",))


def score_backbone(name: str, grid: TapGrid, source: Any, args: argparse.Namespace
                   ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Score every pair not yet in scores.csv through the engine (the reference's taps once per reference, the
    distorted images in batches, every cell from one backbone pass). Returns this grid's scores and its cells that
    refused an image (a tap too small for its comparator): those are skipped for the whole backbone."""
    scorer = GridScorer(grid, name=name)
    pairs = pair_source(source, args, grid.backbone.window)
    out = Path(args.out) / "scores.csv"

    def announce(plan: Plan) -> None:
        print(f"{name}: {len(grid.cells)} cells ({len(grid.tap_names)} taps x comparators, {len(grid.skipped)} "
              f"skipped); {plan.pairs_todo} of {plan.pairs} pairs to score{plan.where}")

    score_pairs([scorer], pairs, out, batch_size=args.batch_size, workers=args.workers, stop_after=args.stop_after,
                announce=announce, desc=name)
    if not world_from_env().is_main:
        return pd.DataFrame(), []
    refused = current_errors(out, [scorer], pairs).drop_duplicates("metric")
    cells = {key.metric: scorer.cell_of(key) for key in scorer.keys}
    skipped = []
    for metric, reason in zip(refused.metric, refused.reason, strict=True):
        tap, comparator = cells[metric]
        print(f"skipped cell {name} {tap} {comparator}: {reason}")
        grid.cells.pop((tap, comparator))
        grid.skipped[(tap, comparator)] = reason
        skipped.append({"kind": "cell", "backbone": name, "tap": tap, "comparator": comparator, "reason": reason})
    scores = current_scores(out, [scorer], pairs)
    scores = scores[~scores.metric.isin(set(refused.metric))]
    return pd.DataFrame({"backbone": name, "tap": [cells[m][0] for m in scores.metric],
                         "comparator": [cells[m][1] for m in scores.metric], "pair": scores["pair"],
                         "score": scores.score}), skipped


def build_grid(name: str, taps: str, comparators: list[str], device: str) -> TapGrid:
    backbone = create_backbone(name).to(device)
    wanted = None if taps == "all" else [t for t in _names(taps) if t in backbone.taps]
    if wanted == []:
        raise KeyError(f"none of the taps {taps} belongs to {name} (its taps: {', '.join(backbone.default_taps)})")
    return TapGrid(backbone, wanted, comparators).to(device)


# ---------------------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------------------

def pairs_frame(source: Any) -> pd.DataFrame:
    df = pd.DataFrame([asdict(p) for p in source.pairs])
    df["group"] = df.ref + "|" + df.distortion
    return df.rename(columns={"key": "pair"})


def grid_table(scores: pd.DataFrame, pairs: pd.DataFrame, costs: pd.DataFrame, source: Any,
               tap_order: dict[str, list[str]]) -> pd.DataFrame:
    """One row per cell: the factors (dps.cell_factors) and the cost."""
    data = scores.merge(pairs, on="pair")
    rows = []
    for (backbone, tap, comp), part in data.groupby(["backbone", "tap", "comparator"], sort=False):
        hib = comparator_info(comp).higher_is_better
        f = dps.cell_factors(part, hib, source.target, source.target_higher_is_better)
        rows.append({"backbone": backbone, "tap": tap, "comparator": comp, **f})
    grid = pd.DataFrame(rows).merge(costs[["backbone", "tap", "comparator", "cost_ms", "peak_mib"]],
                                    on=["backbone", "tap", "comparator"], how="left")
    order = {(b, t): i for b, taps in tap_order.items() for i, t in enumerate(taps)}
    grid["_tap"] = [order.get((b, t), 99) for b, t in zip(grid.backbone, grid.tap, strict=True)]
    return grid.sort_values(["backbone", "_tap", "comparator"]).drop(columns="_tap").reset_index(drop=True)


GRID_COLUMNS = ["backbone", "tap", "comparator", "accuracy", "robustness", "monotonicity", "cost_ms", "merit",
                "cost_score", "srcc", "peak_mib", "n_pairs", "n_sequences", "n_misaligned"]


def _markdown(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    def cell(v: Any) -> str:
        return floats.format(v) if isinstance(v, float) else str(v)

    return markdown_table(df, cell)


RANK_COLUMNS = ["rank", "backbone", "tap", "comparator", "merit", "accuracy", "robustness", "monotonicity",
                "cost_ms", "peak_mib"]


def write_ranking(ranking: pd.DataFrame, out: Path, factor_weights: dict[str, float]) -> None:
    shown = ranking[RANK_COLUMNS]
    shown.to_csv(out / "ranking.csv", index=False, float_format="%.6f")
    w = ", ".join(f"{k} {v:g}" for k, v in factor_weights.items())
    (out / "ranking.md").write_text(f"# DPS cells ranked by merit (factor weights: {w})\n\n{_markdown(shown)}\n")
    (out / "ranking.tex").write_text(shown.to_latex(index=False, float_format="%.3f"))


def plot_heatmaps(grid: pd.DataFrame, out: Path, tap_order: dict[str, list[str]]) -> list[Path]:
    paths = []
    for backbone, part in grid.groupby("backbone", sort=False):
        table = part.pivot(index="tap", columns="comparator", values="merit")
        table = table.reindex([t for t in tap_order.get(backbone, table.index) if t in table.index])
        table.to_csv(out / f"heatmap_{backbone}.csv", float_format="%.6f")
        fig, ax = plt.subplots(figsize=(1.0 * table.shape[1] + 2.5, 0.5 * table.shape[0] + 1.8))
        image = ax.imshow(table.to_numpy(float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(table.to_numpy(float)):
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if np.isnan(v) or v < 0.55 else "black")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
        ax.set_title(f"{backbone}: figure of merit per tap x comparator", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
        fig.tight_layout()
        path = out / f"heatmap_{backbone}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """(Spearman, bootstrap 95 % low, high); NaN where undefined (fewer than 3 points or a constant side)."""
    rho = spearman(x, y)
    if math.isnan(rho):
        return math.nan, math.nan, math.nan
    try:
        low, high = bootstrap_ci(x, y, "srcc", n_boot=n_boot, seed=seed)
    except ValueError:
        low = high = math.nan
    return rho, low, high


def top1_study(grid: pd.DataFrame, tap_order: dict[str, list[str]], out: Path, args: argparse.Namespace
               ) -> dict[str, Any]:
    """Per backbone: ImageNet top-1 against the best cell's and the last tap's accuracy; Spearman if n >= 3."""
    rows = []
    for backbone, part in grid.groupby("backbone", sort=False):
        info = backbone_info(backbone)
        best = part.loc[part.accuracy.idxmax()]
        last_tap = [t for t in tap_order[backbone] if t in set(part.tap)][-1]
        last = part[part.tap == last_tap].sort_values("accuracy").iloc[-1]
        rows.append({"backbone": backbone, "top1": info.top1, "top1_source": info.top1_source,
                     "best_accuracy": best.accuracy, "best_cell": f"{best.tap}/{best.comparator}",
                     "last_tap": last_tap, "last_tap_accuracy": last.accuracy, "last_tap_comparator": last.comparator})
    table = pd.DataFrame(rows)
    table.to_csv(out / "top1_vs_accuracy.csv", index=False, float_format="%.6f")
    known = table.dropna(subset=["top1"])
    result: dict[str, Any] = {"table": table, "n": len(known)}
    for col in ("best_accuracy", "last_tap_accuracy"):
        rho, low, high = _spearman_ci(known.top1.to_numpy(float), known[col].to_numpy(float), args.n_boot, args.seed)
        result[col] = (rho, low, high)
    fig, ax = plt.subplots(figsize=(5.2, 4))
    ax.scatter(known.top1, known.best_accuracy, marker="o", label="best cell")
    ax.scatter(known.top1, known.last_tap_accuracy, marker="s", label="last tap (best comparator)")
    for r in known.itertuples():
        ax.annotate(r.backbone, (r.top1, r.best_accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
    rho, low, high = result["best_accuracy"]
    if len(known) < 3:
        title = f"{len(known)} backbone(s) with weights: a rank correlation needs at least 3"
    else:
        title = f"Spearman (best cell) {rho:.2f}, 95% CI [{low:.2f}, {high:.2f}], n = {len(known)}"
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("ImageNet top-1 (%)")
    ax.set_ylabel(f"accuracy (|SRCC| with {'MOS' if args.dataset else 'distortion level'})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "top1_vs_accuracy.png", dpi=110)
    plt.close(fig)
    return result


def _disagreement(part: pd.DataFrame, hib: bool, source: Any) -> tuple[np.ndarray | None, str]:
    if source.target == "mos":
        return dps.logistic_disagreement(part.score.to_numpy(float), part.mos.to_numpy(float))
    return dps.rank_disagreement(part.score, part.level, part.distortion, hib), "rank error within distortion type"


def outlier_study(ranking: pd.DataFrame, scores: pd.DataFrame, pairs: pd.DataFrame, source: Any, out: Path,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Disagreement of the best cells' aligned pairs against the references' high-frequency energy share."""
    refs = sorted(pairs.ref.unique())
    hf_rows = []
    for ref in refs:
        image = source.reference(ref)
        bands = dps.band_energy_shares(image)
        edges = dps.BAND_EDGES
        hf_rows.append({"image": ref, "height": image.shape[-2], "width": image.shape[-1],
                        "hf_share": dps.hf_energy_share(image),
                        **{f"band_{edges[k]:.3f}_{edges[k + 1]:.3f}": v for k, v in enumerate(bands)}})
    hf = pd.DataFrame(hf_rows)
    hf_of = dict(zip(hf.image, hf.hf_share, strict=True))
    median_hf = np.median(list(hf_of.values()))
    rich = {r for r, v in hf_of.items() if v > median_hf}
    aligned = pairs[pairs.misalign == dps.ALIGNED]
    rows, corr, messages, every = [], [], [], []
    best = set(ranking.head(args.best).index)
    merged = scores.merge(aligned, on="pair")
    by_cell = dict(list(merged.groupby(["backbone", "tap", "comparator"], sort=False)))
    for index, cell in ranking.iterrows():
        label = f"{cell.backbone}/{cell.tap}/{cell.comparator}"
        part = by_cell.get((cell.backbone, cell.tap, cell.comparator), merged.iloc[:0]).reset_index(drop=True)
        values, message = _disagreement(part, comparator_info(cell.comparator).higher_is_better, source)
        if values is None:
            messages.append(f"{label}: {message}; no outlier analysis for this cell")
            continue
        part = part.assign(cell=label, rank=cell["rank"], disagreement=values, hf_share=part.ref.map(hf_of))
        stats_row = _hf_correlation(part, rich, args, with_images=index in best)
        every.append({"rank": cell["rank"], "cell": label, **stats_row, "disagreement": message})
        if index in best:
            rows.append(part)
            corr.append(every[-1])
    detail = pd.concat(rows) if rows else pd.DataFrame()
    correlation = pd.DataFrame(corr)
    if not detail.empty:
        best_label = detail.cell.iloc[0]
        mean_dis = detail[detail.cell == best_label].groupby("ref").disagreement.mean()
        hf["mean_disagreement_best_cell"] = hf.image.map(mean_dis)
        keep = ["rank", "cell", "pair", "ref", "distortion", "level", "score", "disagreement", "hf_share"]
        detail = detail[keep + (["mos"] if source.target == "mos" else [])].sort_values(
            ["rank", "disagreement"], ascending=[True, False])
        detail.to_csv(out / "outliers.csv", index=False, float_format="%.6f")
    hf.to_csv(out / "hf_energy.csv", index=False, float_format="%.6f")
    correlation.to_csv(out / "hf_correlation.csv", index=False, float_format="%.6f")
    all_cells = pd.DataFrame(every)
    all_cells.to_csv(out / "hf_correlation_all.csv", index=False, float_format="%.6f")
    plot_hf_scatter(detail, correlation, out)
    plot_gallery(detail, source, out, args.gallery)
    base_rate = float(aligned.ref.isin(rich).mean())
    return {"hf": hf, "correlation": correlation, "all": all_cells, "detail": detail, "messages": messages,
            "rich": rich, "base_rate": base_rate}


def _hf_correlation(part: pd.DataFrame, rich: set[str], args: argparse.Namespace, with_images: bool
                    ) -> dict[str, Any]:
    """Spearman(HF share, disagreement) over the pairs (bootstrap CI), over the images' mean disagreement (for the
    best cells), and the share of the worst decile of pairs that come from HF-rich images."""
    rho, low, high = _spearman_ci(part.hf_share.to_numpy(float), part.disagreement.to_numpy(float), args.n_boot,
                                  args.seed)
    worst = part.nlargest(max(1, math.ceil(len(part) / 10)), "disagreement")
    out = {"n_pairs": len(part), "srcc_pairs": rho, "ci_low": low, "ci_high": high,
           "worst_decile_from_hf_rich": float(worst.ref.isin(rich).mean())}
    if with_images:
        per_image = part.groupby("ref").agg(disagreement=("disagreement", "mean"), hf_share=("hf_share", "first"))
        rho_i, low_i, high_i = _spearman_ci(per_image.hf_share.to_numpy(float),
                                            per_image.disagreement.to_numpy(float), args.n_boot, args.seed)
        out.update(n_images=len(per_image), srcc_images=rho_i, ci_images_low=low_i, ci_images_high=high_i)
    return out


def plot_hf_scatter(detail: pd.DataFrame, correlation: pd.DataFrame, out: Path) -> None:
    cells = list(dict.fromkeys(detail.cell)) if not detail.empty else []
    fig, axes = plt.subplots(1, max(1, len(cells)), figsize=(4 * max(1, len(cells)), 3.4), squeeze=False)
    for ax, label in zip(axes[0], cells, strict=False):
        part = detail[detail.cell == label]
        ax.scatter(part.hf_share, part.disagreement, s=9, alpha=0.6)
        c = correlation[correlation.cell == label].iloc[0]
        ax.set_title(f"{label}\nSpearman {c.srcc_pairs:.2f} [{c.ci_low:.2f}, {c.ci_high:.2f}]", fontsize=8)
        ax.set_xlabel("reference high-frequency energy share", fontsize=8)
        ax.set_ylabel("disagreement", fontsize=8)
    if not cells:
        axes[0, 0].set_title("no outlier analysis (see summary.md)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "hf_disagreement.png", dpi=110)
    plt.close(fig)


def _log_spectrum(image: torch.Tensor) -> np.ndarray:
    power, _ = dps.power_spectrum(image)
    return np.fft.fftshift(np.log10(power + 1e-12))


def plot_gallery(detail: pd.DataFrame, source: Any, out: Path, n: int) -> None:
    """The worst pairs of the best cells (distinct pairs): reference, distorted image, and their log spectra with
    the high-frequency cut-off drawn."""
    worst = detail.sort_values("disagreement", ascending=False).drop_duplicates("pair").head(n) \
        if not detail.empty else detail
    rows = max(1, len(worst))
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.4 * rows), squeeze=False)
    lookup = {p.key: p for p in source.pairs}
    for i, r in enumerate(worst.itertuples()):
        ref, dist = source.reference(r.ref), source.distorted(lookup[r.pair])
        panels = [(ref[0].permute(1, 2, 0).numpy(), f"{r.ref} (HF share {r.hf_share:.2f})"),
                  (dist[0].permute(1, 2, 0).numpy(), f"{r.distortion} level {r.level:g}: disagreement "
                                                     f"{r.disagreement:.2f}"),
                  (_log_spectrum(ref), "reference log power spectrum"),
                  (_log_spectrum(dist), f"distorted spectrum ({r.cell})")]
        for j, (data, title) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(data, cmap="magma" if j >= 2 else None)
            ax.set_title(title, fontsize=6.5)
            ax.axis("off")
            if j >= 2:
                h, w = data.shape
                ax.add_patch(Ellipse((w / 2, h / 2), 2 * dps.HF_CUTOFF * w, 2 * dps.HF_CUTOFF * h, fill=False,
                                     color="cyan", lw=0.8, ls="--"))
    if worst.empty:
        axes[0, 0].set_title("no outlier analysis (see summary.md)", fontsize=8)
    fig.suptitle("Worst outliers of the best cells (dashed: the high-frequency cut-off, 1/4 cycle/pixel)",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / rows))
    fig.savefig(out / "outliers.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------------

def _fmt_ci(rho: float, low: float, high: float) -> str:
    return "undefined" if math.isnan(rho) else f"{rho:+.2f} (95 % bootstrap CI [{low:+.2f}, {high:+.2f}])"


def summary_lines(ranking: pd.DataFrame, top1: dict[str, Any], outliers: dict[str, Any], skipped: pd.DataFrame,
                  source: Any, args: argparse.Namespace, elapsed: float) -> list[str]:
    target = "the MOS" if args.dataset else "the distortion level"
    lines = ["# Deep perceptual similarity analysis: summary", "",
             f"Data: {source.description}. Device: {args.device}, {torch.get_num_threads()} threads. This invocation "
             f"took {elapsed / 60:.1f} min wall, {time.process_time() / 60:.1f} min process CPU time (cached pairs "
             f"are not rescored); load average {_load()} at the end (costs are wall times, inflated when other jobs "
             "share the machine).", "",
             "Merit = weighted geometric mean of accuracy, robustness, monotonicity and normalised cost (factor "
             "weights " + ", ".join(f"{k} {v:g}" for k, v in args.factor_weight_map.items()) + ").", ""]
    skipped_bb = skipped[skipped.kind == "backbone"]
    ran = list(dict.fromkeys(ranking.backbone))
    lines += [f"Backbones scored: {', '.join(ran)} ({len(ranking)} cells)."]
    if len(skipped_bb):
        lines += [f"Backbones skipped ({len(skipped_bb)}): "
                  + "; ".join(f"{r.backbone} ({_short(r.reason)})" for r in skipped_bb.itertuples())
                  + ". Full reasons in skipped.csv."]
    lines += ["", "## Ranking (top 10)", "", _markdown(ranking[RANK_COLUMNS].head(10)), ""]
    best = ranking.iloc[0]
    lines += [f"Best cell: {best.backbone} {best.tap} {best.comparator}, merit {best.merit:.3f} (accuracy "
              f"{best.accuracy:.3f}, robustness {best.robustness:.3f}, monotonicity {best.monotonicity:.3f}, "
              f"{best.cost_ms:.0f} ms per 512x384 pair). Most accurate cell: "
              + _cell_text(ranking.loc[ranking.accuracy.idxmax()]) + ".", ""]
    for comp, part in ranking.groupby("comparator"):
        top = part.iloc[0]
        lines.append(f"- {comp}: best {top.backbone} {top.tap} (merit {top.merit:.3f}, accuracy {top.accuracy:.3f})")
    lines += ["", "## Claim 1: ImageNet top-1 vs perceptual accuracy", ""]
    lines += [f"- {r.backbone}: top-1 {r.top1:.2f} % ({r.top1_source}); best-cell accuracy {r.best_accuracy:.3f} "
              f"({r.best_cell}); last tap {r.last_tap} accuracy {r.last_tap_accuracy:.3f} ({r.last_tap_comparator})"
              for r in top1["table"].itertuples()]
    if top1["n"] < 3:
        lines += ["", f"Only {top1['n']} backbone(s) with weights: a rank correlation between top-1 and accuracy over "
                  "fewer than three points is not informative, so none is claimed here. Add backbones (weights "
                  "in $IQA_WEIGHTS_DIR) to test the claim."]
    else:
        lines += ["", f"Spearman(top-1, best-cell accuracy) = {_fmt_ci(*top1['best_accuracy'])}; "
                  f"Spearman(top-1, last-tap accuracy) = {_fmt_ci(*top1['last_tap_accuracy'])}; n = {top1['n']}."]
    lines += [f"Published comparison: {KUMAR} found that better ImageNet classifiers do not assess perceptual "
              "similarity better: perceptual scores follow an inverse-U in ImageNet accuracy, and changes that raise "
              "accuracy past a point (more depth, width or training steps) lower them.", "",
              "## Claim 2: outliers and high-frequency content", "",
              f"Disagreement with {target}: " + ("|MOS - logistic fit| / std(MOS)" if args.dataset else
                                                 "rank error within each distortion type")
              + f"; high-frequency share = spectral energy at >= {dps.HF_CUTOFF} cycles/pixel of the reference "
              "luminance (Hann window, DC excluded): "
              + ", ".join(f"{r.image} {r.hf_share:.3f}" for r in outliers["hf"].sort_values("hf_share").itertuples())
              + ". Images with a share above the median count as HF-rich: "
              + (", ".join(sorted(outliers["rich"])) or "none") + ".", ""]
    for c in outliers["correlation"].itertuples():
        lines.append(f"- {c.cell} (rank {c.rank}): Spearman(HF share, disagreement) over {c.n_pairs} pairs = "
                     f"{_fmt_ci(c.srcc_pairs, c.ci_low, c.ci_high)}; over {c.n_images} images (mean disagreement) "
                     f"= {_fmt_ci(c.srcc_images, c.ci_images_low, c.ci_images_high)}; "
                     f"{100 * c.worst_decile_from_hf_rich:.0f} % of the worst decile of pairs come from HF-rich "
                     "images.")
    lines += [f"- {m}" for m in outliers["messages"]]
    every = outliers["all"]
    if len(every):
        positive = int((every.ci_low > 0).sum())
        negative = int((every.ci_high < 0).sum())
        lines += ["", f"Across all {len(every)} cells: median Spearman(HF share, disagreement) "
                  f"{every.srcc_pairs.median():+.2f} (range {every.srcc_pairs.min():+.2f} to "
                  f"{every.srcc_pairs.max():+.2f}); the 95 % interval lies above 0 in {positive} cells and below 0 in "
                  f"{negative}; the worst decile of pairs comes from HF-rich images in "
                  f"{100 * every.worst_decile_from_hf_rich.median():.0f} % of cases (median over cells), against "
                  f"{100 * outliers['base_rate']:.0f} % of all pairs (hf_correlation_all.csv)."]
    lines += ["", "Files: grid.csv, ranking.{csv,md,tex}, heatmap_<backbone>.png, top1_vs_accuracy.png, "
              "outliers.png, outliers.csv, hf_energy.csv, hf_disagreement.png, hf_correlation.csv, "
              "hf_correlation_all.csv, skipped.csv."]
    return lines


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


def _cell_text(r: pd.Series) -> str:
    return f"{r.backbone} {r.tap} {r.comparator} (accuracy {r.accuracy:.3f}, merit {r.merit:.3f})"


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

def comparator_names(spec: str) -> list[str]:
    names = {"default": DEFAULT_COMPARATORS, "all": list_comparators()}.get(spec) or _names(spec)
    for name in names:
        comparator_info(name)  # unknown names raise here, before any work
    return names


def run_backbones(args: argparse.Namespace, source: Any, out: Path
                  ) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, str]], dict[str, list[str]]]:
    """Every backbone's grid scored (all ranks) and, on rank 0, its costs measured; the scores, costs, skipped
    backbones and cells, and each backbone's taps in depth order."""
    names = list_backbones() if args.backbones == "all" else _names(args.backbones)
    comparators = comparator_names(args.comparators)
    main = world_from_env().is_main
    device = str(local_device(args.device, world_from_env()))
    scores, costs, skipped, tap_order = [], [], [], {}
    for name in names:
        try:
            grid = build_grid(name, args.taps, comparators, device)
        except (WeightsNotFoundError, ImportError, KeyError) as err:
            reason = str(err.args[0] if err.args else err).splitlines()[0]
            print(f"skipped {name}: {reason}")
            skipped.append({"kind": "backbone", "backbone": name, "tap": "", "comparator": "", "reason": reason})
            continue
        skipped += [{"kind": "cell", "backbone": name, "tap": t, "comparator": c, "reason": r}
                    for (t, c), r in grid.skipped.items()]
        tap_order[name] = list(grid.tap_names)
        cells, refused = score_backbone(name, grid, source, args)
        skipped += refused
        if main:  # costs are this machine's timings: measured once, by rank 0
            cost = cached_costs(out / "cost.csv", name, grid, args.device, args.repeats)
            costs.append(cost[cost.apply(lambda r, g=grid: (r.tap, r.comparator) in g.cells, axis=1)])
            scores.append(cells)
        del grid
    if not tap_order:
        raise WeightsNotFoundError("no backbone could be built (see the skipped list above): put its weights in "
                                   "$IQA_WEIGHTS_DIR or choose --backbones that resolve")
    return (pd.concat(scores) if scores else pd.DataFrame(), pd.concat(costs) if costs else pd.DataFrame(), skipped,
            tap_order)


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source: Any = DatasetSource(args) if args.dataset else SampleSource(args)
    print(source.description)
    try:
        scores, costs, skipped_rows, tap_order = run_backbones(args, source, out)
    except StopRequested as stop:
        print(stop)
        return 0
    if not world_from_env().is_main:  # under torchrun, rank 0 writes the analysis
        return 0
    skipped = pd.DataFrame(skipped_rows, columns=["kind", "backbone", "tap", "comparator", "reason"])
    skipped.to_csv(out / "skipped.csv", index=False)
    pairs = pairs_frame(source)
    grid = grid_table(scores, pairs, costs, source, tap_order)
    ranking = dps.rank_cells(grid, args.factor_weight_map)
    grid = grid.merge(ranking[["backbone", "tap", "comparator", "merit", "cost_score"]],
                      on=["backbone", "tap", "comparator"])
    grid[GRID_COLUMNS].to_csv(out / "grid.csv", index=False, float_format="%.6f")
    write_ranking(ranking, out, args.factor_weight_map)
    plot_heatmaps(grid, out, tap_order)
    top1 = top1_study(grid, tap_order, out, args)
    outliers = outlier_study(ranking, scores, pairs, source, out, args)
    lines = summary_lines(ranking, top1, outliers, skipped, source, args, time.time() - started)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
