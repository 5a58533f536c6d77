#include "jobs/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/checkpoint.h"
#include "core/data/document_source.h"
#include "core/data/token_corpus.h"
#include "core/data/token_file.h"
#include "core/data/tokenizer.h"
#include "core/json.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "core/status.h"
#include "ops/cpu/ops.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

absl::StatusOr<std::shared_ptr<const TokenCorpus>> LoadCorpus(
    const google::protobuf::RepeatedPtrField<std::string>& paths, proto::DataSpec::Format format,
    const Tokenizer& tokenizer, const char* key) {
  if (format == proto::DataSpec::FORMAT_TOKENS) {
    if (paths.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": format tokens takes exactly one .tok file, got ", paths.size()));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<TokenFile> f, TokenFile::Open(paths[0]));
    if (f->vocab_size() != tokenizer.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(key, ": ", paths[0], " has vocab ",
                                                     f->vocab_size(), ", the tokenizer ",
                                                     tokenizer.vocab_size()));
    }
    return std::shared_ptr<const TokenCorpus>(std::move(f));
  }
  std::vector<DocumentSource> sources;
  for (const std::string& p : paths) {
    DocumentSource s;
    s.path = p;
    s.split_blank_lines = format == proto::DataSpec::FORMAT_TEXT_PARAGRAPHS;
    if (format == proto::DataSpec::FORMAT_JSONL) s.format = SourceFormat::kSourceFormatJsonl;
    sources.push_back(std::move(s));
  }
  ASSIGN_OR_RETURN(std::vector<Document> docs, LoadDocuments(sources));
  ASSIGN_OR_RETURN(std::unique_ptr<InMemoryCorpus> c, InMemoryCorpus::FromDocuments(docs, tokenizer));
  return std::shared_ptr<const TokenCorpus>(std::move(c));
}

