// Pruning maps, structured pruning, importance and recovery on tiny models.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/lora.h"
#include "core/model.h"
#include "core/prune/importance.h"
#include "core/prune/prune_model.h"
#include "core/prune/pruning_map.h"
#include "core/prune/recover.h"
#include "core/prune/shapes.h"
#include "gtest/gtest.h"

namespace sheaf::prune {
namespace {

ModelConfig Tiny(int nh, int nkv, bool tied = false) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_layers = 4;
  c.head_dim = 8;
  c.vocab_size = 61;
  c.tie_word_embeddings = tied;
  c.layers.assign(4, LayerShape{nh, nkv, 48});
  return c;
}

PruneLayout DefaultLayout(int L) {
  absl::StatusOr<PruneLayout> l = ResolveLayout({}, {}, L);
  EXPECT_TRUE(l.ok());
  return *l;
}

std::unique_ptr<Model> RandomModel(const ModelConfig& c, uint64_t seed,
                                   const TrainablePredicate& t = NothingTrainable) {
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Create(c, t);
  EXPECT_TRUE(m.ok()) << m.status();
  (*m)->InitRandom(seed, 0.2f);
  return std::move(*m);
}

std::vector<int32_t> Tokens(int n, int V, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(V));
  return t;
}

PruningMap RandomMap(const ModelConfig& c, double p, uint64_t seed) {
  const PruneLayout layout = DefaultLayout(c.num_layers);
  absl::StatusOr<PruningMap> m = SelectByScores(c, p, layout, RandomScores(c, layout, seed),
                                                ImportanceMethod::kImportanceRand);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}

// ---------------------------------------------------------------------------
// Pruning map file

TEST(PruningMapTest, RoundTripAndShapes) {
  const ModelConfig c = Tiny(4, 2);
  PruningMap m = RandomMap(c, 0.5, 7);
  EXPECT_TRUE(m.LayerIntact(0));
  EXPECT_FALSE(m.LayerIntact(1));
  EXPECT_TRUE(m.LayerIntact(3));
  const ModelConfig pc = m.PrunedConfig();
  EXPECT_EQ(pc.layers[1].intermediate, 24);   // 48 - ceil(24)
  EXPECT_EQ(pc.layers[1].num_kv_heads, 1);    // 2 - floor(1)
  EXPECT_EQ(pc.layers[1].num_heads, 2);
  const std::string path = TempPath("map.safetensors");
  ASSERT_TRUE(SavePruningMap(m, path).ok());
  absl::StatusOr<PruningMap> back = LoadPruningMap(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->method, "rand");
  EXPECT_DOUBLE_EQ(back->ratio, 0.5);
  EXPECT_EQ(back->original.ToJson(), c.ToJson());
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(back->layers[l].mlp, m.layers[l].mlp);
    EXPECT_EQ(back->layers[l].kv_heads, m.layers[l].kv_heads);
    EXPECT_EQ(back->layers[l].heads, m.layers[l].heads);
  }
}

TEST(PruningMapTest, BadFilesAreErrors) {
  const ModelConfig c = Tiny(4, 2);
  const PruningMap m = RandomMap(c, 0.5, 7);
  const std::string path = TempPath("map2.safetensors");
  ASSERT_TRUE(SavePruningMap(m, path).ok());
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << b;
  };
  write(bytes.substr(0, bytes.size() - 4));  // truncated
  EXPECT_FALSE(LoadPruningMap(path).ok());
  // A lying index: the last int32 (layer 3's last kept head) set out of range.
  std::string lying = bytes;
  const int32_t bad = 99;
  std::memcpy(&lying[lying.size() - 4], &bad, 4);
  write(lying);
  absl::StatusOr<PruningMap> e = LoadPruningMap(path);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("model.layers.3.self_attn.kept_heads"), std::string::npos)
      << e.status();
  // Heads that are not whole groups.
  PruningMap split = m;
  split.layers[1].heads = {0, 3};
  EXPECT_FALSE(split.Validate().ok());
  EXPECT_FALSE(SavePruningMap(split, path).ok());
}

// ---------------------------------------------------------------------------
// Structured pruning

