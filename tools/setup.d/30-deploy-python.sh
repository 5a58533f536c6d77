#!/usr/bin/env bash
# A Python environment with kubernetes-validate (Kubernetes' OpenAPI
# schemas, and jsonschema, which also checks the MPIJob against the MPI
# Operator's CRD schema) for //tests:deploy_validate_test. Lives in
# .venvs/deploy (git-ignored). Fails loudly if PyPI cannot be reached.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.venvs/deploy"
want=1.37.0
if [[ -x $venv/bin/kubernetes-validate ]] && [[ $("$venv/bin/kubernetes-validate" --version) == "$want" ]]; then
  exit 0
fi
echo "setup: creating $venv (kubernetes-validate $want)" >&2
/usr/bin/python3 -m venv "$venv"
if ! "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$want"; then
  echo "setup: cannot install kubernetes-validate==$want from PyPI (is the registry reachable?)" >&2
  exit 1
fi
