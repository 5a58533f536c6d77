#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (small files only).

The seeds are the inputs the readers' tests use (tiny model configs, the
example job specs, the hand-made tokenizer.json of bpe_tokenizer_test, the
RecBole files of ctr_data_test), written in each format by this script's own
encoders, so that the fuzzer starts from files that get past the format
checks. Run from the repository root: python3 fuzz/make_seeds.py
"""
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
SEP = b"\n@@@@\n"


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- safetensors ---------------------------------------------------------
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
              "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape); data is a byte ramp."""
    header, blobs, off = {}, [], 0
    for name, dtype, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        size = n * DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + size]}
        blobs.append(bytes((off + i) * 7 % 251 for i in range(size)))
        off += size
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32_tensor(values):
    return b"".join(struct.pack("<f", v) for v in values)


def safetensors_f32(named):
    """named: list of (name, shape, values) as F32."""
    header, blobs, off = {}, [], 0
    for name, shape, values in named:
        b = f32_tensor(values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def seeds_safetensors():
    put("safetensors", "f32_2x3", safetensors([("w", "F32", [2, 3])]))
    put("safetensors", "all_dtypes",
        safetensors([(f"t_{d.lower()}", d, [3]) for d in DTYPE_SIZE], {"format": "pt"}))
    put("safetensors", "scalar_and_empty",
        safetensors([("s", "F32", []), ("e", "F16", [0, 4]), ("b", "BF16", [2, 2])]))
    put("safetensors", "metadata_only", safetensors([], {"a": "b"}))
    put("safetensors", "unpadded", safetensors([("x", "F64", [2])], pad=False))
    put("safetensors", "llama_names", safetensors([
        ("model.embed_tokens.weight", "F32", [4, 2]),
        ("model.layers.0.self_attn.q_proj.weight", "BF16", [2, 2]),
        ("model.norm.weight", "F16", [2])]))


# --- model config ---------------------------------------------------------
TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False}


def seeds_model_config():
    for m in ("tiny-en", "tiny-multi"):
        with open(os.path.join(ROOT, "models", m, "config.json"), "rb") as f:
            put("model_config", m, f.read())
    put("model_config", "tiny", json.dumps(TINY, indent=1))
    c = dict(TINY, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 32})
    put("model_config", "llama3_rope", json.dumps(c))
    c = dict(TINY, rope_scaling={"type": "linear", "factor": 2.0})
    put("model_config", "linear_rope", json.dumps(c))
    c = dict(TINY, model_type="qwen2", architectures=["Qwen2ForCausalLM"], attention_bias=True,
             use_sliding_window=False, sliding_window=32, bos_token_id=1, eos_token_id=2)
    put("model_config", "qwen2", json.dumps(c))
    c = dict(TINY, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=64,
             head_dim=4, torch_dtype="bfloat16")
    put("model_config", "mistral", json.dumps(c))
    # Per-layer shapes (LoRAM's pruned models).
    c = dict(TINY, intermediate_size=[16, 12], num_attention_heads=[2, 1],
             num_key_value_heads=[1, 1])
    put("model_config", "per_layer", json.dumps(c))


# --- PEFT adapter ---------------------------------------------------------
def peft_tensors(rank, projs, layers=(0, 1)):
    shapes = {"q_proj": (8, 8), "k_proj": (4, 8), "v_proj": (4, 8), "o_proj": (8, 8),
              "gate_proj": (16, 8), "up_proj": (16, 8), "down_proj": (8, 16)}
    block = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
             "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    out = []
    for l in layers:
        for p in projs:
            o, i = shapes[p]
            r = rank[p] if isinstance(rank, dict) else rank
            base = f"base_model.model.model.layers.{l}.{block[p]}.{p}"
            out.append((base + ".lora_A.weight", [r, i], [0.01 * k for k in range(r * i)]))
            out.append((base + ".lora_B.weight", [o, r], [0.02 * k for k in range(o * r)]))
    return safetensors_f32(out)


def peft_config(**kw):
    c = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4,
         "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
         "fan_in_fan_out": False, "base_model_name_or_path": "tiny", "inference_mode": True,
         "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}
    c.update(kw)
    return json.dumps(c, indent=2).encode()


