#!/usr/bin/env bash
# README command 1: set everything up and show the system working.
#
#   bash scripts/demo.sh            # extra arguments go to `mtl-perception demo`, e.g. --seconds 30
#
# 1. the development environment (.venv, ROS 2 wheels, vision_msgs);
# 2. a model: runs/quick/model.onnx, trained with the quick recipe if missing (about 8 minutes on
#    a 2-core CPU; the synthetic data is generated on first use);
# 3. perception_node + a synthetic camera_source as separate processes, every output recorded:
#    rates, latency, drops, and a mosaic, written to runs/demo/ (report.txt, report.json,
#    mosaic.png).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_env.sh

MODEL=${MODEL:-runs/quick/model.onnx}
if [ ! -f "$MODEL" ]; then
  echo "demo: $MODEL is missing: training the quick recipe (config/quick.yaml)"
  .venv/bin/mtl-train train config/quick.yaml
fi

export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d)}
# Keep DDS discovery on this host (Humble spells it ROS_LOCALHOST_ONLY=1).
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export MPLBACKEND=Agg

.venv/bin/mtl-perception demo --model "$MODEL" --out runs/demo "$@"
