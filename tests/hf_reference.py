"""sheaf vs transformers / peft / tokenizers on tiny random artefacts.

Every check prints one line; the script exits non-zero when any fails.

Logit tolerance: both sides compute in fp32 on identical weights and ids;
only the order of summation differs (BLAS vs torch, blocked softmax). With
C <= 64 and 2 layers the rounding is ~sqrt(C) * 6e-8 * |x| per op, a few
1e-6 on logits of magnitude ~1; we allow max|diff| <= 2e-4 * max(1,
max|logit|). A dropped bias (std 0.2 here) or a wrong RoPE frequency moves
logits by >= 1e-2, fifty times the bound.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

import transformers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig,
                          Qwen2Config)
import peft

FAILS = []
TOL = 2e-4


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("  " + detail if detail else ""))
    if not ok:
        FAILS.append(name)


def run(cmd, expect_rc=0):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != expect_rc:
        print("command:", " ".join(cmd), "rc", p.returncode, "\n", p.stdout, p.stderr)
    return p


TOKENS = [[1, 5, 9, 2, 33, 7, 0, 12, 60, 3, 4, 8],
          [40, 2, 2, 17, 63, 50, 6, 1, 9, 11, 30, 5]]


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def hf_logits(model, tokens=TOKENS):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float()


def sheaf_logits(args, model_dir, adapter=None, tokens=TOKENS, expect_rc=0):
    out = os.path.join(args.work, "logits_%d.safetensors" % abs(hash((model_dir, adapter))))
    cmd = [args.sheaf, "logits", "--model", model_dir, "--tokens",
           ";".join(",".join(str(t) for t in row) for row in tokens), "--out", out,
           "--threads", "1"]
    if adapter:
        cmd += ["--adapter", adapter]
    p = run(cmd, expect_rc)
    if p.returncode != 0:
        return None, p
    return load_file(out)["logits"], p


def compare(name, ref, got):
    if got is None:
        check(name, False, "sheaf failed")
        return
    diff = (ref - got).abs().max().item()
    bound = TOL * max(1.0, ref.abs().max().item())
    check(name, diff <= bound, "max|diff| %.2e (bound %.2e)" % (diff, bound))


def tiny_models(args):
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
    out = {}
    torch.manual_seed(0)
    llama = LlamaConfig(**common, attention_bias=True, mlp_bias=True, rope_theta=10000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16},
                        bos_token_id=1, eos_token_id=2)
    llama_plain = LlamaConfig(**common, rope_scaling={"type": "linear", "factor": 2.0})
    qwen = Qwen2Config(**{**common, "tie_word_embeddings": True}, rope_theta=1e6)
    mistral = MistralConfig(**common, head_dim=16, sliding_window=4096)
    for name, cfg, cls in [("llama_bias_rope3", llama, transformers.LlamaForCausalLM),
                           ("llama_linear_rope", llama_plain, transformers.LlamaForCausalLM),
                           ("qwen2_tied", qwen, transformers.Qwen2ForCausalLM),
                           ("mistral_head_dim", mistral, transformers.MistralForCausalLM)]:
        cfg._attn_implementation = "eager"
        m = cls(cfg)
        randomise(m, len(out) + 1)
        out[name] = m
    return out


def model_checks(args, models):
    for name, m in models.items():
        d = os.path.join(args.work, name)
        m.save_pretrained(d)
        compare("logits %s fp32" % name, hf_logits(m), sheaf_logits(args, d)[0])
    # bf16 (sheaf widens exactly; the reference is the bf16 weights in fp32)
    m = models["llama_bias_rope3"]
    d16 = os.path.join(args.work, "llama_bf16")
    m.to(torch.bfloat16).save_pretrained(d16)
    m.float()
    ref16 = AutoModelForCausalLM.from_pretrained(d16, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    compare("logits llama bf16 file", hf_logits(ref16), sheaf_logits(args, d16)[0])
    # sharded
    ds = os.path.join(args.work, "qwen2_sharded")
    models["qwen2_tied"].save_pretrained(ds, max_shard_size="20KB")
    n_shards = len([f for f in os.listdir(ds) if f.endswith(".safetensors")])
    check("qwen2 sharded has an index and >1 shard",
          os.path.exists(os.path.join(ds, "model.safetensors.index.json")) and n_shards > 1,
          "%d shards" % n_shards)
    compare("logits qwen2 sharded", hf_logits(models["qwen2_tied"]), sheaf_logits(args, ds)[0])

    # Refusals: exit 2 naming the field.
    dw = os.path.join(args.work, "mistral_window")
    mc = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, sliding_window=8)
    transformers.MistralForCausalLM(mc).save_pretrained(dw)
    _, p = sheaf_logits(args, dw, expect_rc=2)
    check("mistral sliding_window 8 < T 12 refused (exit 2)",
          p.returncode == 2 and "sliding_window" in p.stderr, p.stderr.strip()[-160:])
    dq = os.path.join(args.work, "qwen_window")
    qc = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                     sliding_window=8, max_window_layers=0)
    transformers.Qwen2ForCausalLM(qc).save_pretrained(dq)
    _, p = sheaf_logits(args, dq, expect_rc=2)
    check("qwen2 use_sliding_window 8 < T 12 refused (exit 2)",
          p.returncode == 2 and "sliding_window" in p.stderr, p.stderr.strip()[-160:])
    # sheaf eval: exit 2 with the reason for a seq-len beyond
    # max_position_embeddings (64 here, default --seq-len 256) and for a
    # vocabulary smaller than the (byte) tokenizer's.
    txt = os.path.join(args.work, "eval.txt")
    open(txt, "w").write("some text to evaluate on\n" * 20)
    p = run([args.sheaf, "eval", "--model", os.path.join(args.work, "llama_linear_rope"), "--data", txt], 2)
    check("eval --seq-len beyond max_position_embeddings exits 2 saying so",
          p.returncode == 2 and "max_position_embeddings 64" in p.stderr, p.stderr.strip()[-140:])
    # (--tokenizer byte explicitly: with the default, auto, this model --
    # vocab 64, no tokenizer file -- is refused before, see below.)
    p = run([args.sheaf, "eval", "--model", os.path.join(args.work, "llama_linear_rope"), "--data", txt,
             "--seq-len", "32", "--tokenizer", "byte"], 2)
    check("eval with a vocab smaller than the tokenizer's exits 2",
          p.returncode == 2 and "smaller than the tokenizer" in p.stderr, p.stderr.strip()[-140:])
    p = run([args.sheaf, "eval", "--model", os.path.join(args.work, "llama_linear_rope"), "--data", txt,
             "--seq-len", "32"], 2)
    check("eval, tokenizer auto, no tokenizer file, vocab 64: exits 2 naming data.tokenizer",
          p.returncode == 2 and "data.tokenizer: auto" in p.stderr and "vocab_size 64" in p.stderr,
          p.stderr.strip()[-140:])
    # A config field sheaf does not know: refused by name.
    dx = os.path.join(args.work, "llama_unknown_field")
    models["llama_linear_rope"].save_pretrained(dx)
    cfg = json.load(open(os.path.join(dx, "config.json")))
    cfg["qk_layernorm"] = True
    json.dump(cfg, open(os.path.join(dx, "config.json"), "w"))
    _, p = sheaf_logits(args, dx, expect_rc=2)
    check("unknown config field refused by name", p.returncode == 2 and "qk_layernorm" in p.stderr)


def generate_checks(args, models):
    """Greedy decoding equals transformers' generate(do_sample=False)."""
    d = os.path.join(args.work, "llama_bias_rope3")
    m = models["llama_bias_rope3"]
    for prompt in ([1, 5, 9, 2, 33], [1, 40, 41, 42]):
        with torch.no_grad():
            ref = m.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                             eos_token_id=2, pad_token_id=0)[0, len(prompt):].tolist()
        p = run([args.sheaf, "generate", d, "--prompt-ids", ",".join(map(str, prompt)),
                 "--max-new-tokens", "10", "--threads", "1"])
        got = [int(x) for x in p.stdout.strip().split(",") if x] if p.returncode == 0 else None
        check("generate greedy == transformers (prompt %s)" % prompt, got == ref, "%s vs %s" % (got, ref))
        p = run([args.sheaf, "generate", d, "--prompt-ids", ",".join(map(str, prompt)),
                 "--max-new-tokens", "10", "--threads", "1", "--no-kv-cache"])
        nocache = [int(x) for x in p.stdout.strip().split(",") if x] if p.returncode == 0 else None
        check("generate greedy: KV cache == no cache (prompt %s)" % prompt, nocache == got,
              "%s vs %s" % (nocache, got))
    p = run([args.sheaf, "generate", d, "--prompt-ids", "1,5", "--max-new-tokens", "6",
             "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"])
    p2 = run([args.sheaf, "generate", d, "--prompt-ids", "1,5", "--max-new-tokens", "6",
              "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"])
    check("generate sampling runs and is reproducible per seed",
          p.returncode == 0 and p.stdout == p2.stdout and len(p.stdout.strip()) > 0, p.stdout.strip())


