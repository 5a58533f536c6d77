#include "jobs/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/checkpoint.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "core/status.h"
#include "jobs/evaluation.h"
#include "base/file.h"
#include "ops/cpu/ops.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string FormatDuration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const int64_t t = static_cast<int64_t>(s);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

void PrintProgress(const TrainProgress& p, bool tty) {
  const double frac = p.total_steps ? static_cast<double>(p.step) / p.total_steps : 1.0;
  if (tty) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>';
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "\r\033[Kstep %lld/%lld [%s] loss %.4f%s | %.0f tok/s | ETA %s",
                 static_cast<long long>(p.step), static_cast<long long>(p.total_steps),
                 bar.c_str(), p.loss,
                 p.val_loss >= 0 ? absl::StrFormat(" val %.4f", p.val_loss).c_str() : "",
                 p.tokens_per_s, FormatDuration(p.eta_s).c_str());
    if (p.step == p.total_steps) std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "step %lld/%lld loss %.4f%s lr %.3g grad_norm %.3f %.0f tok/s ETA %s\n",
                 static_cast<long long>(p.step), static_cast<long long>(p.total_steps), p.loss,
                 p.val_loss >= 0 ? absl::StrFormat(" val_loss %.4f", p.val_loss).c_str() : "",
                 p.lr, p.grad_norm, p.tokens_per_s, FormatDuration(p.eta_s).c_str());
  }
  std::fflush(stderr);
}

bool IsNormOrBias(const std::string& name) {
  return name.find("norm") != std::string::npos || name.ends_with(".bias");
}

}  // namespace

Trainer::Trainer() = default;
Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const proto::JobSpec& spec,
                                                         const TrainerOptions& options) {
  auto t = std::make_unique<Trainer>();
  RETURN_IF_ERROR(jobs::RecipeRegistry::SetUp(*t, spec, options));
  return t;
}

