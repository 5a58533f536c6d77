#include "core/crm/crm_train.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/rng.h"
#include "base/status.h"
#include "core/checkpoint.h"

namespace sheaf::crm {
namespace {

absl::Status WriteParams(const Din& din, CheckpointWriter& w) {
  RETURN_IF_ERROR(w.AddBytes("crm/layout", din.Layout()));
  const Arena& p = din.params();
  return w.AddTensor("crm/params", {p.size()}, p.data());
}

absl::Status ReadParams(Din& din, const Checkpoint& ck) {
  ASSIGN_OR_RETURN(std::string_view layout, ck.Bytes("crm/layout"));
  if (std::string(layout) != din.Layout()) {
    return absl::InvalidArgumentError(absl::StrCat(
        ck.path(), ": the CRM in this file has another layout:\n", std::string(layout),
        "expected:\n", din.Layout()));
  }
  ASSIGN_OR_RETURN(auto values, ck.Tensor("crm/params", {din.params().size()}));
  std::memcpy(din.params().data(), values.data(), values.size() * sizeof(float));
  return absl::OkStatus();
}

}  // namespace

absl::Status CrmTrainOptions::Validate() const {
  if (epochs < 1 && max_steps <= 0) {
    return absl::InvalidArgumentError("crm.epochs: must be >= 1 (or max_steps > 0)");
  }
  if (batch_size < 1) return absl::InvalidArgumentError("crm.batch_size: must be >= 1");
  if (history < 1) return absl::InvalidArgumentError("crm.history: must be >= 1");
  if (!(lr > 0) || !std::isfinite(lr)) return absl::InvalidArgumentError("crm.lr: must be > 0");
  if (!(weight_decay >= 0)) return absl::InvalidArgumentError("crm.weight_decay: must be >= 0");
  if (checkpoint_every < 0) {
    return absl::InvalidArgumentError("crm.checkpoint_every: must be >= 0");
  }
  return absl::OkStatus();
}

std::vector<int32_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  uint64_t state = SplitMix64(seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(SplitMix64Next(state) % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

absl::StatusOr<CrmTrainReport> TrainCrm(
    const CtrData& data, Din& din, const CrmTrainOptions& options,
    const std::function<void(int64_t, double)>& on_step) {
  RETURN_IF_ERROR(options.Validate());
  const auto& train = data.split(Split::kSplitTrain);
  const int64_t n = static_cast<int64_t>(train.size());
  if (n == 0) return absl::InvalidArgumentError("the train split is empty");
  const int64_t per_epoch = (n + options.batch_size - 1) / options.batch_size;
  const int64_t total = options.max_steps > 0 ? options.max_steps : per_epoch * options.epochs;

  AdamWOptions ao;
  ao.lr = options.lr;
  ao.weight_decay = options.weight_decay;
  ASSIGN_OR_RETURN(AdamW adam, AdamW::Create(din.ParamRefs(), ao));

  CrmTrainReport report;
  int64_t step = 0;
  std::unique_ptr<CheckpointDir> ckdir;
  if (!options.checkpoint_dir.empty()) {
    ckdir = std::make_unique<CheckpointDir>(options.checkpoint_dir, options.keep_checkpoints);
    std::vector<std::string> warnings;
    ASSIGN_OR_RETURN(auto latest, ckdir->LoadLatest(&warnings));
    if (latest) {
      const Checkpoint& ck = latest->second;
      absl::Status s = ReadParams(din, ck);
      if (!s.ok()) return absl::FailedPreconditionError(s.message());
      ASSIGN_OR_RETURN(std::string_view layout, ck.Bytes("crm/adam_layout"));
      if (std::string(layout) != adam.StateLayout()) {
        return absl::FailedPreconditionError(
            absl::StrCat(ck.path(), ": optimizer layout differs from this CRM's"));
      }
      ASSIGN_OR_RETURN(auto state, ck.Tensor("crm/adam_state",
                                             {static_cast<int64_t>(adam.state().size())}));
      ASSIGN_OR_RETURN(std::string_view step_bytes, ck.Bytes("crm/step"));
      if (step_bytes.size() != sizeof(int64_t)) {
        return absl::DataLossError(absl::StrCat(ck.path(), ": crm/step is not 8 bytes"));
      }
      std::memcpy(&step, step_bytes.data(), sizeof(step));
      RETURN_IF_ERROR(adam.Restore(step, state));
      report.resumed_from = step;
    }
  }
  auto save = [&](int64_t at) -> absl::Status {
    if (!ckdir) return absl::OkStatus();
    CheckpointWriter w;
    RETURN_IF_ERROR(WriteParams(din, w));
    RETURN_IF_ERROR(w.AddBytes("crm/adam_layout", adam.StateLayout()));
    RETURN_IF_ERROR(w.AddTensor("crm/adam_state", {static_cast<int64_t>(adam.state().size())},
                                adam.state().data()));
    RETURN_IF_ERROR(w.AddBytes("crm/step", std::string_view(reinterpret_cast<const char*>(&at),
                                                            sizeof(at))));
    return ckdir->Save(at, w);
  };

  std::vector<int32_t> order;
  int64_t order_epoch = -1;
  std::vector<CtrSample> batch_samples;
  std::vector<ParamRef> refs = din.ParamRefs();
  while (step < total) {
    const int64_t epoch = step / per_epoch, pos = step % per_epoch;
    if (epoch != order_epoch) {
      order = EpochOrder(n, options.seed, epoch);
      order_epoch = epoch;
    }
    const int64_t lo = pos * options.batch_size;
    const int64_t hi = std::min(n, lo + options.batch_size);
    batch_samples.clear();
    for (int64_t i = lo; i < hi; ++i) batch_samples.push_back(train[static_cast<size_t>(order[i])]);
    DinBatch batch = MakeDinBatch(data, batch_samples, options.history);
    din.ZeroGrads();
    ASSIGN_OR_RETURN(double loss, din.Forward(batch));
    din.Backward(1.0f / static_cast<float>(hi - lo));
    if (options.grad_clip > 0) ClipGradNorm(refs, options.grad_clip);
    adam.Step();
    ++step;
    const double mean = loss / static_cast<double>(hi - lo);
    report.losses.push_back(mean);
    if (on_step) on_step(step, mean);
    const bool stop = options.stop_after > 0 && step >= options.stop_after && step < total;
    if ((options.checkpoint_every > 0 && step % options.checkpoint_every == 0) || step == total ||
        stop) {
      RETURN_IF_ERROR(save(step));
    }
    if (stop) {
      report.stopped = true;
      break;
    }
  }
  report.steps = step;
  return report;
}

absl::StatusOr<std::vector<float>> PredictCrm(const CtrData& data, Din& din,
                                              std::span<const CtrSample> samples, int history,
                                              int batch_size) {
  std::vector<float> probs;
  probs.reserve(samples.size());
  for (size_t lo = 0; lo < samples.size(); lo += static_cast<size_t>(batch_size)) {
    const size_t hi = std::min(samples.size(), lo + static_cast<size_t>(batch_size));
    DinBatch batch = MakeDinBatch(data, samples.subspan(lo, hi - lo), history);
    RETURN_IF_ERROR(din.Forward(batch).status());
    for (float z : din.logits()) probs.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(z)))));
  }
  return probs;
}

absl::StatusOr<BinaryMetrics> EvaluateCrm(const CtrData& data, Din& din,
                                          std::span<const CtrSample> samples, int history) {
  ASSIGN_OR_RETURN(std::vector<float> probs, PredictCrm(data, din, samples, history));
  std::vector<float> labels;
  labels.reserve(samples.size());
  for (const CtrSample& s : samples) labels.push_back(s.label);
  return ComputeMetrics(probs, labels);
}

absl::Status SaveCrm(const Din& din, const std::string& path) {
  CheckpointWriter w;
  RETURN_IF_ERROR(WriteParams(din, w));
  return w.Write(path);
}

absl::Status LoadCrm(Din& din, const std::string& path) {
  ASSIGN_OR_RETURN(Checkpoint ck, Checkpoint::Read(path));
  return ReadParams(din, ck);
}

}  // namespace sheaf::crm
