#!/usr/bin/python3
"""Independent PyTorch reference for the sheaf decoder and its LoRA adapter.

    /usr/bin/python3 tests/torch_reference.py DUMP_DIR [DUMP_DIR ...]

Each DUMP_DIR is what tests/reference_dump writes: model/ (HF config.json +
model.safetensors), adapter/ (PEFT adapter_config.json +
adapter_model.safetensors) and out.safetensors (the C++ results; the keys are
listed in reference_dump.cc). This script rebuilds the model from the HF and
PEFT files alone, in plain torch at fp64, following Hugging Face's
LlamaForCausalLM / Qwen2ForCausalLM semantics, gets logits, the mean
cross-entropy and every gradient by autograd, and compares them with the C++
dump. Nothing here shares code with the C++ side: the safetensors reader is
struct + json, the model is written out op by op.

Exit status 0 when every comparison is inside its bound, 1 otherwise.

Only torch, numpy and the standard library are used.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# Bounds (C++ fp32 against this fp64 reference).
#
# fp32 has unit round-off u = 2^-24 ~ 6e-8. A logit here is the end of a short
# chain (2 layers of RMSNorm, dot products of length <= 48, RoPE, a softmax
# over <= 7 keys, SwiGLU, then the final norm and lm_head), all with O(1)
# condition numbers at weight std 0.2, so rounding leaves it about
# sqrt(n) * u * (number of ops) ~ 1e-6 of the logit scale. Hence:
#  * logits: max |err| / max |logit| < 1e-5 -- 10x above the expected
#    rounding, while any semantic error (rotate_half vs interleaved RoPE, a
#    wrong kv head for a query head, a mask off by one, a missing bias or a
#    wrong LoRA scale) moves logits by a sizeable fraction of their scale,
#    10^3-10^5 times the bound.
#  * loss: |err| / |loss| < 1e-6 -- the mean of the per-token log-sum-exp
#    minus target logit; softmax-weighted logit errors partly cancel and the
#    sum is accumulated in double, so it is as accurate as the logits
#    relative to the loss.
#  * gradients: ||g - g_ref|| / ||g_ref|| < 1e-4 per tensor -- backward runs
#    the chain a second time in reverse and sums over B*T rows, which doubles
#    the op count and lets small entries lose relative accuracy to
#    cancellation; normwise the error stays ~1e-6..1e-5, and a wrong backward
#    formula is off by O(1).
# The table also shows the same metrics for this reference evaluated in fp32
# ("torch fp32"): the rounding floor of a correct fp32 implementation, to tell
# a tolerance problem from a bug at a glance.
LOGITS_BOUND = 1e-5
LOSS_BOUND = 1e-6
GRAD_BOUND = 1e-4


# --------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length N, N bytes of JSON, buffer.

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path):
    """Returns ({name: np.ndarray}, metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    buf = memoryview(raw)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    spans = []
    for name, info in header.items():
        dtype = info["dtype"]
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
        if dtype == "BF16":
            u16 = np.frombuffer(buf[begin:end], dtype="<u2").astype(np.uint32)
            arr = (u16 << 16).view(np.float32)
        elif dtype in _DTYPES:
            arr = np.frombuffer(buf[begin:end], dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name}: {end - begin} bytes do not hold shape {shape}")
        tensors[name] = arr.reshape(shape).copy()
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise ValueError(f"{path}: tensors do not tile the buffer (gap/overlap at {pos})")
        pos = end
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes after the last tensor")
    return tensors, metadata


# --------------------------------------------------------------------------
# The model, from HF config.json + model.safetensors and a PEFT adapter.

def per_layer(cfg, key, num_layers):
    v = cfg[key]
    if isinstance(v, list):
        if len(v) != num_layers:
            raise ValueError(f"config.json: {key}: {len(v)} entries for {num_layers} layers")
        return [int(x) for x in v]
    return [int(v)] * num_layers


class Reference:
    """A Llama/Qwen2 decoder with a LoRA adapter, as leaves of one autograd graph."""

    def __init__(self, model_dir, adapter_dir, dtype):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.dtype = dtype
        self.L = int(cfg["num_hidden_layers"])
        self.C = int(cfg["hidden_size"])
        self.V = int(cfg["vocab_size"])
        self.NH = per_layer(cfg, "num_attention_heads", self.L)
        self.KVH = per_layer(cfg, "num_key_value_heads", self.L)
        self.I = per_layer(cfg, "intermediate_size", self.L)
        self.HD = int(cfg.get("head_dim") or self.C // self.NH[0])
        self.eps = float(cfg["rms_norm_eps"])
        self.theta = float(cfg.get("rope_theta", 10000.0))
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        self.bias = bool(cfg.get("attention_bias", False))
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {cfg['hidden_act']} is not silu")

        raw, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.w = {k: torch.tensor(v.astype(np.float64), dtype=dtype, requires_grad=True)
                  for k, v in raw.items()}
        self._check_base_shapes()

        with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
            acfg = json.load(f)
        if acfg.get("peft_type") != "LORA":
            raise ValueError("adapter_config.json: peft_type is not LORA")
        r = int(acfg["r"])
        alpha = float(acfg["lora_alpha"])
        self.lora_scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        if float(acfg.get("lora_dropout", 0.0)) != 0.0:
            raise ValueError("adapter_config.json: the reference assumes lora_dropout 0")
        raw, _ = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
        self.lora_keys = sorted(raw)
        self.lora_leaf = {k: torch.tensor(v.astype(np.float64), dtype=dtype, requires_grad=True)
                          for k, v in raw.items()}
        # PEFT key "base_model.model.<module>.lora_{A,B}.weight" -> module.
        self.lora = {}
        for key, t in self.lora_leaf.items():
            prefix, suffix_a, suffix_b = "base_model.model.", ".lora_A.weight", ".lora_B.weight"
            if not key.startswith(prefix) or not key.endswith((suffix_a, suffix_b)):
                raise ValueError(f"adapter: unexpected tensor name {key}")
            module = key[len(prefix):-len(suffix_a)]
            self.lora.setdefault(module, [None, None])[0 if key.endswith(suffix_a) else 1] = t
        targets = set(acfg["target_modules"])
        for module, (a, b) in self.lora.items():
            if a is None or b is None:
                raise ValueError(f"adapter: {module} lacks lora_A or lora_B")
            if module.split(".")[-1] not in targets:
                raise ValueError(f"adapter: {module} is not in target_modules {sorted(targets)}")
            w = self.weight(module)
            if a.shape[0] != r or b.shape[1] != r or a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0]:
                raise ValueError(f"adapter: {module}: A {list(a.shape)} B {list(b.shape)} "
                                 f"do not fit W {list(w.shape)} at r={r}")

    def _check_base_shapes(self):
        C, V, HD = self.C, self.V, self.HD
        want = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
        if not self.tied:
            want["lm_head.weight"] = (V, C)
        for l in range(self.L):
            p = f"model.layers.{l}."
            q, kv, inter = self.NH[l] * HD, self.KVH[l] * HD, self.I[l]
            want.update({
                p + "input_layernorm.weight": (C,),
                p + "post_attention_layernorm.weight": (C,),
                p + "self_attn.q_proj.weight": (q, C),
                p + "self_attn.k_proj.weight": (kv, C),
                p + "self_attn.v_proj.weight": (kv, C),
                p + "self_attn.o_proj.weight": (C, q),
                p + "mlp.gate_proj.weight": (inter, C),
                p + "mlp.up_proj.weight": (inter, C),
                p + "mlp.down_proj.weight": (C, inter),
            })
            if self.bias:
                want.update({p + "self_attn.q_proj.bias": (q,),
                             p + "self_attn.k_proj.bias": (kv,),
                             p + "self_attn.v_proj.bias": (kv,)})
        if set(want) != set(self.w):
            raise ValueError(f"model.safetensors: missing {sorted(set(want) - set(self.w))}, "
                             f"unexpected {sorted(set(self.w) - set(want))}")
        for k, shape in want.items():
            if tuple(self.w[k].shape) != shape:
                raise ValueError(f"model.safetensors: {k}: shape {list(self.w[k].shape)}, want {list(shape)}")

    def weight(self, module):
        if module == "lm_head" and self.tied:
            return self.w["model.embed_tokens.weight"]
        return self.w[module + ".weight"]

    def linear(self, x, module):
        """y = x Wᵀ (+ b) + s (x Aᵀ) Bᵀ."""
        y = x @ self.weight(module).T
        if module + ".bias" in self.w:
            y = y + self.w[module + ".bias"]
        if module in self.lora:
            a, b = self.lora[module]
            y = y + self.lora_scale * ((x @ a.T) @ b.T)
        return y

    def rms_norm(self, x, name):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * self.w[name]

    def rope(self, T):
        HD = self.HD
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, HD, 2, dtype=torch.float64) / HD))
        pos = torch.arange(T, dtype=torch.float64)
        freqs = torch.outer(pos, inv_freq)  # (T, HD/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, HD)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def attention(self, x, l, cos, sin):
        B, T, _ = x.shape
        NH, KVH, HD = self.NH[l], self.KVH[l], self.HD
        p = f"model.layers.{l}.self_attn."
        q = self.linear(x, p + "q_proj").view(B, T, NH, HD).transpose(1, 2)   # (B, NH, T, HD)
        k = self.linear(x, p + "k_proj").view(B, T, KVH, HD).transpose(1, 2)  # (B, KVH, T, HD)
        v = self.linear(x, p + "v_proj").view(B, T, KVH, HD).transpose(1, 2)
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        # repeat_kv: query head h reads kv head h // (NH / KVH).
        n_rep = NH // KVH
        k = k[:, :, None].expand(B, KVH, n_rep, T, HD).reshape(B, NH, T, HD)
        v = v[:, :, None].expand(B, KVH, n_rep, T, HD).reshape(B, NH, T, HD)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(HD)  # (B, NH, T, T)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(B, T, NH * HD)
        return self.linear(out, p + "o_proj")

    def mlp(self, x, l):
        p = f"model.layers.{l}.mlp."
        return self.linear(F.silu(self.linear(x, p + "gate_proj")) * self.linear(x, p + "up_proj"),
                           p + "down_proj")

    def forward(self, tokens, targets):
        B, T = tokens.shape
        cos, sin = self.rope(T)
        x = self.w["model.embed_tokens.weight"][tokens]  # (B, T, C)
        for l in range(self.L):
            p = f"model.layers.{l}."
            x = x + self.attention(self.rms_norm(x, p + "input_layernorm.weight"), l, cos, sin)
            x = x + self.mlp(self.rms_norm(x, p + "post_attention_layernorm.weight"), l)
        logits = self.linear(self.rms_norm(x, "model.norm.weight"), "lm_head")  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, self.V), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="mean")
        return logits, loss

    def run(self, tokens, targets):
        """Logits, loss, {peft key: grad}, {hf name: grad} as float64 numpy."""
        logits, loss = self.forward(tokens, targets)
        loss.backward()
        def grads(leaves):
            out = {}
            for k, t in leaves.items():
                if t.grad is None:
                    raise ValueError(f"{k}: the reference forward does not use this tensor")
                out[k] = t.grad.to(torch.float64).numpy()
            return out

        return (logits.detach().to(torch.float64).numpy(), float(loss.item()),
                grads(self.lora_leaf), grads(self.w))


