#!/usr/bin/env bash
# The langadapt job end to end through a coordinator, as tools/demo.sh runs
# the LoRA job: a coordinator (SQLite in a temporary directory; roots: the
# repository's models/ and data/, and runs/), a worker world of 2 MPI ranks,
# and the `sheaf` CLI, which submits examples/langadapt_tiny.yaml (LayRA on
# models/tiny-multi: + Dutch, + Polish), watches it, prints `sheaf status`
# (its metrics carry val_loss/<lang> of the latest stage) and fetches the
# matrix.
#
#   tools/demo_langadapt.sh [--steps N] [--out DIR]
#
# --steps: steps per language (default 20); --out: where the matrix and
# adapters are fetched to (default runs/demo-langadapt). The job writes
# under runs/demo/demo-langadapt/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
source tools/demo_lib.sh
steps=20
out=runs/demo-langadapt
while (($#)); do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--out DIR]" >&2; exit 2 ;;
  esac
done

demo_build

echo "== preparing corpora (man pages in six languages, fixed splits)"
tools/prepare_data.sh --split data/langadapt --max-train-bytes 2500000 --max-val-bytes 60000 \
  en de fr nl pl ru | grep split

demo_start_cluster

# ---- The job: the example spec with paths relative to the coordinator's
# roots (models/, data/). Lists of languages cannot be --set item by item,
# so the paths are rewritten in a copy of the spec.
echo "== submitting examples/langadapt_tiny.yaml: LayRA, + nl, + pl, $steps steps each"
rm -rf runs/demo/demo-langadapt
sed -e 's#base_model: models/#base_model: #' -e 's#data/langadapt/#langadapt/#g' \
  examples/langadapt_tiny.yaml > "$work/langadapt.yaml"
id=$("$sheaf" submit "$work/langadapt.yaml" "${remote[@]}" --min-world 2 \
  --set output_dir=demo-langadapt --set langadapt.steps_per_language="$steps" \
  --set train.max_steps=$((2 * steps)) --set train.threads="$threads")
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
echo "== sheaf status $id"
"$sheaf" status "$id" "${remote[@]}"

echo "== fetching the matrix and the adapters into $out"
rm -rf "$out"
for p in langadapt_matrix.md langadapt_matrix.json adapters summary.json; do
  "$sheaf" fetch "$id" -o "$out" --path "$p" "${remote[@]}"
done
wait "$worker_pid" 2>/dev/null || true  # --once: the world ends after the job.
worker_pid=
echo
cat "$out/langadapt_matrix.md"
grep -q '"val_loss/pl"' runs/demo/demo-langadapt/metrics.jsonl
echo "matrix: $out/langadapt_matrix.md; adapters: $out/adapters/{nl,pl}"
