// The train loop: gradient accumulation gives the gradient of the mean over
// the whole step (2 micro-batches of 2 rows = 1 of 4 rows), a non-finite
// gradient norm skips the update and is counted, and too many in a row fail
// the run naming the cause.
#include "jobs/train_loop.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "jobs/test_support.h"

namespace sheaf::jobs {
namespace {

constexpr int64_t kT = 16;

struct Rig {
  std::unique_ptr<Model> model;
  std::unique_ptr<LoraAdapter> adapter;
  std::unique_ptr<AdamW> opt;
  WorldSync world{nullptr};
  std::unique_ptr<TrainLoop> loop;

  Rig(int64_t batch, int64_t accum, int max_skips = kMaxConsecutiveSkippedSteps) {
    model = Model::Create(testing::TinyConfig(), NothingTrainable).value();
    model->InitRandom(3, 0.05f);
    LoraOptions lo;
    lo.rank = 4;
    lo.alpha = 8;
    lo.seed = 5;
    adapter = LoraAdapter::Create(model->config(), lo).value();
    // B starts at zero (A's gradient would be zero): give it values.
    for (int64_t i = 0; i < adapter->params().size(); ++i) {
      adapter->params().data()[i] += 0.01f * static_cast<float>((i * 7919) % 13 - 6);
    }
    std::vector<ParamRef> refs;
    for (int i = 0; i < adapter->params().num_slots(); ++i) {
      const Tensor v = adapter->params().view(i), g = adapter->grads().view(i);
      refs.push_back({adapter->params().name(i), v.data, g.data, v.numel(), true});
    }
    opt = std::make_unique<AdamW>(AdamW::Create(refs, AdamWOptions{}).value());
    LoopOptions o;
    o.batch_size = batch;
    o.seq_len = kT;
    o.grad_accum = accum;
    o.schedule.peak = 1e-2f;
    o.schedule.total_steps = 10;
    o.max_consecutive_skips = max_skips;
    loop = std::make_unique<TrainLoop>(model.get(), adapter.get(), opt.get(), nullptr, &world, o);
  }
  std::vector<float> Params() const {
    return {adapter->params().data(), adapter->params().data() + adapter->params().size()};
  }
};

TEST(TrainLoop, AccumulationGivesTheGradientOfTheWholeStep) {
  auto data = testing::TinyDataset(kT, 4);
  Rig two(2, 2), one(4, 1);
  DataCursor c2, c1;
  for (int64_t step = 0; step < 3; ++step) {
    absl::StatusOr<StepResult> a = two.loop->Step(step, *data, &c2);
    absl::StatusOr<StepResult> b = one.loop->Step(step, *data, &c1);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    EXPECT_EQ(a->tokens, b->tokens);
    // Same sequences, same weights; only float summation order differs
    // (two backward passes accumulated vs one): 1e-5 relative.
    EXPECT_NEAR(a->loss, b->loss, 1e-5 * b->loss) << "step " << step;
    EXPECT_NEAR(a->grad_norm, b->grad_norm, 1e-4 * b->grad_norm) << "step " << step;
    EXPECT_GT(a->grad_norm, 0);
    EXPECT_EQ(a->lr, b->lr);
    EXPECT_FALSE(a->skipped);
  }
  EXPECT_TRUE(c1 == c2);
  EXPECT_EQ(two.opt->step_count(), 3);
}

TEST(TrainLoop, NonFiniteGradientNormSkipsTheUpdate) {
  auto data = testing::TinyDataset(kT, 4);
  Rig rig(2, 1, /*max_skips=*/3);
  std::vector<int64_t> poison = {1, 3, 4, 5};
  rig.loop->set_before_clip([&](int64_t step) {
    if (std::find(poison.begin(), poison.end(), step) != poison.end()) {
      rig.opt->params()[0].grad[0] = std::numeric_limits<float>::quiet_NaN();
    }
    return absl::OkStatus();
  });
  DataCursor cursor;
  ASSERT_TRUE(rig.loop->Step(0, *data, &cursor).ok());
  const std::vector<float> before = rig.Params();
  absl::StatusOr<StepResult> s = rig.loop->Step(1, *data, &cursor);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->skipped);
  EXPECT_FALSE(std::isfinite(s->grad_norm));
  EXPECT_TRUE(std::isfinite(s->loss));
  EXPECT_EQ(rig.Params(), before) << "a skipped step must not move the weights";
  EXPECT_EQ(rig.opt->step_count(), 1);
  EXPECT_EQ(rig.loop->skipped_steps(), 1);
  // A good step resets the run of skips; three in a row fail.
  ASSERT_TRUE(rig.loop->Step(2, *data, &cursor).ok());
  EXPECT_EQ(rig.loop->consecutive_skips(), 0);
  EXPECT_TRUE(rig.loop->Step(3, *data, &cursor).ok());
  EXPECT_TRUE(rig.loop->Step(4, *data, &cursor).ok());
  absl::StatusOr<StepResult> fail = rig.loop->Step(5, *data, &cursor);
  ASSERT_FALSE(fail.ok());
  EXPECT_NE(std::string(fail.status().message()).find("not finite"), std::string::npos) << fail.status();
  EXPECT_NE(std::string(fail.status().message()).find("3 consecutive steps"), std::string::npos);
  EXPECT_EQ(rig.loop->skipped_steps(), 4);
}

TEST(TrainLoop, ForwardBackwardIsOneMicroStep) {
  // The shared step equals Forward + Backward by hand (bitwise: same calls).
  auto data = testing::TinyDataset(kT, 4);
  Rig a(2, 1), b(2, 1);
  std::vector<int32_t> in(2 * kT), tg(in.size());
  ASSERT_TRUE(data->GetValidationBatch(0, 2, absl::MakeSpan(in), absl::MakeSpan(tg)).ok());
  LossStats s1 = ForwardBackward(*a.model, a.adapter.get(), in.data(), tg.data(), 2, kT, 0.5f).value();
  LossStats s2 = b.model->Forward(in.data(), tg.data(), 2, kT, b.adapter.get(), true).value();
  ASSERT_TRUE(b.model->Backward(0.5f).ok());
  EXPECT_EQ(s1.loss_sum, s2.loss_sum);
  for (int64_t i = 0; i < a.adapter->grads().size(); ++i) {
    ASSERT_EQ(a.adapter->grads().data()[i], b.adapter->grads().data()[i]) << i;
  }
}

}  // namespace
}  // namespace sheaf::jobs
