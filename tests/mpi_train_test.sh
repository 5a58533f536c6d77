#!/usr/bin/env bash
# `sheaf train` under mpirun: the same LoRA job on models/tiny-en with 1
# process and with 2 and 4 ranks (oversubscribed on this machine) must give
# the same loss sequence within a relative 1e-4 (same samples per step; only
# the fp32 summation order differs), and the N-rank runs must report sharded
# frozen-weight traffic and adapter-gradient traffic in metrics.jsonl; then a
# 2-rank run stopped by SIGTERM resumes on 4 ranks and finishes.
set -euo pipefail
source "$(dirname "$0")/../dist/mpi_test_lib.sh" 2>/dev/null || source "$(find_runfile dist/mpi_test_lib.sh)"
sheaf=$(find_runfile cli/sheaf)
model=$(dirname "$(find_runfile models/tiny-en/config.json)")
work="${TEST_TMPDIR:-$(mktemp -d)}/mpi_train"
rm -rf "$work"; mkdir -p "$work/corpus"
for i in $(seq 1 40); do
  for j in $(seq 1 40); do printf 'Zeile %d: der Hund läuft über die Straße. ' "$((i * j))"; done > "$work/corpus/d$i.txt"
done
cat > "$work/job.yaml" <<YAML
base_model: $model
output_dir: $work/out
seed: 3
data: {train: [$work/corpus], seq_len: 64, val_fraction: 0.2}
optimizer: {lr: 0.002}
schedule: {warmup_steps: 2}
train: {batch_size: 8, max_steps: 12, eval_every: 6, eval_batches: 2, checkpoint_every: 4, threads: 1}
lora: {adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj, down_proj]}}
YAML

run() {  # N outdir [extra args]
  local n=$1 out=$2; shift 2
  if ((n == 1)); then
    timeout 300 "$sheaf" train --quiet --set output_dir="$out" "$@" "$work/job.yaml"
  else
    timeout 300 "${MPIRUN[@]}" -np "$n" "$sheaf" train --quiet --set output_dir="$out" "$@" "$work/job.yaml"
  fi
}

run 1 "$work/n1" >/dev/null
run 2 "$work/n2" >/dev/null
run 4 "$work/n4" >/dev/null

/usr/bin/python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def load(n):
    return [json.loads(l) for l in open(f"{work}/n{n}/metrics.jsonl")]
ref = [m for m in load(1) if "loss" in m]
assert len(ref) == 12, len(ref)
for n in (2, 4):
    got = [m for m in load(n) if "loss" in m]
    assert len(got) == 12, (n, len(got))
    for a, b in zip(ref, got):
        rel = abs(a["loss"] - b["loss"]) / abs(a["loss"])
        assert rel < 1e-4, f"N={n} step {a['step']}: {a['loss']} vs {b['loss']} (rel {rel:.2e})"
    last = got[-1]
    assert last["frozen_gather_bytes"] > 0 and last["adapter_grad_bytes"] > 0, last
    print(f"N={n}: 12 losses within 1e-4 of N=1; traffic per rank after 12 steps:",
          f"frozen_gather {last['frozen_gather_bytes']} B, adapter_grad {last['adapter_grad_bytes']} B,",
          f"control {last['control_bytes']} B")
PY

# SIGTERM mid-run on 2 ranks: every rank finishes its step, rank 0 writes a
# checkpoint, the ranks exit 130; the run then resumes on 4 ranks.
"${MPIRUN[@]}" -np 2 "$sheaf" train --set output_dir="$work/sig" --set train.max_steps=400 \
  "$work/job.yaml" >/dev/null 2>"$work/sig.err" &
pid=$!
for _ in $(seq 1 1200); do
  [[ -n "$(ls "$work/sig/checkpoints" 2>/dev/null)" ]] && break
  sleep 0.1
done
kill -TERM "$pid"   # mpirun forwards SIGTERM to every rank
set +e; wait "$pid"; rc=$?; set -e
((rc != 0)) || { echo "a 400-step run stopped by SIGTERM must not report success"; exit 1; }
grep -q "stopped at step" "$work/sig.err" || { echo "no graceful stop:"; cat "$work/sig.err"; exit 1; }
echo "2-rank run stopped by SIGTERM (mpirun exit $rc): $(grep -o 'stopped at step [0-9]*' "$work/sig.err"),"\
  "checkpoints: $(ls "$work/sig/checkpoints" | tr '\n' ' ')"
timeout 600 "${MPIRUN[@]}" -np 4 "$sheaf" train --quiet --resume "$work/sig" --set train.max_steps=30 \
  >/dev/null 2>"$work/resume.err" || { cat "$work/resume.err"; exit 1; }
grep -q "resumed from" "$work/resume.err" || { echo "resume did not restore a checkpoint"; cat "$work/resume.err"; exit 1; }
test -f "$work/sig/adapter/adapter_model.safetensors"
echo "resumed on 4 ranks and finished: $(grep -o 'resumed from .*' "$work/resume.err")"