absl::Status Trainer::Setup(const proto::JobSpec& spec_in) {
  spec_ = spec_in;
  proto::JobSpec& spec = spec_;
  ApplyDefaults(&spec);
  RETURN_IF_ERROR(ValidateJobSpec(spec));
  RETURN_IF_ERROR(CheckSpecPaths(spec));
  if (!spec.has_lora() && !spec.has_pretrain()) {
    return absl::UnimplementedError("this recipe runs `lora` and `pretrain` jobs");
  }
  ops::SetNumThreads(spec.train().threads());
  world_ = std::make_unique<jobs::WorldSync>(options_.comm);
  const int world_size = world_->world_size();
  if (!world_->is_root()) options_.quiet = true;
  if (spec.train().batch_size() % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.batch_size: ", spec.train().batch_size(), " sequences cannot be split evenly over ",
        world_size, " ranks (batch_size is the global batch)"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, jobs::ModelConfigForSpec(spec));
  // Data: everything is read and split before any output is written.
  ASSIGN_OR_RETURN(data_, jobs::BuildData(spec, config));

  const int64_t B_global = spec.train().batch_size(), accum = spec.train().grad_accum();
  if (spec.train().max_steps() > 0) {
    total_steps_ = spec.train().max_steps();
  } else {
    total_steps_ = std::max<int64_t>(
        1, spec.train().epochs() * data_.dataset->num_train_sequences() / (B_global * accum));
  }

  jobs::ModelBuildOptions mbo;
  mbo.comm = options_.comm;
  mbo.gather_budget_bytes = options_.gather_budget_bytes;
  mbo.frozen_dtype = options_.frozen_dtype;
  ASSIGN_OR_RETURN(parts_, jobs::BuildModel(spec, config, mbo));
  trainable_params_ = parts_.adapter ? &parts_.adapter->params() : &parts_.model->params_arena();
  AdamWOptions aopt;
  aopt.lr = static_cast<float>(spec.optimizer().lr());
  aopt.beta1 = static_cast<float>(spec.optimizer().beta1());
  aopt.beta2 = static_cast<float>(spec.optimizer().beta2());
  aopt.eps = static_cast<float>(spec.optimizer().eps());
  aopt.weight_decay = static_cast<float>(spec.optimizer().weight_decay());
  if (world_size > 1) {
    dist::GradReducer::Options ro;
    ro.bucket_cap_bytes = options_.bucket_cap_bytes;
    ASSIGN_OR_RETURN(reducer_, dist::GradReducer::Create(parts_.model.get(), parts_.adapter.get(),
                                                         options_.comm, ro));
  }
  ASSIGN_OR_RETURN(AdamW adam, AdamW::Create(TrainableParams(), aopt));
  optimizer_ = std::make_unique<AdamW>(std::move(adam));

  jobs::LoopOptions lo;
  lo.batch_size = B_global;
  lo.seq_len = spec.data().seq_len();
  lo.grad_accum = accum;
  lo.grad_clip = static_cast<float>(spec.train().grad_clip());
  lo.schedule.peak = static_cast<float>(spec.optimizer().lr());
  lo.schedule.warmup_steps = spec.schedule().warmup_steps();
  lo.schedule.total_steps = total_steps_;
  lo.schedule.min_ratio = static_cast<float>(spec.schedule().min_lr_ratio());
  lo.seed = spec.seed();
  loop_ = std::make_unique<jobs::TrainLoop>(parts_.model.get(), parts_.adapter.get(),
                                            optimizer_.get(), reducer_.get(), world_.get(), lo);
  if (options_.inspect_gradients) {
    loop_->set_before_clip([this](int64_t step) {
      options_.inspect_gradients(step, optimizer_->params());
      return absl::OkStatus();
    });
  }

  // What a checkpoint holds (jobs/state.h: the lora/pretrain layout).
  state_.AddTensor("trainable", std::span<float>(trainable_params_->data(),
                                                 static_cast<size_t>(trainable_params_->size())));
  state_.AddStepAndOptimizer("step", &step_, "optimizer", optimizer_.get());
  state_.AddCursor("cursor", data_.dataset.get(), &cursor_);
  state_.AddBytes("spec", [this] { return JobSpecToYaml(spec_); }, nullptr);
  state_.AddInt("skipped_steps", &skipped_steps_, /*optional=*/true);
  metrics_ = std::make_unique<jobs::MetricsSink>(spec.output_dir(), world_->is_root());

  // Only now touch the output dir (rank 0 writes; the others wait).
  const std::string& out = spec.output_dir();
  const std::string ckpt_dir = out + "/checkpoints";
  const bool has_checkpoints = fs::exists(ckpt_dir) && !fs::is_empty(ckpt_dir);
  if (!options_.resume && has_checkpoints) {
    return absl::AlreadyExistsError(absl::StrCat(
        "output_dir: ", out, " already holds checkpoints of a run; resume it with "
        "`sheaf train --resume ", out, "` or choose another output_dir"));
  }
  absl::Status prepared = absl::OkStatus();
  if (world_->is_root()) {
    std::error_code ec;
    fs::create_directories(ckpt_dir, ec);
    if (ec) {
      prepared = absl::PermissionDeniedError(
          absl::StrCat("output_dir: cannot create ", ckpt_dir, ": ", ec.message()));
    } else if (!has_checkpoints) {
      // A resume with checkpoints rewrites it once one is accepted.
      prepared = WriteSpecFile();
    }
  }
  spec_written_ = !has_checkpoints;
  return world_->AgreeOnStatus(prepared, "preparing output_dir");
}

absl::Status Trainer::WriteSpecFile() {
  return WriteFileAtomically(
      spec_.output_dir() + "/spec.yaml",
      absl::StrCat("# Resolved job spec (defaults applied)", options_.spec_origin.empty() ? "" : " ",
                   options_.spec_origin, "; `sheaf train --resume ", spec_.output_dir(),
                   "` reads it.\n", JobSpecToYaml(spec_)));
}

jobs::MetricValues Trainer::CommMetrics() const {
  if (world_->world_size() == 1) return {};
  const dist::Communicator& c = *options_.comm;
  return {{"frozen_gather_bytes", static_cast<double>(c.bytes_sent(dist::Purpose::kPurposeFrozenGather))},
          {"adapter_grad_bytes", static_cast<double>(c.bytes_sent(dist::Purpose::kPurposeAdapterGrad))},
          {"control_bytes", static_cast<double>(c.bytes_sent(dist::Purpose::kPurposeControl))}};
}

