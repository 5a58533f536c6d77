#include "core/lora.h"

#include <algorithm>
#include <cctype>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "core/hf_fields.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace sheaf {
namespace {

constexpr const char* kProjNames[kNumProj] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                              "gate_proj", "up_proj", "down_proj"};

// std::regex backtracks, and some patterns take exponential time (fuzz
// finding: target_modules ".**\\.1..." hung the reader). Refused before
// compiling: patterns over 1024 characters, a quantifier right after a
// quantifier (Python's re refuses those too, "multiple repeat"; a lazy
// "*?" "+?" "??" "}?" is allowed), and a repeated group that itself
// contains a quantifier, such as "(a+)*" (Python accepts these; PEFT
// patterns have no need of them; an optional group "(.*\\.)?" is fine). Empty string: the pattern is fine.
std::string UnsafePatternReason(const std::string& p) {
  if (p.size() > 1024) return "is longer than 1024 characters";
  struct Frame {
    bool has_quantifier = false;
  };
  std::vector<Frame> groups(1);
  // What the next quantifier would apply to.
  enum class Prev { kNothing, kAtom, kGroup, kQuantifier, kLazy };
  Prev prev = Prev::kNothing;
  bool closed_group_quantified_inside = false;
  auto quantifier_len = [&](size_t i) -> size_t {  // 0: not a quantifier at i
    const char ch = p[i];
    if (ch == '*' || ch == '+' || ch == '?') return 1;
    if (ch != '{') return 0;
    size_t j = i + 1;
    const size_t digits_start = j;
    while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]))) ++j;
    if (j == digits_start) return 0;
    if (j < p.size() && p[j] == ',') {
      ++j;
      while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]))) ++j;
    }
    return j < p.size() && p[j] == '}' ? j - i + 1 : 0;
  };
  for (size_t i = 0; i < p.size();) {
    const char ch = p[i];
    if (const size_t q = quantifier_len(i); q > 1) {
      // A counted repetition: at most 1000 (libstdc++ builds one state per
      // count and overflows on long numbers).
      for (size_t j = i + 1, digits = 0; j < i + q; ++j) {
        digits = std::isdigit(static_cast<unsigned char>(p[j])) ? digits + 1 : 0;
        if (digits > 3 && !(digits == 4 && p.compare(j - 3, 4, "1000") == 0)) {
          return absl::StrCat("repeats more than 1000 times at character ", i);
        }
      }
    }
    if (const size_t q = quantifier_len(i); q > 0 && prev != Prev::kNothing) {
      if (prev == Prev::kQuantifier && ch == '?' && q == 1) {
        prev = Prev::kLazy;
        ++i;
        continue;
      }
      if (prev == Prev::kQuantifier || prev == Prev::kLazy) {
        return absl::StrCat("repeats a repetition at character ", i,
                            " (\"", p.substr(i - 1, 2), "\"; Python's re refuses it too)");
      }
      if (prev == Prev::kGroup && closed_group_quantified_inside && ch != '?') {
        return absl::StrCat("repeats a group that itself repeats (character ", i,
                            "): matching could take exponential time");
      }
      groups.back().has_quantifier = true;
      prev = Prev::kQuantifier;
      i += q;
      continue;
    }
    if (ch == '\\') {
      // Backreferences: nothing PEFT needs, and libstdc++ overflows on
      // long ones (fuzz finding: "\\888...8" is signed overflow, UB).
      if (i + 1 < p.size() && p[i + 1] >= '1' && p[i + 1] <= '9') {
        return absl::StrCat("uses a backreference at character ", i, " (not supported)");
      }
      i += 2;
      prev = Prev::kAtom;
      continue;
    }
    if (ch == '[') {
      size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      if (j < p.size() && p[j] == ']') ++j;
      while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2 : 1;
      i = j + 1;
      prev = Prev::kAtom;
      continue;
    }
    if (ch == '(') {
      groups.emplace_back();
      prev = Prev::kNothing;
      ++i;
      if (i < p.size() && p[i] == '?') {  // (?: (?= (?!
        i += 2;
      }
      continue;
    }
    if (ch == ')' && groups.size() > 1) {
      closed_group_quantified_inside = groups.back().has_quantifier;
      groups.pop_back();
      if (closed_group_quantified_inside) groups.back().has_quantifier = true;
      prev = Prev::kGroup;
      ++i;
      continue;
    }
    prev = ch == '|' ? Prev::kNothing : Prev::kAtom;
    ++i;
  }
  return "";
}

