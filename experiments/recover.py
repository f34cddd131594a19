"""Perceptual optimisation demo (the distribution-measures paper's recover.py): start from a white or
noise image and optimise it towards a reference with a metric as the loss.

    python experiments/recover.py                                   # DeepWSD (VGG16 extension), white start
    python experiments/recover.py --metric deepssim-lite --init noise --steps 2000
    python experiments/recover.py --metric deepwsd-vgg              # the paper's DeepWSD (needs VGG19 weights)
    python experiments/recover.py --quick                           # a few steps on a small crop (tests)

Official schedule (Buka-Xing/Deep-network-based-distribution-measures..., recover.py @ b2c8993): Adam,
lr 0.1 halved every 1000 steps (down to 1e-5, with a fresh Adam each time), pixels clamped to [0, 1]
after every step, 10000 steps from a white image. Any registered metric with a loss form can drive it.
Outputs in results/recover/<metric>_<init>/: progress.png (snapshots), final.png, loss.csv,
loss.png, summary.md, and checkpoint.pt, from which an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iqa_core import create_metric, load_image  # noqa: E402
from iqa_core.cli import device_argument, run_main  # noqa: E402
from iqa_core.weights import InvalidWeightsError, read_state_file  # noqa: E402

DEFAULT_REF = ROOT / "data" / "examples" / "kadid10k_I47_sample" / "I47.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metric", default="deepwsd-vgg16", help="registered metric with a loss form")
    p.add_argument("--ref", default=str(DEFAULT_REF), help="reference image")
    p.add_argument("--init", default="white", help="'white', 'noise' or an image file to start from")
    p.add_argument("--size", type=int, help="resize the reference so that its longer side has this many pixels")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--decay-every", type=int, default=1000, help="halve the learning rate every N steps")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--snapshot-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument)
    p.add_argument("--weights", help="backbone weights file for the metric")
    p.add_argument("--out", help="output folder (default results/recover/<metric>_<init>)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--stop-after", type=int, metavar="N", help="run at most N steps in this invocation, then "
                   "checkpoint and stop (a rerun resumes); splits a long run over several sessions")
    p.add_argument("--quick", action="store_true", help="96-pixel reference, 24 steps, lr decay every 8 (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.decay_every, args.snapshot_every = 96, 24, 8, 8
    return args


def load_reference(path: str, size: int | None) -> torch.Tensor:
    ref = load_image(path)
    if size:
        h, w = ref.shape[-2:]
        scale = size / max(h, w)
        ref = F.interpolate(ref, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True,
                            align_corners=False).clamp(0, 1)
    return ref


def initial_image(kind: str, ref: torch.Tensor, seed: int) -> torch.Tensor:
    if kind == "white":
        return torch.ones_like(ref)
    if kind == "noise":
        return torch.rand(ref.shape, generator=torch.Generator().manual_seed(seed))
    img = load_image(kind)
    return F.interpolate(img, size=ref.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def lr_at(step: int, args: argparse.Namespace) -> float:
    return max(args.min_lr, args.lr * 0.5 ** (step // args.decay_every))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def save_figures(out: Path, snapshots: list[tuple[int, float, np.ndarray]], ref: np.ndarray, init: np.ndarray,
                 history: list[tuple[int, float, float]], metric_name: str) -> None:
    n = len(snapshots) + 2
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    panels = [("initial", init), *((f"step {s}\nloss {loss:.3g}", img) for s, loss, img in snapshots),
              ("reference", ref)]
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"optimising with {metric_name} as the loss", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "progress.png", dpi=120)
    plt.close(fig)
    steps, losses = [h[0] for h in history], [h[1] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, losses)
    ax.set_yscale("log" if min(losses) > 0 else "linear")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric_name} loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = Path(args.out) if args.out else ROOT / "results" / "recover" / f"{args.metric}_{Path(args.init).stem}"
    out.mkdir(parents=True, exist_ok=True)
    metric = create_metric(args.metric, **({"weights": args.weights} if args.weights else {})).to(device)
    ref = load_reference(args.ref, args.size).to(device)
    init = initial_image(args.init, ref.cpu(), args.seed).to(device)
    try:
        metric.loss(init, ref)
    except NotImplementedError:
        print(f"error: {args.metric} has no loss form and cannot drive the optimisation", file=sys.stderr)
        return 2

    pred = init.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pred], lr=lr_at(0, args))
    history: list[tuple[int, float, float]] = []
    snapshots: list[tuple[int, float, np.ndarray]] = []
    start = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file() and not args.fresh:
        state = load_checkpoint(checkpoint, device)
        if state["config"] == _config(args):
            pred.data.copy_(state["pred"])
            optimizer.load_state_dict(state["optimizer"])
            history, snapshots, start = state["history"], state["snapshots"], state["step"]
            print(f"resuming from step {start} ({checkpoint})")

    stop = args.steps + 1 if args.stop_after is None else min(args.steps + 1, start + args.stop_after)
    for step in tqdm(range(start, stop), initial=start, total=args.steps + 1, desc=args.metric):
        if step and step % args.decay_every == 0:
            # The official script starts a fresh Adam with the halved rate at each decay.
            optimizer = torch.optim.Adam([pred], lr=lr_at(step, args))
        loss = metric.loss(pred, ref).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pred.clamp_(0, 1)
        history.append((step, loss.item(), lr_at(step, args)))
        if step % args.snapshot_every == 0 or step == args.steps:
            snapshots.append((step, float(loss), to_uint8(pred)))
        if step % args.snapshot_every == 0 or step + 1 == stop:
            save_checkpoint(checkpoint, {"config": _config(args), "pred": pred.detach(), "step": step + 1,
                                         "optimizer": optimizer.state_dict(), "history": history,
                                         "snapshots": snapshots})
    if stop <= args.steps:
        print(f"stopped after step {stop - 1} of {args.steps} (--stop-after); run the same command again to resume")
        return 0

    with torch.no_grad():
        final_loss = float(metric.loss(pred, ref).sum())
    Image.fromarray(to_uint8(pred)).save(out / "final.png")
    with open(out / "loss.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows(history)
    save_figures(out, snapshots, to_uint8(ref), to_uint8(init), history, args.metric)
    psnr = float(-10 * torch.log10(F.mse_loss(pred.detach(), ref)))
    (out / "summary.md").write_text(
        f"# recover: {args.metric} from {args.init}\n\n"
        f"| reference | size | steps | initial loss | final loss | PSNR to reference |\n|---|---|---|---|---|---|\n"
        f"| {args.ref} | {ref.shape[-1]}x{ref.shape[-2]} | {args.steps} | {history[0][1]:.6g} | {final_loss:.6g} | "
        f"{psnr:.2f} dB |\n")
    print(f"loss {history[0][1]:.6g} -> {final_loss:.6g}, PSNR {psnr:.2f} dB; wrote {out}")
    return 0


def save_checkpoint(path: Path, state: dict) -> None:
    """Tensors and plain values only (the snapshots' uint8 images as tensors), so that loading runs no code;
    written to a temporary file first, so that a kill never leaves half a checkpoint."""
    state = {**state, "snapshots": [(s, loss, torch.from_numpy(img)) for s, loss, img in state["snapshots"]]}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """The checkpoint's tensors and plain values (loaded weights-only: a crafted file is refused, never run)."""
    state = read_state_file(path, "checkpoint")
    if not {"config", "pred", "optimizer", "step", "history", "snapshots"} <= set(state):
        raise InvalidWeightsError(f"checkpoint file {path} was not written by this script; delete it or pass --fresh")
    state["snapshots"] = [(s, loss, img.numpy()) for s, loss, img in state["snapshots"]]
    state["pred"] = state["pred"].to(device)
    return dict(state)


def _config(args: argparse.Namespace) -> dict:
    """What must match for a checkpoint to be resumed."""
    keys = ("metric", "ref", "init", "size", "steps", "lr", "decay_every", "min_lr", "seed", "weights")
    return {k: getattr(args, k) for k in keys}


if __name__ == "__main__":
    sys.exit(run_main(main))
