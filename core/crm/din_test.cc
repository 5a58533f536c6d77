#include "core/crm/din.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "base/rng.h"
#include "core/crm/crm_train.h"
#include "gtest/gtest.h"

namespace sheaf::crm {
namespace {

DinInputs TinyInputs() {
  DinInputs in;
  in.num_users = 3;
  in.num_items = 5;
  in.num_ratings = 3;
  DinField age{"age", true, 3, {{1}, {2}, {1}}};
  DinField genre{"genre", false, 4, {{1, 2}, {3}, {}, {1}, {2, 3}}};
  in.fields = {age, genre};
  return in;
}

DinBatch TinyBatch() {
  DinBatch b;
  b.B = 3;
  b.L = 3;
  b.user = {0, 1, 2};
  b.item = {4, 2, 0};
  b.hist_item = {1, 0, 0, 2, 3, 0, 0, 1, 4};
  b.hist_rating = {2, 0, 0, 1, 0, 0, 2, 2, 1};
  b.hist_len = {1, 2, 3};
  b.label = {1, 0, 1};
  return b;
}

// Central differences on every parameter element of every layer (each slot
// is one layer's weight, bias or table), against the hand-written backward.
// Tolerance: the summed loss is O(1) in fp32 (relative rounding ~1e-7), so a
// step of 1e-3 leaves ~1e-4 of rounding noise and O(h^2) ~1e-6 of truncation
// error; 3e-3 absolute + 2% relative is far above both and far below any
// wrong term (a missing factor or term shows up as O(|grad|)). Elements at a
// ReLU kink within the step would differ; with this seed none is.
TEST(Din, FiniteDifferencesPerLayer) {
  DinConfig c;
  c.emb_dim = 3;
  c.att_hidden = 4;
  c.mlp1 = 5;
  c.mlp2 = 4;
  c.init_std = 0.5f;
  auto din = Din::Create(c, TinyInputs());
  ASSERT_TRUE(din.ok()) << din.status();
  Din& d = **din;
  d.InitRandom(11);
  const DinBatch batch = TinyBatch();
  d.ZeroGrads();
  ASSERT_TRUE(d.Forward(batch).ok());
  d.Backward(1.0f);
  std::vector<float> grad(d.grads().data(), d.grads().data() + d.grads().size());
  const float h = 1e-3f;
  int checked = 0;
  for (const ParamRef& r : d.ParamRefs()) {
    const int64_t offset = r.value - d.params().data();
    double max_grad = 0;
    for (int64_t i = 0; i < r.size; ++i) {
      float& p = r.value[i];
      const float saved = p;
      p = saved + h;
      const double lp = *d.Forward(batch);
      p = saved - h;
      const double lm = *d.Forward(batch);
      p = saved;
      const double num = (lp - lm) / (2.0 * h);
      const double ana = grad[static_cast<size_t>(offset + i)];
      max_grad = std::max(max_grad, std::fabs(ana));
      EXPECT_NEAR(num, ana, 3e-3 + 0.02 * std::fabs(ana)) << r.name << "[" << i << "]";
      ++checked;
    }
    // Every layer gets gradient somewhere (a layer cut off from the loss
    // would pass the comparison with zeros on both sides).
    EXPECT_GT(max_grad, 1e-4) << r.name;
  }
  EXPECT_GT(checked, 200);
}

// Padding slots (j >= len) change nothing: the same sample alone (L = its
// length) and padded in a batch give the same logit.
TEST(Din, MaskedPaddingHasNoEffect) {
  DinConfig c;
  c.emb_dim = 4;
  c.att_hidden = 6;
  c.mlp1 = 8;
  c.mlp2 = 5;
  auto din = Din::Create(c, TinyInputs());
  ASSERT_TRUE(din.ok());
  (*din)->InitRandom(3);
  const DinBatch full = TinyBatch();
  ASSERT_TRUE((*din)->Forward(full).ok());
  const float padded = (*din)->logits()[0];
  DinBatch one;
  one.B = 1;
  one.L = 1;
  one.user = {0};
  one.item = {4};
  one.hist_item = {1};
  one.hist_rating = {2};
  one.hist_len = {1};
  one.label = {1};
  ASSERT_TRUE((*din)->Forward(one).ok());
  // Same arithmetic on the valid slots; GEMM blocking may reorder sums over
  // a different row count, hence a few ulps of room.
  EXPECT_NEAR((*din)->logits()[0], padded, 1e-5f);
}

// A synthetic CtrData: 20 users, each a sequence of random items; a sample
// at position p sees the 5 items before it, and its label is 1 iff the
// target item's hidden genre (item % 2, never an input) equals the majority
// genre of those 5. Labels are balanced within every user, so user ids carry
// no signal: only the history can predict it. Positions < 5 + per_user_train
// are train, the rest test.
CtrData MajorityGenreData(int per_user_train, int per_user_test, uint64_t seed) {
  CtrData data;
  const int users = 20, items = 40, hist = 5;
  const int len = hist + per_user_train + per_user_test;
  for (int i = 0; i < items; ++i) data.dataset.item_ids.push_back("i" + std::to_string(i));
  data.rating_values = {5.0f};
  uint64_t state = seed;
  for (int u = 0; u < users; ++u) {
    data.dataset.user_ids.push_back("u" + std::to_string(u));
    std::vector<HistEvent> seq;
    for (int p = 0; p < len; ++p) {
      const int item = static_cast<int>(SplitMix64Next(state) % items);
      seq.push_back({item, 0, 5.0f, static_cast<double>(p)});
    }
    for (int p = hist; p < len; ++p) {
      int odd = 0;
      for (int j = p - hist; j < p; ++j) odd += seq[j].item % 2;
      const int majority = odd * 2 > hist ? 1 : 0;
      CtrSample s;
      s.user = u;
      s.item = seq[p].item;
      s.label = (s.item % 2) == majority ? 1.0f : 0.0f;
      s.timestamp = p;
      s.seq_pos = p;
      s.hist_len = p;
      data.splits[p < hist + per_user_train ? 0 : 2].push_back(s);
    }
    data.sequences.push_back(seq);
  }
  return data;
}

TEST(Din, LearnsALabelThatDependsOnTheHistory) {
  CtrData data = MajorityGenreData(150, 50, 5);
  DinConfig c;
  c.emb_dim = 8;
  c.att_hidden = 16;
  c.mlp1 = 32;
  c.mlp2 = 16;
  auto din = Din::Create(c, DinInputsFrom(data));
  ASSERT_TRUE(din.ok()) << din.status();
  (*din)->InitRandom(1);
  CrmTrainOptions o;
  o.epochs = 12;
  o.batch_size = 64;
  o.history = 5;
  o.lr = 5e-3f;
  auto report = TrainCrm(data, **din, o);
  ASSERT_TRUE(report.ok()) << report.status();
  auto m = EvaluateCrm(data, **din, data.split(Split::kSplitTest), 5);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_GT(m->auc, 0.9) << "logloss " << m->logloss;
}

std::string TmpDir(const std::string& name) {
  const char* t = std::getenv("TEST_TMPDIR");
  std::filesystem::path p = std::filesystem::path(t ? t : "/tmp") / name;
  std::filesystem::remove_all(p);
  return p.string();
}

// Interrupted after 7 steps, resumed to 20: parameters and losses equal an
// uninterrupted run's, bit for bit.
TEST(CrmTrain, ResumesBitExact) {
  CtrData data = MajorityGenreData(15, 3, 9);
  DinConfig c;
  c.emb_dim = 4;
  c.att_hidden = 8;
  c.mlp1 = 8;
  c.mlp2 = 6;
  CrmTrainOptions o;
  o.max_steps = 20;
  o.batch_size = 32;
  o.history = 5;
  auto straight = Din::Create(c, DinInputsFrom(data));
  ASSERT_TRUE(straight.ok());
  (*straight)->InitRandom(2);
  auto r1 = TrainCrm(data, **straight, o);
  ASSERT_TRUE(r1.ok()) << r1.status();

  auto resumed = Din::Create(c, DinInputsFrom(data));
  ASSERT_TRUE(resumed.ok());
  (*resumed)->InitRandom(2);
  o.checkpoint_dir = TmpDir("ck");
  o.stop_after = 7;
  auto part = TrainCrm(data, **resumed, o);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_TRUE(part->stopped);
  EXPECT_EQ(part->steps, 7);
  // A fresh object (as a new process would have), initialised differently:
  // everything must come from the checkpoint.
  auto fresh = Din::Create(c, DinInputsFrom(data));
  ASSERT_TRUE(fresh.ok());
  (*fresh)->InitRandom(99);
  o.stop_after = 0;
  auto rest = TrainCrm(data, **fresh, o);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->resumed_from, 7);
  EXPECT_EQ(rest->steps, 20);
  ASSERT_EQ(rest->losses.size(), 13u);
  for (size_t i = 0; i < 13; ++i) EXPECT_EQ(rest->losses[i], r1->losses[7 + i]) << i;
  const Arena& a = (*straight)->params();
  const Arena& b = (*fresh)->params();
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.bytes()), 0);

  // Save / load round trip, and a layout mismatch is refused by name.
  const std::string path = TmpDir("crm") + ".sheafckpt";
  ASSERT_TRUE(SaveCrm(**fresh, path).ok());
  (*resumed)->InitRandom(5);
  ASSERT_TRUE(LoadCrm(**resumed, path).ok());
  EXPECT_EQ(std::memcmp((*resumed)->params().data(), b.data(), b.bytes()), 0);
  c.mlp2 = 7;
  auto other = Din::Create(c, DinInputsFrom(data));
  ASSERT_TRUE(other.ok());
  absl::Status s = LoadCrm(**other, path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("another layout"), std::string::npos) << s;
}

TEST(EpochOrder, IsAPermutationFixedBySeedAndEpoch) {
  auto a = EpochOrder(100, 3, 0), b = EpochOrder(100, 3, 0), c = EpochOrder(100, 3, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<int32_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sorted[i], i);
}

}  // namespace
}  // namespace sheaf::crm