absl::StatusOr<ModelConfig> ConfigFromShape(const proto::ModelShape& s) {
  ModelConfig c;
  c.hidden_size = s.hidden_size();
  c.num_layers = s.num_hidden_layers();
  c.vocab_size = s.vocab_size();
  const int heads = s.num_attention_heads();
  const int kv = s.has_num_key_value_heads() ? s.num_key_value_heads() : heads;
  c.head_dim = s.has_head_dim() ? s.head_dim() : (heads > 0 ? c.hidden_size / heads : 0);
  c.max_position_embeddings = s.has_max_position_embeddings() ? s.max_position_embeddings() : 2048;
  c.rope_theta = s.has_rope_theta() ? static_cast<float>(s.rope_theta()) : 10000.0f;
  c.rms_norm_eps = s.has_rms_norm_eps() ? static_cast<float>(s.rms_norm_eps()) : 1e-5f;
  c.tie_word_embeddings = s.has_tie_word_embeddings() ? s.tie_word_embeddings() : false;
  c.layers.assign(static_cast<size_t>(std::max(c.num_layers, 0)),
                  LayerShape{heads, kv, s.intermediate_size()});
  absl::Status st = c.Validate();
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("pretrain.model: ", st.message()));
  }
  return c;
}

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

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const proto::JobSpec& spec_in,
                                                         const TrainerOptions& options) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->spec_ = spec_in;
  t->options_ = options;
  proto::JobSpec& spec = t->spec_;
  ApplyDefaults(&spec);
  RETURN_IF_ERROR(ValidateJobSpec(spec));
  RETURN_IF_ERROR(CheckSpecPaths(spec));
  if (!spec.has_lora() && !spec.has_pretrain()) {
    return absl::UnimplementedError("this trainer runs `lora` and `pretrain` jobs");
  }
  ops::SetNumThreads(spec.train().threads());
  if (options.comm != nullptr) {
    t->world_rank_ = options.comm->world_rank();
    t->world_size_ = options.comm->world_size();
  }
  if (t->world_rank_ != 0) t->options_.quiet = true;
  if (spec.train().batch_size() % t->world_size_ != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.batch_size: ", spec.train().batch_size(), " sequences cannot be split evenly over ",
        t->world_size_, " ranks (batch_size is the global batch)"));
  }

  // Model shape.
  ModelConfig config;
  if (!spec.base_model().empty()) {
    ASSIGN_OR_RETURN(config, LoadModelConfig(spec.base_model()));
  } else {
    ASSIGN_OR_RETURN(config, ConfigFromShape(spec.pretrain().model()));
  }
  const int T = spec.data().seq_len();
  if (T > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("data.seq_len: ", T,
                                                   " exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }

  // Data: everything is read and split before any output is written.
  if (!spec.data().tokenizer().empty() && spec.data().tokenizer() != "byte") {
    return absl::InvalidArgumentError(absl::StrCat("data.tokenizer: \"", spec.data().tokenizer(),
                                                   "\" is not available yet (use byte)"));
  }
  ByteTokenizer tokenizer;
  if (config.vocab_size < tokenizer.vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("base_model: vocab_size ", config.vocab_size,
                                                   " is smaller than the byte tokenizer's ",
                                                   tokenizer.vocab_size()));
  }
  ASSIGN_OR_RETURN(t->corpus_, LoadCorpus(spec.data().train(), spec.data().format(), tokenizer, "data.train"));
  if (spec.data().val_size() > 0) {
    ASSIGN_OR_RETURN(t->val_corpus_, LoadCorpus(spec.data().val(), spec.data().format(), tokenizer, "data.val"));
  }
  DatasetOptions dopt;
  dopt.seq_len = T;
  dopt.seed = spec.seed();
  dopt.val_fraction = spec.data().val_size() > 0 ? 0.0 : spec.data().val_fraction();
  ASSIGN_OR_RETURN(t->dataset_, Dataset::Create(dopt, t->corpus_, t->val_corpus_));

  const int64_t B_global = spec.train().batch_size(), accum = spec.train().grad_accum();
  const int64_t B = B_global / t->world_size_;  // this rank's rows
  if (spec.train().max_steps() > 0) {
    t->total_steps_ = spec.train().max_steps();
  } else {
    t->total_steps_ = std::max<int64_t>(
        1, spec.train().epochs() * t->dataset_->num_train_sequences() / (B_global * accum));
  }

  // Model and trainable parameters.
  const bool all_weights = spec.has_pretrain();
  // Frozen weights are sharded across a world of more than one rank.
  ModelOptions mopt;
  mopt.external_frozen = !all_weights && t->world_size_ > 1;
  ASSIGN_OR_RETURN(t->model_, Model::Create(config, all_weights ? TrainablePredicate(EverythingTrainable)
                                                                : TrainablePredicate(NothingTrainable),
                                            mopt));
  if (mopt.external_frozen) {
    dist::ShardedWeights::Options so;
    so.gather_budget_bytes = options.gather_budget_bytes;
    ASSIGN_OR_RETURN(t->sharded_, dist::ShardedWeights::Create(t->model_.get(), options.comm,
                                                               spec.base_model(), so));
  } else if (!spec.base_model().empty()) {
    RETURN_IF_ERROR(t->model_->LoadWeights(spec.base_model()));
  } else {
    const proto::ModelShape& s = spec.pretrain().model();
    t->model_->InitRandom(spec.seed(), s.has_init_std() ? static_cast<float>(s.init_std()) : 0.02f);
  }
  if (spec.has_lora()) {
    const proto::AdapterSpec& a = spec.lora().adapter();
    LoraOptions lo;
    lo.rank = a.rank();
    lo.alpha = static_cast<float>(a.alpha());
    lo.dropout = static_cast<float>(a.dropout());
    lo.rslora = a.rslora();
    lo.targets.assign(a.targets().begin(), a.targets().end());
    lo.layers.assign(a.layers().begin(), a.layers().end());
    lo.seed = Mix(spec.seed() ^ 0x10a);
    ASSIGN_OR_RETURN(t->adapter_, LoraAdapter::Create(config, lo));
    t->trainable_params_ = &t->adapter_->params();
    t->trainable_grads_ = &t->adapter_->grads();
  } else {
    t->trainable_params_ = &t->model_->params_arena();
    t->trainable_grads_ = &t->model_->grads_arena();
  }
  AdamWOptions aopt;
  aopt.lr = static_cast<float>(spec.optimizer().lr());
  aopt.beta1 = static_cast<float>(spec.optimizer().beta1());
  aopt.beta2 = static_cast<float>(spec.optimizer().beta2());
  aopt.eps = static_cast<float>(spec.optimizer().eps());
  aopt.weight_decay = static_cast<float>(spec.optimizer().weight_decay());
  if (t->world_size_ > 1) {
    dist::GradReducer::Options ro;
    ro.bucket_cap_bytes = options.bucket_cap_bytes;
    ASSIGN_OR_RETURN(t->reducer_, dist::GradReducer::Create(t->model_.get(), t->adapter_.get(),
                                                            options.comm, ro));
  }
  ASSIGN_OR_RETURN(AdamW adam, AdamW::Create(t->TrainableParams(), aopt));
  t->optimizer_ = std::make_unique<AdamW>(std::move(adam));
  t->inputs_.resize(static_cast<size_t>(accum * B * T));
  t->targets_.resize(t->inputs_.size());

  // Only now touch the output dir (rank 0 writes; the others wait).
  const std::string& out = spec.output_dir();
  const std::string ckpt_dir = out + "/checkpoints";
  if (!options.resume && fs::exists(ckpt_dir) && !fs::is_empty(ckpt_dir)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "output_dir: ", out, " already holds checkpoints of a run; resume it with "
        "`sheaf train --resume ", out, "` or choose another output_dir"));
  }
  absl::Status prepared = absl::OkStatus();
  if (t->world_rank_ == 0) {
    std::error_code ec;
    fs::create_directories(ckpt_dir, ec);
    if (ec) {
      prepared = absl::PermissionDeniedError(
          absl::StrCat("output_dir: cannot create ", ckpt_dir, ": ", ec.message()));
    } else if (!options.resume) {  // a resume rewrites it once the checkpoint is accepted
      prepared = t->WriteSpecFile();
    }
  }
  RETURN_IF_ERROR(t->AgreeOnStatus(prepared, "preparing output_dir"));
  return t;
}

