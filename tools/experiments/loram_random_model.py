#!/usr/bin/python3
"""Writes a randomly initialised Llama-shaped model dir (config.json +
model.safetensors, f32) for LoRAM's memory table: frozen weights dominate.

  loram_random_model.py OUT_DIR [--hidden 1024] [--layers 12] [--inter 2816]
                        [--heads 16] [--kv 8] [--vocab 258]
"""
import argparse, json, os, struct
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--hidden", type=int, default=1024)
p.add_argument("--layers", type=int, default=12)
p.add_argument("--inter", type=int, default=2816)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--kv", type=int, default=8)
p.add_argument("--vocab", type=int, default=258)
a = p.parse_args()
C, L, I, H, KV, V = a.hidden, a.layers, a.inter, a.heads, a.kv, a.vocab
HD = C // H
os.makedirs(a.out, exist_ok=True)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C,
           "num_hidden_layers": L, "intermediate_size": I, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": HD, "vocab_size": V,
           "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
           "torch_dtype": "float32"}, open(os.path.join(a.out, "config.json"), "w"), indent=2)
shapes = [("model.embed_tokens.weight", (V, C))]
for l in range(L):
    pre = f"model.layers.{l}."
    shapes += [(pre + "input_layernorm.weight", (C,)),
               (pre + "self_attn.q_proj.weight", (H * HD, C)),
               (pre + "self_attn.k_proj.weight", (KV * HD, C)),
               (pre + "self_attn.v_proj.weight", (KV * HD, C)),
               (pre + "self_attn.o_proj.weight", (C, H * HD)),
               (pre + "post_attention_layernorm.weight", (C,)),
               (pre + "mlp.gate_proj.weight", (I, C)),
               (pre + "mlp.up_proj.weight", (I, C)),
               (pre + "mlp.down_proj.weight", (C, I))]
shapes += [("model.norm.weight", (C,)), ("lm_head.weight", (V, C))]
header, off = {"__metadata__": {"format": "pt"}}, 0
for name, shape in shapes:
    n = int(np.prod(shape)) * 4
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
    off += n
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
rng = np.random.default_rng(0)
with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for name, shape in shapes:
        if "norm" in name:
            f.write(np.ones(shape, np.float32).tobytes())
        else:
            f.write((rng.standard_normal(shape, dtype=np.float32) * 0.02).tobytes())
print(f"wrote {a.out}: {sum(int(np.prod(s)) for _, s in shapes)} parameters")
