// Single-rank training: spec errors leave no output, LoRA lowers validation
// loss, resume continues bit for bit, a corrupt newest checkpoint falls back,
// and the exported PEFT adapter matches the trained weights.
#include "jobs/trainer.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <fstream>
#include <random>
#include <sstream>

#include "core/checkpoint.h"
#include "core/json.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "absl/strings/str_cat.h"
#include "core/spec/yaml.h"
#include "gtest/gtest.h"
#include "jobs/recipe.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

std::string Root() {
  static const std::string root = [] {
    const std::string r = ::testing::TempDir() + "/trainer_test";
    fs::remove_all(r);
    fs::create_directories(r);
    return r;
  }();
  return root;
}

// A small random base model (byte vocab) written once.
std::string BaseModel() {
  static const std::string dir = [] {
    ModelConfig c;
    c.hidden_size = 32;
    c.num_layers = 2;
    c.head_dim = 8;
    c.vocab_size = 258;
    c.max_position_embeddings = 64;
    c.tie_word_embeddings = true;
    c.layers = {{4, 2, 64}, {4, 2, 64}};
    auto m = Model::Create(c, NothingTrainable);
    EXPECT_TRUE(m.ok());
    (*m)->InitRandom(11, 0.05f);
    const std::string d = Root() + "/base";
    EXPECT_TRUE((*m)->Save(d).ok());
    return d;
  }();
  return dir;
}

// A corpus with learnable structure: documents made of a few repeated words.
std::string Corpus() {
  static const std::string dir = [] {
    const std::string d = Root() + "/corpus";
    fs::create_directories(d);
    std::mt19937 rng(3);
    const char* words[] = {"alpha ", "beta ", "gamma ", "delta ", "the cat sat. ", "on the mat\n"};
    for (int f = 0; f < 40; ++f) {
      std::ofstream out(d + "/doc" + std::to_string(f) + ".txt");
      for (int w = 0; w < 60; ++w) out << words[rng() % 6];
    }
    return d;
  }();
  return dir;
}

std::string LoraSpec(const std::string& out, int steps, int ckpt_every) {
  return "name: t\nbase_model: " + BaseModel() + "\noutput_dir: " + out +
         "\nseed: 5\n"
         "data: {train: [" + Corpus() + "], seq_len: 32, val_fraction: 0.1}\n"
         "optimizer: {lr: 0.03}\n"
         "schedule: {warmup_steps: 2}\n"
         "train: {batch_size: 4, grad_accum: 2, max_steps: " + std::to_string(steps) +
         ", eval_every: 5, checkpoint_every: " + std::to_string(ckpt_every) +
         ", keep_checkpoints: 5, threads: 1}\n"
         "lora: {adapter: {rank: 4, alpha: 8, dropout: 0.1}}\n";
}

absl::StatusOr<std::unique_ptr<Trainer>> Make(const std::string& yaml, bool resume = false,
                                              std::vector<std::string> overrides = {}) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml, overrides);
  if (!spec.ok()) return spec.status();
  TrainerOptions o;
  o.quiet = true;
  o.resume = resume;
  return Trainer::Create(*spec, o);
}

TEST(Trainer, LoraLowersValidationLossAndExportsPeft) {
  const std::string out = Root() + "/lora_run";
  auto t = Make(LoraSpec(out, 40, 10));
  ASSERT_TRUE(t.ok()) << t.status();
  auto r = (*t)->Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 40);
  // The random base knows nothing of this corpus (loss ~ log 258 = 5.55);
  // 40 rank-4 LoRA steps must take at least 0.5 nats off its validation loss
  // (measured: 5.65 -> 4.83; a broken gradient or optimizer leaves it flat).
  EXPECT_LT(r->final_val_loss, r->first_val_loss - 0.5)
      << r->first_val_loss << " -> " << r->final_val_loss;
  EXPECT_TRUE(fs::exists(out + "/adapter/adapter_config.json"));
  auto st = SafetensorsFile::Open(out + "/adapter/adapter_model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  // The exported B of layer 1 q_proj equals the trained weights.
  const LoraModule* q = (*t)->adapter()->module(1, Proj::kQ);
  std::vector<float> b(static_cast<size_t>(q->b.numel()));
  ASSERT_TRUE((*st)->ReadF32(LoraAdapter::PeftKey(1, Proj::kQ, true), q->b.shape, b.data()).ok());
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], q->b.data[i]);
  // metrics.jsonl: step 0 eval + one line per step.
  std::ifstream m(out + "/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(m, l);) ++lines;
  EXPECT_EQ(lines, 41);
}

