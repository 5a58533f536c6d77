#include "core/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "core/json.h"
#include "core/status.h"

namespace sheaf {
namespace {

// Architectures whose decoder is exactly the one core/model implements,
// with transformers' defaults for the fields a config.json may leave out.
struct KnownArch {
  const char* architecture;
  const char* model_type;
  bool qkv_bias;  // Qwen2 always has q/k/v bias; HF ignores attention_bias
  bool reads_bias_keys;  // Llama: attention_bias (q,k,v,o) and mlp_bias
  int default_kv_heads;  // 0: num_attention_heads
  int default_max_positions;
  int default_sliding_window;  // Mistral: 4096 when the key is absent
};
constexpr KnownArch kKnownArchs[] = {
    {"LlamaForCausalLM", "llama", false, true, 0, 2048, 0},
    {"Qwen2ForCausalLM", "qwen2", true, false, 32, 32768, 0},
    {"MistralForCausalLM", "mistral", false, false, 8, 4096 * 32, 4096},
};

bool IsSilu(const Json& v) {
  return v.is_string() && (v.as_string() == "silu" || v.as_string() == "swish");
}

// Every field of a Llama / Qwen2 / Mistral config.json (transformers 4.44's
// LlamaConfig, Qwen2Config, MistralConfig and PretrainedConfig).
constexpr FieldRule kConfigFields[] = {
    // The decoder's shape and numerics.
    {"architectures", FieldUse::kFieldRead},
    {"model_type", FieldUse::kFieldRead},
    {"hidden_size", FieldUse::kFieldRead},
    {"num_hidden_layers", FieldUse::kFieldRead},
    {"vocab_size", FieldUse::kFieldRead},
    {"num_attention_heads", FieldUse::kFieldRead},
    {"num_key_value_heads", FieldUse::kFieldRead},
    {"intermediate_size", FieldUse::kFieldRead},
    {"head_dim", FieldUse::kFieldRead},
    {"rms_norm_eps", FieldUse::kFieldRead},
    {"rope_theta", FieldUse::kFieldRead},
    {"rope_scaling", FieldUse::kFieldRead},
    {"max_position_embeddings", FieldUse::kFieldRead},
    {"tie_word_embeddings", FieldUse::kFieldRead},
    {"attention_bias", FieldUse::kFieldRead},
    {"mlp_bias", FieldUse::kFieldRead},
    {"sliding_window", FieldUse::kFieldRead},
    {"use_sliding_window", FieldUse::kFieldRead},
    {"bos_token_id", FieldUse::kFieldRead},
    {"eos_token_id", FieldUse::kFieldRead},
    {"pad_token_id", FieldUse::kFieldRead},
    {"torch_dtype", FieldUse::kFieldRead},
    {"hidden_act", FieldUse::kFieldDefaultOnly, IsSilu, "only silu (SwiGLU) MLPs"},
    {"attention_dropout", FieldUse::kFieldDefaultOnly, IsZero,
     "attention dropout is not implemented; only 0.0"},
    {"pruned_heads", FieldUse::kFieldDefaultOnly, IsEmptyContainer,
     "pruned heads are not implemented"},
    {"is_encoder_decoder", FieldUse::kFieldDefaultOnly, IsFalse, "decoder-only models only"},
    {"add_cross_attention", FieldUse::kFieldDefaultOnly, IsFalse, "no cross-attention"},
    {"quantization_config", FieldUse::kFieldRefused, nullptr,
     "quantised checkpoints (bitsandbytes, GPTQ, AWQ, ...) are not read; give the fp32/bf16/fp16 "
     "weights"},
    {"auto_map", FieldUse::kFieldRefused, nullptr, "custom modelling code (trust_remote_code) is not run"},
    // Only with use_sliding_window (Qwen2), which is refused where it would
    // apply; without it transformers ignores the field too.
    {"max_window_layers", FieldUse::kFieldHarmless},
    // pretraining_tp > 1 splits the projections into slices whose sum is
    // the same product: the same function, up to float rounding.
    {"pretraining_tp", FieldUse::kFieldHarmless},
    // Metadata and caches.
    {"_name_or_path", FieldUse::kFieldHarmless},
    {"transformers_version", FieldUse::kFieldHarmless},
    {"initializer_range", FieldUse::kFieldHarmless},
    {"use_cache", FieldUse::kFieldHarmless},
    {"output_attentions", FieldUse::kFieldHarmless},
    {"output_hidden_states", FieldUse::kFieldHarmless},
    {"return_dict", FieldUse::kFieldHarmless},
    {"torchscript", FieldUse::kFieldHarmless},
    {"use_bfloat16", FieldUse::kFieldHarmless},
    {"tf_legacy_loss", FieldUse::kFieldHarmless},
    {"is_decoder", FieldUse::kFieldHarmless},
    {"tie_encoder_decoder", FieldUse::kFieldHarmless},
    {"chunk_size_feed_forward", FieldUse::kFieldHarmless},  // chunking is exact
    {"cross_attention_hidden_size", FieldUse::kFieldHarmless},
    {"finetuning_task", FieldUse::kFieldHarmless},
    {"id2label", FieldUse::kFieldHarmless},
    {"label2id", FieldUse::kFieldHarmless},
    {"num_labels", FieldUse::kFieldHarmless},
    {"problem_type", FieldUse::kFieldHarmless},
    {"task_specific_params", FieldUse::kFieldHarmless},
    {"tokenizer_class", FieldUse::kFieldHarmless},
    {"prefix", FieldUse::kFieldHarmless},
    {"sep_token_id", FieldUse::kFieldHarmless},
    {"decoder_start_token_id", FieldUse::kFieldHarmless},
    // Generation defaults of old configs (generation only, not the loss).
    {"max_length", FieldUse::kFieldHarmless},
    {"min_length", FieldUse::kFieldHarmless},
    {"do_sample", FieldUse::kFieldHarmless},
    {"early_stopping", FieldUse::kFieldHarmless},
    {"num_beams", FieldUse::kFieldHarmless},
    {"num_beam_groups", FieldUse::kFieldHarmless},
    {"diversity_penalty", FieldUse::kFieldHarmless},
    {"temperature", FieldUse::kFieldHarmless},
    {"top_k", FieldUse::kFieldHarmless},
    {"top_p", FieldUse::kFieldHarmless},
    {"typical_p", FieldUse::kFieldHarmless},
    {"repetition_penalty", FieldUse::kFieldHarmless},
    {"length_penalty", FieldUse::kFieldHarmless},
    {"no_repeat_ngram_size", FieldUse::kFieldHarmless},
    {"encoder_no_repeat_ngram_size", FieldUse::kFieldHarmless},
    {"bad_words_ids", FieldUse::kFieldHarmless},
    {"num_return_sequences", FieldUse::kFieldHarmless},
    {"output_scores", FieldUse::kFieldHarmless},
    {"return_dict_in_generate", FieldUse::kFieldHarmless},
    {"forced_bos_token_id", FieldUse::kFieldHarmless},
    {"forced_eos_token_id", FieldUse::kFieldHarmless},
    {"remove_invalid_values", FieldUse::kFieldHarmless},
    {"exponential_decay_length_penalty", FieldUse::kFieldHarmless},
    {"suppress_tokens", FieldUse::kFieldHarmless},
    {"begin_suppress_tokens", FieldUse::kFieldHarmless},
};

// Debian's Abseil is built as C++14, so absl::string_view is its own type.
std::string_view Std(absl::string_view s) { return {s.data(), s.size()}; }

absl::Status FieldError(absl::string_view source, absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ": ", why));
}

