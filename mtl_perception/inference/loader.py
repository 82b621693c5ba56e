"""The one entry point that opens a model: a single contract ONNX file or a bundle of them.

It sits above `model` and `bundle` so that neither has to import the other's loader.
"""
from __future__ import annotations

import os

from mtl_perception.inference.bundle import ModelBundle, is_bundle_path
from mtl_perception.inference.model import ContractModel, PerceptionModel, RuntimeOptions


def load_model(path: os.PathLike | str, options: RuntimeOptions = RuntimeOptions()) -> ContractModel:
    """Loads an exported model file, or a model bundle (a manifest `.json`, or a folder holding
    `bundle.json`; see `mtl_perception.inference.bundle`); both have the same interface."""
    if is_bundle_path(path):
        return ModelBundle(path, options)
    return PerceptionModel(path, options)
