// Recovery of an adapter trained on a pruned model to the full model's
// shapes (LoRAM), in PEFT's shapes A [r, in], B [out, r]:
//   - a factor that touches a pruned dimension is expanded: B of q,k,v,gate,up
//     gets rows at every original output index (the kept rows copied from the
//     pruned B in the map's order, the pruned rows zero); A of o,down gets
//     columns at every original input index (kept columns copied; pruned
//     columns zero with kRecoverZero, or drawn from N(0, 1/r) — variance 1/r
//     — with kRecoverNorm, the reference's alternative);
//   - the other factor, every module of an intact layer, and lm_head are
//     copied; rank, alpha and the scale alpha/r are unchanged.
// Hence, on kept indices, the recovered ΔW = s·B·A equals the pruned ΔW, and
// with kRecoverZero ΔW is zero on every pruned row and column.
#ifndef SHEAF_CORE_PRUNE_RECOVER_H_
#define SHEAF_CORE_PRUNE_RECOVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/lora.h"
#include "core/prune/pruning_map.h"

namespace sheaf::prune {

enum class RecoverMode { kRecoverZero, kRecoverNorm };
// "zero", "norm"; InvalidArgument naming `field` for another name.
absl::StatusOr<RecoverMode> ParseRecoverMode(const std::string& name, const std::string& field);

struct RecoverOptions {
  RecoverMode mode = RecoverMode::kRecoverZero;
  uint64_t seed = 0;  // kRecoverNorm's draws
};

// The adapter for map.original. InvalidArgument when a module of `pruned`
// does not have the pruned shape the map implies (naming the module);
// FailedPrecondition for a bank of experts.
absl::StatusOr<std::unique_ptr<LoraAdapter>> RecoverAdapter(const LoraAdapter& pruned,
                                                            const PruningMap& map,
                                                            const RecoverOptions& options = {});

// Files: reads a PEFT adapter made on map.PrunedConfig() from
// `pruned_adapter_dir`, writes the recovered PEFT adapter to `out_dir`
// (adapter_config.json names `base_model_name`).
absl::Status RecoverAdapterFiles(const std::string& pruned_adapter_dir, const PruningMap& map,
                                 const std::string& out_dir, const std::string& base_model_name,
                                 const RecoverOptions& options = {});

}  // namespace sheaf::prune

#endif  // SHEAF_CORE_PRUNE_RECOVER_H_
