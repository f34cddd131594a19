"""Command line: ``python -m iqa_core {score,batch,list}``.

    python -m iqa_core score --metric deepssim REF DIST [--weights PATH] [--json]
    python -m iqa_core batch --metric deepssim --pairs pairs.csv --out scores.csv [--batch-size 8] [--workers 1]
    torchrun --standalone --nproc_per_node=2 -m iqa_core batch --metric deepssim --pairs pairs.csv --out scores.csv
    python -m iqa_core list
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from iqa_core.distributed import local_device, world_from_env
from iqa_core.engine import MetricScorer, pairs_from_csv, read_pairs, score_pairs
from iqa_core.io import ImageReadError, load_image, load_map
from iqa_core.metric import Metric, create_metric, list_metrics, metric_info
from iqa_core.precision import PRECISIONS, apply_precision, precision_of_dtype, precision_scope
from iqa_core.resumable_csv import StopRequested
from iqa_core.validation import DeviceError, IQAInputError, resolve_device
from iqa_core.weights import WeightsNotFoundError

__all__ = ["main", "build_parser", "device_argument", "run_main", "user_error_message", "USER_ERRORS", "read_pairs",
           "precision_argument", "engine_arguments", "RenamedOption", "warn_renamed_options"]

#: What a user's mistake raises (bad input, missing or unusable files and weights, unknown names, a bad device);
#: each ends the command with its one-line message and exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (IQAInputError, ImageReadError, WeightsNotFoundError, DeviceError, KeyError, FileNotFoundError,
               ValueError)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def device_argument(text: str) -> str:
    """argparse ``type=`` for ``--device``: a device this machine has (checked before any work starts), as text."""
    try:
        return str(resolve_device(text))
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class RenamedOption(argparse.Action):
    """The former name of an option, kept working and hidden from --help: ``parser.add_argument("--old",
    dest="new", action=RenamedOption, new_name="--new")``. Its value goes to the new option's ``dest``; the script
    calls :func:`warn_renamed_options` after parsing."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_name: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new_name = new_name

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.renamed_options = [*getattr(namespace, "renamed_options", []), (option_string, self.new_name)]


def warn_renamed_options(args: argparse.Namespace) -> None:
    """A DeprecationWarning for each former option name on the command line. It is issued here rather than while
    parsing so that it is attributed to the calling script, where Python shows DeprecationWarnings by default."""
    for old, new in vars(args).pop("renamed_options", []):
        warnings.warn(f"{old} is deprecated and will be removed: use {new}", DeprecationWarning, stacklevel=2)


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text!r}")
        return value

    return parse


_positive = _at_least(1)


def precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` (iqa_core.precision), for every command that scores."""
    parser.add_argument("--precision", choices=PRECISIONS, help="fp32 (default: exact float32, TF32 off), fp64 "
                        "(the whole metric in float64), tf32 (GPU TF32 allowed), bf16 / fp16 (the backbone under "
                        "autocast, the metric's statistics in float32)")


def engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--workers`` of the scoring engine (iqa_core.engine)."""
    parser.add_argument("--batch-size", type=_positive, default=8, help="distorted images of one size scored as "
                        "one batch against their reference (default 8)")
    parser.add_argument("--workers", type=_at_least(0), default=1, help="DataLoader processes that decode the "
                        "images ahead of the scoring (default 1; 0: in the main process)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m iqa_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_metric_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--metric", help="registered metric name (see `list`); batch: several, comma-separated; or "
                       "compose one with --backbone and --comparator (score)")
        p.add_argument("--backbone", help="registered backbone (see `list --backbones`), e.g. vgg16, dinov1")
        p.add_argument("--comparator", help="registered comparator (see `list --comparators`), e.g. l2, wsd, gram-ssim")
        p.add_argument("--taps", help="comma-separated taps (default: the metric's or the backbone's; 'embedding' for "
                       "a final embedding)")
        p.add_argument("--stride", type=_positive, help="sliding-window stride of windowed backbones (ZS-IQA: 200)")
        p.add_argument("--weights", help="backbone weights file (state dict); default: the resolver's order")
        p.add_argument("--device", default="cpu", type=device_argument, help="torch device, e.g. cpu or cuda")
        p.add_argument("--dtype", choices=sorted(DTYPES), help="the dtype the whole metric computes in (float32; "
                       "float64 also runs the backbone in float64): the same as --precision fp32 / fp64")
        precision_argument(p)
        p.add_argument("--max-pixels", type=_positive, help="largest image read, in pixels (default 64 million or "
                       "$IQA_MAX_PIXELS)")
        p.add_argument("--ignore-exif", action="store_true", help="read the stored pixels, ignoring the files' "
                       "EXIF orientation (applied by default, as image viewers do)")

    score = sub.add_parser("score", help="score one (reference, distorted) pair")
    score.add_argument("ref", help="reference image file")
    score.add_argument("dist", help="distorted image file")
    add_metric_options(score)
    score.add_argument("--saliency-ref", help="saliency map of the reference (deepssim-sc)")
    score.add_argument("--saliency-dist", help="saliency map of the distorted image (deepssim-sc)")
    score.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")

    batch = sub.add_parser("batch", help="score a CSV list of pairs into a CSV, resuming if interrupted (also under "
                           "torchrun)")
    batch.add_argument("--pairs", required=True, help="CSV with columns ref,dist "
                       "(optional saliency_ref,saliency_dist); relative paths are taken from --root")
    batch.add_argument("--out", required=True, help="output CSV (the store): pairs already there with the same "
                       "metric, options, weights, precision and files are not recomputed")
    batch.add_argument("--root", help="folder that relative paths in --pairs start from (default: its folder)")
    batch.add_argument("--stop-after", type=_positive, metavar="N", help="stop once N new rows are written (per "
                       "process under torchrun), as if interrupted (a rerun resumes); splits a long run over several "
                       "sessions")
    add_metric_options(batch)
    engine_arguments(batch)

    lister = sub.add_parser("list", help="list the registered metrics (or backbones, comparators)")
    lister.add_argument("--json", action="store_true")
    lister.add_argument("--verbose", action="store_true", help="also each deep metric's backbone, taps, comparator")
    lister.add_argument("--backbones", action="store_true", help="list the backbones with their taps instead")
    lister.add_argument("--comparators", action="store_true", help="list the comparators instead")
    return parser


def _precision(args: argparse.Namespace) -> str:
    """``--precision``, or what ``--dtype`` means; both given must agree."""
    implied = precision_of_dtype(DTYPES[args.dtype]) if args.dtype else None
    if args.precision and implied and (args.precision == "fp64") != (implied == "fp64"):
        raise ValueError(f"--dtype {args.dtype} and --precision {args.precision} disagree; give one of them")
    return args.precision or implied or "fp32"


def _build_metric(args: argparse.Namespace, name: str | None = None, device: str | None = None) -> Metric:
    """The registered metric ``name`` (default ``--metric``), or the composition ``--backbone`` x ``--comparator``
    (one path either way), in float32 on the device (the precision is applied by the caller)."""
    kwargs: dict[str, object] = {"weights": args.weights} if args.weights else {}
    if args.taps:
        kwargs["taps"] = [t.strip() for t in args.taps.split(",") if t.strip()]
    if args.stride:
        kwargs["stride"] = args.stride
    composed = args.backbone or args.comparator
    if composed and (name or args.metric):
        raise ValueError("give --metric, or --backbone with --comparator, not both")
    if composed:
        if not (args.backbone and args.comparator):
            raise ValueError("--backbone and --comparator go together (e.g. --backbone vgg16 --comparator wsd)")
        from iqa_core.deep_features import DeepFeatureMetric

        metric: Metric = DeepFeatureMetric(args.backbone, args.comparator, **kwargs)
        args.metric = f"{args.backbone}:{args.comparator}"
    elif name or args.metric:
        metric = create_metric(name or args.metric, **kwargs)
    else:
        raise ValueError("no metric: give --metric NAME (see `list`), or --backbone and --comparator")
    return metric.to(device or args.device).eval()


def _image_reader(args: argparse.Namespace) -> Callable[..., torch.Tensor]:
    return functools.partial(load_image, exif_orientation=not args.ignore_exif, max_pixels=args.max_pixels)


def _saliency_kwargs(saliency_ref: str | None, saliency_dist: str | None) -> dict[str, torch.Tensor]:
    kwargs = {}
    if saliency_ref:
        kwargs["saliency_ref"] = load_map(saliency_ref)
    if saliency_dist:
        kwargs["saliency_dist"] = load_map(saliency_dist)
    return kwargs


def cmd_score(args: argparse.Namespace) -> int:
    read = _image_reader(args)
    ref, dist = read(args.ref), read(args.dist)
    saliency = _saliency_kwargs(args.saliency_ref, args.saliency_dist)
    precision = _precision(args)
    metric = apply_precision(_build_metric(args), precision)
    with torch.no_grad(), precision_scope(precision):
        value = float(metric(dist, ref, **saliency)[0])
        loss = _loss_or_none(metric, dist, ref, saliency) if args.json else None
    result = {"metric": args.metric, "score": value, "higher_is_better": metric.higher_is_better,
              "ref": args.ref, "dist": args.dist, "device": str(metric.device)}
    if loss is not None:
        result["loss"] = loss
    if hasattr(metric, "tap_names"):  # deep metrics: what was compared
        result.update(backbone=metric.backbone.name, taps=metric.tap_names, comparator=metric.comparator.name)
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
    """Score the pairs with each metric through the engine; exit status 1 (and the last line) when pairs failed."""
    pairs_path = Path(args.pairs)
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory: give the CSV file to write, e.g. {out / 'scores.csv'}")
    source = pairs_from_csv(pairs_path, args.root, _image_reader(args))
    precision = _precision(args)
    device = str(local_device(args.device, world_from_env()))
    if args.backbone or args.comparator or not args.metric:
        raise ValueError("batch scores registered metrics: give --metric NAME[,NAME] (see `list`; compositions of "
                         "--backbone and --comparator are for `score`)")
    names = [n.strip() for n in args.metric.split(",") if n.strip()]
    # Built before the store exists: a metric that cannot be built leaves nothing behind.
    scorers = [MetricScorer(_build_metric(args, name, device), name, precision=precision) for name in names]
    report = score_pairs(scorers, source, out, batch_size=args.batch_size, workers=args.workers,
                         stop_after=args.stop_after, desc=",".join(names))
    if not report.is_main:
        return 0
    print(report.summary(), file=sys.stderr)
    return 1 if report.failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.backbones or args.comparators:
        return _list_parts(args)
    infos = [metric_info(name) for name in list_metrics()]
    if args.json:
        print(json.dumps([i.describe() for i in infos]))
        return 0
    width = max(len(i.name) for i in infos)
    for i in infos:
        print(f"{i.name:{width}s}  {'higher' if i.higher_is_better else 'lower '} is better  {i.description}")
        if args.verbose and i.preset is not None:
            d = i.preset.describe()
            taps = ",".join(d["taps"]) if isinstance(d["taps"], list) else d["taps"]
            options = {**d["backbone_options"], **d["comparator_options"]}
            print(f"{'':{width}s}    backbone {d['backbone']}  taps {taps}  comparator {d['comparator']}  "
                  f"output {d['output']}" + (f"  options {options}" if options else ""))
    return 0


def _list_parts(args: argparse.Namespace) -> int:
    from iqa_core.backbones import backbone_info, list_backbones
    from iqa_core.comparators import comparator_info, list_comparators

    if args.backbones:
        rows = [{"name": n, "description": backbone_info(n).description} for n in list_backbones()]
    else:
        rows = [{"name": n, "higher_is_better": comparator_info(n).higher_is_better,
                 "description": comparator_info(n).description} for n in list_comparators()]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['name']:16s} {row['description']}")
    return 0


def user_error_message(err: BaseException) -> str:
    """A user error's message on one line (a KeyError's without the quotes ``str`` adds)."""
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    return " ".join(line.strip() for line in text.strip().splitlines()) or type(err).__name__


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``: a user's mistake (:data:`USER_ERRORS`) ends with one line on stderr, naming the
    problem and the fix, and exit status 2; ``--stop-after`` ends a run early with status 0."""
    try:
        return main(argv)
    except StopRequested as stop:
        print(stop, file=sys.stderr)
        return 0
    except USER_ERRORS as err:
        print(f"error: {user_error_message(err)}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"score": cmd_score, "batch": cmd_batch, "list": cmd_list}[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