TEST(Trainer, ResumeContinuesBitForBit) {
  const std::string full = Root() + "/full", part = Root() + "/part";
  auto a = Make(LoraSpec(full, 12, 4));
  ASSERT_TRUE(a.ok()) << a.status();
  auto ra = (*a)->Run();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_EQ(ra->step_losses.size(), 12u);

  // Same job, stopped after step 6 (as SIGTERM does): checkpoint at 6.
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(LoraSpec(part, 12, 4));
  ASSERT_TRUE(spec.ok());
  TrainerOptions o;
  o.quiet = true;
  Trainer* raw = nullptr;
  o.on_progress = [&](const TrainProgress& p) {
    if (p.step == 6) raw->RequestStop();
  };
  auto b = Trainer::Create(*spec, o);
  ASSERT_TRUE(b.ok()) << b.status();
  raw = b->get();
  auto rb = (*b)->Run();
  ASSERT_TRUE(rb.ok()) << rb.status();
  ASSERT_EQ(rb->steps, 6);
  EXPECT_FALSE(fs::exists(part + "/adapter")) << "a stopped run exports nothing";

  auto c = Make(LoraSpec(part, 12, 4), /*resume=*/true);
  ASSERT_TRUE(c.ok()) << c.status();
  auto rc = (*c)->Run();
  ASSERT_TRUE(rc.ok()) << rc.status();
  ASSERT_EQ(rc->step_losses.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(rb->step_losses[i], ra->step_losses[i]) << "step " << i + 1;
    EXPECT_EQ(rc->step_losses[i], ra->step_losses[i + 6]) << "step " << i + 7;  // bitwise
  }
  EXPECT_EQ(rc->final_val_loss, ra->final_val_loss);
}

TEST(Trainer, CorruptNewestCheckpointFallsBackToPrevious) {
  const std::string out = Root() + "/corrupt";
  auto a = Make(LoraSpec(out, 8, 4));
  ASSERT_TRUE(a.ok());
  auto ra = (*a)->Run();
  ASSERT_TRUE(ra.ok()) << ra.status();
  const std::string newest = CheckpointDir(out + "/checkpoints", 5).PathForStep(8);
  ASSERT_TRUE(fs::exists(newest));
  fs::resize_file(newest, fs::file_size(newest) / 2);  // truncated
  // Resuming the same 8-step job now restarts from step 4 and redoes 5..8.
  auto c = Make(LoraSpec(out, 8, 4), /*resume=*/true);
  ASSERT_TRUE(c.ok()) << c.status();
  auto rc = (*c)->Run();
  ASSERT_TRUE(rc.ok()) << rc.status();
  ASSERT_EQ(rc->step_losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(rc->step_losses[i], ra->step_losses[i + 4]);
}

TEST(Trainer, ResumeRefusesASpecThatTrainsSomethingElse) {
  const std::string out = Root() + "/changed";
  auto a = Make(LoraSpec(out, 4, 2));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->Run().ok());
  // Same parameter shapes (the optimizer layout matches), different scale.
  auto b = Make(LoraSpec(out, 8, 2), /*resume=*/true, {"lora.adapter.alpha=64"});
  ASSERT_TRUE(b.ok()) << b.status();
  auto r = (*b)->Run();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("lora differs"), std::string::npos) << r.status();
  // The refused spec did not replace the run's spec.yaml.
  std::ifstream spec_file(out + "/spec.yaml");
  std::stringstream text;
  text << spec_file.rdbuf();
  EXPECT_EQ(text.str().find("alpha: 64"), std::string::npos);
  // Changing only the step budget is fine.
  auto c = Make(LoraSpec(out, 8, 2), /*resume=*/true);
  ASSERT_TRUE(c.ok());
  auto rc = (*c)->Run();
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(rc->step_losses.size(), 4u);
}

