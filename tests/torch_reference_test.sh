#!/usr/bin/env bash
# Runs tests/reference_dump for every variant, then tests/torch_reference.py
# on all the dumps (one Python start: importing torch takes seconds).
set -euo pipefail

PYTHON=/usr/bin/python3  # Debian's, with python3-torch; not whatever is on PATH

# Runfiles: $TEST_SRCDIR/<workspace>/tests/... under `bazel test`, or next to
# this script when run by hand from bazel-bin.
find_runfile() {
  local rel="$1"
  for base in "${TEST_SRCDIR:-}/sheaf" "${RUNFILES_DIR:-}/sheaf" "$0.runfiles/sheaf" \
              "$(dirname "$0")/.."; do
    if [[ -e "$base/$rel" ]]; then
      echo "$base/$rel"
      return 0
    fi
  done
  echo "torch_reference_test: cannot find runfile $rel" >&2
  return 1
}

DUMP=$(find_runfile tests/reference_dump)
SCRIPT=$(find_runfile tests/torch_reference.py)

# Missing torch is a broken setup (tools/setup.sh installs python3-torch), not
# a reason to skip: fail loudly.
if ! import_error=$("$PYTHON" -c 'import torch, numpy' 2>&1); then
  echo "==================================================================" >&2
  echo "FAIL: $PYTHON cannot import torch/numpy. Run tools/setup.sh" >&2
  echo "(installs python3-torch python3-numpy). Import error:" >&2
  echo "$import_error" >&2
  echo "==================================================================" >&2
  exit 1
fi

WORK="${TEST_TMPDIR:-$(mktemp -d)}/torch_reference"
rm -rf "$WORK"
dirs=()
for variant in mha_untied gqa_tied_bias perlayer; do
  "$DUMP" "$WORK/$variant" "$variant"
  dirs+=("$WORK/$variant")
done

"$PYTHON" "$SCRIPT" "${dirs[@]}"
