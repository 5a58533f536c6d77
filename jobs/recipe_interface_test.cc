// A test-only recipe showing that the recipe interface carries what the
// coming job kinds need (langadapt's phases, loram's second model,
// reclora's gate), on models/tiny-en:
//
//   phase 0  trains LoRA adapter X and a scalar gate g on model M1, over
//            dataset D0 (cursor "cursor.phase0");
//   phase 1  keeps training both over dataset D1 (its own cursor);
//   cleanup  evaluates model M2 (tiny-en with g·X merged into its weights,
//            no adapter) on two named validation sets.
//
// The gate g lives outside the model and the adapter: the forward uses an
// effective adapter with A = A_X and B = g·B_X, so the loss genuinely
// depends on g. Its gradient comes from the chain rule (dL/dg = Σ B_X ⊙
// dL/dB_eff, dL/dB_X = g·dL/dB_eff), checked below by central differences.
// g is registered with the optimizer and the checkpoint ("extra.gate"), and
// a run stopped in either phase resumes bit for bit.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/checkpoint.h"
#include "core/spec/validate.h"
#include "core/status.h"
#include "core/spec/yaml.h"
#include "gtest/gtest.h"
#include "jobs/build.h"
#include "jobs/evaluation.h"
#include "jobs/metrics.h"
#include "jobs/recipe.h"
#include "jobs/seeds.h"
#include "jobs/state.h"
#include "jobs/train_loop.h"
#include "jobs/world_sync.h"

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;

class GatedTwoPhaseRecipe : public Recipe {
 public:
  static constexpr int64_t kPhase0Steps = 4;