def sheaf_adapter_checks(args, models):
    """Adapters sheaf writes load in PEFT without warnings, with sheaf's logits."""
    import warnings
    base_dir = os.path.join(args.work, "llama_bias_rope3")
    cases = [("all_rslora", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "4", "8", "1", "all"),
             ("layers_1_only", "q_proj,v_proj", "2", "16", "0", "1"),
             ("lm_head", "q_proj,lm_head", "2", "4", "0", "all")]
    for name, targets, r, alpha, rs, layers in cases:
        ad = os.path.join(args.work, "sheaf_adapter_" + name)
        p = run([args.adapter_export, base_dir, ad, targets, r, alpha, rs, layers, "5"])
        if p.returncode != 0:
            check("sheaf exports adapter %s" % name, False, p.stderr)
            continue
        base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pm = peft.PeftModel.from_pretrained(base, ad)
        msgs = [str(w.message) for w in caught]
        check("peft loads sheaf adapter %s without warnings" % name, not msgs, "; ".join(msgs)[:200])
        ref = hf_logits(pm)
        compare("sheaf adapter %s: peft logits == sheaf logits" % name, ref,
                sheaf_logits(args, base_dir, adapter=ad)[0])
        compare("sheaf adapter %s: peft merge_and_unload == unmerged" % name, ref, hf_logits(pm.merge_and_unload()))


