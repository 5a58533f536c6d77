// The training loop shared by every job kind on one rank: LoRA fine-tuning
// (frozen base + adapter) and all-weights training (pretraining / alignment).
//
// Life of a run:
//   Create(): validate the spec, check paths, tokenise the data, split/pack it,
//             build the model (+ adapter) and optimizer. Nothing is written to
//             the output dir until all of that succeeded, so a bad spec or an
//             empty corpus leaves no trace.
//   Run():    (resume from the newest valid checkpoint when asked) → steps of
//             grad-accumulated micro-batches → clip → AdamW → metrics,
//             eval every N, checkpoint every N → final eval → export
//             (PEFT adapter for LoRA, HF model dir for all-weights runs).
//
// Determinism: given the seed, thread count and spec, the loss sequence is a
// pure function of the step: dropout masks derive from (seed, step,
// micro-step), data order from the dataset cursor, and a checkpoint holds the
// trainable weights, optimizer moments, step and cursor, so a resumed run
// continues bit for bit.
//
// Not thread-safe; RequestStop() may be called from a signal-handling thread.
#ifndef SHEAF_JOBS_TRAINER_H_
#define SHEAF_JOBS_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/dataset.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "dist/communicator.h"
#include "dist/grad_reducer.h"
#include "dist/sharded_weights.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

struct TrainProgress {
  int64_t step = 0;        // completed optimizer steps
  int64_t total_steps = 0;
  double loss = 0;         // mean train loss of the last step
  double val_loss = -1;    // last evaluation, < 0 if none yet
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_s = 0;
  double eta_s = 0;
};

struct TrainerOptions {
  bool resume = false;  // continue from the newest valid checkpoint in output_dir
  bool quiet = false;   // no progress output on stderr
  std::function<void(const TrainProgress&)> on_progress;  // after every step (rank 0)
  // The world this rank belongs to (not owned); null = a world of one. With
  // N > 1 ranks, frozen base weights are sharded (dist::ShardedWeights),
  // trainable gradients all-reduced (dist::GradReducer), each rank reads
  // 1/N of every global batch (train.batch_size is global), and only rank 0
  // writes to output_dir.
  dist::Communicator* comm = nullptr;
  int64_t gather_budget_bytes = 0;        // ShardedWeights::Options
  int64_t bucket_cap_bytes = 4 << 20;     // GradReducer::Options
};

struct TrainResult {
  int64_t steps = 0;
  double first_val_loss = -1;  // before any training step (step 0)
  double final_val_loss = -1;
  double final_train_loss = 0;
  std::vector<double> step_losses;  // losses of the steps run by this process
  std::string export_dir;           // adapter/ or model/
};

class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const proto::JobSpec& spec,
                                                         const TrainerOptions& options);
  ~Trainer();

  absl::StatusOr<TrainResult> Run();
  // Finish the current step, checkpoint and return from Run() early.
  void RequestStop() { stop_.store(true); }

  // Mean validation loss of the current weights over the validation split.
  absl::StatusOr<double> Evaluate();

  const proto::JobSpec& spec() const { return spec_; }
  Model& model() { return *model_; }
  LoraAdapter* adapter() { return adapter_.get(); }
  int64_t total_steps() const { return total_steps_; }

 private:
  Trainer() = default;
  absl::Status SaveCheckpoint(int64_t step);
  absl::StatusOr<int64_t> RestoreCheckpoint();
  absl::Status AppendMetrics(const std::string& json_line);
  absl::Status Export(TrainResult* result);
  std::vector<ParamRef> TrainableParams();

  proto::JobSpec spec_;
  TrainerOptions options_;
  std::shared_ptr<const TokenCorpus> corpus_, val_corpus_;
  std::unique_ptr<Dataset> dataset_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraAdapter> adapter_;
  std::unique_ptr<AdamW> optimizer_;
  Arena* trainable_params_ = nullptr;  // one block: adapter or model params
  Arena* trainable_grads_ = nullptr;
  DataCursor cursor_;
  int64_t total_steps_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<int32_t> inputs_, targets_;
  // Distribution (world_size_ == 1: all null).
  int world_rank_ = 0, world_size_ = 1;
  std::unique_ptr<dist::ShardedWeights> sharded_;
  std::unique_ptr<dist::GradReducer> reducer_;
  absl::Status SumAcrossRanks(double* values, int n);
  // Every rank learns whether any rank failed: returns `local` where it
  // failed, an Aborted error naming the failing ranks' count elsewhere, so a
  // failure on one rank never leaves the others waiting in a collective.
  absl::Status AgreeOnStatus(const absl::Status& local, const char* what);
  absl::Status Barrier();
  absl::Status WriteSpecFile();  // output_dir/spec.yaml (rank 0)
  bool is_root() const { return world_rank_ == 0; }
  std::string CommJson() const;
};

}  // namespace sheaf

#endif  // SHEAF_JOBS_TRAINER_H_
