#include "core/prune/importance.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "base/rng.h"
#include "core/status.h"

namespace sheaf::prune {
namespace {

constexpr Proj kAttnProjs[] = {Proj::kQ, Proj::kK, Proj::kV, Proj::kO};
constexpr Proj kMlpProjs[] = {Proj::kGate, Proj::kUp, Proj::kDown};

// Element importance from a weight and (for Taylor) its gradient.
enum class Element { kTaylor, kAbs, kSquare };

inline double ElementScore(Element e, float w, float g) {
  switch (e) {
    case Element::kTaylor: return std::fabs(static_cast<double>(w) * static_cast<double>(g));
    case Element::kAbs: return std::fabs(static_cast<double>(w));
    case Element::kSquare: return static_cast<double>(w) * static_cast<double>(w);
  }
  return 0;
}

// Sums of element scores over each row block [i*block, (i+1)*block) of a
// [rows, cols] matrix into out[i]; over column blocks with `by_column`.
void AddRowBlocks(std::vector<double>& out, Element e, const float* w, const float* g,
                  int64_t rows, int64_t cols, int64_t block) {
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) {
      s += ElementScore(e, w[r * cols + c], g ? g[r * cols + c] : 0.0f);
    }
    out[static_cast<size_t>(r / block)] += s;
  }
}
void AddColBlocks(std::vector<double>& out, Element e, const float* w, const float* g,
                  int64_t rows, int64_t cols, int64_t block) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      out[static_cast<size_t>(c / block)] +=
          ElementScore(e, w[r * cols + c], g ? g[r * cols + c] : 0.0f);
    }
  }
}

// Scores of one layer from its weights (and grads for Taylor).
LayerScores ScoreLayer(const ModelConfig& c, int l, LayerWeights& w, Element e, bool mlp,
                       bool attn) {
  const LayerShape& s = c.layers[static_cast<size_t>(l)];
  const int64_t C = c.hidden_size, HD = c.head_dim, per_group = s.num_heads / s.num_kv_heads;
  const bool taylor = e == Element::kTaylor;
  auto g = [&](const Param& p) { return taylor ? p.grad.data : nullptr; };
  LayerScores out;
  if (mlp) {
    out.mlp.assign(static_cast<size_t>(s.intermediate), 0.0);
    AddRowBlocks(out.mlp, e, w.gate.value.data, g(w.gate), s.intermediate, C, 1);
    AddRowBlocks(out.mlp, e, w.up.value.data, g(w.up), s.intermediate, C, 1);
    AddColBlocks(out.mlp, e, w.down.value.data, g(w.down), C, s.intermediate, 1);
  }
  if (attn) {
    out.kv_groups.assign(static_cast<size_t>(s.num_kv_heads), 0.0);
    // q rows and o columns: one block per group (its heads are contiguous).
    AddRowBlocks(out.kv_groups, e, w.q.value.data, g(w.q), s.num_heads * HD, C, per_group * HD);
    AddRowBlocks(out.kv_groups, e, w.k.value.data, g(w.k), s.num_kv_heads * HD, C, HD);
    AddRowBlocks(out.kv_groups, e, w.v.value.data, g(w.v), s.num_kv_heads * HD, C, HD);
    AddColBlocks(out.kv_groups, e, w.o.value.data, g(w.o), C, s.num_heads * HD, per_group * HD);
  }
  return out;
}

bool Contains(const std::vector<bool>& v, int l) { return v[static_cast<size_t>(l)]; }

// Scores each layer's gradients when backward reports them final, then
// zeroes them (nothing accumulates into a later step).
class TaylorListener : public GradReadyListener {
 public:
  TaylorListener(Model* model, const PruneLayout* layout, std::vector<LayerScores>* out)
      : model_(model), layout_(layout), out_(out) {}
  absl::Status OnGradsReady(int group) override {
    if (group == kEdgeGroup) return absl::OkStatus();
    const int l = group - 1;
    LayerWeights& w = model_->weights().layers[static_cast<size_t>(l)];
    (*out_)[static_cast<size_t>(l)] = ScoreLayer(model_->config(), l, w, Element::kTaylor,
                                                 Contains(layout_->mlp, l),
                                                 Contains(layout_->attn, l));
    for (Param* p : model_->GroupParams(group)) {
      if (p->trainable()) std::fill(p->grad.data, p->grad.data + p->grad.numel(), 0.0f);
    }
    return absl::OkStatus();
  }

