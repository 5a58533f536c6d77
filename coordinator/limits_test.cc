#include "coordinator/limits.h"

#include <string>

#include "gtest/gtest.h"
#include "proto/job_spec.pb.h"

namespace sheaf::coordinator {
namespace {

TEST(Utf8Test, AcceptsWellFormedAndRejectsTheRest) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xFF"));
}

TEST(LimitsTest, AGoodSpecPasses) {
  proto::JobSpec spec;
  spec.set_name("r\xC3\xA9sum\xC3\xA9");
  spec.mutable_data()->add_train("a.txt");
  spec.mutable_lora()->mutable_adapter()->add_targets("q_proj");
  EXPECT_TRUE(CheckMessageLimits(spec, "", RequestLimits()).ok());
}

TEST(LimitsTest, OversizedSpecIsRefusedFirst) {
  proto::JobSpec spec;
  for (int i = 0; i < 200; ++i) spec.mutable_data()->add_train(std::string(500, 'x'));
  absl::Status status = CheckMessageLimits(spec, "", RequestLimits());
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("spec: 10"), std::string::npos) << status;
  EXPECT_NE(status.message().find("at most 65536"), std::string::npos);
}

TEST(LimitsTest, StringsAndRepeatedFieldsAreBounded) {
  RequestLimits limits;
  limits.max_string_bytes = 10;
  limits.max_repeated = 3;
  proto::JobSpec spec;
  spec.set_name("this name is too long");
  spec.mutable_data()->add_train("ok");
  spec.mutable_data()->add_train("bad\xFFutf8");
  spec.set_output_dir(std::string("a\0b", 3));
  for (int i = 0; i < 4; ++i) spec.mutable_lora()->mutable_adapter()->add_layers(i);
  absl::Status status = CheckMessageLimits(spec, "", limits);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  const std::string message(status.message());
  EXPECT_NE(message.find("name: 21 bytes, at most 10"), std::string::npos) << message;
  EXPECT_NE(message.find("data.train[1]: not valid UTF-8"), std::string::npos) << message;
  EXPECT_NE(message.find("output_dir: holds a NUL byte"), std::string::npos) << message;
  EXPECT_NE(message.find("lora.adapter.layers: 4 entries, at most 3"),
            std::string::npos) << message;
}

TEST(LimitsTest, UnknownFieldsAreNamed) {
  proto::JobSpec spec;
  spec.mutable_data()->add_train("a");
  // Field 30 (a job kind this build does not know), as a newer client
  // would send it: tag (30 << 3 | 2) = 0xF2 0x01, length 0. (22 became
  // `loram`.)
  std::string wire = spec.SerializeAsString() + std::string("\xF2\x01\x00", 3);
  proto::JobSpec parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  absl::Status status = CheckMessageLimits(parsed, "", RequestLimits());
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("spec: unknown field number 30"),
            std::string::npos) << status;
}

}  // namespace
}  // namespace sheaf::coordinator
