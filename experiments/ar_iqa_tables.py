"""Aligned-reference IQA tables: score every pair of a rated dataset with each metric, then SRCC / KRCC /
PLCC (raw and after the 5-parameter logistic fit) / RMSE against the subjective scores, beside the values
published by the papers' authors where they exist.

    python experiments/ar_iqa_tables.py --dataset tid2013 --metrics deepssim,deepwsd-vgg16,lpips-vgg
    python experiments/ar_iqa_tables.py --dataset live,csiq --metrics all --device cuda
    python experiments/ar_iqa_tables.py --dataset kadid10k --root /data/kadid10k --metrics deepssim

    torchrun --standalone --nproc_per_node=4 experiments/ar_iqa_tables.py --dataset kadid10k --metrics deepssim

Datasets are read from their official layouts under data/<name>/ (or --root); a missing dataset gets a
message that says where to put it. Pairs are scored by the engine (iqa_core.engine: a DataLoader decodes them,
each reference is encoded once per metric, distorted images of one size go through the backbone as a batch, and
under torchrun the reference groups are shared out among the processes). Per-image predictions are appended to
results/ar_iqa/<dataset>_predictions.csv (the store of iqa_core.store) as they are computed; a rerun skips every
(metric, image) already there with the same weights, options, precision and files, so an interrupted run resumes;
images that cannot be scored are listed in <dataset>_predictions.errors.csv. Outputs in results/ar_iqa/:
<dataset>_predictions.csv, table.csv / table.md / table.tex (with a bootstrap 95 % interval of the SRCC),
by_distortion.csv (SRCC and logistic PLCC per distortion type), and <dataset>_<metric>_scatter.png with the
fitted logistic curve (the predictions CSV is the data behind each scatter plot).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core import WeightsNotFoundError, list_metrics  # noqa: E402
from iqa_core.cli import device_argument, engine_arguments, precision_argument, run_main  # noqa: E402
from iqa_core.datasets import DatasetNotFoundError, load_dataset  # noqa: E402
from iqa_core.distributed import local_device, world_from_env  # noqa: E402
from iqa_core.engine import MetricScorer, Plan, current_scores, pairs_from_records, score_pairs  # noqa: E402
from iqa_core.metric import create_available_metrics  # noqa: E402
from iqa_core.report import markdown_table  # noqa: E402
from iqa_core.resumable_csv import StopRequested  # noqa: E402
from iqa_core.stats import bootstrap_ci, correlations, logistic5, per_group  # noqa: E402

PUBLISHED = ROOT / "data" / "published" / "published_correlations.csv"
QUICK_METRICS = ["psnr", "ssim", "deepssim"]
STAT_KEYS = ["srcc", "krcc", "plcc", "plcc_logistic", "rmse"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="dataset name(s), comma-separated (e.g. live,csiq,tid2013)")
    p.add_argument("--metrics", default="all", help="registry names, comma-separated, or 'all' (those whose "
                   "weights resolve)")
    p.add_argument("--root", help="dataset root (one dataset only; default data/<name>)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    p.add_argument("--limit", type=int, help="score only the first N pairs of each dataset")
    p.add_argument("--out", default=str(ROOT / "results" / "ar_iqa"))
    p.add_argument("--stop-after", type=int, metavar="N", help="stop once N new predictions are written, as if "
                   "interrupted (a rerun resumes); splits a long run over several sessions")
    p.add_argument("--quick", action="store_true", help=f"metrics {','.join(QUICK_METRICS)}, first 40 pairs")
    engine_arguments(p)
    precision_argument(p)
    args = p.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 40
        if args.metrics == "all":
            args.metrics = ",".join(QUICK_METRICS)
    return args


def build_metrics(names: str, device: str, precision: str = "fp32") -> dict[str, MetricScorer]:
    """Every requested metric that can be built here, as the engine's scorers; the others are listed with the
    reason."""
    wanted = list_metrics() if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    metrics, skipped = create_available_metrics(wanted, str(local_device(device, world_from_env())))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not metrics:
        raise WeightsNotFoundError("no metric could be built (see the skipped lines above): put the weights in "
                                   "$IQA_WEIGHTS_DIR or choose --metrics that resolve")
    return {name: MetricScorer(metric, name, precision=precision) for name, metric in metrics.items()}


def score_dataset(dataset, records: list, scorers: dict[str, MetricScorer], predictions: Path,
                  stop_after: int | None = None, batch_size: int = 8, workers: int = 1) -> int:
    """Score every (metric, pair) not yet in ``predictions`` through the engine. Returns the rows written (by all
    processes of a torchrun run)."""
    def announce(plan: Plan) -> None:
        print(f"{dataset.name}: {len(records)} pairs x {len(scorers)} metrics, {plan.todo} predictions to compute "
              f"({plan.cached} cached in {predictions})")

    report = score_pairs(list(scorers.values()), pairs_from_records(records, dataset.root), predictions,
                         batch_size=batch_size, workers=workers, stop_after=stop_after, announce=announce,
                         desc=dataset.name)
    if report.failed and report.is_main:
        print(f"{dataset.name}: {report.summary()}", file=sys.stderr)
    return report.scored


def published_values() -> pd.DataFrame:
    if not PUBLISHED.is_file():
        return pd.DataFrame()
    table = pd.read_csv(PUBLISHED)
    return table[table["subset"].isin(["all", "distorted_779"])]


def published_row(published: pd.DataFrame, dataset_name: str, metric: str) -> dict | None:
    """The authors' correlations for (dataset, metric), when they published predictions for it."""
    if published.empty:
        return None
    method = metric.replace("-", "_")
    rows = published[(published["dataset"] == dataset_name) & (published["method"] == method)
                     & (published["table"] == "deepwsd_tip2024")]
    return rows.iloc[0].to_dict() if len(rows) else None


