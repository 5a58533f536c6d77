// RecLoRA's gates: one small network per (layer, module) of a meta-LoRA
// bank, turning the recommender's representation of a sample into softmax
// weights over the bank's N experts.
//
// Legend: B samples, d input width (d_crm), M hidden (60), N experts.
//   y  = LayerNorm(x) = (x − mean) · rstd ⊙ γ + β   (eps 1e−5, over d)
//   h  = relu(W1 y + b1)                          (d → M)
//   h' = drop(h)   inverted dropout p while training (masks from SplitMix64
//                  counters of (seed, gate, row, column): thread-free)
//   z  = W2 h' + b2                               (M → N)
//   w  = softmax(z / T)                           (T = 5)
// Backward (from dw, the gradient the model leaves in the plan's dgate):
//   dz = w ⊙ (dw − ⟨w, dw⟩) / T, then the linear layers, dropout, relu and
//   LayerNorm's γ, β. The input x is the frozen CRM's, so no dx.
//
// All gates' parameters live in one params arena (slot order: per gate
// ln.weight, ln.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, named
// "gate.<g>.<...>"), gradients in a same-layout arena: AdamW, the cross-rank
// reduction and checkpoints see single blocks.
//
// Attach(plan, bank, ...) appends the bank's gated entries to an adapter
// plan with gate g feeding the g-th module of the bank (layer-major, Proj
// order, lm_head last — AdapterPlan's order). Lifecycle per step:
// Forward(x) → Attach → Model::Forward/Backward → Backward(). The weight and
// dweight buffers are resized by Forward (re-Attach after each Forward). Not
// thread-safe.
#ifndef SHEAF_CORE_CRM_GATE_H_
#define SHEAF_CORE_CRM_GATE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/adapter_plan.h"
#include "core/backend.h"
#include "core/lora.h"
#include "core/optimizer.h"
#include "core/tensor.h"

namespace sheaf::crm {

struct GateOptions {
  int in_dim = 0;       // d
  int hidden = 60;      // M
  int num_experts = 1;  // N
  float temperature = 5.0f;  // T
  float dropout = 0.1f;
  absl::Status Validate() const;
};

class GateBank {
 public:
  static absl::StatusOr<std::unique_ptr<GateBank>> Create(const GateOptions& options,
                                                          int num_gates,
                                                          Backend* backend = nullptr);
  // γ = 1, β = 0; linear layers Kaiming-uniform (bound 1/sqrt(fan_in)),
  // biases in the same bound (nn.Linear's default).
  void InitRandom(uint64_t seed);

  // x [B, d] (row-major). training applies dropout from `dropout_seed`.
  // Fills weights(g) [B, N] for every gate and zeroes dweights(g).
  absl::Status Forward(const float* x, int B, bool training, uint64_t dropout_seed);
  // grads += d(loss)/d params from the dweights(g) the model accumulated.
  void Backward();

  Tensor weights(int g) { return View(w_[static_cast<size_t>(g)]); }
  Tensor dweights(int g) { return View(dw_[static_cast<size_t>(g)]); }
  int num_gates() const { return num_gates_; }
  const GateOptions& options() const { return options_; }

  // Appends `bank`'s modules to `plan` as gated entries (AddBank), each with
  // its own gate. trainable_gates = false leaves the gate gradients out.
  // InvalidArgument when the bank has another module count than gates, or
  // another expert count than N.
  absl::Status Attach(AdapterPlan& plan, LoraAdapter& bank, int rows_per_group,
                      AdapterMixing mixing, const AdapterUse& use = {},
                      bool trainable_gates = true);

  Arena& params() { return params_; }
  Arena& grads() { return grads_; }
  const Arena& params() const { return params_; }
  std::vector<ParamRef> ParamRefs();  // LayerNorm and biases without decay
  std::string Layout() const;

 private:
  GateBank(const GateOptions& o, int n, Backend* b) : options_(o), num_gates_(n), backend_(b) {}
  Tensor View(std::vector<float>& v) {
    Tensor t;
    t.data = v.data();
    t.shape = {B_, options_.num_experts};
    return t;
  }
  GateOptions options_;
  int num_gates_;
  Backend* backend_;
  Arena params_{ArenaKind::kArenaParams};
  Arena grads_{ArenaKind::kArenaGrads};
  std::vector<bool> decay_;
  int B_ = 0;
  bool training_ = false;
  // Activations of the last Forward.
  std::vector<float> x_, xhat_, rstd_;  // (B, d), (B, d), (B)
  std::vector<std::vector<float>> y_, h1_, hd_, w_, dw_, mask_;  // per gate
};

// A bank's expert mixture for one gate row as a plain adapter (weights
// mixing: A_u = Σ_k w_k A_k, B_u = Σ_k w_k B_k per module, scale of one
// expert): what `sheaf reclora export-user` writes. `gate_row` holds, per
// gate g, the N weights w(g). The result has the bank's targets, rank and
// alpha and num_experts = 1. InvalidArgument for shapes that do not fit.
absl::StatusOr<std::unique_ptr<LoraAdapter>> MixBank(
    const ModelConfig& config, const LoraAdapter& bank,
    const std::vector<std::vector<float>>& gate_row);

}  // namespace sheaf::crm

#endif  // SHEAF_CORE_CRM_GATE_H_
