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
#include "core/spec/suggest.h"

namespace sheaf {
namespace {

// Collects `key.path: reason` lines so that one run reports every problem.
class Problems {
 public:
  void Add(const std::string& path, const std::string& reason) {
    list_.push_back(path.empty() ? reason : absl::StrCat(path, ": ", reason));
  }

  // `value` >= `min`.
  void AtLeast(const std::string& path, int64_t value, int64_t min) {
    if (value < min) {
      Add(path, absl::StrCat("must be >= ", min, ", got ", value));
    }
  }

  // Written as !(value > 0) so that NaN fails too.
  void Positive(const std::string& path, double value) {
    if (!(value > 0)) Add(path, absl::StrCat("must be > 0, got ", value));
  }

  void NonNegative(const std::string& path, double value) {
    if (!(value >= 0)) Add(path, absl::StrCat("must be >= 0, got ", value));
  }

  // [0, 1), or [0, 1] when `one_allowed`.
  void Fraction(const std::string& path, double value, bool one_allowed) {
    if (!(value >= 0 && (value < 1 || (one_allowed && value == 1)))) {
      Add(path, absl::StrCat("must be in [0, 1", one_allowed ? "]" : ")",
                             ", got ", value));
    }
  }

  absl::Status ToStatus(absl::StatusCode code) const {
    if (list_.empty()) return absl::OkStatus();
    return absl::Status(code, absl::StrJoin(list_, "; "));
  }