// PEFT's get_pattern_key: re.match(rf"(.*\.)?({pattern})$", name). The
// pattern is a raw regex fragment, on purpose (PEFT users write
// "layers.[0-3].*q_proj"). std::regex reports a bad pattern by exception;
// Validate turns that into a Status, so later calls cannot throw.
absl::StatusOr<bool> PatternMatches(const std::string& pattern, const std::string& name) {
  if (const std::string why = UnsafePatternReason(pattern); !why.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("not a supported regular expression: it ", why));
  }
  try {
    const std::regex re("(.*\\.)?(" + pattern + ")", std::regex::ECMAScript);
    return std::regex_match(name, re);
  } catch (const std::regex_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("not a regular expression (", e.what(), ")"));
  }
}

// The value of the first pattern matching `name`, or `fallback`.
template <typename T>
T PatternValue(const std::vector<std::pair<std::string, T>>& patterns, const std::string& name,
               T fallback) {
  for (const auto& [pattern, value] : patterns) {
    absl::StatusOr<bool> m = PatternMatches(pattern, name);
    if (m.ok() && *m) return value;
  }
  return fallback;
}

bool IsLayersPattern(const Json& v) {
  return (v.is_string() && v.as_string() == "layers") ||
         (v.is_array() && v.size() == 1 && v[0].is_string() && v[0].as_string() == "layers");
}
bool IsCausalLm(const Json& v) { return v.is_string() && v.as_string() == "CAUSAL_LM"; }
bool IsTrueOrGaussian(const Json& v) {
  // The init of A and B: irrelevant when the weights are read from a file.
  return v.is_bool() || v.is_string();
}
bool IsNoOffload(const Json& v) {
  if (!v.is_object()) return false;
  for (const Json::Member& m : v.items()) {
    if (m.first != "ephemeral_gpu_offload" || !IsFalse(m.second)) return false;
  }
  return true;
}

// Every adapter_config.json field of PEFT's LoraConfig (0.12, and the
// later ones users meet in newer files).
constexpr FieldRule kAdapterFields[] = {
    {"peft_type", FieldUse::kFieldRead},
    {"r", FieldUse::kFieldRead},
    {"lora_alpha", FieldUse::kFieldRead},
    {"lora_dropout", FieldUse::kFieldRead},
    {"use_rslora", FieldUse::kFieldRead},
    {"target_modules", FieldUse::kFieldRead},
    {"layers_to_transform", FieldUse::kFieldRead},
    {"rank_pattern", FieldUse::kFieldRead},
    {"alpha_pattern", FieldUse::kFieldRead},
    {"bias", FieldUse::kFieldDefaultOnly, IsNoneString,
     "only \"none\": training or loading base biases with the adapter is not implemented"},
    {"use_dora", FieldUse::kFieldDefaultOnly, IsFalse, "DoRA (weight-decomposed LoRA) is not implemented"},
    {"modules_to_save", FieldUse::kFieldDefaultOnly, IsEmptyContainer,
     "fully trained extra modules are not implemented"},
    {"fan_in_fan_out", FieldUse::kFieldDefaultOnly, IsFalse,
     "transposed (Conv1D, GPT-2 style) weights do not occur in Llama-family models"},
    {"layers_pattern", FieldUse::kFieldDefaultOnly, IsLayersPattern,
     "Llama-family decoders keep their layers in \"layers\""},
    {"layer_replication", FieldUse::kFieldDefaultOnly, IsEmptyContainer,
     "layer replication is not implemented"},
    {"megatron_config", FieldUse::kFieldDefaultOnly, IsEmptyContainer, "Megatron layers are not used"},
    {"megatron_core", FieldUse::kFieldHarmless},  // only with megatron_config
    {"exclude_modules", FieldUse::kFieldDefaultOnly, IsEmptyContainer,
     "exclude_modules is not implemented"},
    {"lora_bias", FieldUse::kFieldDefaultOnly, IsFalse, "a bias on lora_B is not implemented"},
    {"trainable_token_indices", FieldUse::kFieldDefaultOnly, IsEmptyContainer,
     "trainable token rows are not implemented"},
    {"target_parameters", FieldUse::kFieldDefaultOnly, IsEmptyContainer,
     "LoRA on parameters (not modules) is not implemented"},
    {"use_qalora", FieldUse::kFieldDefaultOnly, IsFalse, "QA-LoRA is not implemented"},
    {"qalora_group_size", FieldUse::kFieldHarmless},  // only with use_qalora
    {"task_type", FieldUse::kFieldDefaultOnly, IsCausalLm, "only CAUSAL_LM adapters"},
    {"runtime_config", FieldUse::kFieldDefaultOnly, IsNoOffload, "GPU offload is not used"},
    // Initialisation only: the weights come from the file.
    {"init_lora_weights", FieldUse::kFieldDefaultOnly, IsTrueOrGaussian,
     "an init of type other than true/false/a named method"},
    {"loftq_config", FieldUse::kFieldHarmless},
    {"eva_config", FieldUse::kFieldHarmless},
    {"corda_config", FieldUse::kFieldHarmless},
    // Metadata.
    {"base_model_name_or_path", FieldUse::kFieldHarmless},
    {"revision", FieldUse::kFieldHarmless},
    {"inference_mode", FieldUse::kFieldHarmless},
    {"auto_mapping", FieldUse::kFieldHarmless},
};

