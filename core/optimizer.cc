#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numbers>
#include <span>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/backend.h"
#include "core/status.h"

namespace sheaf {
namespace {

// ClipGradNorm sums squares in chunks of this many elements. The chunking
// depends only on the param sizes, so the set of partial sums and the order in
// which they are added are the same for any number of threads (and on every
// backend that computes each partial in an order fixed by its chunk).
constexpr int64_t kNormChunkElements = int64_t{1} << 14;

Backend* ResolveBackend(Backend* backend) {
  if (backend == nullptr) backend = DefaultBackend();
  return backend;
}

}  // namespace

absl::Status AdamWOptions::Validate() const {
  // Written as !(ok) so that NaN fails too.
  if (!(lr >= 0.0f) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("adamw.lr must be finite and >= 0, got ", lr));
  }
  if (!(beta1 >= 0.0f && beta1 < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("adamw.beta1 must be in [0, 1), got ", beta1));
  }
  if (!(beta2 >= 0.0f && beta2 < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("adamw.beta2 must be in [0, 1), got ", beta2));
  }
  if (!(eps >= 0.0f) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("adamw.eps must be finite and >= 0, got ", eps));
  }
  if (!(weight_decay >= 0.0f) || !std::isfinite(weight_decay)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adamw.weight_decay must be finite and >= 0, got ", weight_decay));
  }
  return absl::OkStatus();
}

absl::StatusOr<AdamW> AdamW::Create(std::vector<ParamRef> params,
                                    const AdamWOptions& options,
                                    Backend* backend) {
  RETURN_IF_ERROR(options.Validate());
  backend = ResolveBackend(backend);
  if (backend == nullptr) {
    return absl::FailedPreconditionError(
        "no compute backend for AdamW: none given and none registered (link "
        "//ops/cpu:ops)");
  }
  std::unordered_set<std::string> names;
  std::vector<int64_t> offsets;
  offsets.reserve(params.size());
  int64_t total = 0;
  for (const ParamRef& p : params) {
    if (!names.insert(p.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate optimizer param name '", p.name, "'"));
    }
    if (p.size < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer param '", p.name, "' has negative size ", p.size));
    }
    if (p.size > 0 && (p.value == nullptr || p.grad == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer param '", p.name, "' has a null value or grad"));
    }
    offsets.push_back(total);
    total += p.size;
  }
  return AdamW(std::move(params), options, std::move(offsets), total, backend);
}

AdamW::AdamW(std::vector<ParamRef> params, const AdamWOptions& options,
             std::vector<int64_t> offsets, int64_t total_size, Backend* backend)
    : backend_(backend),
      params_(std::move(params)),
      options_(options),
      offsets_(std::move(offsets)),
      total_size_(total_size),
      state_(static_cast<size_t>(2 * total_size), 0.0f) {}

std::span<float> AdamW::m(int param_index) {
  const size_t i = static_cast<size_t>(param_index);
  return std::span<float>(state_).subspan(static_cast<size_t>(offsets_[i]),
                                          static_cast<size_t>(params_[i].size));
}

std::span<float> AdamW::v(int param_index) {
  const size_t i = static_cast<size_t>(param_index);
  return std::span<float>(state_).subspan(
      static_cast<size_t>(total_size_ + offsets_[i]),
      static_cast<size_t>(params_[i].size));
}

void AdamW::Step(float lr) {
  ++step_count_;
  // Scalars in double, rounded once to float, as torch does with its Python
  // float hyper-parameters; this keeps bias correction exact for large t.
  const double t = static_cast<double>(step_count_);
  const double bc1 = 1.0 - std::pow(static_cast<double>(options_.beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(options_.beta2), t);
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float decay_on =
      static_cast<float>(1.0 - static_cast<double>(lr) * options_.weight_decay);
  AdamWStepArgs args;
  args.beta1 = options_.beta1;
  args.one_minus_beta1 = 1.0f - options_.beta1;
  args.beta2 = options_.beta2;
  args.one_minus_beta2 = 1.0f - options_.beta2;
  args.step_size = step_size;
  args.inv_sqrt_bc2 = inv_sqrt_bc2;
  args.eps = options_.eps;

  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamRef& p = params_[i];
    if (p.size == 0) continue;
    float* m = state_.data() + offsets_[i];
    float* v = state_.data() + total_size_ + offsets_[i];
    args.decay = p.weight_decay ? decay_on : 1.0f;
    backend_->AdamWStep(args, p.value, p.grad, m, v, p.size);
  }
}

absl::Status AdamW::Restore(int64_t step_count, std::span<const float> state) {
  if (step_count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer step count must be >= 0, got ", step_count));
  }
  if (state.size() != state_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer state has ", state.size(), " floats, expected ",
        state_.size(), " (2 x total param size ", total_size_, ")"));
  }
  std::copy(state.begin(), state.end(), state_.begin());
  step_count_ = step_count;
  return absl::OkStatus();
}

std::string AdamW::StateLayout() const {
  std::string out;
  for (const ParamRef& p : params_) {
    absl::StrAppend(&out, p.name, " ", p.size, "\n");
  }
  return out;
}

float ClipGradNorm(std::span<const ParamRef> params, float max_norm,
                   Backend* backend) {
  backend = ResolveBackend(backend);
  if (backend == nullptr) {
    std::fprintf(stderr,
                 "ClipGradNorm: no compute backend (link //ops/cpu:ops)\n");
    std::abort();
  }
  // Work items (param, first element) in param order, then element order.
  std::vector<std::span<const float>> chunks;
  for (const ParamRef& p : params) {
    if (p.grad == nullptr) continue;
    for (int64_t start = 0; start < p.size; start += kNormChunkElements) {
      chunks.emplace_back(p.grad + start, static_cast<size_t>(std::min(
                                              kNormChunkElements, p.size - start)));
    }
  }
  std::vector<double> partial(chunks.size(), 0.0);
  backend->SumSquares(chunks, partial.data());
  double sum = 0.0;
  for (double s : partial) sum += s;
  const double norm = std::sqrt(sum);

  if (max_norm > 0.0f && std::isfinite(norm) && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (const ParamRef& p : params) {
      if (p.grad != nullptr) backend->Scale(p.grad, scale, p.size);
    }
  }
  return static_cast<float>(norm);
}

absl::Status LrSchedule::Validate() const {
  if (!(peak >= 0.0f) || !std::isfinite(peak)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr schedule peak must be finite and >= 0, got ", peak));
  }
  if (warmup_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lr schedule warmup_steps must be >= 0, got ", warmup_steps));
  }
  if (total_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lr schedule total_steps must be >= 0, got ", total_steps));
  }
  if (!(min_ratio >= 0.0f && min_ratio <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lr schedule min_ratio must be in [0, 1], got ", min_ratio));
  }
  return absl::OkStatus();
}

float LrSchedule::At(int64_t step) const {
  step = std::max<int64_t>(step, 0);
  const double peak_d = peak;
  const double floor_d = peak_d * min_ratio;
  if (step < warmup_steps) {
    return static_cast<float>(peak_d * static_cast<double>(step + 1) /
                              static_cast<double>(warmup_steps));
  }
  if (step >= total_steps) return static_cast<float>(floor_d);
  // Here warmup_steps <= step < total_steps, so the span is positive.
  const double progress = static_cast<double>(step - warmup_steps) /
                          static_cast<double>(total_steps - warmup_steps);
  return static_cast<float>(floor_d +
                            (peak_d - floor_d) * 0.5 *
                                (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace sheaf
