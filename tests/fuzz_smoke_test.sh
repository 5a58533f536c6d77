#!/usr/bin/env bash
# Smoke run of the libFuzzer targets (issue 9, "Fuzzing"): builds each target
# with clang (tools/fuzz.sh) and runs it once over its seed corpus
# (fuzz/corpus/TARGET), no mutation: every seed must pass the harness's
# checks under ASan/UBSan, with no leak. The fuzzing itself (minutes per
# target) is `tools/fuzz.sh all SECONDS`, never part of the test suite.
#
# Skipped when clang++ or libFuzzer (libclang-rt-14-dev) is absent. Objects
# go to $SHEAF_FUZZ_OUT when set (e.g. --test_env=SHEAF_FUZZ_OUT=...) so that
# reruns compile only what changed; otherwise to the test's temporary folder.
set -euo pipefail
source "$(dirname "$0")/skip_lib.sh"

cxx=""
for c in clang++-14 clang++; do
  if command -v "$c" >/dev/null; then cxx=$c; break; fi
done
[[ -n $cxx ]] || skip_test "clang++ is not installed (tools/setup.sh installs clang-14)"
rt=$("$cxx" -print-runtime-dir 2>/dev/null || true)
[[ -f $rt/libclang_rt.fuzzer-x86_64.a ]] ||
  skip_test "libFuzzer (libclang_rt.fuzzer) is not installed (libclang-rt-14-dev)"

# The script finds the checkout through its runfiles link.
script=$(dirname "$0")/../tools/fuzz.sh
[[ -f $script ]] || script=${TEST_SRCDIR:-}/${TEST_WORKSPACE:-}/tools/fuzz.sh
export SHEAF_FUZZ_OUT=${SHEAF_FUZZ_OUT:-${TEST_TMPDIR:-/tmp}/fuzz}
export SHEAF_FUZZ_CXX=$cxx
out=$("$script" smoke 2>&1) || { echo "$out"; echo "FAIL: a seed failed its fuzz target"; exit 1; }
echo "$out" | grep -v '^  compile' || true
n=$(echo "$out" | grep -c '^smoke .*: [0-9]* seeds ok$' || true)
# Every target ran (tools/fuzz.sh list is the list).
want=$("$script" list | wc -l)
if ((n != want || want < 8)); then
  echo "FAIL: $n of $want targets ran their seeds"
  exit 1
fi
echo "PASS: $n fuzz targets ran their seed corpora"