// PEFT's target_modules given as one string: re.fullmatch(pattern, name)
// over the module names. sheaf adapts "these projections in these
// layers" (+ lm_head); a selection of another form is refused.
absl::Status TargetsFromRegex(const std::string& pattern, const ModelConfig& config,
                              const std::string& source, LoraOptions* o) {
  if (const std::string why = UnsafePatternReason(pattern); !why.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": target_modules: \"", pattern.substr(0, 80),
                                                   pattern.size() > 80 ? "...": "", "\" is not a supported regular expression: it ", why));
  }
  std::regex re;
  try {
    re = std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": target_modules: \"", pattern,
                                                   "\" is not a regular expression (", e.what(), ")"));
  }
  std::set<std::pair<int, int>> matched;
  std::set<int> layers, projs;
  for (int l = 0; l < config.num_layers; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      if (std::regex_match(LoraAdapter::ModuleName(l, static_cast<Proj>(p)), re)) {
        matched.insert({l, p});
        layers.insert(l);
        projs.insert(p);
      }
    }
  }
  const bool head = std::regex_match(std::string(LoraAdapter::kLmHeadModuleName), re);
  if (matched.size() != layers.size() * projs.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": target_modules: the regular expression \"", pattern, "\" selects ",
        matched.size(), " modules that are not the same projections in every selected layer; "
        "sheaf adapts a set of projections over a set of layers (write target_modules as a list "
        "plus layers_to_transform)"));
  }
  if (matched.empty() && !head) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": target_modules: \"", pattern,
                                                   "\" matches no module"));
  }
  o->targets.clear();
  for (int p : projs) o->targets.push_back(kProjNames[p]);
  if (head) o->targets.push_back("lm_head");
  o->layers.clear();
  if (static_cast<int>(layers.size()) != config.num_layers) o->layers.assign(layers.begin(), layers.end());
  return absl::OkStatus();
}

float ScaleOf(float alpha, int rank, bool rslora) {
  return rslora ? alpha / std::sqrt(static_cast<float>(rank)) : alpha / static_cast<float>(rank);
}

}  // namespace

const char* ProjName(Proj p) { return kProjNames[static_cast<int>(p)]; }

const char* ProjBlock(Proj p) {
  return static_cast<int>(p) <= static_cast<int>(Proj::kO) ? "self_attn" : "mlp";
}

int ProjIn(const ModelConfig& c, int layer, Proj p) {
  const LayerShape& s = c.layers[static_cast<size_t>(layer)];
  switch (p) {
    case Proj::kO: return s.num_heads * c.head_dim;
    case Proj::kDown: return s.intermediate;
    default: return c.hidden_size;
  }
}

int ProjOut(const ModelConfig& c, int layer, Proj p) {
  const LayerShape& s = c.layers[static_cast<size_t>(layer)];
  switch (p) {
    case Proj::kQ: return s.num_heads * c.head_dim;
    case Proj::kK:
    case Proj::kV: return s.num_kv_heads * c.head_dim;
    case Proj::kGate:
    case Proj::kUp: return s.intermediate;
    default: return c.hidden_size;
  }
}