def seeds_peft():
    put("peft_config", "qv_r2", peft_config() + SEP + peft_tensors(2, ["q_proj", "v_proj"]))
    put("peft_config", "all_r1_rslora",
        peft_config(r=1, use_rslora=True,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj"])
        + SEP + peft_tensors(1, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                 "up_proj", "down_proj"]))
    put("peft_config", "rank_pattern",
        peft_config(rank_pattern={"q_proj": 4}, alpha_pattern={"q_proj": 8.0})
        + SEP + peft_tensors({"q_proj": 4, "v_proj": 2}, ["q_proj", "v_proj"]))
    put("peft_config", "regex_layer1",
        peft_config(target_modules=r".*\.1\.self_attn\.(q_proj|v_proj)")
        + SEP + peft_tensors(2, ["q_proj", "v_proj"], layers=(1,)))
    put("peft_config", "layers_to_transform",
        peft_config(layers_to_transform=[0]) + SEP + peft_tensors(2, ["q_proj", "v_proj"],
                                                                  layers=(0,)))
    put("peft_config", "no_safetensors", peft_config())


# --- tokenizer.json -------------------------------------------------------
def tokenizer_json(model_extra=None, normalizer=None, pre=None):
    model = {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
             "byte_fallback": False,
             "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "\u0120": 4, "w": 5, "r": 6, "d": 7,
                       "he": 8, "ll": 9, "hell": 10, "hello": 11, "\u0120w": 12, "or": 13,
                       "lo": 15, "dr": 16},
             "merges": ["h e", "l l", "he ll", "hell o", "\u0120 w", "o r", "l o"]}
    model.update(model_extra or {})
    t = {"version": "1.0", "truncation": None, "padding": None,
         "added_tokens": [{"id": 14, "content": "<|end|>", "single_word": False,
                           "lstrip": False, "rstrip": False, "normalized": False,
                           "special": True}],
         "normalizer": normalizer,
         "pre_tokenizer": pre or {"type": "ByteLevel", "add_prefix_space": False,
                                  "use_regex": True},
         "post_processor": None, "decoder": {"type": "ByteLevel"}, "model": model}
    return json.dumps(t, ensure_ascii=False).encode()


def seeds_bpe():
    cfg = b'{"eos_token": "<|end|>"}'
    text = "hello world<|end|>hello \u00e9\u65e5".encode()
    put("bpe_tokenizer", "basic", tokenizer_json() + SEP + cfg + SEP + text)
    put("bpe_tokenizer", "ignore_merges",
        tokenizer_json({"ignore_merges": True}) + SEP + cfg + SEP + b"llo lo dr")
    put("bpe_tokenizer", "nfc_split",
        tokenizer_json(normalizer={"type": "NFC"},
                       pre={"type": "Sequence", "pretokenizers": [
                           {"type": "Split", "pattern": {"Regex": "\\p{L}+|\\s+|\\d{1,3}"},
                            "behavior": "Isolated", "invert": False},
                           {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                            "use_regex": False}]})
        + SEP + b'{"bos_token": {"content": "<|end|>"}, "eos_token": "<|end|>", '
                b'"add_bos_token": true}' + SEP + b"he llo 123456 w\xcc\x81orld")
    put("bpe_tokenizer", "prefix_space",
        tokenizer_json(pre={"type": "ByteLevel", "add_prefix_space": True, "use_regex": True})
        + SEP + cfg + SEP + b"hello")
    put("bpe_tokenizer", "no_config", tokenizer_json())


# --- .tok -----------------------------------------------------------------
def tok_file(docs, vocab, bos, eos):
    bpt = 2 if vocab <= 65536 else 4
    toks = b"".join(struct.pack("<H" if bpt == 2 else "<I", t) for d in docs for t in d)
    ntok = sum(len(d) for d in docs)
    off_off = 64 + (ntok * bpt + 7) // 8 * 8
    toks += b"\0" * (off_off - 64 - len(toks))
    offs, acc = [0], 0
    for d in docs:
        acc += len(d)
        offs.append(acc)
    head = (b"SHEAFTOK" + struct.pack("<IIIIII", 1, bpt, vocab, bos, eos, 0)
            + struct.pack("<QQQQ", len(docs), ntok, 64, off_off))
    return head + toks + b"".join(struct.pack("<Q", o) for o in offs)