absl::StatusOr<int64_t> RequiredInt(const Json& j, absl::string_view source, absl::string_view key) {
  const Json* v = j.Find(Std(key));
  if (v == nullptr) return FieldError(source, key, "missing (required)");
  if (!v->is_int64()) return FieldError(source, key, "must be an integer");
  return v->as_int64();
}

absl::StatusOr<double> OptionalNumber(const Json& j, absl::string_view source,
                                      absl::string_view key, double def) {
  const Json* v = j.Find(Std(key));
  if (v == nullptr || v->is_null()) return def;
  if (!v->is_number()) return FieldError(source, key, "must be a number");
  return v->as_double();
}

absl::StatusOr<bool> OptionalBool(const Json& j, absl::string_view source, absl::string_view key,
                                  bool def) {
  const Json* v = j.Find(Std(key));
  if (v == nullptr || v->is_null()) return def;
  if (!v->is_bool()) return FieldError(source, key, "must be true or false");
  return v->as_bool();
}

// A per-layer field: an integer (uniform) or a list of num_layers integers.
absl::StatusOr<std::vector<int>> PerLayer(const Json& j, absl::string_view source,
                                          absl::string_view key, int num_layers,
                                          std::optional<int> def) {
  const Json* v = j.Find(Std(key));
  if (v == nullptr || v->is_null()) {
    if (!def) return FieldError(source, key, "missing (required)");
    return std::vector<int>(static_cast<size_t>(num_layers), *def);
  }
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  if (v->is_int64()) {
    if (v->as_int64() > kMaxDim) return FieldError(source, key, "must be <= 2^24");
    return std::vector<int>(static_cast<size_t>(num_layers), static_cast<int>(v->as_int64()));
  }
  if (!v->is_array()) return FieldError(source, key, "must be an integer or a per-layer list");
  if (static_cast<int>(v->size()) != num_layers) {
    return FieldError(source, key,
                      absl::StrCat("has ", v->size(), " entries, num_hidden_layers is ", num_layers));
  }
  std::vector<int> out;
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_int64() || (*v)[i].as_int64() > kMaxDim) {
      return FieldError(source, absl::StrCat(key, "[", i, "]"), "must be an integer <= 2^24");
    }
    out.push_back(static_cast<int>((*v)[i].as_int64()));
  }
  return out;
}

}  // namespace

