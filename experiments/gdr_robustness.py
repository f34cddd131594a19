"""Geometric robustness of FR-IQA metrics (GDR-IQA): how well each metric still orders distortion levels, and
how much its score moves, when the distorted image is also geometrically transformed.

    python experiments/gdr_robustness.py                 # bundled images, about 12 minutes on a 2-core CPU
    python experiments/gdr_robustness.py --quick         # a small sweep, under 3 minutes (CI, quick start)
    python experiments/gdr_robustness.py --metrics all --device cuda
    python experiments/gdr_robustness.py --dataset TID2013 --limit 500   # SRCC/PLCC against MOS instead

Default mode (no dataset): every bundled image (data/samples/) is distorted with each synthetic distortion at
graded levels (iqa_core.distortions), then each geometric transform (iqa_core.transforms: translation,
scale, rotation, perspective, elastic; reflect borders, so sizes are kept) is applied to the distorted image
at each severity, and the metric scores (transformed distorted image, untouched reference). Figures of
merit per (metric, transform, severity):

- srcc: Spearman correlation between the metric's scores and the true distortion levels, pooled over images
  and distortion types, signed so that 1 means "more distortion, worse score" for every metric;
- score_shift: the transform's effect alone, as the median over (image, type, level) of
  |s(T(d), r) - s(d, r)| divided by that (image, type)'s (finite) score range across levels at severity 0: 0.5 means
  the transform moves the score by half the distance between the undistorted and the most distorted image.

Dataset mode: the same sweep over the pairs of a rated dataset; srcc and plcc (raw) against its MOS.

The sweep is a pair source of the scoring engine (iqa_core.engine): DataLoader workers make the distorted and
transformed images while the metrics score, each reference is encoded once per metric, and the images of one
reference go through the backbone in batches (--batch-size).

Outputs in results/gdr_robustness/: scores.csv (every scored pair, keyed by metric, weights, precision, sweep
settings and the files' identity; a rerun skips what is there, so an interrupted run resumes; pairs that cannot
be scored are listed in scores.errors.csv), summary.csv (metric, transform, severity, srcc, score_shift),
summary.md, one PNG per transform, panels.png (all transforms, one line per metric), examples.png (each transform
at each severity) and the CSVs behind every figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core import Metric, WeightsNotFoundError, list_metrics, load_image  # noqa: E402
from iqa_core.cli import device_argument, engine_arguments, run_main  # noqa: E402
from iqa_core.distortions import distort  # noqa: E402
from iqa_core.distributed import local_device, world_from_env  # noqa: E402
from iqa_core.engine import (  # noqa: E402
    MetricScorer,
    Pair,
    PairSource,
    Plan,
    current_scores,
    group_by_reference,
    score_pairs,
)
from iqa_core.metric import create_available_metrics  # noqa: E402
from iqa_core.resumable_csv import StopRequested  # noqa: E402
from iqa_core.samples import load_samples, sample_images  # noqa: E402
from iqa_core.stats import direction_sign, spearman  # noqa: E402
from iqa_core.store import file_identity  # noqa: E402
from iqa_core.transforms import GEOMETRIC_TRANSFORMS, apply_transform  # noqa: E402

# Every family once, within the 15-minute budget on a 2-core CPU; --metrics all runs every available metric.
DEFAULT_METRICS = ["psnr", "ssim", "gmsd", "fsim", "lpips-alex", "lpips-vgg", "dists", "deepssim", "deepwsd-vgg16",
                   "deepjsd-vgg16", "deepwsd-alexnet"]
QUICK_METRICS = ["psnr", "ssim", "lpips-alex", "deepssim", "deepwsd-alexnet"]
NONE = "none"  # the untransformed pair (severity 0), shared by every transform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default="default", help="'default' (the list in this script), 'all' (every "
                   "registered metric whose weights resolve) or comma-separated names")
    p.add_argument("--images", type=int, default=4, help="how many bundled images (sorted by name)")
    p.add_argument("--distortions", default="gaussian_blur,gaussian_noise,jpeg")
    p.add_argument("--levels", default="1,2,3,4,5")
    p.add_argument("--transforms", default=",".join(GEOMETRIC_TRANSFORMS))
    p.add_argument("--severities", default="1,2,3", help="non-zero severities (severity 0 is always scored)")
    p.add_argument("--border", default="reflect", choices=["reflect", "zeros"])
    p.add_argument("--max-side", type=int, default=192, help="downscale the bundled images to this longer side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="rated dataset name (iqa_core.load_dataset): SRCC/PLCC against MOS")
    p.add_argument("--root", help="dataset root")
    p.add_argument("--limit", type=int, help="dataset mode: first N pairs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    p.add_argument("--out", default=str(ROOT / "results" / "gdr_robustness"))
    p.add_argument("--stop-after", type=int, metavar="N", help="stop once N new score rows are written, as if "
                   "interrupted (a rerun resumes); splits a long run over several sessions")
    p.add_argument("--quick", action="store_true", help="2 images, 2 distortions, levels 1,3,5, severities 2,4, "
                   f"metrics {','.join(QUICK_METRICS)}")
    engine_arguments(p)
    args = p.parse_args(argv)
    if args.quick:  # the quick sweep, where the command line kept the defaults
        quick = {"images": 2, "distortions": "gaussian_blur,jpeg", "levels": "1,3,5", "severities": "2,4",
                 "metrics": ",".join(QUICK_METRICS)}
        for name, value in quick.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_metrics(spec: str, device: str) -> dict[str, Metric]:
    names = {"default": DEFAULT_METRICS, "all": list_metrics()}.get(spec) or [n.strip() for n in spec.split(",")]
    metrics, skipped = create_available_metrics(names, device)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    if not metrics:
        raise WeightsNotFoundError("no metric could be built (see the skipped lines above): put the weights in "
                                   "$IQA_WEIGHTS_DIR or choose --metrics that resolve")
    return metrics


def sweep(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(transform, severity) pairs to score; severity 0 once, as transform 'none'."""
    severities = [float(s) for s in args.severities.split(",") if s.strip() and float(s) != 0]
    return [(NONE, 0.0)] + [(t, s) for t in args.transforms.split(",") for s in severities]