TEST(PruneModelTest, KeepsTheMappedRowsAndColumns) {
  const ModelConfig c = Tiny(4, 2);
  std::unique_ptr<Model> full = RandomModel(c, 3);
  const PruningMap m = RandomMap(c, 0.5, 11);
  absl::StatusOr<std::unique_ptr<Model>> pruned = PruneModel(*full, m);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  const ModelConfig& pc = (*pruned)->config();
  EXPECT_EQ(pc.ToJson(), m.PrunedConfig().ToJson());
  const int C = 32, HD = 8, l = 2;
  const LayerWeights& fw = full->weights().layers[l];
  const LayerWeights& pw = (*pruned)->weights().layers[l];
  const LayerKept& k = m.layers[l];
  for (size_t i = 0; i < k.heads.size(); ++i) {
    for (int d = 0; d < HD; ++d) {
      for (int col = 0; col < C; ++col) {
        ASSERT_EQ(pw.q.value.data[(i * HD + d) * C + col], fw.q.value.data[(k.heads[i] * HD + d) * C + col]);
      }
      for (int row = 0; row < C; ++row) {  // o columns
        ASSERT_EQ(pw.o.value.data[row * (k.heads.size() * HD) + i * HD + d],
                  fw.o.value.data[row * (4 * HD) + k.heads[i] * HD + d]);
      }
    }
  }
  for (size_t i = 0; i < k.kv_heads.size(); ++i) {
    for (int e = 0; e < HD * C; ++e) {
      ASSERT_EQ(pw.v.value.data[i * HD * C + e], fw.v.value.data[k.kv_heads[i] * HD * C + e]);
    }
  }
  for (size_t i = 0; i < k.mlp.size(); ++i) {
    for (int col = 0; col < C; ++col) {
      ASSERT_EQ(pw.up.value.data[i * C + col], fw.up.value.data[k.mlp[i] * C + col]);
      ASSERT_EQ(pw.down.value.data[col * k.mlp.size() + i], fw.down.value.data[col * 48 + k.mlp[i]]);
    }
  }
  // Intact layers and the edges are copied.
  EXPECT_EQ(std::memcmp((*pruned)->weights().layers[0].gate.value.data,
                        full->weights().layers[0].gate.value.data, 48 * C * 4), 0);
  EXPECT_EQ(std::memcmp((*pruned)->weights().lm_head.value.data, full->weights().lm_head.value.data,
                        61 * C * 4), 0);
  // The saved dir loads back with its per-layer shapes.
  const std::string dir = TempPath("pruned_model");
  ASSERT_TRUE(SavePrunedModel(**pruned, m, dir).ok());
  absl::StatusOr<ModelConfig> back = LoadModelConfig(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->layers[1].intermediate, 24);
  EXPECT_EQ(back->layers[0].intermediate, 48);
  EXPECT_TRUE(LoadPruningMap(dir + "/pruning.safetensors").ok());
  absl::StatusOr<std::unique_ptr<Model>> reloaded = Model::Create(*back, NothingTrainable);
  ASSERT_TRUE(reloaded.ok());
  EXPECT_TRUE((*reloaded)->LoadWeights(dir).ok());
  // A map of another model is refused.
  const PruningMap other = RandomMap(Tiny(4, 4), 0.5, 1);
  EXPECT_FALSE(PruneModel(*full, other).ok());
}

// ---------------------------------------------------------------------------
// Importance

// Naive grouped sums over explicit per-element loops, written from the
// group definitions (not from importance.cc's helpers).
LayerScores NaiveScores(const ModelConfig& c, const LayerWeights& w, int l, bool taylor, int power) {
  const LayerShape& s = c.layers[l];
  const int C = c.hidden_size, HD = c.head_dim, g = s.num_heads / s.num_kv_heads;
  auto e = [&](const Param& p, int64_t i) {
    const double v = p.value.data[i];
    if (taylor) return std::fabs(v * p.grad.data[i]);
    return power == 1 ? std::fabs(v) : v * v;
  };
  LayerScores out;
  out.mlp.assign(s.intermediate, 0.0);
  for (int j = 0; j < s.intermediate; ++j) {
    for (int i = 0; i < C; ++i) {
      out.mlp[j] += e(w.gate, j * C + i) + e(w.up, j * C + i) + e(w.down, i * s.intermediate + j);
    }
  }
  out.kv_groups.assign(s.num_kv_heads, 0.0);
  for (int h = 0; h < s.num_heads; ++h) {
    const int grp = h / g;
    for (int d = 0; d < HD; ++d) {
      for (int i = 0; i < C; ++i) {
        out.kv_groups[grp] += e(w.q, (h * HD + d) * C + i) + e(w.o, i * s.num_heads * HD + h * HD + d);
      }
    }
  }
  for (int kv = 0; kv < s.num_kv_heads; ++kv) {
    for (int d = 0; d < HD; ++d) {
      for (int i = 0; i < C; ++i) {
        out.kv_groups[kv] += e(w.k, (kv * HD + d) * C + i) + e(w.v, (kv * HD + d) * C + i);
      }
    }
  }
  return out;
}