 private:
  std::vector<std::string> list_;
};

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
  problems.AtLeast("data.seq_len", data.seq_len(), 2);
  problems.Fraction("data.val_fraction", data.val_fraction(),
                    /*one_allowed=*/false);
  if (!data.val().empty() && data.val_fraction() > 0) {
    problems.Add("data.val_fraction",
                 absl::StrCat("must be 0 when data.val is given, got ",
                              data.val_fraction()));
  }
}

void CheckOptimizer(const proto::OptimizerSpec& optimizer, Problems& problems) {
  problems.Positive("optimizer.lr", optimizer.lr());
  problems.Fraction("optimizer.beta1", optimizer.beta1(),
                    /*one_allowed=*/false);
  problems.Fraction("optimizer.beta2", optimizer.beta2(),
                    /*one_allowed=*/false);
  problems.Positive("optimizer.eps", optimizer.eps());
  problems.NonNegative("optimizer.weight_decay", optimizer.weight_decay());
}

void CheckTrainAndSchedule(const proto::TrainSpec& train,
                           const proto::ScheduleSpec& schedule,
                           Problems& problems) {
  problems.AtLeast("train.batch_size", train.batch_size(), 1);
  problems.AtLeast("train.grad_accum", train.grad_accum(), 1);
  problems.AtLeast("train.max_steps", train.max_steps(), 0);
  problems.AtLeast("train.epochs", train.epochs(), 0);
  if (train.max_steps() == 0 && train.epochs() == 0) {
    problems.Add("train.max_steps",
                 "train.max_steps or train.epochs must be > 0 (training "
                 "would never stop)");
  }
  problems.NonNegative("train.grad_clip", train.grad_clip());
  problems.AtLeast("train.eval_every", train.eval_every(), 0);
  problems.AtLeast("train.eval_batches", train.eval_batches(), 0);
  problems.AtLeast("train.checkpoint_every", train.checkpoint_every(), 0);
  problems.AtLeast("train.keep_checkpoints", train.keep_checkpoints(), 0);
  problems.AtLeast("train.threads", train.threads(), 0);
  problems.AtLeast("train.log_every", train.log_every(), 1);

  problems.AtLeast("schedule.warmup_steps", schedule.warmup_steps(), 0);
  if (train.max_steps() > 0 && schedule.warmup_steps() > train.max_steps()) {
    problems.Add("schedule.warmup_steps",
                 absl::StrCat("must be <= train.max_steps (", train.max_steps(),
                              "), got ", schedule.warmup_steps()));
  }
  problems.Fraction("schedule.min_lr_ratio", schedule.min_lr_ratio(),
                    /*one_allowed=*/true);
}

void CheckAdapter(const proto::AdapterSpec& adapter, Problems& problems) {
  const std::vector<std::string> known(kAdapterTargetNames.begin(),
                                       kAdapterTargetNames.end());
  // Never empty here: ApplyDefaults fills in every projection.
  std::set<std::string> seen_targets;
  for (int i = 0; i < adapter.targets_size(); ++i) {
    const std::string& target = adapter.targets(i);
    const std::string path = absl::StrCat("lora.adapter.targets[", i, "]");
    if (std::find(known.begin(), known.end(), target) == known.end()) {
      const std::string close = ClosestMatch(target, known);
      const std::string hint =
          close.empty() ? "expected one of " + absl::StrJoin(known, ", ")
                        : "did you mean " + close + "?";
      problems.Add(
          path, absl::StrCat("unknown module \"", target, "\" (", hint, ")"));
    } else if (!seen_targets.insert(target).second) {
      problems.Add(path, absl::StrCat(target, " is listed twice"));
    }
  }
  std::set<int32_t> seen_layers;
  for (int i = 0; i < adapter.layers_size(); ++i) {
    const int32_t layer = adapter.layers(i);
    const std::string path = absl::StrCat("lora.adapter.layers[", i, "]");
    if (layer < 0) {
      problems.Add(path, absl::StrCat("must be >= 0, got ", layer));
    } else if (!seen_layers.insert(layer).second) {
      problems.Add(path, absl::StrCat("layer ", layer, " is listed twice"));
    }
  }
  problems.AtLeast("lora.adapter.rank", adapter.rank(), 1);
  problems.Positive("lora.adapter.alpha", adapter.alpha());
  problems.Fraction("lora.adapter.dropout", adapter.dropout(),
                    /*one_allowed=*/false);
}

// `model` has had its defaults applied; `given` is what the user wrote.
void CheckModelShape(const proto::ModelShape& model,
                     const proto::ModelShape& given,
                     const proto::DataSpec& data, Problems& problems) {
  const std::string p = "pretrain.model.";
  problems.AtLeast(p + "hidden_size", model.hidden_size(), 1);
  problems.AtLeast(p + "intermediate_size", model.intermediate_size(), 1);
  problems.AtLeast(p + "num_hidden_layers", model.num_hidden_layers(), 1);
  problems.AtLeast(p + "num_attention_heads", model.num_attention_heads(), 1);
  problems.AtLeast(p + "vocab_size", model.vocab_size(), 1);
  const int32_t heads = model.num_attention_heads();
  if (model.has_num_key_value_heads()) {
    const int32_t kv_heads = model.num_key_value_heads();
    problems.AtLeast(p + "num_key_value_heads", kv_heads, 1);
    if (kv_heads >= 1 && heads >= 1 && heads % kv_heads != 0) {
      problems.Add(p + "num_key_value_heads",
                   absl::StrCat("must divide num_attention_heads (", heads,
                                "), got ", kv_heads));
    }
  }
  if (!given.has_head_dim() && heads >= 1 && model.hidden_size() >= 1 &&
      model.hidden_size() % heads != 0) {
    problems.Add(p + "hidden_size",
                 absl::StrCat("must be a multiple of num_attention_heads (",
                              heads, ") when head_dim is not given, got ",
                              model.hidden_size()));
  }
  if (model.has_head_dim()) {
    problems.AtLeast(p + "head_dim", model.head_dim(), 2);
    if (model.head_dim() >= 2 && model.head_dim() % 2 != 0) {
      problems.Add(p + "head_dim",
                   absl::StrCat("must be even (RoPE rotates pairs), got ",
                                model.head_dim()));
    }
  }
  if (model.max_position_embeddings() < data.seq_len()) {
    problems.Add(p + "max_position_embeddings",
                 absl::StrCat("must be >= data.seq_len (", data.seq_len(),
                              "), got ", model.max_position_embeddings()));
  }
  // The byte tokenizer (core/data/tokenizer.h) has ids 0..255 for bytes,
  // 256 for BOS and 257 for EOS.
  constexpr int32_t kByteVocabSize = 258;
  if (data.tokenizer() == "byte" && model.vocab_size() >= 1 &&
      model.vocab_size() < kByteVocabSize) {
    problems.Add(p + "vocab_size",
                 absl::StrCat("must be >= ", kByteVocabSize,
                              " for the byte tokenizer (256 bytes, BOS, EOS), "
                              "got ",
                              model.vocab_size()));
  }
  problems.Positive(p + "rope_theta", model.rope_theta());
  problems.Positive(p + "rms_norm_eps", model.rms_norm_eps());
  problems.Positive(p + "init_std", model.init_std());
}

}  // namespace

