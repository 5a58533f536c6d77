// The langadapt recipe on a tiny random 4-layer model and three made-up
// "languages" (word lists), 4 steps each: layer selection, frozen layers,
// merge against `sheaf merge`'s arithmetic on the exported adapters, stack
// without gradients into earlier adapters, the matrix against a separate
// evaluation of each exported stage, and resume after a stop inside the
// second language.
#include "jobs/langadapt_recipe.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/data/document_source.h"
#include "core/data/token_corpus.h"
#include "core/data/tokenizer.h"
#include "core/json.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/spec/yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/evaluation.h"
#include "jobs/world_sync.h"
#include "dist/thread_communicator.h"
#include <thread>

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string Tmp() { return getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp"; }

ModelConfig Config() {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_layers = 4;
  c.head_dim = 8;
  c.vocab_size = 258;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = true;
  c.layers.assign(4, LayerShape{4, 2, 64});
  return c;
}

void WriteText(const std::string& dir, const std::vector<std::string>& words, uint32_t seed, int docs) {
  fs::create_directories(dir);
  std::mt19937 rng(seed);
  for (int d = 0; d < docs; ++d) {
    std::string text;
    for (int w = 0; w < 120; ++w) text += words[rng() % words.size()] + " ";
    std::ofstream(dir + "/doc" + std::to_string(d) + ".txt") << text;
  }
}

// A base model and data shared by every test (made once).
struct Fixture {
  std::string base, data;
  Fixture() {
    const std::string root = Tmp() + "/langadapt_fixture";
    base = root + "/base";
    data = root + "/data";
    if (fs::exists(base + "/model.safetensors")) return;
    auto m = Model::Create(Config(), NothingTrainable).value();
    m->InitRandom(3, 0.05f);
    EXPECT_TRUE(m->Save(base).ok());
    const std::vector<std::string> en = {"the", "file", "is", "read", "option", "mode"};
    const std::vector<std::string> aa = {"het", "bestand", "wordt", "gelezen", "optie"};
    const std::vector<std::string> bb = {"plik", "jest", "czytany", "opcja", "tryb"};
    WriteText(data + "/en/val", en, 1, 2);
    WriteText(data + "/aa/train", aa, 2, 8);
    WriteText(data + "/aa/val", aa, 3, 2);
    WriteText(data + "/bb/train", bb, 4, 8);
    WriteText(data + "/bb/val", bb, 5, 2);
  }
};
const Fixture& F() {
  static const Fixture* f = new Fixture();
  return *f;
}

proto::JobSpec Spec(const std::string& out, const std::vector<std::string>& overrides = {}) {
  bool full_weights = false;  // cpt / layer_cpt: no adapter section
  for (const std::string& o : overrides) full_weights |= o.find("cpt") != std::string::npos;
  const std::string yaml = absl::StrCat(R"(
base_model: )", F().base, R"(
output_dir: )", out, R"(
seed: 7
optimizer: {lr: 5.0e-3}
train: {batch_size: 4, checkpoint_every: 3, keep_checkpoints: 0, threads: 1}
langadapt:
  languages:
    - {name: aa, train: [)", F().data, "/aa/train], val: [", F().data, R"(/aa/val]}
    - {name: bb, train: [)", F().data, "/bb/train], val: [", F().data, R"(/bb/val]}
  supported:
    - {name: en, val: [)", F().data, R"(/en/val]}
  steps_per_language: 4
  seq_len: 32
  keep_stage_models: true
)", full_weights ? "" : "  adapter: {rank: 4, alpha: 8}\n");
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml, overrides);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

std::unique_ptr<LangAdaptRecipe> Make(const proto::JobSpec& spec, bool resume = false) {
  auto r = std::make_unique<LangAdaptRecipe>();
  TrainerOptions o;
  o.quiet = true;
  o.resume = resume;
  absl::Status s = RecipeRegistry::SetUp(*r, spec, o);
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? std::move(r) : nullptr;
}

std::string Out(const std::string& name) {
  const std::string d = Tmp() + "/langadapt_" + name;
  fs::remove_all(d);
  return d;
}

std::unique_ptr<Model> Load(const std::string& dir) {
  auto m = Model::Create(Config(), NothingTrainable).value();
  EXPECT_TRUE(m->LoadWeights(dir).ok());
  return m;
}

bool SameBits(const Param& a, const Param& b) {
  return a.value.numel() == b.value.numel() &&
         std::memcmp(a.value.data, b.value.data, static_cast<size_t>(a.value.numel()) * sizeof(float)) == 0;
}

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(LangAdaptLayersTest, DefaultsFollowDepth) {
  proto::LangAdaptJob j;
  j.set_method(proto::LangAdaptJob::METHOD_LAYRA);
  EXPECT_EQ(LangAdaptLayers(j, 8).value(), (std::vector<int>{0, 1, 7}));  // 2.4 -> 2 first, 0.48 -> 1 last
  EXPECT_EQ(LangAdaptLayers(j, 32).value(),
            (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 31}));  // 9.6 -> 10, 1.92 -> 2
  EXPECT_EQ(LangAdaptLayers(j, 2).value(), (std::vector<int>{0, 1}));
  j.set_method(proto::LangAdaptJob::METHOD_LAYER_CPT);
  j.set_layer_fraction(0.5);
  EXPECT_EQ(LangAdaptLayers(j, 8).value(), (std::vector<int>{0, 1, 6, 7}));  // n = 2*floor(2) = 4
  j.set_layer_fraction(0.3);
  EXPECT_EQ(LangAdaptLayers(j, 8).value(), (std::vector<int>{0, 7}));  // n = 2*floor(1.2) = 2
  j.set_first_layers(3);
  j.set_last_layers(0);
  EXPECT_EQ(LangAdaptLayers(j, 8).value(), (std::vector<int>{0, 1, 2}));
  j.set_first_layers(6);
  j.set_last_layers(3);
  EXPECT_THAT(LangAdaptLayers(j, 8).status().message(), HasSubstr("more than the model's 8 layers"));
  proto::LangAdaptJob e;
  e.set_method(proto::LangAdaptJob::METHOD_LAYRA);
  e.add_layers(5);
  e.add_layers(8);
  EXPECT_THAT(LangAdaptLayers(e, 8).status().message(), HasSubstr("langadapt.layers[1]: layer 8 does not exist"));
  e.set_method(proto::LangAdaptJob::METHOD_LORA);
  EXPECT_EQ(LangAdaptLayers(e, 3).value(), (std::vector<int>{0, 1, 2}));
}