std::vector<ParamRef> Trainer::TrainableParams() {
  std::vector<ParamRef> refs;
  if (LoraAdapter* a = parts_.adapter.get()) {
    // Params and grads arenas share one layout, slot for slot.
    for (int i = 0; i < a->params().num_slots(); ++i) {
      const Tensor v = a->params().view(i), g = a->grads().view(i);
      refs.push_back({a->params().name(i), v.data, g.data, v.numel(), true});
    }
  } else {
    for (Param* p : parts_.model->weights().all()) {
      if (p->trainable()) {
        refs.push_back({p->name, p->value.data, p->grad.data, p->value.numel(), !IsNormOrBias(p->name)});
      }
    }
  }
  return refs;
}

absl::StatusOr<double> Trainer::Evaluate() {
  jobs::EvalOptions eo;
  eo.batch_size = spec_.train().batch_size();
  if (spec_.train().eval_batches() > 0) eo.max_sequences = spec_.train().eval_batches() * eo.batch_size;
  ASSIGN_OR_RETURN(auto losses, jobs::EvaluateSets(*parts_.model, parts_.adapter.get(),
                                                   {{"", data_.dataset.get()}}, eo, *world_));
  return losses.at("");
}

absl::Status Trainer::SaveCheckpoint(int64_t step) {
  // One consistent checkpoint: every rank holds the same trainable state,
  // rank 0 writes it while the others wait, and all learn whether it worked.
  RETURN_IF_ERROR(world_->Barrier());
  if (!is_root()) return world_->AgreeOnStatus(absl::OkStatus(), "writing the checkpoint");
  auto write = [&]() -> absl::Status {
    step_ = step;
    skipped_steps_ = loop_->skipped_steps();
    CheckpointWriter w;
    RETURN_IF_ERROR(state_.Save(w));
    CheckpointDir dir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints());
    return dir.Save(step, w);
  };
  return world_->AgreeOnStatus(write(), "writing the checkpoint");
}

absl::Status Trainer::CheckSavedSpec(const Checkpoint& c) const {
  // The fields that define what is being trained must not change on resume
  // (optimizer settings, schedule and step counts may).
  if (!c.Has("spec")) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string_view saved_yaml, c.Bytes("spec"));
  absl::StatusOr<proto::JobSpec> saved = ParseJobSpecYaml(saved_yaml);
  if (!saved.ok()) return absl::OkStatus();
  ApplyDefaults(&*saved);
  auto differs = [](const google::protobuf::Message& a, const google::protobuf::Message& b) {
    return a.SerializeAsString() != b.SerializeAsString();
  };
  const char* changed = nullptr;
  if (saved->base_model() != spec_.base_model()) changed = "base_model";
  else if (saved->seed() != spec_.seed()) changed = "seed";
  else if (differs(saved->data(), spec_.data())) changed = "data";
  else if (differs(saved->lora(), spec_.lora())) changed = "lora";
  else if (differs(saved->pretrain(), spec_.pretrain())) changed = "pretrain";
  else if (saved->train().batch_size() != spec_.train().batch_size()) changed = "train.batch_size";
  else if (saved->train().grad_accum() != spec_.train().grad_accum()) changed = "train.grad_accum";
  if (changed != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        c.path(), ": ", changed, " differs from the run that wrote this checkpoint; resuming "
        "would train something else (start a new output_dir instead)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Trainer::LoadCheckpoint() {
  // Every rank reads the checkpoint (shared filesystem); all must succeed
  // and agree on the step, or their collectives would not match.
  auto restore = [&]() -> absl::StatusOr<int64_t> {
    CheckpointDir dir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints());
    std::vector<std::string> warnings;
    ASSIGN_OR_RETURN(auto latest, dir.LoadLatest(&warnings));
    if (is_root()) {
      for (const std::string& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    }
    if (!latest) {
      if (is_root()) std::fprintf(stderr, "no valid checkpoint in %s/checkpoints: starting from step 0\n",
                                  spec_.output_dir().c_str());
      return 0;
    }
    const Checkpoint& c = latest->second;
    RETURN_IF_ERROR(CheckSavedSpec(c));
    RETURN_IF_ERROR(state_.Restore(c));
    loop_->set_skipped_steps(skipped_steps_);
    if (is_root()) {
      std::fprintf(stderr, "resumed from %s (step %lld)\n", c.path().c_str(), static_cast<long long>(step_));
    }
    return step_;
  };
  absl::StatusOr<int64_t> restored = restore();
  RETURN_IF_ERROR(world_->AgreeOnStatus(restored.status(), "restoring the checkpoint"));
  const int64_t step = *restored;
  ASSIGN_OR_RETURN(bool same, world_->AllEqual(step));
  if (!same) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ranks restored different checkpoints (rank ", world_->world_rank(), " has step ", step,
        "): output_dir must be on a filesystem every rank sees"));
  }
  // Record what this run uses (e.g. --set overrides of the step budget), so
  // the next resume continues with the same spec; a fresh output_dir got
  // spec.yaml at setup.
  if (is_root() && (step > 0 || !spec_written_)) RETURN_IF_ERROR(WriteSpecFile());
  spec_written_ = true;
  return step;
}

