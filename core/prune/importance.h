// Importance of the prunable groups (LoRAM's `Stru`, `Rand`, and magnitude
// options), and the pruning map that keeps the most important ones.
//
// Groups per layer: MLP channel j couples row j of gate_proj and up_proj
// with column j of down_proj; KV group g couples rows [g·HD, (g+1)·HD) of
// k_proj and v_proj with the rows of q_proj and the columns of o_proj of
// every query head of the group (for MHA a group is one head). A group's
// score is the sum over every element w of those coupled slices of
//   stru: |w · ∂L/∂w|   (first-order Taylor, LLM-Pruner's param_first with
//                        sum grouping; L the mean token cross-entropy of one
//                        forward/backward over the calibration batch)
//   l1:   |w|
//   l2:   w²            (the squared L2 norm: the same ranking as the norm)
// and `rand` draws every score uniformly (seeded), so that the counts are
// the rounding rules' and the choice is uniform among subsets. Biases are
// not scored (they follow their rows).
//
// Selection keeps the highest scores; equal scores keep the lower index, so
// a map is a deterministic function of the scores.
#ifndef SHEAF_CORE_PRUNE_IMPORTANCE_H_
#define SHEAF_CORE_PRUNE_IMPORTANCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/prune/pruning_map.h"
#include "core/prune/shapes.h"

namespace sheaf::prune {

enum class ImportanceMethod { kImportanceStru, kImportanceRand, kImportanceL1, kImportanceL2 };
// "stru", "rand", "l1", "l2".
const char* ImportanceMethodName(ImportanceMethod m);
// InvalidArgument naming `field` for another name.
absl::StatusOr<ImportanceMethod> ParseImportanceMethod(const std::string& name,
                                                       const std::string& field);

struct LayerScores {
  std::vector<double> mlp;        // [I]
  std::vector<double> kv_groups;  // [KVH]
};

// The model a Taylor pass runs on: every q,k,v,o (attention-pruned layers)
// and gate,up,down (MLP-pruned layers) weight trainable so that backward
// produces its gradient; everything else frozen.
absl::StatusOr<std::unique_ptr<Model>> CreateTaylorModel(const ModelConfig& config,
                                                         const PruneLayout& layout,
                                                         const ModelOptions& options = {});

// Taylor scores of a model from CreateTaylorModel (weights loaded) over a
// calibration batch tokens/targets [B*T]. Each layer's gradients are turned
// into scores as soon as backward finishes that layer (GradReadyListener),
// and zeroed. Layers outside the layout get empty scores.
// Memory: the model's grads arena still holds one fp32 gradient per scored
// weight (core/model gives a trainable tensor a gradient buffer for the whole
// step); see docs/loram.md.
absl::StatusOr<std::vector<LayerScores>> TaylorScores(Model& model, const PruneLayout& layout,
                                                      const int32_t* tokens,
                                                      const int32_t* targets, int B, int T);

// l1 / l2 magnitude scores of any f32 model's weights.
absl::StatusOr<std::vector<LayerScores>> MagnitudeScores(Model& model, const PruneLayout& layout,
                                                         ImportanceMethod method);

// Uniform random scores (SplitMix64 of seed).
std::vector<LayerScores> RandomScores(const ModelConfig& config, const PruneLayout& layout,
                                      uint64_t seed);

// The `keep` highest of `scores` (ties: the lower index), ascending.
std::vector<int32_t> TopK(const std::vector<double>& scores, int keep);

// The map keeping, in every layer of the layout, the counts of
// PrunedConfig(config, ratio, layout) with the highest scores.
absl::StatusOr<PruningMap> SelectByScores(const ModelConfig& config, double ratio,
                                          const PruneLayout& layout,
                                          const std::vector<LayerScores>& scores,
                                          ImportanceMethod method);

}  // namespace sheaf::prune

#endif  // SHEAF_CORE_PRUNE_IMPORTANCE_H_
