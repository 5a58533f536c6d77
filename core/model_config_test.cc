#include "core/model_config.h"

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

}  // namespace
}  // namespace sheaf
