// Fuzz target: the job-spec YAML parser and validator (core/spec).
//
// The input is a spec file's text. A spec that parses goes through
// ApplyDefaults, ValidateJobSpec and JobSpecToYaml, and the YAML written must
// parse back to an equal message (what yaml.h promises); a difference aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "fuzz/fuzz_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "proto/job_spec.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > sheaf::kMaxSpecFileBytes) return 0;
  const std::string_view text = sheaf::fuzz::AsView(data, size);
  absl::StatusOr<sheaf::proto::JobSpec> spec = sheaf::ParseJobSpecYaml(text);
  if (!spec.ok()) {
    sheaf::fuzz::Note(spec.status());
    return 0;
  }
  // What the user wrote must survive a round trip ...
  const std::string yaml = sheaf::JobSpecToYaml(*spec);
  absl::StatusOr<sheaf::proto::JobSpec> again = sheaf::ParseJobSpecYaml(yaml);
  if (!again.ok()) {
    fprintf(stderr, "JobSpecToYaml output does not parse: %s\n---\n%s\n---\n",
            std::string(again.status().message()).c_str(), yaml.c_str());
    abort();
  }
  if (!google::protobuf::util::MessageDifferencer::Equals(*spec, *again)) {
    fprintf(stderr, "JobSpecToYaml round trip differs\n---\n%s\n---\n", yaml.c_str());
    abort();
  }
  // ... and so must the resolved spec (what a job records it ran with).
  sheaf::proto::JobSpec resolved = *spec;
  sheaf::ApplyDefaults(&resolved);
  (void)sheaf::ValidateJobSpec(*spec);
  (void)sheaf::ValidateJobSpec(resolved);
  const std::string resolved_yaml = sheaf::JobSpecToYaml(resolved);
  absl::StatusOr<sheaf::proto::JobSpec> resolved_again = sheaf::ParseJobSpecYaml(resolved_yaml);
  if (!resolved_again.ok() ||
      !google::protobuf::util::MessageDifferencer::Equals(resolved, *resolved_again)) {
    fprintf(stderr, "resolved spec round trip fails (%s)\n---\n%s\n---\n",
            resolved_again.ok() ? "differs" : std::string(resolved_again.status().message()).c_str(),
            resolved_yaml.c_str());
    abort();
  }
  return 0;
}
