#!/usr/bin/python3
"""PyTorch half of the CPU LoRA training benchmark.

    /usr/bin/python3 bench/compare_torch.py --threads 2 --steps 5 --warmup 1
    VENV/bin/python bench/compare_torch.py --threads 1 --compile   # torch >= 2.0

Trains a LoRA adapter on a frozen Llama-style decoder in plain PyTorch
(fp32, torch.nn, our own LoRA layer), written the way a competent user would
write it for speed on a CPU, with the fixed configuration the C++ half runs:

    hidden 256, 4 layers, 8 heads / 4 KV heads (head_dim 32), intermediate 688,
    vocab 258 (bytes), sequence 256, batch 8,
    LoRA rank 8, alpha 16 on q k v o gate up down; base frozen
    (requires_grad False); AdamW on the adapter only.

What "written for speed" means here (each is what the PyTorch docs suggest):
  - attention: F.scaled_dot_product_attention(is_causal=True) where torch has
    it (>= 2.0; its CPU path is a fused flash-style kernel), with the KV heads
    broadcast by enable_gqa (>= 2.5) instead of copied; otherwise (torch 1.13)
    one baddbmm per step that fuses the 1/sqrt(HD) scale and an additive
    causal mask, with the query heads that share a KV head stacked into the
    rows of one bmm so that K and V are never repeated in memory;
  - frozen weights have requires_grad False (no dW GEMMs), the base needs no
    grad for its input embeddings either;
  - torch.set_num_threads(threads), and the OpenBLAS/OpenMP pools sized by the
    environment before import (Debian's torch calls the system OpenBLAS,
    whose pool set_num_threads does not reach);
  - AdamW with foreach where torch has it; zero_grad(set_to_none=True);
  - --compile: torch.compile of the model (default inductor backend).

Tokens are random. One step = forward + backward + AdamW step over B*T tokens.
Prints, for the combining script, exactly these machine-readable lines:

    torch_tokens_per_s <value> tok/s      (timed steps only, after warmup)
    torch_peak_rss_mb <value> MB          (peak RSS of this process)
    torch_tokens_per_cpu_s <value> tok/cpu-s   (per CPU-second of the process)

Other output lines start with '#'.
"""

import argparse
import math
import os
import resource
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="compute threads (torch and BLAS)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (torch >= 2)")
    ap.add_argument("--seq", type=int, default=256, help="sequence length")
    ap.add_argument("--batch", type=int, default=8, help="batch size")
    args = ap.parse_args()
    if args.threads < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--threads and --steps must be >= 1, --warmup >= 0")
    return args


# Debian's torch calls the system BLAS (OpenBLAS) for its matmuls, and
# torch.set_num_threads does not reach it: OpenBLAS sizes its own pool from
# the core count when it is loaded. So the thread count goes into the
# environment before torch (and with it OpenBLAS) is imported, or --threads 1
# would still run every GEMM on all cores.
if __name__ == "__main__":
    ARGS = parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    # Waiting OpenMP threads sleep instead of spinning, as sheaf's do (ops.h
    # UsePassiveOmpWaitPolicy): on a shared machine spinning threads stall
    # their descheduled peers, which would make the 2-thread figure a
    # measure of the load rather than of PyTorch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
else:
    ARGS = None

import torch  # noqa: E402  (after the thread environment, see above)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HIDDEN = 256
LAYERS = 4
HEADS = 8
KV_HEADS = 4
HEAD_DIM = 32
INTERMEDIATE = 688
VOCAB = 258
LORA_RANK = 8
LORA_ALPHA = 16.0
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
LR = 1e-4

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")
try:  # enable_gqa appeared in torch 2.5
    HAS_SDPA_GQA = HAS_SDPA and "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")
except Exception:  # pragma: no cover
    HAS_SDPA_GQA = False


