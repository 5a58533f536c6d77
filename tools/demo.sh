#!/usr/bin/env bash
# The main job end to end on embedded defaults: adapt the shipped English
# byte-level model (models/tiny-en) to German with a LoRA adapter, then print
# the validation perplexity of the base and of the adapted model on German
# (held-out pages) and on English (to show what the adapter costs there).
#
#   tools/demo.sh [--steps N] [--out DIR]
#
# Installs what is missing (tools/setup.sh), builds, prepares the man-page
# corpora (cached under data/), trains for a few minutes on all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=150
out=runs/demo-lora-de
while (($#)); do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--out DIR]" >&2; exit 2 ;;
  esac
done

tools/setup.sh
echo "== building"
bazel build //cli:sheaf 2>&1 | grep -vE 'linux-sandbox' | tail -2
sheaf="$(bazel info bazel-bin 2>/dev/null)/cli/sheaf"

echo "== preparing corpora (German and English manual pages)"
tools/prepare_data.sh de en

eval_ppl() {  # model_dir data_dir [adapter_dir]
  local args=(eval --model "$1" --data "$2" --seq-len 256 --max-seqs 96)
  [[ -n "${3:-}" ]] && args+=(--adapter "$3")
  "$sheaf" "${args[@]}" | awk '{print $4}'
}

echo "== training a LoRA adapter on German for $steps steps"
rm -rf "$out"
"$sheaf" train examples/lora_tiny.yaml \
  --set output_dir="$out" --set train.max_steps="$steps" \
  --set train.eval_every=50 --set train.eval_batches=12 \
  --set train.checkpoint_every=50 | tee /tmp/sheaf_demo_$$.txt

# German: the trainer's held-out split, before and after (val_loss a -> b).
read -r de_base de_lora < <(grep -o 'ppl [0-9.]* -> [0-9.]*' /tmp/sheaf_demo_$$.txt | awk '{print $2, $4}')
rm -f /tmp/sheaf_demo_$$.txt
echo "== evaluating on English"
en_base=$(eval_ppl models/tiny-en data/manpages/en)
en_lora=$(eval_ppl models/tiny-en data/manpages/en "$out/adapter")

echo
echo "perplexity (bytes)    base (tiny-en)   + German LoRA"
printf "German (held out)     %14s   %13s\n" "$de_base" "$de_lora"
printf "English               %14s   %13s\n" "$en_base" "$en_lora"
echo
echo "adapter: $out/adapter (PEFT format); metrics: $out/metrics.jsonl"
if awk -v a="$de_lora" -v b="$de_base" 'BEGIN {exit !(a < b)}'; then
  echo "German perplexity went down: OK"
else
  echo "German perplexity did not go down" >&2
  exit 1
fi