  absl::Status Setup(const proto::JobSpec& spec_in) override {
    spec_ = spec_in;
    ApplyDefaults(&spec_);
    RETURN_IF_ERROR(ValidateJobSpec(spec_));
    world_ = std::make_unique<WorldSync>(options_.comm);
    ASSIGN_OR_RETURN(config_, ModelConfigForSpec(spec_));
    ASSIGN_OR_RETURN(data0_, BuildData(spec_, config_));
    // Phase 1 reads the same corpus in another order (its own dataset).
    proto::JobSpec phase1 = spec_;
    phase1.set_seed(spec_.seed() + 1);
    ASSIGN_OR_RETURN(data1_, BuildData(phase1, config_));
    ASSIGN_OR_RETURN(m1_, BuildModel(spec_, config_, {}));
    if (m1_.adapter == nullptr) return absl::InvalidArgumentError("needs a lora spec");
    ASSIGN_OR_RETURN(effective_, LoraAdapter::Create(
                                     config_, LoraOptionsFromSpec(spec_.lora().adapter(), spec_.seed())));
    // X's B starts at zero (PEFT's init); g then has no gradient at step 0.
    gate_ = {1.0f};
    gate_grad_ = {0.0f};
    LoraAdapter& x = *m1_.adapter;
    std::vector<ParamRef> refs;
    for (int i = 0; i < x.params().num_slots(); ++i) {
      const Tensor v = x.params().view(i), g = x.grads().view(i);
      refs.push_back({x.params().name(i), v.data, g.data, v.numel(), true});
    }
    refs.push_back({"extra.gate", gate_.data(), gate_grad_.data(), 1, false});
    AdamWOptions ao;
    ao.lr = static_cast<float>(spec_.optimizer().lr());
    ASSIGN_OR_RETURN(AdamW adam, AdamW::Create(refs, ao));
    optimizer_ = std::make_unique<AdamW>(std::move(adam));
    LoopOptions lo;
    lo.batch_size = spec_.train().batch_size();
    lo.seq_len = spec_.data().seq_len();
    lo.grad_accum = spec_.train().grad_accum();
    lo.grad_clip = static_cast<float>(spec_.train().grad_clip());
    lo.schedule.peak = ao.lr;
    lo.schedule.total_steps = total_steps();
    lo.seed = spec_.seed();
    loop_ = std::make_unique<TrainLoop>(m1_.model.get(), effective_.get(), optimizer_.get(), nullptr,
                                        world_.get(), lo);
    loop_->set_micro_step([this](int64_t step, int64_t m, const int32_t* in, const int32_t* tg, int B,
                                 int T, float scale) -> absl::StatusOr<LossStats> {
      effective_->set_dropout_seed(DropoutSeed(spec_.seed(), step * spec_.train().grad_accum() + m));
      return GatedForwardBackward(in, tg, B, T, scale);
    });
    state_.AddTensor("adapter.x", std::span<float>(x.params().data(), static_cast<size_t>(x.params().size())));
    state_.AddTensor("extra.gate", std::span<float>(gate_));
    state_.AddStepAndOptimizer("step", &step_, "optimizer", optimizer_.get());
    state_.AddInt("phase", &phase_);
    state_.AddCursor("cursor.phase0", data0_.dataset.get(), &cursor0_);
    state_.AddCursor("cursor.phase1", data1_.dataset.get(), &cursor1_);
    metrics_ = std::make_unique<MetricsSink>(spec_.output_dir(), world_->is_root());
    fs::create_directories(spec_.output_dir() + "/checkpoints");
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> LoadCheckpoint() override {
    CheckpointDir dir(spec_.output_dir() + "/checkpoints", 0);
    ASSIGN_OR_RETURN(auto latest, dir.LoadLatest(nullptr));
    if (!latest) return 0;
    RETURN_IF_ERROR(state_.Restore(latest->second));
    return step_;
  }

  absl::StatusOr<TrainResult> Train(int64_t start) override {
    TrainResult result;
    int64_t step = start;
    while (step < total_steps() && !stop_) {
      phase_ = step < kPhase0Steps ? 0 : 1;
      ASSIGN_OR_RETURN(StepResult s, phase_ == 0 ? loop_->Step(step, *data0_.dataset, &cursor0_)
                                                 : loop_->Step(step, *data1_.dataset, &cursor1_));
      ++step;
      ++result.steps_this_run;
      result.step_losses.push_back(s.loss);
      gates_.push_back(gate_[0]);
      RETURN_IF_ERROR(metrics_->Append({{"step", static_cast<double>(step)},
                                        {"phase", static_cast<double>(phase_)},
                                        {"loss", s.loss},
                                        {"gate", gate_[0]}}));
      if (options_.on_progress) {
        TrainProgress p;
        p.step = step;
        options_.on_progress(p);
      }
      if (stop_ || step == total_steps()) RETURN_IF_ERROR(SaveCheckpoint(step));
    }
    result.steps = step;
    return result;
  }

  absl::Status SaveCheckpoint(int64_t step) override {
    step_ = step;
    CheckpointWriter w;
    RETURN_IF_ERROR(state_.Save(w));
    return CheckpointDir(spec_.output_dir() + "/checkpoints", 0).Save(step, w);
  }

  absl::Status Export(TrainResult* result) override {
    SyncEffective();
    result->export_dir = spec_.output_dir() + "/adapter";
    return effective_->SavePeft(result->export_dir, spec_.base_model());
  }

  // The second model: the base with g·X merged in, evaluated without adapter.
  absl::Status Cleanup(const TrainResult& result) override {
    ASSIGN_OR_RETURN(m2_, Model::Create(config_, NothingTrainable));
    RETURN_IF_ERROR(m2_->LoadWeights(spec_.base_model()));
    RETURN_IF_ERROR(m2_->MergeAdapter(*effective_));
    EvalOptions eo;
    eo.batch_size = spec_.train().batch_size();
    eo.max_sequences = 16;  // enough to compare M1 and M2; keeps the test quick
    ASSIGN_OR_RETURN(m2_losses_, EvaluateSets(*m2_, nullptr,
                                              {{"phase0", data0_.dataset.get()},
                                               {"phase1", data1_.dataset.get()}},
                                              eo, *world_));
    MetricValues summary = {{"steps", static_cast<double>(result.steps)}};
    for (const auto& [name, loss] : m2_losses_) summary["m2_" + name + "_val_loss"] = loss;
    return metrics_->WriteSummary(summary, {{"export", result.export_dir}});
  }

  void RequestStop() override { stop_ = true; }
  int64_t total_steps() const override { return spec_.train().max_steps(); }
  const proto::JobSpec& spec() const override { return spec_; }

  // For the checks below.
  float gate() const { return gate_[0]; }
  void set_gate(float g) { gate_[0] = g; }
  const std::vector<float>& gates() const { return gates_; }
  const std::map<std::string, double>& m2_losses() const { return m2_losses_; }
  const CheckpointState& state() const { return state_; }
  // Mean validation loss of M1 with the effective adapter (phase-0 data).
  absl::StatusOr<double> M1Loss() {
    SyncEffective();
    EvalOptions eo;
    eo.batch_size = spec_.train().batch_size();
    eo.max_sequences = 16;  // enough to compare M1 and M2; keeps the test quick
    ASSIGN_OR_RETURN(auto l, EvaluateSets(*m1_.model, effective_.get(), {{"v", data0_.dataset.get()}},
                                          eo, *world_));
    return l.at("v");
  }
  // dL/dg (of the summed loss) on one batch, by the chain rule.
  absl::StatusOr<double> GateGradient(const int32_t* in, const int32_t* tg, int B, int T) {
    gate_grad_[0] = 0;
    m1_.adapter->grads().Zero();
    RETURN_IF_ERROR(GatedForwardBackward(in, tg, B, T, 1.0f).status());
    return gate_grad_[0];
  }
  absl::StatusOr<double> SummedLoss(const int32_t* in, const int32_t* tg, int B, int T) {
    SyncEffective();
    ASSIGN_OR_RETURN(LossStats s, m1_.model->Forward(in, tg, B, T, effective_.get(), false));
    return s.loss_sum;
  }
  LoraAdapter& x() { return *m1_.adapter; }

 private:
  // effective = (A_X, g·B_X).
  void SyncEffective() {
    std::vector<LoraModule*> xs = m1_.adapter->all_modules(), es = effective_->all_modules();
    for (size_t i = 0; i < xs.size(); ++i) {
      std::copy(xs[i]->a.data, xs[i]->a.data + xs[i]->a.numel(), es[i]->a.data);
      for (int64_t j = 0; j < xs[i]->b.numel(); ++j) es[i]->b.data[j] = gate_[0] * xs[i]->b.data[j];
    }
  }

  absl::StatusOr<LossStats> GatedForwardBackward(const int32_t* in, const int32_t* tg, int B, int T,
                                                 float scale) {
    SyncEffective();
    effective_->grads().Zero();
    ASSIGN_OR_RETURN(LossStats s, ForwardBackward(*m1_.model, effective_.get(), in, tg, B, T, scale));
    std::vector<LoraModule*> xs = m1_.adapter->all_modules(), es = effective_->all_modules();
    double dg = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      for (int64_t j = 0; j < xs[i]->a.numel(); ++j) xs[i]->da.data[j] += es[i]->da.data[j];
      for (int64_t j = 0; j < xs[i]->b.numel(); ++j) {
        xs[i]->db.data[j] += gate_[0] * es[i]->db.data[j];
        dg += static_cast<double>(xs[i]->b.data[j]) * es[i]->db.data[j];
      }
    }
    gate_grad_[0] += static_cast<float>(dg);
    return s;
  }

