// What a forward pass adds to the frozen projections: an adapter plan.
//
// For every (layer, projection) and for lm_head the plan lists entries; each
// entry is one mixture-LoRA application (the operator of ops/cpu/lora_mix.h,
// reached through the backend):
//   y += scale · Σ_k g_k B_k A_k drop(x)                  (outputs mixing)
//   y += scale · (Σ_k g_k B_k)(Σ_k g_k A_k) drop(x)       (weights mixing)
// over an expert bank A_cat [K·R, in], B_cat [out, K·R], with per-row gate
// weights g (gate [groups, K], row i reads gate row i / rows_per_group; no
// gate = all ones). The entries of one projection add up in list order.
//
// Plain LoRA is the K = 1 entry without a gate (ForAdapter builds today's
// behaviour exactly); stacking is two entries on one projection (a frozen
// adapter under a trainable one: langadapt's earlier languages); a RecLoRA
// bank is one gated K-expert entry per module, all sharing the gate (so the
// gate's gradient sums over every module).
//
// The plan holds views, not storage: adapters, banks and gate tensors must
// outlive every Forward/Backward that uses the plan. An empty gradient view
// means frozen: nothing is computed or stored for it.
//
// Lifecycle: build (ForAdapter, or an empty plan plus Add* calls), set the
// dropout stream per micro-step (set_dropout), pass to Model::Forward (which
// copies the plan; what it views must stay alive until the matching
// Backward). Not thread-safe.
//
// Gradients: entry gradients go where the views point (the adapters' grad
// arenas, the gate's gradient tensor), added to, never overwritten. A shared
// gate's gradient gathers contributions from every layer, so it is complete
// only when Model::Backward returns (GradReadyListener reports the model's
// groups, not gates): reduce it across ranks after Backward.
#ifndef SHEAF_CORE_ADAPTER_PLAN_H_
#define SHEAF_CORE_ADAPTER_PLAN_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/lora.h"
#include "core/model_config.h"
#include "core/tensor.h"

namespace sheaf {

enum class AdapterMixing {
  kAdapterMixingOutputs,  // Σ_k g_k B_k A_k x
  kAdapterMixingWeights,  // (Σ_k g_k B_k)(Σ_k g_k A_k) x  (RecLoRA)
};

// One mixture-LoRA application to one projection.
struct AdapterEntry {
  Tensor a;   // A_cat [K·R, in]
  Tensor b;   // B_cat [out, K·R]
  Tensor da;  // same shape as a; empty = frozen
  Tensor db;  // same shape as b; empty = frozen
  int num_experts = 1;  // K
  int lora_rank = 0;    // R per expert
  float scale = 0.0f;   // alpha / R (or rsLoRA's) times the use's coefficient
  // Per-row gate [groups, K]: gate row g weighs rows [g·P, (g+1)·P) of the
  // batch's N = B·T rows, P = rows_per_group (T: one gate row per sample).
  // Empty = every weight 1.
  Tensor gate;
  Tensor dgate;  // same shape as gate; empty = gate frozen (or no gate)
  int rows_per_group = 0;
  AdapterMixing mixing = AdapterMixing::kAdapterMixingOutputs;
  // Inverted dropout on the entry's input while training (0 = none), from
  // stream `dropout_stream` of the plan's seed (see AdapterPlan::set_dropout).
  float dropout = 0.0f;
  int dropout_stream = 0;

  int kr() const { return num_experts * lora_rank; }
  bool trainable() const { return static_cast<bool>(da) || static_cast<bool>(db); }
  bool gated() const { return static_cast<bool>(gate); }
  // True for a plain LoRA (K = 1, no gate): the model then runs exactly
  // today's LoRA kernels.
  bool plain() const { return num_experts == 1 && !gated(); }
};

// How one adapter (or bank) enters a plan.
struct AdapterUse {
  // Multiplies the adapter's own scale (model arithmetic; 1 = as trained).
  float coefficient = 1.0f;
  // false: the entries get no gradient views (a frozen adapter).
  bool trainable = true;
  // false: the adapter's dropout is not applied (e.g. a frozen adapter that
  // only reproduces what was learnt).
  bool dropout = true;
};

// A bank's gate, shared by every module of the bank.
struct AdapterGate {
  Tensor gate;   // [groups, K]
  Tensor dgate;  // [groups, K] or empty (frozen gate)
  int rows_per_group = 0;
  AdapterMixing mixing = AdapterMixing::kAdapterMixingWeights;
};

class AdapterPlan {
 public:
  // An empty plan (no adapter) for a model of `num_layers` layers.
  explicit AdapterPlan(int num_layers = 0);

