// Which file-system paths a job may name, found by construction.
//
// A message's path fields are the string fields that carry the `path`
// option (proto/path_options.proto); ForEachPathField finds every one by
// reflection, wherever it is nested, so a field added to any job kind is
// checked as soon as it is annotated, with no code here or in the callers
// that names it. Today's JobSpec:
//
//   base_model          the model root
//   data.tokenizer      the model root or else the data root ("byte" is
//                       not a path)
//   data.train, .val    the data root
//   output_dir          the tenant's directory under the output root
//                       (OUTPUT_ROOT/TENANT), so that no tenant can write
//                       or fetch another's files
//
// A relative path is taken relative to its root; an absolute path must lie
// inside it. Resolution is std::filesystem::weakly_canonical: symlinks in
// the part of the path that exists are followed, `.` and `..` are folded
// lexically in the rest. A path that ends up outside its root (`..`
// escapes, absolute paths elsewhere, a symlink pointing out) is
// kInvalidArgument naming the field and the path. Nothing is opened: only
// stat/readlink on the existing prefix. Missing files are not an error
// here (workers may see the files before the coordinator does).
//
// Used by the coordinator (SubmitJob) and by every worker (before a leased
// job opens anything); `sheaf train`'s local check (core/spec
// CheckSpecPaths) walks the same fields.
//
// Thread-safety: PathPolicy is immutable after creation; the free functions
// are reentrant.
#ifndef SHEAF_BASE_PATH_POLICY_H_
#define SHEAF_BASE_PATH_POLICY_H_

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "proto/path_options.pb.h"

namespace sheaf {

// One value of a path field.
struct PathField {
  // The key path as the YAML spec writes it: `base_model`, `data.train[1]`,
  // `foo.extra[0].corpus`, `by_language[de].corpus`.
  std::string name;
  const proto::PathOption* option = nullptr;
  // The value; written through in the mutable walk, null in the const one.
  std::string* mutable_value = nullptr;
  const std::string* value = nullptr;
};

// Calls `visit` for every value of every string field carrying the `path`
// option in `message`: singular fields always (an empty value too), each
// element of a repeated one; it descends into every submessage that is set
// (singular, repeated, oneof members, map values) in declaration order.
void ForEachPathField(google::protobuf::Message* message,
                      const std::function<void(const PathField&)>& visit);
void ForEachPathField(const google::protobuf::Message& message,
                      const std::function<void(const PathField&)>& visit);

// The value names a file: it is not empty and not one of the option's
// not_paths ("byte").
bool NamesAFile(const PathField& field);

// Checks the annotations of `descriptor` and of every message type it
// reaches: the option only on string fields (singular or repeated, no map),
// each with a root and a kind. kInternal naming the first bad field (a
// programmer's error, caught by the tests of each proto).
absl::Status CheckPathAnnotations(const google::protobuf::Descriptor* descriptor);

struct PathRoots {
  std::string model_root;
  std::string data_root;
  std::string output_root;
};

class PathPolicy {
 public:
  // Every root must be an existing directory; they are canonicalised once.
  // kInvalidArgument naming the root otherwise.
  static absl::StatusOr<std::unique_ptr<PathPolicy>> Create(
      const PathRoots& roots);

  // Resolves `path` against `root` (named `root_name` in errors) and checks
  // that it stays inside. `field` names the spec field in errors.
  // kInvalidArgument for an empty path, a NUL byte, an escape, or a path
  // that cannot be resolved.
  static absl::StatusOr<std::filesystem::path> ResolveInside(
      const std::filesystem::path& root, absl::string_view root_name,
      absl::string_view field, absl::string_view path);

  // Rewrites every path field of `spec` (a JobSpec, or any message with
  // path fields) to its resolved absolute form, checking each as described
  // in the file comment. An empty field under the output root becomes
  // OUTPUT_ROOT/TENANT/`default_output`; other empty fields are left for
  // the spec's validation. Every offending field is reported, joined by
  // "; ". kInvalidArgument.
  absl::Status ResolveSpecPaths(google::protobuf::Message* spec,
                                absl::string_view tenant,
                                absl::string_view default_output) const;

  // Resolves a directory a world reports (CompleteJob.artifact_dir) or that
  // a job's record names, inside the tenant's output directory.
  absl::StatusOr<std::filesystem::path> ResolveOutput(
      absl::string_view tenant, absl::string_view field,
      absl::string_view path) const;

  // `path` is absolute and inside `root` as written (`.`/`..` folded, no
  // symlink followed).
  static bool LexicallyInside(const std::filesystem::path& root,
                              const std::filesystem::path& path);

  // Every path field of `spec` (already resolved to absolute paths, as a
  // lease carries them) lies inside its root as written. A worker whose
  // ResolveSpecPaths refuses such a spec is refusing the files (a symlink
  // leads out), not the coordinator's roots.
  bool SpecPathsLexicallyInside(const google::protobuf::Message& spec,
                                absl::string_view tenant) const;

  // OUTPUT_ROOT/TENANT.
  std::filesystem::path TenantOutputRoot(absl::string_view tenant) const;

  const std::filesystem::path& model_root() const { return model_root_; }
  const std::filesystem::path& data_root() const { return data_root_; }
  const std::filesystem::path& output_root() const { return output_root_; }

 private:
  PathPolicy(std::filesystem::path model_root, std::filesystem::path data_root,
             std::filesystem::path output_root)
      : model_root_(std::move(model_root)),
        data_root_(std::move(data_root)),
        output_root_(std::move(output_root)) {}

  // One path field's value, resolved; `problems` gets its error.
  void ResolveField(const PathField& field, absl::string_view tenant,
                    absl::string_view default_output,
                    std::vector<std::string>* problems) const;

  const std::filesystem::path model_root_;
  const std::filesystem::path data_root_;
  const std::filesystem::path output_root_;
};

}  // namespace sheaf

#endif  // SHEAF_BASE_PATH_POLICY_H_
