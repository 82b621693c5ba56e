"""A Fast DDS profile for camera-sized messages on one host.

Fast DDS's shared-memory transport uses a 512 KiB segment per participant by default. A
640x480 bgr8 frame is 900 KiB, so it does not fit and goes over UDP loopback instead, in
fragments, with reliable acknowledgements: measured here, one 640x480 hop between two Python
processes took 14 ms (320x240, which fits, 2 ms); with a 16 MiB segment it took 3 ms. The same
fragmentation is why best-effort subscribers lose most large frames with the defaults.

This module writes a profile with a 16 MiB shared-memory segment (plus UDPv4 for everything that
shared memory cannot reach; restricted to 127.0.0.1 when `localhost_only`) and tells whether the
environment already selects a profile. Use it for any process of the graph (every process that
exchanges large images needs it):

    python -m mtl_perception.ros.dds_profile > fastdds_large_frames.xml
    export FASTDDS_DEFAULT_PROFILES_FILE=$PWD/fastdds_large_frames.xml   # Kilted (Fast DDS 3)
    export FASTRTPS_DEFAULT_PROFILES_FILE=$PWD/fastdds_large_frames.xml  # Humble, Jazzy (Fast DDS 2)

It only affects rmw_fastrtps (the default RMW); Cyclone DDS and others ignore it.
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Dict, Mapping, Optional

SEGMENT_BYTES = 16 * 1024 * 1024
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")

_TEMPLATE = """<?xml version="1.0" encoding="UTF-8" ?>
<!-- mtl_perception: shared memory large enough for camera frames (see mtl_perception/dds_profile.py) -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>mtl_shm</transport_id>
        <type>SHM</type>
        <segment_size>{segment}</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>mtl_udp</transport_id>
        <type>UDPv4</type>{whitelist}
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="mtl_perception_large_frames" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>mtl_shm</transport_id>
          <transport_id>mtl_udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def profile_xml(localhost_only: bool = False, segment_bytes: int = SEGMENT_BYTES) -> str:
    whitelist = ("\n        <interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>"
                 if localhost_only else "")
    return _TEMPLATE.format(segment=int(segment_bytes), whitelist=whitelist)


def localhost_only(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the ROS environment keeps discovery on this host (Jazzy+ and Humble spellings)."""
    return env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST" or env.get(
        "ROS_LOCALHOST_ONLY", "") == "1"


def user_profile(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The Fast DDS profile file the environment already selects, if any."""
    for name in PROFILE_VARIABLES:
        if env.get(name):
            return env[name]
    return None


def large_frame_env(env: Optional[Mapping[str, str]] = None, directory: Optional[str] = None) -> Dict[str, str]:
    """A copy of `env` (default os.environ) that selects the large-frame profile, written to a
    file in `directory` (default: a new temporary directory). An environment that already names
    a profile, or uses another RMW than Fast DDS, is returned unchanged."""
    out = dict(os.environ if env is None else env)
    if user_profile(out) or out.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp",
                                                                                   "rmw_fastrtps_dynamic_cpp"):
        return out
    directory = directory or tempfile.mkdtemp(prefix="mtl-dds-")
    path = os.path.join(directory, "fastdds_large_frames.xml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(profile_xml(localhost_only(out)))
    # Fast DDS 3 (Kilted) reads the first, Fast DDS 2 (Humble, Jazzy) the second; setting only
    # the one the installed version reads avoids Fast DDS 3's deprecation warning.
    out[_variable_for_installed_fastdds()] = path
    return out


def _variable_for_installed_fastdds() -> str:
    distro = os.environ.get("ROS_DISTRO", "")
    if distro in ("humble", "iron", "jazzy"):
        return "FASTRTPS_DEFAULT_PROFILES_FILE"
    if distro:
        return "FASTDDS_DEFAULT_PROFILES_FILE"
    try:  # no ROS_DISTRO (pip wheels): ask the rclpy that is installed
        from importlib.metadata import version

        major = int(version("ros-rclpy").split(".")[0])
        return "FASTRTPS_DEFAULT_PROFILES_FILE" if major < 9 else "FASTDDS_DEFAULT_PROFILES_FILE"
    except Exception:
        return "FASTDDS_DEFAULT_PROFILES_FILE"


if __name__ == "__main__":
    sys.stdout.write(profile_xml(localhost_only="--localhost" in sys.argv[1:]))
