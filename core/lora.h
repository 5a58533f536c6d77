// LoRA adapters over the frozen linear layers of a decoder.
//
// For a frozen W [out, in] the adapted layer computes
//   y = x Wᵀ + s · (drop(x) Aᵀ) Bᵀ,   A [R, in], B [out, R],
// with s = alpha / R, or alpha / sqrt(R) for rsLoRA. R and alpha may differ
// per module (PEFT's rank_pattern / alpha_pattern), and so may s. A is
// initialised Kaiming-uniform (bound 1/sqrt(in), as nn.Linear's default that
// PEFT uses), B zero, so a fresh adapter leaves the model unchanged.
//
// A bank (num_experts = K > 1) holds K experts per module, concatenated as
// the mixture operator reads them: A_cat [K·R, in] (expert k in rows
// [kR, (k+1)R)), B_cat [out, K·R] (expert k in columns [kR, (k+1)R)); each
// expert is initialised as a fresh adapter would be, and s = alpha / R is the
// scale of one expert. How the experts are mixed (gate, form) is the adapter
// plan's business (core/adapter_plan.h), not the bank's.
//
// An adapter owns two arenas (params, grads) with the same layout, so the
// optimizer and checkpoints see one contiguous block. The model applies
// adapters through an AdapterPlan (core/adapter_plan.h), which views their
// modules: one adapter, stacked adapters, or a gated bank, without changing
// this class.
//
// Not thread-safe; one trainer owns an adapter.
#ifndef SHEAF_CORE_LORA_H_
#define SHEAF_CORE_LORA_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "core/tensor.h"

namespace sheaf {

// The seven per-layer projections, in a fixed order used for buckets,
// checkpoints and export.
enum class Proj { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumProj = 7;
const char* ProjName(Proj p);  // "q_proj", ...
// "self_attn" or "mlp".
const char* ProjBlock(Proj p);
// Input and output width of a projection in a layer.
int ProjIn(const ModelConfig& config, int layer, Proj p);
int ProjOut(const ModelConfig& config, int layer, Proj p);

struct LoraOptions {
  int rank = 8;  // R
  float alpha = 16.0f;
  float dropout = 0.0f;
  bool rslora = false;
  // Subset of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj lm_head.
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"};
  std::vector<int> layers;  // empty = all layers
  uint64_t seed = 0;        // initialisation of A
  // PEFT's rank_pattern / alpha_pattern: (pattern, value) pairs tried in
  // order; the first pattern p for which the module's name matches the
  // regular expression (.*\.)?(p) as a whole (PEFT's
  // re.match(rf"(.*\.)?({p})$", name)) sets that module's rank / alpha.
  // Module names are PEFT's (ModuleName): "model.layers.3.self_attn.q_proj",
  // "lm_head". Patterns are ECMAScript regular expressions, which agree with
  // Python's for the dots, classes, anchors and alternations PEFT configs use.
  std::vector<std::pair<std::string, int>> rank_pattern;
  std::vector<std::pair<std::string, float>> alpha_pattern;
  // Experts per module (a bank); 1 = a plain adapter.
  int num_experts = 1;

  // Scale of a module without a pattern override.
  float scale() const;
  // Rank, alpha and scale of the module named `module` (after the patterns).
  // The patterns must be valid (Validate).
  int RankFor(const std::string& module) const;
  float AlphaFor(const std::string& module) const;
  float ScaleFor(const std::string& module) const;
  absl::Status Validate(const ModelConfig& config) const;
};

struct LoraModule {
  Tensor a, b;    // A [K*R, in], B [out, K*R] (K = 1: A [R, in], B [out, R])
  Tensor da, db;  // gradients, same shapes
  int in = 0, out = 0;
  int id = 0;  // dense index, used to derive dropout streams
  int lora_rank = 0;    // R of this module (per expert)
  int num_experts = 1;  // K
  float scale = 0.0f;   // alpha / R (or rsLoRA's) of this module
  std::string name;     // PEFT module name, e.g. model.layers.0.mlp.up_proj
};

class LoraAdapter {
 public:
  // Plans and allocates params and grads; initialises A and B.
  static absl::StatusOr<std::unique_ptr<LoraAdapter>> Create(
      const ModelConfig& config, const LoraOptions& options);

