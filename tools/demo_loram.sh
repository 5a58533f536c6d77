#!/usr/bin/env bash
# The second demo (LoRAM, issue 12): the same setup as tools/demo.sh — a
# coordinator, a worker world of 2 MPI ranks, the `sheaf` CLI — running a
# short `loram` job from examples/loram_tiny.yaml: prune models/tiny-en
# (p = 0.5, Taylor), align the pruned model on English, train LoRA on it over
# German, recover the adapter to the full model and evaluate it there. Then
# it fetches the recovered adapter and loram_report.json and prints the
# losses of the base, of the full model with the recovered adapter, and of
# the pruned model with its own adapter ("infer small").
#
#   tools/demo_loram.sh [--steps N] [--out DIR]
#
# --out: where the adapter and the report are fetched to (default
# runs/demo-loram-de); the job writes under runs/demo/demo-loram-de.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
source tools/demo_lib.sh
steps=40
out=runs/demo-loram-de
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
echo "== submitting examples/loram_tiny.yaml: LoRAM (prune, align, LoRA on German, recover) for $steps steps"
rm -rf runs/demo/demo-loram-de
id=$("$sheaf" submit examples/loram_tiny.yaml "${remote[@]}" --min-world 2 \
  --set base_model=tiny-en --set 'data.train=[manpages/de]' --set output_dir=demo-loram-de \
  --set 'loram.prune.calibration.data=[manpages/en]' --set 'loram.align.data=[manpages/en]' \
  --set 'loram.eval.data=[manpages/en]' --set train.max_steps="$steps" \
  --set train.threads="$threads")
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

echo "== fetching the recovered adapter and the report into $out"
rm -rf "$out"
"$sheaf" fetch "$id" -o "$out" --path adapter "${remote[@]}"
"$sheaf" fetch "$id" -o "$out" --path loram_report.json "${remote[@]}"
wait "$worker_pid" 2>/dev/null || true  # --once: the world ends after the job.
worker_pid=

python3 - "$out/loram_report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["eval"]
print(f"\nparameters: full {r['full_params']:,}, pruned {r['small_params']:,} ({r['param_reduction']:.2f}x)")
print("loss (nats/byte)               German (held out)   English")
for k, label in [("base", "base (full, no adapter)"), ("full_recovered", "full + recovered adapter"),
                 ("small_adapter", "pruned + pruned adapter")]:
    sets = e[k]
    en = [s for s in sets if s != "val"]
    print(f"{label:30s} {sets['val']['loss']:17.4f}   {sets[en[0]]['loss'] if en else float('nan'):7.4f}")
print("peak RSS per phase (MiB):", {p: round(v["peak_rss_bytes"] / 2**20) for p, v in r["phases"].items()})
ok = e["full_recovered"]["val"]["loss"] < e["base"]["val"]["loss"]
print("German loss of the full model went down with the recovered adapter:", "OK" if ok else "NO")
sys.exit(0 if ok else 1)
PY
echo "recovered adapter (PEFT, for models/tiny-en): $out/adapter; report: $out/loram_report.json"
