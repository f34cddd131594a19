"""Speed and memory of the metrics: time per pair, the backbone's share, peak memory, and scoring many
distorted images against one reference whose features are computed once (one at a time, and as one batch).

    python experiments/benchmark.py                       # DeepSSIM family at 512x384 on the CPU
    python experiments/benchmark.py --device cuda --metrics deepssim --repeats 20
    python experiments/benchmark.py --quick               # tiny run for the tests
    python experiments/benchmark.py --large 1024x768,2048x1536,4000x3000 --tile 512   # DeepSSIM, whole vs tiled
    python experiments/benchmark.py --dataset 4,8 --metrics deepssim,deepwsd-vgg     # whole-dataset scoring

Figures are printed and written to results/benchmark/benchmark_<device>.{csv,md}. No test asserts a
time: read the numbers.

Dataset mode (``--dataset R,D``): a generated rated set of R references (the bundled samples, cropped to --size) x D
distortions (iqa_core.distortions at graded levels, PNG files), scored in fresh processes, start-up included: a
per-pair loop of the API (``metric(dist, ref)`` on each pair's files), the engine in one process
(``python -m iqa_core batch``), the engine in --nproc processes (torchrun), and the engine in each --precisions
mode, with each mode's largest relative deviation from fp32 and its SRCC with the distortion level. Written to
results/benchmark/dataset_<device>.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core import FeatureMetric, create_metric, load_image  # noqa: E402
from iqa_core.cli import device_argument, run_main  # noqa: E402
from iqa_core.deep_features import DeepFeatureMetric  # noqa: E402
from iqa_core.distortions import distort  # noqa: E402
from iqa_core.metric import metric_info  # noqa: E402
from iqa_core.samples import load_samples  # noqa: E402
from iqa_core.stats import direction_sign, spearman  # noqa: E402
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


# ------------------------------------------------------------------------------------------------ dataset mode

DATASET_DISTORTIONS = ("gaussian_blur", "gaussian_noise", "jpeg", "contrast_change")
PRECISIONS_CPU = "fp32,fp64,tf32,bf16"  # fp16: this CPU has no fp16 convolutions (minutes per 512x384 image)
PRECISIONS_GPU = "fp32,fp64,tf32,bf16,fp16"


def _crop_to(image: torch.Tensor, h: int, w: int, shift: int) -> torch.Tensor:
    """Resize ``image`` to cover h x w, then crop h x w (moved by ``shift`` x 37 pixels: another view)."""
    scale = max(h / image.shape[-2], w / image.shape[-1])
    size = (max(h, round(image.shape[-2] * scale)) + 37 * shift, max(w, round(image.shape[-1] * scale)) + 37 * shift)
    big = torch.nn.functional.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return big[..., top:top + h, left:left + w].clamp(0, 1)


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (image[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
    Image.fromarray(array).save(path)


def make_rated_set(folder: Path, refs: int, dists: int, size: tuple[int, int]) -> Path:
    """R references x D distorted PNGs with their pairs.csv (and level column: the rating, higher = worse); made
    once per (R, D, size)."""
    pairs = folder / "pairs.csv"
    if pairs.is_file():
        return pairs
    folder.mkdir(parents=True, exist_ok=True)
    samples = list(load_samples().values())
    lines = ["ref,dist,level"]
    for r in range(refs):
        ref = _crop_to(samples[r % len(samples)], *size, shift=r // len(samples))
        _save_png(ref, folder / f"r{r}.png")
        for d in range(dists):
            name = DATASET_DISTORTIONS[d % len(DATASET_DISTORTIONS)]
            level = 1 + ((d // len(DATASET_DISTORTIONS)) * 2) % 5  # 1, 3, 5, 2, 4, ...
            _save_png(distort(name, ref, level, seed=r), folder / f"r{r}_{d}_{name}_{level}.png")
            lines.append(f"r{r}.png,r{r}_{d}_{name}_{level}.png,{level}")
    pairs.write_text("\n".join(lines) + "\n")
    return pairs


def pair_loop(pairs: Path, name: str, weights: str | None, device: str) -> None:
    """The per-pair API loop (run in a child process): read both files, ``metric(dist, ref)``, for every row."""
    metric = create_metric(name, **({"weights": weights} if weights else {})).to(device).eval()
    with open(pairs, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with torch.no_grad():
        for row in rows:
            float(metric(load_image(pairs.parent / row["dist"]).to(device),
                         load_image(pairs.parent / row["ref"]).to(device))[0])


def _weights_for(name: str, given: dict[str, str]) -> str | None:
    """The --weights file given for ``name``, none where its weights resolve, else ``random`` (timing only)."""
    if name in given:
        return given[name]
    try:
        create_metric(name)
        return None
    except WeightsNotFoundError:
        return "random"


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, of the command and every process it waited for: torchrun's
    workers) of a command. On a shared machine the CPU time moves less with the other users' load."""
    start, cpu = time.perf_counter(), _child_cpu_seconds()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start, _child_cpu_seconds() - cpu