TEST(Trainer, RefusesToOverwriteARunWithoutResume) {
  const std::string out = Root() + "/twice";
  auto a = Make(LoraSpec(out, 2, 1));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->Run().ok());
  auto b = Make(LoraSpec(out, 2, 1));
  ASSERT_FALSE(b.ok());
  EXPECT_NE(std::string(b.status().message()).find("--resume"), std::string::npos);
}

// Each bad spec is a clear error naming the problem, and nothing is written.
void ExpectBadSpec(const std::string& yaml, const std::vector<std::string>& overrides,
                   const std::string& needle) {
  const std::string out = Root() + "/bad";
  fs::remove_all(out);
  auto t = Make(yaml, false, overrides);
  ASSERT_FALSE(t.ok()) << "accepted: " << needle;
  EXPECT_NE(std::string(t.status().message()).find(needle), std::string::npos) << t.status();
  EXPECT_FALSE(fs::exists(out)) << "output dir written for: " << needle;
}

TEST(Trainer, BadSpecsFailCleanlyAndWriteNothing) {
  const std::string out = Root() + "/bad";
  const std::string good = LoraSpec(out, 2, 1);
  ExpectBadSpec(good + "optimizr: {lr: 1}\n", {}, "optimizr");
  ExpectBadSpec(good, {"optimizer.lr=-0.001"}, "optimizer.lr");
  ExpectBadSpec(good, {"data.train=[" + Root() + "/no_such_dir]"}, "no_such_dir");
  const std::string empty = Root() + "/empty_corpus";
  fs::create_directories(empty);
  std::ofstream(empty + "/blank.txt") << "   \n\n";
  ExpectBadSpec(good, {"data.train=[" + empty + "]"}, "empty_corpus");
  ExpectBadSpec(good, {"base_model=" + Root() + "/nope"}, "nope");
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream text;
  text << f.rdbuf();
  return text.str();
}

// Bug: a non-finite gradient norm was stepped on and logged as
// `"grad_norm": nan` (not JSON). Now the update is skipped, counted, and
// every metrics line parses.
TEST(Trainer, NonFiniteGradientNormSkipsTheStepAndLogsJson) {
  const std::string out = Root() + "/nan_grad";
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(LoraSpec(out, 6, 3));
  ASSERT_TRUE(spec.ok());
  TrainerOptions o;
  o.quiet = true;
  o.inspect_gradients = [](int64_t step, const std::vector<ParamRef>& params) {
    if (step == 2) params[0].grad[0] = std::numeric_limits<float>::infinity();
  };
  auto t = Trainer::Create(*spec, o);
  ASSERT_TRUE(t.ok()) << t.status();
  auto r = (*t)->Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 6);
  std::istringstream lines(ReadFile(out + "/metrics.jsonl"));
  int n = 0, skipped = 0;
  for (std::string l; std::getline(lines, l); ++n) {
    absl::StatusOr<Json> j = Json::Parse(l);
    ASSERT_TRUE(j.ok()) << "not JSON: " << l;
    if (j->Find("skipped") != nullptr) {
      ++skipped;
      EXPECT_EQ(j->Find("step")->as_int64(), 3) << l;
      EXPECT_EQ(j->Find("grad_norm"), nullptr) << l;
      EXPECT_EQ(j->Find("skipped_steps")->as_int64(), 1) << l;
    } else if (n > 0) {
      EXPECT_TRUE(std::isfinite(j->Find("grad_norm")->as_double())) << l;
    }
  }
  EXPECT_EQ(n, 7);
  EXPECT_EQ(skipped, 1);
  absl::StatusOr<Json> summary = Json::Parse(ReadFile(out + "/summary.json"));
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(summary->Find("skipped_steps")->as_int64(), 1);
}