class LoraLinear(nn.Module):
    """y = x Wᵀ + ((alpha / r) · x Aᵀ) Bᵀ with W frozen; A, B trainable.

    A is Kaiming-uniform and B zero, as PEFT initialises them.
    """

    def __init__(self, in_features, out_features, r, alpha):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        nn.init.normal_(self.weight, std=0.02)
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / r

    def forward(self, x):
        # The scale goes on the (N, r) intermediate, not on the (N, out) result.
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A) * self.scale, self.lora_B)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        lin = lambda i, o: LoraLinear(i, o, LORA_RANK, LORA_ALPHA)
        self.q_proj = lin(HIDDEN, HEADS * HEAD_DIM)
        self.k_proj = lin(HIDDEN, KV_HEADS * HEAD_DIM)
        self.v_proj = lin(HIDDEN, KV_HEADS * HEAD_DIM)
        self.o_proj = lin(HEADS * HEAD_DIM, HIDDEN)

    def forward(self, x, cos, sin, mask_bias):
        B, T, _ = x.shape
        rep = HEADS // KV_HEADS  # query head h reads kv head h // rep
        q = self.q_proj(x).view(B, T, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin  # (B, NH, T, HD), contiguous
        k = k * cos + rotate_half(k) * sin  # (B, KVH, T, HD), contiguous
        if HAS_SDPA_GQA:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif HAS_SDPA:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Stack the rep query heads of a KV head into rows: (B·KVH, rep·T, HD).
            qs = q.reshape(B * KV_HEADS, rep * T, HEAD_DIM)
            ks = k.reshape(B * KV_HEADS, T, HEAD_DIM)
            vs = v.contiguous().view(B * KV_HEADS, T, HEAD_DIM)
            scores = torch.baddbmm(mask_bias, qs, ks.transpose(1, 2), alpha=1.0 / math.sqrt(HEAD_DIM))
            out = torch.bmm(torch.softmax(scores, dim=-1), vs).view(B, HEADS, T, HEAD_DIM)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, HEADS * HEAD_DIM))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        lin = lambda i, o: LoraLinear(i, o, LORA_RANK, LORA_ALPHA)
        self.gate_proj = lin(HIDDEN, INTERMEDIATE)
        self.up_proj = lin(HIDDEN, INTERMEDIATE)
        self.down_proj = lin(INTERMEDIATE, HIDDEN)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = RMSNorm(HIDDEN, RMS_EPS)
        self.self_attn = Attention()
        self.post_attention_layernorm = RMSNorm(HIDDEN, RMS_EPS)
        self.mlp = Mlp()

    def forward(self, x, cos, sin, mask_bias):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask_bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.norm = RMSNorm(HIDDEN, RMS_EPS)
        self.lm_head = nn.Parameter(torch.empty(VOCAB, HIDDEN), requires_grad=False)
        nn.init.normal_(self.lm_head, std=0.02)

        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
        freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)  # (T, HD)
        self.register_buffer("sin", emb.sin(), persistent=False)
        # Additive causal mask for the stacked-heads layout of torch 1.13:
        # (rep·T, T), the (T, T) mask repeated once per query head of a group.
        # Unused (empty) where scaled_dot_product_attention exists.
        if HAS_SDPA:
            self.register_buffer("mask_bias", torch.empty(0), persistent=False)
        else:
            causal = torch.full((seq, seq), float("-inf")).triu(1)
            self.register_buffer("mask_bias", causal.repeat(HEADS // KV_HEADS, 1), persistent=False)

    def forward(self, tokens, targets):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin, self.mask_bias)
        logits = F.linear(self.norm(x), self.lm_head)
        return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))


def make_optimizer(params):
    try:
        return torch.optim.AdamW(params, lr=LR, foreach=True)
    except TypeError:  # torch without the foreach argument
        return torch.optim.AdamW(params, lr=LR)


def main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    B, T = args.batch, args.seq
    model = Decoder(T)
    adapter = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert len(adapter) == 2 * 7 * LAYERS, len(adapter)
    opt = make_optimizer(adapter)
    fwd = model
    if args.compile:
        if not hasattr(torch, "compile"):
            print("# torch.compile needs torch >= 2.0", file=sys.stderr)
            return 2
        fwd = torch.compile(model)

    n_adapter = sum(p.numel() for p in adapter)
    n_frozen = sum(p.numel() for p in frozen)
    attn = ("sdpa+gqa" if HAS_SDPA_GQA else "sdpa") if HAS_SDPA else "baddbmm+softmax+bmm"
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'compiled' if args.compile else 'eager'}, attention {attn}, "
          f"base {n_frozen} frozen params, adapter {n_adapter} params, B {B} T {T}")

    g = torch.Generator().manual_seed(args.seed + 1)

    def step():
        seq = torch.randint(0, VOCAB, (B, T + 1), generator=g)
        loss = fwd(seq[:, :-1], seq[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    t_warm = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warm_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - t0
    cpu_s = time.process_time() - c0

    tokens_per_s = args.steps * B * T / elapsed
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(f"# warmup {args.warmup} steps {warm_s:.1f} s; {args.steps} timed steps in {elapsed:.3f} s "
          f"({elapsed / args.steps * 1e3:.1f} ms/step), last loss {loss:.4f} (ln V = {math.log(VOCAB):.4f})")
    print(f"torch_tokens_per_s {tokens_per_s:.1f} tok/s")
    # Per CPU-second of the process: not affected by descheduling on a shared
    # machine (with several threads it also counts their spin-waiting).
    print(f"torch_tokens_per_cpu_s {args.steps * B * T / cpu_s:.1f} tok/cpu-s")
    print(f"torch_peak_rss_mb {peak_rss_mb:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
