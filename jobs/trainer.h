// The language-model recipe: LoRA fine-tuning (frozen base + adapter,
// registered for `lora` by //jobs:lora_recipe) and all-weights training
// (pretraining / alignment, registered for `pretrain` by
// //jobs:pretrain_recipe), composed from the shared parts:
//
//   jobs/build        spec → tokenizer, dataset, model (+ sharded frozen
//                     weights), adapter
//   jobs/train_loop   micro-batches, accumulation, clipping, AdamW, schedule,
//                     non-finite gradient skips
//   jobs/world_sync   votes and sums across ranks
//   jobs/state        checkpoint entries by name (the layout every lora /
//                     pretrain checkpoint has had: see jobs/state.h)
//   jobs/evaluation   validation loss
//   jobs/metrics      metrics.jsonl and summary.json
//
// Life (jobs/recipe.h): Setup validates the spec, checks paths, tokenises
// the data, splits/packs it, builds the model (+ adapter) and optimizer;
// nothing is written to the output dir until all of that succeeded, so a bad
// spec or an empty corpus leaves no trace. Train: (resumed step) → steps →
// eval every N, checkpoint every N → final eval. Export: PEFT adapter for
// LoRA, HF model dir for all-weights runs. Cleanup: summary.json.
//
// Determinism: given the seed, thread count and spec, the loss sequence is a
// pure function of the step: dropout masks derive from (seed, step,
// micro-step), data order from the dataset cursor, and a checkpoint holds the
// trainable weights, optimizer moments, step and cursor, so a resumed run
// continues bit for bit.
//
// Files: rank 0 owns output_dir/spec.yaml (written once at setup, and again
// only when a resume accepts a checkpoint, to record --set overrides),
// metrics.jsonl, summary.json, checkpoints/ and the export.
//
// Driven from one thread; RequestStop() may be called from any thread.
#ifndef SHEAF_JOBS_TRAINER_H_
#define SHEAF_JOBS_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "dist/grad_reducer.h"
#include "jobs/build.h"
#include "jobs/metrics.h"
#include "jobs/recipe.h"
#include "jobs/state.h"
#include "jobs/train_loop.h"
#include "jobs/world_sync.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

class Trainer : public jobs::Recipe {
 public:
  // A set-up recipe (RecipeRegistry::SetUp); the registry's factories make
  // the same object.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const proto::JobSpec& spec,
                                                         const TrainerOptions& options);
  Trainer();
  ~Trainer() override;

  absl::Status Setup(const proto::JobSpec& spec) override;
  absl::StatusOr<int64_t> LoadCheckpoint() override;
  absl::StatusOr<TrainResult> Train(int64_t start_step) override;
  absl::Status SaveCheckpoint(int64_t step) override;
  absl::Status Export(TrainResult* result) override;
  absl::Status Cleanup(const TrainResult& result) override;
  void RequestStop() override { stop_.store(true); }
  int64_t total_steps() const override { return total_steps_; }
  const proto::JobSpec& spec() const override { return spec_; }

  // Mean validation loss of the current weights over the validation split.
  absl::StatusOr<double> Evaluate();

  Model& model() { return *parts_.model; }
  LoraAdapter* adapter() { return parts_.adapter.get(); }
  // The frozen weights' shards in a world of more than one rank; else null.
  dist::ShardedWeights* sharded() { return parts_.sharded.get(); }

 private:
  std::vector<ParamRef> TrainableParams();
  absl::Status WriteSpecFile();  // output_dir/spec.yaml (rank 0)
  absl::Status CheckSavedSpec(const Checkpoint& c) const;
  bool is_root() const { return world_->is_root(); }
  jobs::MetricValues CommMetrics() const;

  proto::JobSpec spec_;
  jobs::DataParts data_;
  jobs::ModelParts parts_;
  std::unique_ptr<AdamW> optimizer_;
  Arena* trainable_params_ = nullptr;  // one block: adapter or model params
  std::unique_ptr<jobs::WorldSync> world_;
  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<jobs::TrainLoop> loop_;
  std::unique_ptr<jobs::MetricsSink> metrics_;
  jobs::CheckpointState state_;
  DataCursor cursor_;
  int64_t step_ = 0;           // the checkpointed step
  int64_t skipped_steps_ = 0;  // checkpointed (optional entry)
  int64_t total_steps_ = 0;
  bool spec_written_ = false;
  std::atomic<bool> stop_{false};
};

}  // namespace sheaf

#endif  // SHEAF_JOBS_TRAINER_H_