bool ModelConfig::uniform() const {
  for (const LayerShape& s : layers) {
    if (s.num_heads != layers[0].num_heads || s.num_kv_heads != layers[0].num_kv_heads ||
        s.intermediate != layers[0].intermediate) {
      return false;
    }
  }
  return true;
}

absl::Status ModelConfig::Validate() const {
  const absl::string_view src = "config";
  if (hidden_size <= 0) return FieldError(src, "hidden_size", "must be > 0");
  if (num_layers <= 0) return FieldError(src, "num_hidden_layers", "must be > 0");
  if (vocab_size <= 0) return FieldError(src, "vocab_size", "must be > 0");
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return FieldError(src, "head_dim", absl::StrCat("must be a positive even number, got ", head_dim));
  }
  // Finite as 32-bit floats (fuzz finding: an eps of 1e85 became inf, and
  // config.json written back said null).
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) {
    return FieldError(src, "rms_norm_eps", "must be > 0 and fit a 32-bit float");
  }
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    return FieldError(src, "rope_theta", "must be > 0 and fit a 32-bit float");
  }
  if (max_position_embeddings <= 0) return FieldError(src, "max_position_embeddings", "must be > 0");
  if (static_cast<int>(layers.size()) != num_layers) {
    return FieldError(src, "num_hidden_layers", "does not match the number of layer shapes");
  }
  if (model_type != "llama" && (o_proj_bias || mlp_bias)) {
    return FieldError(src, o_proj_bias ? "attention_bias" : "mlp_bias",
                      absl::StrCat(architecture, " has no o_proj / MLP bias"));
  }
  if (o_proj_bias && !attention_bias) {
    return FieldError(src, "attention_bias", "an o_proj bias without q/k/v bias has no config.json spelling");
  }
  if (attention_bias && !o_proj_bias && mlp_bias) {
    return FieldError(src, "mlp_bias", "q/k/v bias without o_proj bias but with mlp_bias has no config.json spelling");
  }
  if (model_type == "mistral" && attention_bias) {
    return FieldError(src, "attention_bias", "MistralForCausalLM has no attention bias");
  }
  if (!rope_scaling.none() && !(rope_scaling.factor >= 1.0f)) {
    return FieldError(src, "rope_scaling.factor", "must be >= 1");
  }
  if (sliding_window < 0) return FieldError(src, "sliding_window", "must be >= 0 (0 = none)");
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerShape& s = layers[l];
    if (s.num_heads <= 0) return FieldError(src, absl::StrCat("num_attention_heads[", l, "]"), "must be > 0");
    if (s.num_kv_heads <= 0) return FieldError(src, absl::StrCat("num_key_value_heads[", l, "]"), "must be > 0");
    if (s.num_heads % s.num_kv_heads != 0) {
      return FieldError(src, absl::StrCat("num_key_value_heads[", l, "]"),
                        absl::StrCat("num_attention_heads (", s.num_heads,
                                     ") must be a multiple of num_key_value_heads (",
                                     s.num_kv_heads, ")"));
    }
    if (s.intermediate <= 0) return FieldError(src, absl::StrCat("intermediate_size[", l, "]"), "must be > 0");
  }
  return absl::OkStatus();
}

