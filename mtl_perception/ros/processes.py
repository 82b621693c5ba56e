"""Starting and stopping ROS 2 executables of this package as child processes (demo, replay)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple


def start_ros_process(module: str, namespace: str, params: Mapping[str, Any], log: Any,
                      remaps: Sequence[Tuple[str, str]] = ()) -> subprocess.Popen:
    """`python -m module --ros-args` in `namespace` with parameters and remappings; output to `log`."""
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
    for source, target in remaps:
        cmd += ["-r", f"{source}:={target}"]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={value}"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGINT (a clean ROS shutdown), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(path: str, lines: int = 8) -> str:
    """The last lines of a child's log file, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
