#include "core/spec/validate.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/path_policy.h"
#include "core/spec/limits.h"
#include "core/spec/problems.h"
#include "core/spec/sections.h"

namespace sheaf {
namespace {

void CheckPathList(const google::protobuf::RepeatedPtrField<std::string>& paths,
                   const std::string& key, Problems& problems) {
  for (int i = 0; i < paths.size(); ++i) {
    if (paths[i].empty()) {
      problems.Add(absl::StrCat(key, "[", i, "]"), "must not be empty");
    }
  }
}

void CheckData(const proto::DataSpec& data, Problems& problems) {
  if (data.train().empty()) {
    problems.Add("data.train", "must list at least one file or directory");
  }
  CheckPathList(data.train(), "data.train", problems);
  CheckPathList(data.val(), "data.val", problems);
  if (!proto::DataSpec::Format_IsValid(data.format()) ||
      data.format() == proto::DataSpec::FORMAT_UNSPECIFIED) {
    problems.Add("data.format", absl::StrCat("unknown value ", data.format()));
  }
  const std::string& chat_template = data.chat_template();
  if (!chat_template.empty() && chat_template != "auto" &&
      chat_template != "llama3" && chat_template != "chatml") {
    problems.Add("data.chat_template",
                 absl::StrCat("unknown value \"", chat_template,
                              "\" (auto, llama3 or chatml)"));
  }
  if (!chat_template.empty() &&
      data.format() != proto::DataSpec::FORMAT_CHAT) {
    problems.Add("data.chat_template",
                 "is read only with data.format: chat (remove it)");
  }
  CheckCount("data.seq_len", data.seq_len(), 2, spec_limits::kMaxSeqLen,
             problems);
  problems.Fraction("data.val_fraction", data.val_fraction(),
                    /*one_allowed=*/false);
  // No validation data would fail every attempt of the job at its first
  // evaluation (a deterministic failure): refuse it here.
  if (data.val().empty() && data.val_fraction() == 0) {
    problems.Add("data.val_fraction",
                 "must be > 0 when data.val is empty (the job would have no "
                 "validation data)");
  }
  if (!data.val().empty() && data.val_fraction() > 0) {
    problems.Add("data.val_fraction",
                 absl::StrCat("must be 0 when data.val is given, got ",
                              data.val_fraction()));
  }
}

void CheckOptimizer(const proto::OptimizerSpec& optimizer, Problems& problems) {
  CheckPositiveAtMost("optimizer.lr", optimizer.lr(),
                      spec_limits::kMaxLearningRate, problems);
  problems.Fraction("optimizer.beta1", optimizer.beta1(),
                    /*one_allowed=*/false);
  problems.Fraction("optimizer.beta2", optimizer.beta2(),
                    /*one_allowed=*/false);
  CheckPositiveAtMost("optimizer.eps", optimizer.eps(), spec_limits::kMaxEps,
                      problems);
  problems.NonNegative("optimizer.weight_decay", optimizer.weight_decay());
  if (optimizer.weight_decay() >= 0) {
    problems.FiniteAtMost("optimizer.weight_decay", optimizer.weight_decay(),
                          spec_limits::kMaxWeightDecay);
  }
}

void CheckTrainAndSchedule(const proto::TrainSpec& train,
                           const proto::ScheduleSpec& schedule,
                           Problems& problems) {
  namespace lim = spec_limits;
  CheckCount("train.batch_size", train.batch_size(), 1, lim::kMaxBatchSize,
             problems);
  CheckCount("train.grad_accum", train.grad_accum(), 1, lim::kMaxGradAccum,
             problems);
  CheckCount("train.max_steps", train.max_steps(), 0, lim::kMaxSteps,
             problems);
  CheckCount("train.epochs", train.epochs(), 0, lim::kMaxEpochs, problems);
  if (train.max_steps() == 0 && train.epochs() == 0) {
    problems.Add("train.max_steps",
                 "train.max_steps or train.epochs must be > 0 (training "
                 "would never stop)");
  }
  problems.NonNegative("train.grad_clip", train.grad_clip());
  if (train.grad_clip() >= 0) {
    problems.FiniteAtMost("train.grad_clip", train.grad_clip(),
                          lim::kMaxGradClip);
  }
  CheckCount("train.eval_every", train.eval_every(), 0, lim::kMaxSteps,
             problems);
  CheckCount("train.eval_batches", train.eval_batches(), 0,
             lim::kMaxEvalBatches, problems);
  CheckCount("train.checkpoint_every", train.checkpoint_every(), 0,
             lim::kMaxSteps, problems);
  CheckCount("train.keep_checkpoints", train.keep_checkpoints(), 0,
             lim::kMaxKeepCheckpoints, problems);
  CheckCount("train.threads", train.threads(), 0, lim::kMaxThreads, problems);
  CheckCount("train.log_every", train.log_every(), 1, lim::kMaxSteps,
             problems);
  if (!train.compute().empty() && train.compute() != "f32" &&
      train.compute() != "bf16") {
    problems.Add("train.compute", absl::StrCat("\"", train.compute(),
                                               "\" is not f32 or bf16"));
  }

  CheckCount("schedule.warmup_steps", schedule.warmup_steps(), 0,
             lim::kMaxSteps, problems);
  if (train.max_steps() > 0 && schedule.warmup_steps() > train.max_steps()) {
    problems.Add("schedule.warmup_steps",
                 absl::StrCat("must be <= train.max_steps (", train.max_steps(),
                              "), got ", schedule.warmup_steps()));
  }
  problems.Fraction("schedule.min_lr_ratio", schedule.min_lr_ratio(),
                    /*one_allowed=*/true);
}

}  // namespace

void ApplyDefaults(proto::JobSpec* spec, const JobKindRegistry& kinds) {
  const JobKind* kind = kinds.KindOf(*spec);
  // Without a (known) kind every section gets its defaults, so that
  // validation still judges the rest of the spec.
  if (kind == nullptr || kind->uses_data) {
    proto::DataSpec* data = spec->mutable_data();
    if (data->format() == proto::DataSpec::FORMAT_UNSPECIFIED) {
      const bool jsonl =
          !data->train().empty() && absl::EndsWith(data->train(0), ".jsonl");
      data->set_format(jsonl ? proto::DataSpec::FORMAT_JSONL
                             : proto::DataSpec::FORMAT_TEXT);
    }
    if (!data->has_seq_len()) data->set_seq_len(256);
    if (!data->has_val_fraction()) {
      // Explicit validation files replace the held-out split.
      data->set_val_fraction(data->val().empty() ? 0.05 : 0.0);
    }
    // "auto": the model directory's tokenizer (jobs::MakeTokenizerForModel).
    if (data->tokenizer().empty()) data->set_tokenizer("auto");
  }

  // First the kind's own, which may set a shared field (optimizer.lr).
  if (kind != nullptr && kind->apply_defaults) kind->apply_defaults(spec);

  proto::OptimizerSpec* optimizer = spec->mutable_optimizer();
  if (!optimizer->has_lr()) optimizer->set_lr(2e-4);
  if (!optimizer->has_beta1()) optimizer->set_beta1(0.9);
  if (!optimizer->has_beta2()) optimizer->set_beta2(0.999);
  if (!optimizer->has_eps()) optimizer->set_eps(1e-8);

  proto::ScheduleSpec* schedule = spec->mutable_schedule();
  if (!schedule->has_min_lr_ratio()) schedule->set_min_lr_ratio(0.1);

  proto::TrainSpec* train = spec->mutable_train();
  if (!train->has_batch_size()) train->set_batch_size(8);
  if (!train->has_grad_accum()) train->set_grad_accum(1);
  if (!train->has_grad_clip()) train->set_grad_clip(1.0);
  if (!train->has_eval_every()) train->set_eval_every(100);
  if (!train->has_checkpoint_every()) train->set_checkpoint_every(100);
  if (!train->has_keep_checkpoints()) train->set_keep_checkpoints(3);
  if (!train->has_log_every()) train->set_log_every(10);
}

void ApplyDefaults(proto::JobSpec* spec) {
  ApplyDefaults(spec, JobKindRegistry::Global());
}

absl::Status ValidateJobSpec(const proto::JobSpec& given,
                             const JobKindRegistry& kinds) {
  proto::JobSpec spec = given;
  ApplyDefaults(&spec, kinds);
  Problems problems;
  const std::string kind_name = SelectedKindName(spec);
  const JobKind* kind = kinds.Find(kind_name);
  if (kind_name.empty()) {
    problems.Add("", absl::StrCat("no job kind given: one of ",
                                  absl::StrJoin(JobKindNames(), ", "),
                                  " must be set"));
  } else if (kind == nullptr) {
    problems.Add(kind_name, absl::StrCat("job kind ", kind_name,
                                         " is not available in this build"));
  } else if (kind->validate) {
    kind->validate(spec, given, problems);
  }
  if (spec.output_dir().empty()) problems.Add("output_dir", "must be set");
  if (kind == nullptr || kind->uses_data) {
    CheckData(spec.data(), problems);
  } else if (given.has_data()) {
    problems.Add("data",
                 absl::StrCat("a ", kind_name,
                              " job reads no data section (remove it)"));
  }
  CheckOptimizer(spec.optimizer(), problems);
  CheckTrainAndSchedule(spec.train(), spec.schedule(), problems);
  return problems.ToStatus(absl::StatusCode::kInvalidArgument);
}

absl::Status ValidateJobSpec(const proto::JobSpec& spec) {
  return ValidateJobSpec(spec, JobKindRegistry::Global());
}

absl::Status CheckSpecPaths(const proto::JobSpec& spec) {
  Problems problems;
  ForEachPathField(spec, [&problems](const PathField& field) {
    // Empty: ValidateJobSpec's business; outputs are created by the job.
    if (!NamesAFile(field) ||
        field.option->kind() == proto::PATH_KIND_OUTPUT_DIRECTORY) {
      return;
    }
    const std::string& path = *field.value;
    const proto::PathKind want = field.option->kind();
    std::error_code error;
    const std::filesystem::file_status status =
        std::filesystem::status(path, error);
    if (!std::filesystem::exists(status)) {
      const char* what = want == proto::PATH_KIND_DIRECTORY ? "directory"
                         : want == proto::PATH_KIND_FILE    ? "file"
                                                            : "file or directory";
      problems.Add(field.name, absl::StrCat("no such ", what, ": ", path));
    } else if (want == proto::PATH_KIND_DIRECTORY &&
               !std::filesystem::is_directory(status)) {
      problems.Add(field.name, absl::StrCat("not a directory: ", path));
    } else if (want == proto::PATH_KIND_FILE &&
               std::filesystem::is_directory(status)) {
      problems.Add(field.name,
                   absl::StrCat("is a directory, not a file: ", path));
    }
  });
  return problems.ToStatus(absl::StatusCode::kNotFound);
}

}  // namespace sheaf
