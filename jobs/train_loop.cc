#include "jobs/train_loop.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "jobs/seeds.h"

namespace sheaf::jobs {

absl::StatusOr<LossStats> ForwardBackward(Model& model, LoraAdapter* adapter, const int32_t* tokens,
                                          const int32_t* targets, int batch_rows, int seq_len,
                                          float grad_scale) {
  ASSIGN_OR_RETURN(LossStats s,
                   model.Forward(tokens, targets, batch_rows, seq_len, adapter, /*training=*/true));
  RETURN_IF_ERROR(model.Backward(grad_scale));
  return s;
}

TrainLoop::TrainLoop(Model* model, LoraAdapter* adapter, AdamW* optimizer,
                     dist::GradReducer* reducer, WorldSync* world, LoopOptions options)
    : model_(model),
      adapter_(adapter),
      optimizer_(optimizer),
      reducer_(reducer),
      world_(world),
      options_(std::move(options)),
      rows_(options_.batch_size / world->world_size()) {
  inputs_.resize(static_cast<size_t>(options_.grad_accum * rows_ * options_.seq_len));
  targets_.resize(inputs_.size());
  micro_step_ = [this](int64_t step, int64_t m, const int32_t* in, const int32_t* tg, int B, int T,
                       float scale) -> absl::StatusOr<LossStats> {
    if (adapter_ != nullptr) {
      adapter_->set_dropout_seed(DropoutSeed(options_.seed, step * options_.grad_accum + m));
      adapter_->set_dropout_row_offset(static_cast<int64_t>(world_->world_rank()) * B * T);
    }
    return ForwardBackward(*model_, adapter_, in, tg, B, T, scale);
  };
}

absl::StatusOr<StepResult> TrainLoop::Step(int64_t step, const Dataset& data, DataCursor* cursor) {
  const int64_t B = rows_, T = options_.seq_len, accum = options_.grad_accum;
  // Fetch the whole step first: the loss is a mean over every valid target
  // of the step, so each micro-batch's gradient is scaled by 1/total.
  int64_t valid = 0;
  for (int64_t m = 0; m < accum; ++m) {
    const size_t off = static_cast<size_t>(m * B * T);
    ASSIGN_OR_RETURN(*cursor, data.GetBatch(*cursor, B,
                                            RankSlice{world_->world_rank(), world_->world_size()},
                                            absl::MakeSpan(inputs_.data() + off, B * T),
                                            absl::MakeSpan(targets_.data() + off, B * T)));
    for (size_t i = off; i < off + static_cast<size_t>(B * T); ++i) valid += targets_[i] != kIgnoreIndex;
  }
  // Tokens are checked here, before any collective, so that bad data on
  // one rank fails every rank instead of leaving them in a gather.
  const int32_t vocab = model_->config().vocab_size;
  int64_t bad = 0;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    bad += inputs_[i] < 0 || inputs_[i] >= vocab ||
           (targets_[i] != kIgnoreIndex && (targets_[i] < 0 || targets_[i] >= vocab));
  }
  // The mean is over the valid targets of the whole global batch.
  double counts[2] = {static_cast<double>(valid), static_cast<double>(bad)};
  RETURN_IF_ERROR(world_->Sum(absl::MakeSpan(counts)));
  valid = static_cast<int64_t>(counts[0]);
  if (counts[1] > 0) {
    return absl::DataLossError(absl::StrCat(
        "step ", step + 1, ": ", static_cast<int64_t>(counts[1]),
        " token(s) outside the model's vocabulary [0, ", vocab, ") in the training data"));
  }
  if (valid == 0) return absl::InternalError("a training step has no valid target token");
  const std::vector<ParamRef>& params = optimizer_->params();
  for (const ParamRef& p : params) {
    if (p.grad != nullptr) std::memset(p.grad, 0, static_cast<size_t>(p.size) * sizeof(float));
  }
  double loss_sum = 0;
  for (int64_t m = 0; m < accum; ++m) {
    if (reducer_) reducer_->set_enabled(m == accum - 1);
    const size_t off = static_cast<size_t>(m * B * T);
    ASSIGN_OR_RETURN(LossStats s, micro_step_(step, m, inputs_.data() + off, targets_.data() + off,
                                              static_cast<int>(B), static_cast<int>(T),
                                              1.0f / static_cast<float>(valid)));
    loss_sum += s.loss_sum;
  }
  if (reducer_) RETURN_IF_ERROR(reducer_->Finish());
  RETURN_IF_ERROR(world_->Sum(absl::MakeSpan(&loss_sum, 1)));
  StepResult r;
  r.tokens = valid;
  r.loss = loss_sum / static_cast<double>(valid);
  if (!std::isfinite(r.loss)) {
    // FailedPrecondition: deterministic (a retry diverges again), so the
    // worker fails the job at once instead of burning attempts (issue 9).
    return absl::FailedPreconditionError(absl::StrCat("loss is ", r.loss, " at step ", step,
                                            " (diverged: lower optimizer.lr or set train.grad_clip)"));
  }
  if (before_clip_) RETURN_IF_ERROR(before_clip_(step));
  // Every rank holds the same reduced gradients, so all agree on a skip.
  r.grad_norm = ClipGradNorm(params, options_.grad_clip);
  r.lr = options_.schedule.At(step);
  if (!std::isfinite(r.grad_norm)) {
    r.skipped = true;
    ++skipped_steps_;
    if (++consecutive_skips_ >= options_.max_consecutive_skips) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step ", step + 1, ": the gradient norm was not finite (", r.grad_norm, ") in ",
          consecutive_skips_, " consecutive steps, all skipped; the run has diverged "
          "(lower optimizer.lr or check the data)"));
    }
    return r;
  }
  consecutive_skips_ = 0;
  optimizer_->Step(r.lr);
  return r;
}

}  // namespace sheaf::jobs
