// QLoRAM: the loram pipeline with loram.quantize: nf4 on models/tiny-en
// (small, fast settings, no alignment): the NF4 file is written and holds
// the small model's projections, the train phase's frozen bytes are the NF4
// ones, the recovered adapter is for the full f32 model, a stop inside the
// train phase resumes to the same recovered adapter bit for bit, and two
// ranks (NF4 shards gathered as bytes) give one rank's result.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "base/file.h"
#include "base/status.h"
#include "core/json.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/quant/nf4_file.h"
#include "core/spec/yaml.h"
#include "dist/thread_communicator.h"
#include "gtest/gtest.h"
#include "jobs/recipe.h"
#include "jobs/test_support.h"

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;

using ::sheaf::jobs::testing::WriteCorpus;

std::string Spec(const std::string& out, const std::string& task, const std::string& general,
                 const std::string& quantize = "nf4") {
  return absl::StrCat(R"(
name: qloram-test
base_model: models/tiny-en
output_dir: )", out, R"(
seed: 3
data: {train: [)", task, R"(], seq_len: 32}
optimizer: {lr: 1.0e-3}
train: {batch_size: 4, max_steps: 6, eval_every: 0, eval_batches: 2, checkpoint_every: 2, threads: 1}
loram:
  quantize: )", quantize, R"(
  prune: {ratio: 0.5, method: stru, calibration: {data: [)", general, R"(], samples: 4, seq_len: 32}}
  eval: {data: [)", general, R"(], max_sequences: 8}
)");
}

absl::StatusOr<TrainResult> RunJob(const std::string& yaml, const TrainerOptions& base,
                                   std::unique_ptr<Recipe>* keep) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) return spec.status();
  TrainerOptions o = base;
  o.quiet = true;
  absl::StatusOr<std::unique_ptr<Recipe>> r = CreateRecipe(*spec, o);
  if (!r.ok()) return r.status();
  *keep = std::move(*r);
  return (*keep)->Run();
}

std::string ReadAll(const std::string& path) {
  absl::StatusOr<std::string> s = ReadFileToString(path);
  return s.ok() ? *s : "";
}

int64_t TrainFrozenBytes(const std::string& out) {
  absl::StatusOr<Json> report = Json::Parse(ReadAll(out + "/loram_report.json"));
  if (!report.ok()) return -1;
  return report->Find("phases")->Find("train")->Find("frozen_bytes")->as_int64();
}

class Qloram : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    task_ = WriteCorpus("qtask", 1);
    general_ = WriteCorpus("qgeneral", 2);
    ref_ = (fs::path(::testing::TempDir()) / "qloram_ref").string();
    std::unique_ptr<Recipe> r;
    ref_result_ = RunJob(Spec(ref_, task_, general_), {}, &r);
  }
  static std::string task_, general_, ref_;
  static absl::StatusOr<TrainResult> ref_result_;
};
std::string Qloram::task_, Qloram::general_, Qloram::ref_;
absl::StatusOr<TrainResult> Qloram::ref_result_ = absl::UnknownError("not run");

TEST_F(Qloram, Nf4FileReportAndRecoveredAdapter) {
  ASSERT_TRUE(ref_result_.ok()) << ref_result_.status();
  // The NF4 file holds exactly the small model's projection matrices.
  absl::StatusOr<std::vector<quant::Nf4Tensor>> nf4 = quant::ReadNf4File(ref_ + "/nf4/model.nf4.safetensors");
  ASSERT_TRUE(nf4.ok()) << nf4.status();
  absl::StatusOr<ModelConfig> small = LoadModelConfig(ref_ + "/pruned");
  ASSERT_TRUE(small.ok());
  std::vector<std::string> want;
  int64_t proj_elems = 0;
  for (const ExpectedTensor& e : ExpectedTensors(*small)) {
    if (e.shape.size() == 2 && e.name.rfind("model.layers.", 0) == 0) {
      want.push_back(e.name);
      proj_elems += e.shape[0] * e.shape[1];
    }
  }
  ASSERT_EQ(nf4->size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ((*nf4)[i].name, want[i]);
  // The small model trained with NF4 projections: its frozen bytes are
  // the f32 rest (embedding, norms) plus 36 bytes per 64 projection weights
  // (4.5 / 32 of f32), up to per-tensor block and 64-byte slot padding.
  const int64_t rest_bytes = (small->NumParams() - proj_elems) * 4;
  const int64_t frozen = TrainFrozenBytes(ref_);
  EXPECT_GE(frozen, rest_bytes + proj_elems / 2);
  EXPECT_LE(frozen, rest_bytes + proj_elems * 36 / 64 + 200 * 64 * 2);
  EXPECT_LT(frozen * 5, small->NumParams() * 4);  // vs the same small model in f32
  absl::StatusOr<Json> report = Json::Parse(ReadAll(ref_ + "/loram_report.json"));
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->Find("quantize")->as_string(), "nf4");
  EXPECT_GT(report->Find("nf4_file_bytes")->as_int64(), proj_elems / 2);
  // The recovered adapter is for the full model and changes its loss.
  absl::StatusOr<ModelConfig> full = LoadModelConfig("models/tiny-en");
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(LoraAdapter::LoadPeft(ref_ + "/adapter", *full).ok());
  const Json& eval = *report->Find("eval");
  const double full_loss = eval.Find("full_recovered")->Find("val")->Find("loss")->as_double();
  const double base_loss = eval.Find("base")->Find("val")->Find("loss")->as_double();
  const double small_loss = eval.Find("small_adapter")->Find("val")->Find("loss")->as_double();
  EXPECT_TRUE(std::isfinite(full_loss) && std::isfinite(small_loss));
  EXPECT_NE(full_loss, base_loss);
  std::printf("qloram: train frozen bytes %lld (small f32 %lld); val loss base %.4f, full+recovered "
              "%.4f, nf4 small+adapter %.4f\n",
              static_cast<long long>(frozen), static_cast<long long>(small->NumParams() * 4), base_loss,
              full_loss, small_loss);
}

