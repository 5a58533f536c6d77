// How much memory a job needs on each rank of a world of N ranks, estimated
// from its spec and its model's shape before anything is allocated, so that
// the coordinator refuses at submit a job no request could hold and never
// leases a job to a world it would not fit (issue 9, item 1).
//
// The model (DESIGN.md "Numerics", CPU backend, fp32 = 4 bytes a value):
//   frozen weights    sharded: every rank stores 1/N of each frozen tensor,
//                     plus two gathered layers (the running one and the
//                     prefetched next one), replicated;
//   trainable state   replicated: parameters, gradients and AdamW's two
//                     moments, 4 values a trainable parameter (the adapter
//                     of a lora job; every weight of a pretrain job, which
//                     keeps the whole model on every rank);
//   activations       per sequence of the rank's share of a micro-batch
//                     (ceil(batch_size / N) sequences; grad_accum runs the
//                     micro-batches one after another, so it does not add):
//                     per layer and token the norms' inputs, q/k/v, the
//                     attention output, the MLP's gate/up/activation, the
//                     residuals and the LoRA intermediates, plus the
//                     attention probabilities (heads x T per token); the
//                     logits and their gradient (2 x V per token).
// The sum is raised by kWorkspaceMargin for backward's work buffers and
// allocator slack, plus kRuntimeBytes for the process itself. It is an
// estimate: ranks use somewhat less (recomputation, freed buffers) but never
// the multiples that a refused job would have needed.
//
// Arithmetic is in double and saturates at INT64_MAX: the fields' bounds
// (core/spec/limits.h) keep every product finite.
#ifndef SHEAF_CORE_SPEC_MEMORY_ESTIMATE_H_
#define SHEAF_CORE_SPEC_MEMORY_ESTIMATE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/model_config.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

inline constexpr double kWorkspaceMargin = 1.25;
inline constexpr int64_t kRuntimeBytes = int64_t{64} << 20;
// No rank of any world has more: a job needing more per rank at its best
// world size is refused at submit even without a memory request.
inline constexpr int64_t kMaxRankMemoryBytes = int64_t{64} << 40;  // 64 TiB

struct MemoryEstimate {
  int64_t frozen_bytes = 0;      // all frozen weights, before sharding
  int64_t gathered_bytes = 0;    // two gathered layers, replicated
  int64_t trainable_bytes = 0;   // params + grads + 2 moments, replicated
  int64_t activation_bytes_per_sequence = 0;
  int32_t batch_size = 1;        // train.batch_size (sequences per step)

  // Bytes each rank of a world of `world_size` ranks (>= 1) needs.
  int64_t PerRank(int world_size) const;
  // Its parts at `world_size`, for errors: "about 3.1 GiB per rank at 2
  // ranks (frozen weights 1.0 GiB, adapter and optimizer 20.0 MiB,
  // activations for 4 sequences 2.0 GiB)".
  std::string Describe(int world_size) const;
};

// `spec` has had its defaults applied; `model` is the base model's shape
// (ModelConfigFromShape for a pretrain job built from scratch). Known for
// lora and pretrain jobs; other kinds (until they add their own terms)
// have no estimate: nullopt.
std::optional<MemoryEstimate> EstimateJobMemory(const proto::JobSpec& spec,
                                                const ModelConfig& model);

// The model shape a job's estimate needs: pretrain.model when it builds
// from scratch, else base_model/config.json (read beneath the process's
// roots). Errors of reading or parsing config.json.
absl::StatusOr<ModelConfig> JobModelShape(const proto::JobSpec& spec);

// The shape of pretrain.model as a ModelConfig (defaults applied).
ModelConfig ModelConfigFromShape(const proto::ModelShape& shape);

// "1.5 GiB", "640.0 MiB", "12 bytes".
std::string FormatBytes(int64_t bytes);

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_MEMORY_ESTIMATE_H_