def _engine_command(pairs: Path, out: Path, name: str, weights: str | None, args: argparse.Namespace,
                    precision: str, nproc: int) -> list[str]:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "iqa_core", "batch", "--metric", name, "--pairs", str(pairs), "--out", str(out),
            "--device", str(args.device), "--precision", precision, "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), *(["--weights", weights] if weights else [])]


def _scores_and_levels(out: Path, pairs: Path) -> tuple[dict[str, float], dict[str, int]]:
    with open(out, newline="") as fh:
        scores = {row["dist"]: float(row["score"]) for row in csv.DictReader(fh)}
    with open(pairs, newline="") as fh:
        levels = {row["dist"]: int(row["level"]) for row in csv.DictReader(fh)}
    return scores, levels


def _oriented_srcc(scores: dict[str, float], levels: dict[str, int], higher_is_better: bool) -> float:
    keys = sorted(scores)
    sign = direction_sign(higher_is_better, False)  # more distortion should mean a worse score
    return sign * spearman([levels[k] for k in keys], [scores[k] for k in keys])


@dataclass
class _Run:
    """One timed command of the dataset table (the per-pair loop, or the engine in one mode)."""

    mode: str
    processes: int
    precision: str
    command: list[str]
    env: dict[str, str]
    out: Path | None = None  # the engine's store (emptied before each run)
    times: list[tuple[float, float]] = field(default_factory=list)

    def run(self) -> None:
        if self.out is not None:
            for stale in self.out.parent.glob(f"{self.out.stem}*"):
                stale.unlink()
        self.times.append(_timed_run(self.command, self.env))

    @property
    def seconds(self) -> tuple[float, float]:
        """Median wall and median CPU seconds of the repeats."""
        return statistics.median(t[0] for t in self.times), statistics.median(t[1] for t in self.times)


