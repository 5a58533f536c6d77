// The job kinds a build knows: per kind, its defaults and its validation.
//
// A kind is a member of JobSpec's `kind` oneof (proto/job_spec.proto); its
// .cc file registers it at static initialisation
//
//   SHEAF_REGISTER_JOB_KIND(lora, {.name = "lora", .apply_defaults = ...,
//                                  .validate = ...});
//
// and its cc_library (alwayslink) is a dependency of core/spec:validate.
// ApplyDefaults and ValidateJobSpec (validate.h) look the spec's kind up
// here, so adding a kind touches no shared code: a message and a oneof
// member in the proto, one file here, one line in BUILD. A test checks that
// every member of the oneof is registered.
//
// Thread-safety: registration happens during static initialisation (or in
// a test before use); lookups after that are read-only and thread-safe.
#ifndef SHEAF_CORE_SPEC_JOB_KIND_H_
#define SHEAF_CORE_SPEC_JOB_KIND_H_

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/spec/problems.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

struct JobKind {
  // The oneof member's field name ("lora"), also the YAML section's key.
  std::string name;
  // The job reads the top-level `data` section: then it gets data's
  // defaults and data.train is required. A kind without it refuses a
  // `data` section (it would be ignored).
  bool uses_data = true;
  // Fills the kind's own defaults. Runs after data's defaults and before
  // those of optimizer, schedule and train, so that it may set a shared
  // field first (pretraining's larger optimizer.lr). Only fields that are
  // unset; running it twice changes nothing. May be empty.
  std::function<void(proto::JobSpec* spec)> apply_defaults;
  // Adds the kind's problems. `spec` has had every default applied;
  // `given` is the spec as written (to tell "unset" from a default).
  // May be empty.
  std::function<void(const proto::JobSpec& spec, const proto::JobSpec& given,
                     Problems& problems)>
      validate;
};

class JobKindRegistry {
 public:
  // The registry the build's kinds register into.
  static JobKindRegistry& Global();

  // kInvalidArgument when `kind.name` is not a member of JobSpec's `kind`
  // oneof; kAlreadyExists when it is registered already.
  absl::Status Register(JobKind kind);

  // The kind named `name`, or null.
  const JobKind* Find(std::string_view name) const;

  // The kind `spec` selects (its set oneof member), or null when none is
  // set or the set one is not registered.
  const JobKind* KindOf(const proto::JobSpec& spec) const;

  // Registered names, sorted.
  std::vector<std::string> Names() const;

 private:
  std::map<std::string, JobKind, std::less<>> kinds_;
};

// The name of the member of JobSpec's `kind` oneof that `spec` sets; empty
// when none.
std::string SelectedKindName(const proto::JobSpec& spec);

// Every member of JobSpec's `kind` oneof, in declaration order.
std::vector<std::string> JobKindNames();

// Registers into JobKindRegistry::Global() at static initialisation; a
// failure there is a programmer's error and aborts with the reason.
class JobKindRegistration {
 public:
  explicit JobKindRegistration(JobKind kind);
};

#define SHEAF_REGISTER_JOB_KIND(id, ...)                      \
  static const ::sheaf::JobKindRegistration                   \
      sheaf_job_kind_registration_##id(::sheaf::JobKind __VA_ARGS__)

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_JOB_KIND_H_