void ApplyDefaults(proto::JobSpec* spec) {
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
  if (data->tokenizer().empty()) data->set_tokenizer("byte");

  proto::OptimizerSpec* optimizer = spec->mutable_optimizer();
  // Adapters start at zero and tolerate a smaller step than a fresh model.
  if (!optimizer->has_lr()) {
    optimizer->set_lr(spec->has_pretrain() ? 1e-3 : 2e-4);
  }
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

  if (spec->has_lora()) {
    proto::AdapterSpec* adapter = spec->mutable_lora()->mutable_adapter();
    if (adapter->targets().empty()) {
      for (std::string_view target : kDefaultAdapterTargets) {
        adapter->add_targets(std::string(target));
      }
    }
    if (!adapter->has_rank()) adapter->set_rank(8);
    if (!adapter->has_alpha()) adapter->set_alpha(16);
  }

  // A model continued from base_model takes its shape from config.json.
  if (spec->has_pretrain() && spec->base_model().empty()) {
    proto::ModelShape* model = spec->mutable_pretrain()->mutable_model();
    const int32_t heads = model->num_attention_heads();
    // Derived defaults only where they are well defined; otherwise Validate
    // names the field the user must fix rather than a made-up value.
    if (!model->has_num_key_value_heads() && heads > 0) {
      model->set_num_key_value_heads(heads);
    }
    if (!model->has_head_dim() && heads > 0 && model->hidden_size() > 0 &&
        model->hidden_size() % heads == 0) {
      model->set_head_dim(model->hidden_size() / heads);
    }
    if (!model->has_max_position_embeddings()) {
      model->set_max_position_embeddings(data->seq_len());
    }
    if (!model->has_rope_theta()) model->set_rope_theta(10000.0);
    if (!model->has_rms_norm_eps()) model->set_rms_norm_eps(1e-5);
    if (!model->has_tie_word_embeddings()) {
      model->set_tie_word_embeddings(false);
    }
    if (!model->has_init_std()) model->set_init_std(0.02);
  }
}

absl::Status ValidateJobSpec(const proto::JobSpec& given) {
  proto::JobSpec spec = given;
  ApplyDefaults(&spec);
  Problems problems;
  switch (spec.kind_case()) {
    case proto::JobSpec::kLora:
      if (spec.base_model().empty()) {
        problems.Add("base_model",
                     "must be set for a lora job (the model the adapter "
                     "trains on)");
      }
      CheckAdapter(spec.lora().adapter(), problems);
      break;
    case proto::JobSpec::kPretrain:
      if (!spec.base_model().empty()) {
        if (given.pretrain().has_model()) {
          problems.Add("pretrain.model",
                       "must not be given when base_model is set (the shape "
                       "comes from base_model's config.json)");
        }
      } else if (!given.pretrain().has_model()) {
        problems.Add("pretrain.model",
                     "must be given to train from scratch (or set base_model "
                     "to continue training a model)");
      } else {
        CheckModelShape(spec.pretrain().model(), given.pretrain().model(),
                        spec.data(), problems);
      }
      break;
    case proto::JobSpec::KIND_NOT_SET:
      problems.Add("", "no job kind given: one of lora, pretrain must be set");
      break;
  }
  if (spec.output_dir().empty()) problems.Add("output_dir", "must be set");
  CheckData(spec.data(), problems);
  CheckOptimizer(spec.optimizer(), problems);
  CheckTrainAndSchedule(spec.train(), spec.schedule(), problems);
  return problems.ToStatus(absl::StatusCode::kInvalidArgument);
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
