#include "jobs/langadapt_recipe.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/rng.h"
#include "core/adapter_plan.h"
#include "core/arith/arith.h"
#include "core/checkpoint.h"
#include "core/json.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "core/status.h"
#include "jobs/evaluation.h"
#include "jobs/seeds.h"
#include "ops/cpu/ops.h"

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;
using proto::LangAdaptJob;

const char* MethodName(LangAdaptJob::Method m) {
  switch (m) {
    case LangAdaptJob::METHOD_LORA: return "lora";
    case LangAdaptJob::METHOD_CPT: return "cpt";
    case LangAdaptJob::METHOD_LAYER_CPT: return "layer_cpt";
    default: return "layra";
  }
}

// Seeds of phase p (adapter init, data order, dropout): distinct per phase
// and a pure function of (seed, p).
uint64_t PhaseSeed(uint64_t seed, int64_t phase) {
  return SplitMix64(seed ^ SplitMix64(0x1a9ada97ULL + static_cast<uint64_t>(phase)));
}

bool IsNormOrBias(const std::string& name) {
  return name.find("norm") != std::string::npos || name.ends_with(".bias");
}

// "model.layers.3." -> 3; -1 for tensors outside the layers.
int LayerOf(const std::string& name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return -1;
  return std::atoi(name.c_str() + kPrefix.size());
}

std::string Fmt(double v) { return std::isfinite(v) ? absl::StrFormat("%.4f", v) : "n/a"; }

}  // namespace

absl::StatusOr<std::vector<int>> LangAdaptLayers(const LangAdaptJob& job, int L) {
  std::vector<int> layers;
  const LangAdaptJob::Method m = job.method();
  if (m == LangAdaptJob::METHOD_LORA || m == LangAdaptJob::METHOD_CPT) {
    for (int l = 0; l < L; ++l) layers.push_back(l);
    return layers;
  }
  if (job.layers_size() > 0) {
    for (int i = 0; i < job.layers_size(); ++i) {
      if (job.layers(i) >= L) {
        return absl::InvalidArgumentError(absl::StrCat("langadapt.layers[", i, "]: layer ", job.layers(i),
                                                       " does not exist (the model has ", L, " layers)"));
      }
      layers.push_back(job.layers(i));
    }
    std::sort(layers.begin(), layers.end());
    return layers;
  }
  int first, last;
  if (job.has_first_layers() || job.has_last_layers()) {
    first = job.first_layers();
    last = job.last_layers();
  } else if (m == LangAdaptJob::METHOD_LAYER_CPT) {
    // ChocoLlama: n = 2 * floor(L * f / 2), half in front, half at the back.
    int n = 2 * static_cast<int>(std::floor(L * job.layer_fraction() / 2.0));
    n = std::clamp(n, std::min(2, L), L);
    first = (n + 1) / 2;
    last = n / 2;
  } else {
    // LayRA: about the first 30% (where the input language is encoded) and
    // the last 6% (where the output is mapped back), at least one each.
    first = std::max(1, static_cast<int>(std::lround(0.30 * L)));
    last = std::max(1, static_cast<int>(std::lround(0.06 * L)));
  }
  if (first + last > L) {
    return absl::InvalidArgumentError(absl::StrCat("langadapt.first_layers: ", first, " first + ", last,
                                                   " last layers is more than the model's ", L, " layers"));
  }
  std::set<int> s;
  for (int l = 0; l < first; ++l) s.insert(l);
  for (int l = L - last; l < L; ++l) s.insert(l);
  return std::vector<int>(s.begin(), s.end());
}

// ---- LangAdaptMatrix -------------------------------------------------------

int LangAdaptMatrix::Column(const std::string& language) const {
  for (size_t i = 0; i < languages.size(); ++i) {
    if (languages[i] == language) return static_cast<int>(i);
  }
  return -1;
}

double LangAdaptMatrix::MeanSupportedForgetting() const {
  if (loss.size() < 2 || num_supported == 0) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  for (int j = 0; j < num_supported; ++j) sum += loss.back()[j] - loss[0][j];
  return sum / num_supported;
}

double LangAdaptMatrix::MeanGain() const {
  const int added = static_cast<int>(languages.size()) - num_supported;
  const int phases = static_cast<int>(loss.size()) - 1;
  if (phases < 1 || added == 0) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  int n = 0;
  for (int p = 0; p < std::min(phases, added); ++p) {
    const int col = num_supported + p;
    sum += loss[p][col] - loss[p + 1][col];
    ++n;
  }
  return sum / n;
}

