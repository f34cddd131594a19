"""Command line: ``python -m iqa_core {score,batch,list}``.

    python -m iqa_core score --metric deepssim REF DIST [--weights PATH] [--json]
    python -m iqa_core batch --metric deepssim --pairs pairs.csv --out scores.csv
    python -m iqa_core list
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from iqa_core.io import ImageReadError, load_image, load_map
from iqa_core.metric import FeatureMetric, Metric, create_metric, list_metrics, metric_info
from iqa_core.resumable_csv import ResumableCSV, StopRequested
from iqa_core.validation import IQAInputError
from iqa_core.weights import WeightsNotFoundError

__all__ = ["main", "build_parser"]

USER_ERRORS = (IQAInputError, ImageReadError, WeightsNotFoundError, KeyError, FileNotFoundError, ValueError)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m iqa_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_metric_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--metric", required=True, help="registered metric name (see `list`)")
        p.add_argument("--weights", help="backbone weights file (state dict); default: the resolver's order")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--dtype", choices=sorted(DTYPES), help="accumulation dtype, where the metric has one")

    score = sub.add_parser("score", help="score one (reference, distorted) pair")
    score.add_argument("ref", help="reference image file")
    score.add_argument("dist", help="distorted image file")
    add_metric_options(score)
    score.add_argument("--saliency-ref", help="saliency map of the reference (deepssim-sc)")
    score.add_argument("--saliency-dist", help="saliency map of the distorted image (deepssim-sc)")
    score.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")

    batch = sub.add_parser("batch", help="score a CSV list of pairs into a CSV, resuming if interrupted")
    batch.add_argument("--pairs", required=True, help="CSV with columns ref,dist "
                       "(optional saliency_ref,saliency_dist); relative paths are taken from --root")
    batch.add_argument("--out", required=True, help="output CSV; rows already there are not recomputed")
    batch.add_argument("--root", help="folder that relative paths in --pairs start from (default: its folder)")
    batch.add_argument("--stop-after", type=int, metavar="N", help="stop once N new rows are written, as if "
                       "interrupted (a rerun resumes); splits a long run over several sessions")
    add_metric_options(batch)

    lister = sub.add_parser("list", help="list the registered metrics")
    lister.add_argument("--json", action="store_true")
    return parser


def _build_metric(args: argparse.Namespace) -> Metric:
    kwargs = {}
    if args.weights:
        kwargs["weights"] = args.weights
    if args.dtype:
        kwargs["dtype"] = DTYPES[args.dtype]
    return create_metric(args.metric, **kwargs).to(args.device).eval()


def _saliency_kwargs(saliency_ref: str | None, saliency_dist: str | None) -> dict[str, torch.Tensor]:
    kwargs = {}
    if saliency_ref:
        kwargs["saliency_ref"] = load_map(saliency_ref)
    if saliency_dist:
        kwargs["saliency_dist"] = load_map(saliency_dist)
    return kwargs


def cmd_score(args: argparse.Namespace) -> int:
    ref, dist = load_image(args.ref), load_image(args.dist)
    saliency = _saliency_kwargs(args.saliency_ref, args.saliency_dist)
    metric = _build_metric(args)
    with torch.no_grad():
        value = float(metric(dist, ref, **saliency)[0])
        loss = _loss_or_none(metric, dist, ref, saliency) if args.json else None
    result = {"metric": args.metric, "score": value, "higher_is_better": metric.higher_is_better,
              "ref": args.ref, "dist": args.dist, "device": str(metric.device)}
    if loss is not None:
        result["loss"] = loss
    if args.json:
        print(json.dumps(result))
    else:
        direction = "higher is better" if metric.higher_is_better else "lower is better"
        print(f"{args.metric}: {value:.6f} ({direction})")
    return 0


def _loss_or_none(metric: Metric, dist: torch.Tensor, ref: torch.Tensor, kwargs: dict) -> float | None:
    """The metric's training-loss value for the pair, where it has a loss form."""
    try:
        return float(metric.loss(dist, ref, **kwargs)[0])
    except NotImplementedError:
        return None


def cmd_batch(args: argparse.Namespace) -> int:
    pairs_path = Path(args.pairs)
    root = Path(args.root) if args.root else pairs_path.parent
    with pairs_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"ref", "dist"} <= set(rows[0]):
        raise ValueError(f"{pairs_path}: needs columns 'ref' and 'dist', found {list(rows[0])}")
    out = Path(args.out)
    with ResumableCSV(out, ["metric", "ref", "dist", "score"], ["metric", "ref", "dist"], args.stop_after) as cache:
        todo = [row for row in rows if (args.metric, row["ref"], row["dist"]) not in cache]
        print(f"{len(rows)} pairs, {len(rows) - len(todo)} already in {out}, {len(todo)} to score", file=sys.stderr)
        if todo:
            _score_rows(_build_metric(args), todo, root, cache, args.metric)
    return 0


def _score_rows(metric: Metric, todo: list[dict[str, str]], root: Path, cache: ResumableCSV, name: str) -> None:
    """Score the rows in order, appending each to ``cache`` at once; a reference's features are computed once
    for consecutive rows that share it."""
    from tqdm import tqdm

    ref_cache: dict[str, object] = {}
    for row in tqdm(todo, desc=name, unit="pair"):
        kwargs = _saliency_kwargs(_path(root, row.get("saliency_ref")), _path(root, row.get("saliency_dist")))
        dist = load_image(root / row["dist"])
        with torch.no_grad():
            if isinstance(metric, FeatureMetric) and not kwargs:
                if row["ref"] not in ref_cache:
                    ref_cache.clear()
                    ref_cache[row["ref"]] = metric.reference_features(load_image(root / row["ref"]))
                value = metric.score_against(dist, ref_cache[row["ref"]])
            else:
                value = metric(dist, load_image(root / row["ref"]), **kwargs)
        cache.add([name, row["ref"], row["dist"], repr(float(value[0]))])
        cache.flush()


def _path(root: Path, value: str | None) -> str | None:
    return str(root / value) if value else None


def cmd_list(args: argparse.Namespace) -> int:
    infos = [metric_info(name) for name in list_metrics()]
    if args.json:
        print(json.dumps([{"name": i.name, "higher_is_better": i.higher_is_better, "paper": i.paper,
                           "requires_same_size": i.requires_same_size, "description": i.description}
                          for i in infos]))
    else:
        width = max(len(i.name) for i in infos)
        for i in infos:
            print(f"{i.name:{width}s}  {'higher' if i.higher_is_better else 'lower '} is better  {i.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"score": cmd_score, "batch": cmd_batch, "list": cmd_list}[args.command]
    try:
        return handler(args)
    except StopRequested as stop:
        print(stop, file=sys.stderr)
        return 0
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
