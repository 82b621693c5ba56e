"""Task registry: importing this package registers the four built-in tasks."""
from .base import TASKS, DataInfo, Task, TaskOptions, register_task
from . import depth, detection, segmentation, super_resolution  # noqa: F401  (registration)

__all__ = ["TASKS", "DataInfo", "Task", "TaskOptions", "register_task"]
