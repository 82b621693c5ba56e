#!/usr/bin/env bash
# README command 2: set everything up, then check everything: usage `bash scripts/test.sh [PYTEST ARGS]`.
#
# Steps (each one runs even when an earlier one failed; the run fails if any did, naming them):
#   1. set-up of .venv (scripts/setup_env.sh; does nothing when up to date)
#   2. ruff check .       lint and import order (ruff.toml)
#   3. lint-imports       layer contracts (.importlinter)
#   4. pytest             the whole suite in .venv, with PYTEST ARGS
#   5. runtime-only       tests/runtime/ in .venv-runtime (scripts/setup_runtime_env.sh: the
#                         runtime's dependencies, no torch, no ROS): they must pass or skip there
# PYTEST ARGS that name a test file or folder select tests: then step 5 is left out (a developer
# re-running one test); `MTL_RUNTIME_TESTS=0` leaves it out too.
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
step() { echo "== test: $1"; }
fail() { echo "test: step failed: $1" >&2; failed+=("$1"); }
pytest_in() {  # VENV STEP-NAME ARGS...: pytest, with exit code 5 counted as a failure
  local venv=$1 name=$2; shift 2
  "$venv/bin/python" -m pytest "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then echo "test: pytest collected no tests" >&2; fi
  [ $rc -eq 0 ] || fail "$name (exit $rc)"
}

selects_tests=0
for arg in "$@"; do
  [ -e "${arg%%::*}" ] && selects_tests=1
done

step "set-up (.venv)"
bash scripts/setup_env.sh || { fail "set-up (.venv)"; echo "test: FAILED: ${failed[*]}" >&2; exit 1; }
export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d)}
export MPLBACKEND=Agg

step "ruff check ."
.venv/bin/ruff check . --output-format concise || fail "ruff check ."
step "lint-imports (layer contracts in .importlinter)"
.venv/bin/lint-imports || fail "lint-imports"
step "pytest"
pytest_in .venv "pytest" "$@"

if [ "$selects_tests" = 0 ] && [ "${MTL_RUNTIME_TESTS:-1}" != 0 ]; then
  step "runtime-only tests (tests/runtime in .venv-runtime: no torch, no ROS)"
  started=$SECONDS
  if bash scripts/setup_runtime_env.sh; then
    echo "test: .venv-runtime set-up took $((SECONDS - started)) s"
    started=$SECONDS
    # The throughput print of the synthetic world (200 frames) is skipped here: it is the step's
    # slowest test, needs nothing but numpy and OpenCV, and runs in step 4.
    pytest_in .venv-runtime "runtime-only tests" tests/runtime -rs -p no:cacheprovider \
      --deselect tests/runtime/data/test_synthetic.py::test_generation_throughput_384x256_two_workers "$@"
    echo "test: runtime-only tests took $((SECONDS - started)) s"
  else
    fail "set-up (.venv-runtime)"
  fi
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: all steps passed"