int64_t ModelConfig::NumParams() const {
  int64_t C = hidden_size, n = int64_t{vocab_size} * C * (tie_word_embeddings ? 1 : 2) + C;
  for (const LayerShape& s : layers) {
    const int64_t q = int64_t{s.num_heads} * head_dim, kv = int64_t{s.num_kv_heads} * head_dim;
    n += 2 * C + q * C + 2 * kv * C + C * q + 3 * int64_t{s.intermediate} * C;
    if (attention_bias) n += q + 2 * kv;
    if (o_proj_bias) n += C;
    if (mlp_bias) n += 2 * int64_t{s.intermediate} + C;
  }
  return n;
}

std::string ModelConfig::ToJson() const {
  Json j = Json::Object();
  // A Llama with q/k/v bias but no o_proj bias is exactly a Qwen2 decoder
  // (transformers' Llama attention_bias would add o_proj.bias too).
  const bool as_qwen2 = model_type == "llama" && attention_bias && !o_proj_bias;
  Json arch = Json::Array();
  arch.Push(as_qwen2 ? "Qwen2ForCausalLM" : architecture);
  j.Set("architectures", std::move(arch));
  j.Set("model_type", as_qwen2 ? "qwen2" : model_type);
  j.Set("hidden_size", hidden_size);
  j.Set("num_hidden_layers", num_layers);
  auto per_layer = [&](int LayerShape::*field) -> Json {
    if (uniform()) return Json(layers[0].*field);
    Json a = Json::Array();
    for (const LayerShape& s : layers) a.Push(s.*field);
    return a;
  };
  j.Set("intermediate_size", per_layer(&LayerShape::intermediate));
  j.Set("num_attention_heads", per_layer(&LayerShape::num_heads));
  j.Set("num_key_value_heads", per_layer(&LayerShape::num_kv_heads));
  j.Set("head_dim", head_dim);
  j.Set("vocab_size", vocab_size);
  j.Set("max_position_embeddings", max_position_embeddings);
  j.Set("rms_norm_eps", rms_norm_eps);  // float: prints as 1e-05
  j.Set("rope_theta", rope_theta);
  j.Set("tie_word_embeddings", tie_word_embeddings);
  j.Set("attention_bias", attention_bias);
  if (model_type == "llama") j.Set("mlp_bias", mlp_bias);
  if (!rope_scaling.none()) {
    Json rs = Json::Object();
    const bool llama3 = rope_scaling.type == RopeScaling::Type::kRopeScalingLlama3;
    rs.Set("rope_type", llama3 ? "llama3" : "linear");
    rs.Set("factor", rope_scaling.factor);
    if (llama3) {
      rs.Set("low_freq_factor", rope_scaling.low_freq_factor);
      rs.Set("high_freq_factor", rope_scaling.high_freq_factor);
      rs.Set("original_max_position_embeddings", rope_scaling.original_max_position_embeddings);
    }
    j.Set("rope_scaling", std::move(rs));
  }
  if (model_type == "mistral" || (model_type == "qwen2" && sliding_window > 0)) {
    j.Set("sliding_window", sliding_window > 0 ? Json(sliding_window) : Json(nullptr));
    if (model_type == "qwen2") j.Set("use_sliding_window", true);
  }
  if (bos_token_id >= 0) j.Set("bos_token_id", bos_token_id);
  if (eos_token_id >= 0) j.Set("eos_token_id", eos_token_id);
  if (pad_token_id >= 0) j.Set("pad_token_id", pad_token_id);
  j.Set("hidden_act", "silu");
  j.Set("torch_dtype", torch_dtype.empty() ? "float32" : torch_dtype);
  return j.Dump(2) + "\n";
}

