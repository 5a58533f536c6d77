#!/usr/bin/env bash
# sheaf against transformers 4.44 / peft 0.12 / tokenizers 0.19 (the venv of
# tools/setup.d/20-hf-python.sh): tiny models and tokenizers made by
# tests/hf_reference.py. A missing venv FAILS (never a silent pass).
set -euo pipefail

VENV="${SHEAF_HF_VENV:-/opt/sheaf/venv-hf}"

find_runfile() {
  local rel="$1"
  for base in "${TEST_SRCDIR:-}/sheaf" "${RUNFILES_DIR:-}/sheaf" "$0.runfiles/sheaf" \
              "$(dirname "$0")/.."; do
    if [[ -e "$base/$rel" ]]; then
      echo "$base/$rel"
      return 0
    fi
  done
  echo "hf_reference_test: cannot find runfile $rel" >&2
  return 1
}

if ! err=$("$VENV/bin/python" -c 'import torch, transformers, peft, tokenizers, safetensors' 2>&1); then
  echo "==================================================================" >&2
  echo "FAIL: the Hugging Face reference venv $VENV is missing or broken." >&2
  echo "Run tools/setup.d/20-hf-python.sh (needs PyPI). Python said:" >&2
  echo "$err" >&2
  echo "==================================================================" >&2
  exit 1
fi

SHEAF=$(find_runfile cli/sheaf)
DUMP=$(find_runfile tests/hf_tokenize_dump)
EXPORT=$(find_runfile tests/hf_adapter_export)
SCRIPT=$(find_runfile tests/hf_reference.py)
WORK="${TEST_TMPDIR:-$(mktemp -d)}/hf_reference"
rm -rf "$WORK"
mkdir -p "$WORK"
export OMP_NUM_THREADS=1
exec "$VENV/bin/python" "$SCRIPT" --sheaf "$SHEAF" --tokenize-dump "$DUMP" --adapter-export "$EXPORT" --work "$WORK"
