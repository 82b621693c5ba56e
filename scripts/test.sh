#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite.
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d)}
export MPLBACKEND=Agg
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "test: pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
