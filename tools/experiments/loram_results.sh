#!/usr/bin/env bash
# Reproduces docs/results/loram.md: LoRAM's memory table (a random Llama of
# 142M parameters: LoRA, LoRAM-Stru and QLoRAM-Stru at p = 0.65) and the
# quality table on models/tiny-en (LoRAM-Rand/Stru at p = 0.5, 0.65, 0.85,
# 0.95 with and without alignment, QLoRAM-Stru at the same points). About
# 30-40 CPU-minutes on 2 cores.
#
#   tools/experiments/loram_results.sh [DATA_DIR]     (default data/manpages;
#                                                      tools/prepare_data.sh de en)
# Work files go to $WORK (default /tmp/loram_results); the page is written to
# docs/results/loram.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="${1:-$ROOT/data/manpages}"
WORK="${WORK:-/tmp/loram_results}"
THREADS="${THREADS:-2}"
cd "$ROOT"
bazel build //cli:sheaf >/dev/null 2>&1
SHEAF="$(bazel info bazel-bin 2>/dev/null)/cli/sheaf"
rm -rf "$WORK" && mkdir -p "$WORK/specs"

# ---- memory: LoRA on the full model vs (Q)LoRAM-Stru p = 0.65 -------------
/usr/bin/python3 tools/experiments/loram_random_model.py "$WORK/big" | tee "$WORK/big.log"
"$SHEAF" prune "$WORK/big" "$WORK/big_p065" --ratio 0.65 --method stru \
  --calibration "$DATA/en" --samples 2 --seq-len 32 | tee "$WORK/prune_big.log"
mem_common() {
  cat <<YAML
seed: 1
data: {train: [$DATA/de], seq_len: 64, val_fraction: 0.05}
train: {batch_size: 2, max_steps: 2, eval_every: 0, eval_batches: 1, checkpoint_every: 0, threads: $THREADS}
YAML
}
{ echo "base_model: $WORK/big"; echo "output_dir: $WORK/mem_lora"; mem_common; echo "lora: {}"; } > "$WORK/specs/mem_lora.yaml"
{ echo "base_model: $WORK/big"; echo "output_dir: $WORK/mem_loram"; mem_common
  echo "loram: {pruned_model: $WORK/big_p065, eval: {max_sequences: 2}}"; } > "$WORK/specs/mem_loram.yaml"
{ echo "base_model: $WORK/big"; echo "output_dir: $WORK/mem_qloram"; mem_common
  echo "loram: {pruned_model: $WORK/big_p065, quantize: nf4, eval: {max_sequences: 2}}"; } > "$WORK/specs/mem_qloram.yaml"
/usr/bin/time -f "%M" -o "$WORK/mem_lora.rss" "$SHEAF" train --quiet "$WORK/specs/mem_lora.yaml"
/usr/bin/time -f "%M" -o "$WORK/mem_loram.rss" "$SHEAF" train --quiet "$WORK/specs/mem_loram.yaml"
/usr/bin/time -f "%M" -o "$WORK/mem_qloram.rss" "$SHEAF" train --quiet "$WORK/specs/mem_qloram.yaml"

# ---- quality: tiny-en, task German man pages, OOD English ---------------
q_common() {
  cat <<YAML
base_model: models/tiny-en
seed: 1
data: {train: [$DATA/de], seq_len: 64, val_fraction: 0.05}
optimizer: {lr: 1.0e-3}
schedule: {warmup_steps: 4}
train: {batch_size: 8, max_steps: 40, eval_every: 0, eval_batches: 4, checkpoint_every: 0, threads: $THREADS}
YAML
}
{ q_common; echo "output_dir: $WORK/q_lora"; echo "lora: {}"; } > "$WORK/specs/q_lora.yaml"
"$SHEAF" train --quiet "$WORK/specs/q_lora.yaml" | tee "$WORK/q_lora.log"
"$SHEAF" eval --model models/tiny-en --adapter "$WORK/q_lora/adapter" --data "$DATA/en" \
  --seq-len 64 --max-seqs 32 | tee "$WORK/q_lora_en.log"
for p in 0.5 0.65 0.85 0.95; do
  for m in rand stru stru_nf4; do
    for align in 0 20; do
      name="q_${m}_${p}_a${align}"
      { q_common; echo "output_dir: $WORK/$name"
        echo "loram:"
        method=${m%_nf4}
        if [ "$m" != "$method" ]; then echo "  quantize: nf4"; fi
        echo "  prune: {ratio: $p, method: $method, calibration: {data: [$DATA/en], samples: 10, seq_len: 64}}"
        if [ "$align" -gt 0 ]; then echo "  align: {data: [$DATA/en], steps: $align, lr: 5.0e-4}"; fi
        echo "  eval: {data: [$DATA/en], max_sequences: 32}"; } > "$WORK/specs/$name.yaml"
      "$SHEAF" train --quiet "$WORK/specs/$name.yaml" | tee "$WORK/$name.log"
    done
  done
done

mkdir -p docs/results
/usr/bin/python3 tools/experiments/loram_results_page.py "$WORK" "$DATA" > docs/results/loram.md
echo "wrote docs/results/loram.md"
