#include "core/crm/ctr_data.h"

#include <cstdlib>
#include <filesystem>
#include <string>

#include "base/file.h"
#include "core/crm/atomic.h"
#include "gtest/gtest.h"

namespace sheaf::crm {
namespace {

namespace fs = std::filesystem;

std::string TmpDir(const std::string& name) {
  const char* t = std::getenv("TEST_TMPDIR");
  fs::path p = fs::path(t ? t : "/tmp") / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void Write(const std::string& dir, const std::string& file, const std::string& text) {
  ASSERT_TRUE(WriteFileAtomically((fs::path(dir) / file).string(), text).ok());
}

constexpr char kUser[] =
    "user_id:token\tage:token\tgender:token\n"
    "u1\t20\tM\n"
    "u2\t30\tF\n"
    "u3\t20\tF\n";
constexpr char kItem[] =
    "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
    "i1\tToy Story\tAnimation Comedy\n"
    "i2\tHeat\tAction\n"
    "i3\tBabe\t\n";

TEST(Atomic, ReadsFeaturesAndInteractions) {
  const std::string dir = TmpDir("read");
  Write(dir, "d.user", kUser);
  Write(dir, "d.item", kItem);
  Write(dir, "d.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u2\ti3\t4\t100\n"
        "u1\ti1\t2.5\t50\n");
  auto ds = ReadAtomicDataset(dir, "d");
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->user_ids.size(), 3u);
  ASSERT_EQ(ds->user_features.size(), 2u);
  EXPECT_EQ(ds->user_features[0].name, "age");
  // age: u1 and u3 share token "20" (id 1), u2 has "30" (id 2).
  EXPECT_EQ(ds->user_features[0].values[0], std::vector<int32_t>{1});
  EXPECT_EQ(ds->user_features[0].values[1], std::vector<int32_t>{2});
  EXPECT_EQ(ds->user_features[0].values[2], std::vector<int32_t>{1});
  ASSERT_EQ(ds->item_features.size(), 2u);
  EXPECT_TRUE(ds->item_features[1].is_seq);
  EXPECT_EQ(ds->item_features[1].values[0].size(), 2u);  // Animation Comedy
  EXPECT_TRUE(ds->item_features[1].values[2].empty());  // i3: no class
  EXPECT_EQ(ds->item_features[0].text[1], "Heat");
  ASSERT_EQ(ds->interactions.size(), 2u);
  EXPECT_EQ(ds->interactions[0].user, 1);
  EXPECT_EQ(ds->interactions[0].item, 2);
  EXPECT_EQ(ds->interactions[1].rating, 2.5f);
  EXPECT_EQ(ds->interactions[1].line, 3);
}

// Every malformed file is an error naming the file and line.
TEST(Atomic, MalformedFilesNameFileAndLine) {
  struct Case {
    std::string inter, expect;
  };
  const std::string header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n";
  const std::vector<Case> cases = {
      {"user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t3\n",
       "d.inter:1: missing column rating:float"},
      {"user_id:token\titem_id:token\trating:token\ttimestamp:float\nu1\ti1\t3\t4\n",
       "d.inter:1: column 'rating' has type token, expected float"},
      {header + "u1\ti1\t4\t10\nu1\ti2\tfour\t11\n", "d.inter:3: rating: 'four' is not a"},
      {header + "u1\ti1\t4\tinf\n", "d.inter:2: timestamp: 'inf' is not a finite number"},
      {header + "u1\ti1\t4\n", "d.inter:2: 3 values, the header has 4 columns"},
      {header + "u1\ti1\t4\t1\nu9\ti1\t4\t2\n", "d.inter:3: unknown user_id 'u9'"},
      {header + "u1\ti7\t4\t1\n", "d.inter:2: unknown item_id 'i7'"},
      {"user_id:token\titem_id:token\trating:float\ttimestamp:float\tx:float\n"
       "u1\ti1\t4\t1\t0\n",
       "d.inter:1: column 'x:float' is not supported"},
      {"user_id\titem_id:token\n", "d.inter:1: header column 'user_id' is not name:type"},
  };
  for (const Case& c : cases) {
    const std::string dir = TmpDir("bad");
    Write(dir, "d.user", kUser);
    Write(dir, "d.item", kItem);
    Write(dir, "d.inter", c.inter);
    auto ds = ReadAtomicDataset(dir, "d");
    ASSERT_FALSE(ds.ok()) << c.expect;
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ds.status().message().find(c.expect), std::string::npos)
        << ds.status() << " vs " << c.expect;
  }
  // Bad .user files.
  const std::string dir = TmpDir("baduser");
  Write(dir, "d.inter", header + "u1\ti1\t4\t1\n");
  Write(dir, "d.user", "user_id:token\tage:float\nu1\t3\n");
  auto ds = ReadAtomicDataset(dir, "d");
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("d.user:1: column 'age:float' is not supported"),
            std::string::npos)
      << ds.status();
  Write(dir, "d.user", "user_id:token\nu1\nu1\n");
  ds = ReadAtomicDataset(dir, "d");
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("d.user:3: duplicate user_id 'u1'"), std::string::npos)
      << ds.status();
  EXPECT_EQ(ReadAtomicDataset(dir, "nope").status().code(), absl::StatusCode::kNotFound);
}

