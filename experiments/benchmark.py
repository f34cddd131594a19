"""Speed and memory of the metrics: time per pair, the backbone's share, peak memory, and scoring many
distorted images against one reference whose features are computed once (one at a time, and as one batch).

    python experiments/benchmark.py                       # DeepSSIM family at 512x384 on the CPU
    python experiments/benchmark.py --device cuda --metrics deepssim --repeats 20
    python experiments/benchmark.py --quick               # tiny run for the tests
    python experiments/benchmark.py --large 1024x768,2048x1536,4000x3000 --tile 512   # DeepSSIM, whole vs tiled

Figures are printed and written to results/benchmark/benchmark_<device>.{csv,md}. No test asserts a
time: read the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core import FeatureMetric, create_metric  # noqa: E402
from iqa_core.cli import device_argument, run_main  # noqa: E402
from iqa_core.deep_features import DeepFeatureMetric  # noqa: E402
from iqa_core.timing import time_ms  # noqa: E402
from iqa_core.validation import IQAInputError  # noqa: E402
from iqa_core.weights import WeightsNotFoundError  # noqa: E402

DEFAULT_METRICS = ["deepssim", "deepssim-lite", *(f"deep{m}-{b}" for b in ("vgg", "squeeze", "mobilenet",
                                                                             "efficientnet", "vgg16", "alexnet")
                                                   for m in ("wsd", "jsd", "skld"))]


QUICK_METRICS = ["deepssim", "deepssim-lite", "deepwsd-vgg", "deepjsd-squeeze"]


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 resets the peak resident set size (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU allocation, or the process's peak resident memory on the CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_metric(name: str, random_fallback: bool) -> tuple[torch.nn.Module, str]:
    """The metric with resolved weights or, where none resolve and it is allowed, random weights
    (the time of a forward pass does not depend on the weights' values)."""
    try:
        return create_metric(name), "pretrained"
    except WeightsNotFoundError:
        if not random_fallback:
            raise
        return create_metric(name, weights="random"), "random"


def benchmark_metric(name: str, size: tuple[int, int], device: torch.device, repeats: int,
                     n_dist: int, random_fallback: bool = True, pot_reference: bool = True) -> dict[str, object]:
    metric, weights = build_metric(name, random_fallback)
    metric = metric.to(device).eval()
    h, w = size
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, h, w, generator=gen).to(device)
    dist = (ref + 0.05 * torch.randn(1, 3, h, w, generator=gen).to(device)).clamp(0, 1)
    dists = (ref + 0.05 * torch.randn(n_dist, 3, h, w, generator=gen).to(device)).clamp(0, 1)
    row: dict[str, object] = {"metric": name, "weights": weights, "device": str(device), "size": f"{w}x{h}"}
    with torch.no_grad():
        _reset_peak_memory(device)
        row["pair_ms"] = time_ms(lambda: metric(dist, ref), repeats, device=device)
        row["peak_mib"] = round(peak_memory_mib(device), 1)
        if isinstance(metric, DeepFeatureMetric):
            # The backbone alone, for both images of the pair: what any implementation must spend.
            row["backbone_ms"] = time_ms(lambda: (metric.tap_outputs(dist), metric.tap_outputs(ref)), repeats,
                                         device=device)
            # Everything after the backbone, timed on its own (the difference of two noisy
            # timings would be noise): the metric's overhead as a share of a pair's time.
            maps = metric.tap_outputs(dist), metric.tap_outputs(ref)
            row["after_backbone_ms"] = time_ms(lambda: metric.compare_taps(*maps), repeats, device=device)
            row["overhead_pct"] = 100.0 * row["after_backbone_ms"] / row["pair_ms"]
            recipe = getattr(metric.comparator, "recipe", None)
            if recipe is not None and recipe.measure == "wsd" and pot_reference:
                # The same distances through POT's wasserstein_1d, as the official code computes them.
                from distribution_measures.distances import wasserstein_grid_pot

                fast, metric.comparator.wasserstein = metric.comparator.wasserstein, wasserstein_grid_pot
                row["after_backbone_pot_ms"] = time_ms(lambda: metric.compare_taps(*maps),
                                                       max(1, repeats // 2), device=device)
                metric.comparator.wasserstein = fast
        if isinstance(metric, FeatureMetric):
            def one_ref_many_dists() -> None:
                feats = metric.reference_features(ref)
                for i in range(n_dist):
                    metric.score_against(dists[i:i + 1], feats)

            total = time_ms(one_ref_many_dists, max(1, repeats // 2), device=device)
            row[f"one_ref_{n_dist}_dists_ms"] = total
            row["per_dist_ms"] = total / n_dist
            feats = metric.reference_features(ref)
            batched = time_ms(lambda: metric.score_against(dists, feats), max(1, repeats // 2), device=device)
            row["batched_per_dist_ms"] = batched / n_dist
    return row


def large_image_run(size: tuple[int, int], tile: int | None, device: torch.device) -> dict[str, object]:
    """DeepSSIM on one random (h, w) pair, whole or tiled: seconds and peak memory of this process."""
    h, w = size
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, h, w, generator=g)
    dist = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    metric, weights = build_metric("deepssim", random_fallback=True)
    if tile is not None:
        metric.tile = tile
    metric = metric.to(device)
    _reset_peak_memory(device)
    with torch.no_grad():
        ms = time_ms(lambda: metric(dist.to(device), ref.to(device)), repeats=1, warmup=0, device=device)
    return {"size": f"{w}x{h}", "tile": tile or "whole", "seconds": round(ms / 1000, 1),
            "peak_mib": round(peak_memory_mib(device)), "weights": weights}


def large_image_table(sizes: list[tuple[int, int]], tile: int, device: torch.device) -> list[dict[str, object]]:
    """Each (size, whole/tiled) run in a fresh process, so that one peak does not hide the next."""
    rows = []
    for h, w in sizes:
        for t in (None, tile):
            cmd = [sys.executable, __file__, "--_large-child", f"{w}x{h}", "--tile", str(t or 0),
                   "--device", str(device)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows


def _fmt(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated registry names")
    parser.add_argument("--size", default="512x384", help="WIDTHxHEIGHT of the synthetic pair")
    parser.add_argument("--device", default="cpu", type=device_argument)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-dist", type=int, default=8, help="distorted images scored against one reference")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmark"))
    parser.add_argument("--quick", action="store_true",
                        help=f"160x160, 2 repeats, 2 distorted images, metrics {','.join(QUICK_METRICS)} unless given")
    parser.add_argument("--no-pot", action="store_true", help="do not time the POT reference path of DeepWSD")
    parser.add_argument("--no-random-weights", action="store_true",
                        help="skip metrics whose weights do not resolve instead of timing them with random weights")
    parser.add_argument("--large", metavar="WxH,...",
                        help="DeepSSIM on these sizes, whole and in --tile tiles: seconds and peak memory")
    parser.add_argument("--tile", type=int, default=512, help="tile side for --large (a multiple of 16)")
    parser.add_argument("--_large-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._large_child:
        w, h = (int(v) for v in args._large_child.lower().split("x"))
        print(json.dumps(large_image_run((h, w), args.tile or None, torch.device(args.device))))
        return 0
    if args.large:
        sizes = [tuple(int(v) for v in s.lower().split("x"))[::-1] for s in args.large.split(",")]
        rows = large_image_table(sizes, args.tile, torch.device(args.device))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "large_images.md", "w") as fh:
            fh.write("| size | DeepSSIM | seconds | peak memory (MiB) |\n|---|---|---|---|\n")
            for row in rows:
                fh.write(f"| {row['size']} | {row['tile']} | {row['seconds']} | {row['peak_mib']} |\n")
        print(f"wrote {out / 'large_images.md'}")
        return 0
    if args.quick:
        args.size, args.repeats, args.n_dist = "160x160", 2, 2
        if args.metrics == parser.get_default("metrics"):
            args.metrics = ",".join(QUICK_METRICS)
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"# {where}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, {w}x{h}, "
          f"median of {args.repeats}")

    rows = []
    for name in [m for m in args.metrics.split(",") if m]:
        try:
            rows.append(benchmark_metric(name, (h, w), device, args.repeats, args.n_dist,
                                         random_fallback=not args.no_random_weights,
                                         pot_reference=not args.no_pot and device.type == "cpu"))
        except (WeightsNotFoundError, IQAInputError) as err:
            print(f"skipped {name}: {str(err).splitlines()[0]}")
            continue
        print("  ".join(f"{k}={_fmt(v)}" for k, v in rows[-1].items()))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    stem = out / f"benchmark_{device.type}{'_quick' if args.quick else ''}"
    with open(f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(f"{stem}.md", "w") as fh:
        fh.write(f"Device: {where}; torch {torch.__version__}; {w}x{h}; median of {args.repeats} runs.\n\n")
        fh.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            fh.write("| " + " | ".join(_fmt(row.get(k, "")) for k in fields) + " |\n")
    print(f"wrote {stem}.csv and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