std::span<const FieldRule> ModelConfigFields() { return kConfigFields; }

std::vector<float> RopeInvFreq(int head_dim, float theta, const RopeScaling& rs) {
  const int half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in fp32.
    inv[static_cast<size_t>(i)] =
        1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  if (rs.type == RopeScaling::Type::kRopeScalingLinear) {
    for (float& f : inv) f /= rs.factor;
  } else if (rs.type == RopeScaling::Type::kRopeScalingLlama3) {
    const float old_len = static_cast<float>(rs.original_max_position_embeddings);
    const float low_wavelen = old_len / rs.low_freq_factor;
    const float high_wavelen = old_len / rs.high_freq_factor;
    for (float& f : inv) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (!(wavelen < high_wavelen)) {
        const float smooth =
            (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0f - smooth) * f / rs.factor + smooth * f;
      }
    }
  }
  return inv;
}

namespace {

absl::StatusOr<RopeScaling> ParseRopeScaling(const Json& rs, absl::string_view source) {
  RopeScaling out;
  if (rs.is_null()) return out;
  if (!rs.is_object()) return FieldError(source, "rope_scaling", "must be an object or null");
  const Json* t = rs.Find("rope_type");
  if (t == nullptr) t = rs.Find("type");  // the older spelling
  if (t == nullptr || !t->is_string()) {
    return FieldError(source, "rope_scaling.rope_type", "missing or not a string");
  }
  const std::string& type = t->as_string();
  std::vector<std::string> allowed = {"rope_type", "type"};
  if (type == "default") {
    // Plain RoPE.
  } else if (type == "linear" || type == "llama3") {
    out.type = type == "linear" ? RopeScaling::Type::kRopeScalingLinear
                                : RopeScaling::Type::kRopeScalingLlama3;
    const Json* f = rs.Find("factor");
    if (f == nullptr || !f->is_number() || !(f->as_double() >= 1.0) ||
        !std::isfinite(static_cast<float>(f->as_double()))) {
      return FieldError(source, "rope_scaling.factor", "must be a number >= 1 (a 32-bit float)");
    }
    out.factor = static_cast<float>(f->as_double());
    allowed.push_back("factor");
    if (type == "llama3") {
      auto number = [&](const char* key, float* dst) -> absl::Status {
        const Json* v = rs.Find(key);
        if (v == nullptr || !v->is_number() || !(v->as_double() > 0) ||
            !std::isfinite(static_cast<float>(v->as_double()))) {
          return FieldError(source, absl::StrCat("rope_scaling.", key),
                            "must be a positive number that fits a 32-bit float (required by llama3)");
        }
        *dst = static_cast<float>(v->as_double());
        allowed.push_back(key);
        return absl::OkStatus();
      };
      RETURN_IF_ERROR(number("low_freq_factor", &out.low_freq_factor));
      RETURN_IF_ERROR(number("high_freq_factor", &out.high_freq_factor));
      float original = 0;
      RETURN_IF_ERROR(number("original_max_position_embeddings", &original));
      if (!(out.high_freq_factor > out.low_freq_factor)) {
        return FieldError(source, "rope_scaling.high_freq_factor", "must be > low_freq_factor");
      }
      if (original > (1 << 24) || original != std::floor(original)) {
        return FieldError(source, "rope_scaling.original_max_position_embeddings",
                          "must be an integer <= 2^24");
      }
      out.original_max_position_embeddings = static_cast<int>(original);
    }
  } else {
    return FieldError(source, "rope_scaling.rope_type",
                      absl::StrCat("\"", type,
                                   "\" is not supported (supported: default, linear, llama3; "
                                   "dynamic, yarn, longrope and su change RoPE in ways sheaf "
                                   "does not implement)"));
  }
  for (const Json::Member& m : rs.items()) {
    if (std::find(allowed.begin(), allowed.end(), m.first) == allowed.end() && !m.second.is_null()) {
      return FieldError(source, absl::StrCat("rope_scaling.", m.first),
                        absl::StrCat("is not used by rope_type ", type, " (refused rather than ignored)"));
    }
  }
  return out;
}

absl::StatusOr<int> OptionalTokenId(const Json& j, absl::string_view source, absl::string_view key) {
  const Json* v = j.Find(Std(key));
  if (v == nullptr || v->is_null()) return -1;
  // Lists (several EOS ids, Llama-3.1's generation config) keep the first.
  if (v->is_array() && v->size() > 0) v = &(*v)[0];
  if (!v->is_int64() || v->as_int64() < 0 || v->as_int64() > (int64_t{1} << 24)) {
    return FieldError(source, key, "must be a token id (an integer in [0, 2^24]) or a list of them");
  }
  return static_cast<int>(v->as_int64());
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  absl::StatusOr<Json> parsed = Json::Parse(Std(json_text));
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", parsed.status().message()));
  }
  const Json& j = *parsed;
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  // Every field is read, harmless, or refused by name (kConfigFields).
  RETURN_IF_ERROR(CheckFields(j, kConfigFields, Std(source)));
  ModelConfig c;

