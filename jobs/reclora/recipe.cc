// The `reclora` recipe (proto RecLoraJob; docs/reclora.md).
//
// Phases, both resuming bit for bit:
//   1. CRM: DIN on the whole train split (core/crm/crm_train.h; its own
//      checkpoints in output_dir/crm_checkpoints), written to
//      output_dir/crm.sheafckpt; skipped when reclora.crm.file is given (it
//      is loaded and copied there) or reclora.crm.untrained (the random
//      init is written).
//      Rank 0 trains; every rank then loads the file.
//   2. LLM: the bank and its gates on the Few2Many subset; the CRM frozen.
//      Step s reads global batch s mod S of epoch s / S (S = floor(subset /
//      batch_size); the seeded order of core/crm EpochOrder), each rank its
//      1/W slice. Bank and gate gradients are summed over the ranks (two
//      all-reduces, purpose adapter_grad: the gates are trainable tensors
//      outside the model, which the platform's reducer does not see), then
//      clipped together and stepped by one AdamW. Checkpoints (output_dir/
//      checkpoints) hold `bank`, `gates`, `optimizer`, `step`, `spec`.
// Export: output_dir/reclora/{bank,gates}.safetensors + reclora.json (or
// adapter/ in PEFT layout for plain_lora) and output_dir/eval_report.json:
// AUC, LogLoss, accuracy of the LLM and of the CRM alone per split.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/rng.h"
#include "base/status.h"
#include "core/checkpoint.h"
#include "core/crm/crm_train.h"
#include "core/safetensors.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "jobs/metrics.h"
#include "jobs/reclora/parts.h"
#include "jobs/recipe.h"
#include "jobs/state.h"
#include "jobs/world_sync.h"
#include "ops/cpu/ops.h"

namespace sheaf::reclora {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string MetricsJson(const crm::BinaryMetrics& m) {
  return absl::StrCat("{\"auc\": ", m.auc, ", \"logloss\": ", m.logloss,
                      ", \"accuracy\": ", m.accuracy, ", \"count\": ", m.count, "}");
}

class RecloraRecipe : public jobs::Recipe {
 public:
  absl::Status Setup(const proto::JobSpec& spec_in) override {
    spec_ = spec_in;
    ApplyDefaults(&spec_);
    RETURN_IF_ERROR(ValidateJobSpec(spec_));
    RETURN_IF_ERROR(CheckSpecPaths(spec_));
    if (!spec_.has_reclora()) return absl::UnimplementedError("this recipe runs `reclora` jobs");
    ops::SetNumThreads(spec_.train().threads());
    world_ = std::make_unique<jobs::WorldSync>(options_.comm);
    if (!world_->is_root()) options_.quiet = true;
    const int W = world_->world_size();
    if (spec_.train().batch_size() % W != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "train.batch_size: ", spec_.train().batch_size(), " samples cannot be split evenly over ",
          W, " ranks (batch_size is the global batch)"));
    }
    ASSIGN_OR_RETURN(parts_, BuildParts(spec_, options_.comm, options_.gather_budget_bytes));
    const int64_t B = spec_.train().batch_size();
    const int64_t n = static_cast<int64_t>(parts_->subset.size());
    if (n < B) {
      return absl::InvalidArgumentError(absl::StrCat("reclora.train_subset: ", n,
                                                     " samples, fewer than train.batch_size ", B));
    }
    steps_per_epoch_ = n / B;
    total_steps_ = spec_.train().max_steps() > 0
                       ? spec_.train().max_steps()
                       : std::max<int64_t>(1, spec_.train().epochs() * steps_per_epoch_);
    AdamWOptions ao;
    ao.lr = static_cast<float>(spec_.optimizer().lr());
    ao.beta1 = static_cast<float>(spec_.optimizer().beta1());
    ao.beta2 = static_cast<float>(spec_.optimizer().beta2());
    ao.eps = static_cast<float>(spec_.optimizer().eps());
    ao.weight_decay = static_cast<float>(spec_.optimizer().weight_decay());
    ASSIGN_OR_RETURN(AdamW adam, AdamW::Create(TrainableRefs(), ao));
    optimizer_ = std::make_unique<AdamW>(std::move(adam));
    schedule_.peak = ao.lr;
    schedule_.warmup_steps = spec_.schedule().warmup_steps();
    schedule_.total_steps = total_steps_;
    schedule_.min_ratio = static_cast<float>(spec_.schedule().min_lr_ratio());

