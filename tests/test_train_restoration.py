"""experiments/train_restoration.py: quick runs of both tasks (every loss decreases, every output written with real
numbers), identical patch streams, resume without retraining, an interrupted run that resumes exactly, and losses
skipped with a visible reason."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from experiments import train_restoration as tr
from iqa_core.cli import run_main
from iqa_core.store import errors_path

QUICK_METRICS = ["l1", *tr.QUICK_EVAL_METRICS]


def run(*argv: str) -> str:
    """Run the script in this process (no interpreter start-up); return what it printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert tr.main(list(argv)) == 0
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["sr4", "denoise"])
def quick_run(request, train_restoration_quick) -> tuple[str, Path, str]:
    return request.param, *train_restoration_quick(request.param)


@pytest.mark.weights("vgg16")
def test_quick_outputs_hold_real_numbers(quick_run):
    task, out, stdout = quick_run
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.training_loss) == [tr.TASKS[task].baseline_label, *tr.LOSSES]
    assert list(table.kind) == ["baseline"] + ["trained"] * len(tr.LOSSES)
    assert set(QUICK_METRICS) <= set(table.columns)
    assert np.isfinite(table[QUICK_METRICS].to_numpy(float)).all()
    assert (table.steps[1:] == 32).all()
    markdown = (out / "metrics.md").read_text()
    assert "psnr ↑" in markdown and "lpips-vgg ↓" in markdown and "deepssim ↑" in markdown
    own = pd.read_csv(out / "own_loss.csv")
    assert list(own.training_loss) == list(tr.LOSSES)
    assert np.isfinite(own[["baseline_loss", "trained_loss"]].to_numpy(float)).all()
    assert own.beats_baseline_on_train_patches.all()  # the monitored loss at the end against step 0 (the baseline)
    monitor = pd.read_csv(out / "monitor.csv")
    first, last = (monitor.groupby("loss").monitor_loss.agg(f) for f in ("first", "last"))
    np.testing.assert_allclose(own.set_index("training_loss").trained_loss_train_patches, last[own.training_loss],
                               rtol=1e-5)  # own_loss.csv keeps 6 significant digits
    np.testing.assert_allclose(own.set_index("training_loss").baseline_loss_train_patches, first[own.training_loss],
                               rtol=1e-5)
    for name in ("loss_curves.png", "crops.png", "loss_curves.csv", "monitor.csv", "crops.csv", "scores.csv"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == sorted(
        tr.checkpoint_path(out, loss).name for loss in tr.LOSSES)
    assert pd.read_csv(out / "skipped.csv").query("kind == 'training loss'").empty
    assert "| deepssim-lite+l1 |" in stdout  # the table is printed at the end


@pytest.mark.weights("vgg16")
def test_every_loss_decreases(quick_run):
    _, out, _ = quick_run
    curves = pd.read_csv(out / "loss_curves.csv")
    monitor = pd.read_csv(out / "monitor.csv")
    for loss in tr.LOSSES:
        values = curves[curves.loss == loss].sort_values("step").train_loss.to_numpy()
        assert len(values) == 32
        quarter = len(values) // 4
        assert values[-quarter:].mean() < values[:quarter].mean(), loss
        fixed = monitor[monitor.loss == loss].sort_values("step").monitor_loss.to_numpy()
        assert fixed[-1] < fixed[0], loss  # the loss on the fixed batch, from step 0 (the baseline) to the end


@pytest.mark.weights("vgg16")
def test_every_loss_sees_the_same_patches(quick_run):
    _, out, _ = quick_run
    curves = pd.read_csv(out / "loss_curves.csv")
    checksums = curves.pivot(index="step", columns="loss", values="batch_checksum")
    assert checksums.shape == (32, len(tr.LOSSES))
    assert (checksums.nunique(axis=1) == 1).all()
    assert checksums.iloc[:, 0].nunique() == 4  # --quick cycles through a pool of 4 batches


@pytest.mark.weights("vgg16")
def test_rerun_retrains_nothing(quick_run):
    task, out, _ = quick_run
    if task != "sr4":
        pytest.skip("resuming does not depend on the task; once is enough")
    checkpoints = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("*.pt")}
    scores = (out / "scores.csv").read_bytes()
    stdout = run("--task", task, "--quick", "--out", str(out), "--device", "cpu")
    for loss in tr.LOSSES:
        assert f"{loss}: finished (32 steps)" in stdout and "not retrained" in stdout
    assert "resuming" not in stdout
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").glob("*.pt")} == checkpoints
    assert (out / "scores.csv").read_bytes() == scores  # every score came from the cache