  // Architecture: from `architectures` (preferred) or `model_type`; when
  // both are given they must agree (transformers picks the class by
  // model_type).
  const KnownArch* arch = nullptr;
  std::string seen;
  if (const Json* a = j.Find("architectures"); a != nullptr && a->is_array() && a->size() > 0 &&
                                                (*a)[0].is_string()) {
    if (a->size() != 1) return FieldError(source, "architectures", "must list exactly one architecture");
    seen = (*a)[0].as_string();
    for (const KnownArch& k : kKnownArchs) {
      if (seen == k.architecture) arch = &k;
    }
  } else if (const Json* t = j.Find("model_type"); t != nullptr && t->is_string()) {
    seen = t->as_string();
    for (const KnownArch& k : kKnownArchs) {
      if (seen == k.model_type) arch = &k;
    }
  } else {
    return FieldError(source, "architectures", "missing (and no model_type)");
  }
  if (arch == nullptr) {
    std::vector<std::string> names;
    for (const KnownArch& k : kKnownArchs) names.push_back(k.architecture);
    return FieldError(source, "architectures",
                      absl::StrCat("unsupported architecture \"", seen, "\" (supported: ",
                                   absl::StrJoin(names, ", "), ")"));
  }
  if (const Json* t = j.Find("model_type"); t != nullptr && !t->is_null()) {
    if (!t->is_string() || t->as_string() != arch->model_type) {
      return FieldError(source, "model_type",
                        absl::StrCat(t->Dump(), " does not match architectures (",
                                     arch->architecture, " is model_type \"", arch->model_type,
                                     "\")"));
    }
  }
  c.architecture = arch->architecture;
  c.model_type = arch->model_type;

