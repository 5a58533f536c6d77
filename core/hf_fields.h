// Tables of the fields of Hugging Face JSON files (config.json,
// adapter_config.json) and what sheaf does with each, so that a new field
// is a decision, never an accident (docs/hf.md lists them for users).
//
//   kFieldRead       parsed by sheaf (its parser gives the meaning and the
//                    checks)
//   kFieldHarmless   does not change the computation sheaf does (metadata,
//                    generation defaults, caches); accepted and ignored
//   kFieldDefaultOnly
//                    changes the computation and is not implemented: accepted
//                    only at the value that means "off" (`is_default`), any
//                    other value is refused naming the field and `why`
//   kFieldRefused    any value is refused (present at all = not supported)
//
// A field that is in no table is refused naming it: sheaf cannot know
// whether it changes the computation.
#ifndef SHEAF_CORE_HF_FIELDS_H_
#define SHEAF_CORE_HF_FIELDS_H_

#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "core/json.h"

namespace sheaf {

enum class FieldUse { kFieldRead, kFieldHarmless, kFieldDefaultOnly, kFieldRefused };

struct FieldRule {
  const char* name;
  FieldUse use;
  // kFieldDefaultOnly: true for the values that leave the computation as
  // sheaf does it (null always counts as the default).
  bool (*is_default)(const Json& value) = nullptr;
  // Why it is refused (kFieldDefaultOnly / kFieldRefused), shown to users.
  const char* why = "";
};

// Default-value predicates for the tables.
bool IsFalse(const Json& v);         // false
bool IsZero(const Json& v);          // 0 or 0.0
bool IsOne(const Json& v);           // 1
bool IsEmptyContainer(const Json& v);  // {} or []
bool IsNoneString(const Json& v);    // "none"

// Checks every member of `object` against `table`; `source` (a file name)
// and the field name start every error. InvalidArgument for an unknown
// field, a kFieldRefused field, or a kFieldDefaultOnly field off its default.
absl::Status CheckFields(const Json& object, std::span<const FieldRule> table,
                         std::string_view source);

const char* FieldUseName(FieldUse use);

}  // namespace sheaf

#endif  // SHEAF_CORE_HF_FIELDS_H_