def grad_check(args, pm, base_dir, ad, name):
    """Adapter gradients of the mean next-token loss on TOKENS: sheaf
    (`sheaf logits --grads`) against PyTorch autograd through transformers +
    PEFT. Both fp32; the bound is 1e-4 normwise per tensor (fp32 summation
    order gives ~1e-6; a wrong scale, a missing term or a transposed factor
    is off by 1e-1 or more)."""
    pm.train()
    pm.zero_grad()
    ids = torch.tensor(TOKENS)
    loss = pm(ids, labels=ids).loss
    loss.backward()
    ref = {}
    for n, p in pm.named_parameters():
        if "lora_" in n and p.grad is not None:
            key = n.replace("base_model.model.", "", 1).replace(".default", "") + ".grad"
            ref[key] = p.grad.float()
    pm.eval()
    out = os.path.join(args.work, "grads_%s.safetensors" % name)
    p = run([args.sheaf, "logits", "--model", base_dir, "--adapter", ad, "--grads", "--threads", "1",
             "--tokens", ";".join(",".join(str(t) for t in row) for row in TOKENS), "--out", out])
    if p.returncode != 0:
        check("adapter gradients %s: sheaf logits --grads" % name, False, p.stderr.strip()[-200:])
        return
    got = {k: v for k, v in load_file(out).items() if k.endswith(".grad")}
    check("adapter gradients %s: the same tensors as PEFT's" % name, set(got) == set(ref),
          str(sorted(set(got) ^ set(ref)))[:200])
    worst = 0.0
    for k in sorted(set(got) & set(ref)):
        r = ref[k]
        err = float((got[k] - r).norm() / max(float(r.norm()), 1e-12))
        worst = max(worst, err)
    check("adapter gradients %s == PyTorch autograd (normwise <= 1e-4)" % name,
          worst <= 1e-4 and len(got) > 0, "worst %.2e over %d tensors" % (worst, len(got)))


def adapter_checks(args, models):
    base = models["llama_bias_rope3"]
    base_dir = os.path.join(args.work, "llama_bias_rope3")
    cases = {
        "rslora_layers_to_transform": peft.LoraConfig(
            r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            layers_to_transform=[1], init_lora_weights=False, task_type="CAUSAL_LM"),
        "patterns_lm_head": peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj",
                                               "down_proj", "lm_head"],
            rank_pattern={"model.layers.1.self_attn.q_proj": 2, "down_proj": 6},
            alpha_pattern={"v_proj": 3.0}, init_lora_weights=False, task_type="CAUSAL_LM"),
        "regex_targets": peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=r".*\.(q_proj|o_proj)", init_lora_weights=False,
            task_type="CAUSAL_LM"),
    }
    for name, cfg in cases.items():
        torch.manual_seed(7)
        pm = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager"), cfg)
        ad = os.path.join(args.work, "adapter_" + name)
        pm.save_pretrained(ad)
        ref = hf_logits(pm)
        compare("peft adapter %s (sheaf logits --adapter)" % name, ref,
                sheaf_logits(args, base_dir, adapter=ad)[0])
        grad_check(args, pm, base_dir, ad, name)
        # sheaf merge -> transformers loads the merged dir
        md = os.path.join(args.work, "merged_" + name)
        p = run([args.sheaf, "merge", base_dir, ad, md])
        if p.returncode != 0:
            check("sheaf merge %s" % name, False, p.stderr)
            continue
        merged = AutoModelForCausalLM.from_pretrained(md, attn_implementation="eager")
        compare("sheaf merge %s loaded by transformers" % name, ref, hf_logits(merged))
        ref_merged = pm.merge_and_unload()
        compare("peft merge_and_unload %s vs sheaf merged" % name, hf_logits(ref_merged), hf_logits(merged))
    # The merged export keeps special ids and writes generation_config.json.
    md = os.path.join(args.work, "merged_regex_targets")
    cfg = json.load(open(os.path.join(md, "config.json")))
    check("merged config.json has bos/eos ids", cfg.get("bos_token_id") == 1 and cfg.get("eos_token_id") == 2,
          str({k: cfg.get(k) for k in ("bos_token_id", "eos_token_id")}))
    gc = transformers.GenerationConfig.from_pretrained(md)
    check("merged generation_config.json loads", gc.eos_token_id == 2)
    # bf16 base -> bf16 merged by default; --dtype f32 overrides.
    d16 = os.path.join(args.work, "llama_bf16")
    ad = os.path.join(args.work, "adapter_regex_targets")
    for flag, want in [([], "BF16"), (["--dtype", "f32"], "F32")]:
        out = os.path.join(args.work, "merged_bf16_" + want)
        p = run([args.sheaf, "merge"] + flag + [d16, ad, out])
        st = load_file(os.path.join(out, "model.safetensors")) if p.returncode == 0 else {}
        dt = {str(v.dtype) for v in st.values()}
        want_t = "torch.bfloat16" if want == "BF16" else "torch.float32"
        check("sheaf merge %s keeps dtype %s" % (" ".join(flag) or "(default)", want), dt == {want_t}, str(dt))
    # --max-shard-size: shards + index that transformers loads, equal to the one-file merge.
    out = os.path.join(args.work, "merged_sharded")
    p = run([args.sheaf, "merge", "--max-shard-size", "20K", base_dir, ad, out])
    shards = sorted(f for f in os.listdir(out) if f.startswith("model-")) if p.returncode == 0 else []
    check("sheaf merge --max-shard-size 20K writes shards and an index",
          len(shards) >= 2 and os.path.exists(os.path.join(out, "model.safetensors.index.json"))
          and not os.path.exists(os.path.join(out, "model.safetensors")), str(shards))
    if shards:
        sharded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
        compare("sharded sheaf merge loaded by transformers == one-file merge",
                hf_logits(AutoModelForCausalLM.from_pretrained(os.path.join(args.work, "merged_regex_targets"),
                                                               attn_implementation="eager")),
                hf_logits(sharded))
    # PEFT saved the base lm_head beside an lm_head LoRA; a copy that
    # differs from the base would override it in PEFT: refused.
    from safetensors.torch import save_file
    src = os.path.join(args.work, "adapter_patterns_lm_head")
    bad = os.path.join(args.work, "adapter_bad_base_copy")
    subprocess.run(["cp", "-r", src, bad], check=True)
    st = load_file(os.path.join(bad, "adapter_model.safetensors"))
    key = "base_model.model.lm_head.base_layer.weight"
    check("peft saved the base lm_head copy", key in st)
    if key in st:
        st[key] = st[key] + 1.0
        save_file(st, os.path.join(bad, "adapter_model.safetensors"), metadata={"format": "pt"})
        _, p = sheaf_logits(args, base_dir, adapter=bad, expect_rc=2)
        check("adapter whose base lm_head copy differs is refused", p.returncode == 2 and "lm_head" in p.stderr,
              p.stderr.strip()[-120:])
    # Refusals of adapter fields, by name.
    for field, value in [("use_dora", True), ("modules_to_save", ["lm_head"]), ("bias", "all")]:
        bad = os.path.join(args.work, "adapter_bad_" + field)
        subprocess.run(["cp", "-r", os.path.join(args.work, "adapter_regex_targets"), bad], check=True)
        c = json.load(open(os.path.join(bad, "adapter_config.json")))
        c[field] = value
        json.dump(c, open(os.path.join(bad, "adapter_config.json"), "w"))
        _, p = sheaf_logits(args, base_dir, adapter=bad, expect_rc=2)
        check("adapter %s refused by name" % field, p.returncode == 2 and field in p.stderr,
              p.stderr.strip()[-120:])


TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll see what they've done.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Größe, Ärger.",
    "Café déjà vu: naïve résumé, coöperate, Ångström, façade.",
    "中文分词是一个难题。我们今天去北京。日本語の文章も少しあります。",
    "한국어 문장도 있습니다. Привет, как дела? Всё хорошо.",
    "مرحبا بالعالم. שלום עולם. Γειά σου κόσμε.",
    "Emoji: 👍🏽 🎉🎉 👨‍👩‍👧 ❤️ and more 🤖!",
    "Numbers 1234567890 and 3.14159 and 1,000,000 and 42nd street.",
    "Whitespace   runs\t\ttabs\n\nnewlines   \n  indented\r\nwindows",
    "code: def f(x):\n    return x**2  # comment\n\tif a != b: pass",
    "hello<|endoftext|>world and <|im_start|>user\nhi<|im_end|>",
]
HELD_OUT = [
    "A different sentence, with punctuation!? And 98765 digits, 007 and 1e-5.",
    "Köln und Düsseldorf liegen am Rhein; über 1000 Brücken.",
    "e\u0301te\u0301 (combining accents) vs été, and ñ vs n\u0303.",
    "北京欢迎你。東京タワー。서울 타워.",
    "Two emoji 🤖👍🏽 and ZWJ 👩‍💻 and flags 🇳🇱.",
    "    leading spaces and trailing   ",
    "line one\nline two\n\n\nline five\twith tab",
    "specials inside<|endoftext|>text<|im_start|>assistant\nok<|im_end|>",
    "Mixed123abc456 ABC def GHI 'quoted' \"double\" it's they're we'd I'm you'll",
    "",
    " ",
    "\n",
]
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def tokenizer_checks(args):
    from tokenizers import (Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, trainers)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    corpus = TRAIN_TEXT * 20
    families = {
        "gpt2": (None, pre_tokenizers.ByteLevel(add_prefix_space=False), False),
        "llama3": (None, pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True),
        "qwen2": (normalizers.NFC(), pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PAT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), False),
    }
    for fam, (norm, pre, ignore_merges) in families.items():
        tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
        if norm is not None:
            tok.normalizer = norm
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        d = os.path.join(args.work, "tok_" + fam)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        json.dump({"eos_token": "<|endoftext|>", "bos_token": None}, open(os.path.join(d, "tokenizer_config.json"), "w"))
        texts = HELD_OUT + TRAIN_TEXT
        json.dump(texts, open(os.path.join(d, "texts.json"), "w"))
        out = os.path.join(d, "sheaf.json")
        p = run([args.tokenize_dump, os.path.join(d, "tokenizer.json"), os.path.join(d, "texts.json"), out])
        if p.returncode != 0:
            check("tokenizer %s loads in sheaf" % fam, False, p.stderr)
            continue
        got = json.load(open(out))
        eos = got["eos_id"]
        enc_ok = dec_ok = 0
        for text, row in zip(texts, got["rows"]):
            ref = tok.encode(text, add_special_tokens=False).ids
            if ref == row["ids"]:
                enc_ok += 1
            else:
                print("  %s mismatch on %r:\n    tokenizers %s\n    sheaf      %s" % (fam, text, ref, row["ids"]))
            ref_dec = tok.decode([i for i in ref if i != eos], skip_special_tokens=False)
            if ref_dec == row["decoded"]:
                dec_ok += 1
            else:
                print("  %s decode mismatch on %r: %r vs %r" % (fam, text, ref_dec, row["decoded"]))
        check("tokenizer %s encode token for token (%d texts)" % (fam, len(texts)), enc_ok == len(texts),
              "%d/%d" % (enc_ok, len(texts)))
        check("tokenizer %s decode" % fam, dec_ok == len(texts), "%d/%d" % (dec_ok, len(texts)))
        check("tokenizer %s has no BOS, EOS = <|endoftext|>" % fam,
              not got["adds_bos"] and eos == tok.token_to_id("<|endoftext|>"))