  proto::JobSpec spec_;
  ModelConfig config_;
  std::unique_ptr<WorldSync> world_;
  DataParts data0_, data1_;
  ModelParts m1_;
  std::unique_ptr<Model> m2_;
  std::unique_ptr<LoraAdapter> effective_;
  std::vector<float> gate_, gate_grad_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<TrainLoop> loop_;
  std::unique_ptr<MetricsSink> metrics_;
  CheckpointState state_;
  DataCursor cursor0_, cursor1_;
  int64_t step_ = 0, phase_ = 0;
  bool stop_ = false;
  std::vector<float> gates_;
  std::map<std::string, double> m2_losses_;
};

std::string Root() {
  static const std::string root = [] {
    const std::string r = ::testing::TempDir() + "/recipe_interface_test";
    fs::remove_all(r);
    fs::create_directories(r + "/corpus");
    std::mt19937 rng(8);
    const char* words[] = {"the ", "quick ", "brown ", "fox ", "jumps over ", "the lazy dog.\n"};
    for (int f = 0; f < 24; ++f) {
      std::ofstream out(r + "/corpus/d" + std::to_string(f) + ".txt");
      for (int w = 0; w < 40; ++w) out << words[rng() % 6];
    }
    return r;
  }();
  return root;
}

std::string TinyEn() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return srcdir == nullptr ? "models/tiny-en" : std::string(srcdir) + "/sheaf/models/tiny-en";
}

