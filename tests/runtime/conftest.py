"""Fixtures of the runtime's tests (tests/conftest.py sets up the ROS environment for all tests)."""
from __future__ import annotations

import importlib
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def exported_models() -> ModuleType:
    """tests/train/exported_models: models exported by training's exporter (torch). The runtime's
    tests must pass where only the runtime is installed, so a test that needs such a model skips
    there instead of failing; everything else uses tests/runtime/model_factory (no torch)."""
    pytest.importorskip("torch", reason="torch is not installed (runtime-only environment)")
    return importlib.import_module("tests.train.exported_models")
