#!/usr/bin/env bash
# Tokenizer throughput: trains a Llama-3-style byte-level BPE (700 tokens)
# with the `tokenizers` library on the multilingual sentences of
# tests/hf_reference.py, writes ~0.5 MB of text from them, and runs
# bench/tokenizer (one thread; the byte tokenizer is the in-process
# reference). Needs the venv of tools/setup.d/20-hf-python.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${SHEAF_HF_VENV:-/opt/sheaf/venv-hf}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
bazel build //bench:tokenizer >/dev/null 2>&1
"$VENV/bin/python" - "$WORK" <<'PY'
import os, sys
sys.path.insert(0, "tests")
import hf_reference as h
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
work = sys.argv[1]
tok = Tokenizer(models.BPE(ignore_merges=True))
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(h.LLAMA3_PAT), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(h.TRAIN_TEXT * 20, trainers.BpeTrainer(
    vocab_size=700, special_tokens=["<|endoftext|>"], show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.save(os.path.join(work, "tokenizer.json"))
open(os.path.join(work, "tokenizer_config.json"), "w").write('{"eos_token": "<|endoftext|>"}')
open(os.path.join(work, "text.txt"), "w").write("\n".join((h.TRAIN_TEXT + h.HELD_OUT) * 400))
PY
"$(bazel info bazel-bin 2>/dev/null)/bench/tokenizer" "$WORK/tokenizer.json" "$WORK/text.txt" 5