LLAMA3_CHAT = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
               "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
               "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
               "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
               "<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML_CHAT = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
               "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
               "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVERSATIONS = [
    [{"role": "user", "content": "Hello! Wie geht's?"}, {"role": "assistant", "content": "Gut, danke. 我很好 👍🏽"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": " 4 \n"}, {"role": "user", "content": "and 3+3"},
     {"role": "assistant", "content": "6"}],
]


def chat_checks(args):
    """Rendered ids equal apply_chat_template; trained tokens are exactly the
    assistant spans (content + end-of-turn token)."""
    from transformers import PreTrainedTokenizerFast
    for fmt, fam, template in [("llama3", "llama3", LLAMA3_CHAT), ("chatml", "qwen2", CHATML_CHAT)]:
        d = os.path.join(args.work, "tok_" + fam)
        hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                     bos_token="<|begin_of_text|>" if fmt == "llama3" else None,
                                     eos_token="<|endoftext|>")
        hf.chat_template = template
        conv_path = os.path.join(d, "conversations.json")
        json.dump(CONVERSATIONS, open(conv_path, "w"))
        out = os.path.join(d, "chat_%s.json" % fmt)
        p = run([args.tokenize_dump, "--chat", fmt, os.path.join(d, "tokenizer.json"), conv_path, out])
        if p.returncode != 0:
            check("chat %s renders" % fmt, False, p.stderr)
            continue
        rows = json.load(open(out))
        end = "<|eot_id|>" if fmt == "llama3" else "<|im_end|>"
        for conv, row in zip(CONVERSATIONS, rows):
            ref = hf.apply_chat_template(conv, tokenize=True)
            check("chat %s ids == apply_chat_template (%d messages)" % (fmt, len(conv)), ref == row["ids"],
                  "" if ref == row["ids"] else "%s vs %s" % (ref, row["ids"]))
            trained_text = hf.decode([i for i, t in zip(row["ids"], row["trained"]) if t])
            want = "".join((m["content"].strip() if fmt == "llama3" else m["content"]) + end
                           for m in conv if m["role"] == "assistant")
            check("chat %s trained tokens are the assistant spans" % fmt, trained_text == want,
                  "%r vs %r" % (trained_text, want))


def train_checks(args):
    """`sheaf train` on an HF Llama dir (attention_bias, mlp_bias) with its
    own tokenizer.json; PEFT loads the exported adapter, equal logits."""
    import shutil
    import warnings
    cfg = LlamaConfig(vocab_size=700, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attention_bias=True, mlp_bias=True)
    cfg._attn_implementation = "eager"
    m = transformers.LlamaForCausalLM(cfg)
    randomise(m, 11)
    md = os.path.join(args.work, "train_model")
    m.save_pretrained(md)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.work, "tok_qwen2", f), md)
    dd = os.path.join(args.work, "train_data")
    os.makedirs(dd, exist_ok=True)
    for i, t in enumerate(TRAIN_TEXT * 5):
        open(os.path.join(dd, "%03d.txt" % i), "w").write(t)
    spec = os.path.join(args.work, "train.yaml")
    run_dir = os.path.join(args.work, "train_run")
    open(spec, "w").write("\n".join([
        "name: hf-train", "base_model: " + md, "output_dir: " + run_dir, "seed: 1", "data:",
        "  train: [%s]" % dd, "  format: text", "  seq_len: 32", "  val_fraction: 0.1",
        "  tokenizer: " + os.path.join(md, "tokenizer.json"),
        "lora:", "  adapter:", "    rank: 4", "    alpha: 8", "train:", "  batch_size: 4", "  max_steps: 5", ""]))
    p = run([args.sheaf, "train", "--quiet", spec])
    check("sheaf train on an HF dir with its tokenizer.json", p.returncode == 0, p.stdout.strip()[-120:])
    ad = os.path.join(run_dir, "adapter")
    if p.returncode != 0 or not os.path.isdir(ad):
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(md, attn_implementation="eager"), ad)
    check("peft loads the trained adapter without warnings", not caught, "; ".join(str(w.message) for w in caught)[:200])
    tokens = [[3, 50, 200, 7, 640, 12, 99, 5]]
    compare("trained adapter: peft logits == sheaf logits", hf_logits(pm, tokens),
            sheaf_logits(args, md, adapter=ad, tokens=tokens)[0])


