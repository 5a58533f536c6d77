// Seed derivation for everything a resumed run must redo bit for bit
// (dropout masks, adapter init). SplitMix64's finaliser (Steele, Lea and
// Flood 2014). Local to jobs/ until base/rng.h lands (then this copy goes); the values
// must never change (they decide resume determinism and every loss sequence).
#ifndef SHEAF_JOBS_SEEDS_H_
#define SHEAF_JOBS_SEEDS_H_

#include <cstdint>

namespace sheaf::jobs {

constexpr uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The dropout seed of micro-batch `micro` (= step · accum + m) of a run.
constexpr uint64_t DropoutSeed(uint64_t run_seed, int64_t micro) {
  return SplitMix64(SplitMix64(run_seed) ^ SplitMix64(static_cast<uint64_t>(micro)));
}

// The LoRA adapter's init seed of a run.
constexpr uint64_t AdapterInitSeed(uint64_t run_seed) { return SplitMix64(run_seed ^ 0x10a); }

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_SEEDS_H_