std::string LangAdaptMatrix::ToJson(const std::string& method) const {
  Json j = Json::Object();
  j.Set("method", method);
  j.Set("unit", "nats per byte (byte tokenizer): mean token cross-entropy on each language's val text");
  Json langs = Json::Array(), rws = Json::Array(), mat = Json::Array();
  for (const std::string& l : languages) langs.Push(l);
  for (const std::string& r : rows) rws.Push(r);
  for (const auto& row : loss) {
    Json jr = Json::Array();
    for (double v : row) jr.Push(v);
    mat.Push(std::move(jr));
  }
  j.Set("languages", std::move(langs));
  j.Set("supported", static_cast<int64_t>(num_supported));
  j.Set("rows", std::move(rws));
  j.Set("loss", std::move(mat));
  // Per phase p (row p+1): gain on its language, forgetting of every earlier
  // language relative to the base and to the previous row.
  Json phases = Json::Array();
  for (size_t r = 1; r < loss.size(); ++r) {
    const int col = num_supported + static_cast<int>(r) - 1;
    Json ph = Json::Object();
    ph.Set("language", languages[static_cast<size_t>(col)]);
    ph.Set("gain", loss[r - 1][static_cast<size_t>(col)] - loss[r][static_cast<size_t>(col)]);
    Json fb = Json::Object(), fp = Json::Object();
    for (int c = 0; c < col; ++c) {
      fb.Set(languages[static_cast<size_t>(c)], loss[r][static_cast<size_t>(c)] - loss[0][static_cast<size_t>(c)]);
      fp.Set(languages[static_cast<size_t>(c)], loss[r][static_cast<size_t>(c)] - loss[r - 1][static_cast<size_t>(c)]);
    }
    ph.Set("forgetting_vs_base", std::move(fb));
    ph.Set("forgetting_vs_previous", std::move(fp));
    phases.Push(std::move(ph));
  }
  j.Set("phases", std::move(phases));
  const double f = MeanSupportedForgetting(), g = MeanGain();
  if (std::isfinite(f)) j.Set("mean_supported_forgetting", f);
  if (std::isfinite(g)) j.Set("mean_gain", g);
  return j.Dump(2) + "\n";
}

std::string LangAdaptMatrix::ToMarkdown(const std::string& method) const {
  std::string md = absl::StrCat("method `", method, "`: validation loss (nats per byte)\n\n| stage |");
  for (int c = 0; c < static_cast<int>(languages.size()); ++c) {
    absl::StrAppend(&md, " ", languages[static_cast<size_t>(c)], c < num_supported ? "" : " (new)", " |");
  }
  md += "\n|---|";
  for (size_t c = 0; c < languages.size(); ++c) md += "---:|";
  md += "\n";
  for (size_t r = 0; r < loss.size(); ++r) {
    absl::StrAppend(&md, "| ", rows[r], " |");
    for (double v : loss[r]) absl::StrAppend(&md, " ", Fmt(v), " |");
    md += "\n";
  }
  absl::StrAppend(&md, "\nmean forgetting on the supported languages (last row − base): ",
                  Fmt(MeanSupportedForgetting()),
                  "\nmean gain on the added languages (loss before its phase − after): ", Fmt(MeanGain()),
                  "\n");
  return md;
}

std::string LangAdaptMatrix::Encode() const {
  std::string s;
  const int64_t rows_n = static_cast<int64_t>(loss.size());
  s.append(reinterpret_cast<const char*>(&rows_n), sizeof rows_n);
  for (const auto& row : loss) s.append(reinterpret_cast<const char*>(row.data()), row.size() * sizeof(double));
  return s;
}

absl::Status LangAdaptMatrix::Decode(std::string_view bytes) {
  int64_t rows_n = 0;
  const size_t cols = languages.size();
  if (bytes.size() < sizeof rows_n) return absl::DataLossError("matrix entry: too short");
  std::memcpy(&rows_n, bytes.data(), sizeof rows_n);
  if (rows_n < 0 || rows_n > static_cast<int64_t>(rows.size()) ||
      bytes.size() != sizeof rows_n + static_cast<size_t>(rows_n) * cols * sizeof(double)) {
    return absl::DataLossError(absl::StrCat("matrix entry: ", bytes.size(), " bytes do not hold rows of ",
                                            cols, " languages"));
  }
  loss.assign(static_cast<size_t>(rows_n), std::vector<double>(cols));
  for (int64_t r = 0; r < rows_n; ++r) {
    std::memcpy(loss[static_cast<size_t>(r)].data(),
                bytes.data() + sizeof rows_n + static_cast<size_t>(r) * cols * sizeof(double), cols * sizeof(double));
  }
  return absl::OkStatus();
}

// ---- LangAdaptRecipe -------------------------------------------------------

LangAdaptRecipe::LangAdaptRecipe() = default;
LangAdaptRecipe::~LangAdaptRecipe() = default;

