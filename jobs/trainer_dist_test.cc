// The trainer on worlds of N threads (dist::ThreadWorld): 20 LoRA steps with
// N = 2 and 4 ranks give the single-rank loss sequence for the same global
// batch, only adapter gradients are all-reduced, and a checkpoint written by
// a 2-rank world resumes on 4 ranks.
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/model.h"
#include "core/spec/yaml.h"
#include "dist/thread_communicator.h"
#include "gtest/gtest.h"
#include "jobs/trainer.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

std::string Root() {
  static const std::string root = [] {
    const std::string r = ::testing::TempDir() + "/trainer_dist_test";
    fs::remove_all(r);
    fs::create_directories(r + "/corpus");
    ModelConfig c;
    c.hidden_size = 32;
    c.num_layers = 3;
    c.head_dim = 8;
    c.vocab_size = 258;
    c.max_position_embeddings = 64;
    c.layers.assign(3, LayerShape{4, 2, 48});
    auto m = Model::Create(c, NothingTrainable);
    EXPECT_TRUE(m.ok());
    (*m)->InitRandom(5, 0.05f);
    EXPECT_TRUE((*m)->Save(r + "/base").ok());
    std::mt19937 rng(1);
    const char* words[] = {"lorem ", "ipsum ", "dolor ", "sit ", "amet, ", "consectetur\n"};
    for (int f = 0; f < 30; ++f) {
      std::ofstream out(r + "/corpus/d" + std::to_string(f) + ".txt");
      for (int w = 0; w < 50; ++w) out << words[rng() % 6];
    }
    return r;
  }();
  return root;
}

std::string Spec(const std::string& out, int steps) {
  return "base_model: " + Root() + "/base\noutput_dir: " + out +
         "\nseed: 2\n"
         "data: {train: [" + Root() + "/corpus], seq_len: 16, val_fraction: 0.1}\n"
         "optimizer: {lr: 0.01}\n"
         "train: {batch_size: 8, grad_accum: 2, max_steps: " + std::to_string(steps) +
         ", eval_every: 10, checkpoint_every: 5, threads: 1}\n"
         "lora: {adapter: {rank: 4, alpha: 8, dropout: 0.1}}\n";
}

struct WorldRun {
  std::vector<double> losses;
  double val = 0;
  int64_t grad_bytes = 0, frozen_bytes = 0;
  int64_t adapter_params = 0;
};

// Runs the spec on a world of n threads; returns rank 0's view.
WorldRun RunWorld(int n, const std::string& out, int steps, bool resume = false,
             int stop_after = -1) {
  dist::ThreadWorld world(n);
  std::vector<WorldRun> runs(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto spec = ParseJobSpecYaml(Spec(out, steps));
      ASSERT_TRUE(spec.ok()) << spec.status();
      TrainerOptions o;
      o.quiet = true;
      o.resume = resume;
      o.comm = n > 1 ? world.rank(r) : nullptr;
      Trainer* self = nullptr;
      if (stop_after > 0) {
        o.on_progress = [&](const TrainProgress& p) {
          if (p.step == stop_after) self->RequestStop();
        };
      }
      auto t = Trainer::Create(*spec, o);
      ASSERT_TRUE(t.ok()) << t.status();
      self = t->get();
      auto res = (*t)->Run();
      ASSERT_TRUE(res.ok()) << res.status();
      WorldRun& w = runs[static_cast<size_t>(r)];
      w.losses = res->step_losses;
      w.val = res->final_val_loss;
      w.adapter_params = (*t)->adapter()->num_params();
      if (n > 1) {
        w.grad_bytes = world.rank(r)->bytes_sent(dist::Purpose::kPurposeAdapterGrad);
        w.frozen_bytes = world.rank(r)->bytes_sent(dist::Purpose::kPurposeFrozenGather);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 1; r < n; ++r) {
    EXPECT_EQ(runs[static_cast<size_t>(r)].losses, runs[0].losses) << "ranks disagree";
  }
  return runs[0];
}

TEST(TrainerDist, LossSequenceMatchesSingleRankForTwoAndFourRanks) {
  const WorldRun one = RunWorld(1, Root() + "/n1", 20);
  ASSERT_EQ(one.losses.size(), 20u);
  for (int n : {2, 4}) {
    const WorldRun w = RunWorld(n, Root() + "/n" + std::to_string(n), 20);
    ASSERT_EQ(w.losses.size(), 20u);
    // Same samples per step; only the order of fp32 sums differs (each
    // rank's partial sums over its rows, then the all-reduce across ranks).
    // Measured differences are ~1e-7 relative and grow slowly through the
    // optimizer; 1e-4 relative over 20 steps leaves margin while a wrong
    // slice, scale or missing reduction shows up at 1e-2 or more.
    for (size_t i = 0; i < 20; ++i) {
      EXPECT_NEAR(w.losses[i], one.losses[i], 1e-4 * std::fabs(one.losses[i])) << "N=" << n << " step " << i + 1;
    }
    EXPECT_NEAR(w.val, one.val, 1e-4 * one.val);
    // Traffic: per step one all-reduce of exactly the adapter's gradients
    // (ring factor 2(N-1)/N, rounded down per bucket), nothing for frozen
    // tensors' gradients (they have none).
    const double per_step = 2.0 * (n - 1) * w.adapter_params * 4 / n;
    EXPECT_NEAR(static_cast<double>(w.grad_bytes) / 20.0, per_step, 64.0) << "N=" << n;
    EXPECT_GT(w.frozen_bytes, 0);
  }
  EXPECT_LT(one.losses.back(), one.losses.front()) << "training must make progress";
}

TEST(TrainerDist, CheckpointFromTwoRanksResumesOnFour) {
  const WorldRun full = RunWorld(2, Root() + "/full2", 10);
  const WorldRun first = RunWorld(2, Root() + "/resize", 10, false, /*stop_after=*/5);
  ASSERT_EQ(first.losses.size(), 5u);
  const WorldRun rest = RunWorld(4, Root() + "/resize", 10, /*resume=*/true);
  ASSERT_EQ(rest.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_NEAR(rest.losses[i], full.losses[i + 5], 1e-4 * full.losses[i + 5]) << "step " << i + 6;
  }
}

// A failure on one rank only (rank 0 cannot write the checkpoint) must fail
// every rank promptly instead of leaving the others in a collective (the
// thread world aborts the test after 60 s of waiting).
TEST(TrainerDist, ACheckpointFailureOnRankZeroFailsEveryRank) {
  const std::string out = Root() + "/ckpt_fail";
  dist::ThreadWorld world(2);
  std::vector<absl::Status> results(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto spec = ParseJobSpecYaml(Spec(out, 10));
      ASSERT_TRUE(spec.ok());
      TrainerOptions o;
      o.quiet = true;
      o.comm = world.rank(r);
      o.on_progress = [&](const TrainProgress& p) {
        if (p.step == 2) {  // rank 0 only: the checkpoint dir becomes a file
          fs::remove_all(out + "/checkpoints");
          std::ofstream(out + "/checkpoints") << "not a directory";
        }
      };
      auto t = Trainer::Create(*spec, o);
      ASSERT_TRUE(t.ok()) << t.status();
      results[static_cast<size_t>(r)] = (*t)->Run().status();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(results[0].ok());
  EXPECT_NE(std::string(results[0].message()).find("checkpoints"), std::string::npos) << results[0];
  EXPECT_EQ(results[1].code(), absl::StatusCode::kAborted) << results[1];
  EXPECT_NE(std::string(results[1].message()).find("writing the checkpoint"), std::string::npos);
}

}  // namespace
}  // namespace sheaf
