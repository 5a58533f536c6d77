// A short reclora job end to end on a synthetic atomic dataset and a tiny
// random byte-level model: prompts, both phases, resume bit for bit, the
// evaluation report, and a per-user adapter that predicts what the mixture
// predicts.
#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "base/file.h"
#include "base/rng.h"
#include "core/crm/gate.h"
#include "core/model.h"
#include "core/spec/yaml.h"
#include "dist/thread_communicator.h"
#include "jobs/recipe.h"
#include "jobs/reclora/parts.h"
#include "gtest/gtest.h"

namespace sheaf::reclora {
namespace {

namespace fs = std::filesystem;

std::string Tmp(const std::string& name) {
  const char* t = std::getenv("TEST_TMPDIR");
  fs::path p = fs::path(t ? t : "/tmp") / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// 12 users x 16 ratings of 20 items; users like even items (rating 5) and
// dislike odd ones (rating 2), so history and target carry the label.
std::string WriteDataset() {
  const std::string dir = Tmp("data");
  std::string user = "user_id:token\tage:token\tgender:token\n";
  for (int u = 0; u < 12; ++u) user += "u" + std::to_string(u) + "\t" + std::to_string(20 + u) + "\t" + (u % 2 ? "F" : "M") + "\n";
  std::string item = "item_id:token\tmovie_title:token_seq\n";
  for (int i = 0; i < 20; ++i) item += "i" + std::to_string(i) + "\tFilm number " + std::to_string(i) + "\n";
  std::string inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n";
  uint64_t s = 3;
  int ts = 1000;
  for (int j = 0; j < 16; ++j) {
    for (int u = 0; u < 12; ++u) {
      const int it = static_cast<int>(SplitMix64Next(s) % 20);
      inter += "u" + std::to_string(u) + "\ti" + std::to_string(it) + "\t" + (it % 2 ? "2" : "5") + "\t" + std::to_string(ts++) + "\n";
    }
  }
  EXPECT_TRUE(WriteFileAtomically(dir + "/toy.user", user).ok());
  EXPECT_TRUE(WriteFileAtomically(dir + "/toy.item", item).ok());
  EXPECT_TRUE(WriteFileAtomically(dir + "/toy.inter", inter).ok());
  return dir;
}

std::string WriteModel() {
  const std::string dir = Tmp("model");
  ModelConfig c;
  c.hidden_size = 16;
  c.num_layers = 2;
  c.head_dim = 4;
  c.vocab_size = 258;
  c.max_position_embeddings = 256;
  c.layers = {{4, 2, 24}, {4, 2, 24}};
  auto m = Model::Create(c, NothingTrainable);
  EXPECT_TRUE(m.ok());
  (*m)->InitRandom(1, 0.1f);
  EXPECT_TRUE((*m)->Save(dir).ok());
  return dir;
}

struct Env {
  std::string data = WriteDataset();
  std::string model = WriteModel();
  std::string Spec(const std::string& out, const std::string& extra = "") const {
    return "name: toy\nbase_model: " + model + "\noutput_dir: " + out +
           "\nseed: 7\noptimizer: {lr: 0.01}\nschedule: {min_lr_ratio: 1.0}\n"
           "train: {batch_size: 4, max_steps: 4, checkpoint_every: 1, threads: 1}\n"
           "reclora:\n  data_dir: " + data + "\n  dataset: toy\n  min_core: 2\n  k: 3\n  ctr_k: 6\n"
           "  num_experts: 3\n  eval_samples: 16\n  title_chars: 12\n"
           "  adapter: {rank: 2, alpha: 4}\n  crm: {epochs: 2, batch_size: 16, emb_dim: 4}\n" + extra;
  }
};

absl::StatusOr<TrainResult> RunSpec(const std::string& yaml, bool resume = false) {
  auto spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) return spec.status();
  TrainerOptions o;
  o.quiet = true;
  o.resume = resume;
  auto recipe = jobs::CreateRecipe(*spec, o);
  if (!recipe.ok()) return recipe.status();
  return (*recipe)->Run();
}

TEST(Reclora, PromptHasProfileHistoryTargetAndFits) {
  Env env;
  auto spec = ParseJobSpecYaml(env.Spec(Tmp("p")));
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto parts_spec = *spec;
  // Parts need defaults: go through the recipe's path once.
  auto recipe = jobs::CreateRecipe(parts_spec, {});
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  auto parts = BuildParts((*recipe)->spec(), nullptr, 0);
  ASSERT_TRUE(parts.ok()) << parts.status();
  const crm::CtrSample& s = (*parts)->data.split(crm::Split::kSplitTest).front();
  auto text = PromptText((*parts)->data, s, 3, 12, 256);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->rfind("User: ", 0), 0u) << *text;
  EXPECT_NE(text->find(". Rated: Film number"), std::string::npos) << *text;
  EXPECT_NE(text->find("? yes or no:"), std::string::npos) << *text;
  EXPECT_EQ(text->back(), ':');
  // Three history items: two ", " separators.
  const std::string rated = text->substr(text->find("Rated: "), text->find(". Likes") - text->find("Rated: "));
  EXPECT_EQ(std::count(rated.begin(), rated.end(), ','), 2) << rated;
  // A tight budget drops the oldest items first; too tight is an error.
  auto short_text = PromptText((*parts)->data, s, 3, 12, static_cast<int>(text->size()) - 5);
  ASSERT_TRUE(short_text.ok());
  EXPECT_LT(short_text->size(), text->size());
  EXPECT_FALSE(PromptText((*parts)->data, s, 3, 12, 20).ok());
}

// Interrupted after 2 of 4 steps (a second run resumes from its
// checkpoint): the bank and gates equal an uninterrupted run's bit for bit.
TEST(Reclora, JobRunsAndResumesBitExact) {
  Env env;
  const std::string a = Tmp("a"), b = Tmp("b");
  auto ra = RunSpec(env.Spec(a));
  ASSERT_TRUE(ra.ok()) << ra.status();
  EXPECT_EQ(ra->steps, 4);
  for (double l : ra->step_losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_TRUE(fs::exists(a + "/crm.sheafckpt"));
  EXPECT_TRUE(fs::exists(a + "/reclora/bank.safetensors"));
  EXPECT_TRUE(fs::exists(a + "/reclora/gates.safetensors"));
  auto report = ReadFileToString(a + "/eval_report.json");
  ASSERT_TRUE(report.ok());
  EXPECT_NE(report->find("\"test\": {\"llm\": {\"auc\": "), std::string::npos) << *report;

  // First 2 steps (max_steps 2, constant lr), then resume to 4.
  std::string half = env.Spec(b);
  half.replace(half.find("max_steps: 4"), 12, "max_steps: 2");
  auto rb1 = RunSpec(half);
  ASSERT_TRUE(rb1.ok()) << rb1.status();
  auto rb2 = RunSpec(env.Spec(b), /*resume=*/true);
  ASSERT_TRUE(rb2.ok()) << rb2.status();
  EXPECT_EQ(rb2->steps_this_run, 2);
  ASSERT_EQ(rb2->step_losses.size(), 2u);
  EXPECT_EQ(rb2->step_losses[0], ra->step_losses[2]);
  EXPECT_EQ(rb2->step_losses[1], ra->step_losses[3]);
  for (const char* f : {"/reclora/bank.safetensors", "/reclora/gates.safetensors", "/crm.sheafckpt"}) {
    auto x = ReadFileToString(a + f), y = ReadFileToString(b + f);
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_TRUE(*x == *y) << f;
  }
  // A fresh run into a directory with checkpoints is refused.
  EXPECT_EQ(RunSpec(env.Spec(b)).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(Reclora, BadSpecsNameTheField) {
  Env env;
  auto bad = [&](const std::string& extra) {
    auto r = RunSpec(env.Spec(Tmp("bad"), extra));
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_NE(bad("  mixing: sum\n").find("reclora.mixing"), std::string::npos);
  EXPECT_NE(bad("  gate_input: user\n").find("reclora.gate_input"), std::string::npos);
  EXPECT_NE(bad("  num_experts: 0\n").find("reclora.num_experts"), std::string::npos);
  // The test spec gives num_experts; with plain_lora it would be ignored.
  const std::string plain = bad("  plain_lora: true\n");
  EXPECT_NE(plain.find("reclora.num_experts: has no effect with reclora.plain_lora"),
            std::string::npos)
      << plain;
}

// With the user_reps gate the mixture is one adapter per user: materialised
// (MixBank) it predicts what the mixture predicts for that user's samples.
// Bound: both sides compute the same O(1) logits in fp32 with different
// summation orders ((Σw B)(Σw A) formed in double then rounded, vs mixed
// per row): 1e-5 on p(yes).
TEST(Reclora, ExportedUserAdapterPredictsTheMixture) {
  Env env;
  const std::string out = Tmp("u");
  const std::string yaml = env.Spec(out, "  gate_input: user_reps\n");
  auto r = RunSpec(yaml);
  ASSERT_TRUE(r.ok()) << r.status();
  proto::JobSpec resolved;
  {
    auto saved = ParseJobSpecFile(out + "/spec.yaml");
    ASSERT_TRUE(saved.ok()) << saved.status();
    resolved = *saved;
  }
  auto parts = BuildParts(resolved, nullptr, 0);
  ASSERT_TRUE(parts.ok()) << parts.status();
  Parts& p = **parts;
  ASSERT_TRUE(LoadTrainedState(p, out).ok());
  // Every test sample of user 0 versus the exported adapter.
  std::vector<crm::CtrSample> mine;
  for (const auto& s : p.data.split(crm::Split::kSplitTest)) if (s.user == 0) mine.push_back(s);
  for (const auto& s : p.data.split(crm::Split::kSplitVal)) if (s.user == 0) mine.push_back(s);
  ASSERT_FALSE(mine.empty());
  auto adapter = ExportUserAdapter(p, 0);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  // The mixture, with the gate row the export used: the user's latest reps.
  double max_diff = 0;
  for (const auto& s : mine) {
    auto mix = PredictWithUserGate(p, s, /*user_adapter=*/nullptr);
    auto plain = PredictWithUserGate(p, s, adapter->get());
    ASSERT_TRUE(mix.ok() && plain.ok());
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(*mix - *plain)));
  }
  EXPECT_LT(max_diff, 1e-5);
}

// Two ranks (threads, frozen weights sharded) train what one rank trains:
// each reads half of every global batch, and bank and gate gradients are
// summed across the ranks. Gate dropout is off here: its masks are drawn per
// rank-local row, so they differ between world sizes by design. Tolerance:
// only the order of fp32 sums differs (per-rank partial sums, then the
// all-reduce); 1e-4 relative over 4 steps, while a missing gate reduction
// or a wrong slice changes losses from step 2 on by far more.
TEST(Reclora, TwoRanksTrainWhatOneRankTrains) {
  Env env;
  auto run = [&](int n, const std::string& out) {
    dist::ThreadWorld world(n);
    std::vector<std::vector<double>> losses(static_cast<size_t>(n));
    std::vector<int64_t> grad_bytes(static_cast<size_t>(n), 0);
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&, r] {
        auto spec = ParseJobSpecYaml(env.Spec(out, "  gate_dropout: 0.0\n"));
        ASSERT_TRUE(spec.ok()) << spec.status();
        TrainerOptions o;
        o.quiet = true;
        o.comm = n > 1 ? world.rank(r) : nullptr;
        auto recipe = jobs::CreateRecipe(*spec, o);
        ASSERT_TRUE(recipe.ok()) << recipe.status();
        auto res = (*recipe)->Run();
        ASSERT_TRUE(res.ok()) << res.status();
        losses[static_cast<size_t>(r)] = res->step_losses;
        if (n > 1) grad_bytes[static_cast<size_t>(r)] = world.rank(r)->bytes_sent(dist::Purpose::kPurposeAdapterGrad);
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 1; r < n; ++r) EXPECT_EQ(losses[static_cast<size_t>(r)], losses[0]) << "ranks disagree";
    return std::make_pair(losses[0], grad_bytes[0]);
  };
  auto [one, unused] = run(1, Tmp("w1"));
  auto [two, bytes] = run(2, Tmp("w2"));
  ASSERT_EQ(one.size(), 4u);
  ASSERT_EQ(two.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(two[i], one[i], 1e-4 * std::fabs(one[i])) << "step " << i + 1;
  // Bank and gates crossed the wire every step.
  EXPECT_GT(bytes, 0);
}

}  // namespace
}  // namespace sheaf::reclora
