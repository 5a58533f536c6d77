#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::HasSubstr;

constexpr const char* kBase =
    "base_model: m\noutput_dir: o\ndata: {train: [d]}\ntrain: {max_steps: 2}\n";

absl::StatusOr<proto::JobSpec> Resolved(const std::string& loram) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(std::string(kBase) + loram);
  if (!spec.ok()) return spec.status();
  ApplyDefaults(&*spec);
  absl::Status st = ValidateJobSpec(*spec);
  if (!st.ok()) return st;
  return spec;
}

TEST(LoramKindTest, Defaults) {
  absl::StatusOr<proto::JobSpec> s = Resolved("loram: {}\n");
  ASSERT_TRUE(s.ok()) << s.status();
  const proto::LoramJob& l = s->loram();
  EXPECT_DOUBLE_EQ(l.prune().ratio(), 0.65);
  EXPECT_EQ(l.prune().method(), "stru");
  EXPECT_THAT(l.prune().mlp_layers(), ::testing::ElementsAre(1, -1));
  EXPECT_THAT(l.prune().attn_layers(), ::testing::ElementsAre(1, -1));
  EXPECT_EQ(l.prune().calibration().samples(), 10);
  EXPECT_EQ(l.prune().calibration().seq_len(), 64);
  EXPECT_EQ(l.quantize(), "none");
  EXPECT_EQ(l.recover(), "zero");
  EXPECT_EQ(l.adapter().rank(), 8);
  EXPECT_EQ(l.adapter().targets_size(), 7);
  EXPECT_DOUBLE_EQ(s->optimizer().lr(), 2e-4);
  absl::StatusOr<proto::JobSpec> a = Resolved("loram: {align: {data: [x], steps: 3}}\n");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_DOUBLE_EQ(a->loram().align().lr(), 5e-5);
}

TEST(LoramKindTest, ErrorsNameTheField) {
  EXPECT_THAT(Resolved("loram: {prune: {method: taylor}}\n").status().message(),
              HasSubstr("loram.prune.method: \"taylor\" is not one of stru, rand, l1, l2"));
  EXPECT_THAT(Resolved("loram: {prune: {ratio: 1.0}}\n").status().message(),
              HasSubstr("loram.prune.ratio: must be in [0, 1)"));
  EXPECT_THAT(Resolved("loram: {prune: {mlp_layers: [1]}}\n").status().message(),
              HasSubstr("loram.prune.mlp_layers: must be [begin, end)"));
  EXPECT_THAT(Resolved("loram: {recover: ones}\n").status().message(),
              HasSubstr("loram.recover: \"ones\" is not zero or norm"));
  EXPECT_TRUE(Resolved("loram: {quantize: nf4}\n").ok());  // QLoRAM
  {  // train.compute: bf16 with QLoRAM's NF4 projections is refused.
    auto with_compute = [](const std::string& loram) -> absl::Status {
      absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(
          "base_model: m\noutput_dir: o\ndata: {train: [d]}\n"
          "train: {max_steps: 2, compute: bf16}\n" + loram);
      if (!spec.ok()) return spec.status();
      ApplyDefaults(&*spec);
      return ValidateJobSpec(*spec);
    };
    EXPECT_THAT(with_compute("loram: {quantize: nf4}\n").message(),
                HasSubstr("train.compute: bf16 is not supported with loram.quantize: nf4"));
    EXPECT_TRUE(with_compute("loram: {}\n").ok());
  }
  EXPECT_THAT(Resolved("loram: {quantize: int8}\n").status().message(),
              HasSubstr("loram.quantize: \"int8\" is not none or nf4"));
  EXPECT_THAT(Resolved("loram: {align: {steps: 3}}\n").status().message(),
              HasSubstr("loram.align.data: must be given"));
  EXPECT_THAT(Resolved("loram: {pruned_model: p, prune: {ratio: 0.5}}\n").status().message(),
              HasSubstr("loram.prune: must be absent with loram.pruned_model"));
  EXPECT_THAT(Resolved("loram: {adapter: {targets: [qproj]}}\n").status().message(),
              HasSubstr("loram.adapter.targets[0]: unknown module"));
  EXPECT_THAT(Resolved("loram: {prune: {calibration: {samples: 0}}}\n").status().message(),
              HasSubstr("loram.prune.calibration.samples: must be >= 1"));
  absl::StatusOr<proto::JobSpec> p = Resolved("loram: {pruned_model: p}\n");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->loram().has_prune());
}

}  // namespace
}  // namespace sheaf
