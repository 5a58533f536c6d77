#include "core/model_config.h"

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

// Architectures whose decoder is exactly the one core/model implements.
// Mistral adds a sliding window that we do not implement: refused rather
// than silently computed differently.
struct KnownArch {
  const char* architecture;
  const char* model_type;
  bool qkv_bias;  // Qwen2 always has q/k/v bias and no attention_bias key
};
constexpr KnownArch kKnownArchs[] = {
    {"LlamaForCausalLM", "llama", false},
    {"Qwen2ForCausalLM", "qwen2", true},
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
  if (rms_norm_eps <= 0) return FieldError(src, "rms_norm_eps", "must be > 0");
  if (rope_theta <= 0) return FieldError(src, "rope_theta", "must be > 0");
  if (max_position_embeddings <= 0) return FieldError(src, "max_position_embeddings", "must be > 0");
  if (static_cast<int>(layers.size()) != num_layers) {
    return FieldError(src, "num_hidden_layers", "does not match the number of layer shapes");
  }
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
  }
  return n;
}

std::string ModelConfig::ToJson() const {
  Json j = Json::Object();
  Json arch = Json::Array();
  arch.Push(architecture);
  j.Set("architectures", std::move(arch));
  j.Set("model_type", model_type);
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
  j.Set("hidden_act", "silu");
  j.Set("torch_dtype", "float32");
  return j.Dump(2) + "\n";
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  absl::StatusOr<Json> parsed = Json::Parse(Std(json_text));
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", parsed.status().message()));
  }
  const Json& j = *parsed;
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  ModelConfig c;

  // Architecture: from `architectures` (preferred) or `model_type`.
  const KnownArch* arch = nullptr;
  std::string seen;
  if (const Json* a = j.Find("architectures"); a != nullptr && a->is_array() && a->size() > 0 &&
                                                (*a)[0].is_string()) {
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
  ASSIGN_OR_RETURN(std::vector<int> kv_heads, PerLayer(j, source, "num_key_value_heads", c.num_layers, heads[0]));
  if (j.Find("num_key_value_heads") == nullptr) kv_heads = heads;  // MHA default, per layer
  ASSIGN_OR_RETURN(std::vector<int> inter, PerLayer(j, source, "intermediate_size", c.num_layers, std::nullopt));
  c.layers.resize(static_cast<size_t>(c.num_layers));
  for (size_t l = 0; l < c.layers.size(); ++l) c.layers[l] = {heads[l], kv_heads[l], inter[l]};

  if (const Json* hd = j.Find("head_dim"); hd != nullptr && !hd->is_null()) {
    if (!hd->is_int64()) return FieldError(source, "head_dim", "must be an integer");
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
  ASSIGN_OR_RETURN(double max_pos, OptionalNumber(j, source, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, OptionalBool(j, source, "tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.attention_bias, OptionalBool(j, source, "attention_bias", arch->qkv_bias));
  if (const Json* rs = j.Find("rope_scaling"); rs != nullptr && !rs->is_null()) {
    return FieldError(source, "rope_scaling", "is not supported yet (only plain RoPE)");
  }
  if (const Json* act = j.Find("hidden_act"); act != nullptr && act->is_string() &&
                                              act->as_string() != "silu") {
    return FieldError(source, "hidden_act", absl::StrCat("\"", act->as_string(), "\" is not supported (only silu)"));
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

}  // namespace sheaf