  ASSIGN_OR_RETURN(int64_t hidden, RequiredInt(j, source, "hidden_size"));
  ASSIGN_OR_RETURN(int64_t layers, RequiredInt(j, source, "num_hidden_layers"));
  ASSIGN_OR_RETURN(int64_t vocab, RequiredInt(j, source, "vocab_size"));
  // Range checks before narrowing to int (a value like 2^32+8 must not wrap).
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  if (hidden <= 0 || hidden > kMaxDim) return FieldError(source, "hidden_size", "must be in [1, 2^24]");
  if (vocab > kMaxDim) return FieldError(source, "vocab_size", "must be <= 2^24");
  if (layers <= 0 || layers > 4096) return FieldError(source, "num_hidden_layers", "must be in [1, 4096]");
  if (vocab <= 0) return FieldError(source, "vocab_size", "must be > 0");
  c.hidden_size = static_cast<int>(hidden);
  c.num_layers = static_cast<int>(layers);
  c.vocab_size = static_cast<int>(vocab);

  ASSIGN_OR_RETURN(std::vector<int> heads, PerLayer(j, source, "num_attention_heads", c.num_layers, std::nullopt));
  ASSIGN_OR_RETURN(std::vector<int> kv_heads, PerLayer(j, source, "num_key_value_heads", c.num_layers,
                                                       arch->default_kv_heads > 0 ? arch->default_kv_heads : heads[0]));
  if (j.Find("num_key_value_heads") == nullptr && arch->default_kv_heads == 0) {
    kv_heads = heads;  // MHA default, per layer
  }
  ASSIGN_OR_RETURN(std::vector<int> inter, PerLayer(j, source, "intermediate_size", c.num_layers, std::nullopt));
  c.layers.resize(static_cast<size_t>(c.num_layers));
  for (size_t l = 0; l < c.layers.size(); ++l) c.layers[l] = {heads[l], kv_heads[l], inter[l]};

