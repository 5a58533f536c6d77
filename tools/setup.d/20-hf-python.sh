#!/usr/bin/env bash
# The Python reference environment for the Hugging Face checks
# (tests/hf_reference_test.sh): transformers + peft + tokenizers over
# Debian's python3-torch (1.13, which reports itself as 1.13.0a0).
#
# Where: ${SHEAF_HF_VENV:-/opt/sheaf/venv-hf}, outside every checkout so
# that all worktrees and CI's fresh clone find the same one. A venv with
# --system-site-packages over /usr/bin/python3 sees Debian's torch and
# numpy; everything else is pinned here and installed with --no-deps, so
# pip's resolver never tries to replace torch (its "1.13.0a0" is a
# pre-release that version specifiers such as accelerate's torch>=1.10
# reject). The constraints file pins torch to what is installed in case a
# package is ever installed with dependencies.
#
# Idempotent: a venv whose pins all import at the right versions is kept.
# Fails loudly (non-zero) when PyPI cannot be reached.
set -euo pipefail

VENV="${SHEAF_HF_VENV:-/opt/sheaf/venv-hf}"
PY=/usr/bin/python3

# name==version, one per line; the import name follows after a space.
PINS=(
  "transformers==4.44.2 transformers"
  "tokenizers==0.19.1 tokenizers"
  "huggingface-hub==0.24.6 huggingface_hub"
  "safetensors==0.4.5 safetensors"
  "peft==0.12.0 peft"
  "accelerate==0.34.2 accelerate"
  "sentencepiece==0.2.0 sentencepiece"
  "regex==2024.7.24 regex"
  "tqdm==4.66.5 tqdm"
  "filelock==3.15.4 filelock"
  "fsspec==2024.6.1 fsspec"
  "packaging==24.1 packaging"
  "typing_extensions==4.12.2 typing_extensions"
  "Jinja2==3.1.4 jinja2"
  "MarkupSafe==2.1.5 markupsafe"
)

if ! [ -x "$PY" ] || ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "20-hf-python: $PY with torch (Debian python3-torch) is required" >&2
  exit 1
fi

check() {
  [ -x "$VENV/bin/python" ] || return 1
  local p spec mod ver
  for p in "${PINS[@]}"; do
    spec="${p%% *}"; mod="${p##* }"; ver="${spec##*==}"
    "$VENV/bin/python" - "$mod" "${spec%%==*}" "$ver" <<'PYEOF' || return 1
import importlib, importlib.metadata, sys
importlib.import_module(sys.argv[1])
sys.exit(0 if importlib.metadata.version(sys.argv[2]) == sys.argv[3] else 1)
PYEOF
  done
  "$VENV/bin/python" -c 'import torch, transformers, peft' >/dev/null 2>&1
}

if check; then
  echo "20-hf-python: $VENV is up to date"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PY" -m venv --system-site-packages "$VENV"
TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__)')"
CONSTRAINTS="$VENV/constraints.txt"
printf 'torch==%s\n' "$TORCH_VER" > "$CONSTRAINTS"
SPECS=()
for p in "${PINS[@]}"; do SPECS+=("${p%% *}"); done
if ! "$VENV/bin/pip" install --no-deps -c "$CONSTRAINTS" "${SPECS[@]}"; then
  echo "20-hf-python: pip could not install the pinned packages (is PyPI reachable?)" >&2
  exit 1
fi
if ! check; then
  echo "20-hf-python: installed, but the pins do not import at their versions" >&2
  exit 1
fi
echo "20-hf-python: $VENV ready (torch $TORCH_VER from Debian)"