  const LoraOptions& options() const { return options_; }
  // Scale of the modules without a pattern override; see LoraModule::scale.
  float scale() const { return scale_; }
  // True when every module has options().rank and scale() (no pattern
  // changed anything).
  bool uniform() const;
  int num_experts() const { return options_.num_experts; }
  // Largest K*R over the modules (0 without modules).
  int max_rank() const;
  // null when (layer, proj) is not adapted.
  LoraModule* module(int layer, Proj p) {
    return modules_[static_cast<size_t>(layer)][static_cast<int>(p)];
  }
  const LoraModule* module(int layer, Proj p) const {
    return modules_[static_cast<size_t>(layer)][static_cast<int>(p)];
  }
  int num_layers() const { return static_cast<int>(modules_.size()); }
  LoraModule* lm_head() { return lm_head_; }
  const LoraModule* lm_head() const { return lm_head_; }
  std::vector<LoraModule*> all_modules();

  Arena& params() { return params_; }
  Arena& grads() { return grads_; }
  const Arena& params() const { return params_; }
  int64_t num_params() const;

  // Dropout stream for the next forward (set per micro-step by the trainer so
  // that a resumed run draws the same masks).
  void set_dropout_seed(uint64_t seed) { dropout_seed_ = seed; }
  uint64_t dropout_seed() const { return dropout_seed_; }
  // Global index of this rank's first token row (B*T rows per rank): masks
  // are drawn per global (row, column), so N ranks with batch b draw the
  // masks one rank with batch N*b would (and a resume on another world size
  // stays exact).
  void set_dropout_row_offset(int64_t rows) { dropout_row_offset_ = rows; }
  int64_t dropout_row_offset() const { return dropout_row_offset_; }
  // Unique per adapter object for the life of the process (activation plans
  // are keyed on it; an address can be reused by a later adapter).
  uint64_t instance_id() const { return instance_id_; }

  // PEFT layout: adapter_config.json + adapter_model.safetensors in `dir`.
  // rank_pattern / alpha_pattern are written when set. A bank has no PEFT
  // layout (FailedPrecondition).
  absl::Status SavePeft(const std::string& dir,
                        const std::string& base_model_name) const;
  // Reads the PEFT layout, rank_pattern and alpha_pattern included.
  // NotFound for a missing file; InvalidArgument naming the file and the
  // field (or tensor) for anything that does not fit `config`.
  static absl::StatusOr<std::unique_ptr<LoraAdapter>> LoadPeft(
      const std::string& dir, const ModelConfig& config);
  // Copies of base weights PEFT saved beside the factors (PEFT 0.12 saves
  // lm_head's / embed_tokens' base_layer.weight when they are targeted:
  // save_embedding_layers), by base tensor name ("lm_head.weight"). PEFT
  // loads them over the base, so CheckAdapterBaseCopies (core/model.h)
  // refuses an adapter whose copy differs from the model's weight.
  const std::vector<std::pair<std::string, std::vector<float>>>& base_copies() const {
    return base_copies_;
  }
  // PEFT module name ("model.layers.0.self_attn.q_proj"; "lm_head").
  static std::string ModuleName(int layer, Proj p);
  static constexpr const char* kLmHeadModuleName = "lm_head";
  // PEFT tensor name of a module's A or B.
  static std::string PeftKey(int layer, Proj p, bool is_b);
  static std::string PeftLmHeadKey(bool is_b);

 private:
  LoraAdapter(const ModelConfig& config, const LoraOptions& options);
  void Init();

  ModelConfig config_;
  LoraOptions options_;
  float scale_ = 1.0f;
  Arena params_{ArenaKind::kArenaParams};
  Arena grads_{ArenaKind::kArenaGrads};
  std::vector<LoraModule> storage_;
  std::vector<std::array<LoraModule*, kNumProj>> modules_;
  LoraModule* lm_head_ = nullptr;
  uint64_t dropout_seed_ = 0;
  int64_t dropout_row_offset_ = 0;
  uint64_t instance_id_ = 0;
  std::vector<std::pair<std::string, std::vector<float>>> base_copies_;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_LORA_H_
