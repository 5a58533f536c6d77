#include "core/spec/job_kind.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"

namespace sheaf {
namespace {

const google::protobuf::OneofDescriptor* KindOneof() {
  return proto::JobSpec::descriptor()->FindOneofByName("kind");
}

}  // namespace

JobKindRegistry& JobKindRegistry::Global() {
  // Never destroyed: registrations and lookups may happen during static
  // initialisation and destruction of other objects.
  static JobKindRegistry* registry = new JobKindRegistry;
  return *registry;
}

absl::Status JobKindRegistry::Register(JobKind kind) {
  const google::protobuf::FieldDescriptor* field =
      proto::JobSpec::descriptor()->FindFieldByName(kind.name);
  if (field == nullptr || field->containing_oneof() != KindOneof()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job kind ", kind.name, " is not a member of JobSpec's kind oneof"));
  }
  const std::string name = kind.name;
  if (!kinds_.emplace(name, std::move(kind)).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("job kind ", name, " is registered twice"));
  }
  return absl::OkStatus();
}

const JobKind* JobKindRegistry::Find(std::string_view name) const {
  auto it = kinds_.find(name);
  return it == kinds_.end() ? nullptr : &it->second;
}

const JobKind* JobKindRegistry::KindOf(const proto::JobSpec& spec) const {
  const std::string name = SelectedKindName(spec);
  return name.empty() ? nullptr : Find(name);
}

std::vector<std::string> JobKindRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, kind] : kinds_) names.push_back(name);
  return names;
}

std::string SelectedKindName(const proto::JobSpec& spec) {
  const google::protobuf::FieldDescriptor* field =
      spec.GetReflection()->GetOneofFieldDescriptor(spec, KindOneof());
  return field == nullptr ? "" : field->name();
}

std::vector<std::string> JobKindNames() {
  std::vector<std::string> names;
  const google::protobuf::OneofDescriptor* oneof = KindOneof();
  for (int i = 0; i < oneof->field_count(); ++i) {
    names.push_back(oneof->field(i)->name());
  }
  return names;
}

JobKindRegistration::JobKindRegistration(JobKind kind) {
  const absl::Status status = JobKindRegistry::Global().Register(std::move(kind));
  if (!status.ok()) {
    std::fprintf(stderr, "sheaf: %s\n", std::string(status.message()).c_str());
    std::abort();
  }
}

}  // namespace sheaf
