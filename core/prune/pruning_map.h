// The kept indices of a structurally pruned model, and their file.
//
// A PruningMap says, per decoder layer of the ORIGINAL (full) model, which
// MLP channels, which KV groups and which query heads the pruned model keeps,
// in ascending order; the pruned model's layer l holds exactly those, in that
// order. Query heads always come as whole groups: for GQA every head h of a
// kept group g (h / (NH/KVH) == g) is kept; for MHA (NH == KVH) groups are
// heads. A layer that is not pruned lists every index.
//
// File `pruning.safetensors` (a safetensors file, so any safetensors reader
// opens it):
//   __metadata__:
//     format           "sheaf-pruning-map"
//     version          "1"
//     original_config  the full model's config.json text
//     ratio, method    how the map was made (informational)
//   tensors, one set per layer l of the full model (I32, 1-D, ascending):
//     model.layers.{l}.mlp.kept_channels        [I'_l]   indices into [0, I_l)
//     model.layers.{l}.self_attn.kept_kv_heads  [KVH'_l] indices into [0, KVH_l)
//     model.layers.{l}.self_attn.kept_heads     [NH'_l]  indices into [0, NH_l)
// Load checks everything above (every tensor present, I32, 1-D, strictly
// ascending, in range, heads consistent with groups) and names the file and
// the tensor in its errors.
#ifndef SHEAF_CORE_PRUNE_PRUNING_MAP_H_
#define SHEAF_CORE_PRUNE_PRUNING_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace sheaf::prune {

inline constexpr const char* kPruningMapFormat = "sheaf-pruning-map";
inline constexpr const char* kPruningMapFile = "pruning.safetensors";

struct LayerKept {
  std::vector<int32_t> mlp;       // kept MLP channels [I']
  std::vector<int32_t> kv_heads;  // kept KV groups [KVH']
  std::vector<int32_t> heads;     // kept query heads [NH']
};

struct PruningMap {
  ModelConfig original;           // the full model
  std::vector<LayerKept> layers;  // [L]
  double ratio = 0;               // informational
  std::string method;             // informational: stru, rand, l1, l2

  // The pruned model's config (the original with per-layer kept counts).
  ModelConfig PrunedConfig() const;
  // Consistency of the indices with `original` (see the file comment).
  absl::Status Validate() const;
  // True when layer l keeps everything.
  bool LayerIntact(int layer) const;
};

// Every index of every layer kept.
PruningMap IdentityMap(const ModelConfig& config);
// The query heads of kept groups `kv_heads` in a layer of `shape`.
std::vector<int32_t> HeadsOfGroups(const std::vector<int32_t>& kv_heads, const LayerShape& shape);

absl::Status SavePruningMap(const PruningMap& map, const std::string& path);
absl::StatusOr<PruningMap> LoadPruningMap(const std::string& path);

}  // namespace sheaf::prune

#endif  // SHEAF_CORE_PRUNE_PRUNING_MAP_H_
