// adapter_config.json rules: every PEFT field read, harmless or refused by
// name; regex target_modules; tensors nothing reads; adapter_model.bin.
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/lora.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_layers = 3;
  c.head_dim = 4;
  c.vocab_size = 20;
  c.layers = {{4, 2, 24}, {4, 2, 24}, {4, 2, 24}};
  return c;
}

// A sheaf-saved adapter (q_proj, v_proj on all layers) whose config gets
// `extra` spliced in (or target_modules replaced when `targets` is set).
std::string MakeAdapter(const std::string& name, const std::string& extra,
                        const std::string& targets = "") {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  LoraOptions o;
  o.rank = 2;
  o.targets = {"q_proj", "v_proj"};
  auto a = LoraAdapter::Create(SmallConfig(), o);
  EXPECT_TRUE(a.ok());
  EXPECT_TRUE((*a)->SavePeft(dir, "base").ok());
  std::ifstream in(dir + "/adapter_config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = Json::Parse(ss.str());
  EXPECT_TRUE(j.ok());
  std::string text = j->Dump();
  if (!targets.empty()) {
    Json copy = *j;
    copy.Set("target_modules", Json(targets));
    text = copy.Dump();
  }
  if (!extra.empty()) text = absl::StrCat(text.substr(0, text.size() - 1), ", ", extra, "}");
  std::ofstream(dir + "/adapter_config.json") << text;
  return dir;
}

void ExpectRefused(const std::string& dir, const std::string& needle) {
  auto a = LoraAdapter::LoadPeft(dir, SmallConfig());
  ASSERT_FALSE(a.ok()) << dir;
  EXPECT_NE(a.status().message().find(needle), std::string::npos) << a.status();
}

TEST(LoraPeft, UnsupportedFieldsAreRefusedByName) {
  ExpectRefused(MakeAdapter("dora", R"("use_dora": true)"), "use_dora");
  ExpectRefused(MakeAdapter("mts", R"("modules_to_save": ["lm_head"])"), "modules_to_save");
  ExpectRefused(MakeAdapter("bias", R"("bias": "all")"), "bias");
  ExpectRefused(MakeAdapter("lora_only", R"("bias": "lora_only")"), "bias");
  ExpectRefused(MakeAdapter("fifo", R"("fan_in_fan_out": true)"), "fan_in_fan_out");
  ExpectRefused(MakeAdapter("repl", R"("layer_replication": [[0, 2]])"), "layer_replication");
  ExpectRefused(MakeAdapter("unknown", R"("lora_magic": 1)"), "lora_magic: unknown field");
  ExpectRefused(MakeAdapter("task", R"("task_type": "SEQ_CLS")"), "task_type");
  // Defaults and metadata load.
  auto ok = LoraAdapter::LoadPeft(
      MakeAdapter("defaults", R"("use_dora": false, "revision": null, "megatron_core": "megatron.core",
          "loftq_config": {}, "layer_replication": null, "runtime_config": {"ephemeral_gpu_offload": false})"),
      SmallConfig());
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(LoraPeft, RegexTargetModulesSelectProjectionsAndLayers) {
  // PEFT: re.fullmatch(target_modules, module name).
  auto all = LoraAdapter::LoadPeft(MakeAdapter("re_all", "", R"(.*\.(q_proj|v_proj))"), SmallConfig());
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_NE((*all)->module(2, Proj::kV), nullptr);
  EXPECT_EQ((*all)->module(2, Proj::kK), nullptr);
  // A regex that selects modules the file does not hold: missing tensor.
  ExpectRefused(MakeAdapter("re_k", "", R"(.*k_proj)"), "k_proj.lora_A.weight is missing");
  // Fewer layers than the file holds: the rest are unread tensors.
  ExpectRefused(MakeAdapter("re_layer0", "", R"(model\.layers\.0\.self_attn\.(q|v)_proj)"),
                "adapter_config.json does not describe");
  // Not expressible as projections x layers.
  ExpectRefused(MakeAdapter("re_ragged", "", R"(model\.layers\.0\.self_attn\.q_proj|model\.layers\.1\.self_attn\.v_proj)"),
                "not the same projections in every selected layer");
  ExpectRefused(MakeAdapter("re_bad", "", "(unclosed"), "is not a regular expression");
}

TEST(LoraPeft, PickleOnlyAdapterSaysHowToConvert) {
  const std::string dir = MakeAdapter("pickle", "");
  std::filesystem::rename(dir + "/adapter_model.safetensors", dir + "/adapter_model.bin");
  ExpectRefused(dir, "pickle");
  ExpectRefused(dir, "safetensors.torch");
}

TEST(LoraPeft, ExtraTensorsAreNamed) {
  const std::string dir = MakeAdapter("extra", "");
  auto st = SafetensorsFile::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(st.ok());
  SafetensorsWriter w;
  std::vector<std::vector<float>> bufs;
  for (const TensorInfo& t : (*st)->tensors()) {
    bufs.emplace_back(static_cast<size_t>(t.numel()));
    ASSERT_TRUE((*st)->ReadF32(t.name, t.shape, bufs.back().data()).ok());
    w.Add(t.name, t.shape, bufs.back().data());
  }
  std::vector<float> mag(16, 1.0f);
  const std::vector<int64_t> shape = {16};
  const std::string dora = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
  w.Add(dora, shape, mag.data());
  st->reset();
  ASSERT_TRUE(w.Write(dir + "/adapter_model.safetensors", {{"format", "pt"}}).ok());
  ExpectRefused(dir, dora);
}

}  // namespace
}  // namespace sheaf