SCORE_COLUMNS = ("image", "distortion", "level", "transform", "severity", "sweep", "files")


class SweepImages:
    """The sweep's loaders, run in the engine's DataLoader workers: a reference is a bundled image (samples mode) or
    a file (dataset mode); a distorted image is the reference distorted at a level (samples) or a file (dataset), then
    geometrically transformed. The untransformed image is kept for the transforms that follow it."""

    def __init__(self, args: argparse.Namespace, images: dict[str, torch.Tensor] | None = None) -> None:
        self.seed, self.border, self.images = args.seed, args.border, images
        self._last: tuple[object, torch.Tensor] | None = None

    def reference(self, ref: str | Path) -> torch.Tensor:
        return load_image(ref) if self.images is None else self.images[ref]

    def distorted(self, recipe: tuple, ref: torch.Tensor) -> torch.Tensor:
        base, transform, severity = recipe
        if self._last is None or self._last[0] != base:
            self._last = (base, self._untransformed(base, ref))
        dist = self._last[1]
        if transform != NONE:
            dist = apply_transform(transform, dist, severity, seed=self.seed, border=self.border)
        return dist.clamp(0, 1)

    def _untransformed(self, base: tuple | Path, ref: torch.Tensor) -> torch.Tensor:
        if isinstance(base, Path):
            return load_image(base)
        _, distortion, level = base
        return ref if level == 0 else distort(distortion, ref, level, seed=self.seed)


def _setup(args: argparse.Namespace, samples: bool) -> str:
    """The sweep's settings that change a score, for the store's key."""
    return f"border={args.border};seed={args.seed}" + (f";max_side={args.max_side}" if samples else "")


def samples_source(args: argparse.Namespace, images: dict[str, torch.Tensor]) -> PairSource:
    """Every (image, distortion, level, transform, severity) of the samples sweep, one group per image."""
    levels = [0, *_ints(args.levels)]
    files = {path.stem: file_identity(path) for path in sample_images()}
    setup = _setup(args, samples=True)
    jobs = [(image, d, lv, t, s) for image in images for d in args.distortions.split(",") for lv in levels
            for t, s in sweep(args)]
    items = ((image, image, Pair(row, (image, d, str(lv), t, f"{s:g}", setup, files.get(image, "")),
                                 ((image, d, lv), t, s)))
             for row, (image, d, lv, t, s) in enumerate(jobs, start=1))
    maker = SweepImages(args, images)
    return PairSource(SCORE_COLUMNS, group_by_reference(items), maker.reference, maker.distorted,
                      identity_columns=("files",))


def dataset_source(args: argparse.Namespace, records: list) -> PairSource:
    """Every (record, transform, severity) of the dataset sweep, grouped by reference file."""
    setup = _setup(args, samples=False)
    jobs = [(rec, t, s) for rec in records for t, s in sweep(args)]
    items = ((str(rec.ref), Path(rec.ref),
              Pair(row, (rec.key, "dataset", "0", t, f"{s:g}", setup,
                         f"{file_identity(rec.ref)} {file_identity(rec.dist)}"), (Path(rec.dist), t, s)))
             for row, (rec, t, s) in enumerate(jobs, start=1))
    maker = SweepImages(args)
    return PairSource(SCORE_COLUMNS, group_by_reference(items), maker.reference, maker.distorted,
                      identity_columns=("files",))


