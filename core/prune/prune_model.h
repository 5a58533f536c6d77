// Structured pruning of a model's weights by a PruningMap: the pruned model
// keeps, per layer, the map's MLP channels (rows of gate_proj and up_proj,
// columns of down_proj), KV groups (rows of k_proj and v_proj) and query
// heads (rows of q_proj, columns of o_proj; q/k/v biases alike), in the
// map's order. Embeddings, norms and lm_head are copied unchanged.
#ifndef SHEAF_CORE_PRUNE_PRUNE_MODEL_H_
#define SHEAF_CORE_PRUNE_PRUNE_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/prune/pruning_map.h"

namespace sheaf::prune {

// A new model of map.PrunedConfig() holding `full`'s kept weights (all
// frozen, f32). FailedPrecondition when `full`'s weights are sharded or not
// f32; InvalidArgument when the map does not describe `full`'s config.
absl::StatusOr<std::unique_ptr<Model>> PruneModel(Model& full, const PruningMap& map,
                                                  const ModelOptions& options = {});

// Zeroes, in place, every weight of `full` that the map prunes (the rows and
// columns PruneModel drops): the full model then computes what the pruned
// one does (used to test recovery, and to inspect a pruning).
absl::Status ZeroPruned(Model& full, const PruningMap& map);

// Writes the pruned model dir: config.json (per-layer shapes),
// model.safetensors and pruning.safetensors.
absl::Status SavePrunedModel(const Model& pruned, const PruningMap& map, const std::string& dir);

}  // namespace sheaf::prune

#endif  // SHEAF_CORE_PRUNE_PRUNE_MODEL_H_
