// The train loop's step: fetch a step's micro-batches, forward + backward
// each (gradient accumulation, the loss a mean over every valid target of
// the global step), reduce gradients across the world, clip, and take an
// AdamW step at the schedule's learning rate.
//
// Non-finite gradients: when the clipped norm is not finite the step is
// skipped (no optimizer update; the data and the schedule move on, as
// torch.cuda.amp.GradScaler does), counted, and reported in StepResult;
// after max_consecutive_skips skipped steps in a row Step fails with a
// clear error (a model that keeps producing them has diverged).
//
// Determinism: dropout masks derive from (seed, step · grad_accum + m), data
// order from the cursor; nothing depends on wall time or thread count.
//
// Lifecycle: construct over parts the recipe owns (they must outlive the
// loop), then Step() once per optimizer step. Not thread-safe.
#ifndef SHEAF_JOBS_TRAIN_LOOP_H_
#define SHEAF_JOBS_TRAIN_LOOP_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/dataset.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "dist/grad_reducer.h"
#include "jobs/world_sync.h"

namespace sheaf::jobs {

// Spec-free: a run whose gradient norm is NaN or infinite in this many
// optimizer steps in a row fails.
inline constexpr int kMaxConsecutiveSkippedSteps = 5;

// One micro-batch of training: forward (training mode) then backward of the
// summed loss scaled by grad_scale (1 / valid targets of the whole step).
// The shared step of the recipes, tests/reference_dump and bench/train_step.
absl::StatusOr<LossStats> ForwardBackward(Model& model, LoraAdapter* adapter, const int32_t* tokens,
                                          const int32_t* targets, int batch_rows, int seq_len,
                                          float grad_scale);

struct LoopOptions {
  int64_t batch_size = 1;  // global sequences per micro-batch (split over the world)
  int64_t seq_len = 1;
  int64_t grad_accum = 1;
  float grad_clip = 0;     // 0: no clipping (the norm is still computed)
  LrSchedule schedule;
  uint64_t seed = 0;       // dropout masks
  int max_consecutive_skips = kMaxConsecutiveSkippedSteps;
};

struct StepResult {
  double loss = 0;         // mean over the step's valid targets, whole world
  float grad_norm = 0;     // before clipping; not finite when skipped
  float lr = 0;
  bool skipped = false;
  int64_t tokens = 0;      // valid targets of the step, whole world
};

class TrainLoop {
 public:
  // A micro-batch's forward + backward; the default runs ForwardBackward on
  // the model and adapter after setting the adapter's dropout seed. A recipe
  // replaces it to put its own tensors into the computation.
  using MicroStep = std::function<absl::StatusOr<LossStats>(
      int64_t step, int64_t micro, const int32_t* tokens, const int32_t* targets, int batch_rows,
      int seq_len, float grad_scale)>;
  // Runs after every micro-batch's backward and the gradient reduction,
  // before clipping (a recipe's gradients of tensors outside the model; a
  // test's fault injection).
  using BeforeClip = std::function<absl::Status(int64_t step)>;

  // `optimizer` holds every trainable tensor (its grads are zeroed at the
  // start of each step). adapter and reducer may be null.
  TrainLoop(Model* model, LoraAdapter* adapter, AdamW* optimizer, dist::GradReducer* reducer,
            WorldSync* world, LoopOptions options);

  void set_micro_step(MicroStep fn) { micro_step_ = std::move(fn); }
  void set_before_clip(BeforeClip fn) { before_clip_ = std::move(fn); }

  // Optimizer step `step` (0-based) on the next batch after *cursor.
  absl::StatusOr<StepResult> Step(int64_t step, const Dataset& data, DataCursor* cursor);

  int64_t skipped_steps() const { return skipped_steps_; }
  void set_skipped_steps(int64_t n) { skipped_steps_ = n; }
  int consecutive_skips() const { return consecutive_skips_; }
  const LoopOptions& options() const { return options_; }
  int64_t rows_per_rank() const { return rows_; }

 private:
  Model* model_;
  LoraAdapter* adapter_;
  AdamW* optimizer_;
  dist::GradReducer* reducer_;
  WorldSync* world_;
  LoopOptions options_;
  int64_t rows_;
  MicroStep micro_step_;
  BeforeClip before_clip_;
  std::vector<int32_t> inputs_, targets_;
  int64_t skipped_steps_ = 0;
  int consecutive_skips_ = 0;
};

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_TRAIN_LOOP_H_