float LoraOptions::scale() const { return ScaleOf(alpha, rank, rslora); }

int LoraOptions::RankFor(const std::string& module) const {
  return PatternValue(rank_pattern, module, rank);
}

float LoraOptions::AlphaFor(const std::string& module) const {
  return PatternValue(alpha_pattern, module, alpha);
}

float LoraOptions::ScaleFor(const std::string& module) const {
  return ScaleOf(AlphaFor(module), RankFor(module), rslora);
}

absl::Status LoraOptions::Validate(const ModelConfig& config) const {
  if (rank < 1) return absl::InvalidArgumentError(absl::StrCat("adapter.rank: must be >= 1, got ", rank));
  if (!(dropout >= 0.0f && dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("adapter.dropout: must be in [0, 1), got ", dropout));
  }
  if (num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter.num_experts: must be >= 1, got ", num_experts));
  }
  for (const auto& [pattern, r] : rank_pattern) {
    absl::StatusOr<bool> m = PatternMatches(pattern, "");
    if (!m.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter.rank_pattern[\"", pattern, "\"]: ", m.status().message()));
    }
    if (r < 1) {
      return absl::InvalidArgumentError(absl::StrCat("adapter.rank_pattern[\"", pattern,
                                                     "\"]: rank must be >= 1, got ", r));
    }
  }
  for (const auto& [pattern, a] : alpha_pattern) {
    absl::StatusOr<bool> m = PatternMatches(pattern, "");
    if (!m.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter.alpha_pattern[\"", pattern, "\"]: ", m.status().message()));
    }
    if (!std::isfinite(a)) {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter.alpha_pattern[\"", pattern, "\"]: alpha must be finite"));
    }
  }
  if (targets.empty()) return absl::InvalidArgumentError("adapter.targets: empty");
  std::set<std::string> seen;
  for (const std::string& t : targets) {
    bool known = t == "lm_head";
    for (const char* n : kProjNames) known = known || t == n;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "adapter.targets: unknown module \"", t, "\" (known: ", absl::StrJoin(kProjNames, " "),
          " lm_head)"));
    }
    if (!seen.insert(t).second) {
      return absl::InvalidArgumentError(absl::StrCat("adapter.targets: \"", t, "\" listed twice"));
    }
  }
  std::set<int> seen_layers;
  for (int l : layers) {
    if (l < 0 || l >= config.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("adapter.layers: layer ", l,
                                                     " out of range [0, ", config.num_layers, ")"));
    }
    if (!seen_layers.insert(l).second) {
      return absl::InvalidArgumentError(absl::StrCat("adapter.layers: layer ", l, " listed twice"));
    }
  }
  return absl::OkStatus();
}

LoraAdapter::LoraAdapter(const ModelConfig& config, const LoraOptions& options)
    : config_(config), options_(options), scale_(options.scale()) {
  static std::atomic<uint64_t> next_id{1};
  instance_id_ = next_id.fetch_add(1);
}

