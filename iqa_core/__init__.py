"""Shared core of the deep-feature IQA reproductions: backbones and weights, image I/O,
input validation, the metric interface and registry, dataset loaders and correlation statistics."""

from iqa_core.datasets import DatasetNotFoundError, list_datasets, load_dataset
from iqa_core.io import ImageReadError, load_image, load_map
from iqa_core.metric import FeatureMetric, Metric, create_metric, list_metrics, metric_info, register_metric
from iqa_core.stats import correlations
from iqa_core.validation import DeviceError, IQAInputError
from iqa_core.weights import InvalidWeightsError, WeightsNotFoundError, resolve_weights

__all__ = ["load_image", "load_map", "ImageReadError", "IQAInputError", "Metric", "FeatureMetric",
           "create_metric", "list_metrics", "metric_info", "register_metric", "resolve_weights",
           "WeightsNotFoundError", "InvalidWeightsError", "DeviceError", "load_dataset", "list_datasets",
           "DatasetNotFoundError", "correlations"]
__version__ = "0.1.0"
