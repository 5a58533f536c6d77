#!/usr/bin/env bash
# The langadapt comparison of docs/results/langadapt.md: on models/tiny-multi
# (en, de, fr), add Dutch, then Polish, then Russian (Debian's manpages-nl,
# -pl, -ru) with each method (cpt, layer_cpt, lora on all layers, layra) at
# equal steps and so equal byte budgets (steps x batch x seq_len tokens per
# language), and write every method's final matrix and the forgetting /
# gain summary into docs/results/langadapt.md.
#
#   tools/experiments/langadapt.sh [--steps N] [--out DIR]
#
# Scaled down to fit about 15 CPU-minutes on 2 cores (see the results page).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=40
out=runs/langadapt-exp
while (($#)); do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--out DIR]" >&2; exit 2 ;;
  esac
done
tools/prepare_data.sh --split data/langadapt --max-train-bytes 2500000 --max-val-bytes 60000 \
  en de fr nl pl ru | grep split
bazel build //cli:sheaf 2>&1 | tail -1
sheaf="$(bazel info bazel-bin 2>/dev/null)/cli/sheaf"
mkdir -p "$out"
for method in cpt layer_cpt lora layra; do
  rm -rf "$out/$method"
  set=(--set "langadapt.method=$method" --set "output_dir=$out/$method"
       --set "langadapt.steps_per_language=$steps")
  case "$method" in
    cpt|layer_cpt) set+=(--set optimizer.lr=3.0e-4) ;;
    *) set+=(--set 'langadapt.adapter={rank: 8, alpha: 32, dropout: 0.05}' --set optimizer.lr=1.0e-3) ;;
  esac
  echo "== $method"
  start=$SECONDS
  "$sheaf" train tools/experiments/langadapt_base.yaml "${set[@]}" --quiet
  echo "$method: $((SECONDS - start)) s wall" | tee "$out/$method/wall.txt"
done
mkdir -p docs/results
# The model-arithmetic section (tools/experiments/langadapt_arith.sh, from its
# begin marker to the end of the page) is kept as it is.
arith=$(sed -n '/<!-- langadapt_arith: begin/,$p' docs/results/langadapt.md 2>/dev/null || true)
python3 tools/experiments/langadapt_report.py "$out" "$steps" > docs/results/langadapt.md
if [[ -n $arith ]]; then printf '\n%s\n' "$arith" >> docs/results/langadapt.md; fi
echo "wrote docs/results/langadapt.md"