absl::StatusOr<std::unique_ptr<LoraAdapter>> LoraAdapter::Create(const ModelConfig& config,
                                                                 const LoraOptions& options) {
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(options.Validate(config));
  std::unique_ptr<LoraAdapter> a(new LoraAdapter(config, options));
  const std::set<std::string> targets(options.targets.begin(), options.targets.end());
  std::set<int> layers(options.layers.begin(), options.layers.end());
  if (layers.empty()) {
    for (int l = 0; l < config.num_layers; ++l) layers.insert(l);
  }
  const int K = options.num_experts;
  struct Planned {
    int layer;  // -1 = lm_head
    int proj;
    int slot_a, slot_b;
    int lora_rank;
    float scale;
    std::string name;
  };
  std::vector<Planned> planned;
  // Fixed order: layer-major, projections in Proj order, lm_head last. The
  // gradient reducer and checkpoints rely on this order being identical on
  // every rank.
  for (int l : layers) {
    for (int p = 0; p < kNumProj; ++p) {
      if (!targets.count(kProjNames[p])) continue;
      const int in = ProjIn(config, l, static_cast<Proj>(p)), out = ProjOut(config, l, static_cast<Proj>(p));
      const std::string name = ModuleName(l, static_cast<Proj>(p));
      const int R = options.RankFor(name);
      const std::string a_name = PeftKey(l, static_cast<Proj>(p), false);
      const std::string b_name = PeftKey(l, static_cast<Proj>(p), true);
      int sa = a->params_.Add(a_name, {K * R, in});
      a->grads_.Add(a_name, {K * R, in});
      int sb = a->params_.Add(b_name, {out, K * R});
      a->grads_.Add(b_name, {out, K * R});
      planned.push_back({l, p, sa, sb, R, options.ScaleFor(name), name});
    }
  }
  if (targets.count("lm_head")) {
    const int R = options.RankFor(kLmHeadModuleName);
    int sa = a->params_.Add(PeftLmHeadKey(false), {K * R, config.hidden_size});
    a->grads_.Add(PeftLmHeadKey(false), {K * R, config.hidden_size});
    int sb = a->params_.Add(PeftLmHeadKey(true), {config.vocab_size, K * R});
    a->grads_.Add(PeftLmHeadKey(true), {config.vocab_size, K * R});
    planned.push_back({-1, 0, sa, sb, R, options.ScaleFor(kLmHeadModuleName), kLmHeadModuleName});
  }
  a->params_.Allocate();
  a->grads_.Allocate();
  a->storage_.resize(planned.size());
  a->modules_.assign(static_cast<size_t>(config.num_layers), {});
  for (size_t i = 0; i < planned.size(); ++i) {
    LoraModule& m = a->storage_[i];
    m.a = a->params_.view(planned[i].slot_a);
    m.b = a->params_.view(planned[i].slot_b);
    m.da = a->grads_.view(planned[i].slot_a);
    m.db = a->grads_.view(planned[i].slot_b);
    m.in = static_cast<int>(m.a.dim(1));
    m.out = static_cast<int>(m.b.dim(0));
    m.id = static_cast<int>(i);
    m.lora_rank = planned[i].lora_rank;
    m.num_experts = K;
    m.scale = planned[i].scale;
    m.name = planned[i].name;
    if (planned[i].layer < 0) {
      a->lm_head_ = &m;
    } else {
      a->modules_[static_cast<size_t>(planned[i].layer)][planned[i].proj] = &m;
    }
  }
  a->Init();
  return a;
}

void LoraAdapter::Init() {
  // PEFT: A ~ kaiming_uniform(a=sqrt(5)) → U(-1/sqrt(in), 1/sqrt(in)); B = 0.
  std::mt19937_64 rng(options_.seed);
  for (LoraModule& m : storage_) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(m.in));
    std::uniform_real_distribution<float> u(-bound, bound);
    for (int64_t i = 0; i < m.a.numel(); ++i) m.a.data[i] = u(rng);
    for (int64_t i = 0; i < m.b.numel(); ++i) m.b.data[i] = 0.0f;
  }
}

std::vector<LoraModule*> LoraAdapter::all_modules() {
  std::vector<LoraModule*> out;
  for (LoraModule& m : storage_) out.push_back(&m);
  return out;
}

bool LoraAdapter::uniform() const {
  for (const LoraModule& m : storage_) {
    if (m.lora_rank != options_.rank || m.scale != scale_) return false;
  }
  return true;
}

int LoraAdapter::max_rank() const {
  int r = 0;
  for (const LoraModule& m : storage_) r = std::max(r, m.num_experts * m.lora_rank);
  return r;
}

int64_t LoraAdapter::num_params() const {
  int64_t n = 0;
  for (const LoraModule& m : storage_) n += m.a.numel() + m.b.numel();
  return n;
}

std::string LoraAdapter::ModuleName(int layer, Proj p) {
  return absl::StrCat("model.layers.", layer, ".", ProjBlock(p), ".", ProjName(p));
}

