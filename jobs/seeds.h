// Seed derivation for everything a resumed run must redo bit for bit
// (dropout masks, adapter init), from base/rng.h's SplitMix64. The values
// must never change (they decide resume determinism and every loss sequence).
#ifndef SHEAF_JOBS_SEEDS_H_
#define SHEAF_JOBS_SEEDS_H_

#include <cstdint>

#include "base/rng.h"

namespace sheaf::jobs {

// The dropout seed of micro-batch `micro` (= step · accum + m) of a run.
constexpr uint64_t DropoutSeed(uint64_t run_seed, int64_t micro) {
  return SplitMix64(SplitMix64(run_seed) ^ SplitMix64(static_cast<uint64_t>(micro)));
}

// The LoRA adapter's init seed of a run.
constexpr uint64_t AdapterInitSeed(uint64_t run_seed) { return SplitMix64(run_seed ^ 0x10a); }

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_SEEDS_H_
