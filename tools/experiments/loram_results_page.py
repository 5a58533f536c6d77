#!/usr/bin/python3
"""Formats the runs of loram_results.sh as docs/results/loram.md (stdout)."""
import json, math, os, re, sys

work, data = sys.argv[1], sys.argv[2]

def load(path):
    with open(path) as f:
        return json.load(f)

def rss(path):
    return int(open(path).read().split()[-1]) * 1024

mib = lambda b: b / 2**20
out = []
w = out.append
w("# LoRAM results (issue 12)\n")
w("Produced by `tools/experiments/loram_results.sh` (exact commands below); every figure on this")
w("page is from that run on this machine (2 shared CPU cores), at a deliberately tiny scale.\n")

# ---- memory ---------------------------------------------------------------
big = open(os.path.join(work, "big.log")).read()
prune_log = open(os.path.join(work, "prune_big.log")).read()
rep = load(os.path.join(work, "mem_loram", "loram_report.json"))
qrep = load(os.path.join(work, "mem_qloram", "loram_report.json"))
full_p, small_p = rep["full_params"], rep["small_params"]
train, qtrain = rep["phases"]["train"], qrep["phases"]["train"]
lora_rss, loram_proc_rss = rss(os.path.join(work, "mem_lora.rss")), rss(os.path.join(work, "mem_loram.rss"))
w("## Memory: LoRA on the full model vs LoRAM-Stru and QLoRAM-Stru (p = 0.65)\n")
w("A randomly initialised Llama (hidden 1024, 12 layers, 16 heads / 8 KV groups, MLP 2816,")
w(f"vocab 258, untied head: {full_p:,} parameters, f32) made by `loram_random_model.py`;")
w("pruned with `sheaf prune --ratio 0.65 --method stru` (layers [1, 11) pruned). All three runs: LoRA")
w("r 8 on q,k,v,o,gate,up,down, batch 2 x 64 tokens, 2 steps; frozen weights f32, except the")
w("QLoRAM row (`loram.quantize: nf4`): the pruned model's projection matrices in NF4 (blocks of 64,")
w("double-quantised scales; 36 bytes per 64 weights in memory), embeddings, lm_head and norms f32.\n")
w("| run | frozen params | frozen bytes (train) | peak RSS of training | storage ratio (formulas) |")
w("|---|---:|---:|---:|---:|")
w(f"| LoRA, full model | {full_p:,} | {mib(full_p*4):.0f} MiB | {mib(lora_rss):.0f} MiB (whole process) | 1.00x |")
w(f"| LoRAM-Stru p = 0.65 | {small_p:,} | {mib(train['frozen_bytes']):.0f} MiB | {mib(train['peak_rss_bytes']):.0f} MiB (train phase) | {full_p/small_p:.2f}x |")
w(f"| QLoRAM-Stru p = 0.65 | {small_p:,} (projections NF4) | {mib(qtrain['frozen_bytes']):.0f} MiB | {mib(qtrain['peak_rss_bytes']):.0f} MiB (train phase) | {full_p/(small_p/4):.2f}x (NF4 counted as 1/4, the paper's rule) |")
w("")
w(f"Frozen bytes, measured: LoRA {mib(full_p*4):.0f} MiB, LoRAM {mib(train['frozen_bytes']):.0f} MiB "
  f"({full_p*4/train['frozen_bytes']:.2f}x less), QLoRAM {mib(qtrain['frozen_bytes']):.0f} MiB "
  f"({full_p*4/qtrain['frozen_bytes']:.2f}x less; the f32 embedding and lm_head, "
  f"2 x 258 x 1024, and the 4.5 bits per weight of NF4 with its fp32 block scales keep it above "
  f"the 1/4-counting ratio). The NF4 file (`output_dir/nf4/model.nf4.safetensors`, scales "
  f"double-quantised to int8) is {mib(qrep['nf4_file_bytes']):.0f} MiB. Peak RSS of the train phase "
  f"adds activations, the adapter and its optimizer state, the tokenised corpus and the "
  f"process's code to the frozen bytes.")
w("")
w("The LoRA row is `/usr/bin/time`'s maximum RSS of the whole `sheaf train` process; the LoRAM row")
w("is the train phase's peak from `loram_report.json` (VmHWM reset at the phase start, so it")
w("includes what the process already held then, e.g. the tokenised task corpus). The LoRAM job's")
w(f"eval phase loads the full model to evaluate the recovered adapter there (the point of LoRAM):")
w(f"its peak was {mib(rep['phases']['eval']['peak_rss_bytes']):.0f} MiB. (`/usr/bin/time` is no use for the LoRAM")
w("process: resetting VmHWM resets the kernel's max-RSS too.) Model loading gives back the file's")
w("mapped pages after each tensor is copied (core/model.cc), so no row counts the file twice. The")
w("paper's anchor (13B, GPU): LoRA 51,661 MiB vs LoRAM-Stru 29,799 MiB peak.\n")

# ---- quality --------------------------------------------------------------
def loss(rep, who, s):
    return rep["eval"][who][s]["loss"]
rows = []
base = None
for name in sorted(os.listdir(work)):
    m = re.match(r"q_(rand|stru|stru_nf4)_([0-9.]+)_a(\d+)$", name)
    if not m:
        continue
    r = load(os.path.join(work, name, "loram_report.json"))
    en = [k for k in r["eval"]["base"] if k != "val"][0]
    base = (loss(r, "base", "val"), loss(r, "base", en))
    rows.append((m.group(1), float(m.group(2)), int(m.group(3)), r, en))
