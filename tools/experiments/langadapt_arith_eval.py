#!/usr/bin/python3
"""Loss of a model on the answer bytes of a question-answer set
(tools/experiments/langadapt_arith_data.py's jsonl), in nats per byte.

    tools/experiments/langadapt_arith_eval.py SHEAF MODEL_DIR SET.jsonl [--threads N]

Each item is one row of byte-tokenizer ids: BOS, the prompt's UTF-8 bytes,
the answer's bytes, EOS (the layout a `text_paragraphs` document has in
training), padded with EOS to the longest row of its chunk. `sheaf logits`
gives the per-token loss of every row; the answer's tokens (every byte of
the answer, its final newline included, not the EOS) are summed, over all
items, and divided by their count. Causal attention means the padding after
an item does not change its losses. Prints one JSON line:
{"answer_nats_per_byte", "answer_bytes", "items", "per_item_nats"} (the
last: each item's summed answer loss, in the file's order, for paired
comparisons between models).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
from array import array

BOS, EOS = 256, 257
MAX_ARG_CHARS = 100_000  # one --tokens argument (Linux caps one at 128 KiB)


def read_f32(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        info = header[name]
        if info["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        f.seek(8 + n + begin)
        a = array("f")
        a.frombytes(f.read(end - begin))
        if sys.byteorder != "little":
            a.byteswap()
        return a, info["shape"]


def main():
    args = sys.argv[1:]
    threads = "2"
    if "--threads" in args:
        i = args.index("--threads")
        threads = args[i + 1]
        del args[i:i + 2]
    if len(args) != 3:
        sys.exit(__doc__)
    sheaf, model, path = args
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            p, a = r["prompt"].encode("utf-8"), r["answer"].encode("utf-8")
            items.append(([BOS] + list(p) + list(a) + [EOS], 1 + len(p), 1 + len(p) + len(a),
                          len(items)))
    # Sorted by length so that a chunk pads little; chunks fit one argument.
    items.sort(key=lambda x: len(x[0]))
    chunks, cur, cur_len = [], [], 0
    for it in items:
        T = max([len(it[0])] + [len(c[0]) for c in cur])
        if cur and T * 4 * (len(cur) + 1) > MAX_ARG_CHARS:
            chunks.append(cur)
            cur = []
        cur.append(it)
    if cur:
        chunks.append(cur)
    total, count = 0.0, 0
    per_item = [0.0] * len(items)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "l.safetensors")
        for chunk in chunks:
            T = max(len(c[0]) for c in chunk)
            rows = [c[0] + [EOS] * (T - len(c[0])) for c in chunk]
            arg = ";".join(",".join(map(str, r)) for r in rows)
            r = subprocess.run([sheaf, "logits", "--model", model, "--tokens", arg, "--out", out,
                                "--threads", threads], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"sheaf logits failed ({r.returncode}): {r.stderr.strip()}")
            loss, shape = read_f32(out, "per_token_loss")
            ids, _ = read_f32(out, "tokens")  # the layout check: the rows as sent
            if [int(x) for x in ids] != [t for row in rows for t in row]:
                sys.exit("sheaf logits: tokens read back differ from the rows sent")
            if shape != [len(rows), T - 1]:
                sys.exit(f"per_token_loss has shape {shape}, expected {[len(rows), T - 1]}")
            for b, (_, a0, a1, k) in enumerate(chunk):
                # loss[b, t] is the loss of token t + 1 given tokens 0..t.
                s = sum(loss[b * (T - 1) + pos - 1] for pos in range(a0, a1))
                per_item[k] = s
                total += s
                count += a1 - a0
    print(json.dumps({"answer_nats_per_byte": total / count, "answer_bytes": count, "items": len(items),
                      "per_item_nats": [round(x, 4) for x in per_item]}))


if __name__ == "__main__":
    main()