absl::Status Trainer::SumAcrossRanks(double* values, int n) {
  if (world_size_ == 1) return absl::OkStatus();
  // Sent as pairs of floats (high + low part) so that sums of token counts
  // and losses keep ~48 bits.
  std::vector<float> buf(static_cast<size_t>(2 * n));
  for (int i = 0; i < n; ++i) {
    buf[2 * i] = static_cast<float>(values[i]);
    buf[2 * i + 1] = static_cast<float>(values[i] - static_cast<double>(buf[2 * i]));
  }
  auto work = options_.comm->AllReduce(buf.data(), 2 * n, dist::ReduceOp::kReduceSum,
                                       dist::Purpose::kPurposeControl);
  RETURN_IF_ERROR(work->Wait(std::chrono::minutes(5)));
  for (int i = 0; i < n; ++i) values[i] = static_cast<double>(buf[2 * i]) + buf[2 * i + 1];
  return absl::OkStatus();
}

absl::Status Trainer::WriteSpecFile() {
  const std::string path = spec_.output_dir() + "/spec.yaml";
  std::ofstream f(path, std::ios::trunc);
  f << "# Resolved job spec (defaults applied); `sheaf train --resume " << spec_.output_dir()
    << "` reads it.\n"
    << JobSpecToYaml(spec_);
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status Trainer::AgreeOnStatus(const absl::Status& local, const char* what) {
  if (world_size_ == 1) return local;
  double failed = local.ok() ? 0.0 : 1.0;
  RETURN_IF_ERROR(SumAcrossRanks(&failed, 1));
  if (!local.ok()) return local;
  if (failed > 0) {
    return absl::AbortedError(absl::StrCat(what, " failed on ", static_cast<int>(failed),
                                           " other rank(s); see their error"));
  }
  return absl::OkStatus();
}

absl::Status Trainer::Barrier() {
  if (world_size_ == 1) return absl::OkStatus();
  return options_.comm->Barrier()->Wait(std::chrono::minutes(5));
}

std::string Trainer::CommJson() const {
  if (world_size_ == 1) return "";
  const dist::Communicator& c = *options_.comm;
  return absl::StrFormat(", \"frozen_gather_bytes\": %d, \"adapter_grad_bytes\": %d, \"control_bytes\": %d",
                         c.bytes_sent(dist::Purpose::kPurposeFrozenGather),
                         c.bytes_sent(dist::Purpose::kPurposeAdapterGrad),
                         c.bytes_sent(dist::Purpose::kPurposeControl));
}

std::vector<ParamRef> Trainer::TrainableParams() {
  std::vector<ParamRef> refs;
  if (adapter_) {
    // Params and grads arenas share one layout, slot for slot.
    for (int i = 0; i < adapter_->params().num_slots(); ++i) {
      const Tensor v = adapter_->params().view(i), g = adapter_->grads().view(i);
      refs.push_back({adapter_->params().name(i), v.data, g.data, v.numel(), true});
    }
  } else {
    for (Param* p : model_->weights().all()) {
      if (p->trainable()) {
        refs.push_back({p->name, p->value.data, p->grad.data, p->value.numel(), !IsNormOrBias(p->name)});
      }
    }
  }
  return refs;
}

absl::StatusOr<double> Trainer::Evaluate() {
  // Batches of the global batch size, each split over the ranks like a
  // training batch. Every rank runs the same number of forwards (sharded
  // weights issue collectives), padding a short last batch with ignored rows.
  const int64_t B_global = spec_.train().batch_size(), T = spec_.data().seq_len();
  const int64_t B = B_global / world_size_;
  const int64_t n_seq = dataset_->num_validation_sequences();
  int64_t max_seq = n_seq;
  if (spec_.train().eval_batches() > 0) max_seq = std::min(n_seq, spec_.train().eval_batches() * B_global);
  std::vector<int32_t> in(static_cast<size_t>(B * T)), tg(in.size());
  double sums[2] = {0, 0};  // loss, tokens
  for (int64_t first = 0; first < max_seq; first += B_global) {
    const int64_t mine = first + world_rank_ * B;
    if (mine < n_seq) {
      ASSIGN_OR_RETURN(int64_t rows, dataset_->GetValidationBatch(mine, B, absl::MakeSpan(in), absl::MakeSpan(tg)));
      // Rows past max_seq (an eval_batches cut) do not count.
      for (int64_t r = std::max<int64_t>(0, std::min(rows, max_seq - mine)); r < B; ++r) {
        std::fill(tg.begin() + r * T, tg.begin() + (r + 1) * T, kIgnoreIndex);
      }
    } else {
      std::fill(in.begin(), in.end(), 0);
      std::fill(tg.begin(), tg.end(), kIgnoreIndex);
    }
    ASSIGN_OR_RETURN(LossStats s, model_->Forward(in.data(), tg.data(), static_cast<int>(B),
                                                  static_cast<int>(T), adapter_.get(), false));
    sums[0] += s.loss_sum;
    sums[1] += static_cast<double>(s.tokens);
  }
  RETURN_IF_ERROR(SumAcrossRanks(sums, 2));
  if (sums[1] == 0) return absl::FailedPreconditionError("validation split is empty");
  return sums[0] / sums[1];
}

absl::Status Trainer::SaveCheckpoint(int64_t step) {
  // One consistent checkpoint: every rank holds the same trainable state,
  // rank 0 writes it while the others wait, and all learn whether it worked.
  RETURN_IF_ERROR(Barrier());
  if (!is_root()) return AgreeOnStatus(absl::OkStatus(), "writing the checkpoint");
  auto write = [&]() -> absl::Status {
    CheckpointWriter w;
    RETURN_IF_ERROR(w.AddTensor("trainable", {trainable_params_->size()}, trainable_params_->data()));
    RETURN_IF_ERROR(w.AddTensor("optimizer", {static_cast<int64_t>(optimizer_->state().size())},
                                optimizer_->state().data()));
    const int64_t meta[2] = {step, optimizer_->step_count()};
    RETURN_IF_ERROR(w.AddBytes("step", std::string_view(reinterpret_cast<const char*>(meta), sizeof(meta))));
    RETURN_IF_ERROR(w.AddBytes("optimizer_layout", optimizer_->StateLayout()));
    RETURN_IF_ERROR(w.AddBytes("cursor", dataset_->EncodeCursor(cursor_)));
    RETURN_IF_ERROR(w.AddBytes("spec", JobSpecToYaml(spec_)));
    CheckpointDir dir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints());
    return dir.Save(step, w);
  };
  return AgreeOnStatus(write(), "writing the checkpoint");
}