bool LangAdaptRecipe::lora_method() const {
  const LangAdaptJob::Method m = spec_.langadapt().method();
  return m == LangAdaptJob::METHOD_LAYRA || m == LangAdaptJob::METHOD_LORA;
}

bool LangAdaptRecipe::stack() const {
  return lora_method() && spec_.langadapt().between() == LangAdaptJob::BETWEEN_STACK;
}

absl::Status LangAdaptRecipe::BuildLanguages(const ModelConfig& config) {
  const LangAdaptJob& la = spec_.langadapt();
  ASSIGN_OR_RETURN(tokenizer_, MakeTokenizer("byte"));
  if (config.vocab_size < tokenizer_->vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("base_model: vocab_size ", config.vocab_size,
                                                   " is smaller than the byte tokenizer's ",
                                                   tokenizer_->vocab_size()));
  }
  const auto format = proto::DataSpec::FORMAT_TEXT;
  std::shared_ptr<const TokenCorpus> val;
  auto eval_set = [&](const proto::LangAdaptLanguage& l, const std::string& key)
      -> absl::StatusOr<std::unique_ptr<Dataset>> {
    const std::string val_key = key + ".val";
    ASSIGN_OR_RETURN(val, LoadCorpus(l.val(), format, *tokenizer_, val_key.c_str()));
    // As `sheaf eval` packs a corpus: the whole text is the validation split.
    DatasetOptions o;
    o.seq_len = la.seq_len();
    absl::StatusOr<std::unique_ptr<Dataset>> d = Dataset::Create(o, val, val);
    if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat(val_key, ": ", d.status().message()));
    if ((*d)->num_validation_sequences() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(val_key, ": holds less than one sequence of ",
                                                     la.seq_len(), " tokens"));
    }
    return d;
  };
  for (int i = 0; i < la.supported_size(); ++i) {
    matrix_.languages.push_back(la.supported(i).name());
    ASSIGN_OR_RETURN(auto d, eval_set(la.supported(i), absl::StrCat("langadapt.supported[", i, "]")));
    eval_sets_.push_back(std::move(d));
  }
  matrix_.num_supported = la.supported_size();
  matrix_.rows.push_back("base");
  for (int i = 0; i < la.languages_size(); ++i) {
    const proto::LangAdaptLanguage& l = la.languages(i);
    const std::string key = absl::StrCat("langadapt.languages[", i, "]");
    matrix_.languages.push_back(l.name());
    matrix_.rows.push_back("+" + l.name());
    ASSIGN_OR_RETURN(auto d, eval_set(l, key));
    const std::string train_key = key + ".train";
    ASSIGN_OR_RETURN(auto train, LoadCorpus(l.train(), format, *tokenizer_, train_key.c_str()));
    DatasetOptions o;
    o.seq_len = la.seq_len();
    o.seed = PhaseSeed(spec_.seed(), i);
    // The val text only sizes the held-out side; training reads `train`.
    absl::StatusOr<std::unique_ptr<Dataset>> t = Dataset::Create(o, train, val);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(train_key, ": ", t.status().message()));
    if ((*t)->num_train_sequences() < spec_.train().batch_size()) {
      return absl::InvalidArgumentError(absl::StrCat(train_key, ": ", (*t)->num_train_sequences(),
                                                     " sequences of ", la.seq_len(),
                                                     " tokens, fewer than one batch (train.batch_size ",
                                                     spec_.train().batch_size(), ")"));
    }
    eval_sets_.push_back(std::move(d));
    train_sets_.push_back(std::move(*t));
  }
  cursors_.assign(train_sets_.size(), DataCursor{});
  return absl::OkStatus();
}