void ExpectScoresNear(const std::vector<double>& a, const std::vector<double>& b, double rel) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], b[i], rel * std::fabs(b[i]) + 1e-12) << "index " << i;
  }
}

class TaylorTest : public ::testing::TestWithParam<int> {};  // KV heads: 4 (MHA) or 2 (GQA)

TEST_P(TaylorTest, MatchesAllWeightsGradientReference) {
  const ModelConfig c = Tiny(4, GetParam());
  const int B = 2, T = 16;
  const std::vector<int32_t> tokens = Tokens(B * T, c.vocab_size, 5);
  const std::vector<int32_t> targets = Tokens(B * T, c.vocab_size, 6);
  const PruneLayout layout = DefaultLayout(c.num_layers);

  // Reference: every weight trainable, one forward/backward of the mean loss.
  std::unique_ptr<Model> ref = RandomModel(c, 9, EverythingTrainable);
  ref->ZeroGrads();
  absl::StatusOr<LossStats> st = ref->Forward(tokens.data(), targets.data(), B, T,
                                              static_cast<LoraAdapter*>(nullptr), true);
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE(ref->Backward(1.0f / st->tokens).ok());

  // Unfused projections, as in the all-trainable reference (trainable
  // weights never fuse): the frozen layers outside the interval would
  // otherwise run the fused GEMMs, whose different summation order moves
  // the activations' gradients at fp32 order (model_fused_test covers that).
  ModelOptions unfused;
  unfused.fuse_projections = false;
  absl::StatusOr<std::unique_ptr<Model>> tm = CreateTaylorModel(c, layout, unfused);
  ASSERT_TRUE(tm.ok()) << tm.status();
  (*tm)->InitRandom(9, 0.2f);  // the same weights (same seed, same tensor order)
  EXPECT_FALSE((*tm)->weights().layers[0].q.trainable());  // outside the interval
  EXPECT_TRUE((*tm)->weights().layers[1].q.trainable());
  absl::StatusOr<std::vector<LayerScores>> got =
      TaylorScores(**tm, layout, tokens.data(), targets.data(), B, T);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE((*got)[0].mlp.empty());  // not in the interval
  EXPECT_TRUE((*got)[3].kv_groups.empty());
  for (int l = 1; l <= 2; ++l) {
    const LayerScores want = NaiveScores(c, ref->weights().layers[l], l, true, 0);
    // Both models run the same kernels on the same weights; gradients may
    // differ only where the all-trainable model's backward also computes
    // extra weight gradients (no effect on the activations' gradients), so
    // the sums agree to double-summation noise: 1e-9 relative.
    ExpectScoresNear((*got)[l].mlp, want.mlp, 1e-9);
    ExpectScoresNear((*got)[l].kv_groups, want.kv_groups, 1e-9);
  }
  // The gradients were consumed (zeroed) layer by layer.
  const Param& g = (*tm)->weights().layers[1].gate;
  for (int64_t i = 0; i < g.grad.numel(); ++i) ASSERT_EQ(g.grad.data[i], 0.0f);

  // Finite differences on two weights of the reference confirm the gradient
  // itself: central difference, h = 1e-2 on a smooth fp32 loss (the loss is
  // summed in double); 2e-2 relative covers the O(h²) term and fp32 noise.
  for (int64_t idx : {int64_t{5}, int64_t{300}}) {
    Param& w = ref->weights().layers[1].up;
    const float w0 = w.value.data[idx];
    auto loss = [&](float v) {
      w.value.data[idx] = v;
      absl::StatusOr<LossStats> s = ref->Forward(tokens.data(), targets.data(), B, T,
                                                 static_cast<LoraAdapter*>(nullptr), false);
      return s->mean();
    };
    const double h = 1e-2, fd = (loss(w0 + h) - loss(w0 - h)) / (2 * h);
    w.value.data[idx] = w0;
    EXPECT_NEAR(w.grad.data[idx], fd, 2e-2 * std::fabs(fd) + 1e-5);
  }
}

