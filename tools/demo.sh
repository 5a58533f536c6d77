#!/usr/bin/env bash
# The main job end to end, as a cluster runs it: a coordinator (SQLite in a
# temporary directory; roots: the repository's models/ and data/, and runs/),
# a worker world of 2 MPI ranks (`sheaf-worker` under mpirun), and the
# `sheaf` CLI, which submits examples/lora_tiny.yaml (LoRA on the shipped
# English byte-level model models/tiny-en, German data), watches it to the
# end and fetches the adapter. Then it prints the validation perplexity of
# the base and of the adapted model on German (held-out pages, from the
# job's metrics) and on English (`sheaf eval`, to show what the adapter
# costs there).
#
#   tools/demo.sh [--steps N] [--out DIR]
#
# --out is where the adapter and the metrics are fetched to (default
# runs/demo-lora-de); the job itself writes under runs/demo/ (runs/TENANT/
# on the coordinator's output root). Installs what is missing
# (tools/setup.sh), builds, prepares the man-page corpora (cached under
# data/), trains for a few minutes on all cores. Everything it starts is
# stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
source tools/demo_lib.sh
steps=150
out=runs/demo-lora-de
while (($#)); do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--out DIR]" >&2; exit 2 ;;
  esac
done

demo_build

echo "== preparing corpora (German and English manual pages)"
tools/prepare_data.sh de en

demo_start_cluster

# ---- The job: the example spec, with paths relative to the coordinator's
# roots (models/, data/; the output under runs/demo/).
echo "== submitting examples/lora_tiny.yaml: LoRA on German for $steps steps"
rm -rf runs/demo/demo-lora-de
id=$("$sheaf" submit examples/lora_tiny.yaml "${remote[@]}" --min-world 2 \
  --set base_model=tiny-en --set 'data.train=[manpages/de]' --set output_dir=demo-lora-de \
  --set train.max_steps="$steps" --set train.eval_every=50 --set train.eval_batches=12 \
  --set train.checkpoint_every=50 --set train.threads="$threads")
echo "job $id"

echo "== watching $id"
rc=0
"$sheaf" watch "$id" "${remote[@]}" || rc=$?
((rc <= 128)) || exit 130  # Ctrl-C
if ((rc != 0)); then
  echo "demo: the job did not succeed; the worker said:" >&2
  tail -20 "$work/worker.log" >&2
  exit 1
fi

echo "== fetching the adapter and the metrics into $out"
rm -rf "$out"
"$sheaf" fetch "$id" -o "$out" --path adapter "${remote[@]}"
"$sheaf" fetch "$id" -o "$out" --path metrics.jsonl "${remote[@]}"
wait "$worker_pid" 2>/dev/null || true  # --once: the world ends after the job.
worker_pid=

# German: the job's held-out split, before training (step 0) and after (the
# last evaluation), from metrics.jsonl.
ppls=$(grep -o '"val_ppl": [0-9.]*' "$out/metrics.jsonl" | awk '{print $2}')
de_base=$(printf '%.2f' "$(head -1 <<<"$ppls")")
de_lora=$(printf '%.2f' "$(tail -1 <<<"$ppls")")

eval_ppl() {  # model_dir data_dir [adapter_dir]
  local args=(eval --model "$1" --data "$2" --seq-len 256 --max-seqs 96)
  [[ -n "${3:-}" ]] && args+=(--adapter "$3")
  "$sheaf" "${args[@]}" | awk '{print $4}'
}
echo "== evaluating on English"
en_base=$(printf "%.3f" "$(eval_ppl models/tiny-en data/manpages/en)")
en_lora=$(printf "%.3f" "$(eval_ppl models/tiny-en data/manpages/en "$out/adapter")")

echo
echo "perplexity (bytes)    base (tiny-en)   + German LoRA"
printf "German (held out)     %14s   %13s\n" "$de_base" "$de_lora"
printf "English               %14s   %13s\n" "$en_base" "$en_lora"
echo
echo "adapter: $out/adapter (PEFT format); metrics: $out/metrics.jsonl"
echo "the job's own output (train.log, checkpoints, spec.yaml): runs/demo/demo-lora-de"
if awk -v a="$de_lora" -v b="$de_base" 'BEGIN {exit !(a < b)}'; then
  echo "German perplexity went down: OK"
else
  echo "German perplexity did not go down" >&2
  exit 1
fi