    Arena& bank = parts_->bank->params();
    state_.AddTensor("bank", std::span<float>(bank.data(), static_cast<size_t>(bank.size())));
    if (parts_->gates) {
      Arena& g = parts_->gates->params();
      state_.AddTensor("gates", std::span<float>(g.data(), static_cast<size_t>(g.size())));
    }
    state_.AddStepAndOptimizer("step", &step_, "optimizer", optimizer_.get());
    state_.AddBytes("spec", [this] { return JobSpecToYaml(spec_); }, nullptr);
    metrics_ = std::make_unique<jobs::MetricsSink>(spec_.output_dir(), world_->is_root());

    const std::string out = spec_.output_dir();
    const bool has_checkpoints = fs::exists(out + "/checkpoints") && !fs::is_empty(out + "/checkpoints");
    if (!options_.resume && has_checkpoints) {
      return absl::AlreadyExistsError(absl::StrCat(
          "output_dir: ", out, " already holds checkpoints of a run; resume it with "
          "`sheaf train --resume ", out, "` or choose another output_dir"));
    }
    absl::Status prepared = absl::OkStatus();
    if (world_->is_root()) {
      std::error_code ec;
      fs::create_directories(out + "/checkpoints", ec);
      if (ec) {
        prepared = absl::PermissionDeniedError(absl::StrCat("output_dir: cannot create ", out,
                                                            ": ", ec.message()));
      } else {
        prepared = WriteFileAtomically(
            out + "/spec.yaml",
            absl::StrCat("# Resolved job spec (defaults applied)", options_.spec_origin.empty() ? "" : " ",
                         options_.spec_origin, "; `sheaf train --resume ", out, "` reads it.\n",
                         JobSpecToYaml(spec_)));
      }
    }
    return world_->AgreeOnStatus(prepared, "preparing output_dir");
  }

  absl::StatusOr<int64_t> LoadCheckpoint() override {
    auto restore = [&]() -> absl::StatusOr<int64_t> {
      CheckpointDir dir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints());
      ASSIGN_OR_RETURN(auto latest, dir.LoadLatest(nullptr));
      if (!latest) return 0;
      const Checkpoint& c = latest->second;
      ASSIGN_OR_RETURN(std::string_view saved, c.Bytes("spec"));
      auto saved_spec = ParseJobSpecYaml(saved);
      if (saved_spec.ok()) {
        ApplyDefaults(&*saved_spec);
        if (saved_spec->reclora().SerializeAsString() != spec_.reclora().SerializeAsString() ||
            saved_spec->base_model() != spec_.base_model() || saved_spec->seed() != spec_.seed() ||
            saved_spec->train().batch_size() != spec_.train().batch_size()) {
          return absl::FailedPreconditionError(absl::StrCat(
              c.path(), ": reclora, base_model, seed or train.batch_size differs from the run "
              "that wrote this checkpoint (start a new output_dir instead)"));
        }
      }
      RETURN_IF_ERROR(state_.Restore(c));
      if (world_->is_root() && !options_.quiet) {
        std::fprintf(stderr, "resumed from %s (step %lld)\n", c.path().c_str(),
                     static_cast<long long>(step_));
      }
      return step_;
    };
    absl::StatusOr<int64_t> restored = restore();
    RETURN_IF_ERROR(world_->AgreeOnStatus(restored.status(), "restoring the checkpoint"));
    ASSIGN_OR_RETURN(bool same, world_->AllEqual(*restored));
    if (!same) return absl::FailedPreconditionError("ranks restored different checkpoints");
    return *restored;
  }

  absl::StatusOr<TrainResult> Train(int64_t start_step) override {
    RETURN_IF_ERROR(CrmPhase());
    TrainResult result;
    RETURN_IF_ERROR(metrics_->TruncateAfter(start_step));
    const int W = world_->world_size(), rank = world_->world_rank();
    const int64_t B = spec_.train().batch_size(), Bl = B / W;
    const int64_t n = static_cast<int64_t>(parts_->subset.size());
    if (!options_.quiet) {
      std::fprintf(stderr,
                   "reclora: %lld steps x %lld samples (subset %lld of %zu train); %s, N=%d; "
                   "%lld trainable parameters%s\n",
                   static_cast<long long>(total_steps_), static_cast<long long>(B),
                   static_cast<long long>(n), parts_->data.split(crm::Split::kSplitTrain).size(),
                   spec_.reclora().plain_lora() ? "plain LoRA" : spec_.reclora().mixing().c_str(),
                   spec_.reclora().plain_lora() ? 1 : spec_.reclora().num_experts(),
                   static_cast<long long>(NumTrainable()),
                   start_step > 0 ? absl::StrCat(", resuming at step ", start_step).c_str() : "");
    }
    std::vector<ParamRef> refs = TrainableRefs();
    std::vector<int32_t> order;
    int64_t order_epoch = -1;
    int64_t step = start_step, steps_this_run = 0;
    bool stop = false;
    while (step < total_steps_ && !stop) {
      const auto t0 = Clock::now();
      const int64_t epoch = step / steps_per_epoch_, pos = step % steps_per_epoch_;
      if (epoch != order_epoch) {
        order = crm::EpochOrder(n, spec_.seed(), epoch);
        order_epoch = epoch;
      }
      std::vector<crm::CtrSample> batch;
      for (int64_t i = pos * B + rank * Bl; i < pos * B + (rank + 1) * Bl; ++i) {
        batch.push_back(parts_->subset[static_cast<size_t>(order[static_cast<size_t>(i)])]);
      }
      parts_->bank->grads().Zero();
      if (parts_->gates) parts_->gates->grads().Zero();
      const uint64_t seed = SplitMix64(spec_.seed() * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(step)) ^
                            static_cast<uint64_t>(rank);
      ASSIGN_OR_RETURN(BatchResult br, RunBatch(*parts_, batch, true, seed, true,
                                                1.0f / static_cast<float>(B)));
      double loss[1] = {br.stats.loss_sum};
      RETURN_IF_ERROR(world_->Sum(absl::MakeSpan(loss, 1)));
      RETURN_IF_ERROR(ReduceGrads());
      const float norm = ClipGradNorm(refs, static_cast<float>(spec_.train().grad_clip()));
      const float lr = schedule_.At(step);
      const bool skipped = !std::isfinite(norm);
      if (!skipped) optimizer_->Step(lr);
      ++step;
      ++steps_this_run;
      const double mean = loss[0] / static_cast<double>(B);
      result.step_losses.push_back(mean);
      result.final_train_loss = mean;
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      jobs::MetricValues line = {{"step", static_cast<double>(step)}, {"loss", mean}, {"lr", lr},
                                 {"samples_per_s", static_cast<double>(B) / std::max(dt, 1e-9)}};
      if (skipped) line["skipped"] = 1; else line["grad_norm"] = norm;
      RETURN_IF_ERROR(metrics_->Append(line));
      if (!options_.quiet && (step % std::max(1, spec_.train().log_every()) == 0 || step == total_steps_)) {
        std::fprintf(stderr, "step %lld/%lld loss %.4f lr %.2e grad_norm %.3f %.1f samples/s\n",
                     static_cast<long long>(step), static_cast<long long>(total_steps_), mean, lr,
                     norm, static_cast<double>(B) / std::max(dt, 1e-9));
      }
      if (options_.on_progress && world_->is_root()) {
        TrainProgress progress;
        progress.step = step;
        progress.total_steps = total_steps_;
        progress.loss = mean;
        progress.lr = lr;
        progress.grad_norm = norm;
        // Prompt tokens are not a fixed count here: the rate is samples/s.
        progress.tokens_per_s = static_cast<double>(B) / std::max(dt, 1e-9);
        progress.eta_s = dt * static_cast<double>(total_steps_ - step);
        options_.on_progress(progress);
      }
      jobs::Vote stop_vote(stop_.load());
      RETURN_IF_ERROR(world_->Tally({&stop_vote}));
      stop = stop_vote.any();
      const int64_t every = spec_.train().checkpoint_every();
      if ((every > 0 && step % every == 0) || step == total_steps_ || stop) {
        RETURN_IF_ERROR(SaveCheckpoint(step));
      }
    }
    result.steps = step;
    result.steps_this_run = steps_this_run;
    if (step < total_steps_ && world_->is_root()) {
      std::fprintf(stderr, "stopped at step %lld (checkpoint saved; resume with --resume)\n",
                   static_cast<long long>(step));
    }
    return result;
  }

  absl::Status SaveCheckpoint(int64_t step) override {
    RETURN_IF_ERROR(world_->Barrier());
    if (!world_->is_root()) return world_->AgreeOnStatus(absl::OkStatus(), "writing the checkpoint");
    auto write = [&]() -> absl::Status {
      step_ = step;
      CheckpointWriter w;
      RETURN_IF_ERROR(state_.Save(w));
      CheckpointDir dir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints());
      return dir.Save(step, w);
    };
    return world_->AgreeOnStatus(write(), "writing the checkpoint");
  }

  absl::Status Export(TrainResult* result) override {
    // Evaluation runs on every rank (sharded frozen weights gather
    // collectively); rank 0 writes.
    const proto::RecLoraJob& r = spec_.reclora();
    std::string json = "{";
    bool first = true;
    for (crm::Split sp : {crm::Split::kSplitVal, crm::Split::kSplitTest}) {
      std::vector<crm::CtrSample> eval =
          SeededSubset(parts_->data.split(sp), r.eval_samples(), spec_.seed() + 1);
      ASSIGN_OR_RETURN(crm::BinaryMetrics llm, EvaluateLlm(*parts_, eval, static_cast<int>(spec_.train().batch_size())));
      ASSIGN_OR_RETURN(crm::BinaryMetrics crm_m, crm::EvaluateCrm(parts_->data, *parts_->crm, eval, r.crm().history()));
      // The answer's mean cross-entropy on validation is this job's val loss.
      if (sp == crm::Split::kSplitVal) result->final_val_loss = llm.logloss;
      absl::StrAppend(&json, first ? "" : ", ", "\"", crm::SplitName(sp), "\": {\"llm\": ",
                      MetricsJson(llm), ", \"crm\": ", MetricsJson(crm_m), "}");
      first = false;
      if (!options_.quiet) {
        std::fprintf(stderr, "%s (%lld samples): LLM AUC %.4f LogLoss %.4f acc %.4f | CRM AUC %.4f LogLoss %.4f acc %.4f\n",
                     crm::SplitName(sp), static_cast<long long>(llm.count), llm.auc, llm.logloss,
                     llm.accuracy, crm_m.auc, crm_m.logloss, crm_m.accuracy);
      }
    }
    absl::StrAppend(&json, ", \"train_subset\": ", parts_->subset.size(), ", \"steps\": ",
                    result->steps, "}\n");
    if (!world_->is_root()) return absl::OkStatus();
    const std::string out = spec_.output_dir();
    RETURN_IF_ERROR(WriteFileAtomically(out + "/eval_report.json", json));
    const std::string base_name = spec_.base_model();
    if (r.plain_lora()) {
      result->export_dir = out + "/adapter";
      return parts_->bank->SavePeft(result->export_dir, base_name);
    }
    result->export_dir = out + "/reclora";
    std::error_code ec;
    fs::create_directories(result->export_dir, ec);
    // bank.safetensors: per module `<PEFT module>.lora_A_cat` [N·r, in] and
    // `.lora_B_cat` [out, N·r] (expert k in rows / columns [k·r, (k+1)·r)).
    SafetensorsWriter bank;
    std::vector<std::vector<int64_t>> shapes;
    shapes.reserve(64);
    for (int l = 0; l < parts_->bank->num_layers(); ++l) {
      for (int p = 0; p < kNumProj; ++p) {
        const LoraModule* m = parts_->bank->module(l, static_cast<Proj>(p));
        if (m == nullptr) continue;
        bank.Add(m->name + ".lora_A_cat", m->a.shape, m->a.data);
        bank.Add(m->name + ".lora_B_cat", m->b.shape, m->b.data);
      }
    }
    RETURN_IF_ERROR(bank.Write(result->export_dir + "/bank.safetensors",
                               {{"format", "sheaf-reclora-bank-v1"}}));
    // gates.safetensors: gate g (the g-th bank module, layer-major, Proj
    // order) as gate.<g>.{ln.weight, ln.bias, fc1.weight, fc1.bias,
    // fc2.weight, fc2.bias}.
    SafetensorsWriter gates;
    Arena& ga = parts_->gates->params();
    for (int s = 0; s < ga.num_slots(); ++s) gates.Add(ga.name(s), ga.view(s).shape, ga.view(s).data);
    RETURN_IF_ERROR(gates.Write(result->export_dir + "/gates.safetensors",
                                {{"format", "sheaf-reclora-gates-v1"}}));
    return WriteFileAtomically(
        result->export_dir + "/reclora.json",
        absl::StrCat("{\"num_experts\": ", r.num_experts(), ", \"rank\": ", r.adapter().rank(),
                     ", \"alpha\": ", r.adapter().alpha(), ", \"temperature\": ", r.temperature(),
                     ", \"mixing\": \"", r.mixing(), "\", \"gate_input\": \"", r.gate_input(),
                     "\", \"gate_in_dim\": ", parts_->gate_in_dim, ", \"gate_hidden\": ",
                     r.gate_hidden(), ", \"crm\": \"../crm.sheafckpt\"}\n"));
  }

  absl::Status Cleanup(const TrainResult& result) override {
    return metrics_->WriteSummary({{"steps", static_cast<double>(result.steps)},
                                   {"final_train_loss", result.final_train_loss}},
                                  {{"export", result.export_dir}});
  }

  void RequestStop() override { stop_ = true; }
  int64_t total_steps() const override { return total_steps_; }
  const proto::JobSpec& spec() const override { return spec_; }

 private:
  std::vector<ParamRef> TrainableRefs() {
    std::vector<ParamRef> refs;
    LoraAdapter& a = *parts_->bank;
    for (int i = 0; i < a.params().num_slots(); ++i) {
      refs.push_back({"bank." + a.params().name(i), a.params().view(i).data,
                      a.grads().view(i).data, a.params().view(i).numel(), true});
    }
    if (parts_->gates) {
      for (const ParamRef& g : parts_->gates->ParamRefs()) refs.push_back(g);
    }
    return refs;
  }
  int64_t NumTrainable() {
    int64_t n = 0;
    for (const ParamRef& r : TrainableRefs()) n += r.size;
    return n;
  }

  // Sums bank and gate gradients over the world (the gates' are outside the
  // model, so the platform's GradReducer never sees them).
  absl::Status ReduceGrads() {
    if (options_.comm == nullptr || world_->world_size() == 1) return absl::OkStatus();
    std::vector<Arena*> arenas = {&parts_->bank->grads()};
    if (parts_->gates) arenas.push_back(&parts_->gates->grads());
    for (Arena* a : arenas) {
      auto work = options_.comm->AllReduce(a->data(), a->size(), dist::ReduceOp::kReduceSum,
                                           dist::Purpose::kPurposeAdapterGrad);
      RETURN_IF_ERROR(work->Wait(std::chrono::minutes(5)));
    }
    return absl::OkStatus();
  }

  absl::Status CrmPhase() {
    const proto::CrmSpec& c = spec_.reclora().crm();
    const std::string out = spec_.output_dir(), file = out + "/crm.sheafckpt";
    if (!c.file().empty()) {
      absl::Status s = crm::LoadCrm(*parts_->crm, c.file());
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat("reclora.crm.file: ", s.message()));
      // The job's outputs stay self-contained (export-user reads this copy).
      absl::Status copied = world_->is_root() ? crm::SaveCrm(*parts_->crm, file) : absl::OkStatus();
      RETURN_IF_ERROR(world_->AgreeOnStatus(copied, "copying the CRM"));
    } else if (!fs::exists(file)) {
      absl::Status trained = absl::OkStatus();
      if (world_->is_root()) {
        auto run = [&]() -> absl::Status {
          if (!c.untrained()) {
            crm::CrmTrainOptions o;
            o.epochs = c.epochs();
            o.batch_size = c.batch_size();
            o.history = c.history();
            o.lr = static_cast<float>(c.lr());
            o.seed = spec_.seed();
            o.checkpoint_dir = out + "/crm_checkpoints";
            o.checkpoint_every = 100;
            ASSIGN_OR_RETURN(crm::CrmTrainReport rep,
                             crm::TrainCrm(parts_->data, *parts_->crm, o, [&](int64_t s, double l) {
                               if (!options_.quiet && s % 100 == 0) {
                                 std::fprintf(stderr, "crm step %lld loss %.4f\n",
                                              static_cast<long long>(s), l);
                               }
                             }));
            if (rep.resumed_from >= 0 && !options_.quiet) {
              std::fprintf(stderr, "crm: resumed at step %lld\n", static_cast<long long>(rep.resumed_from));
            }
          }
          return crm::SaveCrm(*parts_->crm, file);
        };
        trained = run();
      }
      RETURN_IF_ERROR(world_->AgreeOnStatus(trained, "training the CRM"));
      RETURN_IF_ERROR(crm::LoadCrm(*parts_->crm, file));
    } else {
      RETURN_IF_ERROR(crm::LoadCrm(*parts_->crm, file));
    }
    return absl::OkStatus();
  }

  proto::JobSpec spec_;
  std::unique_ptr<jobs::WorldSync> world_;
  std::unique_ptr<Parts> parts_;
  std::unique_ptr<AdamW> optimizer_;
  LrSchedule schedule_;
  jobs::CheckpointState state_;
  std::unique_ptr<jobs::MetricsSink> metrics_;
  int64_t step_ = 0, total_steps_ = 0, steps_per_epoch_ = 1;
  std::atomic<bool> stop_{false};
};

[[maybe_unused]] const bool kRegistered = jobs::RecipeRegistry::Global().Register(
    proto::JobSpec::kReclora, "reclora", [] { return std::make_unique<RecloraRecipe>(); });

}  // namespace
}  // namespace sheaf::reclora
