"""Shared test set-up for the ROS 2 tests.

At start the session gets its own DDS domain (`ROS_DOMAIN_ID`, 1..101, from the pid; override
with MTL_TEST_ROS_DOMAIN_ID), discovery limited to this host
(`ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`), message field checks switched on
(`ROS_PYTHON_CHECK_FIELDS=1`: Kilted's generated setters skip type checks unless asked, Humble's
always assert, so this makes wrong field types fail here as they would on a Humble robot) and,
unless one is set already, a temporary `ROS_LOG_DIR`. All set in os.environ before any test
module is imported, so in-process `rclpy.init()` and child processes agree.

Fixture `ros_python` runs Python snippets in child processes with that environment:
`ros_python.run(code, timeout=60)` waits and returns a `subprocess.CompletedProcess` (text
stdout/stderr); `ros_python.start(code)` returns a `subprocess.Popen` for snippets that must run
side by side (a publisher and a subscriber); processes it started are killed at teardown.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Dict, List, Optional

import pytest

_created_log_dir: Optional[str] = None


def session_domain_id() -> int:
    """The session's DDS domain: 1..101 keeps every participant's ports valid on Linux."""
    override = os.environ.get("MTL_TEST_ROS_DOMAIN_ID")
    return int(override) if override else 1 + os.getpid() % 101


def pytest_configure(config: pytest.Config) -> None:
    global _created_log_dir
    os.environ["ROS_DOMAIN_ID"] = str(session_domain_id())
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_PYTHON_CHECK_FIELDS", "1")
    if not os.environ.get("ROS_LOG_DIR"):
        _created_log_dir = tempfile.mkdtemp(prefix="mtl-ros-log-")
        os.environ["ROS_LOG_DIR"] = _created_log_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    if _created_log_dir:
        shutil.rmtree(_created_log_dir, ignore_errors=True)


def ros_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a ROS child process (a copy of this one, plus `extra`)."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


class RosPython:
    """Runs Python snippets (dedented) in child processes of this interpreter."""

    def __init__(self) -> None:
        self._procs: List[subprocess.Popen] = []

    def start(self, code: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], env=ros_env(env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._procs.append(proc)
        return proc

    def run(self, code: str, timeout: float = 60,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], env=ros_env(env),
            capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def ros_python():
    helper = RosPython()
    try:
        yield helper
    finally:
        helper.close()