def seeds_token_file():
    put("token_file", "u16_three_docs", tok_file([[1, 2, 3], [4], [5, 6, 7, 8, 9]], 258, 256, 257))
    put("token_file", "u32_big_vocab", tok_file([[70000, 1], [65536]], 70001, 0, 1))
    put("token_file", "empty_corpus", tok_file([], 10, 0, 1))
    put("token_file", "one_token", tok_file([[0]], 2, 0, 1))


# --- checkpoint -----------------------------------------------------------
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def checkpoint(entries):
    """entries: (name, kind, shape, data bytes)."""
    out = bytearray(b"SHEAFCKP" + struct.pack("<II", 1, len(entries)))
    for name, kind, shape, data in entries:
        n = name.encode()
        out += struct.pack("<I", len(n)) + n + struct.pack("<II", kind, len(shape))
        out += b"".join(struct.pack("<q", s) for s in shape)
        out += struct.pack("<Q", len(data))
        out += b"\0" * ((8 - len(out) % 8) % 8)
        out += data
    t = len(out)
    out += struct.pack("<Q", t) + struct.pack("<I", crc32c(bytes(out[:t]))) + b"CKPT"
    return bytes(out)


def seeds_checkpoint():
    put("checkpoint", "tensors_and_bytes", checkpoint([
        ("lora.A", 0, [2, 3], f32_tensor([1, 2, 3, 4, 5, 6])),
        ("step", 1, [8], struct.pack("<Q", 42)),
        ("adam.m", 0, [3], f32_tensor([0.5, -0.5, 0.25]))]))
    put("checkpoint", "scalar_empty", checkpoint([
        ("s", 0, [], f32_tensor([7])), ("z", 0, [0, 5], b""), ("e", 1, [0], b"")]))
    put("checkpoint", "no_entries", checkpoint([]))
    put("checkpoint", "odd_bytes", checkpoint([("rng", 1, [5], b"abcde"),
                                               ("t", 0, [1], f32_tensor([1]))]))


# --- RecBole atomic files -------------------------------------------------
USER = ("user_id:token\tage:token\tgender:token\n"
        "u1\t20\tM\nu2\t30\tF\nu3\t20\tF\n")
ITEM = ("item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
        "i1\tToy Story\tAnimation Comedy\ni2\tHeat\tAction\ni3\tBabe\t\n")
INTER_HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def seeds_atomic():
    inter = INTER_HEAD + "u2\ti3\t4\t100\nu1\ti1\t2.5\t50\n"
    put("atomic", "full", (inter + "\n@@@@\n" + USER + "\n@@@@\n" + ITEM))
    put("atomic", "inter_only", INTER_HEAD + "a\tx\t5\t1\nb\ty\t1\t2\na\ty\t3.5\t3\n")
    put("atomic", "users_only", inter + "\n@@@@\n" + USER)
    put("atomic", "bad_line", INTER_HEAD + "u1\ti1\t4\n")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    seeds_safetensors()
    seeds_model_config()
    seeds_peft()
    seeds_bpe()
    seeds_token_file()
    seeds_checkpoint()
    seeds_atomic()
    # Job specs: the examples and the tiny models' specs.
    for name in sorted(os.listdir(os.path.join(ROOT, "examples"))):
        if name.endswith(".yaml"):
            with open(os.path.join(ROOT, "examples", name), "rb") as f:
                put("spec", name, f.read())
    for m in ("tiny-en", "tiny-multi"):
        with open(os.path.join(ROOT, "models", m, "spec.yaml"), "rb") as f:
            put("spec", m + ".yaml", f.read())
    put("spec", "flow_style.yaml",
        "name: flow\nbase_model: models/tiny-en\noutput_dir: runs/flow\nseed: 3\n"
        "data: {train: [data/a.txt, data/b], format: text_paragraphs, seq_len: 32, "
        "val_fraction: 0.1, tokenizer: byte}\n"
        "lora: {adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}}\n"
        "optimizer: {lr: 1e-3, beta2: 0.95}\ntrain: {max_steps: 10, batch_size: 2}\n")


if __name__ == "__main__":
    main()
