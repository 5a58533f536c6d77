#include "core/prune/prune_model.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf::prune {
namespace {

bool SameConfig(const ModelConfig& a, const ModelConfig& b) { return a.ToJson() == b.ToJson(); }

absl::Status CheckFull(Model& full, const PruningMap& map) {
  RETURN_IF_ERROR(map.Validate());
  if (!SameConfig(full.config(), map.original)) {
    return absl::InvalidArgumentError(
        "the pruning map was made for another model (its original_config differs from the "
        "model's config.json)");
  }
  for (Param* p : full.weights().all()) {
    if (p->value.data == nullptr) {
      return absl::FailedPreconditionError("the model's frozen weights are sharded: prune on one rank");
    }
    if (p->value.dtype != DType::kDTypeF32) {
      return absl::FailedPreconditionError(
          absl::StrCat(p->name, " is ", DTypeName(p->value.dtype), ": prune an f32 model"));
    }
  }
  return absl::OkStatus();
}

// Row blocks [idx*block, (idx+1)*block) of src [rows, cols] into dst.
void CopyRowBlocks(float* dst, const float* src, const std::vector<int32_t>& idx, int64_t block,
                   int64_t cols) {
  for (size_t i = 0; i < idx.size(); ++i) {
    std::memcpy(dst + static_cast<int64_t>(i) * block * cols, src + idx[i] * block * cols,
                sizeof(float) * static_cast<size_t>(block * cols));
  }
}

// Column blocks of src [rows, src_cols] into dst [rows, idx.size()*block].
void CopyColBlocks(float* dst, const float* src, const std::vector<int32_t>& idx, int64_t block,
                   int64_t rows, int64_t src_cols) {
  const int64_t dst_cols = static_cast<int64_t>(idx.size()) * block;
  for (int64_t r = 0; r < rows; ++r) {
    for (size_t i = 0; i < idx.size(); ++i) {
      std::memcpy(dst + r * dst_cols + static_cast<int64_t>(i) * block,
                  src + r * src_cols + idx[i] * block, sizeof(float) * static_cast<size_t>(block));
    }
  }
}

std::vector<bool> KeptMask(const std::vector<int32_t>& kept, int n) {
  std::vector<bool> m(static_cast<size_t>(n), false);
  for (int32_t i : kept) m[static_cast<size_t>(i)] = true;
  return m;
}

void ZeroRowBlocks(float* w, const std::vector<bool>& kept, int64_t block, int64_t cols) {
  for (size_t i = 0; i < kept.size(); ++i) {
    if (!kept[i]) std::memset(w + static_cast<int64_t>(i) * block * cols, 0, sizeof(float) * block * cols);
  }
}

void ZeroColBlocks(float* w, const std::vector<bool>& kept, int64_t block, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(kept.size()) * block;
  for (int64_t r = 0; r < rows; ++r) {
    for (size_t i = 0; i < kept.size(); ++i) {
      if (!kept[i]) std::memset(w + r * cols + static_cast<int64_t>(i) * block, 0, sizeof(float) * block);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> PruneModel(Model& full, const PruningMap& map,
                                                  const ModelOptions& options) {
  RETURN_IF_ERROR(CheckFull(full, map));
  const ModelConfig pc = map.PrunedConfig();
  ModelOptions mo = options;
  mo.external_frozen = false;
  mo.frozen_dtype = DType::kDTypeF32;
  ASSIGN_OR_RETURN(std::unique_ptr<Model> pruned, Model::Create(pc, NothingTrainable, mo));
  ModelWeights& src = full.weights();
  ModelWeights& dst = pruned->weights();
  auto copy_all = [](Param& d, const Param& s) {
    std::memcpy(d.value.data, s.value.data, static_cast<size_t>(s.value.nbytes()));
  };
  copy_all(dst.embed, src.embed);
  copy_all(dst.norm, src.norm);
  if (!pc.tie_word_embeddings) copy_all(dst.lm_head, src.lm_head);
  const int64_t C = pc.hidden_size, HD = pc.head_dim;
  for (int l = 0; l < pc.num_layers; ++l) {
    const LayerKept& k = map.layers[static_cast<size_t>(l)];
    const LayerShape& s = map.original.layers[static_cast<size_t>(l)];
    LayerWeights& d = dst.layers[static_cast<size_t>(l)];
    LayerWeights& w = src.layers[static_cast<size_t>(l)];
    copy_all(d.input_norm, w.input_norm);
    copy_all(d.post_norm, w.post_norm);
    CopyRowBlocks(d.q.value.data, w.q.value.data, k.heads, HD, C);
    CopyRowBlocks(d.k.value.data, w.k.value.data, k.kv_heads, HD, C);
    CopyRowBlocks(d.v.value.data, w.v.value.data, k.kv_heads, HD, C);
    if (pc.attention_bias) {
      CopyRowBlocks(d.q_bias.value.data, w.q_bias.value.data, k.heads, HD, 1);
      CopyRowBlocks(d.k_bias.value.data, w.k_bias.value.data, k.kv_heads, HD, 1);
      CopyRowBlocks(d.v_bias.value.data, w.v_bias.value.data, k.kv_heads, HD, 1);
    }
    CopyColBlocks(d.o.value.data, w.o.value.data, k.heads, HD, C, int64_t{s.num_heads} * HD);
    CopyRowBlocks(d.gate.value.data, w.gate.value.data, k.mlp, 1, C);
    CopyRowBlocks(d.up.value.data, w.up.value.data, k.mlp, 1, C);
    CopyColBlocks(d.down.value.data, w.down.value.data, k.mlp, 1, C, s.intermediate);
  }
  return pruned;
}

absl::Status ZeroPruned(Model& full, const PruningMap& map) {
  RETURN_IF_ERROR(CheckFull(full, map));
  const int64_t C = map.original.hidden_size, HD = map.original.head_dim;
  for (int l = 0; l < map.original.num_layers; ++l) {
    const LayerKept& k = map.layers[static_cast<size_t>(l)];
    const LayerShape& s = map.original.layers[static_cast<size_t>(l)];
    LayerWeights& w = full.weights().layers[static_cast<size_t>(l)];
    const std::vector<bool> heads = KeptMask(k.heads, s.num_heads);
    const std::vector<bool> groups = KeptMask(k.kv_heads, s.num_kv_heads);
    const std::vector<bool> mlp = KeptMask(k.mlp, s.intermediate);
    ZeroRowBlocks(w.q.value.data, heads, HD, C);
    ZeroRowBlocks(w.k.value.data, groups, HD, C);
    ZeroRowBlocks(w.v.value.data, groups, HD, C);
    if (map.original.attention_bias) {
      ZeroRowBlocks(w.q_bias.value.data, heads, HD, 1);
      ZeroRowBlocks(w.k_bias.value.data, groups, HD, 1);
      ZeroRowBlocks(w.v_bias.value.data, groups, HD, 1);
    }
    ZeroColBlocks(w.o.value.data, heads, HD, C);
    ZeroRowBlocks(w.gate.value.data, mlp, 1, C);
    ZeroRowBlocks(w.up.value.data, mlp, 1, C);
    ZeroColBlocks(w.down.value.data, mlp, 1, C);
  }
  return absl::OkStatus();
}

absl::Status SavePrunedModel(const Model& pruned, const PruningMap& map, const std::string& dir) {
  if (!SameConfig(pruned.config(), map.PrunedConfig())) {
    return absl::InvalidArgumentError("the model's shapes are not the pruning map's");
  }
  RETURN_IF_ERROR(pruned.Save(dir));
  return SavePruningMap(map, dir + "/" + kPruningMapFile);
}

}  // namespace sheaf::prune
