// Evaluation: mean token loss of a model (+ adapter) over the validation
// split of any number of named datasets.
//
// Batches hold `batch_size` sequences of the whole world; each rank runs its
// slice (batch_size / world_size rows) and every rank runs the same number
// of forwards (sharded weights issue collectives in Forward), a short last
// batch padded with ignored rows. With max_sequences > 0 only the first
// max_sequences validation sequences count. Sums travel through WorldSync.
//
// This is the one evaluation of the code base: the recipes, `sheaf eval` and
// tests/reference_dump call it.
#ifndef SHEAF_JOBS_EVALUATION_H_
#define SHEAF_JOBS_EVALUATION_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/dataset.h"
#include "core/lora.h"
#include "core/model.h"
#include "jobs/world_sync.h"

namespace sheaf::jobs {

struct EvalOptions {
  int64_t batch_size = 8;     // sequences per forward, over the whole world
  int64_t max_sequences = 0;  // 0 = the whole validation split
};

// Summed loss and valid-token count (over every rank) of the validation split.
absl::StatusOr<LossStats> EvaluateLoss(Model& model, LoraAdapter* adapter, const Dataset& data,
                                       const EvalOptions& options, WorldSync& world);

// A named validation set (the dataset is not owned).
struct EvalSet {
  std::string name;
  const Dataset* dataset = nullptr;
};
// Mean loss of every set, by name. FailedPrecondition naming a set whose
// split holds no valid target.
absl::StatusOr<std::map<std::string, double>> EvaluateSets(Model& model, LoraAdapter* adapter,
                                                           const std::vector<EvalSet>& sets,
                                                           const EvalOptions& options,
                                                           WorldSync& world);

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_EVALUATION_H_
