#include "coordinator/path_policy.h"

#include <algorithm>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sheaf::coordinator {
namespace {

namespace fs = std::filesystem;

// `path` equals `root` or lies below it, compared component by component
// (so /data2 is not inside /data).
bool IsInside(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    // A trailing separator gives an empty last component; ignore it.
    if (r->empty() && std::next(r) == root.end()) break;
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

absl::StatusOr<fs::path> CanonicalRoot(absl::string_view name,
                                       const std::string& root) {
  if (root.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not set"));
  }
  std::error_code error;
  fs::path canonical = fs::canonical(root, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " ", root, ": ", error.message()));
  }
  if (!fs::is_directory(canonical, error)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " ", root, ": not a directory"));
  }
  return canonical;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PathPolicy>> PathPolicy::Create(
    const PathRoots& roots) {
  absl::StatusOr<fs::path> model = CanonicalRoot("model root", roots.model_root);
  if (!model.ok()) return model.status();
  absl::StatusOr<fs::path> data = CanonicalRoot("data root", roots.data_root);
  if (!data.ok()) return data.status();
  absl::StatusOr<fs::path> output =
      CanonicalRoot("output root", roots.output_root);
  if (!output.ok()) return output.status();
  return std::unique_ptr<PathPolicy>(
      new PathPolicy(*std::move(model), *std::move(data), *std::move(output)));
}

absl::StatusOr<fs::path> PathPolicy::ResolveInside(const fs::path& root,
                                                   absl::string_view root_name,
                                                   absl::string_view field,
                                                   absl::string_view path) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must not be empty"));
  }
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": path holds a NUL byte"));
  }
  const fs::path given{std::string(path)};
  const fs::path joined = given.is_absolute() ? given : root / given;
  std::error_code error;
  fs::path resolved = fs::weakly_canonical(joined, error);
  if (error) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": path '", path, "' cannot be resolved: ", error.message()));
  }
  // weakly_canonical keeps a trailing separator of a missing directory.
  if (resolved.has_relative_path() && resolved.filename().empty()) {
    resolved = resolved.parent_path();
  }
  if (!IsInside(resolved, root)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": path '", path, "' is outside the ", root_name, " ",
        root.string(), " (it resolves to ", resolved.string(), ")"));
  }
  return resolved;
}

fs::path PathPolicy::TenantOutputRoot(absl::string_view tenant) const {
  return output_root_ / std::string(tenant);
}

absl::StatusOr<fs::path> PathPolicy::ResolveOutput(
    absl::string_view tenant, absl::string_view field,
    absl::string_view path) const {
  // The tenant's directory itself may be a symlink the operator made (to
  // another disk): judge against where it really is.
  std::error_code error;
  fs::path tenant_root = fs::weakly_canonical(TenantOutputRoot(tenant), error);
  if (error) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": the output directory of tenant ", tenant,
        " cannot be resolved: ", error.message()));
  }
  return ResolveInside(tenant_root, "output root of tenant", field, path);
}

absl::Status PathPolicy::ResolveSpecPaths(proto::JobSpec* spec,
                                          absl::string_view tenant,
                                          absl::string_view default_output) const {
  std::vector<std::string> problems;
  auto resolve = [&](const fs::path& root, absl::string_view root_name,
                     const std::string& field, std::string* path) {
    if (path->empty()) return;  // Required fields: ValidateJobSpec's job.
    absl::StatusOr<fs::path> resolved =
        ResolveInside(root, root_name, field, *path);
    if (resolved.ok()) {
      *path = resolved->string();
    } else {
      problems.emplace_back(resolved.status().message());
    }
  };

  resolve(model_root_, "model root", "base_model", spec->mutable_base_model());
  proto::DataSpec* data = spec->mutable_data();
  for (int i = 0; i < data->train_size(); ++i) {
    resolve(data_root_, "data root", absl::StrCat("data.train[", i, "]"),
            data->mutable_train(i));
  }
  for (int i = 0; i < data->val_size(); ++i) {
    resolve(data_root_, "data root", absl::StrCat("data.val[", i, "]"),
            data->mutable_val(i));
  }
  if (!data->tokenizer().empty() && data->tokenizer() != "byte") {
    // A tokenizer usually sits in the model directory, but may be trained
    // on the data side: either root will do.
    absl::StatusOr<fs::path> in_model = ResolveInside(
        model_root_, "model root", "data.tokenizer", data->tokenizer());
    absl::StatusOr<fs::path> in_data = ResolveInside(
        data_root_, "data root", "data.tokenizer", data->tokenizer());
    if (in_model.ok()) {
      data->set_tokenizer(in_model->string());
    } else if (in_data.ok()) {
      data->set_tokenizer(in_data->string());
    } else {
      problems.push_back(absl::StrCat(
          "data.tokenizer: path '", data->tokenizer(),
          "' is outside the model root and the data root"));
    }
  }
  if (spec->output_dir().empty()) spec->set_output_dir(std::string(default_output));
  absl::StatusOr<fs::path> output =
      ResolveOutput(tenant, "output_dir", spec->output_dir());
  if (output.ok()) {
    spec->set_output_dir(output->string());
  } else {
    problems.emplace_back(output.status().message());
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
}

}  // namespace sheaf::coordinator
