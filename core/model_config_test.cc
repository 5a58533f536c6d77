#include "core/model_config.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

constexpr const char* kLlama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 3,
  "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 300,
  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true,
  "max_position_embeddings": 512, "hidden_act": "silu", "torch_dtype": "bfloat16"
})";

TEST(ModelConfig, ParsesLlama) {
  auto c = ParseModelConfig(kLlama, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->num_layers, 3);
  EXPECT_EQ(c->head_dim, 8);  // derived: 64 / 8
  EXPECT_EQ(c->vocab_size, 300);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FLOAT_EQ(c->rope_theta, 500000.0f);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  ASSERT_EQ(c->layers.size(), 3u);
  for (const LayerShape& s : c->layers) {
    EXPECT_EQ(s.num_heads, 8);
    EXPECT_EQ(s.num_kv_heads, 2);
    EXPECT_EQ(s.intermediate, 172);
  }
  EXPECT_TRUE(c->uniform());
}

TEST(ModelConfig, Qwen2HasBiasByDefault) {
  auto c = ParseModelConfig(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 32,
      "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
      "num_key_value_heads": 2, "vocab_size": 50})", "q.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ModelConfig, PerLayerShapesAndRoundTrip) {
  auto c = ParseModelConfig(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 32,
      "head_dim": 8, "intermediate_size": [64, 40], "num_hidden_layers": 2,
      "num_attention_heads": [4, 2], "num_key_value_heads": [2, 1], "vocab_size": 50})", "p.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->uniform());
  EXPECT_EQ(c->layers[1].intermediate, 40);
  EXPECT_EQ(c->layers[1].num_heads, 2);
  EXPECT_EQ(c->layers[1].num_kv_heads, 1);
  auto again = ParseModelConfig(c->ToJson(), "roundtrip");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << c->ToJson();
  EXPECT_EQ(again->layers[0].intermediate, 64);
  EXPECT_EQ(again->layers[1].num_kv_heads, 1);
  EXPECT_EQ(again->head_dim, 8);
  EXPECT_EQ(again->NumParams(), c->NumParams());
}

TEST(ModelConfig, NumParamsMatchesHandCount) {
  auto c = ParseModelConfig(kLlama, "config.json");
  ASSERT_TRUE(c.ok());
  // per layer: 2 norms (128) + q 64*64 + k,v 2*16*64 + o 64*64 + mlp 3*172*64
  const int64_t per_layer = 128 + 4096 + 2048 + 4096 + 3 * 172 * 64;
  EXPECT_EQ(c->NumParams(), 300 * 64 + 64 + 3 * per_layer);
}

void ExpectError(const char* json, const char* needle) {
  auto c = ParseModelConfig(json, "bad.json");
  ASSERT_FALSE(c.ok()) << "accepted: " << json;
  EXPECT_NE(std::string(c.status().message()).find(needle), std::string::npos)
      << c.status().message();
  EXPECT_NE(std::string(c.status().message()).find("bad.json"), std::string::npos);
}

TEST(ModelConfig, ErrorsNameTheField) {
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 5})", "hidden_size: missing");
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 5})",
              "num_key_value_heads");
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 18, "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 5})", "num_attention_heads");
  ExpectError(R"({"architectures": ["GPT2LMHeadModel"], "hidden_size": 16})", "unsupported architecture");
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": "16", "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 5})", "hidden_size: must be an integer");
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": [8, 8],
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 5})", "intermediate_size: has 2 entries");
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 5, "rope_scaling": {"type": "linear"}})",
              "rope_scaling");
  ExpectError("{not json", "bad.json");
  ExpectError(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 4294967304, "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 5})", "hidden_size: must be in");
}

// A minimal valid config with one extra field spliced in.
std::string With(const std::string& arch, const std::string& extra) {
  return absl::StrCat(R"({"architectures": [")", arch,
                      R"("], "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 5)",
                      extra.empty() ? "" : ", ", extra, "}");
}

// A value for a field of the table that is NOT its default (so a
// kFieldDefaultOnly / kFieldRefused row must refuse it).
std::string NonDefaultValue(const std::string& name) {
  if (name == "hidden_act") return R"("gelu")";
  if (name == "pruned_heads") return R"({"0": [1]})";
  if (name == "attention_dropout") return "0.1";
  return "true";
}