TEST(LangAdaptRecipeTest, LayraMergeMatchesSheafMergeAndSeparateEvals) {
  const std::string out = Out("merge");
  auto r = Make(Spec(out));
  ASSERT_NE(r, nullptr);
  // L = 4: first max(1, round(1.2)) = 1, last max(1, round(0.24)) = 1.
  EXPECT_EQ(r->layers(), (std::vector<int>{0, 3}));
  for (int l = 0; l < 4; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const bool selected = l == 0 || l == 3;
      EXPECT_EQ(r->current_adapter()->module(l, static_cast<Proj>(p)) != nullptr, selected) << l << " " << p;
    }
  }
  std::unique_ptr<Model> base = Load(F().base);
  // The reference chain: base_{i+1} = base_i + ΔW_i from the exported
  // adapter files, merged as `sheaf merge` merges them.
  std::unique_ptr<Model> reference = Load(F().base);
  int phases_seen = 0;
  r->set_after_phase([&](int64_t phase, Model& stage) {
    ++phases_seen;
    const std::string name = phase == 0 ? "aa" : "bb";
    auto adapter = LoraAdapter::LoadPeft(out + "/adapters/" + name, Config());
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    ASSERT_TRUE(reference->MergeAdapter(**adapter).ok());
    std::vector<Param*> got = stage.weights().all(), want = reference->weights().all(),
                        orig = base->weights().all();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(SameBits(*got[i], *want[i])) << "phase " << phase << " " << got[i]->name;
      const bool in_selected = got[i]->name.starts_with("model.layers.0.") ||
                               got[i]->name.starts_with("model.layers.3.");
      const bool is_proj = got[i]->name.ends_with("_proj.weight");
      // Frozen layers (and norms, embeddings) are the base's, bit for bit;
      // the selected projections did change.
      if (!(in_selected && is_proj)) {
        EXPECT_TRUE(SameBits(*got[i], *orig[i])) << "phase " << phase << " " << got[i]->name;
      } else {
        EXPECT_FALSE(SameBits(*got[i], *orig[i])) << "phase " << phase << " " << got[i]->name;
      }
    }
  });
  absl::StatusOr<TrainResult> res = r->Run();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(phases_seen, 2);
  EXPECT_EQ(res->steps, 8);
  const LangAdaptMatrix& m = r->matrix();
  ASSERT_EQ(m.loss.size(), 3u);
  EXPECT_EQ(m.languages, (std::vector<std::string>{"en", "aa", "bb"}));
  // Each language improves in its own phase.
  EXPECT_LT(m.loss[1][1], m.loss[0][1]);
  EXPECT_LT(m.loss[2][2], m.loss[1][2]);
  // The matrix equals a separate evaluation (the one `sheaf eval` runs:
  // batch 8, the val text packed alone) of each exported stage: same model
  // bits, same sequences, same summation order, so exactly equal.
  const std::vector<std::string> stages = {F().base, out + "/stages/0-aa", out + "/stages/1-bb"};
  const std::vector<std::string> vals = {F().data + "/en/val", F().data + "/aa/val", F().data + "/bb/val"};
  for (size_t s = 0; s < stages.size(); ++s) {
    std::unique_ptr<Model> stage = Load(stages[s]);
    for (size_t c = 0; c < vals.size(); ++c) {
      ByteTokenizer tok;
      auto docs = LoadDocuments({DocumentSource{vals[c]}}).value();
      std::shared_ptr<const TokenCorpus> corpus(InMemoryCorpus::FromDocuments(docs, tok).value());
      DatasetOptions o;
      o.seq_len = 32;
      auto ds = Dataset::Create(o, corpus, corpus).value();
      EvalOptions eo;
      eo.batch_size = 8;
      WorldSync one(nullptr);
      const double want = EvaluateLoss(*stage, nullptr, *ds, eo, one).value().mean();
      EXPECT_EQ(m.loss[s][c], want) << "stage " << s << " language " << m.languages[c];
    }
  }
  // The final model is the last stage; the files are there.
  EXPECT_EQ(FileBytes(out + "/model/model.safetensors"), FileBytes(out + "/stages/1-bb/model.safetensors"));
  auto json = Json::Parse(FileBytes(out + "/langadapt_matrix.json"));
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->GetString("method").value(), "layra");
  EXPECT_THAT(FileBytes(out + "/langadapt_matrix.md"), HasSubstr("| +bb |"));
  EXPECT_THAT(FileBytes(out + "/summary.json"), HasSubstr("mean_supported_forgetting"));
  EXPECT_THAT(FileBytes(out + "/metrics.jsonl"), HasSubstr("\"val_loss/bb\""));
  EXPECT_THAT(FileBytes(out + "/adapters/bb/adapter_config.json"), HasSubstr("+ adapters/aa"));
}

