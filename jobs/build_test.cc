// Building from a spec: the tokenizer factory knows "byte" (and "" as its
// default) and refuses other names naming data.tokenizer; a model shape
// from pretrain.model; corpora in text and tokens formats; LoRA options.
#include "jobs/build.h"

#include <filesystem>
#include <fstream>

#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "gtest/gtest.h"

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;

TEST(Build, TokenizerFactory) {
  EXPECT_EQ(TokenizerNames(), std::vector<std::string>{"byte"});
  for (const char* name : {"", "byte"}) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = MakeTokenizer(name);
    ASSERT_TRUE(t.ok()) << name;
    EXPECT_EQ((*t)->vocab_size(), 258);
    EXPECT_EQ((*t)->Encode("hi"), (std::vector<int32_t>{'h', 'i'}));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> bpe = MakeTokenizer("gpt2");
  ASSERT_FALSE(bpe.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(bpe.status()));
  EXPECT_NE(std::string(bpe.status().message()).find("data.tokenizer: \"gpt2\""), std::string::npos)
      << bpe.status();
}

// data.tokenizer auto (the default): a tokenizer.json beside the model is
// the BPE, no tokenizer file is bytes only for the byte vocabulary (258),
// anything else an error naming data.tokenizer and the directory.
TEST(Build, AutoTokenizerFromTheModelDirectory) {
  const std::string dir = ::testing::TempDir() + "/build_auto";
  fs::remove_all(dir);
  auto write_config = [](const std::string& d, int vocab) {
    fs::create_directories(d);
    std::ofstream(d + "/config.json")
        << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
              "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 128, "vocab_size": )"
        << vocab << "}";
  };
  // Like models/tiny-en: byte vocabulary, no tokenizer file.
  write_config(dir + "/bytes", 258);
  for (const char* name : {"", "auto"}) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = MakeTokenizerForModel(name, dir + "/bytes");
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->vocab_size(), 258);
    EXPECT_EQ((*t)->Encode("hi"), (std::vector<int32_t>{'h', 'i'}));
  }
  write_config(dir + "/big", 700);
  absl::StatusOr<std::unique_ptr<Tokenizer>> refused = MakeTokenizerForModel("auto", dir + "/big");
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  const std::string msg(refused.status().message());
  EXPECT_NE(msg.find("data.tokenizer"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir + "/big"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab_size 700"), std::string::npos) << msg;
  // "byte" is still accepted explicitly for such a model.
  EXPECT_TRUE(MakeTokenizerForModel("byte", dir + "/big").ok());
  // A tokenizer.json beside it wins: a BPE with its own vocabulary.
  std::ofstream(dir + "/big/tokenizer.json")
      << R"({"added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
            "post_processor": null, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {"h": 0, "i": 1, "hi": 2}, "merges": ["h i"]}})";
  std::ofstream(dir + "/big/tokenizer_config.json") << R"({"eos_token": "<|endoftext|>"})";
  absl::StatusOr<std::unique_ptr<Tokenizer>> bpe = MakeTokenizerForModel("", dir + "/big");
  ASSERT_TRUE(bpe.ok()) << bpe.status();
  EXPECT_EQ((*bpe)->vocab_size(), 4);
  EXPECT_EQ((*bpe)->Encode("hi"), (std::vector<int32_t>{2}));
  EXPECT_EQ((*bpe)->eos_id(), 3);
  // Resolved without loading: the file a sub-job on another directory keeps.
  EXPECT_EQ(ResolveTokenizer("auto", dir + "/big").value(), dir + "/big/tokenizer.json");
  EXPECT_EQ(ResolveTokenizer("", dir + "/bytes").value(), "byte");
  EXPECT_EQ(ResolveTokenizer("auto", "").value(), "byte");
  EXPECT_FALSE(ResolveTokenizer("gpt2", dir + "/big").ok());
}

TEST(Build, PretrainShapeDataAndAdapterOptions) {
  const std::string dir = ::testing::TempDir() + "/build_test";
  fs::remove_all(dir);
  fs::create_directories(dir + "/corpus");
  for (int f = 0; f < 20; ++f) {
    std::ofstream(dir + "/corpus/d" + std::to_string(f) + ".txt") << std::string(200, 'a' + f);
  }
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(
      "output_dir: " + dir + "/out\nseed: 3\n"
      "data: {train: [" + dir + "/corpus], seq_len: 16, val_fraction: 0.3}\ntrain: {max_steps: 1}\n"
      "pretrain: {model: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
      "num_key_value_heads: 2, intermediate_size: 48, vocab_size: 258}}\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults(&*spec);
  ASSERT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  absl::StatusOr<ModelConfig> config = ModelConfigForSpec(*spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->layers[1].num_kv_heads, 2);
  absl::StatusOr<DataParts> data = BuildData(*spec, *config);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->dataset->seq_len(), 16);
  EXPECT_GT(data->dataset->num_validation_sequences(), 0);
  absl::StatusOr<ModelParts> model = BuildModel(*spec, *config, {});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->adapter, nullptr);
  EXPECT_GT(model->model->params_arena().size(), 0) << "pretrain trains every weight";

  spec->mutable_data()->set_tokenizer("sentencepiece");
  absl::StatusOr<DataParts> refused = BuildData(*spec, *config);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("data.tokenizer"), std::string::npos);
  spec->mutable_data()->set_seq_len(4096);
  EXPECT_NE(std::string(ModelConfigForSpec(*spec).status().message()).find("data.seq_len"),
            std::string::npos);

  proto::AdapterSpec a;
  a.set_rank(4);
  a.set_alpha(8);
  a.add_targets("q_proj");
  const LoraOptions lo = LoraOptionsFromSpec(a, 3);
  EXPECT_EQ(lo.rank, 4);
  EXPECT_EQ(lo.targets, std::vector<std::string>{"q_proj"});
  EXPECT_NE(lo.seed, LoraOptionsFromSpec(a, 4).seed);
}

}  // namespace
}  // namespace sheaf::jobs