def _dataset_runs(name: str, pairs: Path, weights: str | None, args: argparse.Namespace) -> list[_Run]:
    work = Path(args.out) / "dataset_runs"
    work.mkdir(parents=True, exist_ok=True)
    loop = [sys.executable, __file__, "--_pair-loop", str(pairs), "--metrics", name, "--device", str(args.device),
            *(["--_weights", weights] if weights else [])]
    runs = [_Run("per-pair loop", 1, "fp32", loop, _child_env(None))]
    modes = [(p, 1) for p in args.precisions.split(",") if p] + [("fp32", n) for n in [args.nproc] if n > 1]
    for precision, nproc in modes:
        out = work / f"{name}_{precision}_{nproc}.csv"
        threads = max(1, (os.cpu_count() or 1) // nproc) if nproc > 1 else None
        runs.append(_Run("engine" if nproc == 1 else f"engine, torchrun x{nproc}", nproc, precision,
                         _engine_command(pairs, out, name, weights, args, precision, nproc), _child_env(threads), out))
    return runs


def dataset_rows(name: str, pairs: Path, args: argparse.Namespace, given_weights: dict[str, str]) -> list[dict]:
    """One metric's rows of the dataset table: per-pair loop, engine in 1 and N processes, each precision; with
    --dataset-repeats, every command that many times, interleaved (the load of a shared machine drifts), medians."""
    weights = _weights_for(name, given_weights)
    n_pairs = sum(1 for _ in open(pairs)) - 1
    runs = _dataset_runs(name, pairs, weights, args)
    for _ in range(args.dataset_repeats):
        for run in runs:
            run.run()
    loop = runs[0].seconds
    higher = metric_info(name).higher_is_better
    reference = _scores_and_levels(runs[1].out, pairs)[0]  # the first engine run is fp32 in one process
    rows = []
    for run in runs:
        wall, cpu = run.seconds
        row = {"metric": name, "weights": weights or "pretrained", "pairs": n_pairs, "mode": run.mode,
               "processes": run.processes, "precision": run.precision, "runs": len(run.times), "wall_s": wall,
               "cpu_s": cpu, "pairs_per_s": n_pairs / wall, "ms_per_pair": 1000 * wall / n_pairs}
        if run.out is not None:
            scores, levels = _scores_and_levels(run.out, pairs)
            srcc = _oriented_srcc(scores, levels, higher)
            row.update({"speedup_vs_loop": loop[0] / wall, "cpu_speedup_vs_loop": loop[1] / cpu,
                        "max_rel_diff_vs_fp32": max(abs(scores[k] - reference[k]) / max(abs(reference[k]), 1e-12)
                                                    for k in reference),
                        "srcc": srcc, "srcc_change": srcc - _oriented_srcc(reference, levels, higher)})
            if name in args.authors_seconds:  # the authors' code on the same set, timed beside this run
                row["speedup_vs_authors"] = args.authors_seconds[name] / wall
        rows.append(row)
        print("  ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
    return rows


def _fmt_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_table(rows: list[dict], stem: Path, header: str, fmt=None) -> None:
    """``rows`` as ``<stem>.csv`` and a Markdown table ``<stem>.md`` under a header line."""
    fmt = fmt or _fmt
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(f"{stem}.md", "w") as fh:
        fh.write(f"{header}\n\n")
        fh.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            fh.write("| " + " | ".join(fmt(row.get(k, "")) for k in fields) + " |\n")
    print(f"wrote {stem}.csv and {stem}.md")


def dataset_benchmark(args: argparse.Namespace) -> int:
    refs, dists = (int(v) for v in args.dataset.split(","))
    w, h = (int(v) for v in args.size.lower().split("x"))
    given = args.weights
    pairs = make_rated_set(Path(args.out) / f"dataset_{refs}x{dists}_{w}x{h}", refs, dists, (h, w))
    device = torch.device(args.device)
    if args.precisions is None:
        args.precisions = PRECISIONS_GPU if device.type == "cuda" else PRECISIONS_CPU
    # fp32 in one process first: the reference of the deviations
    args.precisions = ",".join(["fp32", *(p for p in args.precisions.split(",") if p and p != "fp32")])
    rows = [row for name in args.metrics.split(",") if name for row in dataset_rows(name, pairs, args, given)]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    header = (f"Device: {where}; torch {torch.__version__}; {refs} references x {dists} distortions, {w}x{h} PNG; "
              f"batch size {args.batch_size}, {args.workers} DataLoader worker(s); median of {args.dataset_repeats} "
              "interleaved run(s) of each command, start-up included.")
    write_table(rows, Path(args.out) / f"dataset_{device.type}", header, _fmt_cell)
    return 0


def _fmt(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _metric_values(items: list[str], option: str, convert: Callable[[str], object]) -> dict[str, object]:
    """``METRIC=VALUE`` items -> {metric: converted value}; a malformed item is a ValueError naming the option."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not (sep and name and value):
                raise ValueError
            out[name] = convert(value)
        except ValueError:
            raise ValueError(f"{option} {item!r}: expected METRIC=VALUE, e.g. {option} deepwsd-vgg="
                             f"{'83.1' if convert is float else 'vgg19.pth'}") from None
    return out


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
    parser.add_argument("--dataset", metavar="R,D", help="dataset mode: R references x D distortions (see above)")
    parser.add_argument("--nproc", type=int, default=2, help="dataset mode: processes of the torchrun run")
    parser.add_argument("--dataset-repeats", type=int, default=1, help="dataset mode: runs of each command, "
                        "interleaved; the table has the medians")
    parser.add_argument("--precisions", help=f"dataset mode: precisions to run (default {PRECISIONS_CPU} on the "
                        f"CPU, {PRECISIONS_GPU} on a GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="dataset mode: the engine's --batch-size")
    parser.add_argument("--workers", type=int, default=1, help="dataset mode: the engine's --workers")
    parser.add_argument("--weights", action="append", default=[], metavar="METRIC=FILE",
                        help="dataset mode: a weights file for a metric (default: resolved, else random)")
    parser.add_argument("--authors-seconds", action="append", default=[], metavar="METRIC=SECONDS",
                        help="dataset mode: wall seconds of the authors' code on the same set, timed beside this run "
                        "(their code is not in the repository); adds speedup_vs_authors")
    parser.add_argument("--_pair-loop", help=argparse.SUPPRESS)
    parser.add_argument("--_weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.weights = _metric_values(args.weights, "--weights", str)
        args.authors_seconds = _metric_values(args.authors_seconds, "--authors-seconds", float)
    except ValueError as err:
        parser.error(str(err))
    if args._pair_loop:
        pair_loop(Path(args._pair_loop), args.metrics, args._weights, args.device)
        return 0
    if args.dataset:
        if args.metrics == parser.get_default("metrics"):
            args.metrics = "deepssim,deepwsd-vgg"
        return dataset_benchmark(args)
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
    write_table(rows, out / f"benchmark_{device.type}{'_quick' if args.quick else ''}",
                f"Device: {where}; torch {torch.__version__}; {w}x{h}; median of {args.repeats} runs.")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