absl::Status LangAdaptRecipe::Setup(const proto::JobSpec& spec_in) {
  spec_ = spec_in;
  ApplyDefaults(&spec_);
  RETURN_IF_ERROR(ValidateJobSpec(spec_));
  RETURN_IF_ERROR(CheckSpecPaths(spec_));
  if (!spec_.has_langadapt()) return absl::UnimplementedError("this recipe runs `langadapt` jobs");
  const LangAdaptJob& la = spec_.langadapt();
  ops::SetNumThreads(spec_.train().threads());
  world_ = std::make_unique<WorldSync>(options_.comm);
  if (!world_->is_root()) options_.quiet = true;
  if (spec_.train().batch_size() % world_->world_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.batch_size: ", spec_.train().batch_size(), " sequences cannot be split evenly over ",
        world_->world_size(), " ranks (batch_size is the global batch)"));
  }
  ASSIGN_OR_RETURN(config_, LoadModelConfig(spec_.base_model()));
  if (la.seq_len() > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("langadapt.seq_len: ", la.seq_len(),
                                                   " exceeds the model's max_position_embeddings ",
                                                   config_.max_position_embeddings));
  }
  ASSIGN_OR_RETURN(layers_, LangAdaptLayers(la, config_.num_layers));
  const int64_t n = la.languages_size();
  steps_per_language_ = spec_.train().max_steps() / n;
  total_steps_ = steps_per_language_ * n;
  RETURN_IF_ERROR(BuildLanguages(config_));

  // The model: frozen for the LoRA methods, (partly) trainable for cpt.
  TrainablePredicate trainable = NothingTrainable;
  if (la.method() == LangAdaptJob::METHOD_CPT) {
    trainable = EverythingTrainable;
  } else if (la.method() == LangAdaptJob::METHOD_LAYER_CPT) {
    const std::set<int> selected(layers_.begin(), layers_.end());
    trainable = [selected](const std::string& name) { return selected.count(LayerOf(name)) > 0; };
  }
  ASSIGN_OR_RETURN(model_, Model::Create(config_, trainable));
  RETURN_IF_ERROR(model_->LoadWeights(spec_.base_model()));

  std::vector<ParamRef> refs;
  if (lora_method()) {
    LoraOptions lo = LoraOptionsFromSpec(la.adapter(), spec_.seed());
    if (la.method() == LangAdaptJob::METHOD_LAYRA) lo.layers = layers_;
    for (int64_t p = 0; p <= n; ++p) {
      lo.seed = AdapterInitSeed(PhaseSeed(spec_.seed(), p));
      absl::StatusOr<std::unique_ptr<LoraAdapter>> a = LoraAdapter::Create(config_, lo);
      if (!a.ok()) return absl::InvalidArgumentError(absl::StrCat("langadapt.adapter: ", a.status().message()));
      if (p == n) {
        current_ = std::move(*a);
      } else {
        finished_.push_back(std::move(*a));
      }
    }
    for (int i = 0; i < current_->params().num_slots(); ++i) {
      const Tensor v = current_->params().view(i), g = current_->grads().view(i);
      refs.push_back({current_->params().name(i), v.data, g.data, v.numel(), true});
    }
  } else {
    for (Param* p : model_->weights().all()) {
      if (p->trainable()) {
        refs.push_back({p->name, p->value.data, p->grad.data, p->value.numel(), !IsNormOrBias(p->name)});
      }
    }
  }
  AdamWOptions ao;
  ao.lr = static_cast<float>(spec_.optimizer().lr());
  ao.beta1 = static_cast<float>(spec_.optimizer().beta1());
  ao.beta2 = static_cast<float>(spec_.optimizer().beta2());
  ao.eps = static_cast<float>(spec_.optimizer().eps());
  ao.weight_decay = static_cast<float>(spec_.optimizer().weight_decay());
  ASSIGN_OR_RETURN(AdamW adam, AdamW::Create(std::move(refs), ao));
  optimizer_ = std::make_unique<AdamW>(std::move(adam));

  // What a checkpoint holds.
  Arena& trainable_arena = current_ ? current_->params() : model_->params_arena();
  state_.AddTensor("trainable", std::span<float>(trainable_arena.data(), static_cast<size_t>(trainable_arena.size())));
  state_.AddStepAndOptimizer("step", &step_, "optimizer", optimizer_.get());
  state_.AddInt("phases_done", &phases_done_);
  for (int64_t i = 0; i < n; ++i) {
    const std::string& name = la.languages(static_cast<int>(i)).name();
    if (lora_method()) {
      Arena& a = finished_[static_cast<size_t>(i)]->params();
      state_.AddTensor("adapter." + name, std::span<float>(a.data(), static_cast<size_t>(a.size())));
    }
    state_.AddCursor("cursor." + name, train_sets_[static_cast<size_t>(i)].get(), &cursors_[static_cast<size_t>(i)]);
  }
  state_.AddBytes("matrix", [this] { return matrix_.Encode(); },
                  [this](std::string_view b) { return matrix_.Decode(b); });
  state_.AddBytes("spec", [this] { return JobSpecToYaml(spec_); }, nullptr);
  state_.AddInt("skipped_steps", &skipped_steps_, /*optional=*/true);
  metrics_ = std::make_unique<MetricsSink>(spec_.output_dir(), world_->is_root());

  const std::string& out = spec_.output_dir();
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
      prepared = absl::PermissionDeniedError(absl::StrCat("output_dir: cannot create ", ckpt_dir, ": ", ec.message()));
    } else {
      prepared = WriteSpecFile();
    }
  }
  return world_->AgreeOnStatus(prepared, "preparing output_dir");
}

absl::Status LangAdaptRecipe::WriteSpecFile() const {
  return WriteFileAtomically(
      spec_.output_dir() + "/spec.yaml",
      absl::StrCat("# Resolved job spec (defaults applied)", options_.spec_origin.empty() ? "" : " ",
                   options_.spec_origin, "; `sheaf train --resume ", spec_.output_dir(), "` reads it.\n",
                   JobSpecToYaml(spec_)));
}