// A stop at step 4 of the 6 train steps, then a resume: the same recovered
// adapter, bit for bit, as the uninterrupted run (NF4 quantisation on load
// is deterministic, so the resumed phase trains on the same bytes).
TEST_F(Qloram, ResumesInsideTrainBitExact) {
  ASSERT_TRUE(ref_result_.ok()) << ref_result_.status();
  const std::string cut = (fs::path(::testing::TempDir()) / "qloram_cut").string();
  int stops = 0;
  Recipe* current = nullptr;
  for (int attempt = 0; attempt < 2; ++attempt) {
    TrainerOptions o;
    o.resume = attempt > 0;
    o.on_progress = [&](const TrainProgress& p) {
      if (stops == 0 && p.total_steps == 6 && p.step == 4) {
        ++stops;
        current->RequestStop();
      }
    };
    absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(Spec(cut, task_, general_));
    ASSERT_TRUE(spec.ok());
    o.quiet = true;
    absl::StatusOr<std::unique_ptr<Recipe>> rec = CreateRecipe(*spec, o);
    ASSERT_TRUE(rec.ok()) << rec.status();
    current = rec->get();
    absl::StatusOr<TrainResult> res = (*rec)->Run();
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_EQ(res->steps, attempt == 0 ? 2 : (*rec)->total_steps()) << "attempt " << attempt;
  }
  EXPECT_EQ(stops, 1);
  const std::string a = ReadAll(ref_ + "/adapter/adapter_model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == ReadAll(cut + "/adapter/adapter_model.safetensors"))
      << "the resumed run's recovered adapter differs";
  EXPECT_EQ(ReadAll(ref_ + "/nf4/model.nf4.safetensors"), ReadAll(cut + "/nf4/model.nf4.safetensors"));
}

// NF4 is what trains: the same job with quantize: none ends with another
// adapter and about seven times the train phase's frozen bytes.
TEST_F(Qloram, DiffersFromLoramWithF32Frozen) {
  ASSERT_TRUE(ref_result_.ok()) << ref_result_.status();
  const std::string none = (fs::path(::testing::TempDir()) / "qloram_none").string();
  std::unique_ptr<Recipe> r;
  ASSERT_TRUE(RunJob(Spec(none, task_, general_, "none"), {}, &r).ok());
  EXPECT_FALSE(fs::exists(none + "/nf4"));
  EXPECT_NE(ReadAll(ref_ + "/adapter/adapter_model.safetensors"),
            ReadAll(none + "/adapter/adapter_model.safetensors"));
  EXPECT_LT(TrainFrozenBytes(ref_) * 5, TrainFrozenBytes(none));
}

// Two ranks (threads): the small model's NF4 projections sharded by bytes
// and gathered as bytes; the final loss equals one rank's up to the
// reassociation of cross-rank sums (as loram_recipe_test: 1e-4 absolute).
TEST_F(Qloram, TwoRanksMatchOneRank) {
  ASSERT_TRUE(ref_result_.ok()) << ref_result_.status();
  const std::string two = (fs::path(::testing::TempDir()) / "qloram_two").string();
  dist::ThreadWorld world(2);
  std::vector<double> val(2, -1);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      TrainerOptions o;
      o.comm = world.rank(rank);
      std::unique_ptr<Recipe> rec;
      absl::StatusOr<TrainResult> res = RunJob(Spec(two, task_, general_), o, &rec);
      ASSERT_TRUE(res.ok()) << res.status();
      val[static_cast<size_t>(rank)] = res->final_val_loss;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(val[0], val[1]) << "ranks disagree";
  EXPECT_NEAR(val[0], ref_result_->final_val_loss, 1e-4);
}

}  // namespace
}  // namespace sheaf::jobs