proto::JobSpec Spec(const std::string& out, double dropout = 0.1) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(
      "base_model: " + TinyEn() + "\noutput_dir: " + out + "\nseed: 4\n"
      "data: {train: [" + Root() + "/corpus], seq_len: 32, val_fraction: 0.2}\n"
      "optimizer: {lr: 0.02}\n"
      "train: {batch_size: 2, grad_accum: 2, max_steps: 8, threads: 1}\n"
      "lora: {adapter: {rank: 4, alpha: 8, dropout: " + std::to_string(dropout) +
      ", targets: [q_proj, v_proj]}}\n");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

// A registry of its own: the interface is what the worker and `sheaf train`
// drive; this recipe is registered for the lora kind here only.
absl::StatusOr<std::unique_ptr<GatedTwoPhaseRecipe>> Make(const std::string& out, bool resume,
                                                          double dropout = 0.1) {
  RecipeRegistry registry;
  registry.Register(proto::JobSpec::kLora, "gated-two-phase",
                    [] { return std::make_unique<GatedTwoPhaseRecipe>(); });
  TrainerOptions o;
  o.resume = resume;
  ASSIGN_OR_RETURN(std::unique_ptr<Recipe> r, registry.Create(Spec(out, dropout), o));
  return std::unique_ptr<GatedTwoPhaseRecipe>(static_cast<GatedTwoPhaseRecipe*>(r.release()));
}

absl::StatusOr<TrainResult> RunStopped(const std::string& out, bool resume, int64_t stop_after) {
  RecipeRegistry registry;
  registry.Register(proto::JobSpec::kLora, "gated-two-phase",
                    [] { return std::make_unique<GatedTwoPhaseRecipe>(); });
  Recipe* self = nullptr;
  TrainerOptions o;
  o.resume = resume;
  o.on_progress = [&self, stop_after](const TrainProgress& p) {
    if (p.step == stop_after) self->RequestStop();
  };
  ASSIGN_OR_RETURN(std::unique_ptr<Recipe> r, registry.Create(Spec(out), o));
  self = r.get();
  return r->Run();
}

