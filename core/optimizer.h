// AdamW with decoupled weight decay, global-norm gradient clipping and a
// warmup + cosine learning-rate schedule.
//
// The update follows Loshchilov & Hutter ("Decoupled Weight Decay
// Regularization") exactly as torch.optim.AdamW implements it, so that a run
// can be compared step for step with a PyTorch reference:
//
//   p ← p − lr·wd·p                        (only where ParamRef::weight_decay)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − lr · (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε)
//
// Every per-element operation is independent of the others, so the result is
// bitwise identical for any OpenMP thread count. The only reduction
// (ClipGradNorm) sums in a fixed order for the same reason: data-parallel
// ranks must agree bit for bit, and a resumed run must replay the original.
#ifndef SHEAF_CORE_OPTIMIZER_H_
#define SHEAF_CORE_OPTIMIZER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sheaf {

class Backend;  // core/backend.h

// A trainable tensor as the optimizer sees it: flat fp32 value and gradient of
// `size` elements. Non-owning; the pointers must outlive every user.
struct ParamRef {
  std::string name;
  float* value = nullptr;
  float* grad = nullptr;
  int64_t size = 0;
  // Biases and norms are conventionally excluded from decay; LoRA A/B usually
  // are decayed. The caller decides.
  bool weight_decay = true;
};

struct AdamWOptions {
  float lr = 1e-3f;  // used by Step() without an argument
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;

  // InvalidArgument naming the field when a value is out of range (the same
  // ranges torch.optim.AdamW accepts).
  absl::Status Validate() const;
};

// AdamW over a fixed list of parameters.
//
// Lifecycle: Create() once with every parameter, optionally Restore() from a
// checkpoint, then Step() after each backward pass. The moments m and v of all
// parameters live in ONE allocation laid out as
//   state = [ m(param 0) | m(param 1) | ... | v(param 0) | v(param 1) | ... ]
// so that saving or restoring optimizer state is a single contiguous copy.
//
// The element loops run on a Backend (core/backend.h); null = DefaultBackend().
// The pointers of the params must be memory of that backend.
//
// Thread-safety: not thread-safe; Step() itself uses the backend's threads.
class AdamW {
 public:
  // InvalidArgument for bad options, a negative size, a null value/grad on a
  // non-empty param, or duplicate names (checkpoints key state by name).
  // FailedPrecondition when `backend` is null and none is registered.
  static absl::StatusOr<AdamW> Create(std::vector<ParamRef> params,
                                      const AdamWOptions& options,
                                      Backend* backend = nullptr);

  AdamW(AdamW&&) = default;
  AdamW& operator=(AdamW&&) = default;

  // One update of every parameter from its current gradient with learning
  // rate `lr` (which also scales the decay, as in torch). Increments
  // step_count() first, so the first call uses t = 1.
  void Step(float lr);
  void Step() { Step(options_.lr); }

  // Number of Step() calls so far (t of the last update), including those
  // before a Restore().
  int64_t step_count() const { return step_count_; }

  // The whole moment arena, in the layout above; size 2 · total_size().
  std::span<float> state() { return state_; }
  std::span<const float> state() const { return state_; }

  // Per-param views into state().
  std::span<float> m(int param_index);
  std::span<float> v(int param_index);

  // Replaces step_count and the moment arena, e.g. from a checkpoint.
  // InvalidArgument if step_count < 0 or state.size() != state().size().
  absl::Status Restore(int64_t step_count, std::span<const float> state);

  // "name size\n" per param, in order. Store it next to state() and compare
  // before Restore(): equal sizes alone would let a reordered parameter list
  // silently receive another parameter's moments.
  std::string StateLayout() const;

  const std::vector<ParamRef>& params() const { return params_; }
  const AdamWOptions& options() const { return options_; }
  int64_t total_size() const { return total_size_; }

 private:
  AdamW(std::vector<ParamRef> params, const AdamWOptions& options,
        std::vector<int64_t> offsets, int64_t total_size, Backend* backend);

  Backend* backend_;  // not owned
  std::vector<ParamRef> params_;
  AdamWOptions options_;
  std::vector<int64_t> offsets_;  // offsets_[i]: start of param i in m and v
  int64_t total_size_ = 0;        // Σ params_[i].size
  std::vector<float> state_;      // (2, total_size_): m then v
  int64_t step_count_ = 0;
};

// Scales every gradient by max_norm / (norm + 1e-6) when the global L2 norm
// over all grads exceeds max_norm (torch.nn.utils.clip_grad_norm_), and
// returns the norm before clipping. max_norm <= 0 only measures.
//
// The sum of squares is accumulated in double in an order fixed by the param
// list and sizes alone, never by the thread count. Params with a null grad are
// skipped. A non-finite norm is returned without touching the grads, so the
// caller can skip the step instead of training on NaN (torch would scale every
// grad to NaN). The squares and the scaling run on `backend` (null =
// DefaultBackend(); having none is a programmer error).
float ClipGradNorm(std::span<const ParamRef> params, float max_norm,
                   Backend* backend = nullptr);

// Learning rate by step: linear warmup to `peak`, then a cosine decay to
// peak · min_ratio at total_steps, constant afterwards.
//
//   step < warmup_steps:  peak · (step + 1) / warmup_steps
//   step < total_steps:   floor + (peak − floor) · (1 + cos(π·progress)) / 2,
//                         progress = (step − warmup) / (total − warmup)
//   otherwise:            floor = peak · min_ratio
//
// Warmup counts from step + 1 so that step 0 already trains (a zero learning
// rate would waste a step and leave AdamW's moments updated for nothing).
struct LrSchedule {
  float peak = 1e-3f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  float min_ratio = 0.0f;

  // InvalidArgument naming the field for negative values or min_ratio outside
  // [0, 1].
  absl::Status Validate() const;
  // Negative steps are treated as step 0.
  float At(int64_t step) const;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_OPTIMIZER_H_
