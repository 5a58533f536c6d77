#include "base/path_policy.h"

#include <algorithm>
#include <set>
#include <system_error>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using ::google::protobuf::Descriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;

std::string JoinName(const std::string& parent, absl::string_view name) {
  return parent.empty() ? std::string(name) : absl::StrCat(parent, ".", name);
}

// A map entry's key as it appears in a field name (`by_language[de]`).
std::string MapKey(const Message& entry) {
  const FieldDescriptor* key = entry.GetDescriptor()->map_key();
  const Reflection* r = entry.GetReflection();
  switch (key->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      return r->GetString(entry, key);
    case FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(r->GetInt32(entry, key));
    case FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(r->GetInt64(entry, key));
    case FieldDescriptor::CPPTYPE_UINT32:
      return absl::StrCat(r->GetUInt32(entry, key));
    case FieldDescriptor::CPPTYPE_UINT64:
      return absl::StrCat(r->GetUInt64(entry, key));
    case FieldDescriptor::CPPTYPE_BOOL:
      return r->GetBool(entry, key) ? "true" : "false";
    default:
      return "?";  // Not a valid map key type.
  }
}

// One walker for both the mutable and the const case; `M` is Message or
// const Message.
template <typename M>
void Walk(M& message, const std::string& prefix,
          const std::function<void(const PathField&)>& visit) {
  constexpr bool kMutable = !std::is_const_v<M>;
  const Descriptor* d = message.GetDescriptor();
  const Reflection* r = message.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* field = d->field(i);
    const std::string name = JoinName(prefix, field->name());
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      if (!field->options().HasExtension(proto::path)) continue;
      const proto::PathOption& option =
          field->options().GetExtension(proto::path);
      if (field->is_repeated()) {
        for (int j = 0; j < r->FieldSize(message, field); ++j) {
          PathField path{absl::StrCat(name, "[", j, "]"), &option};
          if constexpr (kMutable) {
            std::string value = r->GetRepeatedString(message, field, j);
            path.mutable_value = &value;
            path.value = &value;
            visit(path);
            if (value != r->GetRepeatedString(message, field, j)) {
              r->SetRepeatedString(&message, field, j, value);
            }
          } else {
            std::string scratch;
            path.value = &r->GetRepeatedStringReference(message, field, j,
                                                        &scratch);
            visit(path);
          }
        }
      } else {
        // An unset oneof member or `optional` field holds no path (and must
        // not be set by giving it a default).
        if (field->has_presence() && !r->HasField(message, field)) continue;
        PathField path{name, &option};
        if constexpr (kMutable) {
          std::string value = r->GetString(message, field);
          path.mutable_value = &value;
          path.value = &value;
          visit(path);
          if (value != r->GetString(message, field)) {
            r->SetString(&message, field, value);
          }
        } else {
          std::string scratch;
          path.value = &r->GetStringReference(message, field, &scratch);
          visit(path);
        }
      }
      continue;
    }
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (field->is_map()) {
      const FieldDescriptor* value_field = field->message_type()->map_value();
      if (value_field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
      for (int j = 0; j < r->FieldSize(message, field); ++j) {
        const std::string entry_name =
            absl::StrCat(name, "[", MapKey(r->GetRepeatedMessage(message, field, j)), "]");
        if constexpr (kMutable) {
          Message* entry = r->MutableRepeatedMessage(&message, field, j);
          Walk(*entry->GetReflection()->MutableMessage(entry, value_field),
               entry_name, visit);
        } else {
          const Message& entry = r->GetRepeatedMessage(message, field, j);
          Walk(entry.GetReflection()->GetMessage(entry, value_field),
               entry_name, visit);
        }
      }
    } else if (field->is_repeated()) {
      for (int j = 0; j < r->FieldSize(message, field); ++j) {
        const std::string element = absl::StrCat(name, "[", j, "]");
        if constexpr (kMutable) {
          Walk(*r->MutableRepeatedMessage(&message, field, j), element, visit);
        } else {
          Walk(r->GetRepeatedMessage(message, field, j), element, visit);
        }
      }
    } else if (r->HasField(message, field)) {
      if constexpr (kMutable) {
        Walk(*r->MutableMessage(&message, field), name, visit);
      } else {
        Walk(r->GetMessage(message, field), name, visit);
      }
    }
  }
}