TEST(RecipeInterface, PhasesTwoModelsAndAGateResumeBitForBit) {
  const std::string full = Root() + "/full";
  auto a = Make(full, false);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->state().Names(),
            (std::vector<std::string>{"adapter.x", "extra.gate", "optimizer", "phase", "cursor.phase0",
                                      "cursor.phase1"}));
  auto ra = (*a)->Run();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_EQ(ra->step_losses.size(), 8u);
  // The gate trained (it has a gradient once B_X is non-zero, from step 2).
  EXPECT_NE((*a)->gate(), 1.0f);
  // The second model: merging g·X into M2 gives M1 + the effective adapter.
  // Float sums in another order (merged W vs W·x + s·B·A·x): 1e-4 relative
  // of a loss ~1-5 nats.
  ASSERT_EQ((*a)->m2_losses().size(), 2u);
  absl::StatusOr<double> m1 = (*a)->M1Loss();
  ASSERT_TRUE(m1.ok());
  EXPECT_NEAR((*a)->m2_losses().at("phase0"), *m1, 1e-4 * *m1);
  EXPECT_TRUE(fs::exists(full + "/summary.json"));

  // Stopped in phase 0 (step 3) and resumed across the boundary; stopped
  // in phase 1 (step 6) and resumed: bitwise the same losses and gate.
  const std::string part = Root() + "/part";
  auto rb = RunStopped(part, false, 3);
  ASSERT_TRUE(rb.ok()) << rb.status();
  ASSERT_EQ(rb->steps, 3);
  auto rc = RunStopped(part, true, 6);
  ASSERT_TRUE(rc.ok()) << rc.status();
  ASSERT_EQ(rc->steps, 6);
  auto d = Make(part, true);
  ASSERT_TRUE(d.ok()) << d.status();
  auto rd = (*d)->Run();
  ASSERT_TRUE(rd.ok()) << rd.status();
  std::vector<double> resumed = rb->step_losses;
  resumed.insert(resumed.end(), rc->step_losses.begin(), rc->step_losses.end());
  resumed.insert(resumed.end(), rd->step_losses.begin(), rd->step_losses.end());
  ASSERT_EQ(resumed.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(resumed[i], ra->step_losses[i]) << "step " << i + 1;
  EXPECT_EQ((*d)->gate(), (*a)->gate());
  EXPECT_EQ((*d)->m2_losses(), (*a)->m2_losses());
}

TEST(RecipeInterface, GateGradientMatchesCentralDifferences) {
  // Dropout 0: the analytic gradient goes through a training forward, the
  // differences through an evaluation forward; without dropout they agree.
  auto r = Make(Root() + "/fd", false, /*dropout=*/0.0);
  ASSERT_TRUE(r.ok()) << r.status();
  // A non-zero B_X (PEFT starts it at zero, where dL/dg = 0).
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 0.05f);
  for (LoraModule* m : (*r)->x().all_modules()) {
    for (int64_t j = 0; j < m->b.numel(); ++j) m->b.data[j] = n(rng);
  }
  const int B = 2, T = 32;
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) {
    in[static_cast<size_t>(i)] = static_cast<int32_t>(rng() % 256);
    tg[static_cast<size_t>(i)] = static_cast<int32_t>(rng() % 256);
  }
  const float g0 = 0.8f;
  const float h = 1e-2f;
  (*r)->set_gate(g0 + h);
  absl::StatusOr<double> up = (*r)->SummedLoss(in.data(), tg.data(), B, T);
  (*r)->set_gate(g0 - h);
  absl::StatusOr<double> down = (*r)->SummedLoss(in.data(), tg.data(), B, T);
  ASSERT_TRUE(up.ok() && down.ok());
  const double fd = (*up - *down) / (2 * h);
  (*r)->set_gate(g0);
  absl::StatusOr<double> analytic = (*r)->GateGradient(in.data(), tg.data(), B, T);
  ASSERT_TRUE(analytic.ok());
  // Central differences have O(h²) truncation error; with h = 1e-2 on an
  // fp32 loss summed over 64 tokens (~300) the rounding error is ~1e-5·300
  // / 2h ~ 0.15 at worst; the gradient is O(1-100): 2% relative plus 0.2.
  EXPECT_NEAR(*analytic, fd, 0.02 * std::fabs(fd) + 0.2) << "fd " << fd;
  EXPECT_GT(std::fabs(fd), 0.5) << "the loss must depend on the gate";
}

}  // namespace
}  // namespace sheaf::jobs