absl::StatusOr<int64_t> LangAdaptRecipe::LoadCheckpoint() {
  auto restore = [&]() -> absl::StatusOr<int64_t> {
    CheckpointDir dir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints());
    std::vector<std::string> warnings;
    ASSIGN_OR_RETURN(auto latest, dir.LoadLatest(&warnings));
    if (world_->is_root()) {
      for (const std::string& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    }
    if (!latest) return 0;
    const Checkpoint& c = latest->second;
    if (c.Has("spec")) {
      ASSIGN_OR_RETURN(std::string_view saved_yaml, c.Bytes("spec"));
      absl::StatusOr<proto::JobSpec> saved = ParseJobSpecYaml(saved_yaml);
      if (saved.ok()) {
        ApplyDefaults(&*saved);
        if (saved->base_model() != spec_.base_model() || saved->seed() != spec_.seed() ||
            saved->langadapt().SerializeAsString() != spec_.langadapt().SerializeAsString() ||
            saved->train().batch_size() != spec_.train().batch_size() ||
            saved->train().grad_accum() != spec_.train().grad_accum()) {
          return absl::FailedPreconditionError(absl::StrCat(
              c.path(), ": base_model, seed, langadapt or the batch differ from the run that wrote this "
              "checkpoint; resuming would train something else (start a new output_dir instead)"));
        }
      }
    }
    RETURN_IF_ERROR(state_.Restore(c));
    const int64_t S = steps_per_language_;
    // Phase p's steps are [p·S, (p+1)·S); its end is checkpointed after
    // the phase is finished, so either way p = step / S phases are done.
    if (phases_done_ != step_ / S) {
      return absl::DataLossError(absl::StrCat(c.path(), ": step ", step_, " and ", phases_done_,
                                              " finished languages do not agree"));
    }
    if (static_cast<int64_t>(matrix_.loss.size()) != phases_done_ + 1) {
      return absl::DataLossError(absl::StrCat(c.path(), ": the matrix has ", matrix_.loss.size(),
                                              " rows after ", phases_done_, " languages"));
    }
    // The merged base of the current phase: the base (loaded at setup) plus
    // the finished adapters, in order, as the run computed it.
    if (lora_method() && !stack()) {
      for (int64_t i = 0; i < phases_done_; ++i) {
        RETURN_IF_ERROR(model_->ApplyAdapter(*finished_[static_cast<size_t>(i)], 1.0f));
      }
    }
    if (world_->is_root() && !options_.quiet) {
      std::fprintf(stderr, "resumed from %s (step %lld, %lld language(s) done)\n", c.path().c_str(),
                   static_cast<long long>(step_), static_cast<long long>(phases_done_));
    }
    return step_;
  };
  absl::StatusOr<int64_t> restored = restore();
  RETURN_IF_ERROR(world_->AgreeOnStatus(restored.status(), "restoring the checkpoint"));
  ASSIGN_OR_RETURN(bool same, world_->AllEqual(*restored));
  if (!same) {
    return absl::FailedPreconditionError("ranks restored different checkpoints: output_dir must be on a "
                                         "filesystem every rank sees");
  }
  return *restored;
}

absl::Status LangAdaptRecipe::SaveCheckpoint(int64_t step) {
  RETURN_IF_ERROR(world_->Barrier());
  if (!world_->is_root()) return world_->AgreeOnStatus(absl::OkStatus(), "writing the checkpoint");
  auto write = [&]() -> absl::Status {
    step_ = step;
    skipped_steps_ = loop_ ? loop_->skipped_steps() : skipped_steps_;
    CheckpointWriter w;
    RETURN_IF_ERROR(state_.Save(w));
    return CheckpointDir(spec_.output_dir() + "/checkpoints", spec_.train().keep_checkpoints()).Save(step, w);
  };
  return world_->AgreeOnStatus(write(), "writing the checkpoint");
}

absl::Status LangAdaptRecipe::ReduceGradients() {
  if (world_->world_size() == 1) return absl::OkStatus();
  Arena& grads = current_ ? current_->grads() : model_->grads_arena();
  std::unique_ptr<dist::Work> work = options_.comm->AllReduce(grads.data(), grads.size(), dist::ReduceOp::kReduceSum,
                                                              dist::Purpose::kPurposeAdapterGrad);
  return work->Wait(std::chrono::minutes(5));
}

