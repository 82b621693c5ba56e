"""Fixtures of the trainer's tests."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from mtl_perception.data.synthetic import Camera, generate_dataset

#: Frames (train, val) of `tiny_data` unless a module asks for others with `pytest.mark.tiny_data`.
TINY_DATA_FRAMES = (24, 8)


@pytest.fixture(scope="session")
def _tiny_datasets(tmp_path_factory) -> Dict[Tuple[int, int], Path]:
    """Datasets made so far, by (train, val) frames: modules asking for the same size share one
    (the trainer only reads it)."""
    return {}


@pytest.fixture(scope="module")
def tiny_data(request, _tiny_datasets, tmp_path_factory) -> Path:
    """A small synthetic dataset: `train/` and `val/` from a 128x64 camera (seeds 3 and 4).

    Its size is the module's `pytestmark = pytest.mark.tiny_data(train=16, val=4)`, else
    TINY_DATA_FRAMES: tests choose few frames where one step is all they need."""
    marker = request.node.get_closest_marker("tiny_data")
    frames = (marker.kwargs["train"], marker.kwargs["val"]) if marker else TINY_DATA_FRAMES
    if frames not in _tiny_datasets:
        root = tmp_path_factory.mktemp(f"data-{frames[0]}-{frames[1]}-")
        camera = Camera.default(128, 64)
        generate_dataset(root / "train", frames[0], seed=3, camera=camera, workers=1, progress=False)
        generate_dataset(root / "val", frames[1], seed=4, camera=camera, workers=1, progress=False)
        _tiny_datasets[frames] = root
    return _tiny_datasets[frames]


@pytest.fixture
def one_thread():
    """The tiny models of these tests: one intra-op thread is several times faster on a shared CPU.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
