"""``python -m zs_iqa``: score one pair with any backbone and any distance.

    python -m zs_iqa --ref REF --dist DIST --backbone dinov1 --distance l2 [--checkpoint PATH] [--taps block3,block4]
    python -m zs_iqa --list
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from iqa_core.backbones import backbone_info, list_backbones
from iqa_core.cli import USER_ERRORS
from iqa_core.comparators import comparator_info, list_comparators
from iqa_core.deep_features import STRIDE, DeepFeatureMetric
from iqa_core.io import load_image

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zs_iqa", description=__doc__.splitlines()[0])
    p.add_argument("--ref", help="reference image file")
    p.add_argument("--dist", help="distorted image file")
    p.add_argument("--backbone", default="dinov1", help="registered backbone (see --list), e.g. clip-vitb32, vgg16")
    p.add_argument("--distance", default="l2", help="registered comparator: l2, cos, wsd, jsd, skld, swd, gram-ssim, "
                   "deepwsd, lpips, ... (see --list)")
    p.add_argument("--checkpoint", help="backbone checkpoint file (timm, open_clip, OpenAI CLIP or Hugging Face "
                   "format; see zs_iqa.backbones); default: $IQA_WEIGHTS_DIR")
    p.add_argument("--taps", help="comma-separated taps (default: every intermediate tap; 'embedding' for the "
                   "final-embedding baseline)")
    p.add_argument("--stride", type=int, default=STRIDE, help="sliding-window stride of windowed backbones")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="list backbones (with taps) and distances, then exit")
    return p


def _print_list() -> None:
    print("backbones:")
    for name in list_backbones():
        info = backbone_info(name)
        print(f"  {name:16s} {info.description}")
    print("distances:")
    for name in list_comparators():
        info = comparator_info(name)
        print(f"  {name:14s} {'higher' if info.higher_is_better else 'lower '} is better  {info.description}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        _print_list()
        return 0
    if not (args.ref and args.dist):
        parser.error("--ref and --dist are required (or --list)")
    try:
        taps = [t.strip() for t in args.taps.split(",")] if args.taps else None
        metric = DeepFeatureMetric(args.backbone, args.distance, taps=taps, weights=args.checkpoint,
                                   stride=args.stride).to(args.device).eval()
        ref, dist = load_image(args.ref), load_image(args.dist)
        with torch.no_grad():
            value = float(metric(dist, ref)[0])
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    result = {"backbone": args.backbone, "distance": args.distance, "taps": metric.tap_names, "score": value,
              "higher_is_better": metric.higher_is_better, "ref": args.ref, "dist": args.dist}
    if args.json:
        print(json.dumps(result))
    else:
        direction = "higher is better" if metric.higher_is_better else "lower is better"
        print(f"{args.backbone} {args.distance}: {value:.6f} ({direction})")
    return 0
