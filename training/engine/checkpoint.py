"""Checkpoints: written atomically, read with `weights_only=True`.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load(...,
weights_only=True)` reads it without unpickling code. It is first written to a temporary file
in the same directory, flushed to disk and then renamed over the target: a kill at any moment
leaves either the old checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

FORMAT = "mtl_perception.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the message names the file."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mtl_perception checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not {VERSION}")
    return state


def parameter_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash of a model's initial weights: models that share it share an initialisation."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if tensor.is_floating_point():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