# --------------------------------------------------------------------------
# Comparison.

def max_rel(got, ref):
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300))


def norm_rel(got, ref):
    denom = np.linalg.norm(ref)
    if denom == 0.0:  # an exactly-zero reference gradient: report absolute
        return float(np.linalg.norm(got))
    return float(np.linalg.norm(got - ref) / denom)


def check_dir(d, rows):
    """Appends (variant, quantity, metric, C++ err, fp32 err, bound) rows."""
    variant = os.path.basename(os.path.normpath(d))
    out, meta = read_safetensors(os.path.join(d, "out.safetensors"))
    variant = meta.get("variant", variant)
    tokens = torch.from_numpy(out["tokens"].astype(np.int64))
    targets = torch.from_numpy(out["targets"].astype(np.int64))
    if not (np.all(out["tokens"] == tokens.numpy()) and np.all(out["targets"] == targets.numpy())):
        raise ValueError(f"{d}: tokens/targets are not integers")

    runs = {}
    for name, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        runs[name] = Reference(os.path.join(d, "model"), os.path.join(d, "adapter"), dtype).run(tokens, targets)
    ref, f32 = runs["f64"], runs["f32"]
    lora_keys = set(ref[2])
    base_keys = set(ref[3])

    # Every expected key present, and nothing unexpected.
    expected = {"tokens", "targets"}
    for prefix in ("", "full."):
        expected |= {prefix + "logits", prefix + "loss"}
        expected |= {prefix + "grad." + k for k in lora_keys}
    expected |= {"wgrad." + k for k in base_keys}
    if set(out) != expected:
        raise ValueError(f"{d}/out.safetensors: missing {sorted(expected - set(out))}, "
                         f"unexpected {sorted(set(out) - expected)}")

    for prefix, run in (("", "lora"), ("full.", "full")):
        rows.append((variant, f"{run} logits", "max|d|/max|ref|",
                     max_rel(out[prefix + "logits"].astype(np.float64), ref[0]),
                     max_rel(f32[0], ref[0]), LOGITS_BOUND))
        loss = float(out[prefix + "loss"][0])
        rows.append((variant, f"{run} loss ({ref[1]:.6f})", "|d|/|ref|",
                     abs(loss - ref[1]) / abs(ref[1]), abs(f32[1] - ref[1]) / abs(ref[1]), LOSS_BOUND))
        for k in sorted(lora_keys):
            short = k.replace("base_model.model.", "").replace(".weight", "")
            rows.append((variant, f"{run} d {short}", "||d||/||ref||",
                         norm_rel(out[prefix + "grad." + k].astype(np.float64), ref[2][k]),
                         norm_rel(f32[2][k], ref[2][k]), GRAD_BOUND))
    for k in sorted(base_keys):
        rows.append((variant, f"full d {k}", "||d||/||ref||",
                     norm_rel(out["wgrad." + k].astype(np.float64), ref[3][k]),
                     norm_rel(f32[3][k], ref[3][k]), GRAD_BOUND))


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows = []
    errors = []
    for d in argv[1:]:
        try:
            check_dir(d, rows)
        except Exception as e:  # a malformed dump is a failure, with its reason
            errors.append(f"{d}: {type(e).__name__}: {e}")

    width = max([len(r[1]) for r in rows] + [8])
    print(f"{'variant':<14} {'quantity':<{width}} {'metric':<16} {'C++ fp32':>10} {'torch fp32':>10} "
          f"{'bound':>8}  result")
    failed = 0
    for variant, qty, metric, err, floor, bound in rows:
        ok = err < bound  # NaN fails
        failed += not ok
        print(f"{variant:<14} {qty:<{width}} {metric:<16} {err:10.2e} {floor:10.2e} {bound:8.0e}  "
              f"{'ok' if ok else 'FAIL'}")

    # Worst case per variant and kind of quantity.
    print("\nsummary (worst C++ error / worst torch-fp32 error / bound):")
    summary = {}
    for variant, qty, _, err, floor, bound in rows:
        kind = ("logits" if "logits" in qty else "loss" if "loss" in qty
                else "adapter grads" if ".lora_" in qty else "base grads")
        key = (variant, kind)
        e, f, _ = summary.get(key, (0.0, 0.0, bound))
        summary[key] = (max(e, err), max(f, floor), bound)
    for (variant, kind), (e, f, bound) in summary.items():
        print(f"  {variant:<14} {kind:<14} {e:10.2e} {f:10.2e} {bound:8.0e}")

    for e in errors:
        print(f"ERROR {e}")
    if failed or errors or not rows:
        print(f"\nFAIL: {failed} comparison(s) out of bounds, {len(errors)} error(s)")
        return 1
    print(f"\nPASS: {len(rows)} comparisons over {len(argv) - 1} variant(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
