// Which file-system paths a job may name: everything must resolve inside
// the roots the coordinator is configured with.
//
//   base_model, data.tokenizer   the model root (the tokenizer may also be
//                                in the data root)
//   data.train, data.val         the data root
//   output_dir                   the tenant's directory under the output
//                                root (OUTPUT_ROOT/TENANT), so that no
//                                tenant can write or fetch another's files
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
// Thread-safety: immutable after creation.
#ifndef SHEAF_COORDINATOR_PATH_POLICY_H_
#define SHEAF_COORDINATOR_PATH_POLICY_H_

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/job_spec.pb.h"

namespace sheaf::coordinator {

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

  // Rewrites every path in `spec` to its resolved absolute form, checking
  // each as described in the file comment. An empty output_dir becomes
  // OUTPUT_ROOT/TENANT/`default_output`. Every offending field is reported,
  // joined by "; ". kInvalidArgument.
  absl::Status ResolveSpecPaths(proto::JobSpec* spec, absl::string_view tenant,
                                absl::string_view default_output) const;

  // Resolves a directory a world reports (CompleteJob.artifact_dir) or that
  // a job's record names, inside the tenant's output directory.
  absl::StatusOr<std::filesystem::path> ResolveOutput(
      absl::string_view tenant, absl::string_view field,
      absl::string_view path) const;

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

  const std::filesystem::path model_root_;
  const std::filesystem::path data_root_;
  const std::filesystem::path output_root_;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_PATH_POLICY_H_
