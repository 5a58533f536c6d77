#!/usr/bin/env bash
# The model-arithmetic experiment of docs/results/langadapt.md (issue 13's
# last measurement): an English-only skill, a question-answer format built
# from the English man pages' option lists, carried into Dutch by the
# instruction-residual sum, measured on the same format in Dutch against the
# Dutch-adapted model alone.
#
#   tools/experiments/langadapt_arith.sh [--out DIR] [--lambdas "0.25 0.5 1 1.5"]
#                                        [--variants "full lora"]
#
#   θ_base     models/tiny-multi (en, de, fr)
#   θ_instruct θ_base fine-tuned on the English QA items, two variants:
#              full: every weight (langadapt_arith_instruct.yaml);
#              lora: a merged all-layer LoRA (langadapt_arith_instruct_lora.yaml)
#   θ_adapted  θ_base + nl by langadapt/layra (langadapt_arith_adapt.yaml),
#              whose instruction_residual (λ = 1) writes instruct_model/
#   θ_adapted + λ·(θ_instruct − θ_base)   by `sheaf arith`, λ in --lambdas
#
# Every model is measured on: the answer bytes of held-out English QA items
# (commands the English training never saw), of the Dutch QA items (Dutch
# question, Dutch answer; pages the Dutch adaptation never trained on), of
# the same Dutch answers under the English question line, and the plain
# validation text of en and nl (48 sequences of 256 bytes, as the langadapt
# matrix). It asserts that λ = 0 gives θ_adapted bit for bit and that the
# recipe's instruction_residual gives the same file as `sheaf arith` at
# λ = 1, checks the answer-loss evaluator against transformers on 20 items
# of two models, and writes the section between the arith markers of
# docs/results/langadapt.md (about 11 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=runs/langadapt-arith
lambdas="0.25 0.5 1 1.5"
variants="full lora"
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --lambdas) lambdas=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    *) echo "usage: $0 [--out DIR] [--lambdas \"L ...\"] [--variants \"full lora\"]" >&2; exit 2 ;;
  esac
done
py=/usr/bin/python3
exp=tools/experiments
tools/prepare_data.sh --split data/langadapt --max-train-bytes 2500000 --max-val-bytes 60000 \
  en nl | grep split
$py $exp/langadapt_arith_data.py --out data/langadapt_arith
bazel build //cli:sheaf 2>&1 | tail -1
sheaf="$(bazel info bazel-bin 2>/dev/null)/cli/sheaf"
rm -rf "$out"
mkdir -p "$out"
base=models/tiny-multi
: > "$out/results.jsonl" ; : > "$out/checks.txt" ; : > "$out/wall.txt"

qa_row() {  # qa_row VARIANT NAME DIR: one results.jsonl line
  local row="{\"variant\": \"$1\", \"model\": \"$2\", \"dir\": \"$3\"" set lang r l
  for set in en_val nl nl_mix; do
    r=$($py $exp/langadapt_arith_eval.py "$sheaf" "$3" "data/langadapt_arith/$set.jsonl")
    row+=", \"qa_$set\": $r"
  done
  for lang in en nl; do
    l=$("$sheaf" eval --model "$3" --data "data/langadapt/$lang/val" --max-seqs 48 --threads 2 |
        sed -n 's/.*loss \([0-9.]*\).*/\1/p' | head -1)
    row+=", \"plain_$lang\": $l"
  done
  echo "$row}" | tee -a "$out/results.jsonl"
}
check() { echo "checked: $*" | tee -a "$out/checks.txt"; }

first=""
for v in $variants; do
  d=$out/$v
  mkdir -p "$d"
  echo "== [$v] θ_instruct on the English QA items"
  start=$SECONDS
  case "$v" in
    full) "$sheaf" pretrain $exp/langadapt_arith_instruct.yaml --set "output_dir=$d/instruct" --quiet ;;
    lora) "$sheaf" train $exp/langadapt_arith_instruct_lora.yaml --set "output_dir=$d/instruct-train" --quiet
          "$sheaf" merge "$base" "$d/instruct-train/adapter" "$d/instruct/model" ;;
    *) echo "unknown variant $v (full, lora)" >&2; exit 2 ;;
  esac
  echo "$v instruct: $((SECONDS - start)) s wall" | tee -a "$out/wall.txt"

  echo "== [$v] θ_adapted: + nl by layra, with the recipe's instruction_residual (λ = 1)"
  start=$SECONDS
  "$sheaf" train $exp/langadapt_arith_adapt.yaml --set "output_dir=$d/adapted" \
    --set "langadapt.instruction_residual={instruct: $d/instruct/model, base: $base, lambda: 1.0}" --quiet
  echo "$v adapted: $((SECONDS - start)) s wall" | tee -a "$out/wall.txt"

  echo "== [$v] sheaf arith"
  sums=()
  for l in 0 $lambdas; do
    "$sheaf" arith --base "$d/adapted/model" --out "$d/arith-$l" --model "$l:$d/instruct/model:$base"
    [[ $l == 0 ]] || sums+=("$l")
  done
  # λ = 0 is θ_adapted bit for bit; the recipe's instruct_model is sheaf arith at λ = 1.
  cmp "$d/arith-0/model.safetensors" "$d/adapted/model/model.safetensors"
  check "[$v] sheaf arith at λ = 0 gives adapted/model bit for bit"
  "$sheaf" arith --base "$d/adapted/model" --out "$d/arith-check1" --model "1:$d/instruct/model:$base"
  cmp "$d/arith-check1/model.safetensors" "$d/adapted/instruct_model/model.safetensors"
  check "[$v] the recipe's instruction_residual (λ = 1, adapted/instruct_model) equals sheaf arith at λ = 1 bit for bit"
  rm -rf "$d/arith-check1" "$d/arith-0"

  echo "== [$v] evaluation"
  if [[ -z $first ]]; then
    qa_row "$v" base "$base"
    qa_row "$v" adapted "$d/adapted/model"
    first=$v
  else
    # The same adapted run (same spec and seed): reuse its rows.
    cmp "$d/adapted/model/model.safetensors" "$out/$first/adapted/model/model.safetensors"
    check "[$v] adapted/model equals [$first]'s bit for bit (the adaptation run is deterministic)"
  fi
  qa_row "$v" instruct "$d/instruct/model"
  for l in "${sums[@]}"; do qa_row "$v" "adapted+$l" "$d/arith-$l"; done
done
# The evaluator against an independent reference (transformers), when installed.
hf=/opt/sheaf/venv-hf/bin/python
for m in "$base" "$d/arith-${sums[0]}"; do
  if [[ -x $hf ]]; then
    r=$($hf $exp/langadapt_arith_eval_check.py "$sheaf" "$m" data/langadapt_arith/nl.jsonl 20 2>/dev/null | tail -1)
    check "answer loss of the first 20 nl items on $m, transformers vs langadapt_arith_eval.py (<= 1e-4): $r"
  else
    check "SKIPPED: the transformers check of the evaluator ($hf is missing)"
  fi
done
$py $exp/langadapt_arith_report.py "$out" docs/results/langadapt.md
echo "wrote the arith section of docs/results/langadapt.md"