CHAT_FORMATS = [("llama3", "llama3", LLAMA3_CHAT, "<|begin_of_text|>", "<|eot_id|>"),
                ("chatml", "qwen2", CHATML_CHAT, None, "<|im_end|>")]


def chat_tokenizer_dir(args, fmt, fam, template, bos, eos, name):
    """A tokenizer dir: the family's trained tokenizer.json and a
    tokenizer_config.json with the chat template and BOS/EOS."""
    import shutil
    d = os.path.join(args.work, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(args.work, "tok_" + fam, "tokenizer.json"), d)
    json.dump({"bos_token": bos, "eos_token": eos, "chat_template": template},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d


def chat_conversations(n, seed=5):
    import random
    r = random.Random(seed)
    names = ["Ada", "Bo", "Cem", "Dana", "Émile", "Fu 福", "Gus"]
    out = []
    for i in range(n):
        a, b = r.randint(1, 9), r.randint(1, 9)
        name = r.choice(names)
        conv = []
        if i % 3 == 0:
            conv.append({"role": "system", "content": "You add numbers."})
        conv += [{"role": "user", "content": "%s asks: %d+%d?" % (name, a, b)},
                 {"role": "assistant", "content": "%d+%d = %d, %s." % (a, b, a + b, name)}]
        if i % 4 == 1:
            conv += [{"role": "user", "content": "and times?"},
                     {"role": "assistant", "content": "%d*%d = %d" % (a, b, a * b)}]
        out.append(conv)
    return out


def chat_data_checks(args):
    """The training rows sheaf makes of a chat JSONL (data.format chat, the
    template resolved from tokenizer_config.json): inputs are
    transformers' apply_chat_template ids, targets the next id exactly on
    the assistant spans, which are computed here independently from the
    template's own renders of prefixes and the tokenizer's offsets."""
    from transformers import PreTrainedTokenizerFast
    seq_len = 160
    convs = CONVERSATIONS + chat_conversations(6)
    for fmt, fam, template, bos, eos in CHAT_FORMATS:
        d = chat_tokenizer_dir(args, fmt, fam, template, bos, eos, "chatdata_" + fam)
        data = os.path.join(d, "data.jsonl")
        with open(data, "w") as f:
            for c in convs:
                f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
        out = os.path.join(d, "rows.json")
        p = run([args.tokenize_dump, "--chat-data", d, data, str(seq_len), out])
        if p.returncode != 0:
            check("chat data %s rows" % fmt, False, p.stderr)
            continue
        got = json.load(open(out))
        check("chat data %s: template resolved from tokenizer_config.json" % fmt, got["format"] == fmt)
        hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), bos_token=bos,
                                     eos_token=eos)
        hf.chat_template = template
        ok_in = ok_tg = 0
        prefix_ok = True
        for conv, inp, tgt in zip(convs, got["inputs"], got["targets"]):
            ids = hf.apply_chat_template(conv, tokenize=True)
            # Trained positions from transformers alone: assistant turn i spans
            # the tokens after the render of conv[:i] with the generation
            # prompt, up to the end of the render of conv[:i + 1] (ChatML: less
            # its final "\n"). Valid while each prefix render tokenises to a
            # prefix of the whole (checked). (Offsets are no help: the
            # tokenizers library reports empty offsets for some ByteLevel
            # tokens, and return_assistant_tokens_mask needs {% generation %}.)
            mask = [False] * len(ids)
            for i, m in enumerate(conv):
                if m["role"] != "assistant":
                    continue
                pre = hf.apply_chat_template(conv[:i], tokenize=True, add_generation_prompt=True)
                upto = hf.apply_chat_template(conv[:i + 1], tokenize=True)
                prefix_ok &= ids[:len(pre)] == pre and ids[:len(upto)] == upto
                for t in range(len(pre), len(upto) - (1 if fmt == "chatml" else 0)):
                    mask[t] = True
            want_in = (ids + [hf.eos_token_id] * seq_len)[:seq_len]
            want_tg = [ids[t + 1] if t + 1 < len(ids) and mask[t + 1] else -100 for t in range(seq_len)]
            ok_in += inp == want_in
            ok_tg += tgt == want_tg
            if tgt != want_tg:
                print("  %s targets differ:\n    want %s\n    got  %s" % (fmt, want_tg[:len(ids)], tgt[:len(ids)]))
        check("chat data %s: prefix renders tokenise to prefixes (the reference mask is valid)" % fmt, prefix_ok)
        check("chat data %s inputs == apply_chat_template ids, padded with EOS (%d conversations)" % (fmt, len(convs)),
              ok_in == len(convs), "%d/%d" % (ok_in, len(convs)))
        check("chat data %s targets only on assistant spans (content + end of turn)" % fmt,
              ok_tg == len(convs), "%d/%d" % (ok_tg, len(convs)))
    # A malformed line is refused naming the file and line.
    d = os.path.join(args.work, "chatdata_llama3")
    bad = os.path.join(d, "bad.jsonl")
    open(bad, "w").write(json.dumps({"messages": convs[0]}) + "\n" +
                         json.dumps({"messages": [{"role": "tool", "content": "x"}]}) + "\n")
    p = run([args.tokenize_dump, "--chat-data", d, bad, str(seq_len), os.path.join(d, "bad.json")], 2)
    check("chat data: unknown role refused naming file:line", p.returncode == 2 and (bad + ":2") in p.stderr
          and "unknown role" in p.stderr, p.stderr.strip()[:200])


