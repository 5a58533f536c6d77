// WorldSync on worlds of threads: sums keep ~48 bits (the (high, low) float
// pair encoding), votes count the ranks that said yes, a failure on one rank
// reaches every rank, and a world of one sends nothing.
#include "jobs/world_sync.h"

#include <functional>
#include <thread>
#include <vector>

#include "dist/thread_communicator.h"
#include "gtest/gtest.h"

namespace sheaf::jobs {
namespace {

void OnWorld(int n, const std::function<void(WorldSync&, int)>& body) {
  dist::ThreadWorld world(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      WorldSync sync(world.rank(r), std::chrono::seconds(60));
      body(sync, r);
    });
  }
  for (std::thread& t : threads) t.join();
}

TEST(WorldSync, SumKeepsFarMoreThanFloatPrecision) {
  OnWorld(3, [](WorldSync& sync, int r) {
    // 2^24 + 1 is not a float; 3 · (2^24 + 1) + 0.25 · (0+1+2) needs ~27 bits.
    double v[2] = {16777217.0, 0.25 * r};
    ASSERT_TRUE(sync.Sum(absl::MakeSpan(v)).ok());
    EXPECT_EQ(v[0], 3 * 16777217.0);  // exact: the low float carries the 1
    EXPECT_EQ(v[1], 0.75);
  });
}

TEST(WorldSync, VotesCountRanks) {
  OnWorld(4, [](WorldSync& sync, int r) {
    Vote odd(r % 2 == 1), root(r == 0), none(false), every(true);
    ASSERT_TRUE(sync.Tally({&odd, &root, &none, &every}).ok());
    EXPECT_EQ(odd.count(), 2);
    EXPECT_EQ(root.count(), 1);
    EXPECT_FALSE(none.any());
    EXPECT_TRUE(every.all(4));
    EXPECT_FALSE(odd.all(4));
    EXPECT_EQ(odd.mine(), r % 2 == 1);
  });
}

TEST(WorldSync, AFailureOnOneRankFailsEveryRank) {
  OnWorld(3, [](WorldSync& sync, int r) {
    const absl::Status local = r == 2 ? absl::NotFoundError("mine") : absl::OkStatus();
    const absl::Status s = sync.AgreeOnStatus(local, "loading");
    if (r == 2) {
      EXPECT_TRUE(absl::IsNotFound(s)) << s;
    } else {
      EXPECT_TRUE(absl::IsAborted(s)) << s;
      EXPECT_NE(std::string(s.message()).find("loading failed on 1 other rank"), std::string::npos) << s;
    }
    absl::StatusOr<bool> same = sync.AllEqual(r == 1 ? 7 : 5);
    ASSERT_TRUE(same.ok());
    EXPECT_FALSE(*same);
    same = sync.AllEqual(5);
    ASSERT_TRUE(same.ok());
    EXPECT_TRUE(*same);
    EXPECT_TRUE(sync.Barrier().ok());
  });
}

TEST(WorldSync, AWorldOfOneIsTheIdentity) {
  WorldSync sync(nullptr);
  EXPECT_EQ(sync.world_size(), 1);
  EXPECT_TRUE(sync.is_root());
  double v[1] = {0.1};
  ASSERT_TRUE(sync.Sum(absl::MakeSpan(v)).ok());
  EXPECT_EQ(v[0], 0.1);  // bitwise: not even the float round trip
  Vote yes(true);
  ASSERT_TRUE(sync.Tally({&yes}).ok());
  EXPECT_EQ(yes.count(), 1);
  EXPECT_TRUE(absl::IsInternal(sync.AgreeOnStatus(absl::InternalError("x"), "w")));
}

}  // namespace
}  // namespace sheaf::jobs
