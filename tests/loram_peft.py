"""The RECOVERED adapter of small loram runs (LoRAM and QLoRAM) loaded with
peft.PeftModel.from_pretrained on the ORIGINAL full model (models/tiny-en,
f32), against sheaf's logits of the same full model + adapter.

Each job prunes tiny-en at p = 0.5 (stru), trains LoRA on the pruned model
(quantize none, then nf4: its frozen projections in NF4) for a few steps,
recovers the adapter to the full shapes (zero-filled at pruned indices,
recover zero; and normA draws, recover norm) and writes it in PEFT format
for the full base. The checks: PEFT loads it without warnings (no missing or
unexpected keys, shapes of the full model), its logits equal `sheaf logits
--model tiny-en --adapter <recovered>`, and the adapter moves the logits
(so equality is not base == base).

Tolerance: both sides compute in fp32 on identical f32 weights and ids; only
the order of summation differs (OpenBLAS vs torch, sheaf's tiled attention
vs eager softmax). At C = 256, 4 layers, rounding is ~sqrt(C) * 6e-8 * |x|
per op, ~1e-5 on logits of magnitude ~10; we allow max|diff| <= 2e-4 *
max(1, max|logit|), as tests/hf_reference.py. A recovered factor put at the
wrong rows or columns, or a scale off by alpha/r, moves logits by far more
than the bound (the check that the adapter moves logits by > 10x the bound
guards against an adapter too small to tell).
"""
import argparse
import os
import subprocess
import sys
import warnings

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
import peft

FAILS = []
TOL = 2e-4
TOKENS = [[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 10],
          [116, 104, 101, 32, 102, 105, 108, 101, 32, 105, 115, 32]]


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("  " + detail if detail else ""))
    sys.stdout.flush()
    if not ok:
        FAILS.append(name)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print("command:", " ".join(cmd), "rc", p.returncode, "\n", p.stdout[-2000:], p.stderr[-4000:])
    return p


def sheaf_logits(args, model_dir, adapter, name):
    out = os.path.join(args.work, "logits_%s.safetensors" % name)
    p = run([args.sheaf, "logits", "--model", model_dir, "--adapter", adapter, "--tokens",
             ";".join(",".join(str(t) for t in row) for row in TOKENS), "--out", out, "--threads", "1"])
    return load_file(out)["logits"] if p.returncode == 0 else None


def hf_logits(model):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float()


def write_corpus(d, seed):
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    words = ["the ", "file ", "is ", "read ", "when ", "a ", "process ", "opens ", "it. ",
             "options:\n", "-v ", "print ", "more.\n"]
    for f in range(80):
        idx = torch.randint(len(words), (80,), generator=g).tolist()
        open(os.path.join(d, "doc%02d.txt" % f), "w").write("".join(words[i] for i in idx))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sheaf", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    task, general = os.path.join(args.work, "task"), os.path.join(args.work, "general")
    write_corpus(task, 1)
    write_corpus(general, 2)
    base = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager")
    base_logits = hf_logits(base)
    for quantize, recover in [("nf4", "zero"), ("none", "norm")]:
        name = "%s_%s" % (quantize, recover)
        out = os.path.join(args.work, "run_" + name)
        spec = os.path.join(args.work, name + ".yaml")
        open(spec, "w").write("\n".join([
            "name: loram-peft-" + name, "base_model: " + args.model, "output_dir: " + out, "seed: 3",
            "data: {train: [%s], seq_len: 32, val_fraction: 0.2}" % task, "optimizer: {lr: 3.0e-3}",
            "train: {batch_size: 4, max_steps: 6, eval_every: 0, eval_batches: 1, threads: 1}",
            "loram:", "  quantize: " + quantize, "  recover: " + recover,
            "  adapter: {rank: 4, alpha: 8}",
            "  prune: {ratio: 0.5, method: stru, calibration: {data: [%s], samples: 4, seq_len: 32}}" % general,
            "  eval: {max_sequences: 4}", ""]))
        p = run([args.sheaf, "train", "--quiet", spec])
        check("loram %s job runs" % name, p.returncode == 0)
        ad = os.path.join(out, "adapter")
        if p.returncode != 0:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pm = peft.PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager"), ad)
        msgs = [str(w.message) for w in caught]
        check("peft loads the recovered %s adapter on the full model without warnings" % name,
              not msgs, "; ".join(msgs)[:300])
        ref = hf_logits(pm)
        got = sheaf_logits(args, args.model, ad, name)
        if got is None:
            check("sheaf logits with the recovered %s adapter" % name, False, "sheaf failed")
            continue
        bound = TOL * max(1.0, ref.abs().max().item())
        diff = (ref - got).abs().max().item()
        check("recovered %s adapter: peft logits == sheaf logits" % name, diff <= bound,
              "max|diff| %.2e (bound %.2e)" % (diff, bound))
        moved = (ref - base_logits).abs().max().item()
        check("recovered %s adapter moves the full model's logits" % name, moved > 10 * bound,
              "max|peft - base| %.2e" % moved)
    if FAILS:
        print("%d check(s) failed: %s" % (len(FAILS), ", ".join(FAILS)))
        sys.exit(1)


if __name__ == "__main__":
    main()
