#include "core/prune/recover.h"

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf::prune {
namespace {

// The kept output rows (B side) or input columns (A side) of a projection,
// as original indices; empty when that side is not pruned.
std::vector<int32_t> ExpandBlocks(const std::vector<int32_t>& idx, int block) {
  std::vector<int32_t> out;
  for (int32_t i : idx) {
    for (int j = 0; j < block; ++j) out.push_back(i * block + j);
  }
  return out;
}

}  // namespace

absl::StatusOr<RecoverMode> ParseRecoverMode(const std::string& name, const std::string& field) {
  if (name == "zero" || name == "zeroA") return RecoverMode::kRecoverZero;
  if (name == "norm" || name == "normA") return RecoverMode::kRecoverNorm;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": \"", name, "\" is not a recovery mode (zero, norm)"));
}

absl::StatusOr<std::unique_ptr<LoraAdapter>> RecoverAdapter(const LoraAdapter& pruned,
                                                            const PruningMap& map,
                                                            const RecoverOptions& options) {
  RETURN_IF_ERROR(map.Validate());
  if (pruned.num_experts() > 1) {
    return absl::FailedPreconditionError("a bank of experts cannot be recovered (one adapter only)");
  }
  const ModelConfig& full = map.original;
  const ModelConfig pc = map.PrunedConfig();
  if (pruned.num_layers() != full.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("the adapter has ", pruned.num_layers(),
                                                   " layers, the pruning map ", full.num_layers));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> out, LoraAdapter::Create(full, pruned.options()));
  std::mt19937_64 rng(options.seed);
  const int HD = full.head_dim;
  for (int l = 0; l < full.num_layers; ++l) {
    const LayerKept& k = map.layers[static_cast<size_t>(l)];
    for (int pi = 0; pi < kNumProj; ++pi) {
      const Proj p = static_cast<Proj>(pi);
      const LoraModule* src = pruned.module(l, p);
      LoraModule* dst = out->module(l, p);
      if ((src == nullptr) != (dst == nullptr)) {
        return absl::InvalidArgumentError(absl::StrCat(LoraAdapter::ModuleName(l, p),
                                                       ": adapted in one adapter only"));
      }
      if (src == nullptr) continue;
      const std::string name = LoraAdapter::ModuleName(l, p);
      if (src->in != ProjIn(pc, l, p) || src->out != ProjOut(pc, l, p)) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": the adapter's module is [", src->out, ", ", src->in, "], the pruned model's [",
            ProjOut(pc, l, p), ", ", ProjIn(pc, l, p), "]: not made on this pruned model"));
      }
      if (src->lora_rank != dst->lora_rank) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": rank differs"));
      }
      const int64_t r = dst->lora_rank;
      // Kept output rows (pruned B side) and input columns (pruned A side).
      std::vector<int32_t> rows, cols;
      switch (p) {
        case Proj::kQ: rows = ExpandBlocks(k.heads, HD); break;
        case Proj::kK:
        case Proj::kV: rows = ExpandBlocks(k.kv_heads, HD); break;
        case Proj::kGate:
        case Proj::kUp: rows = k.mlp; break;
        case Proj::kO: cols = ExpandBlocks(k.heads, HD); break;
        case Proj::kDown: cols = k.mlp; break;
      }
      // B [out, r].
      if (rows.empty()) {
        std::memcpy(dst->b.data, src->b.data, sizeof(float) * static_cast<size_t>(src->b.numel()));
      } else {
        std::memset(dst->b.data, 0, sizeof(float) * static_cast<size_t>(dst->b.numel()));
        for (size_t i = 0; i < rows.size(); ++i) {
          std::memcpy(dst->b.data + rows[i] * r, src->b.data + static_cast<int64_t>(i) * r,
                      sizeof(float) * static_cast<size_t>(r));
        }
      }
      // A [r, in].
      if (cols.empty()) {
        std::memcpy(dst->a.data, src->a.data, sizeof(float) * static_cast<size_t>(src->a.numel()));
      } else {
        const int64_t in_full = dst->in, in_pruned = src->in;
        if (options.mode == RecoverMode::kRecoverNorm) {
          std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(r)));
          for (int64_t i = 0; i < dst->a.numel(); ++i) dst->a.data[i] = normal(rng);
        } else {
          std::memset(dst->a.data, 0, sizeof(float) * static_cast<size_t>(dst->a.numel()));
        }
        for (int64_t j = 0; j < r; ++j) {
          for (size_t i = 0; i < cols.size(); ++i) {
            dst->a.data[j * in_full + cols[i]] = src->a.data[j * in_pruned + static_cast<int64_t>(i)];
          }
        }
      }
    }
  }
  if ((pruned.lm_head() == nullptr) != (out->lm_head() == nullptr)) {
    return absl::InvalidArgumentError("lm_head: adapted in one adapter only");
  }
  if (const LoraModule* src = pruned.lm_head()) {
    LoraModule* dst = out->lm_head();
    if (src->a.numel() != dst->a.numel() || src->b.numel() != dst->b.numel()) {
      return absl::InvalidArgumentError("lm_head: the adapter's module does not fit the model");
    }
    std::memcpy(dst->a.data, src->a.data, sizeof(float) * static_cast<size_t>(src->a.numel()));
    std::memcpy(dst->b.data, src->b.data, sizeof(float) * static_cast<size_t>(src->b.numel()));
  }
  return out;
}

absl::Status RecoverAdapterFiles(const std::string& pruned_adapter_dir, const PruningMap& map,
                                 const std::string& out_dir, const std::string& base_model_name,
                                 const RecoverOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> pruned,
                   LoraAdapter::LoadPeft(pruned_adapter_dir, map.PrunedConfig()));
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> full, RecoverAdapter(*pruned, map, options));
  return full->SavePeft(out_dir, base_model_name);
}

}  // namespace sheaf::prune
