#!/usr/bin/env bash
# The recovered adapter of small LoRAM / QLoRAM runs, loaded with
# peft.PeftModel.from_pretrained on the original full model, gives sheaf's
# logits (tests/loram_peft.py states the tolerance). Needs the venv of
# tools/setup.d/20-hf-python.sh; reported SKIPPED without it.
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
  echo "loram_peft_test: cannot find runfile $rel" >&2
  return 1
}

source "$(find_runfile tests/skip_lib.sh)"
if ! "$VENV/bin/python" -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1; then
  skip_test "the Hugging Face venv $VENV is missing or broken (tools/setup.d/20-hf-python.sh)"
fi

SHEAF=$(find_runfile cli/sheaf)
SCRIPT=$(find_runfile tests/loram_peft.py)
MODEL=$(dirname "$(find_runfile models/tiny-en/config.json)")
WORK="${TEST_TMPDIR:-$(mktemp -d)}/loram_peft"
rm -rf "$WORK"
mkdir -p "$WORK"
export OMP_NUM_THREADS=1
exec "$VENV/bin/python" "$SCRIPT" --sheaf "$SHEAF" --model "$MODEL" --work "$WORK"