absl::Status LangAdaptRecipe::StartPhase(int64_t phase, bool fresh) {
  const uint64_t seed = PhaseSeed(spec_.seed(), phase);
  if (fresh) {
    // A new language: a fresh adapter (its own init), fresh moments, the
    // language's data from its start.
    if (current_) {
      LoraOptions lo = current_->options();
      lo.seed = AdapterInitSeed(seed);
      ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> init, LoraAdapter::Create(config_, lo));
      std::memcpy(current_->params().data(), init->params().data(),
                  static_cast<size_t>(init->params().size()) * sizeof(float));
    }
    std::vector<float> zeros(optimizer_->state().size(), 0.0f);
    RETURN_IF_ERROR(optimizer_->Restore(0, zeros));
    cursors_[static_cast<size_t>(phase)] = DataCursor{};
  }
  LoopOptions lo;
  lo.batch_size = spec_.train().batch_size();
  lo.seq_len = spec_.langadapt().seq_len();
  lo.grad_accum = spec_.train().grad_accum();
  lo.grad_clip = static_cast<float>(spec_.train().grad_clip());
  lo.schedule.peak = static_cast<float>(spec_.optimizer().lr());
  lo.schedule.warmup_steps = spec_.schedule().warmup_steps();
  lo.schedule.total_steps = steps_per_language_;
  lo.schedule.min_ratio = static_cast<float>(spec_.schedule().min_lr_ratio());
  lo.seed = seed;
  const int64_t skipped = loop_ ? loop_->skipped_steps() : skipped_steps_;
  loop_ = std::make_unique<TrainLoop>(model_.get(), current_.get(), optimizer_.get(), nullptr, world_.get(), lo);
  loop_->set_skipped_steps(skipped);
  loop_phase_ = phase;
  if (stack() && phase > 0) {
    loop_->set_micro_step([this, phase, seed](int64_t step, int64_t m, const int32_t* in, const int32_t* tg,
                                              int B, int T, float scale) -> absl::StatusOr<LossStats> {
      // The finished languages' adapters, frozen (no gradient views, no
      // dropout), under the trainable one.
      AdapterPlan plan(config_.num_layers);
      plan.set_dropout(DropoutSeed(seed, step * spec_.train().grad_accum() + m),
                       static_cast<int64_t>(world_->world_rank()) * B * T);
      for (int64_t i = 0; i < phase; ++i) RETURN_IF_ERROR(plan.AddFrozenAdapter(*finished_[static_cast<size_t>(i)]));
      RETURN_IF_ERROR(plan.AddAdapter(*current_));
      ASSIGN_OR_RETURN(LossStats s, model_->Forward(in, tg, B, T, plan, /*training=*/true));
      RETURN_IF_ERROR(model_->Backward(scale));
      return s;
    });
  }
  loop_->set_before_clip([this](int64_t) { return ReduceGradients(); });
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> LangAdaptRecipe::MergedCopy(int64_t adapters) const {
  ASSIGN_OR_RETURN(std::unique_ptr<Model> m, Model::Create(config_, NothingTrainable));
  RETURN_IF_ERROR(m->LoadWeights(spec_.base_model()));
  for (int64_t i = 0; i < adapters; ++i) RETURN_IF_ERROR(m->ApplyAdapter(*finished_[static_cast<size_t>(i)], 1.0f));
  return m;
}

