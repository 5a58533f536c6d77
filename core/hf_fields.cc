#include "core/hf_fields.h"

#include "absl/strings/str_cat.h"

namespace sheaf {

bool IsFalse(const Json& v) { return v.is_bool() && !v.as_bool(); }
bool IsZero(const Json& v) { return v.is_number() && v.as_double() == 0.0; }
bool IsOne(const Json& v) { return v.is_number() && v.as_double() == 1.0; }
bool IsEmptyContainer(const Json& v) { return (v.is_object() || v.is_array()) && v.empty(); }
bool IsNoneString(const Json& v) { return v.is_string() && v.as_string() == "none"; }

const char* FieldUseName(FieldUse use) {
  switch (use) {
    case FieldUse::kFieldRead: return "read";
    case FieldUse::kFieldHarmless: return "harmless";
    case FieldUse::kFieldDefaultOnly: return "default only";
    case FieldUse::kFieldRefused: return "refused";
  }
  return "?";
}

absl::Status CheckFields(const Json& object, std::span<const FieldRule> table,
                         std::string_view source) {
  if (!object.is_object()) return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": not a JSON object"));
  for (const Json::Member& m : object.items()) {
    const FieldRule* rule = nullptr;
    for (const FieldRule& r : table) {
      if (m.first == r.name) rule = &r;
    }
    if (rule == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(source), ": ", m.first,
          ": unknown field (sheaf cannot tell whether it changes the computation; "
          "see docs/hf.md for the fields it reads and refuses)"));
    }
    switch (rule->use) {
      case FieldUse::kFieldRead:
      case FieldUse::kFieldHarmless:
        break;
      case FieldUse::kFieldDefaultOnly:
        if (!m.second.is_null() && !rule->is_default(m.second)) {
          return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": ", m.first, ": ",
                                                         m.second.Dump(), " is not supported (",
                                                         rule->why, ")"));
        }
        break;
      case FieldUse::kFieldRefused:
        return absl::InvalidArgumentError(
            absl::StrCat(std::string(source), ": ", m.first, ": is not supported (", rule->why, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace sheaf