absl::Status Trainer::Export(TrainResult* result) {
  if (result->steps_this_run == 0 && !options_.quiet && is_root()) {
    std::fprintf(stderr, "the run had already finished at step %lld\n",
                 static_cast<long long>(result->steps));
  }
  if (!is_root()) return absl::OkStatus();
  const std::string base_name = spec_.base_model().empty() ? spec_.name() : spec_.base_model();
  if (parts_.adapter) {
    result->export_dir = spec_.output_dir() + "/adapter";
    return parts_.adapter->SavePeft(result->export_dir, base_name);
  }
  result->export_dir = spec_.output_dir() + "/model";
  return parts_.model->Save(result->export_dir);
}

absl::Status Trainer::Cleanup(const TrainResult& result) {
  if (!is_root()) return absl::OkStatus();
  if (world_->world_size() > 1 && !options_.quiet) {
    const dist::Communicator& c = *options_.comm;
    std::fprintf(stderr,
                 "traffic per rank: frozen_gather %.1f MB, adapter_grad %.1f MB, control %.3f MB "
                 "over %lld steps on %d ranks\n",
                 c.bytes_sent(dist::Purpose::kPurposeFrozenGather) / 1e6,
                 c.bytes_sent(dist::Purpose::kPurposeAdapterGrad) / 1e6,
                 c.bytes_sent(dist::Purpose::kPurposeControl) / 1e6,
                 static_cast<long long>(result.steps_this_run), world_->world_size());
  }
  jobs::MetricValues summary = {{"steps", static_cast<double>(result.steps)},
                                {"final_val_loss", result.final_val_loss},
                                {"final_val_ppl", std::exp(result.final_val_loss)},
                                {"final_train_loss", result.final_train_loss}};
  if (loop_->skipped_steps() > 0) summary["skipped_steps"] = static_cast<double>(loop_->skipped_steps());
  return metrics_->WriteSummary(summary, {{"export", result.export_dir}});
}

