// Trains, evaluates, saves and loads the recommender (DIN, core/crm/din.h)
// on the train split of CtrData: AdamW, one mean-BCE step per batch, with
// checkpoints that resume bit for bit.
//
// Order of samples: step s reads batch s mod S of epoch s / S (S = steps per
// epoch = ceil(train / batch_size)); epoch E's order is a Fisher-Yates
// shuffle drawn from SplitMix64 seeded by (seed, E). The order is a function
// of the step alone, so a checkpoint only needs params, AdamW state and the
// step.
//
// Files (core/checkpoint.h format, so magic, version and checksum come with
// it): a CRM file holds `crm/layout` (DinConfig + slot shapes, compared on
// load) and `crm/params`; a training checkpoint adds `crm/adam_layout`,
// `crm/adam_state` and `crm/step`.
#ifndef SHEAF_CORE_CRM_CRM_TRAIN_H_
#define SHEAF_CORE_CRM_CRM_TRAIN_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/crm/ctr_data.h"
#include "core/crm/din.h"
#include "core/crm/metrics.h"
#include "core/optimizer.h"

namespace sheaf::crm {

struct CrmTrainOptions {
  int epochs = 1;
  int64_t max_steps = 0;  // > 0: stop here instead (counts across epochs)
  int batch_size = 256;
  int history = 60;       // events per sample (ctr_k; k for a short-history CRM)
  float lr = 1e-3f;
  float weight_decay = 0.0f;
  float grad_clip = 0.0f;  // <= 0: none
  uint64_t seed = 1;       // init and order
  std::string checkpoint_dir;  // empty: no checkpoints, no resume
  int checkpoint_every = 0;    // steps; 0 = only at the end
  int keep_checkpoints = 2;
  // Testing an interruption: stop after this many steps (0 = never), after
  // writing a checkpoint, as a signal would.
  int64_t stop_after = 0;
  absl::Status Validate() const;
};

struct CrmTrainReport {
  int64_t steps = 0;          // total steps done (including before a resume)
  int64_t resumed_from = -1;  // step of the checkpoint resumed from, -1 none
  std::vector<double> losses;  // mean batch loss per step run here
  bool stopped = false;        // stop_after hit
};

// Trains `din` (already initialised) on data's train split. Resumes from the
// newest checkpoint in checkpoint_dir when there is one (FailedPrecondition
// when its layout differs from din's).
absl::StatusOr<CrmTrainReport> TrainCrm(
    const CtrData& data, Din& din, const CrmTrainOptions& options,
    const std::function<void(int64_t step, double loss)>& on_step = {});

// Probabilities σ(logit) of `samples`, in order.
absl::StatusOr<std::vector<float>> PredictCrm(const CtrData& data, Din& din,
                                              std::span<const CtrSample> samples, int history,
                                              int batch_size = 1024);
absl::StatusOr<BinaryMetrics> EvaluateCrm(const CtrData& data, Din& din,
                                          std::span<const CtrSample> samples, int history);

// The epoch's sample order (exposed for tests).
std::vector<int32_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch);

absl::Status SaveCrm(const Din& din, const std::string& path);
// Loads params into an existing din of the same layout (InvalidArgument
// naming the file when the layout differs).
absl::Status LoadCrm(Din& din, const std::string& path);

}  // namespace sheaf::crm

#endif  // SHEAF_CORE_CRM_CRM_TRAIN_H_
