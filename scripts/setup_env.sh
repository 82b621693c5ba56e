#!/usr/bin/env bash
# Builds the development environment in .venv from scratch, or does nothing when it is
# already up to date (a stamp of the files that define it).
#
# torch is installed first and pinned (TORCH_SPEC): a bare `torch` requirement resolved by pip
# would pull a multi-GB CUDA build. The ROS 2 side (wheels + vision_msgs) is added by
# scripts/setup_ros.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
VENV=.venv
PIP=(env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip -q)

stamp_inputs=(setup.py setup.cfg package.xml scripts/setup_env.sh)
[ -f scripts/setup_ros.sh ] && stamp_inputs+=(scripts/setup_ros.sh)
[ -d ros_interfaces ] && while IFS= read -r f; do stamp_inputs+=("$f"); done < <(find ros_interfaces -type f | sort)
stamp=$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)

if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || { echo "setup: creating $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
echo "setup: installing $TORCH_SPEC first (pinned, so no later requirement resolves torch to another build)"
# shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
"${PIP[@]}" install $TORCH_SPEC 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "setup: installing mtl_perception (editable) with gpu (onnxruntime-gpu, runs on CPU too), training and test extras"
"${PIP[@]}" install -e ".[gpu,training,test]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
if [ -f scripts/setup_ros.sh ]; then
  echo "setup: ROS 2 side"
  bash scripts/setup_ros.sh "$VENV"
fi
echo "$stamp" > "$VENV/.setup-stamp"
echo "setup: done"
