// SplitMix64 (Steele, Lea and Flood, "Fast Splittable Pseudorandom Number
// Generators", OOPSLA 2014; the constants of Vigna's reference
// splitmix64.c): the one generator behind every seeded draw in sheaf (data
// split hashes and shuffles, dropout masks, per-step seeds). Resume is
// bit-exact only while every copy of it agrees, so there is one copy.
//
// Two forms of the same function:
//   - stream: `SplitMix64Next(state)` advances `state` by the golden gamma and
//     returns the mixed value (Vigna's next());
//   - counter: `SplitMix64(x)` is the value that stream would return from
//     state x, without a state to carry: draw i of a counter-based stream is
//     SplitMix64(base + i), independent of the order draws are taken in (so
//     of thread count).
// Pure functions of their input; safe from any thread.
#ifndef SHEAF_BASE_RNG_H_
#define SHEAF_BASE_RNG_H_

#include <cstdint>

namespace sheaf {

inline constexpr uint64_t kSplitMix64Gamma = 0x9e3779b97f4a7c15ULL;

// The output function (a variant of MurmurHash3's 64-bit finaliser).
constexpr uint64_t SplitMix64Finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Counter form: SplitMix64(x) == SplitMix64Next(s) for s == x.
constexpr uint64_t SplitMix64(uint64_t x) { return SplitMix64Finalize(x + kSplitMix64Gamma); }

// Stream form: advances `state` and returns the next output.
constexpr uint64_t SplitMix64Next(uint64_t& state) {
  state += kSplitMix64Gamma;
  return SplitMix64Finalize(state);
}

}  // namespace sheaf

#endif  // SHEAF_BASE_RNG_H_