def summarise(dataset, records: list, metrics: dict[str, MetricScorer], predictions: Path,
              published: pd.DataFrame, out: Path, breakdown: list[dict]) -> list[dict]:
    """One table row per metric (plus ``breakdown`` rows per distortion type) and a scatter plot each, from the
    predictions of exactly these metrics (weights, options, precision) and files."""
    preds = current_scores(predictions, list(metrics.values()), pairs_from_records(records, dataset.root))
    mos = {r.key: r.score for r in records}
    distortion = {r.key: r.distortion for r in records}
    rows = []
    for name, metric in metrics.items():
        sub = preds[(preds["metric"] == name) & preds["dist"].isin(mos)]
        if len(sub) < 3:
            continue
        x, y = sub["score"].to_numpy(float), sub["dist"].map(mos).to_numpy(float)
        stats = correlations(x, y)
        # Report magnitudes with the sign that means "agrees with humans" (metric and label directions).
        sign = 1.0 if metric.metric.higher_is_better == dataset.score_higher_is_better else -1.0
        row = {"dataset": dataset.name, "metric": name, "n": len(sub), "fit_ok": stats["fit_ok"],
               **{k: sign * stats[k] if k != "rmse" else stats[k] for k in STAT_KEYS}}
        low, high = sorted(sign * v for v in bootstrap_ci(x, y, "srcc", n_boot=1000, seed=0))
        row.update({"srcc_ci95_low": low, "srcc_ci95_high": high})
        groups = sub["dist"].map(distortion).to_numpy()
        for group, g_stats in per_group(x, y, groups).items():
            breakdown.append({"dataset": dataset.name, "metric": name, "distortion": group, "n": g_stats["n"],
                              "srcc": sign * g_stats["srcc"], "plcc_logistic": g_stats["plcc_logistic"]})
        pub = published_row(published, dataset.name, name)
        if pub is not None:  # the authors' metrics all correlate in the expected direction: magnitudes compare
            row.update({"published_srcc": abs(pub["srcc"]), "published_plcc_logistic": abs(pub["plcc_logistic5"]),
                        "published_n": int(pub["n"])})
        rows.append(row)
        scatter(out / f"{dataset.name}_{name}_scatter.png", x, y, stats, name, dataset)
    return rows


def scatter(path: Path, x: np.ndarray, y: np.ndarray, stats: dict, name: str, dataset) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.scatter(x, y, s=6, alpha=0.5)
    if stats["fit_ok"]:
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, logistic5(grid, *stats["logistic_params"]), color="C3", label="5-parameter logistic")
        ax.legend(fontsize=7)
    ax.set_xlabel(name)
    ax.set_ylabel("MOS" if dataset.score_higher_is_better else "DMOS")
    ax.set_title(f"{dataset.name}: SRCC {stats['srcc']:.3f}, PLCC {stats['plcc_logistic']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tables(rows: list[dict], breakdown: list[dict], out: Path) -> None:
    pd.DataFrame(breakdown).to_csv(out / "by_distortion.csv", index=False, float_format="%.6f")
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False, float_format="%.6f")
    shown = table.drop(columns=[c for c in ("fit_ok",) if c in table]).round(4)
    (out / "table.md").write_text(_markdown(shown))
    (out / "table.tex").write_text(shown.to_latex(index=False, float_format="%.4f"))


def _markdown(frame: pd.DataFrame) -> str:
    return markdown_table(frame, lambda v: "" if pd.isna(v) else str(v)) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.dataset.split(",") if n.strip()]
    if args.root and len(names) > 1:
        raise ValueError("--root goes with a single --dataset: run once per dataset, or put the datasets under "
                         "$IQA_DATA_DIR (one folder each)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        datasets = [load_dataset(name, root=args.root) for name in names]
    except DatasetNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics = build_metrics(args.metrics, args.device, args.precision or "fp32")
    published = published_values()
    rows: list[dict] = []
    breakdown: list[dict] = []
    budget = args.stop_after
    for dataset in datasets:
        records = list(dataset)[: args.limit] if args.limit else list(dataset)
        predictions = out / f"{dataset.name}_predictions.csv"
        try:
            written = score_dataset(dataset, records, metrics, predictions, budget, args.batch_size, args.workers)
        except StopRequested as stop:
            print(stop)
            return 0
        budget = None if budget is None else budget - written
        if world_from_env().is_main:  # under torchrun, rank 0 writes the tables
            rows += summarise(dataset, records, metrics, predictions, published, out, breakdown)
    if not world_from_env().is_main:
        return 0
    write_tables(rows, breakdown, out)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
