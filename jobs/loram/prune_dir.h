// The publisher's step of LoRAM as files: a full model dir in, a pruned
// model dir out (config.json with per-layer shapes, model.safetensors,
// pruning.safetensors; core/prune/pruning_map.h documents the map). Shared
// by the `loram` recipe's prune phase and `sheaf prune`.
#ifndef SHEAF_JOBS_LORAM_PRUNE_DIR_H_
#define SHEAF_JOBS_LORAM_PRUNE_DIR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/prune/importance.h"
#include "core/prune/shapes.h"

namespace sheaf::jobs {

struct PruneDirOptions {
  std::string base_dir;  // the full model (f32 or bf16 file; pruned in f32)
  std::string out_dir;
  double ratio = 0.65;
  prune::ImportanceMethod method = prune::ImportanceMethod::kImportanceStru;
  prune::LayerRange mlp_layers, attn_layers;  // default [1, -1)
  // stru only: calibration text (files or dirs, text format, byte
  // tokenizer), the first `samples` sequences of `seq_len` tokens of the
  // seeded shuffle (the reference: 10 samples of 64 tokens).
  std::vector<std::string> calibration;
  int samples = 10;
  int seq_len = 64;
  uint64_t seed = 0;  // rand's draws and the calibration shuffle
};

struct PruneDirReport {
  int64_t full_params = 0, pruned_params = 0;
  int64_t calibration_tokens = 0;  // stru
  double seconds = 0;
};

// InvalidArgument naming the option (ratio, method, mlp_layers, calibration
// ...) for bad input; NotFound for a missing base or calibration path.
absl::StatusOr<PruneDirReport> PruneModelDir(const PruneDirOptions& options);

// "B:E" → LayerRange (negative bounds count from the end). InvalidArgument
// naming `field`.
absl::StatusOr<prune::LayerRange> ParseLayerRange(const std::string& text, const std::string& field);

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_LORAM_PRUNE_DIR_H_
