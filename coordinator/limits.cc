#include "coordinator/limits.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"

namespace sheaf::coordinator {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Keeps the report short when a message is wrong everywhere.
constexpr size_t kMaxProblems = 20;

std::string Join(absl::string_view prefix, absl::string_view name) {
  return prefix.empty() ? std::string(name) : absl::StrCat(prefix, ".", name);
}

void CheckStringValue(const std::string& field, const std::string& value,
                      size_t max_bytes, std::vector<std::string>* problems) {
  absl::Status status = CheckString(field, value, max_bytes);
  if (!status.ok()) problems->emplace_back(status.message());
}

void Walk(const Message& message, const std::string& path,
          const RequestLimits& limits, std::vector<std::string>* problems) {
  if (problems->size() >= kMaxProblems) return;
  const Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown =
      reflection->GetUnknownFields(message);
  for (int i = 0; i < unknown.field_count(); ++i) {
    problems->push_back(absl::StrCat(
        path.empty() ? "spec" : path, ": unknown field number ",
        unknown.field(i).number(),
        " (a job kind or setting this coordinator does not know; is the "
        "client newer than the coordinator?)"));
  }
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const std::string name = Join(path, field->name());
    if (field->is_repeated()) {
      const int n = reflection->FieldSize(message, field);
      if (n > limits.max_repeated) {
        problems->push_back(absl::StrCat(name, ": ", n, " entries, at most ",
                                         limits.max_repeated, " allowed"));
        continue;
      }
      for (int i = 0; i < n; ++i) {
        const std::string item = absl::StrCat(name, "[", i, "]");
        if (field->type() == FieldDescriptor::TYPE_STRING) {
          CheckStringValue(item, reflection->GetRepeatedString(message, field, i),
                           limits.max_string_bytes, problems);
        } else if (field->type() == FieldDescriptor::TYPE_BYTES) {
          const std::string value =
              reflection->GetRepeatedString(message, field, i);
          if (value.size() > limits.max_string_bytes) {
            problems->push_back(absl::StrCat(item, ": ", value.size(),
                                             " bytes, at most ",
                                             limits.max_string_bytes));
          }
        } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          Walk(reflection->GetRepeatedMessage(message, field, i), item, limits,
               problems);
        }
      }
    } else if (field->type() == FieldDescriptor::TYPE_STRING) {
      CheckStringValue(name, reflection->GetString(message, field),
                       limits.max_string_bytes, problems);
    } else if (field->type() == FieldDescriptor::TYPE_BYTES) {
      const std::string value = reflection->GetString(message, field);
      if (value.size() > limits.max_string_bytes) {
        problems->push_back(absl::StrCat(name, ": ", value.size(),
                                         " bytes, at most ",
                                         limits.max_string_bytes));
      }
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      Walk(reflection->GetMessage(message, field), name, limits, problems);
    }
  }
}

}  // namespace

bool IsValidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int extra = 0;
    uint32_t code = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
      code = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      code = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      code = c & 0x07;
    } else {
      return false;  // Continuation byte, overlong lead (C0, C1) or > F4.
    }
    if (end - p <= extra) return false;
    for (int i = 1; i <= extra; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      code = (code << 6) | (p[i] & 0x3F);
    }
    if ((extra == 2 && code < 0x800) || (extra == 3 && code < 0x10000) ||
        code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    p += extra + 1;
  }
  return true;
}

absl::Status CheckString(absl::string_view field, absl::string_view value,
                         size_t max_bytes) {
  if (value.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", value.size(), " bytes, at most ", max_bytes, " allowed"));
  }
  if (!IsValidUtf8(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": not valid UTF-8"));
  }
  if (value.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": holds a NUL byte"));
  }
  return absl::OkStatus();
}

absl::Status CheckMessageLimits(const Message& message, absl::string_view root,
                                const RequestLimits& limits) {
  const size_t bytes = message.ByteSizeLong();
  if (bytes > limits.max_spec_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        root.empty() ? "spec" : root, ": ", bytes, " bytes serialized, at most ", limits.max_spec_bytes,
        " allowed"));
  }
  std::vector<std::string> problems;
  Walk(message, std::string(root), limits, &problems);
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
}

}  // namespace sheaf::coordinator
