#include "base/rng.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

// Published outputs of the reference splitmix64.c (Rosetta Code's
// "Pseudo-random numbers/Splitmix64" task lists these for seed 1234567),
// checked again with an independent arbitrary-precision Python loop, not
// taken from our own code.
TEST(SplitMix64Test, ReferenceStreamFromSeed1234567) {
  uint64_t state = 1234567;
  const uint64_t want[] = {6457827717110365317ULL, 3203168211198807973ULL,
                           9817491932198370423ULL, 4593380528125082431ULL,
                           16408922859458223821ULL};
  for (uint64_t w : want) EXPECT_EQ(SplitMix64Next(state), w);
  EXPECT_EQ(state, 1234567 + 5 * kSplitMix64Gamma);
}

TEST(SplitMix64Test, ReferenceStreamFromSeedZero) {
  uint64_t state = 0;
  EXPECT_EQ(SplitMix64Next(state), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(SplitMix64Next(state), 0x6e789e6aa1b965f4ULL);
  EXPECT_EQ(SplitMix64Next(state), 0x06c45d188009454fULL);
}

TEST(SplitMix64Test, CounterFormIsTheStreamWithoutState) {
  uint64_t state = 1234567;
  for (uint64_t i = 0; i < 100; ++i) {
    const uint64_t x = state;
    EXPECT_EQ(SplitMix64(x), SplitMix64Next(state)) << i;
  }
  // Wraps modulo 2^64 like the stream does.
  uint64_t top = ~uint64_t{0};
  EXPECT_EQ(SplitMix64(~uint64_t{0}), SplitMix64Next(top));
  static_assert(SplitMix64(1234567) == 6457827717110365317ULL);
}

}  // namespace
}  // namespace sheaf
