// Evaluation against a naive reference: one forward per validation sequence,
// summed. Batching, a max_sequences cut, padding of the last batch and a
// world of two ranks must all give the reference's loss.
#include "jobs/evaluation.h"

#include <thread>

#include "dist/thread_communicator.h"
#include "gtest/gtest.h"
#include "jobs/test_support.h"

namespace sheaf::jobs {
namespace {

constexpr int64_t kT = 16;

std::unique_ptr<Model> TinyModel() {
  auto m = Model::Create(testing::TinyConfig(), NothingTrainable).value();
  m->InitRandom(3, 0.05f);
  return m;
}

// The reference: sequence by sequence, batch of one.
LossStats Naive(Model& model, const Dataset& data, int64_t max_seqs) {
  LossStats total;
  std::vector<int32_t> in(kT), tg(kT);
  for (int64_t i = 0; i < std::min(max_seqs, data.num_validation_sequences()); ++i) {
    EXPECT_TRUE(data.GetValidationBatch(i, 1, absl::MakeSpan(in), absl::MakeSpan(tg)).ok());
    LossStats s = model.Forward(in.data(), tg.data(), 1, kT, nullptr, false).value();
    total.loss_sum += s.loss_sum;
    total.tokens += s.tokens;
  }
  return total;
}

TEST(Evaluation, MatchesOneSequenceAtATime) {
  auto data = testing::TinyDataset(kT, 4);
  auto model = TinyModel();
  const int64_t n = data->num_validation_sequences();
  ASSERT_GT(n, 9) << "the fixture must give a short last batch";
  WorldSync one(nullptr);
  for (int64_t max : {int64_t{0}, int64_t{5}}) {
    const LossStats ref = Naive(*model, *data, max > 0 ? max : n);
    EvalOptions o;
    o.batch_size = 4;  // n is not a multiple of 4: the last batch is padded
    o.max_sequences = max;
    absl::StatusOr<LossStats> got = EvaluateLoss(*model, nullptr, *data, o, one);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->tokens, ref.tokens);
    // Rows are independent; only GEMM blocking differs between a batch of 4
    // rows and of 1 (float sums in another order): 1e-6 relative is ~10 ulps
    // of float over ~10^3 token losses, far below any real change.
    EXPECT_NEAR(got->loss_sum, ref.loss_sum, 1e-6 * ref.loss_sum) << "max_sequences " << max;
  }
}

TEST(Evaluation, NamedSetsAndTwoRanksAgree) {
  auto a = testing::TinyDataset(kT, 4), b = testing::TinyDataset(kT, 9);
  auto model = TinyModel();
  WorldSync one(nullptr);
  EvalOptions o;
  o.batch_size = 4;
  auto single = EvaluateSets(*model, nullptr, {{"a", a.get()}, {"b", b.get()}}, o, one);
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_EQ(single->size(), 2u);
  const LossStats ra = Naive(*model, *a, a->num_validation_sequences());
  EXPECT_NEAR(single->at("a"), ra.mean(), 1e-6 * ra.mean());
  EXPECT_NE(single->at("a"), single->at("b"));

  dist::ThreadWorld world(2);
  std::vector<std::map<std::string, double>> got(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto m = TinyModel();
      WorldSync sync(world.rank(r));
      auto s = EvaluateSets(*m, nullptr, {{"a", a.get()}, {"b", b.get()}}, o, sync);
      ASSERT_TRUE(s.ok()) << s.status();
      got[static_cast<size_t>(r)] = *s;
    });
  }
  for (auto& t : threads) t.join();
  for (const char* k : {"a", "b"}) {
    EXPECT_EQ(got[0].at(k), got[1].at(k));  // every rank learns the same sums
    // Two ranks each forward 2 rows; the sums cross ranks as (hi, lo) float
    // pairs (~48 bits): same 1e-6 bound.
    EXPECT_NEAR(got[0].at(k), single->at(k), 1e-6 * single->at(k)) << k;
  }
}

TEST(Evaluation, OddBatchOverTwoRanksIsRefused) {
  auto data = testing::TinyDataset(kT, 4);
  auto model = TinyModel();
  dist::ThreadWorld world(2);
  WorldSync sync(world.rank(0));
  EvalOptions o;
  o.batch_size = 3;
  EXPECT_TRUE(absl::IsInvalidArgument(EvaluateLoss(*model, nullptr, *data, o, sync).status()));
}

}  // namespace
}  // namespace sheaf::jobs