TEST(LangAdaptRecipeTest, StackGivesEarlierAdaptersNoGradient) {
  const std::string out = Out("stack");
  auto r = Make(Spec(out, {"langadapt.between=stack"}));
  ASSERT_NE(r, nullptr);
  std::vector<float> first_params;
  int checked = 0;
  r->set_after_step([&](int64_t step) {
    const LoraAdapter& first = *r->finished_adapters()[0];
    if (step == 4) {
      first_params.assign(first.params().data(), first.params().data() + first.params().size());
    } else if (step > 4) {
      ++checked;
      const float* g = const_cast<LoraAdapter&>(first).grads().data();
      for (int64_t i = 0; i < first.params().size(); ++i) ASSERT_EQ(g[i], 0.0f) << "grad " << i;
      ASSERT_EQ(std::memcmp(first.params().data(), first_params.data(), first_params.size() * sizeof(float)), 0);
      // The trainable one did get a gradient.
      const float* cg = r->current_adapter()->grads().data();
      bool any = false;
      for (int64_t i = 0; i < r->current_adapter()->grads().size(); ++i) any |= cg[i] != 0.0f;
      ASSERT_TRUE(any);
    }
  });
  std::unique_ptr<Model> base = Load(F().base);
  ASSERT_TRUE(r->Run().ok());
  EXPECT_EQ(checked, 4);
  // The frozen base never changed under a stack.
  std::vector<Param*> got = r->model().weights().all(), orig = base->weights().all();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(SameBits(*got[i], *orig[i])) << got[i]->name;
  // The exported model is the base with both adapters merged.
  std::unique_ptr<Model> ref = Load(F().base);
  ASSERT_TRUE(ref->MergeAdapter(*LoraAdapter::LoadPeft(out + "/adapters/aa", Config()).value()).ok());
  ASSERT_TRUE(ref->MergeAdapter(*LoraAdapter::LoadPeft(out + "/adapters/bb", Config()).value()).ok());
  std::unique_ptr<Model> exported = Load(out + "/model");
  std::vector<Param*> e = exported->weights().all(), w = ref->weights().all();
  for (size_t i = 0; i < e.size(); ++i) EXPECT_TRUE(SameBits(*e[i], *w[i])) << e[i]->name;
}