TEST(Trainer, GradientsNonFiniteStepAfterStepFailTheJob) {
  const std::string out = Root() + "/nan_always";
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(LoraSpec(out, 20, 10));
  ASSERT_TRUE(spec.ok());
  TrainerOptions o;
  o.quiet = true;
  o.inspect_gradients = [](int64_t step, const std::vector<ParamRef>& params) {
    if (step >= 1) params[1].grad[0] = std::numeric_limits<float>::quiet_NaN();
  };
  auto t = Trainer::Create(*spec, o);
  ASSERT_TRUE(t.ok()) << t.status();
  auto r = (*t)->Run();
  ASSERT_FALSE(r.ok());
  const std::string msg(r.status().message());
  EXPECT_NE(msg.find(absl::StrCat("in ", jobs::kMaxConsecutiveSkippedSteps, " consecutive steps")),
            std::string::npos) << msg;
  EXPECT_NE(msg.find(absl::StrCat("step ", 1 + jobs::kMaxConsecutiveSkippedSteps, ":")),
            std::string::npos) << msg;
}

// Bug: summary.json formatted the export path with %s (no escaping).
TEST(Trainer, SummaryIsJsonWhateverThePath) {
  const std::string out = Root() + "/odd \"name\" \\ dir";
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(LoraSpec(Root() + "/unused", 2, 1));
  ASSERT_TRUE(spec.ok());
  spec->set_output_dir(out);
  TrainerOptions o;
  o.quiet = true;
  auto t = Trainer::Create(*spec, o);
  ASSERT_TRUE(t.ok()) << t.status();
  auto r = (*t)->Run();
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string text = ReadFile(out + "/summary.json");
  absl::StatusOr<Json> summary = Json::Parse(text);
  ASSERT_TRUE(summary.ok()) << text;
  EXPECT_EQ(summary->Find("export")->as_string(), out + "/adapter");
  EXPECT_EQ(summary->Find("steps")->as_int64(), 2);
  EXPECT_NE(text.find("\"final_val_ppl\": "), std::string::npos);
}

// Bug: the worker wrote spec.yaml and the trainer overwrote it at once. The
// recipe owns it: a fresh output_dir gets it at setup (with the caller's
// origin line), and a run that restores nothing leaves it alone.
TEST(Trainer, SpecYamlIsWrittenOnceByTheRecipe) {
  const std::string out = Root() + "/spec_once";
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(LoraSpec(out, 2, 1));
  ASSERT_TRUE(spec.ok());
  TrainerOptions o;
  o.quiet = true;
  o.resume = true;  // as the worker runs every job
  o.spec_origin = "of job j-42";
  auto t = Trainer::Create(*spec, o);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string path = out + "/spec.yaml";
  ASSERT_TRUE(fs::exists(path)) << "written at setup";
  const std::string first = ReadFile(path);
  EXPECT_EQ(first.rfind("# Resolved job spec (defaults applied) of job j-42; `sheaf train --resume ", 0), 0u)
      << first;
  const auto written = fs::last_write_time(path);
  ASSERT_TRUE((*t)->Run().ok());
  EXPECT_EQ(fs::last_write_time(path), written) << "rewritten without a restored checkpoint";
  EXPECT_EQ(ReadFile(path), first);
  // The spec parses back to what ran.
  absl::StatusOr<proto::JobSpec> again = ParseJobSpecFile(path, {});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->output_dir(), out);
}

TEST(Trainer, TheRegistryMakesTheRecipeOfTheSpecsKind) {
  const std::string out = Root() + "/registry";
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(LoraSpec(out, 2, 1));
  ASSERT_TRUE(spec.ok());
  TrainerOptions o;
  o.quiet = true;
  absl::StatusOr<std::unique_ptr<jobs::Recipe>> recipe = jobs::CreateRecipe(*spec, o);
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  EXPECT_NE(dynamic_cast<Trainer*>(recipe->get()), nullptr);
  EXPECT_EQ((*recipe)->total_steps(), 2);
  auto r = (*recipe)->Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(fs::exists(out + "/adapter/adapter_config.json"));
  const std::vector<std::string> names = jobs::RecipeRegistry::Global().Names();
  // Every kind's recipe the build links (reclora's too); lora and pretrain first.
  ASSERT_GE(names.size(), 2u);
  EXPECT_EQ(std::vector<std::string>(names.begin(), names.begin() + 2),
            (std::vector<std::string>{"lora", "pretrain"}));
  proto::JobSpec none = *spec;
  none.clear_lora();
  absl::StatusOr<std::unique_ptr<jobs::Recipe>> refused = jobs::CreateRecipe(none, o);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("lora, pretrain"), std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace sheaf
