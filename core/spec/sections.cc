#include "core/spec/sections.h"

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/spec/suggest.h"

namespace sheaf {

void CheckCount(const std::string& path, int64_t value, int64_t min,
                int64_t max, Problems& problems) {
  problems.AtLeast(path, value, min);
  problems.AtMost(path, value, max);
}

void CheckPositiveAtMost(const std::string& path, double value, double max,
                         Problems& problems) {
  problems.Positive(path, value);
  if (value > 0) problems.FiniteAtMost(path, value, max);
}

void ApplyAdapterDefaults(proto::AdapterSpec* adapter) {
  if (adapter->targets().empty()) {
    for (std::string_view target : kDefaultAdapterTargets) {
      adapter->add_targets(std::string(target));
    }
  }
  if (!adapter->has_rank()) adapter->set_rank(8);
  if (!adapter->has_alpha()) adapter->set_alpha(16);
}

void ApplyModelShapeDefaults(proto::ModelShape* model, int32_t seq_len) {
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
    model->set_max_position_embeddings(seq_len);
  }
  if (!model->has_rope_theta()) model->set_rope_theta(10000.0);
  if (!model->has_rms_norm_eps()) model->set_rms_norm_eps(1e-5);
  if (!model->has_tie_word_embeddings()) {
    model->set_tie_word_embeddings(false);
  }
  if (!model->has_init_std()) model->set_init_std(0.02);
}

void CheckAdapter(const proto::AdapterSpec& adapter, const std::string& prefix,
                  Problems& problems) {
  const std::vector<std::string> known(kAdapterTargetNames.begin(),
                                       kAdapterTargetNames.end());
  // Never empty here: ApplyDefaults fills in every projection.
  std::set<std::string> seen_targets;
  for (int i = 0; i < adapter.targets_size(); ++i) {
    const std::string& target = adapter.targets(i);
    const std::string path = absl::StrCat(prefix, ".targets[", i, "]");
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
    const std::string path = absl::StrCat(prefix, ".layers[", i, "]");
    if (layer < 0) {
      problems.Add(path, absl::StrCat("must be >= 0, got ", layer));
    } else if (layer > spec_limits::kMaxLayerIndex) {
      problems.AtMost(path, layer, spec_limits::kMaxLayerIndex);
    } else if (!seen_layers.insert(layer).second) {
      problems.Add(path, absl::StrCat("layer ", layer, " is listed twice"));
    }
  }
  CheckCount(prefix + ".rank", adapter.rank(), 1, spec_limits::kMaxLoraRank,
             problems);
  CheckPositiveAtMost(prefix + ".alpha", adapter.alpha(),
                      spec_limits::kMaxLoraAlpha, problems);
  problems.Fraction(prefix + ".dropout", adapter.dropout(),
                    /*one_allowed=*/false);
}

void CheckModelShape(const proto::ModelShape& model,
                     const proto::ModelShape& given,
                     const proto::DataSpec& data, const std::string& prefix,
                     Problems& problems) {
  const std::string p = prefix + ".";
  namespace lim = spec_limits;
  CheckCount(p + "hidden_size", model.hidden_size(), 1, lim::kMaxHiddenSize,
             problems);
  CheckCount(p + "intermediate_size", model.intermediate_size(), 1,
             lim::kMaxIntermediateSize, problems);
  CheckCount(p + "num_hidden_layers", model.num_hidden_layers(), 1,
             lim::kMaxLayers, problems);
  CheckCount(p + "num_attention_heads", model.num_attention_heads(), 1,
             lim::kMaxHeads, problems);
  CheckCount(p + "vocab_size", model.vocab_size(), 1, lim::kMaxVocabSize,
             problems);
  problems.AtMost(p + "max_position_embeddings",
                  model.max_position_embeddings(),
                  lim::kMaxPositionEmbeddings);
  const int32_t heads = model.num_attention_heads();
  if (model.has_num_key_value_heads()) {
    const int32_t kv_heads = model.num_key_value_heads();
    CheckCount(p + "num_key_value_heads", kv_heads, 1, lim::kMaxHeads,
               problems);
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
    CheckCount(p + "head_dim", model.head_dim(), 2, lim::kMaxHeadDim,
               problems);
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
  // A pretrain job has no model directory: "auto" is the byte tokenizer.
  if ((data.tokenizer() == "byte" || data.tokenizer() == "auto") &&
      model.vocab_size() >= 1 &&
      model.vocab_size() < kByteVocabSize) {
    problems.Add(p + "vocab_size",
                 absl::StrCat("must be >= ", kByteVocabSize,
                              " for the byte tokenizer (256 bytes, BOS, EOS), "
                              "got ",
                              model.vocab_size()));
  }
  CheckPositiveAtMost(p + "rope_theta", model.rope_theta(), lim::kMaxRopeTheta,
                      problems);
  CheckPositiveAtMost(p + "rms_norm_eps", model.rms_norm_eps(),
                      lim::kMaxRmsNormEps, problems);
  CheckPositiveAtMost(p + "init_std", model.init_std(), lim::kMaxInitStd,
                      problems);
}

}  // namespace sheaf
