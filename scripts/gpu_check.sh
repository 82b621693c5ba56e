#!/usr/bin/env bash
# GPU check (README "On the vehicle"): TensorRT and CUDA providers against the CPU (FP32, FP16),
# TensorRT engine-cache reuse, the node's frame rate at 1280x720; JSON in docs/benchmarks/.
#   bash scripts/gpu_check.sh [--model runs/quick/model.onnx] [--json docs/benchmarks/gpu_check.json]
#     [--frames 8] [--node-frames 200] [--skip-node]
# Without a usable NVIDIA GPU it says so in one line, writes status "unmeasured" and exits 0.
# Uses .venv when there is one (scripts/setup_env.sh), else python3 (a robot's ROS environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m mtl_perception.tools.gpu_check "$@"
