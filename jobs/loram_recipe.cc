// The `loram` recipe (LoRAM, "Train Small, Infer Large", ICLR 2025): one job
// runs the publisher's and the user's steps in phases,
//
//   prune    base_model → output_dir/pruned/ (per-layer config.json,
//            model.safetensors, pruning.safetensors); skipped with
//            loram.pruned_model
//   align    continued pre-training of the pruned model (the pretrain
//            recipe) → output_dir/align/model/; skipped when align.steps = 0
//   train    LoRA on the pruned (aligned) frozen model (the lora recipe)
//            → output_dir/train/adapter/ (the pruned adapter). With
//            loram.quantize: nf4 (QLoRAM) the phase first writes the NF4
//            file of the small model's projections (output_dir/nf4/
//            model.nf4.safetensors, core/quant/nf4_file.h) and trains on
//            frozen_dtype nf4: the projections quantised on load, which
//            are the same bytes the file reads back (core/model_nf4_test);
//            embeddings, lm_head and norms stay f32
//   recover  the adapter expanded to the full shapes → output_dir/adapter/
//            (PEFT, for base_model)
//   eval     full model + recovered adapter, the base alone and the pruned
//            model + pruned adapter ("infer small") on the job's validation
//            split and loram.eval's sets → output_dir/loram_report.json
//            (with nf4, "infer small" runs on the NF4 small model it was
//            trained on; the full model is always the original f32 one)
//
// Composition, not copies: align and train are the existing Trainer recipe
// run on a derived spec in their own subdirectory, so they checkpoint and
// resume (bit for bit) exactly as `pretrain` and `lora` jobs do. The phase
// itself is a named entry ("phase") of a jobs::CheckpointState written to
// output_dir/loram_state/ after each phase, so a killed job resumes in the
// phase it was in (and inside it, from that phase's newest checkpoint).
//
// Memory: per phase, the frozen bytes the phase's model holds and the
// process's peak RSS during the phase (VmHWM, reset at each phase start via
// /proc/self/clear_refs) go into the report.
//
// Worlds: align and train run on the world like any pretrain/lora job;
// prune, recover and the report are rank 0's (the others wait), and every
// rank evaluates its slice of each set on unsharded copies of the models.
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "core/checkpoint.h"
#include "core/json.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/prune/pruning_map.h"
#include "core/prune/recover.h"
#include "core/quant/nf4_file.h"
#include "core/safetensors.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "core/status.h"
#include "jobs/build.h"
#include "jobs/evaluation.h"
#include "jobs/loram/prune_dir.h"
#include "jobs/metrics.h"
#include "jobs/recipe.h"
#include "jobs/state.h"
#include "jobs/trainer.h"
#include "jobs/world_sync.h"
#include "ops/cpu/ops.h"

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;

enum Phase : int64_t { kPhasePrune = 0, kPhaseAlign, kPhaseTrain, kPhaseRecover, kPhaseEval, kPhaseDone };
constexpr const char* kPhaseNames[] = {"prune", "align", "train", "recover", "eval"};

bool HasCheckpoints(const std::string& dir) {
  std::error_code ec;
  return fs::exists(dir, ec) && !fs::is_empty(dir, ec);
}

// Peak RSS since the last reset, in bytes (Linux; 0 elsewhere).
int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return 0;
}
void ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

struct PhaseStats {
  bool ran = false;     // in this process
  double seconds = 0;
  int64_t peak_rss = 0;
  int64_t frozen_bytes = 0;  // frozen base weights of the phase's model
  int64_t trainable_params = 0;
};