TEST(LangAdaptRecipeTest, LayerCptTrainsOnlyTheSelectedLayers) {
  const std::string out = Out("layer_cpt");
  auto r = Make(Spec(out, {"langadapt.method=layer_cpt", "langadapt.layers=[1]"}));
  ASSERT_NE(r, nullptr);
  std::unique_ptr<Model> base = Load(F().base);
  r->set_after_phase([&](int64_t phase, Model& stage) {
    std::vector<Param*> got = stage.weights().all(), orig = base->weights().all();
    for (size_t i = 0; i < got.size(); ++i) {
      const bool selected = got[i]->name.starts_with("model.layers.1.");
      EXPECT_EQ(SameBits(*got[i], *orig[i]), !selected) << "phase " << phase << " " << got[i]->name;
    }
  });
  ASSERT_TRUE(r->Run().ok());
  EXPECT_EQ(r->current_adapter(), nullptr);
  EXPECT_FALSE(fs::exists(out + "/adapters"));
}

TEST(LangAdaptRecipeTest, ResumeInsideTheSecondLanguageGivesTheSameMatrix) {
  for (const char* method : {"layra", "cpt"}) {
    std::vector<std::string> set = {std::string("langadapt.method=") + method};
    const std::string a = Out(std::string("resume_a_") + method), b = Out(std::string("resume_b_") + method);
    auto whole = Make(Spec(a, set));
    ASSERT_NE(whole, nullptr);
    ASSERT_TRUE(whole->Run().ok());
    // Stopped after step 6 (the 2nd language's 2nd step; the checkpoint
    // of step 3 is in the first language, that of step 6 in the second).
    auto first = Make(Spec(b, set));
    ASSERT_NE(first, nullptr);
    first->set_after_step([&](int64_t step) {
      if (step == 6) first->RequestStop();
    });
    absl::StatusOr<TrainResult> part = first->Run();
    ASSERT_TRUE(part.ok()) << part.status();
    EXPECT_EQ(part->steps, 6);
    EXPECT_EQ(first->phases_done(), 1);
    first.reset();
    auto again = Make(Spec(b, set), /*resume=*/true);
    ASSERT_NE(again, nullptr);
    absl::StatusOr<TrainResult> rest = again->Run();
    ASSERT_TRUE(rest.ok()) << rest.status();
    EXPECT_EQ(rest->steps_this_run, 2);
    EXPECT_EQ(again->matrix().loss, whole->matrix().loss) << method;
    EXPECT_EQ(FileBytes(a + "/model/model.safetensors"), FileBytes(b + "/model/model.safetensors")) << method;
    EXPECT_EQ(FileBytes(a + "/langadapt_matrix.json"), FileBytes(b + "/langadapt_matrix.json")) << method;
  }
}