label = {"rand": "LoRAM-Rand", "stru": "LoRAM-Stru", "stru_nf4": "QLoRAM-Stru"}
order = {"rand": 0, "stru": 1, "stru_nf4": 2}
lsum = load(os.path.join(work, "q_lora", "summary.json"))
lora_en = float(re.search(r"loss ([0-9.]+)", open(os.path.join(work, "q_lora_en.log")).read()).group(1))
w("## Quality at tiny scale (models/tiny-en)\n")
w("Base: `models/tiny-en` (3.0M parameters, pretrained here on Debian's English man pages).")
w("Task corpus (unseen by the base): German man pages (`manpages-de`), 5% of the documents held")
w("out (in-domain, `de val`). Out-of-domain: the first 32 sequences of the English man pages")
w("(`en`, the base's own domain; the alignment corpus too, so `en` is not held out from")
w("alignment). Pruning calibration: 10 x 64 tokens of English. LoRA r 8, alpha 16 on all seven")
w("projections, 40 steps x 8 x 64 tokens, lr 1e-3; alignment: 20 steps of all-weights training")
w("on English, lr 5e-4. Losses are mean token cross-entropy (nats/byte) on 32 sequences of 64.")
w("QLoRAM-Stru rows train on the pruned (aligned) model with NF4 projections; their recovered")
w("adapter is evaluated on the original f32 full model, their infer-small column on the NF4 small")
w("model.\n")
w("| row | p | align | de val (full + recovered) | en (full + recovered) | de val, infer small | params trained on |")
w("|---|---:|---:|---:|---:|---:|---:|")
w(f"| base, no fine-tuning | - | - | {base[0]:.4f} | {base[1]:.4f} | - | - |")
w(f"| LoRA on the full model | - | - | {lsum['final_val_loss']:.4f} | {lora_en:.4f} | - | {rows[0][3]['full_params']:,} |")
for m, p, a, r, en in sorted(rows, key=lambda x: (x[1], order[x[0]], x[2])):
    w(f"| {label[m]} | {p} | {a} | {loss(r, 'full_recovered', 'val'):.4f} | "
      f"{loss(r, 'full_recovered', en):.4f} | {loss(r, 'small_adapter', 'val'):.4f} | {r['small_params']:,} |")
w("")
w("Reading it against the paper's claims (at this scale, one seed, 40 steps):\n")
better_base = all(loss(r, "full_recovered", "val") < base[0] for *_, r, _ in [(x[0], x[1], x[2], x[3], x[4]) for x in rows])
w(f"- recovered adapter on the full model beats the base on de val in every LoRAM row: {'yes' if better_base else 'no'};")
small_worse = sum(loss(r, "full_recovered", "val") < loss(r, "small_adapter", "val") for _, _, _, r, _ in rows)
w(f"- recovered-on-full beats infer-small (pruned model + pruned adapter) in {small_worse} of {len(rows)} rows;")
def find(m, p, a):
    hits = [r for mm, pp, aa, r, _ in rows if mm == m and pp == p and aa == a]
    return hits[0] if hits else None
ratios = sorted({p for _, p, _, _, _ in rows})
def gain(m, p):
    a0 = find(m, p, 0)
    a1 = [r for mm, pp, a, r, _ in rows if mm == m and pp == p and a > 0]
    if a0 is None or not a1:
        return float("nan")
    return loss(a0, "full_recovered", "val") - loss(a1[0], "full_recovered", "val")
for m in ("rand", "stru", "stru_nf4"):
    w(f"- alignment gain ({label[m]}): " + ", ".join(f"p = {p}: {gain(m, p):+.4f}" for p in ratios) +
      " nats (positive = alignment helped);")
qd = []
for p in ratios:
    for a in (0, 20):
        q, l = find("stru_nf4", p, a), find("stru", p, a)
        if q is not None and l is not None:
            qd.append((p, a, loss(q, "full_recovered", "val") - loss(l, "full_recovered", "val")))
if qd:
    w("- QLoRAM-Stru minus LoRAM-Stru, de val (full + recovered): " +
      ", ".join(f"p = {p} align {a}: {d:+.4f}" for p, a, d in qd) + " nats;")
for m in ("rand", "stru", "stru_nf4"):
    per_p = []
    for p in ratios:
        rs = [r for mm, pp, _, r, _ in rows if mm == m and pp == p]
        if rs:
            per_p.append((p, min(loss(r, "full_recovered", "val") for r in rs)))
    w(f"- best de val per ratio ({label[m]}): " + ", ".join(f"p = {p}: {v:.4f}" for p, v in per_p) + ";")
w("")
w("## Commands\n")
w("```sh\ntools/prepare_data.sh de en\ntools/experiments/loram_results.sh   # = the steps below\n```\n")
w("```sh")
w("python3 tools/experiments/loram_random_model.py $WORK/big")
w("sheaf prune $WORK/big $WORK/big_p065 --ratio 0.65 --method stru --calibration $DATA/en --samples 2 --seq-len 32")
for s in sorted(os.listdir(os.path.join(work, "specs"))):
    w(f"sheaf train --quiet $WORK/specs/{s}   # spec below")
w("```\n")
for s in sorted(os.listdir(os.path.join(work, "specs"))):
    text = open(os.path.join(work, "specs", s)).read().replace(work, "$WORK").replace(data, "$DATA")
    w(f"<details><summary>{s}</summary>\n\n```yaml\n{text}```\n</details>\n")
w(f"Tool output (pruning the 142M model): `{prune_log.strip().replace(work, '$WORK')}`")
print("\n".join(out))
