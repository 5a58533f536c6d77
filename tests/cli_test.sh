#!/usr/bin/env bash
# The sheaf command as a user drives it: exit codes and one-line errors for
# bad specs, `data tokenize` + training from the .tok file, and `merge`
# giving a model whose loss equals base + adapter.
set -euo pipefail
find_runfile() {
  for base in "${TEST_SRCDIR:-}/sheaf" "$(dirname "$0")/.."; do
    [[ -e "$base/$1" ]] && { echo "$base/$1"; return 0; }
  done
  echo "cannot find $1" >&2; return 1
}
sheaf=$(find_runfile cli/sheaf)
model=$(dirname "$(find_runfile models/tiny-en/config.json)")
work="${TEST_TMPDIR:-$(mktemp -d)}/cli"
rm -rf "$work"; mkdir -p "$work/corpus"
for i in $(seq 1 30); do
  for j in $(seq 1 30); do printf 'Regel %d: de kat zit op de mat. ' "$((i + j))"; done > "$work/corpus/d$i.txt"
done
fail() { echo "FAIL: $*"; exit 1; }

# 1. Bad specs: exit code 2, one line naming the key, nothing written.
cat > "$work/bad.yaml" <<YAML
base_model: $model
output_dir: $work/bad_out
data: {train: [$work/corpus], seq_len: 32}
optimizer: {lr: -1.0}
lora: {adapter: {rank: 4}}
YAML
set +e; err=$("$sheaf" train "$work/bad.yaml" 2>&1); rc=$?; set -e
((rc == 2)) || fail "negative lr: exit $rc, want 2"
grep -q "optimizer.lr" <<<"$err" || fail "error does not name optimizer.lr: $err"
[[ ! -e "$work/bad_out" ]] || fail "output dir written for a bad spec"
set +e; err=$("$sheaf" train --set optimizer.lrr=1 "$work/bad.yaml" 2>&1); rc=$?; set -e
((rc == 2)) && grep -q "lrr" <<<"$err" || fail "unknown key: exit $rc: $err"
set +e; err=$("$sheaf" frobnicate 2>&1); rc=$?; set -e
((rc == 2)) || fail "unknown command: exit $rc"
echo "bad specs: exit 2 with the key named, nothing written"

# 2. Tokenize once, train from the .tok file.
"$sheaf" data tokenize --out "$work/corpus.tok" "$work/corpus" | grep -q "30 documents" || fail "tokenize"
cat > "$work/job.yaml" <<YAML
base_model: $model
output_dir: $work/out
seed: 4
data: {train: [$work/corpus.tok], format: tokens, seq_len: 32, val_fraction: 0.2}
optimizer: {lr: 0.003}
train: {batch_size: 4, max_steps: 15, eval_every: 5, checkpoint_every: 5, threads: 1}
lora: {adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj, up_proj]}}
YAML
out=$("$sheaf" train --quiet "$work/job.yaml") || fail "train from tokens"
echo "train from .tok: $out"
[[ -f "$work/out/adapter/adapter_config.json" ]] || fail "no adapter exported"

# 3. Merge: base + adapter == merged model, to fp32 rounding of the merge.
"$sheaf" merge "$model" "$work/out/adapter" "$work/merged" >/dev/null
a=$("$sheaf" eval --model "$model" --adapter "$work/out/adapter" --data "$work/corpus" --seq-len 32 --max-seqs 16)
b=$("$sheaf" eval --model "$work/merged" --data "$work/corpus" --seq-len 32 --max-seqs 16)
c=$("$sheaf" eval --model "$model" --data "$work/corpus" --seq-len 32 --max-seqs 16)
echo "base+adapter: $a | merged: $b | base: $c"
/usr/bin/python3 - "$a" "$b" "$c" <<'PY'
import sys
la, lb, lc = (float(s.split()[1]) for s in sys.argv[1:])
assert abs(la - lb) < 1e-4 * la, f"merged {lb} != base+adapter {la}"
assert lc - la > 1e-3, f"the adapter should change the loss: base {lc}, adapted {la}"
PY
echo "merge: OK"

# 4. The shipped example specs run (shortened, on this test's corpus).
ex=$(dirname "$(find_runfile examples/lora_tiny.yaml)")
"$sheaf" train --quiet "$ex/lora_tiny.yaml" --set base_model="$model" --set data.train="[$work/corpus]" \
  --set data.seq_len=32 --set data.val_fraction=0.2 --set output_dir="$work/ex_lora" \
  --set train.max_steps=3 --set schedule.warmup_steps=1 --set train.eval_batches=1 >/dev/null \
  || fail "examples/lora_tiny.yaml"
"$sheaf" pretrain --quiet "$ex/pretrain_tiny.yaml" --set data.train="[$work/corpus]" \
  --set data.seq_len=32 --set data.val_fraction=0.2 --set output_dir="$work/ex_pretrain" \
  --set train.max_steps=2 --set schedule.warmup_steps=1 --set train.batch_size=2 --set train.eval_batches=1 \
  >/dev/null || fail "examples/pretrain_tiny.yaml"
[[ -f "$work/ex_lora/adapter/adapter_model.safetensors" && -f "$work/ex_pretrain/model/model.safetensors" ]] \
  || fail "examples did not export"
echo "examples: lora_tiny and pretrain_tiny run"
