// LoRAM's structured-pruning shapes: which layers are pruned, how many MLP
// channels, KV groups and heads each pruned layer keeps, and the parameter
// counts that follow (the paper's Tables count parameters this way).
//
// Rounding follows the LoRAM reference exactly (double arithmetic, as
// Python's math.ceil / math.floor on floats):
//   kept MLP width      I'    = I − ceil(I·p)
//   kept KV groups      n_kv' = n_kv − floor(n_kv·p)   (GQA; every query
//                              head of a kept group stays: n_h' = n_kv'·n_h/n_kv)
//   kept heads (MHA)    n_h'  = floor(n_h·(1−p))       (n_kv = n_h)
// head_dim, the embeddings, the norms and lm_head are never pruned.
//
// A layer range is a half-open interval [begin, end) of layer indices; a
// negative bound counts from the end (Python slicing: end −2 is L−2). The
// paper prunes [4, L−2) of LLaMA's 80 layers; sheaf's default keeps only the
// first and the last layer intact: [1, −1).
#ifndef SHEAF_CORE_PRUNE_SHAPES_H_
#define SHEAF_CORE_PRUNE_SHAPES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace sheaf::prune {

struct LayerRange {
  int begin = 1;  // first pruned layer (negative: from the end)
  int end = -1;   // one past the last pruned layer (negative: from the end)
};

// Which layers lose MLP channels and which lose attention groups.
struct PruneLayout {
  std::vector<bool> mlp;   // [L]
  std::vector<bool> attn;  // [L]
};

// Resolves `range` for a model of `num_layers` layers. InvalidArgument
// naming `field` when a bound falls outside [0, L] after resolution or
// begin > end.
absl::StatusOr<std::vector<bool>> ResolveRange(const LayerRange& range, int num_layers,
                                               const std::string& field);
absl::StatusOr<PruneLayout> ResolveLayout(const LayerRange& mlp, const LayerRange& attn,
                                          int num_layers);

// The rounding rules above, for one count. p in [0, 1).
int KeptMlpChannels(int intermediate, double ratio);
int KeptKvGroups(int num_kv_heads, double ratio);
int KeptMhaHeads(int num_heads, double ratio);

// The shape of a layer after pruning (mlp / attn: whether those blocks of
// the layer are pruned). MHA when num_heads == num_kv_heads.
LayerShape PrunedLayerShape(const LayerShape& shape, double ratio, bool mlp, bool attn);

// The pruned model's config: every layer of `layout` pruned at `ratio`.
// InvalidArgument when ratio is outside [0, 1) or a layer would keep no
// channel or head (naming the layer).
absl::StatusOr<ModelConfig> PrunedConfig(const ModelConfig& config, double ratio,
                                         const PruneLayout& layout);

// Parameters stored for the frozen base when its parameters take
// `bits_per_param` bits against 16 (the paper counts NF4 as a quarter of a
// 16-bit parameter): NumParams() · bits / 16, rounded down.
int64_t EquivalentParams(const ModelConfig& config, int bits_per_param);

}  // namespace sheaf::prune

#endif  // SHEAF_CORE_PRUNE_SHAPES_H_
