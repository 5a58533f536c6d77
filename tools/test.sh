#!/usr/bin/env bash
# Builds and runs every test, then prints one closing line
#   N passed, M failed[, K skipped]
# counted from the GoogleTest XML that each test target writes (one count per
# test case), plus every test target that failed to build or crashed without
# writing XML (counted as one failure each). Exits non-zero when anything
# failed. Extra arguments go to `bazel test` (e.g. a target pattern).
set -uo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

targets=("$@")
((${#targets[@]})) || targets=(//...)

# GPU tests run only where a GPU is present (tools/gpu_check.sh runs them).
filters=()
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  filters=(--test_tag_filters=-gpu)
fi

bazel test --keep_going "${filters[@]}" "${targets[@]}" 2>&1 | tee /tmp/sheaf_test_$$.log \
  | grep -vE 'linux-sandbox(-pid1)?\.cc'
bazel_rc=${PIPESTATUS[0]}

/usr/bin/python3 tools/count_tests.py /tmp/sheaf_test_$$.log "$(bazel info bazel-testlogs 2>/dev/null)"
count_rc=$?
rm -f /tmp/sheaf_test_$$.log
# bazel exits 4 when no test ran; anything but 0 is a failure here.
if ((bazel_rc != 0 || count_rc != 0)); then exit 1; fi