def score_sweep(source: PairSource, metrics: dict, out: Path, args: argparse.Namespace, what: str) -> pd.DataFrame:
    """Score the sweep through the engine into scores.csv; the scores of these metrics and this sweep (on rank 0)."""
    scorers = [MetricScorer(metric, name) for name, metric in metrics.items()]

    def announce(plan: Plan) -> None:
        print(f"{what} x {len(metrics)} metrics; {plan.todo} to score ({plan.cached} already in scores.csv)")

    report = score_pairs(scorers, source, out / "scores.csv", batch_size=args.batch_size, workers=args.workers,
                         stop_after=args.stop_after, announce=announce, desc="gdr")
    if not report.is_main:
        return pd.DataFrame()
    if report.failed:
        print(report.summary())
    scores = current_scores(out / "scores.csv", scorers, source)
    return scores.astype({"level": int, "severity": float})


def run_samples(args: argparse.Namespace, metrics: dict, out: Path) -> pd.DataFrame:
    images = dict(list(load_samples(max_side=args.max_side).items())[: args.images])
    what = (f"{len(images)} images x {len(args.distortions.split(','))} distortions x {len(_ints(args.levels)) + 1} "
            f"levels x {len(sweep(args))} (transform, severity)")
    return score_sweep(samples_source(args, images), metrics, out, args, what)


def run_dataset(args: argparse.Namespace, metrics: dict, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, object]:
    from iqa_core.datasets import load_dataset

    dataset = load_dataset(args.dataset, root=args.root)
    records = list(dataset)[: args.limit] if args.limit else list(dataset)
    what = f"{dataset.name}: {len(records)} pairs x {len(sweep(args))} (transform, severity)"
    scores = score_sweep(dataset_source(args, records), metrics, out, args, what)
    labels = pd.DataFrame({"image": [r.key for r in records], "mos": [r.score for r in records]})
    return scores, labels, dataset


def _finite_range(values: pd.Series) -> float:
    """max - min of the finite scores (PSNR is +inf for the undistorted image)."""
    v = values.to_numpy(float)
    v = v[np.isfinite(v)]
    return float(np.ptp(v)) if v.size else float("nan")


