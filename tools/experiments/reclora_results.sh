#!/usr/bin/env bash
# Reproduces docs/results/reclora.md: RecLoRA ablations on MovieLens-100K
# (time split 8:1:1) at two Few2Many subset sizes, scaled to a few CPU
# minutes (tiny-en byte model, batch 8, one epoch over the subset, EVAL
# samples per split). Usage: tools/experiments/reclora_results.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/reclora-results}
SUBSETS=${SUBSETS:-"64 256"}
EVAL=${EVAL:-150}
THREADS=${THREADS:-2}
bash tools/setup.d/50-movielens.sh
bazel build //cli:sheaf >/dev/null 2>&1
SHEAF="$(bazel info bazel-bin 2>/dev/null)/cli/sheaf"
rm -rf "$OUT"; mkdir -p "$OUT"
start=$(date +%s)

# The recommenders, trained once and shared by the LLM runs (crm.file).
crm() {  # name, extra flags
  local name=$1; shift
  "$SHEAF" crm train --data data/ml-100k --dataset ml-100k --out "$OUT/crm-$name" \
    --epochs 1 --threads "$THREADS" "$@" > "$OUT/crm-$name.txt" 2> "$OUT/crm-$name.log"
}
crm long --history 60
crm short --history 10
crm random --untrained

# Plain-LoRA rows: the example without its bank and gate fields (a spec that
# gives them together with plain_lora is refused: they would do nothing).
sed -E '/^ *(num_experts|temperature|mixing|gate_input|gate_hidden|gate_dropout):/d' \
  examples/reclora_ml100k.yaml > "$OUT/plain_lora.yaml"
SPEC=examples/reclora_ml100k.yaml
run() {  # name, subset, extra --set ...
  local name=$1 subset=$2; shift 2
  local spec=$SPEC
  [[ " $* " == *" reclora.plain_lora=true "* ]] && spec="$OUT/plain_lora.yaml"
  "$SHEAF" train "$spec" --quiet \
    --set output_dir="$OUT/$name-$subset" --set train.threads="$THREADS" \
    --set train.max_steps=0 --set train.epochs=1 --set reclora.train_subset="$subset" \
    --set reclora.eval_samples="$EVAL" "$@" > "$OUT/$name-$subset.log" 2>&1
}
CRM_LONG=(--set reclora.crm.file="$OUT/crm-long/crm.sheafckpt" --set reclora.crm.history=60)
# The LLM without fine-tuning: plain LoRA whose B stays ~0 (lr 1e-30, one step
# of 8 samples): the base model's yes/no logits.
run noft 8 --set reclora.plain_lora=true --set optimizer.lr=1e-30 "${CRM_LONG[@]}"
for s in $SUBSETS; do
  run lora "$s" --set reclora.plain_lora=true "${CRM_LONG[@]}"
  run reclora_n1 "$s" --set reclora.num_experts=1 "${CRM_LONG[@]}"
  run reclora_n8 "$s" --set reclora.num_experts=8 "${CRM_LONG[@]}"
  run reclora_n8_randomcrm "$s" --set reclora.num_experts=8 \
    --set reclora.crm.file="$OUT/crm-random/crm.sheafckpt" --set reclora.crm.history=60
  run reclora_n8_shortcrm "$s" --set reclora.num_experts=8 \
    --set reclora.crm.file="$OUT/crm-short/crm.sheafckpt" --set reclora.crm.history=10
done
end=$(date +%s)
python3 tools/experiments/reclora_table.py "$OUT" "$SUBSETS" "$EVAL" "$((end - start))" > "$OUT/table.md"
cat "$OUT/table.md"
