// Defaults and checks for a JobSpec, shared by the CLI (before submitting),
// the coordinator (which never trusts the client) and the worker.
#ifndef SHEAF_CORE_SPEC_VALIDATE_H_
#define SHEAF_CORE_SPEC_VALIDATE_H_

#include "absl/status/status.h"
#include "core/spec/job_kind.h"
#include "core/spec/sections.h"  // kAdapterTargetNames, for callers.
#include "proto/job_spec.pb.h"

namespace sheaf {

// Fills every unset field that has a default (documented on the field in
// proto/job_spec.proto). Fields already set, even to 0, are kept; running it
// twice changes nothing. Sections are created as needed, except that
// pretrain.model is only filled in for a from-scratch job (empty
// base_model) and `data` is left alone for a kind that reads no data. The
// kind's own defaults come from its JobKind (job_kind.h), taken from
// `kinds` (JobKindRegistry::Global() without it).
void ApplyDefaults(proto::JobSpec* spec, const JobKindRegistry& kinds);
void ApplyDefaults(proto::JobSpec* spec);

// Range and consistency checks that need no file system: the spec is judged
// as ApplyDefaults would leave it (an unset field with a default is fine), so
// it may be called before or after ApplyDefaults. Every problem found is
// reported, each as `key.path: reason` (`optimizer.lr: must be > 0, got
// -0.001`), joined by "; ".
//
// The shared sections are checked here (`data` only for a kind that reads
// it: there data.train is required; a kind without data refuses the
// section); the kind's own checks come from its JobKind in `kinds`
// (JobKindRegistry::Global() without it).
//
// Returns kInvalidArgument when a problem is found.
absl::Status ValidateJobSpec(const proto::JobSpec& spec,
                             const JobKindRegistry& kinds);
absl::Status ValidateJobSpec(const proto::JobSpec& spec);

// Checks that the files the spec names exist, relative paths from the
// current directory: every field with the `path` option (found by
// base/path_policy.h ForEachPathField, wherever a job kind nests it) must
// name what its option's kind says (a file, a directory, either); values in
// not_paths ("byte") and output directories are skipped. Today that is
// base_model (a directory), every data.train and data.val path (file or
// directory) and data.tokenizer unless it is "byte" (a file). Every missing
// path is reported as `key.path: no such ...: PATH`.
//
// Returns kNotFound when a path is missing or of the wrong kind.
absl::Status CheckSpecPaths(const proto::JobSpec& spec);

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_VALIDATE_H_