  if (const Json* hd = j.Find("head_dim"); hd != nullptr && !hd->is_null()) {
    if (!hd->is_int64() || hd->as_int64() <= 0 || hd->as_int64() > kMaxDim) {
      return FieldError(source, "head_dim", "must be an integer in [1, 2^24]");
    }
    c.head_dim = static_cast<int>(hd->as_int64());
  } else {
    if (heads[0] <= 0 || c.hidden_size % heads[0] != 0) {
      return FieldError(source, "num_attention_heads",
                        absl::StrCat("hidden_size (", c.hidden_size,
                                     ") is not a multiple of num_attention_heads (", heads[0],
                                     ") and head_dim is not given"));
    }
    c.head_dim = c.hidden_size / heads[0];
  }
  ASSIGN_OR_RETURN(double eps, OptionalNumber(j, source, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(double theta, OptionalNumber(j, source, "rope_theta", 10000.0));
  ASSIGN_OR_RETURN(double max_pos, OptionalNumber(j, source, "max_position_embeddings",
                                                  arch->default_max_positions));
  if (!(max_pos >= 1 && max_pos <= double{1 << 30})) {
    return FieldError(source, "max_position_embeddings", "must be in [1, 2^30]");
  }
  ASSIGN_OR_RETURN(c.tie_word_embeddings, OptionalBool(j, source, "tie_word_embeddings", false));
  if (arch->reads_bias_keys) {
    // Llama: attention_bias puts a bias on q, k, v AND o_proj.
    ASSIGN_OR_RETURN(bool attention_bias, OptionalBool(j, source, "attention_bias", false));
    c.attention_bias = c.o_proj_bias = attention_bias;
    ASSIGN_OR_RETURN(c.mlp_bias, OptionalBool(j, source, "mlp_bias", false));
  } else {
    // Qwen2 / Mistral: transformers ignores these keys (Qwen2 always has
    // q/k/v bias, Mistral none); so does sheaf, but a type error is one.
    ASSIGN_OR_RETURN(bool unused, OptionalBool(j, source, "attention_bias", false));
    ASSIGN_OR_RETURN(unused, OptionalBool(j, source, "mlp_bias", false));
    (void)unused;
    c.attention_bias = arch->qkv_bias;
  }
  if (const Json* rs = j.Find("rope_scaling"); rs != nullptr) {
    ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(*rs, source));
  }
  // Sliding windows: Mistral's applies whenever sliding_window is set
  // (default 4096); Qwen2's only with use_sliding_window.
  {
    int window = arch->default_sliding_window;
    const Json* sw = j.Find("sliding_window");
    if (sw != nullptr) {
      if (sw->is_null()) {
        window = 0;
      } else if (!sw->is_int64() || sw->as_int64() <= 0 || sw->as_int64() > (int64_t{1} << 30)) {
        return FieldError(source, "sliding_window", "must be a positive integer or null");
      } else {
        window = static_cast<int>(sw->as_int64());
      }
    }
    ASSIGN_OR_RETURN(bool use_window, OptionalBool(j, source, "use_sliding_window", false));
    if (c.model_type == "qwen2") {
      c.sliding_window = use_window ? (sw != nullptr && !sw->is_null() ? window : 4096) : 0;
    } else if (c.model_type == "mistral") {
      c.sliding_window = window;
    } else if (use_window || (sw != nullptr && !sw->is_null())) {
      return FieldError(source, "sliding_window", "Llama has no sliding window attention");
    }
  }
  ASSIGN_OR_RETURN(c.bos_token_id, OptionalTokenId(j, source, "bos_token_id"));
  ASSIGN_OR_RETURN(c.eos_token_id, OptionalTokenId(j, source, "eos_token_id"));
  ASSIGN_OR_RETURN(c.pad_token_id, OptionalTokenId(j, source, "pad_token_id"));
  if (const Json* d = j.Find("torch_dtype"); d != nullptr && !d->is_null()) {
    if (!d->is_string()) return FieldError(source, "torch_dtype", "must be a string");
    c.torch_dtype = d->as_string();
  }
  c.rms_norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  c.max_position_embeddings = static_cast<int>(max_pos);
  absl::Status st = c.Validate();
  if (!st.ok()) {
    // Validate() names the field; add the file.
    std::string msg(st.message());
    if (msg.rfind("config: ", 0) == 0) msg = msg.substr(8);
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", msg));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  // Beneath the process's roots, regular files only (base/open_beneath.h).
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  return ParseModelConfig(text, path);
}

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config) {
  const int64_t C = config.hidden_size, HD = config.head_dim, V = config.vocab_size;
  std::vector<ExpectedTensor> out;
  out.push_back({"model.embed_tokens.weight", {V, C}});
  for (int l = 0; l < config.num_layers; ++l) {
    const LayerShape& s = config.layers[static_cast<size_t>(l)];
    const std::string pre = absl::StrCat("model.layers.", l, ".");
    const int64_t q = int64_t{s.num_heads} * HD, kv = int64_t{s.num_kv_heads} * HD,
                  I = s.intermediate;
    out.push_back({pre + "input_layernorm.weight", {C}});
    out.push_back({pre + "self_attn.q_proj.weight", {q, C}});
    out.push_back({pre + "self_attn.k_proj.weight", {kv, C}});
    out.push_back({pre + "self_attn.v_proj.weight", {kv, C}});
    if (config.attention_bias) {
      out.push_back({pre + "self_attn.q_proj.bias", {q}});
      out.push_back({pre + "self_attn.k_proj.bias", {kv}});
      out.push_back({pre + "self_attn.v_proj.bias", {kv}});
    }
    out.push_back({pre + "self_attn.o_proj.weight", {C, q}});
    if (config.o_proj_bias) out.push_back({pre + "self_attn.o_proj.bias", {C}});
    out.push_back({pre + "post_attention_layernorm.weight", {C}});
    out.push_back({pre + "mlp.gate_proj.weight", {I, C}});
    out.push_back({pre + "mlp.up_proj.weight", {I, C}});
    out.push_back({pre + "mlp.down_proj.weight", {C, I}});
    if (config.mlp_bias) {
      out.push_back({pre + "mlp.gate_proj.bias", {I}});
      out.push_back({pre + "mlp.up_proj.bias", {I}});
      out.push_back({pre + "mlp.down_proj.bias", {C}});
    }
  }
  out.push_back({"model.norm.weight", {C}});
  if (!config.tie_word_embeddings) out.push_back({"lm_head.weight", {V, C}});
  return out;
}

}  // namespace sheaf
