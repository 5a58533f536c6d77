#!/opt/sheaf/venv-hf/bin/python
"""Independent check of langadapt_arith_eval.py: the answer-bytes loss of
the first N items of a QA set computed with Hugging Face transformers
(LlamaForCausalLM on the same model dir, fp32, one item at a time, no
padding) against the evaluator's number on the same N items.

    /opt/sheaf/venv-hf/bin/python tools/experiments/langadapt_arith_eval_check.py \
        SHEAF MODEL_DIR SET.jsonl [N]

Prints both and exits 1 when they differ by more than 1e-4 nats/byte
(float32 logits over a few thousand bytes; both sides sum the same terms).
"""
import json
import subprocess
import sys
import tempfile

import torch
from transformers import LlamaForCausalLM


def main():
    sheaf, model_dir, path = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    lines = open(path, encoding="utf-8").read().splitlines()[:n]
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    total, count = 0.0, 0
    for line in lines:
        r = json.loads(line)
        p, a = r["prompt"].encode("utf-8"), r["answer"].encode("utf-8")
        ids = torch.tensor([[256] + list(p) + list(a) + [257]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        for pos in range(1 + len(p), 1 + len(p) + len(a)):
            total -= logp[pos - 1, ids[0, pos]].item()
        count += len(a)
    ref = total / count
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        out = subprocess.run(["/usr/bin/python3",
                              "tools/experiments/langadapt_arith_eval.py", sheaf, model_dir, f.name],
                             capture_output=True, text=True, check=True).stdout
    got = json.loads(out)["answer_nats_per_byte"]
    print(json.dumps({"items": len(lines), "answer_bytes": count, "transformers": ref, "sheaf": got,
                      "abs_diff": abs(ref - got)}))
    sys.exit(0 if abs(ref - got) <= 1e-4 else 1)


if __name__ == "__main__":
    main()