def test_patch_stream_is_seeded_and_order_free():
    args = tr.parse_args(["--task", "denoise", "--quick"])
    folder = tr.training_images(args)
    task = tr.TASKS["denoise"]
    later = tr.training_pair(task, folder, args, 5)
    first = tr.training_pair(task, folder, args, 1)
    assert all(torch.equal(a, b) for a, b in zip(tr.training_pair(task, folder, args, 1), first, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(tr.training_pair(task, folder, args, 5), later, strict=True))
    noise = first[0] - first[1]
    assert 0.07 < float(noise.std()) < 0.11  # sigma 25/255 = 0.098, a little less after clipping
    other_seed = tr.training_pair(task, folder, tr.parse_args(["--task", "denoise", "--quick", "--seed", "1"]), 1)
    assert not torch.equal(other_seed[1], first[1])
    lr, hr = tr.training_pair(tr.TASKS["sr4"], folder, tr.parse_args(["--task", "sr4", "--quick"]), 1)
    assert hr.shape == (2, 3, 96, 96) and lr.shape == (2, 3, 24, 24)


def test_networks_start_at_the_baseline():
    lr = torch.rand(1, 3, 20, 24)
    for task, degraded in ((tr.TASKS["sr4"], lr), (tr.TASKS["denoise"], torch.rand(1, 3, 40, 40))):
        net = task.network()
        assert torch.allclose(net(degraded), task.baseline(degraded), atol=1e-6)


def test_interrupted_run_resumes_exactly(tmp_path):
    """--stop-after 12 checkpoints every loss at step 12 and stops; the rerun resumes each (model, Adam state, patch
    stream) and writes what an uninterrupted run writes: the same histories, weights, scores and tables."""
    common = ["--task", "sr4", "--quick", "--losses", "l1,mse", "--eval-metrics", "psnr", "--device", "cpu"]
    straight = run(*common, "--out", str(tmp_path / "straight"))
    assert "finished" not in straight
    first = run(*common, "--out", str(tmp_path / "split"), "--stop-after", "12")
    assert "stopped before the end" in first and not (tmp_path / "split" / "metrics.csv").exists()
    second = run(*common, "--out", str(tmp_path / "split"))
    assert "l1: resuming from step 12" in second and "mse: resuming from step 12" in second
    for loss in ("l1", "mse"):
        a = torch.load(tr.checkpoint_path(tmp_path / "straight", loss), weights_only=True)
        b = torch.load(tr.checkpoint_path(tmp_path / "split", loss), weights_only=True)
        assert [h[0] for h in b["history"]] == list(range(32))  # every step once
        assert b["history"] == a["history"] and b["monitor"] == a["monitor"], loss
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (loss, key)
    for name in ("scores.csv", "metrics.csv", "own_loss.csv", "crops.csv", "loss_curves.csv"):
        split, whole = (tmp_path / d / name for d in ("split", "straight"))
        if name == "own_loss.csv":  # training time differs between the runs, everything else is equal
            pd.testing.assert_frame_equal(pd.read_csv(split).drop(columns="train_seconds"),
                                          pd.read_csv(whole).drop(columns="train_seconds"), check_exact=True)
        else:
            assert split.read_bytes() == whole.read_bytes(), name


def test_unusable_losses_are_skipped_visibly(tmp_path, monkeypatch):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("TORCH_HOME", str(empty))
    monkeypatch.setenv("IQA_NO_DOWNLOAD", "1")
    out = tmp_path / "run"
    stdout = run("--task", "denoise", "--quick", "--steps", "8", "--losses", "l1,lpips-vgg,deepssim-lite+l1",
                 "--eval-metrics", "psnr,dists", "--out", str(out), "--device", "cpu")
    assert "skipped training loss lpips-vgg: weights not found" in stdout
    assert "skipped training loss deepssim-lite+l1: weights not found" in stdout
    assert "skipped evaluation metric dists" in stdout
    skipped = pd.read_csv(out / "skipped.csv")
    assert set(zip(skipped.kind, skipped.name, strict=True)) == {
        ("training loss", "lpips-vgg"), ("training loss", "deepssim-lite+l1"), ("evaluation metric", "dists")}
    markdown = (out / "metrics.md").read_text()
    assert "Skipped" in markdown and "training loss `lpips-vgg`: weights not found" in markdown
    assert list(pd.read_csv(out / "metrics.csv").training_loss) == ["noisy input", "l1"]


def test_a_metric_that_refuses_the_images_is_skipped_visibly(tmp_path):
    """MS-SSIM needs 161 px; the quick evaluation images are 128 px wide: the engine lists its pairs in
    scores.errors.csv, the script reports it as a skipped evaluation metric, again on a rerun."""
    out = tmp_path / "run"
    argv = ["--task", "denoise", "--quick", "--steps", "8", "--losses", "l1", "--eval-metrics", "psnr,ms-ssim",
            "--out", str(out), "--device", "cpu"]
    for attempt in ("first", "rerun"):
        stdout = run(*argv)
        assert "skipped evaluation metric ms-ssim: cannot score evaluation image chelsea:" in stdout, attempt
        assert "ms-ssim" not in pd.read_csv(out / "metrics.csv").columns
        skipped = pd.read_csv(out / "skipped.csv")
        assert list(zip(skipped.kind, skipped.name, strict=True)) == [("evaluation metric", "ms-ssim")]
        errors = pd.read_csv(errors_path(out / "scores.csv"))
        assert set(errors.metric) == {"ms-ssim"} and len(errors) == 2 * 2  # 2 images x (baseline, l1)
        if attempt == "first":
            scores = (out / "scores.csv").read_bytes()
    assert (out / "scores.csv").read_bytes() == scores


def test_a_users_mistake_ends_with_one_line_and_exit_status_2(tmp_path, capsys):
    common = ["--task", "sr4", "--quick", "--out", str(tmp_path / "out"), "--device", "cpu"]
    (tmp_path / "empty").mkdir()
    for extra, message in ((["--losses", "l1,no-such-loss"], "unknown loss 'no-such-loss'; use l1, mse or one of:"),
                           (["--train-dir", str(tmp_path / "empty")], "no images (")):
        assert run_main(tr.main, [*common, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_non_differentiable_loss_is_refused():
    args = tr.parse_args(["--task", "sr4", "--quick"])
    task = tr.TASKS["sr4"]
    batch = tr.training_pair(task, tr.training_images(args), args, 0)
    tr.check_loss(tr.PIXEL_LOSSES["l1"], *batch, task, torch.device("cpu"))
    with pytest.raises(tr.Skipped, match="not differentiable"):
        tr.check_loss(lambda x, y: (x.detach() - y).abs().mean(dim=(1, 2, 3)), *batch, task, torch.device("cpu"))
    with pytest.raises(tr.Skipped, match="one loss per image"):
        tr.check_loss(lambda x, y: (x - y).abs().mean(), *batch, task, torch.device("cpu"))


def test_learning_rate_schedule():
    args = tr.parse_args(["--task", "sr4", "--steps", "100", "--warmup", "10"])
    rates = [tr.lr_at(s, args) for s in range(100)]
    assert rates[0] == pytest.approx(args.lr / 10) and rates[9] == pytest.approx(args.lr)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert math.isclose(tr.lr_at(100, args), 0.01 * args.lr, rel_tol=1e-9)


def test_an_unknown_evaluation_metric_ends_the_run_before_any_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(tr, "create_available_metrics", lambda names, device: built.append(names) or ({}, {}))
    with pytest.raises(KeyError, match="unknown metric 'no-such-metric'"):
        tr.evaluation_metrics("psnr,no-such-metric", torch.device("cpu"))
    assert built == []
    tr.evaluation_metrics("psnr,l1", torch.device("cpu"))  # l1 is the script's own
    assert built == [["psnr"]]


def test_a_metric_that_fails_to_build_is_reported_not_fatal(monkeypatch):
    def failing(names, device):
        raise RuntimeError("broken constructor")

    monkeypatch.setattr(tr, "create_available_metrics", failing)
    metrics, skipped = tr.evaluation_metrics("psnr", torch.device("cpu"))
    assert metrics == {} and skipped == {"psnr": "could not be built: RuntimeError: broken constructor"}