TEST_P(TaylorTest, MagnitudeMatchesNaive) {
  const ModelConfig c = Tiny(4, GetParam());
  std::unique_ptr<Model> m = RandomModel(c, 4);
  const PruneLayout layout = DefaultLayout(c.num_layers);
  for (int power : {1, 2}) {
    absl::StatusOr<std::vector<LayerScores>> got = MagnitudeScores(
        *m, layout, power == 1 ? ImportanceMethod::kImportanceL1 : ImportanceMethod::kImportanceL2);
    ASSERT_TRUE(got.ok());
    const LayerScores want = NaiveScores(c, m->weights().layers[2], 2, false, power);
    ExpectScoresNear((*got)[2].mlp, want.mlp, 1e-12);
    ExpectScoresNear((*got)[2].kv_groups, want.kv_groups, 1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(MhaAndGqa, TaylorTest, ::testing::Values(4, 2));

TEST(ImportanceTest, TiesKeepTheLowerIndex) {
  EXPECT_EQ(TopK({1, 1, 1, 1}, 2), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(TopK({0.5, 2, 0.5, 2, 0.5}, 3), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(TopK({3, 1, 2}, 2), (std::vector<int32_t>{0, 2}));
  // Selection: counts from the rounding rules, highest scores kept.
  const ModelConfig c = Tiny(4, 2);
  const PruneLayout layout = DefaultLayout(4);
  std::vector<LayerScores> scores(4);
  for (int l = 1; l <= 2; ++l) {
    for (int i = 0; i < 48; ++i) scores[l].mlp.push_back(i % 2 == 0 ? 1.0 : 0.0);  // ties
    scores[l].kv_groups = {0.1, 0.9};
  }
  absl::StatusOr<PruningMap> m =
      SelectByScores(c, 0.5, layout, scores, ImportanceMethod::kImportanceStru);
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<int32_t> even;
  for (int i = 0; i < 48; i += 2) even.push_back(i);
  EXPECT_EQ(m->layers[1].mlp, even);
  EXPECT_EQ(m->layers[1].kv_heads, std::vector<int32_t>{1});
  EXPECT_EQ(m->layers[1].heads, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(m->layers[0].mlp.size(), 48u);  // outside the interval: everything
  // Missing scores for a pruned layer are an error.
  scores[2].mlp.clear();
  EXPECT_FALSE(SelectByScores(c, 0.5, layout, scores, ImportanceMethod::kImportanceStru).ok());
}

TEST(ImportanceTest, RandIsSeededAndUniformInCount) {
  const ModelConfig c = Tiny(4, 4);
  const PruningMap a = RandomMap(c, 0.65, 1), b = RandomMap(c, 0.65, 1), d = RandomMap(c, 0.65, 2);
  EXPECT_EQ(a.layers[1].mlp, b.layers[1].mlp);
  EXPECT_NE(a.layers[1].mlp, d.layers[1].mlp);
  EXPECT_EQ(a.layers[1].mlp.size(), 48u - 32u);  // 48 - ceil(31.2)
  EXPECT_EQ(a.layers[1].heads.size(), 1u);       // floor(4 * 0.35)
  EXPECT_FALSE(ParseImportanceMethod("taylor", "loram.prune.method").ok());
  EXPECT_TRUE(ParseImportanceMethod("l2", "m").ok());
}

// ---------------------------------------------------------------------------
// Recovery

std::unique_ptr<LoraAdapter> RandomAdapter(const ModelConfig& c, bool lm_head, uint64_t seed) {
  LoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  if (lm_head) o.targets.push_back("lm_head");
  absl::StatusOr<std::unique_ptr<LoraAdapter>> a = LoraAdapter::Create(c, o);
  EXPECT_TRUE(a.ok()) << a.status();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.3f);
  for (int64_t i = 0; i < (*a)->params().size(); ++i) (*a)->params().data()[i] = n(rng);
  return std::move(*a);
}

// dense s·B·A [out, in] of a module.
std::vector<float> DeltaW(const LoraModule& m) {
  std::vector<float> d(static_cast<size_t>(m.out) * m.in, 0.0f);
  for (int o = 0; o < m.out; ++o) {
    for (int i = 0; i < m.in; ++i) {
      float s = 0;
      for (int r = 0; r < m.lora_rank; ++r) s += m.b.data[o * m.lora_rank + r] * m.a.data[r * m.in + i];
      d[static_cast<size_t>(o) * m.in + i] = m.scale * s;
    }
  }
  return d;
}

std::vector<int32_t> Expand(const std::vector<int32_t>& idx, int block) {
  std::vector<int32_t> out;
  for (int32_t i : idx) for (int j = 0; j < block; ++j) out.push_back(i * block + j);
  return out;
}

class RecoverTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(RecoverTest, ShapesZerosAndKeptDelta) {
  const auto [kv, lm_head] = GetParam();
  const ModelConfig c = Tiny(4, kv);
  const PruningMap map = RandomMap(c, 0.5, 21);
  const ModelConfig pc = map.PrunedConfig();
  std::unique_ptr<LoraAdapter> small = RandomAdapter(pc, lm_head, 3);
  absl::StatusOr<std::unique_ptr<LoraAdapter>> rec = RecoverAdapter(*small, map);
  ASSERT_TRUE(rec.ok()) << rec.status();
  for (int l = 0; l < 4; ++l) {
    const LayerKept& k = map.layers[l];
    for (int pi = 0; pi < kNumProj; ++pi) {
      const Proj p = static_cast<Proj>(pi);
      const LoraModule& f = *(*rec)->module(l, p);
      const LoraModule& s = *small->module(l, p);
      ASSERT_EQ(f.in, ProjIn(c, l, p));
      ASSERT_EQ(f.out, ProjOut(c, l, p));
      ASSERT_EQ(f.scale, s.scale);
      std::vector<int32_t> rows, cols;
      for (int i = 0; i < f.out; ++i) rows.push_back(i);
      for (int i = 0; i < f.in; ++i) cols.push_back(i);
      if (p == Proj::kQ) rows = Expand(k.heads, 8);
      if (p == Proj::kK || p == Proj::kV) rows = Expand(k.kv_heads, 8);
      if (p == Proj::kGate || p == Proj::kUp) rows = k.mlp;
      if (p == Proj::kO) cols = Expand(k.heads, 8);
      if (p == Proj::kDown) cols = k.mlp;
      const std::vector<float> df = DeltaW(f), ds = DeltaW(s);
      std::vector<bool> kr(f.out, false), kc(f.in, false);
      for (int32_t r : rows) kr[r] = true;
      for (int32_t cc : cols) kc[cc] = true;
      // Kept block: the same products in the same order, so bit-equal.
      for (size_t i = 0; i < rows.size(); ++i) {
        for (size_t j = 0; j < cols.size(); ++j) {
          ASSERT_EQ(df[rows[i] * f.in + cols[j]], ds[i * s.in + j]) << f.name;
        }
      }
      // Pruned rows of B and columns of A are zero.
      for (int o = 0; o < f.out; ++o) {
        for (int r = 0; r < f.lora_rank; ++r) {
          if (!kr[o]) {
            ASSERT_EQ(f.b.data[o * f.lora_rank + r], 0.0f) << f.name;
          }
        }
      }
      for (int r = 0; r < f.lora_rank; ++r) {
        for (int i = 0; i < f.in; ++i) {
          if (!kc[i]) {
            ASSERT_EQ(f.a.data[r * f.in + i], 0.0f) << f.name;
          }
        }
      }
    }
  }
  if (lm_head) {
    ASSERT_NE((*rec)->lm_head(), nullptr);
    EXPECT_EQ(DeltaW(*(*rec)->lm_head()), DeltaW(*small->lm_head()));
  }
  // normA: pruned A columns are drawn, the kept ones still copied.
  RecoverOptions norm;
  norm.mode = RecoverMode::kRecoverNorm;
  norm.seed = 5;
  absl::StatusOr<std::unique_ptr<LoraAdapter>> rn = RecoverAdapter(*small, map, norm);
  ASSERT_TRUE(rn.ok());
  const LoraModule& down = *(*rn)->module(1, Proj::kDown);
  int nonzero = 0;
  std::vector<bool> kept(48, false);
  for (int32_t i : map.layers[1].mlp) kept[i] = true;
  for (int r = 0; r < down.lora_rank; ++r) {
    for (int i = 0; i < 48; ++i) nonzero += !kept[i] && down.a.data[r * 48 + i] != 0.0f;
  }
  EXPECT_EQ(nonzero, down.lora_rank * 24);
  EXPECT_EQ((*rn)->module(1, Proj::kDown)->a.data[map.layers[1].mlp[0]],
            small->module(1, Proj::kDown)->a.data[0]);
  // An adapter of another shape is refused, naming the module.
  std::unique_ptr<LoraAdapter> wrong = RandomAdapter(c, false, 1);
  absl::StatusOr<std::unique_ptr<LoraAdapter>> bad = RecoverAdapter(*wrong, map);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("model.layers.1."), std::string::npos) << bad.status();
}

// The invariant: on a base whose pruned channels are zero, the full model
// with the recovered adapter computes the pruned model with the pruned
// adapter.
TEST_P(RecoverTest, FullWithRecoveredEqualsPrunedWithPruned) {
  const auto [kv, lm_head] = GetParam();
  const ModelConfig c = Tiny(4, kv);
  const PruningMap map = RandomMap(c, 0.5, 33);
  std::unique_ptr<Model> full = RandomModel(c, 8);
  ASSERT_TRUE(ZeroPruned(*full, map).ok());
  absl::StatusOr<std::unique_ptr<Model>> pruned = PruneModel(*full, map);
  ASSERT_TRUE(pruned.ok());
  std::unique_ptr<LoraAdapter> small = RandomAdapter(map.PrunedConfig(), lm_head, 4);
  absl::StatusOr<std::unique_ptr<LoraAdapter>> rec = RecoverAdapter(*small, map);
  ASSERT_TRUE(rec.ok());
  const int B = 2, T = 12;
  const std::vector<int32_t> tokens = Tokens(B * T, c.vocab_size, 2);
  ASSERT_TRUE((*pruned)->Forward(tokens.data(), nullptr, B, T, small.get(), false).ok());
  std::vector<float> want((*pruned)->logits(), (*pruned)->logits() + B * T * c.vocab_size);
  ASSERT_TRUE(full->Forward(tokens.data(), nullptr, B, T, rec->get(), false).ok());
  const float* got = full->logits();
  // Zeroed channels contribute exact zeros, but the GEMMs of o_proj and
  // down_proj sum over different widths (and so may block and vectorise the
  // sums differently): fp32 reassociation over ~100-term dot products in
  // 4 layers, about 1e-6 relative; 1e-4·(1 + |logit|) leaves a wide margin
  // while a misplaced row (an O(0.1) change) fails.
  double max_diff = 0, max_logit = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << "logit " << i;
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
    max_logit = std::max(max_logit, static_cast<double>(std::fabs(want[i])));
  }
  std::printf("kv %d lm_head %d: max |logit| %.3f, max diff %.3g\n", kv, lm_head, max_logit, max_diff);
  // And the adapter matters: without it the logits differ.
  ASSERT_TRUE(full->Forward(tokens.data(), nullptr, B, T, static_cast<LoraAdapter*>(nullptr), false).ok());
  double moved = 0;
  for (size_t i = 0; i < want.size(); ++i) moved = std::max(moved, static_cast<double>(std::fabs(full->logits()[i] - want[i])));
  EXPECT_GT(moved, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(MhaGqaLmHead, RecoverTest,
                         ::testing::Combine(::testing::Values(4, 2), ::testing::Bool()));

TEST(RecoverFilesTest, PeftRoundTrip) {
  const ModelConfig c = Tiny(4, 2);
  const PruningMap map = RandomMap(c, 0.5, 2);
  std::unique_ptr<LoraAdapter> small = RandomAdapter(map.PrunedConfig(), true, 1);
  const std::string in = TempPath("small_adapter"), out = TempPath("full_adapter");
  ASSERT_TRUE(small->SavePeft(in, "pruned").ok());
  ASSERT_TRUE(RecoverAdapterFiles(in, map, out, "full").ok());
  absl::StatusOr<std::unique_ptr<LoraAdapter>> back = LoraAdapter::LoadPeft(out, c);
  ASSERT_TRUE(back.ok()) << back.status();
  absl::StatusOr<std::unique_ptr<LoraAdapter>> direct = RecoverAdapter(*small, map);
  ASSERT_TRUE(direct.ok());
  ASSERT_EQ((*back)->params().size(), (*direct)->params().size());
  EXPECT_EQ(std::memcmp((*back)->params().data(), (*direct)->params().data(),
                        (*back)->params().bytes()), 0);
  EXPECT_FALSE(ParseRecoverMode("ones", "loram.recover").ok());
}

}  // namespace
}  // namespace sheaf::prune
