"""Registration through entry points: a separate package adds a metric, a backbone and a comparator by declaring
``iqa_core.plugins``; the project's own plugins come from its pyproject.toml when run from the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest

from iqa_core import registry
from iqa_core.registry import PLUGIN_GROUP, PluginError, checkout_entry_points, plugin_entry_points

ROOT = Path(__file__).resolve().parents[1]
OWN_PLUGINS = {"baselines": "iqa_core.baselines", "deepssim": "deepssim",
               "distribution_measures": "distribution_measures", "zs_iqa": "zs_iqa"}

TOY_PACKAGE = '''
"""A plugin outside the project: one backbone, one comparator, one metric."""
import torch

from iqa_core.backbones import TapBackbone, register_backbone
from iqa_core.comparators import Comparator, register_comparator
from iqa_core.metric import Metric, register_metric


class Pixels(TapBackbone):
    """The image as its only tap."""

    name = "toy-pixels"
    taps = ("image",)

    def __init__(self, weights=None):
        super().__init__()

    def forward(self, x, taps=None):
        return [x for _ in self.check_taps(taps)]


@register_comparator("toy-max-abs")
class MaxAbs(Comparator):
    """Largest absolute difference, summed over taps."""

    def compare(self, dist, ref):
        return torch.stack([(d - r).abs().flatten(1).amax(1) for d, r in zip(dist, ref)]).sum(0)


@register_metric("toy-mean-abs", description="mean absolute difference (a toy plugin)")
class MeanAbs(Metric):
    higher_is_better = False
    paper = "none"

    def score(self, dist, ref, **kwargs):
        return (dist - ref).abs().flatten(1).mean(1)


register_backbone("toy-pixels", Pixels, description="the image itself")
'''

PROBE = '''
import json, sys
import torch
from iqa_core import create_metric, list_metrics
from iqa_core.backbones import create_backbone, list_backbones
from iqa_core.comparators import create_comparator, list_comparators

before = "toy_iqa" in sys.modules
metrics = list_metrics()
dist, ref = torch.full((2, 3, 8, 8), 0.25), torch.full((1, 3, 8, 8), 0.75)
taps = create_backbone("toy-pixels")(dist, ["image"]), create_backbone("toy-pixels")(ref, ["image"])
print(json.dumps({
    "imported_before_asked": before,
    "toy_metric": "toy-mean-abs" in metrics, "own_metric": "deepssim" in metrics,
    "toy_backbone": "toy-pixels" in list_backbones(), "toy_comparator": "toy-max-abs" in list_comparators(),
    "metric_scores": create_metric("toy-mean-abs")(dist, ref).tolist(),
    "comparator_scores": create_comparator("toy-max-abs")(*taps).tolist(),
}))
'''


def _install_toy_plugin(site: Path) -> None:
    """What pip leaves for an installed distribution: the module and its dist-info with entry_points.txt."""
    (site / "toy_iqa").mkdir(parents=True)
    (site / "toy_iqa" / "__init__.py").write_text(TOY_PACKAGE)
    info = site / "toy_iqa-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-iqa\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\ntoy = toy_iqa\n")


def test_a_separate_package_registers_a_metric_backbone_and_comparator(tmp_path):
    site = tmp_path / "site"
    _install_toy_plugin(site)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["imported_before_asked"] is False  # nothing names the toy package but its entry point
    assert found["toy_metric"] and found["own_metric"] and found["toy_backbone"] and found["toy_comparator"]
    assert found["metric_scores"] == [0.5, 0.5]
    assert found["comparator_scores"] == [0.5, 0.5]


def test_the_checkout_declares_every_own_plugin():
    own = checkout_entry_points()
    if own is None:
        pytest.skip("tomllib (Python >= 3.11) is needed to read pyproject.toml")
    assert {ep.name: ep.value for ep in own} == OWN_PLUGINS
    assert all(ep.group == PLUGIN_GROUP for ep in own)


def test_another_projects_pyproject_is_not_read(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[project]\nname = "someone-else"\n[project.entry-points."{PLUGIN_GROUP}"]\nx = "x"\n')
    assert checkout_entry_points(pyproject) is None
    assert checkout_entry_points(tmp_path / "absent.toml") is None


def _installed(name: str, value: str, dist: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, value=value, group=PLUGIN_GROUP, dist=SimpleNamespace(name=dist,
                                                                                             metadata={"Name": dist}))


def test_checkout_plugins_replace_this_projects_stale_metadata(monkeypatch):
    """An editable install made before the table changed must not decide which of the project's modules load."""
    if checkout_entry_points() is None:
        pytest.skip("tomllib (Python >= 3.11) is needed to read pyproject.toml")
    stale = _installed("old", "iqa_core.removed_module", "deep_iqa_repro")
    other = _installed("toy", "toy_iqa", "toy-iqa")
    monkeypatch.setattr(registry, "entry_points", lambda group: [stale, other] if group == PLUGIN_GROUP else [])
    values = [ep.value for ep in plugin_entry_points()]
    assert values == [*OWN_PLUGINS.values(), "toy_iqa"]


def test_installed_metadata_serves_without_a_checkout(monkeypatch, tmp_path):
    installed = [_installed("baselines", "iqa_core.baselines", "deep-iqa-repro"),
                 _installed("baselines2", "iqa_core.baselines", "deep-iqa-repro")]  # the same module twice
    monkeypatch.setattr(registry, "CHECKOUT_PYPROJECT", tmp_path / "pyproject.toml")  # as from site-packages
    monkeypatch.setattr(registry, "entry_points", lambda group: installed)
    assert [ep.name for ep in plugin_entry_points()] == ["baselines"]


def test_a_plugin_that_fails_to_import_is_named_in_one_line(monkeypatch):
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "plugin_entry_points",
                        lambda: [EntryPoint("broken", "no_such_module_for_iqa", PLUGIN_GROUP)])
    with pytest.raises(PluginError) as err:
        registry.load_plugins()
    message = str(err.value)
    assert "\n" not in message and "'broken'" in message and "no_such_module_for_iqa" in message
    assert "uninstall" in message
    assert registry._plugins_loaded is False  # the next request tries again


def test_no_hand_kept_plugin_lists_remain_in_core():
    source = "\n".join(p.read_text() for p in (ROOT / "iqa_core").glob("*.py"))
    for name in ("METRIC_PACKAGES", "COMPARATOR_PACKAGES", "BACKBONE_PACKAGES", "plugin_packages"):
        assert name not in source