def chat_train_checks(args):
    """Done-when of issue 10: `sheaf train` on an HF Llama dir with its own
    trained BPE tokenizer.json (data.tokenizer left at its default, auto) and a
    chat JSONL (format chat, the template from tokenizer_config.json): the
    loss goes down and PEFT loads the adapter with equal logits."""
    import shutil
    import warnings
    fmt, fam, template, bos, eos = CHAT_FORMATS[0]
    md = chat_tokenizer_dir(args, fmt, fam, template, bos, eos, "chat_model")
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(os.path.join(md, "tokenizer.json"))
    cfg = LlamaConfig(vocab_size=700, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tk.token_to_id(bos), eos_token_id=tk.token_to_id(eos))
    cfg._attn_implementation = "eager"
    torch.manual_seed(3)
    m = transformers.LlamaForCausalLM(cfg)
    # Weights of std 0.15 (not HF's 0.02 init, whose frozen lm_head keeps the
    # logits within ~0.1 of uniform whatever the adapter does).
    randomise(m, 13)
    m.save_pretrained(md)
    data = os.path.join(args.work, "chat_train.jsonl")
    with open(data, "w") as f:
        for c in chat_conversations(64, seed=9):
            f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
    spec = os.path.join(args.work, "chat_train.yaml")
    run_dir = os.path.join(args.work, "chat_run")
    open(spec, "w").write("\n".join([
        "name: hf-chat", "base_model: " + md, "output_dir: " + run_dir, "seed: 2", "data:",
        "  train: [%s]" % data, "  format: chat", "  seq_len: 160", "  val_fraction: 0.1",
        "lora:", "  adapter:", "    rank: 8", "    alpha: 16",
        "    targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
        "optimizer:", "  lr: 0.03", "train:", "  batch_size: 8", "  max_steps: 80", "  log_every: 5",
        "  eval_every: 30", "  threads: 1", ""]))
    p = run([args.sheaf, "train", "--quiet", spec])
    check("sheaf train: HF Llama dir + its tokenizer.json (auto) + chat JSONL", p.returncode == 0,
          (p.stdout + p.stderr).strip()[-300:])
    if p.returncode != 0:
        return
    losses = [json.loads(l)["loss"] for l in open(os.path.join(run_dir, "metrics.jsonl"))
              if '"loss"' in l and json.loads(l).get("loss") is not None]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print("  chat train losses:", ", ".join("%.3f" % x for x in losses))
    # ln(700) = 6.55 at the start (random model); the assistant answers are
    # arithmetic on a few names, learnable by a rank-8 adapter in 80 steps.
    check("chat train loss goes down (mean of the last 5 steps < mean of the first 5 - 1.0 nats)",
          len(losses) >= 10 and last < first - 1.0, "%.4f -> %.4f" % (first, last))
    ad = os.path.join(run_dir, "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(md, attn_implementation="eager"), ad)
    check("peft loads the chat-trained adapter without warnings", not caught,
          "; ".join(str(w.message) for w in caught)[:200])
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(md, "tokenizer.json"), bos_token=bos, eos_token=eos)
    hf.chat_template = template
    tokens = [hf.apply_chat_template(chat_conversations(1, seed=77)[0], tokenize=True)]
    compare("chat-trained adapter: peft logits == sheaf logits", hf_logits(pm, tokens),
            sheaf_logits(args, md, adapter=ad, tokens=tokens)[0])

    # sheaf eval picks the tokenizer.json beside the model (auto) ...
    text = os.path.join(args.work, "chat_eval.txt")
    open(text, "w").write(" ".join(TRAIN_TEXT * 3))
    ev = lambda *extra: run([args.sheaf, "eval", "--model", md, "--data", text, "--seq-len", "32",
                             "--threads", "1"] + list(extra))
    auto, explicit, byte = ev(), ev("--tokenizer", os.path.join(md, "tokenizer.json")), ev("--tokenizer", "byte")
    check("sheaf eval: auto reads the tokenizer.json beside the model",
          auto.returncode == 0 and auto.stdout == explicit.stdout and auto.stdout != byte.stdout,
          auto.stdout.strip()[-80:])
    # ... and, with no tokenizer file, refuses a model whose vocab is not bytes.
    bare = os.path.join(args.work, "chat_model_bare")
    os.makedirs(bare, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(md, f), bare)
    p = run([args.sheaf, "eval", "--model", bare, "--data", text, "--seq-len", "32"], 2)
    check("sheaf eval: no tokenizer file + vocab 700 is refused naming data.tokenizer and the dir",
          p.returncode == 2 and "data.tokenizer" in p.stderr and bare in p.stderr, p.stderr.strip()[-200:])


