#include "jobs/loram/prune_dir.h"

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/model.h"
#include "core/prune/prune_model.h"
#include "core/status.h"
#include "jobs/build.h"

namespace sheaf::jobs {

absl::StatusOr<prune::LayerRange> ParseLayerRange(const std::string& text, const std::string& field) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  prune::LayerRange r;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &r.begin) ||
      !absl::SimpleAtoi(parts[1], &r.end)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": \"", text, "\" is not BEGIN:END (e.g. 1:-1, 4:-2)"));
  }
  return r;
}

absl::StatusOr<PruneDirReport> PruneModelDir(const PruneDirOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  PruneDirReport report;
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(o.base_dir));
  ASSIGN_OR_RETURN(prune::PruneLayout layout,
                   prune::ResolveLayout(o.mlp_layers, o.attn_layers, config.num_layers));
  ASSIGN_OR_RETURN(ModelConfig pruned_config, prune::PrunedConfig(config, o.ratio, layout));
  report.full_params = config.NumParams();
  report.pruned_params = pruned_config.NumParams();

  std::unique_ptr<Model> model;
  std::vector<prune::LayerScores> scores;
  if (o.method == prune::ImportanceMethod::kImportanceStru) {
    if (o.calibration.empty()) {
      return absl::InvalidArgumentError(
          "calibration: the stru (Taylor) method needs calibration data");
    }
    if (o.samples < 1 || o.seq_len < 2) {
      return absl::InvalidArgumentError("calibration: samples must be >= 1 and seq_len >= 2");
    }
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, MakeTokenizer("byte"));
    google::protobuf::RepeatedPtrField<std::string> paths;
    for (const std::string& p : o.calibration) *paths.Add() = p;
    ASSIGN_OR_RETURN(std::shared_ptr<const TokenCorpus> corpus,
                     LoadCorpus(paths, proto::DataSpec::FORMAT_TEXT, *tok, "calibration.data"));
    DatasetOptions dopt;
    dopt.seq_len = o.seq_len;
    dopt.seed = o.seed;
    ASSIGN_OR_RETURN(std::unique_ptr<Dataset> data, Dataset::Create(dopt, corpus, nullptr));
    if (data->num_train_sequences() < o.samples) {
      return absl::InvalidArgumentError(absl::StrCat(
          "calibration.data: holds ", data->num_train_sequences(), " sequences of ", o.seq_len,
          " tokens, calibration.samples asks for ", o.samples));
    }
    std::vector<int32_t> inputs(static_cast<size_t>(o.samples) * o.seq_len),
        targets(inputs.size());
    RETURN_IF_ERROR(data->GetBatch(DataCursor{}, o.samples, RankSlice{}, absl::MakeSpan(inputs),
                                   absl::MakeSpan(targets))
                        .status());
    ASSIGN_OR_RETURN(model, prune::CreateTaylorModel(config, layout));
    RETURN_IF_ERROR(model->LoadWeights(o.base_dir));
    ASSIGN_OR_RETURN(scores, prune::TaylorScores(*model, layout, inputs.data(), targets.data(),
                                                 o.samples, o.seq_len));
    report.calibration_tokens = static_cast<int64_t>(inputs.size());
  } else {
    ASSIGN_OR_RETURN(model, Model::Create(config, NothingTrainable));
    RETURN_IF_ERROR(model->LoadWeights(o.base_dir));
    if (o.method == prune::ImportanceMethod::kImportanceRand) {
      scores = prune::RandomScores(config, layout, o.seed);
    } else {
      ASSIGN_OR_RETURN(scores, prune::MagnitudeScores(*model, layout, o.method));
    }
  }
  ASSIGN_OR_RETURN(prune::PruningMap map,
                   prune::SelectByScores(config, o.ratio, layout, scores, o.method));
  ASSIGN_OR_RETURN(std::unique_ptr<Model> pruned, prune::PruneModel(*model, map));
  model.reset();
  RETURN_IF_ERROR(prune::SavePrunedModel(*pruned, map, o.out_dir));
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace sheaf::jobs