absl::StatusOr<int64_t> Trainer::RestoreCheckpoint() {
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
  // The fields that define what is being trained must not change on resume
  // (optimizer settings, schedule and step counts may).
  if (c.Has("spec")) {
    ASSIGN_OR_RETURN(std::string_view saved_yaml, c.Bytes("spec"));
    absl::StatusOr<proto::JobSpec> saved = ParseJobSpecYaml(saved_yaml);
    if (saved.ok()) {
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
    }
  }
  ASSIGN_OR_RETURN(std::span<const float> params, c.Tensor("trainable", {trainable_params_->size()}));
  std::copy(params.begin(), params.end(), trainable_params_->data());
  ASSIGN_OR_RETURN(std::span<const float> opt, c.Tensor("optimizer", {static_cast<int64_t>(optimizer_->state().size())}));
  ASSIGN_OR_RETURN(std::string_view meta_bytes, c.Bytes("step"));
  if (meta_bytes.size() != 2 * sizeof(int64_t)) {
    return absl::DataLossError(absl::StrCat(c.path(), ": malformed step entry"));
  }
  int64_t meta[2];
  std::memcpy(meta, meta_bytes.data(), sizeof(meta));
  ASSIGN_OR_RETURN(std::string_view layout, c.Bytes("optimizer_layout"));
  if (layout != optimizer_->StateLayout()) {
    return absl::FailedPreconditionError(absl::StrCat(
        c.path(), ": the checkpoint's parameters differ from this job's (was the spec changed?)"));
  }
  RETURN_IF_ERROR(optimizer_->Restore(meta[1], opt));
  ASSIGN_OR_RETURN(std::string_view cursor, c.Bytes("cursor"));
  ASSIGN_OR_RETURN(cursor_, dataset_->DecodeCursor(cursor));
  if (is_root()) {
    std::fprintf(stderr, "resumed from %s (step %lld)\n", c.path().c_str(), static_cast<long long>(meta[0]));
  }
  return meta[0];
}