absl::StatusOr<TrainResult> Trainer::Train(int64_t start_step) {
  TrainResult result;
  const int64_t world_size = world_->world_size();
  const int64_t B = spec_.train().batch_size() / world_size, T = spec_.data().seq_len(),
                accum = spec_.train().grad_accum();
  int64_t step = start_step;
  // Keep metrics consistent with the restored state: drop lines past `step`.
  RETURN_IF_ERROR(metrics_->TruncateAfter(step));
  const bool tty = !options_.quiet && isatty(STDERR_FILENO);
  if (!options_.quiet) {
    std::fprintf(stderr,
                 "%s: %lld steps x %lld sequences x %lld tokens; %lld train / %lld validation "
                 "sequences; %lld trainable parameters%s\n",
                 spec_.has_lora() ? "lora" : "pretrain", static_cast<long long>(total_steps_),
                 static_cast<long long>(B * world_size * accum), static_cast<long long>(T),
                 static_cast<long long>(data_.dataset->num_train_sequences()),
                 static_cast<long long>(data_.dataset->num_validation_sequences()),
                 static_cast<long long>(trainable_params_->size()),
                 step > 0 ? absl::StrCat(", resuming at step ", step).c_str() : "");
  }
  TrainProgress progress;
  progress.total_steps = total_steps_;
  progress.step = step;
  progress.skipped_steps = loop_->skipped_steps();
  if (step == 0) {
    ASSIGN_OR_RETURN(result.first_val_loss, Evaluate());
    progress.val_loss = result.first_val_loss;
    RETURN_IF_ERROR(metrics_->Append({{"step", 0},
                                      {"val_loss", result.first_val_loss},
                                      {"val_ppl", std::exp(result.first_val_loss)}}));
  }
  const auto run_start = Clock::now();
  double tok_rate = 0;
  int64_t steps_this_run = 0;

  bool stop = false;
  while (step < total_steps_ && !stop) {
    const auto t0 = Clock::now();
    ASSIGN_OR_RETURN(jobs::StepResult s, loop_->Step(step, *data_.dataset, &cursor_));
    ++step;
    ++steps_this_run;
    result.step_losses.push_back(s.loss);

    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const double rate = static_cast<double>(B * world_size * T * accum) / std::max(dt, 1e-9);
    tok_rate = steps_this_run == 1 ? rate : 0.9 * tok_rate + 0.1 * rate;
    progress.step = step;
    progress.loss = s.loss;
    progress.lr = s.lr;
    progress.grad_norm = s.grad_norm;
    progress.tokens_per_s = tok_rate;
    progress.skipped_steps = loop_->skipped_steps();
    const double elapsed = std::chrono::duration<double>(Clock::now() - run_start).count();
    progress.eta_s = elapsed / static_cast<double>(steps_this_run) * static_cast<double>(total_steps_ - step);

    jobs::MetricValues line = CommMetrics();
    line["step"] = static_cast<double>(step);
    line["loss"] = s.loss;
    line["lr"] = s.lr;
    line["tokens_per_s"] = rate;
    if (s.skipped) {
      // No grad_norm (it is not a number); the step's update was skipped.
      line["skipped"] = 1;
      line["skipped_steps"] = static_cast<double>(loop_->skipped_steps());
      if (!options_.quiet) {
        std::fprintf(stderr, "step %lld: the gradient norm is %g: skipped the update (%lld so far)\n",
                     static_cast<long long>(step), s.grad_norm,
                     static_cast<long long>(loop_->skipped_steps()));
      }
    } else {
      line["grad_norm"] = s.grad_norm;
    }
    bool evaluated = false;
    // eval_every / checkpoint_every of 0 mean "only at the end".
    const int64_t eval_every = spec_.train().eval_every(), ckpt_every = spec_.train().checkpoint_every();
    if ((eval_every > 0 && step % eval_every == 0) || step == total_steps_) {
      ASSIGN_OR_RETURN(double val, Evaluate());
      progress.val_loss = val;
      result.final_val_loss = val;
      line["val_loss"] = val;
      line["val_ppl"] = std::exp(val);
      evaluated = true;
    }
    RETURN_IF_ERROR(metrics_->Append(line));
    if (!options_.quiet && (tty || step % std::max(1, spec_.train().log_every()) == 0 ||
                            step == total_steps_ || evaluated)) {
      PrintProgress(progress, tty);
    }
    if (options_.on_progress && is_root()) options_.on_progress(progress);
    // A stop request on any rank (SIGTERM reaches ranks at different
    // moments) stops all of them after this step, so collectives stay matched.
    jobs::Vote stop_vote(stop_.load());
    RETURN_IF_ERROR(world_->Tally({&stop_vote}));
    stop = stop_vote.any();
    if ((ckpt_every > 0 && step % ckpt_every == 0) || step == total_steps_ || stop) {
      RETURN_IF_ERROR(SaveCheckpoint(step));
    }
  }
  if (tty && stop) std::fprintf(stderr, "\n");
  result.steps = step;
  result.steps_this_run = steps_this_run;
  result.final_train_loss = progress.loss;
  if (step < total_steps_) {
    if (is_root()) std::fprintf(stderr, "stopped at step %lld (checkpoint saved; resume with --resume)\n",
                                static_cast<long long>(step));
    return result;
  }
  if (result.final_val_loss < 0) {
    ASSIGN_OR_RETURN(result.final_val_loss, Evaluate());
  }
  return result;
}

}  // namespace sheaf
