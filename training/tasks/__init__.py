"""Task registry: importing this package registers the four built-in tasks."""
from training.tasks import depth, detection, segmentation, super_resolution  # noqa: F401  (registration)
from training.tasks.base import TASKS, DataInfo, Task, TaskOptions, register_task

__all__ = ["TASKS", "DataInfo", "Task", "TaskOptions", "register_task"]
