"""Starting and stopping ROS 2 executables of this package as child processes (demo, replay,
benchmark): `start_node` is the one way a tool starts `perception_node`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Mapping, Sequence, Tuple

from mtl_perception.ros.parameters import node_arguments

NODE_MODULE = "mtl_perception.ros.node"


def ros_command(module: str, namespace: str, remaps: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """`python -m module --ros-args` in `namespace` with remappings (parameters to be appended)."""
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
    for source, target in remaps:
        cmd += ["-r", f"{source}:={target}"]
    return cmd


def _spawn(cmd: List[str], log: Any) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def start_ros_process(module: str, namespace: str, params: Mapping[str, Any], log: Any,
                      remaps: Sequence[Tuple[str, str]] = ()) -> subprocess.Popen:
    """Another executable of this package (e.g. camera_source) with `-p NAME:=VALUE` as given; output to `log`."""
    return _spawn(ros_command(module, namespace, remaps) + [a for name, value in params.items()
                                                           for a in ("-p", f"{name}:={value}")], log)


def node_command(namespace: str, params: Mapping[str, Any], remaps: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """The command line of a perception_node in `namespace` with `params` (checked against the
    node's parameter table: an unknown name or an invalid value is a ValueError) and remappings."""
    return ros_command(NODE_MODULE, namespace, remaps) + node_arguments(params)


def start_node(namespace: str, params: Mapping[str, Any], log: Any,
               remaps: Sequence[Tuple[str, str]] = ()) -> subprocess.Popen:
    """Starts perception_node (`node_command`) as a child process; output to `log`."""
    return _spawn(node_command(namespace, params, remaps), log)


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