TEST(LangAdaptRecipeTest, InstructionResidualIsTheArithmeticSum) {
  const std::string out = Out("residual");
  // An "instruct" model: the base with some change (another random init).
  const std::string instruct = Out("instruct_model_src");
  {
    auto m = Model::Create(Config(), NothingTrainable).value();
    m->InitRandom(99, 0.05f);
    ASSERT_TRUE(m->Save(instruct).ok());
  }
  auto r = Make(Spec(out, {"langadapt.instruction_residual.instruct=" + instruct,
                           "langadapt.instruction_residual.lambda=0.5"}));
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->Run().ok());
  std::unique_ptr<Model> adapted = Load(out + "/model"), base = Load(F().base), ins = Load(instruct),
                         got = Load(out + "/instruct_model");
  std::vector<Param*> g = got->weights().all(), a = adapted->weights().all(), b = base->weights().all(),
                      in = ins->weights().all();
  for (size_t i = 0; i < g.size(); ++i) {
    for (int64_t k = 0; k < g[i]->value.numel(); ++k) {
      const float want = a[i]->value.data[k] + 0.5f * (in[i]->value.data[k] - b[i]->value.data[k]);
      // The same fp32 expression; a compiler may contract it into an FMA,
      // which changes the last bit at most (values ~0.1: 1e-7 is ~2 ulp).
      ASSERT_NEAR(g[i]->value.data[k], want, 1e-7) << g[i]->name;
    }
  }
}

TEST(LangAdaptRecipeTest, TwoRanksTrainAsOne) {
  // Rank 0 of a 2-thread world against one rank: the same batches split in
  // halves, gradients summed over the world, so the same losses up to fp32
  // summation order (relative 1e-4 over 8 steps of a tiny model; the
  // platform's trainer_dist_test uses the same bound), and both ranks agree
  // bit for bit.
  auto one = Make(Spec(Out("one_rank"), {"langadapt.between=stack"}));
  ASSERT_NE(one, nullptr);
  absl::StatusOr<TrainResult> single = one->Run();
  ASSERT_TRUE(single.ok()) << single.status();
  const std::string out = Out("two_ranks");
  dist::ThreadWorld world(2);
  std::vector<std::vector<double>> losses(2);
  std::vector<std::vector<std::vector<double>>> matrices(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto recipe = std::make_unique<LangAdaptRecipe>();
      TrainerOptions o;
      o.quiet = true;
      o.comm = world.rank(r);
      absl::Status s = RecipeRegistry::SetUp(*recipe, Spec(out, {"langadapt.between=stack"}), o);
      ASSERT_TRUE(s.ok()) << s;
      absl::StatusOr<TrainResult> res = recipe->Run();
      ASSERT_TRUE(res.ok()) << res.status();
      losses[static_cast<size_t>(r)] = res->step_losses;
      matrices[static_cast<size_t>(r)] = recipe->matrix().loss;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(matrices[0], matrices[1]);
  ASSERT_EQ(losses[0].size(), single->step_losses.size());
  for (size_t i = 0; i < losses[0].size(); ++i) {
    EXPECT_NEAR(losses[0][i], single->step_losses[i], 1e-4 * single->step_losses[i]) << "step " << i + 1;
  }
  ASSERT_EQ(matrices[0].size(), one->matrix().loss.size());
  for (size_t r = 0; r < matrices[0].size(); ++r) {
    for (size_t c = 0; c < matrices[0][r].size(); ++c) {
      EXPECT_NEAR(matrices[0][r][c], one->matrix().loss[r][c], 1e-4 * one->matrix().loss[r][c]);
    }
  }
  EXPECT_GT(world.rank(0)->bytes_sent(dist::Purpose::kPurposeAdapterGrad), 0);
}

TEST(LangAdaptRecipeTest, SetupErrorsNameTheField) {
  auto r = std::make_unique<LangAdaptRecipe>();
  TrainerOptions o;
  o.quiet = true;
  absl::Status s = RecipeRegistry::SetUp(*r, Spec(Out("bad"), {"langadapt.layers=[9]"}), o);
  EXPECT_THAT(s.message(), HasSubstr("langadapt.layers[0]: layer 9 does not exist"));
  s = RecipeRegistry::SetUp(*r, Spec(Out("bad"), {"langadapt.seq_len=100"}), o);
  EXPECT_THAT(s.message(), HasSubstr("langadapt.seq_len: 100 exceeds"));
}

}  // namespace
}  // namespace sheaf::jobs