absl::Status Trainer::AppendMetrics(const std::string& line) {
  if (!is_root()) return absl::OkStatus();
  std::ofstream f(spec_.output_dir() + "/metrics.jsonl", std::ios::app);
  f << line << "\n";
  if (!f) return absl::InternalError(absl::StrCat("cannot append to ", spec_.output_dir(), "/metrics.jsonl"));
  return absl::OkStatus();
}

absl::Status Trainer::Export(TrainResult* result) {
  if (!is_root()) return absl::OkStatus();
  const std::string base_name = spec_.base_model().empty() ? spec_.name() : spec_.base_model();
  if (adapter_) {
    result->export_dir = spec_.output_dir() + "/adapter";
    return adapter_->SavePeft(result->export_dir, base_name);
  }
  result->export_dir = spec_.output_dir() + "/model";
  return model_->Save(result->export_dir);
}

absl::StatusOr<TrainResult> Trainer::Run() {
  TrainResult result;
  const int64_t B = spec_.train().batch_size() / world_size_, T = spec_.data().seq_len(),
                accum = spec_.train().grad_accum();
  const std::string metrics_path = spec_.output_dir() + "/metrics.jsonl";
  int64_t step = 0;
  if (options_.resume) {
    // Every rank reads the checkpoint (shared filesystem); all must succeed
    // and agree on the step, or their collectives would not match.
    absl::StatusOr<int64_t> restored = RestoreCheckpoint();
    RETURN_IF_ERROR(AgreeOnStatus(restored.status(), "restoring the checkpoint"));
    step = *restored;
    double sum = static_cast<double>(step);
    RETURN_IF_ERROR(SumAcrossRanks(&sum, 1));
    if (sum != static_cast<double>(step) * world_size_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ranks restored different checkpoints (rank ", world_rank_, " has step ", step,
          "): output_dir must be on a filesystem every rank sees"));
    }
    // Record what this run uses (e.g. --set overrides of the step budget),
    // so the next resume continues with the same spec.
    if (is_root()) RETURN_IF_ERROR(WriteSpecFile());
  }
  // Keep metrics consistent with the restored state: drop lines past `step`.
  if (is_root()) {
    std::vector<std::string> kept;
    std::ifstream in(metrics_path);
    for (std::string line; std::getline(in, line);) {
      absl::StatusOr<Json> j = Json::Parse(line);
      if (j.ok() && j->Find("step") && j->Find("step")->is_int64() &&
          j->Find("step")->as_int64() <= step && step > 0) {
        kept.push_back(line);
      }
    }
    std::ofstream out(metrics_path, std::ios::trunc);
    for (const std::string& l : kept) out << l << "\n";
  }
  const bool tty = !options_.quiet && isatty(STDERR_FILENO);
  if (!options_.quiet) {
    std::fprintf(stderr,
                 "%s: %lld steps x %lld sequences x %lld tokens; %lld train / %lld validation "
                 "sequences; %lld trainable parameters%s\n",
                 spec_.has_lora() ? "lora" : "pretrain", static_cast<long long>(total_steps_),
                 static_cast<long long>(B * world_size_ * accum), static_cast<long long>(T),
                 static_cast<long long>(dataset_->num_train_sequences()),
                 static_cast<long long>(dataset_->num_validation_sequences()),
                 static_cast<long long>(trainable_params_->size()),
                 step > 0 ? absl::StrCat(", resuming at step ", step).c_str() : "");
  }
  TrainProgress progress;
  progress.total_steps = total_steps_;
  progress.step = step;
  if (step == 0) {
    ASSIGN_OR_RETURN(result.first_val_loss, Evaluate());
    progress.val_loss = result.first_val_loss;
    RETURN_IF_ERROR(AppendMetrics(absl::StrFormat("{\"step\": 0, \"val_loss\": %.6f, \"val_ppl\": %.4f}",
                                                  result.first_val_loss, std::exp(result.first_val_loss))));
  }
  LrSchedule sched;
  sched.peak = static_cast<float>(spec_.optimizer().lr());
  sched.warmup_steps = spec_.schedule().warmup_steps();
  sched.total_steps = total_steps_;
  sched.min_ratio = static_cast<float>(spec_.schedule().min_lr_ratio());
  const std::vector<ParamRef> params = optimizer_->params();
  const auto run_start = Clock::now();
  double tok_rate = 0;
  int64_t steps_this_run = 0;

  bool stop = false;
  while (step < total_steps_ && !stop) {
    const auto t0 = Clock::now();
    // Fetch the whole step first: the loss is a mean over every valid target
    // of the step, so each micro-batch's gradient is scaled by 1/total.
    int64_t valid = 0;
    for (int64_t m = 0; m < accum; ++m) {
      const size_t off = static_cast<size_t>(m * B * T);
      ASSIGN_OR_RETURN(cursor_, dataset_->GetBatch(cursor_, B, RankSlice{world_rank_, world_size_},
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
    RETURN_IF_ERROR(SumAcrossRanks(counts, 2));
    valid = static_cast<int64_t>(counts[0]);
    if (counts[1] > 0) {
      return absl::DataLossError(absl::StrCat(
          "step ", step + 1, ": ", static_cast<int64_t>(counts[1]),
          " token(s) outside the model's vocabulary [0, ", vocab, ") in the training data"));
    }
    if (valid == 0) return absl::InternalError("a training step has no valid target token");
    trainable_grads_->Zero();
    double loss_sum = 0;
    for (int64_t m = 0; m < accum; ++m) {
      if (reducer_) reducer_->set_enabled(m == accum - 1);
      const size_t off = static_cast<size_t>(m * B * T);
      if (adapter_) {
        adapter_->set_dropout_seed(Mix(Mix(spec_.seed()) ^ Mix(static_cast<uint64_t>(step * accum + m))));
        adapter_->set_dropout_row_offset(static_cast<int64_t>(world_rank_) * B * T);
      }
      ASSIGN_OR_RETURN(LossStats s, model_->Forward(inputs_.data() + off, targets_.data() + off,
                                                    static_cast<int>(B), static_cast<int>(T),
                                                    adapter_.get(), true));
      RETURN_IF_ERROR(model_->Backward(1.0f / static_cast<float>(valid)));
      loss_sum += s.loss_sum;
    }
    if (reducer_) RETURN_IF_ERROR(reducer_->Finish());
    RETURN_IF_ERROR(SumAcrossRanks(&loss_sum, 1));
    const double loss = loss_sum / static_cast<double>(valid);
    if (!std::isfinite(loss)) {
      return absl::InternalError(absl::StrCat("loss is ", loss, " at step ", step,
                                              " (diverged: lower optimizer.lr or set train.grad_clip)"));
    }
    const float grad_norm = ClipGradNorm(params, static_cast<float>(spec_.train().grad_clip()));
    const float lr = sched.At(step);
    optimizer_->Step(lr);
    ++step;
    ++steps_this_run;
    result.step_losses.push_back(loss);

    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const double rate = static_cast<double>(B * world_size_ * T * accum) / std::max(dt, 1e-9);
    tok_rate = steps_this_run == 1 ? rate : 0.9 * tok_rate + 0.1 * rate;
    progress.step = step;
    progress.loss = loss;
    progress.lr = lr;
    progress.grad_norm = grad_norm;
    progress.tokens_per_s = tok_rate;
    const double elapsed = std::chrono::duration<double>(Clock::now() - run_start).count();
    progress.eta_s = elapsed / static_cast<double>(steps_this_run) * static_cast<double>(total_steps_ - step);

    std::string val_field;
    // eval_every / checkpoint_every of 0 mean "only at the end".
    const int64_t eval_every = spec_.train().eval_every(), ckpt_every = spec_.train().checkpoint_every();
    if ((eval_every > 0 && step % eval_every == 0) || step == total_steps_) {
      ASSIGN_OR_RETURN(double val, Evaluate());
      progress.val_loss = val;
      result.final_val_loss = val;
      val_field = absl::StrFormat(", \"val_loss\": %.6f, \"val_ppl\": %.4f", val, std::exp(val));
    }
    RETURN_IF_ERROR(AppendMetrics(absl::StrFormat(
        "{\"step\": %d, \"loss\": %.6f%s, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f%s}",
        step, loss, val_field, lr, grad_norm, rate, CommJson())));
    if (!options_.quiet && (tty || step % std::max(1, spec_.train().log_every()) == 0 || step == total_steps_ ||
                            !val_field.empty())) {
      PrintProgress(progress, tty);
    }
    if (options_.on_progress && is_root()) options_.on_progress(progress);
    // A stop request on any rank (SIGTERM reaches ranks at different
    // moments) stops all of them after this step, so collectives stay matched.
    double stop_votes = stop_.load() ? 1.0 : 0.0;
    RETURN_IF_ERROR(SumAcrossRanks(&stop_votes, 1));
    stop = stop_votes > 0;
    if ((ckpt_every > 0 && step % ckpt_every == 0) || step == total_steps_ || stop) {
      RETURN_IF_ERROR(SaveCheckpoint(step));
    }
  }
  if (tty && stop) std::fprintf(stderr, "\n");
  result.steps = step;
  result.final_train_loss = progress.loss;
  if (step < total_steps_) {
    if (is_root()) std::fprintf(stderr, "stopped at step %lld (checkpoint saved; resume with --resume)\n",
                 static_cast<long long>(step));
    return result;
  }
  if (result.final_val_loss < 0) {
    ASSIGN_OR_RETURN(result.final_val_loss, Evaluate());
  }
  if (steps_this_run == 0) {
    // Resumed a run that had already finished: re-export, keep its summary.
    if (!is_root()) return result;
    if (!options_.quiet) std::fprintf(stderr, "the run had already finished at step %lld\n", static_cast<long long>(step));
    RETURN_IF_ERROR(Export(&result));
    return result;
  }
  RETURN_IF_ERROR(Export(&result));
  if (!is_root()) return result;
  if (world_size_ > 1 && !options_.quiet) {
    const dist::Communicator& c = *options_.comm;
    std::fprintf(stderr,
                 "traffic per rank: frozen_gather %.1f MB, adapter_grad %.1f MB, control %.3f MB "
                 "over %lld steps on %d ranks\n",
                 c.bytes_sent(dist::Purpose::kPurposeFrozenGather) / 1e6,
                 c.bytes_sent(dist::Purpose::kPurposeAdapterGrad) / 1e6,
                 c.bytes_sent(dist::Purpose::kPurposeControl) / 1e6,
                 static_cast<long long>(steps_this_run), world_size_);
  }
  std::ofstream summary(spec_.output_dir() + "/summary.json", std::ios::trunc);
  summary << absl::StrFormat(
      "{\"steps\": %d, \"final_val_loss\": %.6f, \"final_val_ppl\": %.4f, \"final_train_loss\": %.6f, "
      "\"export\": \"%s\"}\n",
      step, result.final_val_loss, std::exp(result.final_val_loss), result.final_train_loss,
      result.export_dir);
  return result;
}

}  // namespace sheaf