absl::Status CheckAnnotations(const Descriptor* d,
                              std::set<const Descriptor*>& visited) {
  if (!visited.insert(d).second) return absl::OkStatus();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* field = d->field(i);
    if (field->options().HasExtension(proto::path)) {
      const proto::PathOption& option =
          field->options().GetExtension(proto::path);
      if (field->cpp_type() != FieldDescriptor::CPPTYPE_STRING) {
        return absl::InternalError(absl::StrCat(
            field->full_name(), ": the path option needs a string field"));
      }
      if (option.root() == proto::PATH_ROOT_UNSPECIFIED ||
          !proto::PathRoot_IsValid(option.root())) {
        return absl::InternalError(
            absl::StrCat(field->full_name(), ": the path option has no root"));
      }
      if (option.kind() == proto::PATH_KIND_UNSPECIFIED ||
          !proto::PathKind_IsValid(option.kind())) {
        return absl::InternalError(
            absl::StrCat(field->full_name(), ": the path option has no kind"));
      }
    }
    if (field->message_type() != nullptr) {
      absl::Status status = CheckAnnotations(field->message_type(), visited);
      if (!status.ok()) return status;
    }
  }
  return absl::OkStatus();
}

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

void ForEachPathField(Message* message,
                      const std::function<void(const PathField&)>& visit) {
  Walk(*message, "", visit);
}

void ForEachPathField(const Message& message,
                      const std::function<void(const PathField&)>& visit) {
  Walk(message, "", visit);
}

bool NamesAFile(const PathField& field) {
  const std::string& value = *field.value;
  if (value.empty()) return false;
  const auto& not_paths = field.option->not_paths();
  return std::find(not_paths.begin(), not_paths.end(), value) ==
         not_paths.end();
}

absl::Status CheckPathAnnotations(const Descriptor* descriptor) {
  std::set<const Descriptor*> visited;
  return CheckAnnotations(descriptor, visited);
}

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
    // Never the resolved path: it may name what lies outside the root
    // (issue 9, item 2). A path that is inside as written leads out
    // through a symlink.
    const bool through_symlink = IsInside(joined.lexically_normal(), root);
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": path '", path, "' is outside the ", root_name, " ",
        root.string(), through_symlink ? " (through a symlink)" : ""));
  }
  return resolved;
}

bool PathPolicy::LexicallyInside(const fs::path& root, const fs::path& path) {
  return path.is_absolute() && IsInside(path.lexically_normal(), root);
}

bool PathPolicy::SpecPathsLexicallyInside(const Message& spec,
                                          absl::string_view tenant) const {
  bool inside = true;
  ForEachPathField(spec, [&](const PathField& field) {
    if (!NamesAFile(field)) return;
    const fs::path path(*field.value);
    switch (field.option->root()) {
      case proto::PATH_ROOT_OUTPUT:
        inside = inside && LexicallyInside(TenantOutputRoot(tenant), path);
        break;
      case proto::PATH_ROOT_MODEL:
        inside = inside && LexicallyInside(model_root_, path);
        break;
      case proto::PATH_ROOT_DATA:
        inside = inside && LexicallyInside(data_root_, path);
        break;
      case proto::PATH_ROOT_MODEL_OR_DATA:
        inside = inside && (LexicallyInside(model_root_, path) ||
                            LexicallyInside(data_root_, path));
        break;
      default:
        inside = false;
    }
  });
  return inside;
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

void PathPolicy::ResolveField(const PathField& field, absl::string_view tenant,
                              absl::string_view default_output,
                              std::vector<std::string>* problems) const {
  std::string& path = *field.mutable_value;
  absl::StatusOr<fs::path> resolved;
  switch (field.option->root()) {
    case proto::PATH_ROOT_OUTPUT:
      if (path.empty()) path = std::string(default_output);
      resolved = ResolveOutput(tenant, field.name, path);
      break;
    case proto::PATH_ROOT_MODEL:
      if (!NamesAFile(field)) return;  // Required fields: validation's job.
      resolved = ResolveInside(model_root_, "model root", field.name, path);
      break;
    case proto::PATH_ROOT_DATA:
      if (!NamesAFile(field)) return;
      resolved = ResolveInside(data_root_, "data root", field.name, path);
      break;
    case proto::PATH_ROOT_MODEL_OR_DATA: {
      if (!NamesAFile(field)) return;
      resolved = ResolveInside(model_root_, "model root", field.name, path);
      if (!resolved.ok()) {
        resolved = ResolveInside(data_root_, "data root", field.name, path);
      }
      if (!resolved.ok()) {
        resolved = absl::InvalidArgumentError(
            absl::StrCat(field.name, ": path '", path,
                         "' is outside the model root and the data root"));
      }
      break;
    }
    default:
      // CheckPathAnnotations refuses these; never let one through.
      resolved = absl::InternalError(absl::StrCat(
          field.name, ": path field without a root (", field.option->root(),
          ")"));
      break;
  }
  if (resolved.ok()) {
    path = resolved->string();
  } else {
    problems->emplace_back(resolved.status().message());
  }
}

absl::Status PathPolicy::ResolveSpecPaths(
    Message* spec, absl::string_view tenant,
    absl::string_view default_output) const {
  std::vector<std::string> problems;
  ForEachPathField(spec, [&](const PathField& field) {
    ResolveField(field, tenant, default_output, &problems);
  });
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
}

}  // namespace sheaf