TEST(ModelConfig, WalksTheFieldTable) {
  // Every row: read fields are parsed elsewhere in this file; harmless ones
  // are accepted whatever their value; refused ones fail naming the field;
  // default-only ones accept null and fail naming the field off default.
  int read = 0, harmless = 0, refused = 0;
  for (const FieldRule& r : ModelConfigFields()) {
    const std::string name = r.name;
    SCOPED_TRACE(name);
    switch (r.use) {
      case FieldUse::kFieldRead: ++read; break;
      case FieldUse::kFieldHarmless: {
        ++harmless;
        auto c = ParseModelConfig(With("LlamaForCausalLM", absl::StrCat("\"", name, "\": 7")), "h.json");
        EXPECT_TRUE(c.ok()) << c.status();
        break;
      }
      case FieldUse::kFieldDefaultOnly: {
        ++refused;
        auto ok = ParseModelConfig(With("LlamaForCausalLM", absl::StrCat("\"", name, "\": null")), "d.json");
        EXPECT_TRUE(ok.ok()) << ok.status();
        ExpectError(With("LlamaForCausalLM", absl::StrCat("\"", name, "\": ", NonDefaultValue(name))).c_str(),
                    name.c_str());
        break;
      }
      case FieldUse::kFieldRefused:
        ++refused;
        ExpectError(With("LlamaForCausalLM", absl::StrCat("\"", name, "\": {}")).c_str(), name.c_str());
        break;
    }
  }
  EXPECT_GE(read, 20);
  EXPECT_GE(harmless, 40);
  EXPECT_GE(refused, 7);
  // A field in no table is refused by name.
  ExpectError(With("LlamaForCausalLM", R"("qk_layernorm": true)").c_str(), "qk_layernorm: unknown field");
}

TEST(ModelConfig, LlamaBiasesAreQkvAndOprojAndMlp) {
  auto c = ParseModelConfig(With("LlamaForCausalLM", R"("attention_bias": true, "mlp_bias": true)"), "c.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->o_proj_bias);
  EXPECT_TRUE(c->mlp_bias);
  // round trip keeps all three
  auto again = ParseModelConfig(c->ToJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->o_proj_bias && again->mlp_bias && again->attention_bias);
  // Qwen2: q/k/v bias, never o_proj / MLP (transformers ignores the keys).
  auto q = ParseModelConfig(With("Qwen2ForCausalLM", R"("attention_bias": false, "mlp_bias": true)"), "q.json");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->attention_bias);
  EXPECT_FALSE(q->o_proj_bias || q->mlp_bias);
  // A Llama with only q/k/v bias (built in code) is written as Qwen2, the
  // decoder that computes exactly that.
  ModelConfig qkv_only = *c;
  qkv_only.o_proj_bias = qkv_only.mlp_bias = false;
  auto as_qwen = ParseModelConfig(qkv_only.ToJson(), "w.json");
  ASSERT_TRUE(as_qwen.ok()) << as_qwen.status();
  EXPECT_EQ(as_qwen->model_type, "qwen2");
  EXPECT_TRUE(as_qwen->attention_bias);
  EXPECT_FALSE(as_qwen->o_proj_bias);
  // NumParams counts the extra biases: o (16) + gate, up (8 each) + down (16).
  EXPECT_EQ(c->NumParams() - qkv_only.NumParams(), 16 + 8 + 8 + 16);
}

// Fuzz finding (tools/fuzz.sh model_config): numbers beyond a 32-bit float
// became inf (rms_norm_eps 1e85 parsed; config.json written back said
// null). Each such field is refused by name.
TEST(ModelConfig, NumbersBeyondFloatAreRefusedByName) {
  for (const char* field : {"rms_norm_eps", "rope_theta"}) {
    auto c = ParseModelConfig(With("LlamaForCausalLM", absl::StrCat("\"", field, "\": 1.5e85")), "f.json");
    ASSERT_FALSE(c.ok()) << field;
    EXPECT_NE(c.status().message().find(field), std::string::npos) << c.status();
    EXPECT_NE(c.status().message().find("32-bit float"), std::string::npos) << c.status();
  }
  auto f = ParseModelConfig(With("LlamaForCausalLM", R"("rope_scaling": {"type": "linear", "factor": 1e60})"), "f.json");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("rope_scaling.factor"), std::string::npos) << f.status();
  auto l3 = ParseModelConfig(With("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 1e60, "original_max_position_embeddings": 100})"), "3.json");
  ASSERT_FALSE(l3.ok());
  EXPECT_NE(l3.status().message().find("rope_scaling.high_freq_factor"), std::string::npos) << l3.status();
  // The largest finite values still parse and round-trip.
  auto ok = ParseModelConfig(With("LlamaForCausalLM", R"("rope_theta": 1e30)"), "ok.json");
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto again = ParseModelConfig(ok->ToJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->rope_theta, ok->rope_theta);
}