def sentencepiece_checks(args):
    """A SentencePiece model trained by the `sentencepiece` package: sheaf
    (Debian's libsentencepiece) encodes and decodes as the package does."""
    import io
    import sentencepiece as spm
    d = os.path.join(args.work, "tok_spm")
    os.makedirs(d, exist_ok=True)
    for model_type in ("bpe", "unigram"):
        prefix = os.path.join(d, model_type)
        spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN_TEXT * 20), model_prefix=prefix,
                                       vocab_size=600 if model_type == "bpe" else 450, model_type=model_type, character_coverage=0.9995,
                                       byte_fallback=True, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        texts = [t for t in HELD_OUT + TRAIN_TEXT]
        json.dump(texts, open(os.path.join(d, "texts.json"), "w"))
        out = os.path.join(d, model_type + ".json")
        p = run([args.tokenize_dump, prefix + ".model", os.path.join(d, "texts.json"), out])
        if p.returncode != 0:
            check("sentencepiece %s loads in sheaf" % model_type, False, p.stderr)
            continue
        got = json.load(open(out))
        enc = sum(1 for t, r in zip(texts, got["rows"]) if sp.encode(t) == r["ids"])
        dec = sum(1 for t, r in zip(texts, got["rows"]) if sp.decode(r["ids"]) == r["decoded"])
        check("sentencepiece %s encode token for token" % model_type, enc == len(texts), "%d/%d" % (enc, len(texts)))
        check("sentencepiece %s decode" % model_type, dec == len(texts), "%d/%d" % (dec, len(texts)))
        check("sentencepiece %s special ids" % model_type,
              got["bos_id"] == sp.bos_id() and got["eos_id"] == sp.eos_id() and got["adds_bos"])
        # The sheaf binary itself (libprotobuf inside; libsentencepiece through
        # its dlopen'ed shim): `sheaf data tokenize --model DIR` picks DIR's
        # tokenizer.model (auto) and writes the package's ids.
        import shutil
        import struct
        md = os.path.join(d, model_type + "_model")
        os.makedirs(md, exist_ok=True)
        shutil.copy(prefix + ".model", os.path.join(md, "tokenizer.model"))
        docs = [t for t in texts if t.strip()]
        jl = os.path.join(d, model_type + ".jsonl")
        with open(jl, "w") as f:
            for t in docs:
                f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        tok_file = os.path.join(d, model_type + ".tok")
        p = run([args.sheaf, "data", "tokenize", "--model", md, "--format", "jsonl", "--out", tok_file, jl])
        if p.returncode != 0:
            check("sheaf data tokenize with a tokenizer.model", False, (p.stdout + p.stderr).strip()[-300:])
            continue
        raw = open(tok_file, "rb").read()
        bpt, vocab, bos, eos = struct.unpack_from("<IIII", raw, 12)
        num_docs, num_tokens, tok_off, off_off = struct.unpack_from("<QQQQ", raw, 32)
        ids = struct.unpack_from("<%d%s" % (num_tokens, "H" if bpt == 2 else "I"), raw, tok_off)
        offs = struct.unpack_from("<%dQ" % (num_docs + 1), raw, off_off)
        rows = [list(ids[offs[i]:offs[i + 1]]) for i in range(num_docs)]
        same = sum(1 for t, r in zip(docs, rows) if sp.encode(t) == r)
        check("sheaf data tokenize (binary, tokenizer.model via auto) %s == sentencepiece" % model_type,
              num_docs == len(docs) and same == len(docs) and vocab == sp.get_piece_size() and eos == sp.eos_id(),
              "%d/%d docs" % (same, len(docs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sheaf", required=True)
    ap.add_argument("--tokenize-dump", required=True)
    ap.add_argument("--adapter-export", required=True)
    ap.add_argument("--work", required=True)
    # Comma-separated subset of the check groups below (default: all), for
    # running a part by hand; the tokenizer group makes the tok_* dirs the
    # chat groups read.
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(x for x in args.only.split(",") if x)

    def want(name):
        return not only or name in only
    print("transformers", transformers.__version__, "peft", peft.__version__, "torch", torch.__version__)
    torch.set_num_threads(1)
    if want("models"):
        models = tiny_models(args)
        model_checks(args, models)
        generate_checks(args, models)
        adapter_checks(args, models)
        sheaf_adapter_checks(args, models)
    if want("tokenizer"):
        tokenizer_checks(args)
    if want("chat"):
        chat_checks(args)
    if want("chat_data"):
        chat_data_checks(args)
    if want("train"):
        train_checks(args)
    if want("chat_train"):
        chat_train_checks(args)
    if want("sentencepiece"):
        sentencepiece_checks(args)
    print("%d failed" % len(FAILS))
    if FAILS:
        print("FAILED:", ", ".join(FAILS))
        sys.exit(1)


if __name__ == "__main__":
    main()