 private:
  Model* model_;
  const PruneLayout* layout_;
  std::vector<LayerScores>* out_;
};

absl::Status CheckLayout(const ModelConfig& c, const PruneLayout& layout) {
  if (static_cast<int>(layout.mlp.size()) != c.num_layers ||
      static_cast<int>(layout.attn.size()) != c.num_layers) {
    return absl::InvalidArgumentError("the pruning layout does not have one entry per layer");
  }
  return absl::OkStatus();
}

}  // namespace

const char* ImportanceMethodName(ImportanceMethod m) {
  switch (m) {
    case ImportanceMethod::kImportanceStru: return "stru";
    case ImportanceMethod::kImportanceRand: return "rand";
    case ImportanceMethod::kImportanceL1: return "l1";
    case ImportanceMethod::kImportanceL2: return "l2";
  }
  return "?";
}

absl::StatusOr<ImportanceMethod> ParseImportanceMethod(const std::string& name,
                                                       const std::string& field) {
  for (ImportanceMethod m : {ImportanceMethod::kImportanceStru, ImportanceMethod::kImportanceRand,
                             ImportanceMethod::kImportanceL1, ImportanceMethod::kImportanceL2}) {
    if (name == ImportanceMethodName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": \"", name, "\" is not a pruning method (stru, rand, l1, l2)"));
}

absl::StatusOr<std::unique_ptr<Model>> CreateTaylorModel(const ModelConfig& config,
                                                         const PruneLayout& layout,
                                                         const ModelOptions& options) {
  RETURN_IF_ERROR(CheckLayout(config, layout));
  auto trainable = [&](const std::string& name) {
    for (int l = 0; l < config.num_layers; ++l) {
      const std::string pre = absl::StrCat("model.layers.", l, ".");
      if (name.rfind(pre, 0) != 0) continue;
      for (Proj p : kMlpProjs) {
        if (Contains(layout.mlp, l) &&
            name == absl::StrCat(pre, ProjBlock(p), ".", ProjName(p), ".weight")) {
          return true;
        }
      }
      for (Proj p : kAttnProjs) {
        if (Contains(layout.attn, l) &&
            name == absl::StrCat(pre, ProjBlock(p), ".", ProjName(p), ".weight")) {
          return true;
        }
      }
    }
    return false;
  };
  ModelOptions mo = options;
  mo.external_frozen = false;
  mo.frozen_dtype = DType::kDTypeF32;
  return Model::Create(config, trainable, mo);
}

absl::StatusOr<std::vector<LayerScores>> TaylorScores(Model& model, const PruneLayout& layout,
                                                      const int32_t* tokens,
                                                      const int32_t* targets, int B, int T) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(CheckLayout(c, layout));
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = model.weights().layers[static_cast<size_t>(l)];
    for (Proj p : kAttnProjs) {
      if (Contains(layout.attn, l) && !w.proj(p)->trainable()) {
        return absl::FailedPreconditionError(absl::StrCat(
            w.proj(p)->name, " has no gradient: build the model with CreateTaylorModel"));
      }
    }
    for (Proj p : kMlpProjs) {
      if (Contains(layout.mlp, l) && !w.proj(p)->trainable()) {
        return absl::FailedPreconditionError(absl::StrCat(
            w.proj(p)->name, " has no gradient: build the model with CreateTaylorModel"));
      }
    }
  }
  std::vector<LayerScores> scores(static_cast<size_t>(c.num_layers));
  TaylorListener listener(&model, &layout, &scores);
  model.ZeroGrads();
  model.set_grad_listener(&listener);
  absl::StatusOr<LossStats> stats =
      model.Forward(tokens, targets, B, T, static_cast<LoraAdapter*>(nullptr), /*training=*/true);
  absl::Status st = stats.status();
  if (st.ok() && stats->tokens == 0) {
    st = absl::InvalidArgumentError("the calibration batch has no target tokens");
  }
  if (st.ok()) st = model.Backward(1.0f / static_cast<float>(stats->tokens));
  model.set_grad_listener(nullptr);
  RETURN_IF_ERROR(st);
  return scores;
}

