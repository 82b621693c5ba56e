"""Process-group helpers so the trainer runs unchanged under one process or torchrun/DDP."""
from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env() -> bool:
    """Joins the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    import os

    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (e.g. validation metrics computed on rank 0 only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