  // Today's behaviour: one trainable K = 1 entry per module of `adapter`,
  // scale = the module's scale, the adapter's dropout, dropout stream =
  // module id, and the adapter's dropout seed and row offset. null = an
  // empty plan. A bank (num_experts > 1) is refused: use AddBank.
  static absl::StatusOr<AdapterPlan> ForAdapter(LoraAdapter* adapter, int num_layers);

  // Appends one entry per module of `adapter` (K = 1, no gate). The first
  // adapter added sets the plan's dropout seed and row offset when none was
  // set; dropout streams continue after those already used, so stacked
  // adapters never share a mask stream. InvalidArgument when the adapter
  // has another layer count than the plan or is a bank.
  absl::Status AddAdapter(LoraAdapter& adapter, const AdapterUse& use = {});
  absl::Status AddFrozenAdapter(const LoraAdapter& adapter, float coefficient = 1.0f);
  // Appends one gated K-expert entry per module of `bank`, all reading (and
  // adding their gradients into) `gate`. InvalidArgument for a gate whose
  // shape is not [groups, K], a gradient of another shape or
  // rows_per_group < 1.
  absl::Status AddBank(LoraAdapter& bank, const AdapterGate& gate, const AdapterUse& use = {});

  // Checks every entry against the model: A_cat [K·R, in] and B_cat
  // [out, K·R] with the projection's in/out, gradient shapes equal to their
  // values, scale finite, dropout in [0, 1), and, for a batch of `n_rows`
  // rows (0 = skip), enough gate rows: ceil(n_rows / rows_per_group).
  // InvalidArgument naming the site ("layer 2 v_proj entry 1: ...").
  absl::Status Validate(const ModelConfig& config, int64_t n_rows = 0) const;

  int num_layers() const { return static_cast<int>(layers_.size()); }
  std::vector<AdapterEntry>& entries(int layer, Proj p) {
    return layers_[static_cast<size_t>(layer)][static_cast<int>(p)];
  }
  const std::vector<AdapterEntry>& entries(int layer, Proj p) const {
    return layers_[static_cast<size_t>(layer)][static_cast<int>(p)];
  }
  std::vector<AdapterEntry>& lm_head() { return lm_head_; }
  const std::vector<AdapterEntry>& lm_head() const { return lm_head_; }
  bool empty() const;
  // Entries over all sites, layer-major, projections in Proj order, lm_head
  // last (the order Forward applies them in).
  int num_entries() const;

  // Dropout masks are drawn per (seed, stream, global row, column), as
  // LoraAdapter's (set per micro-step by the trainer).
  void set_dropout(uint64_t seed, int64_t row_offset) {
    dropout_seed_ = seed;
    dropout_row_offset_ = row_offset;
    dropout_set_ = true;
  }
  uint64_t dropout_seed() const { return dropout_seed_; }
  int64_t dropout_row_offset() const { return dropout_row_offset_; }

  // What activation planning depends on: per site, per entry, K·R, whether
  // it has dropout, a gate, and its mixing form (sizes of the saved xa,
  // masks and operator scratch). Two plans with equal layouts can share an
  // activation plan, whichever adapters they view; the old path rebuilds its
  // K = 1 plan on every Forward and keeps the same layout, so activations
  // are planned once, as before.
  std::vector<int32_t> Layout() const;

 private:
  absl::Status AddModules(const LoraAdapter& adapter, const AdapterUse& use,
                          const AdapterGate* gate);
  int next_stream_ = 0;
  std::vector<std::array<std::vector<AdapterEntry>, kNumProj>> layers_;
  std::vector<AdapterEntry> lm_head_;
  uint64_t dropout_seed_ = 0;
  int64_t dropout_row_offset_ = 0;
  bool dropout_set_ = false;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_ADAPTER_PLAN_H_