absl::StatusOr<std::vector<LayerScores>> MagnitudeScores(Model& model, const PruneLayout& layout,
                                                         ImportanceMethod method) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(CheckLayout(c, layout));
  const Element e = method == ImportanceMethod::kImportanceL1 ? Element::kAbs : Element::kSquare;
  std::vector<LayerScores> scores(static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = model.weights().layers[static_cast<size_t>(l)];
    for (Proj p : {Proj::kQ, Proj::kK, Proj::kV, Proj::kO, Proj::kGate, Proj::kUp, Proj::kDown}) {
      if (w.proj(p)->value.data == nullptr || w.proj(p)->value.dtype != DType::kDTypeF32) {
        return absl::FailedPreconditionError(
            absl::StrCat(w.proj(p)->name, ": magnitude scores need f32 weights on this rank"));
      }
    }
    scores[static_cast<size_t>(l)] =
        ScoreLayer(c, l, w, e, Contains(layout.mlp, l), Contains(layout.attn, l));
  }
  return scores;
}

std::vector<LayerScores> RandomScores(const ModelConfig& c, const PruneLayout& layout,
                                      uint64_t seed) {
  std::vector<LayerScores> scores(static_cast<size_t>(c.num_layers));
  uint64_t state = seed;
  auto uniform = [&] { return static_cast<double>(SplitMix64Next(state) >> 11) * 0x1.0p-53; };
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerShape& s = c.layers[static_cast<size_t>(l)];
    LayerScores& out = scores[static_cast<size_t>(l)];
    if (Contains(layout.mlp, l)) {
      for (int i = 0; i < s.intermediate; ++i) out.mlp.push_back(uniform());
    }
    if (Contains(layout.attn, l)) {
      for (int i = 0; i < s.num_kv_heads; ++i) out.kv_groups.push_back(uniform());
    }
  }
  return scores;
}

std::vector<int32_t> TopK(const std::vector<double>& scores, int keep) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
  });
  order.resize(static_cast<size_t>(std::clamp<int>(keep, 0, static_cast<int>(order.size()))));
  std::sort(order.begin(), order.end());
  return order;
}

absl::StatusOr<PruningMap> SelectByScores(const ModelConfig& config, double ratio,
                                          const PruneLayout& layout,
                                          const std::vector<LayerScores>& scores,
                                          ImportanceMethod method) {
  ASSIGN_OR_RETURN(ModelConfig pc, PrunedConfig(config, ratio, layout));
  if (static_cast<int>(scores.size()) != config.num_layers) {
    return absl::InvalidArgumentError("scores do not have one entry per layer");
  }
  PruningMap map = IdentityMap(config);
  map.ratio = ratio;
  map.method = ImportanceMethodName(method);
  for (int l = 0; l < config.num_layers; ++l) {
    const LayerShape& s = config.layers[static_cast<size_t>(l)];
    const LayerShape& p = pc.layers[static_cast<size_t>(l)];
    const LayerScores& sc = scores[static_cast<size_t>(l)];
    LayerKept& k = map.layers[static_cast<size_t>(l)];
    if (Contains(layout.mlp, l)) {
      if (static_cast<int>(sc.mlp.size()) != s.intermediate) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": no MLP scores"));
      }
      k.mlp = TopK(sc.mlp, p.intermediate);
    }
    if (Contains(layout.attn, l)) {
      if (static_cast<int>(sc.kv_groups.size()) != s.num_kv_heads) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": no attention scores"));
      }
      k.kv_heads = TopK(sc.kv_groups, p.num_kv_heads);
      k.heads = HeadsOfGroups(k.kv_heads, s);
    }
  }
  RETURN_IF_ERROR(map.Validate());
  return map;
}

}  // namespace sheaf::prune