def summarise_samples(scores: pd.DataFrame, metrics: dict, args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    base = scores[scores["transform"] == NONE].set_index(["metric", "image", "distortion", "level"])["score"]
    spread = base.groupby(["metric", "image", "distortion"]).agg(_finite_range)
    distorted = scores[scores.level > 0]
    for (metric, transform, severity), group in _by_transform(distorted):
        sign = direction_sign(metrics[metric].higher_is_better, False)  # more distortion = worse score
        srcc = sign * spearman(group.level.to_numpy(float), group.score.to_numpy(float))
        shifts = [abs(r.score - base[(metric, r.image, r.distortion, r.level)]) /
                  max(spread[(metric, r.image, r.distortion)], 1e-12) for r in group.itertuples()]
        rows.append({"metric": metric, "transform": transform, "severity": severity, "srcc": srcc,
                     "score_shift": float(np.median(shifts))})
    return pd.DataFrame(rows)


def summarise_dataset(scores: pd.DataFrame, labels: pd.DataFrame, dataset, metrics: dict) -> pd.DataFrame:
    scores = scores.merge(labels, on="image")
    rows = []
    base = scores[scores["transform"] == NONE].set_index(["metric", "image"])["score"]
    spread = base.groupby("metric").agg(_finite_range)
    for (metric, transform, severity), group in _by_transform(scores):
        sign = direction_sign(metrics[metric].higher_is_better, dataset.score_higher_is_better)
        x, y = group.score.to_numpy(float), group.mos.to_numpy(float)
        shift = np.median([abs(r.score - base[(metric, r.image)]) for r in group.itertuples()]) / spread[metric]
        rows.append({"metric": metric, "transform": transform, "severity": severity,
                     "srcc": sign * spearman(x, y), "plcc": sign * float(stats.pearsonr(x, y)[0]),
                     "score_shift": float(shift)})
    return pd.DataFrame(rows)


def _by_transform(scores: pd.DataFrame):
    """(metric, transform, severity) groups; the untransformed rows count as severity 0 of every transform."""
    transforms = sorted(set(scores["transform"]) - {NONE})
    for metric, per_metric in scores.groupby("metric", sort=False):
        none = per_metric[per_metric["transform"] == NONE]
        for transform in transforms:
            yield (metric, transform, 0.0), none
            for severity, group in per_metric[per_metric["transform"] == transform].groupby("severity"):
                yield (metric, transform, float(severity)), group


def plot_summary(summary: pd.DataFrame, out: Path) -> None:
    transforms = sorted(summary["transform"].unique())
    units = {name: spec.unit.split(" (")[0] for name, spec in GEOMETRIC_TRANSFORMS.items()}
    colours = {m: plt.cm.tab20(i % 20) for i, m in enumerate(summary.metric.unique())}
    fig, axes = plt.subplots(2, len(transforms), figsize=(3.3 * len(transforms), 6.4), squeeze=False)
    for col, transform in enumerate(transforms):
        part = summary[summary["transform"] == transform]
        part.to_csv(out / f"{transform}.csv", index=False)
        single, ax1 = plt.subplots(figsize=(4.5, 3.4))
        for metric, lines in part.groupby("metric", sort=False):
            lines = lines.sort_values("severity")
            style = {"marker": "o", "ms": 3, "label": metric, "color": colours[metric]}
            for ax in (axes[0, col], ax1):
                ax.plot(lines.severity, lines.srcc, **style)
            axes[1, col].plot(lines.severity, lines.score_shift, **style)
        for ax in (axes[0, col], ax1):
            ax.set_title(transform, fontsize=9)
            ax.set_xlabel(f"severity ({units.get(transform, '')})", fontsize=8)
        axes[0, col].set_ylabel("SRCC with distortion level" if col == 0 else "")
        axes[1, col].set_ylabel("score shift (fraction of range)" if col == 0 else "")
        axes[1, col].set_xlabel(f"severity ({units.get(transform, '')})", fontsize=8)
        ax1.set_ylabel("SRCC with distortion level")
        ax1.legend(fontsize=6, ncol=2)
        single.tight_layout()
        single.savefig(out / f"{transform}.png", dpi=110)
        plt.close(single)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "panels.png", dpi=110)
    plt.close(fig)


def plot_examples(image: torch.Tensor, args: argparse.Namespace, out: Path) -> None:
    severities = [float(s) for s in args.severities.split(",") if s.strip()]
    transforms = args.transforms.split(",")
    fig, axes = plt.subplots(len(transforms), len(severities) + 1,
                             figsize=(2.0 * (len(severities) + 1), 1.7 * len(transforms)), squeeze=False)
    for row, name in enumerate(transforms):
        for col, severity in enumerate([0.0, *severities]):
            shown = image if severity == 0 else apply_transform(name, image, severity, seed=args.seed,
                                                                border=args.border)
            axes[row, col].imshow(shown[0].clamp(0, 1).permute(1, 2, 0).numpy())
            axes[row, col].set_title(f"{name} {severity:g} {GEOMETRIC_TRANSFORMS[name].unit}", fontsize=7)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=100)
    plt.close(fig)


def write_markdown(summary: pd.DataFrame, path: Path) -> None:
    pivot = summary.pivot_table(index="metric", columns=["transform", "severity"], values="srcc", sort=False)
    lines = ["# GDR-IQA robustness: SRCC with the distortion level (1 = perfect ordering)", "",
             "| metric | " + " | ".join(f"{t} {s:g}" for t, s in pivot.columns) + " |",
             "|---|" + "---|" * len(pivot.columns)]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for m, row in pivot.iterrows()]
    shift = summary[summary.severity > 0].groupby("metric", sort=False).score_shift.mean()
    lines += ["", "Mean score shift caused by the transforms alone (fraction of the metric's range over "
              "distortion levels; lower is more robust):", "", "| metric | mean score shift |", "|---|---|"]
    lines += [f"| {m} | {v:.3f} |" for m, v in shift.items()]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(args.metrics, str(local_device(args.device, world_from_env())))
    try:
        if args.dataset:
            scores, labels, dataset = run_dataset(args, metrics, out)
        else:
            scores = run_samples(args, metrics, out)
    except StopRequested as stop:
        print(stop)
        return 0
    if not world_from_env().is_main:  # under torchrun, rank 0 writes the summary
        return 0
    if args.dataset:
        summary = summarise_dataset(scores, labels, dataset, metrics)
    else:
        summary = summarise_samples(scores, metrics, args)
        plot_examples(next(iter(load_samples(max_side=args.max_side).values())), args, out)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6f")
    write_markdown(summary, out / "summary.md")
    plot_summary(summary, out)
    print((out / "summary.md").read_text())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