class LoramRecipe : public Recipe {
 public:
  absl::Status Setup(const proto::JobSpec& spec_in) override {
    spec_ = spec_in;
    ApplyDefaults(&spec_);
    RETURN_IF_ERROR(ValidateJobSpec(spec_));
    RETURN_IF_ERROR(CheckSpecPaths(spec_));
    if (!spec_.has_loram()) return absl::UnimplementedError("this recipe runs `loram` jobs");
    ops::SetNumThreads(spec_.train().threads());
    world_ = std::make_unique<WorldSync>(options_.comm);
    if (!world_->is_root()) options_.quiet = true;
    const proto::LoramJob& l = spec_.loram();
    ASSIGN_OR_RETURN(full_config_, LoadModelConfig(spec_.base_model()));
    ASSIGN_OR_RETURN(recover_mode_, prune::ParseRecoverMode(l.recover(), "loram.recover"));
    if (!l.pruned_model().empty()) {
      ASSIGN_OR_RETURN(prune::PruningMap map, prune::LoadPruningMap(absl::StrCat(
                                                  l.pruned_model(), "/", prune::kPruningMapFile)));
      if (map.original.ToJson() != full_config_.ToJson()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "loram.pruned_model: ", l.pruned_model(),
            " was pruned from another model than base_model (pruning.safetensors' "
            "original_config differs from ", spec_.base_model(), "/config.json)"));
      }
    } else {
      ASSIGN_OR_RETURN(method_, prune::ParseImportanceMethod(l.prune().method(), "loram.prune.method"));
    }
    // Everything the phases read is checked now, before output_dir is touched.
    ASSIGN_OR_RETURN(data_, BuildData(spec_, full_config_));

    state_.AddInt("phase", &phase_);
    state_.AddBytes("spec", [this] { return JobSpecToYaml(spec_); }, nullptr);
    const std::string& out = spec_.output_dir();
    const bool has_state = HasCheckpoints(StateDir());
    if (!options_.resume && has_state) {
      return absl::AlreadyExistsError(absl::StrCat(
          "output_dir: ", out, " already holds a loram run; resume it with `sheaf train --resume ",
          out, "` or choose another output_dir"));
    }
    absl::Status prepared = absl::OkStatus();
    if (world_->is_root()) {
      std::error_code ec;
      fs::create_directories(out, ec);
      if (ec) {
        prepared = absl::PermissionDeniedError(absl::StrCat("output_dir: cannot create ", out, ": ", ec.message()));
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
      CheckpointDir dir(StateDir(), 2);
      std::vector<std::string> warnings;
      ASSIGN_OR_RETURN(auto latest, dir.LoadLatest(&warnings));
      if (world_->is_root()) {
        for (const std::string& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
      }
      if (!latest) return 0;
      RETURN_IF_ERROR(state_.Restore(latest->second));
      return phase_;
    };
    absl::StatusOr<int64_t> phase = restore();
    RETURN_IF_ERROR(world_->AgreeOnStatus(phase.status(), "restoring the loram phase"));
    phase_ = *phase;
    if (!options_.quiet && phase_ > 0 && phase_ < kPhaseDone) {
      std::fprintf(stderr, "loram: resuming in phase %s\n", kPhaseNames[phase_]);
    }
    return phase_;
  }

  absl::Status SaveCheckpoint(int64_t phase) override {
    RETURN_IF_ERROR(world_->Barrier());
    absl::Status st = absl::OkStatus();
    if (world_->is_root()) {
      phase_ = phase;
      CheckpointWriter w;
      st = state_.Save(w);
      if (st.ok()) st = CheckpointDir(StateDir(), 2).Save(phase, w);
    } else {
      phase_ = phase;
    }
    return world_->AgreeOnStatus(st, "writing the loram phase");
  }

  absl::StatusOr<TrainResult> Train(int64_t start_phase) override {
    TrainResult result;
    phase_ = start_phase;
    while (phase_ < kPhaseDone) {
      if (stop_.load()) break;
      const Phase p = static_cast<Phase>(phase_);
      if (!options_.quiet) std::fprintf(stderr, "loram: phase %s\n", kPhaseNames[p]);
      ResetPeakRss();
      const auto t0 = std::chrono::steady_clock::now();
      PhaseStats& stats = stats_[p];
      bool finished = true;
      switch (p) {
        case kPhasePrune: RETURN_IF_ERROR(RunPrune(stats)); break;
        case kPhaseAlign: {
          ASSIGN_OR_RETURN(finished, RunAlign(stats));
          break;
        }
        case kPhaseTrain: {
          ASSIGN_OR_RETURN(finished, RunTrain(stats, &result));
          break;
        }
        case kPhaseRecover: RETURN_IF_ERROR(RunRecover(stats)); break;
        case kPhaseEval: RETURN_IF_ERROR(RunEval(stats, &result)); break;
        case kPhaseDone: break;
      }
      stats.ran = true;
      stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      stats.peak_rss = PeakRssBytes();
      if (!finished) break;  // a stop request inside align/train: its checkpoint is saved
      RETURN_IF_ERROR(SaveCheckpoint(phase_ + 1));
      ++result.steps_this_run;
    }
    result.steps = phase_;
    result.export_dir = spec_.output_dir() + "/adapter";
    if (phase_ < kPhaseDone && world_->is_root()) {
      std::fprintf(stderr, "loram: stopped in phase %s (resume with --resume)\n", kPhaseNames[phase_]);
    }
    return result;
  }

  absl::Status Export(TrainResult* result) override {
    result->export_dir = spec_.output_dir() + "/adapter";
    return absl::OkStatus();
  }

  absl::Status Cleanup(const TrainResult& result) override {
    MetricsSink sink(spec_.output_dir(), world_->is_root());
    return sink.WriteSummary({{"phases", static_cast<double>(result.steps)},
                              {"base_val_loss", report_base_loss_},
                              {"final_val_loss", result.final_val_loss},
                              {"final_val_ppl", std::exp(result.final_val_loss)}},
                             {{"export", result.export_dir},
                              {"report", spec_.output_dir() + "/loram_report.json"}});
  }

  void RequestStop() override {
    stop_.store(true);
    std::lock_guard<std::mutex> lock(current_mu_);
    if (current_ != nullptr) current_->RequestStop();
  }
  int64_t total_steps() const override { return kPhaseDone; }
  const proto::JobSpec& spec() const override { return spec_; }

 private:
  std::string StateDir() const { return spec_.output_dir() + "/loram_state"; }
  std::string PrunedDir() const {
    return spec_.loram().pruned_model().empty() ? spec_.output_dir() + "/pruned"
                                                : spec_.loram().pruned_model();
  }
  bool Aligning() const { return spec_.loram().align().steps() > 0; }
  // The model the adapter trains on: the aligned one when there is one.
  std::string SmallDir() const {
    return Aligning() ? spec_.output_dir() + "/align/model" : PrunedDir();
  }
  std::string MapPath() const { return PrunedDir() + "/" + prune::kPruningMapFile; }
  bool Quantizing() const { return spec_.loram().quantize() == "nf4"; }
  std::string Nf4Path() const { return spec_.output_dir() + "/nf4/model.nf4.safetensors"; }
  DType SmallDtype() const { return Quantizing() ? DType::kDTypeNF4 : DType::kDTypeF32; }

  // The NF4 file of the small model's projection matrices (the tensors a
  // frozen_dtype nf4 model quantises), one tensor read at a time.
  absl::Status WriteNf4Artifact() {
    ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(SmallDir()));
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st, SafetensorsModel::Open(SmallDir()));
    std::vector<quant::Nf4Tensor> tensors;
    std::vector<float> x;
    for (const ExpectedTensor& e : ExpectedTensors(c)) {
      if (e.shape.size() != 2 || e.name.rfind("model.layers.", 0) != 0) continue;
      int64_t n = 1;
      for (int64_t d : e.shape) n *= d;
      x.resize(static_cast<size_t>(n));
      RETURN_IF_ERROR(st->ReadF32(e.name, e.shape, x.data()));
      tensors.push_back(quant::QuantizeTensor(e.name, e.shape, x.data()));
    }
    std::error_code ec;
    fs::create_directories(fs::path(Nf4Path()).parent_path(), ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", Nf4Path(), ": ", ec.message()));
    return quant::WriteNf4File(Nf4Path(), tensors);
  }

  absl::Status RunPrune(PhaseStats& stats) {
    if (!spec_.loram().pruned_model().empty()) return absl::OkStatus();
    absl::Status st = absl::OkStatus();
    if (world_->is_root()) {
      const proto::LoramPrune& p = spec_.loram().prune();
      PruneDirOptions o;
      o.base_dir = spec_.base_model();
      o.out_dir = PrunedDir();
      o.ratio = p.ratio();
      o.method = method_;
      o.mlp_layers = {p.mlp_layers(0), p.mlp_layers(1)};
      o.attn_layers = {p.attn_layers(0), p.attn_layers(1)};
      const auto& cal = p.calibration().data().empty() ? spec_.data().train() : p.calibration().data();
      o.calibration.assign(cal.begin(), cal.end());
      o.samples = p.calibration().samples();
      o.seq_len = p.calibration().seq_len();
      o.seed = spec_.seed();
      absl::StatusOr<PruneDirReport> r = PruneModelDir(o);
      st = r.status();
      if (r.ok()) {
        stats.frozen_bytes = r->full_params * 4;  // the full f32 model is read to prune it
        if (!options_.quiet) {
          std::fprintf(stderr, "loram: pruned %lld -> %lld parameters (%s, p = %g) in %.1f s\n",
                       static_cast<long long>(r->full_params),
                       static_cast<long long>(r->pruned_params), p.method().c_str(), p.ratio(),
                       r->seconds);
        }
      }
    }
    return world_->AgreeOnStatus(st, "pruning the base model");
  }

  // Runs a sub-recipe to its end (true) or to a stop request (false).
  absl::StatusOr<bool> RunSub(const proto::JobSpec& sub, const std::string& out, PhaseStats& stats,
                              TrainResult* into, DType frozen = DType::kDTypeF32) {
    TrainerOptions o = options_;
    o.frozen_dtype = frozen;
    o.resume = HasCheckpoints(out + "/checkpoints");
    o.spec_origin = absl::StrCat("(a phase of the loram job in ", spec_.output_dir(), ")");
    ASSIGN_OR_RETURN(std::unique_ptr<Trainer> t, Trainer::Create(sub, o));
    // Frozen bytes resident on this rank: the model's frozen arena, or in a
    // sharded world this rank's shard plus its gather buffers.
    stats.frozen_bytes = t->sharded() != nullptr
                             ? t->sharded()->shard_bytes() + t->sharded()->gather_buffer_bytes()
                             : t->model().frozen_arena().bytes();
    stats.trainable_params = t->adapter() ? t->adapter()->num_params()
                                          : t->model().params_arena().size();
    {
      std::lock_guard<std::mutex> lock(current_mu_);
      current_ = t.get();
    }
    if (stop_.load()) t->RequestStop();
    absl::StatusOr<TrainResult> r = t->Run();
    {
      std::lock_guard<std::mutex> lock(current_mu_);
      current_ = nullptr;
    }
    RETURN_IF_ERROR(r.status());
    if (into != nullptr) *into = *r;
    return r->steps >= t->total_steps();
  }

  absl::StatusOr<bool> RunAlign(PhaseStats& stats) {
    if (!Aligning()) return true;
    const proto::LoramAlign& a = spec_.loram().align();
    proto::JobSpec sub;
    sub.set_name(spec_.name() + " (align)");
    sub.set_base_model(PrunedDir());
    sub.set_output_dir(spec_.output_dir() + "/align");
    sub.set_seed(spec_.seed());
    proto::DataSpec* d = sub.mutable_data();
    *d->mutable_train() = a.data();
    d->set_format(proto::DataSpec::FORMAT_TEXT);
    d->set_seq_len(spec_.data().seq_len());
    // The pruned directory has no tokenizer files: the full model's.
    ASSIGN_OR_RETURN(std::string tokenizer,
                     ResolveTokenizer(spec_.data().tokenizer(), spec_.base_model()));
    d->set_tokenizer(tokenizer);
    sub.mutable_optimizer()->set_lr(a.lr());
    sub.mutable_schedule()->set_warmup_steps(a.warmup_steps());
    proto::TrainSpec* tr = sub.mutable_train();
    *tr = spec_.train();
    tr->set_batch_size(a.has_batch_size() ? a.batch_size() : spec_.train().batch_size());
    tr->set_max_steps(a.steps());
    tr->set_epochs(0);
    tr->set_eval_every(0);
    tr->set_eval_batches(spec_.train().eval_batches());
    sub.mutable_pretrain();
    ASSIGN_OR_RETURN(bool done, RunSub(sub, sub.output_dir(), stats, nullptr));
    if (done && world_->is_root()) {
      // The aligned model keeps the map that says what it was pruned from.
      std::error_code ec;
      fs::copy_file(MapPath(), SmallDir() + "/" + prune::kPruningMapFile,
                    fs::copy_options::overwrite_existing, ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot copy ", MapPath(), ": ", ec.message()));
    }
    return done;
  }

  absl::StatusOr<bool> RunTrain(PhaseStats& stats, TrainResult* result) {
    proto::JobSpec sub = spec_;
    sub.set_name(spec_.name() + " (train on the pruned model)");
    sub.set_base_model(SmallDir());
    sub.set_output_dir(spec_.output_dir() + "/train");
    ASSIGN_OR_RETURN(std::string tokenizer,
                     ResolveTokenizer(spec_.data().tokenizer(), spec_.base_model()));
    sub.mutable_data()->set_tokenizer(tokenizer);
    *sub.mutable_lora()->mutable_adapter() = spec_.loram().adapter();
    if (Quantizing()) {
      absl::Status st = absl::OkStatus();
      if (world_->is_root() && !fs::exists(Nf4Path())) st = WriteNf4Artifact();
      RETURN_IF_ERROR(world_->AgreeOnStatus(st, "writing the NF4 file"));
      malloc_trim(0);  // the writer's buffers go back to the system first
      ResetPeakRss();  // the phase's peak is the training's, not the file writer's
    }
    TrainResult r;
    ASSIGN_OR_RETURN(bool done, RunSub(sub, sub.output_dir(), stats, &r, SmallDtype()));
    result->step_losses = r.step_losses;
    result->final_train_loss = r.final_train_loss;
    return done;
  }

  absl::Status RunRecover(PhaseStats&) {
    absl::Status st = absl::OkStatus();
    if (world_->is_root()) {
      auto recover = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(prune::PruningMap map, prune::LoadPruningMap(MapPath()));
        prune::RecoverOptions ro;
        ro.mode = recover_mode_;
        ro.seed = spec_.seed();
        return prune::RecoverAdapterFiles(spec_.output_dir() + "/train/adapter", map,
                                          spec_.output_dir() + "/adapter", spec_.base_model(), ro);
      };
      st = recover();
    }
    return world_->AgreeOnStatus(st, "recovering the adapter");
  }

  absl::Status RunEval(PhaseStats& stats, TrainResult* result) {
    const std::string& out = spec_.output_dir();
    // The sets: the job's validation split, then loram.eval's.
    std::vector<std::unique_ptr<Dataset>> owned;
    std::vector<EvalSet> sets = {{"val", data_.dataset.get()}};
    for (const std::string& path : spec_.loram().eval().data()) {
      google::protobuf::RepeatedPtrField<std::string> paths;
      *paths.Add() = path;
      ASSIGN_OR_RETURN(std::shared_ptr<const TokenCorpus> c,
                       LoadCorpus(paths, proto::DataSpec::FORMAT_TEXT, *data_.tokenizer, "loram.eval.data"));
      DatasetOptions dopt;
      dopt.seq_len = spec_.data().seq_len();
      dopt.seed = spec_.seed();
      ASSIGN_OR_RETURN(std::unique_ptr<Dataset> ds, Dataset::Create(dopt, c, c));
      sets.push_back({path, ds.get()});
      owned.push_back(std::move(ds));
    }
    EvalOptions eo;
    eo.batch_size = spec_.train().batch_size();
    if (spec_.loram().eval().max_sequences() > 0) eo.max_sequences = spec_.loram().eval().max_sequences();
    auto eval = [&](const std::string& model_dir, const std::string& adapter_dir,
                    DType frozen = DType::kDTypeF32) -> absl::StatusOr<std::map<std::string, double>> {
      ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(model_dir));
      ModelOptions mo;
      mo.frozen_dtype = frozen;
      ASSIGN_OR_RETURN(std::unique_ptr<Model> m, Model::Create(c, NothingTrainable, mo));
      RETURN_IF_ERROR(m->LoadWeights(model_dir));
      stats.frozen_bytes = std::max(stats.frozen_bytes, m->frozen_arena().bytes());
      std::unique_ptr<LoraAdapter> a;
      if (!adapter_dir.empty()) {
        ASSIGN_OR_RETURN(a, LoraAdapter::LoadPeft(adapter_dir, c));
      }
      return EvaluateSets(*m, a.get(), sets, eo, *world_);
    };
    ASSIGN_OR_RETURN(auto full, eval(spec_.base_model(), out + "/adapter"));
    ASSIGN_OR_RETURN(auto base, eval(spec_.base_model(), ""));
    ASSIGN_OR_RETURN(auto small, eval(SmallDir(), out + "/train/adapter", SmallDtype()));
    ASSIGN_OR_RETURN(auto small_base, eval(SmallDir(), "", SmallDtype()));
    result->first_val_loss = base.at("val");
    result->final_val_loss = full.at("val");
    report_base_loss_ = base.at("val");
    if (!world_->is_root()) return absl::OkStatus();
    if (!options_.quiet) {
      std::fprintf(stderr,
                   "loram: val loss  base %.4f | full + recovered %.4f | pruned + pruned adapter %.4f\n",
                   base.at("val"), full.at("val"), small.at("val"));
    }
    ASSIGN_OR_RETURN(ModelConfig small_config, LoadModelConfig(SmallDir()));
    Json j = Json::Object();
    j.Set("base_model", spec_.base_model());
    j.Set("small_model", SmallDir());
    j.Set("adapter", out + "/adapter");
    j.Set("pruned_adapter", out + "/train/adapter");
    j.Set("full_params", full_config_.NumParams());
    j.Set("small_params", small_config.NumParams());
    j.Set("param_reduction", static_cast<double>(full_config_.NumParams()) /
                                 static_cast<double>(small_config.NumParams()));
    if (spec_.loram().pruned_model().empty()) {
      j.Set("ratio", spec_.loram().prune().ratio());
      j.Set("method", spec_.loram().prune().method());
    }
    j.Set("aligned", Aligning());
    j.Set("quantize", spec_.loram().quantize());
    if (Quantizing()) {
      std::error_code ec;
      j.Set("nf4_file", Nf4Path());
      j.Set("nf4_file_bytes", static_cast<int64_t>(fs::file_size(Nf4Path(), ec)));
    }
    j.Set("recover", spec_.loram().recover());
    Json losses = Json::Object();
    for (const auto& [name, set] : std::vector<std::pair<std::string, std::map<std::string, double>*>>{
             {"full_recovered", &full}, {"base", &base}, {"small_adapter", &small},
             {"small_base", &small_base}}) {
      Json per = Json::Object();
      for (const auto& [k, v] : *set) {
        Json e = Json::Object();
        e.Set("loss", v);
        e.Set("ppl", std::exp(v));
        per.Set(k, std::move(e));
      }
      losses.Set(name, std::move(per));
    }
    j.Set("eval", std::move(losses));
    Json phases = Json::Object();
    for (int p = 0; p < kPhaseDone; ++p) {
      const PhaseStats& s = stats_[p];
      Json e = Json::Object();
      e.Set("ran_in_this_process", s.ran || p == kPhaseEval);
      e.Set("seconds", p == kPhaseEval ? 0.0 : s.seconds);
      e.Set("peak_rss_bytes", p == kPhaseEval ? PeakRssBytes() : s.peak_rss);
      e.Set("frozen_bytes", s.frozen_bytes);
      e.Set("trainable_params", s.trainable_params);
      phases.Set(kPhaseNames[p], std::move(e));
    }
    j.Set("phases", std::move(phases));
    return WriteFileAtomically(out + "/loram_report.json", j.Dump(2) + "\n");
  }

  proto::JobSpec spec_;
  ModelConfig full_config_;
  DataParts data_;
  prune::ImportanceMethod method_ = prune::ImportanceMethod::kImportanceStru;
  prune::RecoverMode recover_mode_ = prune::RecoverMode::kRecoverZero;
  std::unique_ptr<WorldSync> world_;
  CheckpointState state_;
  int64_t phase_ = 0;
  PhaseStats stats_[kPhaseDone];
  double report_base_loss_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex current_mu_;
  Recipe* current_ = nullptr;  // the running align/train sub-recipe
};

[[maybe_unused]] const bool kRegistered = RecipeRegistry::Global().Register(
    proto::JobSpec::kLoram, "loram", [] { return std::make_unique<LoramRecipe>(); });

}  // namespace
}  // namespace sheaf::jobs
