#!/usr/bin/env bash
# Makes a throwaway Python venv with PyTorch 2.x from PyPI for
# bench/compare_torch.sh (the PyTorch 2.x eager and torch.compile lines).
# Not part of setup: the wheel and its CUDA dependencies are several GB, and
# nothing but this benchmark uses them. Idempotent; fails loudly when the
# registry cannot be reached.
# Usage: bench/torch2_venv.sh [VENV_DIR]   (default $SHEAF_TORCH2_VENV or /tmp/sheaf_torch2_venv)
set -euo pipefail
venv=${1:-${SHEAF_TORCH2_VENV:-/tmp/sheaf_torch2_venv}}
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import torch, sys; sys.exit(int(torch.__version__.split(".")[0]) < 2)' 2>/dev/null; then
  echo "torch2_venv: $venv has torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
  exit 0
fi
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir torch
"$venv/bin/python" -c 'import torch; print("torch2_venv: torch", torch.__version__, "at", torch.__file__)'
