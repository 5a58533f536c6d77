#include "core/prune/shapes.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf::prune {

absl::StatusOr<std::vector<bool>> ResolveRange(const LayerRange& range, int num_layers,
                                               const std::string& field) {
  const int b = range.begin < 0 ? num_layers + range.begin : range.begin;
  const int e = range.end < 0 ? num_layers + range.end : range.end;
  if (b < 0 || b > num_layers || e < 0 || e > num_layers || b > e) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": [", range.begin, ", ", range.end, ") resolves to [", b, ", ", e,
        "), not a range inside the model's ", num_layers, " layers"));
  }
  std::vector<bool> out(static_cast<size_t>(num_layers), false);
  for (int l = b; l < e; ++l) out[static_cast<size_t>(l)] = true;
  return out;
}

absl::StatusOr<PruneLayout> ResolveLayout(const LayerRange& mlp, const LayerRange& attn,
                                          int num_layers) {
  PruneLayout layout;
  ASSIGN_OR_RETURN(layout.mlp, ResolveRange(mlp, num_layers, "mlp_layers"));
  ASSIGN_OR_RETURN(layout.attn, ResolveRange(attn, num_layers, "attn_layers"));
  return layout;
}

// The reference computes these with Python floats; C++ doubles round the
// same products identically (IEEE 754 binary64, one operation each).
int KeptMlpChannels(int intermediate, double ratio) {
  return intermediate - static_cast<int>(std::ceil(intermediate * ratio));
}
int KeptKvGroups(int num_kv_heads, double ratio) {
  return num_kv_heads - static_cast<int>(std::floor(num_kv_heads * ratio));
}
int KeptMhaHeads(int num_heads, double ratio) {
  return static_cast<int>(std::floor(num_heads * (1.0 - ratio)));
}

LayerShape PrunedLayerShape(const LayerShape& s, double ratio, bool mlp, bool attn) {
  LayerShape out = s;
  if (mlp) out.intermediate = KeptMlpChannels(s.intermediate, ratio);
  if (attn) {
    if (s.num_heads == s.num_kv_heads) {
      out.num_heads = out.num_kv_heads = KeptMhaHeads(s.num_heads, ratio);
    } else {
      out.num_kv_heads = KeptKvGroups(s.num_kv_heads, ratio);
      out.num_heads = out.num_kv_heads * (s.num_heads / s.num_kv_heads);
    }
  }
  return out;
}

absl::StatusOr<ModelConfig> PrunedConfig(const ModelConfig& config, double ratio,
                                         const PruneLayout& layout) {
  if (!(ratio >= 0.0 && ratio < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("ratio: must be in [0, 1), got ", ratio));
  }
  const size_t L = static_cast<size_t>(config.num_layers);
  if (layout.mlp.size() != L || layout.attn.size() != L) {
    return absl::InvalidArgumentError(absl::StrCat("the pruning layout has ", layout.mlp.size(), "/",
                                                   layout.attn.size(), " layers, the model ", L));
  }
  ModelConfig out = config;
  for (size_t l = 0; l < L; ++l) {
    out.layers[l] = PrunedLayerShape(config.layers[l], ratio, layout.mlp[l], layout.attn[l]);
    const LayerShape& s = out.layers[l];
    if (s.intermediate <= 0 || s.num_heads <= 0 || s.num_kv_heads <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ratio: ", ratio, " leaves layer ", l, " with ", s.intermediate, " MLP channels, ",
          s.num_heads, " heads and ", s.num_kv_heads, " KV groups (each must stay >= 1)"));
    }
  }
  return out;
}

int64_t EquivalentParams(const ModelConfig& config, int bits_per_param) {
  return config.NumParams() * bits_per_param / 16;
}

}  // namespace sheaf::prune