TEST(ModelConfig, RopeScalingLinearAndLlama3) {
  auto lin = ParseModelConfig(With("LlamaForCausalLM", R"("rope_scaling": {"type": "linear", "factor": 2.0})"), "l.json");
  ASSERT_TRUE(lin.ok()) << lin.status();
  EXPECT_EQ(lin->rope_scaling.type, RopeScaling::Type::kRopeScalingLinear);
  const std::vector<float> plain = RopeInvFreq(4, 10000.0f, RopeScaling{});
  const std::vector<float> halved = RopeInvFreq(4, 10000.0f, lin->rope_scaling);
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_FLOAT_EQ(plain[0], 1.0f);
  EXPECT_FLOAT_EQ(plain[1], 0.01f);  // 10000^(-2/4)
  EXPECT_FLOAT_EQ(halved[0], 0.5f);
  EXPECT_FLOAT_EQ(halved[1], 0.005f);

  auto l3 = ParseModelConfig(With("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 100})"), "3.json");
  ASSERT_TRUE(l3.ok()) << l3.status();
  EXPECT_EQ(l3->rope_scaling.type, RopeScaling::Type::kRopeScalingLlama3);
  // Hand computation of transformers' _compute_llama3_parameters with
  // HD 8, theta 10000: inv = 1, 0.1, 0.01, 0.001; wavelength 2π/inv =
  // 6.28, 62.8, 628, 6283; low_wavelen 100, high_wavelen 25.
  //   6.28 < 25: kept; 62.8 in [25, 100]: smooth = (100/62.83 - 1)/3 =
  //   0.19718, inv = (1-s)·0.1/8 + s·0.1; 628 and 6283 > 100: divided by 8.
  const std::vector<float> f = RopeInvFreq(8, 10000.0f, l3->rope_scaling);
  const double smooth = (100.0 / (2 * M_PI / 0.1) - 1.0) / 3.0;
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_NEAR(f[1], (1 - smooth) * 0.1 / 8 + smooth * 0.1, 1e-7);
  EXPECT_NEAR(f[2], 0.01 / 8, 1e-9);
  EXPECT_NEAR(f[3], 0.001 / 8, 1e-10);
  auto again = ParseModelConfig(l3->ToJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->rope_scaling.original_max_position_embeddings, 100);

  ExpectError(With("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})").c_str(),
              "rope_scaling.rope_type: \"yarn\" is not supported");
  ExpectError(With("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})").c_str(),
              "rope_scaling.low_freq_factor");
  ExpectError(With("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "linear", "factor": 2.0, "beta_fast": 3})").c_str(),
              "rope_scaling.beta_fast");
}

TEST(ModelConfig, SlidingWindowsAndMistral) {
  // Mistral: the window applies whenever set (transformers' default 4096).
  auto m = ParseModelConfig(With("MistralForCausalLM", R"("head_dim": 8, "sliding_window": 64)"), "m.json");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->sliding_window, 64);
  EXPECT_EQ(m->head_dim, 8);  // != 16 / 4
  auto m_default = ParseModelConfig(With("MistralForCausalLM", ""), "m.json");
  ASSERT_TRUE(m_default.ok());
  EXPECT_EQ(m_default->sliding_window, 4096);
  EXPECT_EQ(m_default->layers[0].num_kv_heads, 2);
  auto m_none = ParseModelConfig(With("MistralForCausalLM", R"("sliding_window": null)"), "m.json");
  ASSERT_TRUE(m_none.ok());
  EXPECT_EQ(m_none->sliding_window, 0);
  // Qwen2: only with use_sliding_window.
  auto q_off = ParseModelConfig(With("Qwen2ForCausalLM", R"("sliding_window": 32, "use_sliding_window": false, "max_window_layers": 1)"), "q.json");
  ASSERT_TRUE(q_off.ok());
  EXPECT_EQ(q_off->sliding_window, 0);
  auto q_on = ParseModelConfig(With("Qwen2ForCausalLM", R"("sliding_window": 32, "use_sliding_window": true)"), "q.json");
  ASSERT_TRUE(q_on.ok());
  EXPECT_EQ(q_on->sliding_window, 32);
  auto again = ParseModelConfig(q_on->ToJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->sliding_window, 32);
  ExpectError(With("LlamaForCausalLM", R"("sliding_window": 32)").c_str(), "sliding_window");
  ExpectError(With("MistralForCausalLM", R"("model_type": "llama")").c_str(), "model_type");
}

TEST(ModelConfig, SpecialTokenIdsAndDtypeRoundTrip) {
  auto c = ParseModelConfig(With("LlamaForCausalLM", R"("bos_token_id": 1, "eos_token_id": [3, 4], "pad_token_id": null, "torch_dtype": "bfloat16")"), "t.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 3);
  EXPECT_EQ(c->pad_token_id, -1);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  auto again = ParseModelConfig(c->ToJson(), "again.json");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bos_token_id, 1);
  EXPECT_EQ(again->eos_token_id, 3);
  ExpectError(With("LlamaForCausalLM", R"("eos_token_id": "x")").c_str(), "eos_token_id");
}

}  // namespace
}  // namespace sheaf
