// `sheaf prune` and `sheaf recover`: LoRAM's two standalone steps.
//
//   sheaf prune BASE_DIR OUT_DIR [--ratio P] [--method stru|rand|l1|l2]
//       [--mlp-layers B:E] [--attn-layers B:E] [--calibration PATH]...
//       [--samples N] [--seq-len N] [--seed N]
//   sheaf recover PRUNED_ADAPTER_DIR PRUNING_MAP OUT_DIR [--mode zero|norm]
//       [--seed N] [--base-name NAME]
//
// Both return sheaf's exit codes: 0 ok, 1 the work failed, 2 bad usage or
// bad input (a file that does not fit).
#ifndef SHEAF_CLI_PRUNE_CMD_H_
#define SHEAF_CLI_PRUNE_CMD_H_

#include <string>
#include <vector>

namespace sheaf::cli {

inline constexpr const char* kPruneUsage =
    R"(  prune BASE_DIR OUT_DIR [--ratio 0.65] [--method stru|rand|l1|l2]
        [--mlp-layers 1:-1] [--attn-layers 1:-1] [--calibration PATH]...
        [--samples 10] [--seq-len 64] [--seed 0]
                          LoRAM: structurally prune a model (per-layer shapes +
                          pruning.safetensors of kept indices)
  recover PRUNED_ADAPTER PRUNING_MAP OUT_DIR [--mode zero|norm] [--seed 0]
        [--base-name NAME]
                          expand an adapter trained on a pruned model to the
                          full model's shapes (PEFT layout)
)";

int PruneCommand(const std::vector<std::string>& args);
int RecoverCommand(const std::vector<std::string>& args);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_PRUNE_CMD_H_