std::string LoraAdapter::PeftKey(int layer, Proj p, bool is_b) {
  return absl::StrCat("base_model.model.", ModuleName(layer, p),
                      is_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::string LoraAdapter::PeftLmHeadKey(bool is_b) {
  return absl::StrCat("base_model.model.lm_head", is_b ? ".lora_B.weight" : ".lora_A.weight");
}

absl::Status LoraAdapter::SavePeft(const std::string& dir, const std::string& base_model_name) const {
  if (options_.num_experts > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a bank of ", options_.num_experts,
        " experts has no PEFT layout (export a materialised mixture or single experts)"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  SafetensorsWriter writer;
  for (int i = 0; i < params_.num_slots(); ++i) {
    const Tensor t = params_.view(i);
    writer.Add(params_.name(i), t.shape, t.data);
  }
  RETURN_IF_ERROR(writer.Write(dir + "/adapter_model.safetensors", {{"format", "pt"}}));

  Json cfg = Json::Object();
  cfg.Set("peft_type", "LORA");
  cfg.Set("task_type", "CAUSAL_LM");
  cfg.Set("base_model_name_or_path", base_model_name);
  cfg.Set("r", options_.rank);
  cfg.Set("lora_alpha", static_cast<double>(options_.alpha));
  cfg.Set("lora_dropout", static_cast<double>(options_.dropout));
  cfg.Set("use_rslora", options_.rslora);
  cfg.Set("bias", "none");
  cfg.Set("fan_in_fan_out", false);
  cfg.Set("inference_mode", true);
  cfg.Set("init_lora_weights", true);
  Json targets = Json::Array();
  for (const std::string& t : options_.targets) targets.Push(t);
  cfg.Set("target_modules", std::move(targets));
  if (options_.layers.empty()) {
    cfg.Set("layers_to_transform", nullptr);
  } else {
    Json layers = Json::Array();
    for (int l : options_.layers) layers.Push(l);
    cfg.Set("layers_to_transform", std::move(layers));
  }
  // Written only when used, so plain adapters keep today's file.
  if (!options_.rank_pattern.empty()) {
    Json pattern = Json::Object();
    for (const auto& [p, r] : options_.rank_pattern) pattern.Set(p, r);
    cfg.Set("rank_pattern", std::move(pattern));
  }
  if (!options_.alpha_pattern.empty()) {
    Json pattern = Json::Object();
    for (const auto& [p, a] : options_.alpha_pattern) pattern.Set(p, static_cast<double>(a));
    cfg.Set("alpha_pattern", std::move(pattern));
  }
  cfg.Set("layers_pattern", nullptr);
  cfg.Set("modules_to_save", nullptr);
  const std::string path = dir + "/adapter_config.json";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << cfg.Dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LoraAdapter>> LoraAdapter::LoadPeft(const std::string& dir,
                                                                   const ModelConfig& config) {
  const std::string cfg_path = dir + "/adapter_config.json";
  // Beneath the process's roots, regular files only (base/open_beneath.h).
  ASSIGN_OR_RETURN(const std::string cfg_text, ReadFileToString(cfg_path));
  absl::StatusOr<Json> cfg = Json::Parse(cfg_text);
  if (!cfg.ok()) return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", cfg.status().message()));
  RETURN_IF_ERROR(CheckFields(*cfg, kAdapterFields, cfg_path));
  auto field = [&](absl::string_view key) -> absl::Status {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", key, ": missing or wrong type"));
  };
  LoraOptions o;
  const Json* v = cfg->Find("peft_type");
  if (v == nullptr || !v->is_string() || v->as_string() != "LORA") {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": peft_type: must be \"LORA\""));
  }
  if (v = cfg->Find("r"); v == nullptr || !v->is_int64()) return field("r");
  o.rank = static_cast<int>(v->as_int64());
  if (v = cfg->Find("lora_alpha"); v == nullptr || !v->is_number()) return field("lora_alpha");
  o.alpha = static_cast<float>(v->as_double());
  if (v = cfg->Find("lora_dropout"); v != nullptr && v->is_number()) o.dropout = static_cast<float>(v->as_double());
  if (v = cfg->Find("use_rslora"); v != nullptr && v->is_bool()) o.rslora = v->as_bool();
  const Json* targets = cfg->Find("target_modules");
  if (targets != nullptr && targets->is_string()) {
    // PEFT ignores layers_to_transform for a regex; so do we.
    RETURN_IF_ERROR(TargetsFromRegex(targets->as_string(), config, cfg_path, &o));
  } else {
    if (targets == nullptr || !targets->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(
          cfg_path, ": target_modules: missing, or neither a list of names nor a regex string"));
    }
    o.targets.clear();
    for (const Json& t : targets->elements()) {
      if (!t.is_string()) return field("target_modules");
      o.targets.push_back(t.as_string());
    }
  }
  if (v = cfg->Find("layers_to_transform"); targets->is_array() && v != nullptr && !v->is_null()) {
    if (v->is_int64()) {
      o.layers.push_back(static_cast<int>(v->as_int64()));
    } else if (v->is_array()) {
      for (const Json& l : v->elements()) {
        if (!l.is_int64()) return field("layers_to_transform");
        o.layers.push_back(static_cast<int>(l.as_int64()));
      }
    } else {
      return field("layers_to_transform");
    }
  }
  // rank_pattern / alpha_pattern: objects of pattern -> int / number (PEFT
  // writes {} when unused; older files have no key or null).
  if (v = cfg->Find("rank_pattern"); v != nullptr && !v->is_null()) {
    if (!v->is_object()) return field("rank_pattern");
    for (const auto& [pattern, r] : v->items()) {
      if (!r.is_int64()) return field(absl::StrCat("rank_pattern[\"", pattern, "\"]"));
      if (r.as_int64() < 1 || r.as_int64() > (int64_t{1} << 20)) {
        return absl::InvalidArgumentError(absl::StrCat(
            cfg_path, ": rank_pattern[\"", pattern, "\"]: rank ", r.as_int64(),
            " out of range [1, 2^20]"));
      }
      o.rank_pattern.emplace_back(pattern, static_cast<int>(r.as_int64()));
    }
  }
  if (v = cfg->Find("alpha_pattern"); v != nullptr && !v->is_null()) {
    if (!v->is_object()) return field("alpha_pattern");
    for (const auto& [pattern, a] : v->items()) {
      if (!a.is_number()) return field(absl::StrCat("alpha_pattern[\"", pattern, "\"]"));
      o.alpha_pattern.emplace_back(pattern, static_cast<float>(a.as_double()));
    }
  }
  absl::Status valid = o.Validate(config);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", valid.message()));
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> a, Create(config, o));
  const std::string st_path = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(st_path) && std::filesystem::exists(dir + "/adapter_model.bin")) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": only adapter_model.bin (a pickle) is present; reading pickles is out of scope "
        "(they can run code). Convert it once with PEFT: "
        "`python -c \"import torch, safetensors.torch as st; "
        "st.save_file(torch.load('adapter_model.bin'), 'adapter_model.safetensors')\"`"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> st, SafetensorsFile::Open(st_path));
  std::set<std::string> read;
  for (int i = 0; i < a->params_.num_slots(); ++i) {
    Tensor t = a->params_.view(i);
    absl::Status rs = st->ReadF32(a->params_.name(i), t.shape, t.data);
    if (absl::IsNotFound(rs)) {
      return absl::NotFoundError(absl::StrCat(st_path, ": tensor ", a->params_.name(i),
                                              " is missing (adapter_config.json's target_modules / "
                                              "layers_to_transform ask for it)"));
    }
    RETURN_IF_ERROR(rs);
    read.insert(a->params_.name(i));
  }
  // Tensors nothing reads (DoRA magnitudes, modules_to_save copies, modules
  // outside target_modules) would be silently dropped: refused by name.
  std::vector<std::string> unread;
  for (const TensorInfo& t : st->tensors()) {
    if (read.contains(t.name)) continue;
    constexpr std::string_view kPrefix = "base_model.model.", kSuffix = ".base_layer.weight";
    const std::string_view n = t.name;
    if (n.starts_with(kPrefix) && n.ends_with(kSuffix)) {
      const std::string module(n.substr(kPrefix.size(), n.size() - kPrefix.size() - kSuffix.size()));
      if (module == "lm_head" || module == "model.embed_tokens") {
        std::vector<float> values(static_cast<size_t>(t.numel()));
        RETURN_IF_ERROR(st->ReadF32(t.name, t.shape, values.data()));
        a->base_copies_.emplace_back(module + ".weight", std::move(values));
        continue;
      }
    }
    unread.push_back(t.name);
  }
  if (!unread.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        st_path, ": ", unread.size(), " tensor(s) that adapter_config.json does not describe: ",
        absl::StrJoin(unread.begin(), unread.begin() + static_cast<long>(std::min<size_t>(unread.size(), 5)), ", "),
        unread.size() > 5 ? ", ..." : ""));
  }
  return a;
}

}  // namespace sheaf