absl::Status LangAdaptRecipe::EvaluateRow(Model& model, const std::string& label) {
  EvalOptions eo;
  // `sheaf eval`'s batch where the world allows it, so that its sums add up
  // in the same order.
  eo.batch_size = 8 % world_->world_size() == 0 ? 8 : spec_.train().batch_size();
  eo.max_sequences = spec_.langadapt().eval_sequences();
  std::vector<EvalSet> sets;
  for (size_t j = 0; j < eval_sets_.size(); ++j) sets.push_back({matrix_.languages[j], eval_sets_[j].get()});
  ASSIGN_OR_RETURN(auto losses, EvaluateSets(model, nullptr, sets, eo, *world_));
  std::vector<double> row;
  for (const std::string& l : matrix_.languages) row.push_back(losses.at(l));
  matrix_.loss.push_back(std::move(row));
  if (!options_.quiet) {
    std::string line = absl::StrCat("langadapt ", label, ":");
    for (size_t j = 0; j < matrix_.languages.size(); ++j) {
      absl::StrAppend(&line, " ", matrix_.languages[j], " ", Fmt(matrix_.loss.back()[j]));
    }
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  return absl::OkStatus();
}

MetricValues LangAdaptRecipe::MatrixMetrics() const {
  MetricValues v;
  if (matrix_.loss.empty()) return v;
  for (size_t j = 0; j < matrix_.languages.size(); ++j) v["val_loss/" + matrix_.languages[j]] = matrix_.loss.back()[j];
  v["phase"] = static_cast<double>(phases_done_);
  return v;
}

absl::Status LangAdaptRecipe::WriteMatrixFiles() const {
  if (!world_->is_root()) return absl::OkStatus();
  const std::string method = MethodName(spec_.langadapt().method());
  RETURN_IF_ERROR(WriteFileAtomically(spec_.output_dir() + "/langadapt_matrix.json", matrix_.ToJson(method)));
  return WriteFileAtomically(spec_.output_dir() + "/langadapt_matrix.md", matrix_.ToMarkdown(method));
}

absl::Status LangAdaptRecipe::EndPhase(int64_t phase) {
  const LangAdaptJob& la = spec_.langadapt();
  const std::string& name = la.languages(static_cast<int>(phase)).name();
  std::unique_ptr<Model> merged;
  Model* stage = model_.get();
  std::string trained_on = spec_.base_model();
  for (int64_t i = 0; i < phase && lora_method() && !stack(); ++i) {
    absl::StrAppend(&trained_on, " + adapters/", la.languages(static_cast<int>(i)).name());
  }
  if (current_) {
    LoraAdapter& done = *finished_[static_cast<size_t>(phase)];
    std::memcpy(done.params().data(), current_->params().data(),
                static_cast<size_t>(current_->params().size()) * sizeof(float));
    if (stack()) {
      ASSIGN_OR_RETURN(merged, MergedCopy(phase + 1));
      stage = merged.get();
    } else {
      // base_{p+1} = base_p + s·B·A: Model::ApplyAdapter, as `sheaf merge`.
      RETURN_IF_ERROR(model_->ApplyAdapter(done, 1.0f));
    }
    if (world_->is_root()) {
      const std::string dir = spec_.output_dir() + "/adapters/" + name;
      if (stack()) {
        for (int64_t i = 0; i < phase; ++i) {
          absl::StrAppend(&trained_on, " (stacked on adapters/", la.languages(static_cast<int>(i)).name(), ")");
        }
      }
      RETURN_IF_ERROR(done.SavePeft(dir, trained_on));
    }
  }
  RETURN_IF_ERROR(EvaluateRow(*stage, "+" + name));
  phases_done_ = phase + 1;
  if (world_->is_root()) {
    if (la.keep_stage_models()) {
      RETURN_IF_ERROR(stage->Save(absl::StrCat(spec_.output_dir(), "/stages/", phase, "-", name)));
    }
    RETURN_IF_ERROR(WriteMatrixFiles());
  }
  MetricValues line = MatrixMetrics();
  line["step"] = static_cast<double>((phase + 1) * steps_per_language_);
  RETURN_IF_ERROR(metrics_->Append(line));
  if (after_phase_) after_phase_(phase, *stage);
  return absl::OkStatus();
}

absl::StatusOr<TrainResult> LangAdaptRecipe::Train(int64_t start_step) {
  TrainResult result;
  int64_t step = start_step;
  const int64_t S = steps_per_language_;
  RETURN_IF_ERROR(metrics_->TruncateAfter(step));
  const LangAdaptJob& la = spec_.langadapt();
  if (!options_.quiet) {
    std::fprintf(stderr,
                 "langadapt %s: %d language(s) x %lld steps x %lld sequences x %d tokens; layers [%s]; "
                 "%lld trainable parameters%s\n",
                 MethodName(la.method()), la.languages_size(), static_cast<long long>(S),
                 static_cast<long long>(spec_.train().batch_size() * spec_.train().grad_accum()), la.seq_len(),
                 absl::StrJoin(layers_, ",").c_str(), static_cast<long long>(optimizer_->total_size()),
                 step > 0 ? absl::StrCat(", resuming at step ", step).c_str() : "");
  }
  if (matrix_.loss.empty()) {
    RETURN_IF_ERROR(EvaluateRow(*model_, "base"));
    RETURN_IF_ERROR(WriteMatrixFiles());
    MetricValues line = MatrixMetrics();
    line["step"] = 0;
    RETURN_IF_ERROR(metrics_->Append(line));
  }
  result.first_val_loss = matrix_.loss[0].back();
  TrainProgress progress;
  progress.total_steps = total_steps_;
  progress.step = step;
  progress.metrics = MatrixMetrics();
  bool stop = false;
  while (step < total_steps_ && !stop) {
    const int64_t phase = step / S, local = step % S;
    if (loop_phase_ != phase) RETURN_IF_ERROR(StartPhase(phase, /*fresh=*/local == 0));
    const auto t0 = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(StepResult s, loop_->Step(local, *train_sets_[static_cast<size_t>(phase)],
                                               &cursors_[static_cast<size_t>(phase)]));
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++step;
    ++result.steps_this_run;
    result.step_losses.push_back(s.loss);
    MetricValues line = {{"step", static_cast<double>(step)},
                         {"phase", static_cast<double>(phase)},
                         {"loss", s.loss},
                         {"lr", s.lr}};
    if (s.skipped) {
      line["skipped"] = 1;
      line["skipped_steps"] = static_cast<double>(loop_->skipped_steps());
    } else {
      line["grad_norm"] = s.grad_norm;
    }
    RETURN_IF_ERROR(metrics_->Append(line));
    const bool phase_end = local + 1 == S;
    if (phase_end) RETURN_IF_ERROR(EndPhase(phase));
    progress.step = step;
    progress.loss = s.loss;
    progress.lr = s.lr;
    progress.grad_norm = s.grad_norm;
    progress.skipped_steps = loop_->skipped_steps();
    progress.metrics = MatrixMetrics();
    // The language being added, in the latest stage's row.
    progress.val_loss = matrix_.loss.back()[static_cast<size_t>(matrix_.num_supported + phase)];
    const double rate = static_cast<double>(spec_.train().batch_size() * spec_.train().grad_accum() * la.seq_len()) /
                        std::max(dt, 1e-9);
    progress.tokens_per_s = result.steps_this_run == 1 ? rate : 0.9 * progress.tokens_per_s + 0.1 * rate;
    progress.eta_s = progress.tokens_per_s > 0
                         ? static_cast<double>((total_steps_ - step) * spec_.train().batch_size() *
                                               spec_.train().grad_accum() * la.seq_len()) / progress.tokens_per_s
                         : 0;
    if (!options_.quiet && (step % std::max(1, spec_.train().log_every()) == 0 || phase_end)) {
      std::fprintf(stderr, "step %lld/%lld (%s, step %lld/%lld) loss %.4f lr %.3g\n", static_cast<long long>(step),
                   static_cast<long long>(total_steps_), la.languages(static_cast<int>(phase)).name().c_str(),
                   static_cast<long long>(local + 1), static_cast<long long>(S), s.loss, s.lr);
    }
    if (options_.on_progress && world_->is_root()) options_.on_progress(progress);
    if (after_step_) after_step_(step);
    Vote stop_vote(stop_.load());
    RETURN_IF_ERROR(world_->Tally({&stop_vote}));
    stop = stop_vote.any();
    const int64_t every = spec_.train().checkpoint_every();
    if ((every > 0 && step % every == 0) || step == total_steps_ || stop || phase_end) {
      RETURN_IF_ERROR(SaveCheckpoint(step));
    }
  }
  result.steps = step;
  result.final_train_loss = progress.loss;
  result.final_val_loss = matrix_.loss.back().back();
  if (step < total_steps_ && world_->is_root() && !options_.quiet) {
    std::fprintf(stderr, "stopped at step %lld (checkpoint saved; resume with --resume)\n",
                 static_cast<long long>(step));
  }
  return result;
}

absl::Status LangAdaptRecipe::Export(TrainResult* result) {
  result->export_dir = spec_.output_dir() + "/model";
  if (!world_->is_root()) return absl::OkStatus();
  if (stack()) {
    ASSIGN_OR_RETURN(std::unique_ptr<Model> merged, MergedCopy(static_cast<int64_t>(finished_.size())));
    RETURN_IF_ERROR(merged->Save(result->export_dir));
  } else {
    RETURN_IF_ERROR(model_->Save(result->export_dir));
  }
  const LangAdaptJob& la = spec_.langadapt();
  if (la.has_instruction_residual()) {
    // θ_adapted + λ · (θ_instruct − θ_base), streamed (core/arith).
    const proto::InstructionResidual& r = la.instruction_residual();
    ArithTerm t;
    t.kind = ArithTerm::Kind::kArithTermModel;
    t.lambda = r.lambda();
    t.path = r.instruct();
    t.ref = r.base();
    absl::Status s = ModelArithmetic(result->export_dir, {t}, spec_.output_dir() + "/instruct_model");
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("langadapt.instruction_residual: ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status LangAdaptRecipe::Cleanup(const TrainResult& result) {
  if (!world_->is_root()) return absl::OkStatus();
  MetricValues summary = {{"steps", static_cast<double>(result.steps)},
                          {"final_train_loss", result.final_train_loss}};
  for (const auto& [k, v] : MatrixMetrics()) {
    if (k != "phase") summary["final_" + k] = v;
  }
  const double f = matrix_.MeanSupportedForgetting(), g = matrix_.MeanGain();
  if (std::isfinite(f)) summary["mean_supported_forgetting"] = f;
  if (std::isfinite(g)) summary["mean_gain"] = g;
  return metrics_->WriteSummary(summary, {{"export", result.export_dir},
                                          {"matrix", spec_.output_dir() + "/langadapt_matrix.json"}});
}

namespace {
[[maybe_unused]] const bool kRegistered = RecipeRegistry::Global().Register(
    proto::JobSpec::kLangadapt, "langadapt", [] { return std::make_unique<LangAdaptRecipe>(); });
}  // namespace

}  // namespace sheaf::jobs
