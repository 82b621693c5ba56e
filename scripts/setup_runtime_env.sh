#!/usr/bin/env bash
# Builds .venv-runtime: the runtime's dependencies only (no torch, no ROS wheels), the way a
# robot's image has them without the training extra, or does nothing when it is already up to
# date (a stamp of the files that define it). scripts/test.sh runs tests/runtime/ in it to show
# that the runtime's tests pass where torch is absent.
#
# The requirements are listed here rather than taken from setup.py's install_requires so that
# the CPU onnxruntime build is used (a robot without a GPU) whatever setup.py asks for; the
# package itself is installed editable without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=.venv-runtime
PIP=(env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip -q)
RUNTIME_REQUIREMENTS=(
  "setuptools" "wheel" "numpy>=1.21" "opencv-python-headless>=4.5" "onnxruntime>=1.16" "pyyaml>=5.4"
  "tqdm>=4.60" "matplotlib>=3.5" "pycocotools>=2.0.6" "rosbags>=0.11"
)
# pytest, and onnx to hand-build the test models (tests/runtime/model_factory.py).
TEST_REQUIREMENTS=("pytest>=7" "onnx>=1.16")

stamp=$(cat setup.py scripts/setup_runtime_env.sh | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "setup_runtime: $VENV is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_runtime: creating $VENV with $PYTHON (runtime dependencies only: no torch, no ROS)"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup_runtime: installing the runtime's dependencies, pytest and onnx; mtl_perception editable, no deps"
"${PIP[@]}" install "${RUNTIME_REQUIREMENTS[@]}" "${TEST_REQUIREMENTS[@]}" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${PIP[@]}" install --no-deps --no-build-isolation -e . \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# A dependency that pulled torch in would make the run prove nothing.
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'rclpy')))"; then
  echo "setup_runtime: torch or rclpy got into $VENV: it must hold the runtime only" >&2
  exit 1
fi
echo "$stamp" > "$VENV/.setup-stamp"
echo "setup_runtime: done"
