// Model arithmetic against independent references: the identity (λ = 0),
// `sheaf merge`'s Model::MergeAdapter (one adapter, λ = 1), a naive
// element-wise sum (linearity), and the errors that name the tensor.
#include "core/arith/arith.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <filesystem>
#include <string>
#include <vector>

#include "core/lora.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

ModelConfig Config(int hidden = 32) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.num_layers = 2;
  c.head_dim = 8;
  c.vocab_size = 64;
  c.max_position_embeddings = 16;
  c.tie_word_embeddings = true;
  c.layers = {{4, 2, 48}, {4, 2, 48}};
  return c;
}

std::string Dir(const std::string& name) {
  const std::string d = std::string(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp") + "/arith_" + name;
  fs::remove_all(d);
  return d;
}

std::string SaveRandomModel(const std::string& name, uint64_t seed, int hidden = 32) {
  auto m = Model::Create(Config(hidden), NothingTrainable).value();
  m->InitRandom(seed, 0.05f);
  const std::string d = Dir(name);
  EXPECT_TRUE(m->Save(d).ok());
  return d;
}

// Every tensor of a model dir as fp32, by name.
std::map<std::string, std::vector<float>> Read(const std::string& dir) {
  auto f = SafetensorsModel::Open(dir).value();
  std::map<std::string, std::vector<float>> out;
  for (const TensorInfo* t : f->tensors()) {
    std::vector<float> v(static_cast<size_t>(t->numel()));
    EXPECT_TRUE(f->ReadF32(t->name, t->shape, v.data()).ok());
    out[t->name] = std::move(v);
  }
  return out;
}

std::string Bytes(const std::string& dir) {
  std::ifstream in(dir + "/model.safetensors", std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ModelArithmeticTest, LambdaZeroIsTheBaseBitForBit) {
  const std::string base = SaveRandomModel("base0", 1), other = SaveRandomModel("other0", 2);
  const std::string out = Dir("out0");
  ArithStats stats;
  ASSERT_TRUE(ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 0.0, other, ""}}, out, &stats).ok());
  EXPECT_EQ(Read(out), Read(base));
  EXPECT_GT(stats.tensors, 10);
  // Byte-identical file too (same header layout, same data).
  EXPECT_EQ(Bytes(out), Bytes(base));
  EXPECT_TRUE(fs::exists(out + "/config.json"));
}

TEST(ModelArithmeticTest, OneAdapterAtLambdaOneIsSheafMerge) {
  const ModelConfig c = Config();
  const std::string base = SaveRandomModel("base1", 3);
  LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 8;
  lo.seed = 5;
  auto adapter = LoraAdapter::Create(c, lo).value();
  // B starts at zero: give it values so that ΔW is not zero.
  for (LoraModule* m : adapter->all_modules()) {
    for (int64_t i = 0; i < m->b.numel(); ++i) m->b.data[i] = 0.01f * std::sin(static_cast<float>(i + m->id));
  }
  const std::string adir = Dir("adapter1");
  ASSERT_TRUE(adapter->SavePeft(adir, base).ok());
  // The reference: what `sheaf merge` does.
  auto model = Model::Create(c, NothingTrainable).value();
  ASSERT_TRUE(model->LoadWeights(base).ok());
  auto loaded = LoraAdapter::LoadPeft(adir, c).value();
  ASSERT_TRUE(model->MergeAdapter(*loaded).ok());
  const std::string merged = Dir("merged1");
  ASSERT_TRUE(model->Save(merged).ok());
  const std::string out = Dir("out1");
  ArithStats stats;
  ASSERT_TRUE(ModelArithmetic(base, {{ArithTerm::Kind::kArithTermAdapter, 1.0, adir, ""}}, out, &stats).ok());
  EXPECT_EQ(stats.adapted_modules, 14);  // 7 projections x 2 layers
  EXPECT_EQ(Read(out), Read(merged));
  EXPECT_NE(Read(out), Read(base));
}

TEST(ModelArithmeticTest, IsLinearInTwoTaskVectors) {
  const std::string base = SaveRandomModel("base2", 7), a = SaveRandomModel("a2", 8),
                    b = SaveRandomModel("b2", 9), ref = SaveRandomModel("ref2", 10);
  const std::string out = Dir("out2");
  ASSERT_TRUE(ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 0.5, a, ref},
                                     {ArithTerm::Kind::kArithTermModel, -1.25, b, ""}},
                              out)
                  .ok());
  const auto got = Read(out), wb = Read(base), wa = Read(a), wbb = Read(b), wr = Read(ref);
  for (const auto& [name, v] : got) {
    for (size_t i = 0; i < v.size(); ++i) {
      // Naive double reference; fp32 rounding of three additions of values
      // of size ~0.2 stays below 1e-6.
      const double want = static_cast<double>(wb.at(name)[i]) + 0.5 * (wa.at(name)[i] - wr.at(name)[i]) -
                          1.25 * (wbb.at(name)[i] - wb.at(name)[i]);
      ASSERT_NEAR(v[i], want, 1e-6) << name << "[" << i << "]";
    }
  }
  // f(λ1 + λ2) = f(λ1) + f(λ2) - base on one vector.
  const std::string o1 = Dir("o1"), o2 = Dir("o2"), o12 = Dir("o12");
  ASSERT_TRUE(ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 0.3, a, ""}}, o1).ok());
  ASSERT_TRUE(ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 0.7, a, ""}}, o2).ok());
  ASSERT_TRUE(ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 1.0, a, ""}}, o12).ok());
  const auto r1 = Read(o1), r2 = Read(o2), r12 = Read(o12);
  for (const auto& [name, v] : r12) {
    for (size_t i = 0; i < v.size(); ++i) {
      ASSERT_NEAR(v[i], r1.at(name)[i] + r2.at(name)[i] - wb.at(name)[i], 1e-6) << name;
    }
  }
}

TEST(ModelArithmeticTest, RefusesMismatchedShapesNamingTheTensor) {
  const std::string base = SaveRandomModel("base3", 11), wide = SaveRandomModel("wide3", 12, 40);
  absl::Status s = ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 1.0, wide, ""}}, Dir("out3"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor model.embed_tokens.weight is [64, 40]"));
  EXPECT_THAT(s.message(), HasSubstr("but [64, 32] in the base"));
  EXPECT_FALSE(fs::exists(Dir("out3") + "/model.safetensors"));
  // A term with a tensor the base lacks.
  auto m = Model::Create(Config(), NothingTrainable).value();
  m->InitRandom(1, 0.05f);
  SafetensorsWriter w;
  std::vector<float> extra(4, 1.0f);
  const std::vector<int64_t> shape = {4};
  w.Add("model.extra.weight", shape, extra.data());
  const std::string odd = Dir("odd3");
  fs::create_directories(odd);
  ASSERT_TRUE(w.Write(odd + "/model.safetensors").ok());
  s = ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, 1.0, odd, ""}}, Dir("out3b"));
  EXPECT_THAT(s.message(), HasSubstr("tensor model.extra.weight is not in the base"));
  s = ModelArithmetic(base, {{ArithTerm::Kind::kArithTermModel, NAN, base, ""}}, Dir("out3c"));
  EXPECT_THAT(s.message(), HasSubstr("lambda must be finite"));
}

}  // namespace
}  // namespace sheaf
