"""What the README promises of every metric object: it stays in eval mode, and bad input names the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iqa_core import IQAInputError, create_metric

# Built with torchvision's seeded random weights: these properties do not depend on what a backbone learnt.
DEEP = ["deepssim", "deepssim-lite", "deepwsd-mobilenet", "deepjsd-efficientnet", "lpips-alex", "dists",
        "zs-alexnet-l2"]


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", ["deepwsd-mobilenet", "deepjsd-efficientnet"])
def test_train_keeps_batchnorm_backbones_in_eval_mode(name):
    """metric.train(), also through a model that contains the metric, leaves every submodule in eval mode: BatchNorm
    keeps its running statistics (a training-mode pass would update them and change the score)."""
    metric = create_metric(name, weights="random")
    norms = _batchnorms(metric)
    assert norms, "the test needs a backbone with BatchNorm"
    x, y = torch.rand(2, 3, 160, 160), torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        expected = metric.eval()(x, y)
    running = [m.running_mean.clone() for m in norms]
    model = nn.ModuleDict({"net": nn.Conv2d(3, 3, 1), "metric": metric}).train()
    assert model.training and model["net"].training
    assert not any(m.training for m in metric.modules())
    with torch.no_grad():
        again = metric(x, y)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    assert all(torch.equal(m.running_mean, r) for m, r in zip(norms, running, strict=True))


@pytest.mark.parametrize("name", DEEP)
def test_every_deep_metric_stays_in_eval_mode(name):
    metric = create_metric(name, weights="random").train()
    assert not metric.training and not any(m.training for m in metric.modules())


@pytest.mark.parametrize("name", ["psnr", "ssim", "deepssim", "deepwsd-alexnet", "zs-alexnet-l2", "lpips-alex"])
def test_errors_name_the_argument(name):
    kwargs = {} if name in ("psnr", "ssim") else {"weights": "random"}
    metric = create_metric(name, **kwargs)
    good = torch.rand(1, 3, 96, 96)
    for bad, problem in [(good * 255, "0..255"), (good[:, :1], "3 \\(RGB\\) channels"),
                         (torch.full_like(good, float("nan")), "NaN")]:
        with pytest.raises(IQAInputError, match=f"^dist: .*{problem}"):
            metric(bad, good)
        with pytest.raises(IQAInputError, match=f"^ref: .*{problem}"):
            metric(good, bad)