// A dataset without .user/.item: ids come from .inter.
AtomicDataset Synthetic(const std::string& inter_body) {
  const std::string dir = TmpDir("syn");
  EXPECT_TRUE(WriteFileAtomically(
                  dir + "/s.inter",
                  "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + inter_body)
                  .ok());
  auto ds = ReadAtomicDataset(dir, "s");
  EXPECT_TRUE(ds.ok()) << ds.status();
  return *std::move(ds);
}

TEST(CtrData, KCoreFilteringCascades) {
  // Users a, b, c rate items x, y with 2 ratings each; user d rates x once and
  // z once. 2-core: z has 1 rating -> dropped; then d has 1 -> dropped; then
  // x keeps 3 ratings (a, b, c). Everything else survives.
  std::string body;
  int t = 0;
  for (const char* u : {"a", "b", "c"}) {
    for (const char* i : {"x", "y"}) body += std::string(u) + "\t" + i + "\t5\t" + std::to_string(t++) + "\n";
  }
  body += "d\tx\t5\t" + std::to_string(t++) + "\n";
  body += "d\tz\t5\t" + std::to_string(t++) + "\n";
  CtrOptions o;
  o.min_core = 2;
  auto data = BuildCtrData(Synthetic(body), o);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->raw_interactions, 8);
  EXPECT_EQ(data->kept_interactions, 6);
  EXPECT_EQ(data->kept_users, 3);
  EXPECT_EQ(data->kept_items, 2);
  o.min_core = 4;  // nothing has 4
  EXPECT_FALSE(BuildCtrData(Synthetic(body), o).ok());
}

TEST(CtrData, TimeSplitLabelsAndHistoryWithoutLeakage) {
  // 3 users x 20 ratings, timestamps interleaved, with same-second pairs per
  // user, and
  // the file in reverse time order (the split must sort).
  std::vector<std::string> lines;
  for (int j = 0; j < 20; ++j) {
    for (int u = 0; u < 3; ++u) {
      // j % 4 == 1: the same second as the user's previous rating.
      const int ts = 1000 + (j % 4 == 1 ? j - 1 : j) * 10 + u;
      const int item = (j * 3 + u) % 17;
      const int rating = 1 + (j + u) % 5;
      lines.push_back("u" + std::to_string(u) + "\ti" + std::to_string(item) + "\t" +
                      std::to_string(rating) + "\t" + std::to_string(ts) + "\n");
    }
  }
  std::string body;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) body += *it;
  CtrOptions o;
  o.min_core = 0;
  o.ctr_k = 6;
  o.k = 2;
  auto data = BuildCtrData(Synthetic(body), o);
  ASSERT_TRUE(data.ok()) << data.status();
  // Split of the 60 sorted interactions: 48 / 6 / 6, minus each user's first
  // (no history) and each user's second (the same second as the first, so
  // not "before" it either): all six are in train.
  EXPECT_EQ(data->dropped_no_history, 6);
  EXPECT_EQ(data->split(Split::kSplitTrain).size(), 42u);
  EXPECT_EQ(data->split(Split::kSplitVal).size(), 6u);
  EXPECT_EQ(data->split(Split::kSplitTest).size(), 6u);
  // Global time: every train sample is no later than every val sample, and
  // val no later than test.
  double last_train = 0, first_val = 1e18, last_val = 0, first_test = 1e18;
  for (const auto& s : data->split(Split::kSplitTrain)) last_train = std::max(last_train, s.timestamp);
  for (const auto& s : data->split(Split::kSplitVal)) {
    first_val = std::min(first_val, s.timestamp);
    last_val = std::max(last_val, s.timestamp);
  }
  for (const auto& s : data->split(Split::kSplitTest)) first_test = std::min(first_test, s.timestamp);
  EXPECT_LE(last_train, first_val);
  EXPECT_LE(last_val, first_test);
  int same_second_checked = 0;
  for (int sp = 0; sp < 3; ++sp) {
    for (const CtrSample& s : data->splits[sp]) {
      EXPECT_EQ(s.label, s.rating >= 4 ? 1.0f : 0.0f);
      auto longh = data->History(s, o.ctr_k);
      auto shorth = data->History(s, o.k);
      ASSERT_FALSE(longh.empty());
      EXPECT_LE(static_cast<int>(longh.size()), o.ctr_k);
      EXPECT_EQ(static_cast<int>(shorth.size()), std::min(o.k, s.hist_len));
      // The short history is the tail of the long one.
      EXPECT_EQ(&shorth.back(), &longh.back());
      // Reference: the user's ratings strictly before, from the raw lines.
      int before = 0;
      for (const auto& e : data->sequences[s.user]) before += e.timestamp < s.timestamp;
      EXPECT_EQ(s.hist_len, before);
      for (const HistEvent& e : longh) EXPECT_LT(e.timestamp, s.timestamp);
      // Oldest first, the newest is the user's latest strictly earlier event.
      for (size_t i = 1; i < longh.size(); ++i) EXPECT_LE(longh[i - 1].timestamp, longh[i].timestamp);
      if (s.seq_pos > s.hist_len) ++same_second_checked;
    }
  }
  EXPECT_GT(same_second_checked, 0);  // the same-second exclusion was exercised
  EXPECT_EQ(data->rating_values, (std::vector<float>{1, 2, 3, 4, 5}));
}

}  // namespace
}  // namespace sheaf::crm
