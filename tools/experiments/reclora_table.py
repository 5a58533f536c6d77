"""Builds the results table of docs/results/reclora.md from a
tools/experiments/reclora_results.sh output directory."""
import json
import os
import statistics
import sys

out, subsets, evaln, secs = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]


def report(path):
    with open(os.path.join(path, "eval_report.json")) as f:
        return json.load(f)


def rate(path):
    vals = []
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "samples_per_s" in m:
                vals.append(m["samples_per_s"])
    return statistics.median(vals[1:] or vals) if vals else float("nan")


def cell(m):
    return f"{m['auc']:.4f} / {m['logloss']:.4f} / {m['accuracy']:.3f}"


rows = []
first = report(os.path.join(out, f"lora-{subsets[0]}"))
rows.append(("CRM alone (DIN, long history 60)", "all train", cell(first["test"]["crm"]), cell(first["val"]["crm"])))
noft = report(os.path.join(out, "noft-8"))
rows.append(("LLM without fine-tuning", "0", cell(noft["test"]["llm"]), cell(noft["val"]["llm"])))
names = [("lora", "plain LoRA q,v"), ("reclora_n1", "RecLoRA N=1"), ("reclora_n8", "RecLoRA N=8"),
         ("reclora_n8_randomcrm", "RecLoRA N=8, untrained CRM"),
         ("reclora_n8_shortcrm", "RecLoRA N=8, CRM on short history (10)")]
for key, label in names:
    for s in subsets:
        r = report(os.path.join(out, f"{key}-{s}"))
        rows.append((label, s, cell(r["test"]["llm"]), cell(r["val"]["llm"])))
print(f"Test and validation: AUC / LogLoss / accuracy on {evaln} samples per split "
      f"(the same seeded samples for every row). Wall time of the whole script: {secs} s.\n")
print("| model | LLM train samples | test | val |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
for s in subsets:
    lr = rate(os.path.join(out, f"lora-{s}"))
    mr = rate(os.path.join(out, f"reclora_n8-{s}"))
    print(f"- training throughput, subset {s}: plain LoRA {lr:.2f} samples/s, RecLoRA N=8 "
          f"(CRM forward + gates + weights mixture) {mr:.2f} samples/s, ratio {mr / lr:.2f} "
          f"(median step, same batch size 8)")
for name in ("long", "short", "random"):
    with open(os.path.join(out, f"crm-{name}.txt")) as f:
        print(f"- CRM {name}: " + "; ".join(l.strip() for l in f))
