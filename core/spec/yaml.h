// Job specs as YAML: the file a user writes for `sheaf submit` and `sheaf
// train`, and the resolved spec a run saves next to its outputs.
//
// The YAML mirrors proto/job_spec.proto field for field, found by walking the
// message descriptors, so a field added to the proto is accepted here without
// touching this code:
//   - keys are the proto field names (snake_case); unknown keys are errors;
//   - a nested message is a mapping; a oneof member is chosen by giving its
//     key (the job kind is the one top-level `lora:` / `pretrain:` section);
//   - enums are their value names without the enum's prefix, in lowercase
//     (DataSpec.FORMAT_TEXT_PARAGRAPHS is `text_paragraphs`);
//   - repeated fields are sequences (a single scalar is a one-item list);
//   - a key with no value (`lr:` or `lr: null`) leaves a scalar unset, so its
//     default applies; `lora:` alone selects the kind with every default.
//
// Errors are kInvalidArgument and name the key path
// (`optimizer.lrr: unknown key (did you mean lr?)`), prefixed with
// `line:column: ` when the problem is in the YAML text.
#ifndef SHEAF_CORE_SPEC_YAML_H_
#define SHEAF_CORE_SPEC_YAML_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

// Parses a job spec, then applies `overrides` in order. Each override is
// `key.path=value` (what `sheaf train --set optimizer.lr=1e-4` passes on);
// the value is read as YAML, so `adapter.targets=[q_proj,v_proj]` gives a
// list and `optimizer={lr: 1e-3, beta2: 0.95}` merges into a section. A list
// given by an override replaces the file's list. Exactly one job kind must
// be given in the end. Defaults are not applied (see ApplyDefaults in
// core/spec/validate.h), so the result keeps what the user wrote.
//
// Returns kInvalidArgument for malformed YAML, an unknown key, a value of the
// wrong type or out of the field's range, a key given twice, two job kinds,
// no job kind, or a malformed override.
absl::StatusOr<proto::JobSpec> ParseJobSpecYaml(
    std::string_view yaml, const std::vector<std::string>& overrides = {});

// A spec file larger than this is refused (kInvalidArgument naming it).
inline constexpr size_t kMaxSpecFileBytes = size_t{1} << 20;

// ParseJobSpecYaml on the contents of the file at `path`; errors in the file
// read `path:line:column: key: reason`. Returns kNotFound (or the errno's
// code) when the file cannot be read, else as ParseJobSpecYaml.
absl::StatusOr<proto::JobSpec> ParseJobSpecFile(
    const std::string& path, const std::vector<std::string>& overrides = {});

// Writes `spec` as YAML that ParseJobSpecYaml reads back to an equal message:
// fields in proto order, optional fields and sections only when set, plain
// scalars always (so a resolved spec shows every value it ran with), enum
// values that are unset (0) left out.
std::string JobSpecToYaml(const proto::JobSpec& spec);

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_YAML_H_
