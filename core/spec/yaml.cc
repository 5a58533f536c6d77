#include "core/spec/yaml.h"

#include "absl/strings/match.h"
#include "base/file.h"
#include "base/utf8.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/spec/suggest.h"
#include "core/status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace sheaf {
namespace {

using ::google::protobuf::Descriptor;
using ::google::protobuf::EnumDescriptor;
using ::google::protobuf::EnumValueDescriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::OneofDescriptor;
using ::google::protobuf::Reflection;

// Where the nodes being applied came from, so that errors point there.
struct Origin {
  // Starts every message: "job.yaml:", "override 'a.b=1':" or "".
  std::string prefix;
  // Node marks are positions in the text the user wrote (not in an
  // override's value), worth printing as line:column.
  bool has_marks = true;
};

absl::Status NodeError(const Origin& origin, const YAML::Mark& mark,
                       const std::string& path, const std::string& reason) {
  std::string message = origin.prefix;
  if (origin.has_marks && mark.line >= 0) {
    absl::StrAppend(&message, mark.line + 1, ":", mark.column + 1, ":");
  }
  if (!message.empty()) message += " ";
  if (!path.empty()) absl::StrAppend(&message, path, ": ");
  message += reason;
  return absl::InvalidArgumentError(message);
}

std::string JoinPath(const std::string& parent, const std::string& name) {
  return parent.empty() ? name : absl::StrCat(parent, ".", name);
}

std::string IndexPath(const std::string& path, size_t index) {
  return absl::StrCat(path, "[", index, "]");
}

// How a node looks to the user, for "got ..." in errors.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar: {
      std::string text = node.Scalar();
      if (text.size() > 60) text = absl::StrCat(text.substr(0, 57), "...");
      return absl::StrCat("\"", absl::CEscape(text), "\"");
    }
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "nothing";
  }
}

// "Format" -> "FORMAT_": the prefix that, by the house convention, every
// value name of the enum carries.
std::string EnumValuePrefix(const EnumDescriptor* e) {
  std::string prefix;
  const std::string& name = e->name();
  for (size_t i = 0; i < name.size(); ++i) {
    if (i > 0 && absl::ascii_isupper(static_cast<unsigned char>(name[i]))) {
      prefix += '_';
    }
    prefix += absl::ascii_toupper(static_cast<unsigned char>(name[i]));
  }
  return prefix + "_";
}

// FORMAT_TEXT_PARAGRAPHS -> "text_paragraphs".
std::string EnumYamlName(const EnumValueDescriptor* value) {
  std::string name = value->name();
  const std::string prefix = EnumValuePrefix(value->type());
  if (name.size() > prefix.size() &&
      name.compare(0, prefix.size(), prefix) == 0) {
    name = name.substr(prefix.size());
  }
  return absl::AsciiStrToLower(name);
}

// The names a user may write; the zero value means "unset" and is not one.
std::vector<std::string> EnumChoices(const EnumDescriptor* e) {
  std::vector<std::string> choices;
  for (int i = 0; i < e->value_count(); ++i) {
    if (e->value(i)->number() != 0) {
      choices.push_back(EnumYamlName(e->value(i)));
    }
  }
  return choices;
}

std::string Expected(const FieldDescriptor* field) {
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_INT64:
      return "an integer";
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_UINT64:
      return "a non-negative integer";
    case FieldDescriptor::CPPTYPE_FLOAT:
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return "a number";
    case FieldDescriptor::CPPTYPE_BOOL:
      return "true or false";
    case FieldDescriptor::CPPTYPE_STRING:
      return "a string";
    case FieldDescriptor::CPPTYPE_ENUM:
      return absl::StrCat("one of ",
                          absl::StrJoin(EnumChoices(field->enum_type()), ", "));
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return "a mapping of keys";
  }
  return "a value";
}

// An optional sign and digits: an integer, if perhaps too large for a field.
bool LooksIntegral(const std::string& text) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
    digits.remove_prefix(1);
  }
  if (digits.empty()) return false;
  for (char c : digits) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// Why `name` is not a key of `d` (at `path`), with a hint where one helps.
std::string UnknownKeyReason(const Descriptor* d, const std::string& name,
                             const std::string& path) {
  std::vector<std::string> names;
  for (int i = 0; i < d->field_count(); ++i) {
    names.push_back(d->field(i)->name());
  }
  const std::string close = ClosestMatch(name, names);
  if (!close.empty()) {
    return absl::StrCat("unknown key (did you mean ", close, "?)");
  }
  // The right key in the wrong section: `lr:` at the top level means
  // optimizer.lr, `warmup:` schedule.warmup_steps. Breadth first, so that
  // among equals the shallowest key is named.
  std::vector<std::string> nested_names;
  std::vector<std::string> nested_paths;
  std::deque<std::pair<const Descriptor*, std::string>> queue = {{d, path}};
  std::set<const Descriptor*> visited = {d};
  while (!queue.empty()) {
    auto [message, prefix] = queue.front();
    queue.pop_front();
    for (int i = 0; i < message->field_count(); ++i) {
      const FieldDescriptor* field = message->field(i);
      if (message != d) {
        if (field->name() == name) {
          return absl::StrCat("unknown key (did you mean ",
                              JoinPath(prefix, name), "?)");
        }
        nested_names.push_back(field->name());
        nested_paths.push_back(JoinPath(prefix, field->name()));
      }
      const Descriptor* sub = field->message_type();
      if (sub != nullptr && visited.insert(sub).second) {
        queue.emplace_back(sub, JoinPath(prefix, field->name()));
      }
    }
  }
  const std::string nested = ClosestMatch(name, nested_names);
  for (size_t i = 0; !nested.empty() && i < nested_names.size(); ++i) {
    if (nested_names[i] == nested) {
      return absl::StrCat("unknown key (did you mean ", nested_paths[i], "?)");
    }
  }
  return absl::StrCat("unknown key (known keys: ", absl::StrJoin(names, ", "),
                      ")");
}

// Giving a member of a oneof selects it; giving a second member is an error
// rather than a silent switch.
absl::Status SelectOneof(const Origin& origin, const YAML::Mark& mark,
                         const Message& message, const FieldDescriptor* field,
                         const std::string& path) {
  const OneofDescriptor* oneof = field->real_containing_oneof();
  if (oneof == nullptr) return absl::OkStatus();
  const FieldDescriptor* current =
      message.GetReflection()->GetOneofFieldDescriptor(message, oneof);
  if (current == nullptr || current == field) return absl::OkStatus();
  std::vector<std::string> names;
  for (int i = 0; i < oneof->field_count(); ++i) {
    names.push_back(oneof->field(i)->name());
  }
  return NodeError(
      origin, mark, path,
      absl::StrCat("only one of ", absl::StrJoin(names, ", "),
                   " may be given, but ", current->name(), " is given too"));
}

// Sets (or, for a repeated field, appends) one scalar value.
absl::Status SetScalar(const Origin& origin, const YAML::Node& node,
                       Message* message, const FieldDescriptor* field,
                       const std::string& path) {
  const Reflection* r = message->GetReflection();
  const bool repeated = field->is_repeated();
  auto type_error = [&] {
    return NodeError(
        origin, node.Mark(), path,
        absl::StrCat("expected ", Expected(field), ", got ", Describe(node)));
  };
  auto range_error = [&](const char* what) {
    return NodeError(
        origin, node.Mark(), path,
        absl::StrCat("out of range for ", what, ", got ", Describe(node)));
  };
  if (!node.IsScalar()) return type_error();
  const std::string& text = node.Scalar();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) {
        return LooksIntegral(text) ? range_error("a 32-bit integer")
                                   : type_error();
      }
      if (v < std::numeric_limits<int32_t>::min() ||
          v > std::numeric_limits<int32_t>::max()) {
        return range_error("a 32-bit integer");
      }
      const auto v32 = static_cast<int32_t>(v);
      repeated ? r->AddInt32(message, field, v32)
               : r->SetInt32(message, field, v32);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) {
        return LooksIntegral(text) ? range_error("a 64-bit integer")
                                   : type_error();
      }
      repeated ? r->AddInt64(message, field, v)
               : r->SetInt64(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint64_t v;
      if (!absl::SimpleAtoi(text, &v)) {
        return LooksIntegral(text) && text.find('-') == std::string::npos
                   ? range_error("a 32-bit integer")
                   : type_error();
      }
      if (v > std::numeric_limits<uint32_t>::max()) {
        return range_error("a 32-bit integer");
      }
      const auto v32 = static_cast<uint32_t>(v);
      repeated ? r->AddUInt32(message, field, v32)
               : r->SetUInt32(message, field, v32);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(text, &v)) {
        return LooksIntegral(text) && text.find('-') == std::string::npos
                   ? range_error("a 64-bit integer")
                   : type_error();
      }
      repeated ? r->AddUInt64(message, field, v)
               : r->SetUInt64(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      double v;
      if (!absl::SimpleAtod(text, &v)) return type_error();
      if (!std::isfinite(v)) {
        return NodeError(
            origin, node.Mark(), path,
            absl::StrCat("expected a finite number, got ", Describe(node)));
      }
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        repeated ? r->AddDouble(message, field, v)
                 : r->SetDouble(message, field, v);
        return absl::OkStatus();
      }
      if (std::fabs(v) > std::numeric_limits<float>::max()) {
        return range_error("a 32-bit float");
      }
      const auto f = static_cast<float>(v);
      repeated ? r->AddFloat(message, field, f)
               : r->SetFloat(message, field, f);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      // YAML 1.1's spellings too, which people still write.
      const std::string lower = absl::AsciiStrToLower(text);
      bool v;
      if (lower == "true" || lower == "yes" || lower == "on") {
        v = true;
      } else if (lower == "false" || lower == "no" || lower == "off") {
        v = false;
      } else {
        return type_error();
      }
      repeated ? r->AddBool(message, field, v) : r->SetBool(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_STRING:
      repeated ? r->AddString(message, field, text)
               : r->SetString(message, field, text);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      const std::string lower = absl::AsciiStrToLower(text);
      const EnumDescriptor* e = field->enum_type();
      for (int i = 0; i < e->value_count(); ++i) {
        const EnumValueDescriptor* value = e->value(i);
        if (lower == EnumYamlName(value) ||
            lower == absl::AsciiStrToLower(value->name())) {
          repeated ? r->AddEnumValue(message, field, value->number())
                   : r->SetEnumValue(message, field, value->number());
          return absl::OkStatus();
        }
      }
      return type_error();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return type_error();
}

absl::Status MergeMessage(const Origin& origin, const YAML::Node& node,
                          Message* message, const std::string& path);

absl::Status AddElement(const Origin& origin, const YAML::Node& node,
                        Message* message, const FieldDescriptor* field,
                        const std::string& path) {
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    return MergeMessage(origin, node,
                        message->GetReflection()->AddMessage(message, field),
                        path);
  }
  return SetScalar(origin, node, message, field, path);
}

// Applies `value` (the YAML under key `path`) to `field` of `message`.
absl::Status MergeField(const Origin& origin, const YAML::Node& value,
                        const YAML::Mark& key_mark, Message* message,
                        const FieldDescriptor* field, const std::string& path) {
  RETURN_IF_ERROR(SelectOneof(origin, key_mark, *message, field, path));
  const Reflection* r = message->GetReflection();
  if (field->is_map()) {
    // No map<> field in job_spec.proto; add a case here with the first one.
    return NodeError(origin, key_mark, path, "map fields are not supported");
  }
  if (field->is_repeated()) {
    // A list replaces what was there: an override `targets=[q_proj]` means
    // exactly q_proj, not the file's list plus q_proj.
    r->ClearField(message, field);
    if (value.IsNull()) return absl::OkStatus();
    if (value.IsSequence()) {
      size_t index = 0;
      for (const YAML::Node& item : value) {
        RETURN_IF_ERROR(
            AddElement(origin, item, message, field, IndexPath(path, index)));
        ++index;
      }
      return absl::OkStatus();
    }
    if (value.IsScalar() &&
        field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
      return AddElement(origin, value, message, field, path);
    }
    return NodeError(origin, value.Mark(), path,
                     absl::StrCat("expected a list, got ", Describe(value)));
  }
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    // Even an empty section sets the message: `lora:` selects the kind.
    return MergeMessage(origin, value, r->MutableMessage(message, field), path);
  }
  if (value.IsNull()) {
    r->ClearField(message, field);
    return absl::OkStatus();
  }
  return SetScalar(origin, value, message, field, path);
}

absl::Status MergeMessage(const Origin& origin, const YAML::Node& node,
                          Message* message, const std::string& path) {
  if (node.IsNull()) return absl::OkStatus();
  if (!node.IsMap()) {
    return NodeError(
        origin, node.Mark(), path,
        absl::StrCat("expected a mapping of keys, got ", Describe(node)));
  }
  const Descriptor* d = message->GetDescriptor();
  std::set<std::string> seen;
  for (const auto& entry : node) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) {
      return NodeError(
          origin, key.Mark(), path,
          absl::StrCat("expected a key name, got ", Describe(key)));
    }
    const std::string& name = key.Scalar();
    const std::string key_path = JoinPath(path, name);
    if (!seen.insert(name).second) {
      return NodeError(origin, key.Mark(), key_path, "key given twice");
    }
    const FieldDescriptor* field = d->FindFieldByName(name);
    if (field == nullptr) {
      return NodeError(origin, key.Mark(), key_path,
                       UnknownKeyReason(d, name, path));
    }
    RETURN_IF_ERROR(
        MergeField(origin, entry.second, key.Mark(), message, field, key_path));
  }
  return absl::OkStatus();
}

// Applies one `key.path=value` override.
absl::Status ApplyOverride(const std::string& text, proto::JobSpec* spec) {
  const Origin origin{absl::StrCat("override '", text, "':"),
                      /*has_marks=*/false};
  const YAML::Mark no_mark = YAML::Mark::null_mark();
  const size_t equals = text.find('=');
  std::vector<std::string> parts;
  if (equals != std::string::npos) {
    parts =
        absl::StrSplit(absl::StripAsciiWhitespace(text.substr(0, equals)), '.');
  }
  if (parts.empty() ||
      std::any_of(parts.begin(), parts.end(),
                  [](const std::string& part) { return part.empty(); })) {
    return NodeError(origin, no_mark, "", "expected key.path=value");
  }
  const std::string key = absl::StrJoin(parts, ".");
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(equals + 1));
  } catch (const YAML::Exception& e) {
    return NodeError(origin, no_mark, key,
                     absl::StrCat("malformed value: ", e.msg));
  }
  Message* message = spec;
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Descriptor* d = message->GetDescriptor();
    const FieldDescriptor* field = d->FindFieldByName(parts[i]);
    const std::string field_path = JoinPath(path, parts[i]);
    if (field == nullptr) {
      return NodeError(origin, no_mark, field_path,
                       UnknownKeyReason(d, parts[i], path));
    }
    if (i + 1 == parts.size()) {
      return MergeField(origin, value, no_mark, message, field, field_path);
    }
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE ||
        field->is_repeated()) {
      return NodeError(
          origin, no_mark, field_path,
          absl::StrCat("is ", field->is_repeated() ? "a list of " : "",
                       Expected(field), ", not a section with key ",
                       parts[i + 1]));
    }
    RETURN_IF_ERROR(SelectOneof(origin, no_mark, *message, field, field_path));
    message = message->GetReflection()->MutableMessage(message, field);
    path = field_path;
  }
  return absl::OkStatus();  // Not reached: parts is not empty.
}

// Where each document of a YAML stream starts (events are otherwise ignored).
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// The documents of `yaml`, without YAML::LoadAll: yaml-cpp 0.7's LoadAll
// never returns on a stream whose next token starts no node (a document of
// just "," -- yaml-cpp issue 1040): each call yields a null document without
// consuming the token, and memory grows until the process dies (found by
// fuzz/spec_fuzz). Here a document that starts where the previous one did is
// a parse error at that token.
absl::StatusOr<std::vector<YAML::Node>> LoadDocuments(const Origin& origin,
                                                      const std::string& yaml) {
  {
    std::istringstream stream(yaml);
    YAML::Parser parser(stream);
    DocumentStarts handler;
    while (parser.HandleNextDocument(handler)) {
      const std::vector<YAML::Mark>& s = handler.starts;
      if (s.size() >= 2 && s[s.size() - 1].pos == s[s.size() - 2].pos) {
        const YAML::Mark& at = s.back();
        const std::string token =
            at.pos >= 0 && static_cast<size_t>(at.pos) < yaml.size()
                ? absl::CEscape(yaml.substr(static_cast<size_t>(at.pos), 1))
                : std::string("end of input");
        return NodeError(origin, at, "",
                         absl::StrCat("malformed YAML: unexpected '", token, "'"));
      }
    }
    if (handler.starts.size() > 1) {
      return NodeError(origin, handler.starts[1], "",
                       absl::StrCat("expected one YAML document, got ",
                                    handler.starts.size()));
    }
    if (handler.starts.empty()) return std::vector<YAML::Node>{};
  }
  return std::vector<YAML::Node>{YAML::Load(yaml)};
}

// `source_prefix` starts errors found in the YAML text ("job.yaml:" or "").
absl::StatusOr<proto::JobSpec> Parse(const std::string& yaml,
                                     const std::vector<std::string>& overrides,
                                     const std::string& source_prefix) {
  const Origin origin{source_prefix, /*has_marks=*/true};
  // Proto string fields must hold UTF-8 (fuzz finding: bytes such as 0xb3
  // inside a scalar parsed, then came back from JobSpecToYaml as U+FFFD).
  if (const size_t bad = FindInvalidUtf8(yaml); bad != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        source_prefix.empty() ? "spec:" : source_prefix, " not valid UTF-8 (byte ", bad,
        "); a spec is UTF-8 text"));
  }
  // Control characters are not YAML text (YAML 1.2 c-printable: tab, LF,
  // CR, and no other C0, DEL or C1 character); fuzz finding: a NUL inside a
  // list item came back from JobSpecToYaml as a different string.
  auto find_control = [](const std::string& t) -> size_t {
    for (size_t i = 0; i < t.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(t[i]);
      if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) return i;
      if (c == 0xc2 && i + 1 < t.size()) {
        const unsigned char d = static_cast<unsigned char>(t[i + 1]);
        if (d >= 0x80 && d <= 0x9f && d != 0x85) return i;
      }
    }
    return std::string::npos;
  };
  if (const size_t bad = find_control(yaml); bad != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        source_prefix.empty() ? "spec:" : source_prefix, " control character 0x",
        absl::Hex(static_cast<unsigned char>(yaml[bad]), absl::kZeroPad2), " at byte ", bad,
        "; a spec is text"));
  }
  for (const std::string& override_text : overrides) {
    if (const size_t bad = FindInvalidUtf8(override_text); bad != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("override: not valid UTF-8 (byte ", bad,
                                                     "); a spec is UTF-8 text"));
    }
    if (const size_t bad = find_control(override_text); bad != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("override '", override_text.substr(0, bad),
                                                     "...': control character at byte ", bad));
    }
  }
  // YAML line breaks are CR LF, CR or LF (YAML 1.2, b-break); yaml-cpp
  // misreads a lone CR (fuzz finding: "key: value   \r  # comment" kept the
  // trailing blanks in the value, which then did not survive the round
  // trip). Both become LF here, so line numbers in errors count them too.
  std::string text;
  text.reserve(yaml.size());
  for (size_t i = 0; i < yaml.size(); ++i) {
    if (yaml[i] != '\r') {
      text.push_back(yaml[i]);
    } else if (i + 1 >= yaml.size() || yaml[i + 1] != '\n') {
      text.push_back('\n');
    }
  }
  proto::JobSpec spec;
  try {
    ASSIGN_OR_RETURN(std::vector<YAML::Node> documents, LoadDocuments(origin, text));
    if (!documents.empty()) {
      RETURN_IF_ERROR(MergeMessage(origin, documents[0], &spec, ""));
    }
  } catch (const YAML::Exception& e) {
    // ParserException and friends; the mark is where the scanner stopped.
    return NodeError(origin, e.mark, "",
                     absl::StrCat("malformed YAML: ", e.msg));
  }
  for (const std::string& override_text : overrides) {
    try {
      RETURN_IF_ERROR(ApplyOverride(override_text, &spec));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "override '", override_text, "': malformed value: ", e.msg));
    }
  }
  const OneofDescriptor* kind =
      proto::JobSpec::descriptor()->FindOneofByName("kind");
  if (!spec.GetReflection()->HasOneof(spec, kind)) {
    std::vector<std::string> names;
    for (int i = 0; i < kind->field_count(); ++i) {
      names.push_back(kind->field(i)->name());
    }
    return absl::InvalidArgumentError(
        absl::StrCat(source_prefix.empty() ? "" : source_prefix + " ",
                     "no job kind given: add one top-level section, one of ",
                     absl::StrJoin(names, ", ")));
  }
  return spec;
}

// Shortest text that reads back to the same value, in %g style (0.0003,
// not 3e-04).
template <typename T>
std::string FormatFloat(T value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value,
                                    std::chars_format::general);
  return std::string(buffer, result.ptr);
}

// `index` < 0 for a singular field.
void EmitScalar(YAML::Emitter& out, const Message& message,
                const FieldDescriptor* field, int index) {
  const Reflection* r = message.GetReflection();
  const bool repeated = index >= 0;
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      out << absl::StrCat(repeated ? r->GetRepeatedInt32(message, field, index)
                                   : r->GetInt32(message, field));
      return;
    case FieldDescriptor::CPPTYPE_INT64:
      out << absl::StrCat(repeated ? r->GetRepeatedInt64(message, field, index)
                                   : r->GetInt64(message, field));
      return;
    case FieldDescriptor::CPPTYPE_UINT32:
      out << absl::StrCat(repeated ? r->GetRepeatedUInt32(message, field, index)
                                   : r->GetUInt32(message, field));
      return;
    case FieldDescriptor::CPPTYPE_UINT64:
      out << absl::StrCat(repeated ? r->GetRepeatedUInt64(message, field, index)
                                   : r->GetUInt64(message, field));
      return;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      out << FormatFloat(repeated ? r->GetRepeatedDouble(message, field, index)
                                  : r->GetDouble(message, field));
      return;
    case FieldDescriptor::CPPTYPE_FLOAT:
      out << FormatFloat(repeated ? r->GetRepeatedFloat(message, field, index)
                                  : r->GetFloat(message, field));
      return;
    case FieldDescriptor::CPPTYPE_BOOL:
      out << ((repeated ? r->GetRepeatedBool(message, field, index)
                        : r->GetBool(message, field))
                  ? "true"
                  : "false");
      return;
    case FieldDescriptor::CPPTYPE_STRING:
      // The emitter quotes whatever would not read back as the same string.
      out << (repeated ? r->GetRepeatedString(message, field, index)
                       : r->GetString(message, field));
      return;
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int number = repeated
                             ? r->GetRepeatedEnumValue(message, field, index)
                             : r->GetEnumValue(message, field);
      const EnumValueDescriptor* value =
          field->enum_type()->FindValueByNumber(number);
      // A number this build does not know can only be written as a number,
      // which does not read back; Validate rejects such specs.
      out << (value != nullptr ? EnumYamlName(value) : absl::StrCat(number));
      return;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return;
  }
}

void EmitMessage(YAML::Emitter& out, const Message& message) {
  const Descriptor* d = message.GetDescriptor();
  const Reflection* r = message.GetReflection();
  out << YAML::BeginMap;
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* field = d->field(i);
    const bool is_message =
        field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE;
    if (field->is_repeated()) {
      out << YAML::Key << field->name() << YAML::Value;
      const int size = r->FieldSize(message, field);
      if (is_message) {
        out << YAML::BeginSeq;
        for (int j = 0; j < size; ++j) {
          EmitMessage(out, r->GetRepeatedMessage(message, field, j));
        }
      } else {
        out << YAML::Flow << YAML::BeginSeq;
        for (int j = 0; j < size; ++j) EmitScalar(out, message, field, j);
      }
      out << YAML::EndSeq;
      continue;
    }
    if (field->has_presence() && !r->HasField(message, field)) continue;
    if (!field->has_presence() &&
        field->cpp_type() == FieldDescriptor::CPPTYPE_ENUM &&
        r->GetEnumValue(message, field) == 0) {
      continue;  // The unset value has no YAML name.
    }
    out << YAML::Key << field->name() << YAML::Value;
    if (is_message) {
      EmitMessage(out, r->GetMessage(message, field));
    } else {
      EmitScalar(out, message, field, -1);
    }
  }
  out << YAML::EndMap;
}

}  // namespace

absl::StatusOr<proto::JobSpec> ParseJobSpecYaml(
    std::string_view yaml, const std::vector<std::string>& overrides) {
  return Parse(std::string(yaml), overrides, "");
}

absl::StatusOr<proto::JobSpec> ParseJobSpecFile(
    const std::string& path, const std::vector<std::string>& overrides) {
  // Regular files of at most kMaxSpecFileBytes only: /dev/zero or a FIFO
  // must not hang or exhaust the reader (issue 9, item 10).
  absl::StatusOr<std::string> contents = ReadFileToString(path, kMaxSpecFileBytes);
  if (!contents.ok()) {
    if (absl::IsInvalidArgument(contents.status()) &&
        absl::StrContains(contents.status().message(), "larger than the limit")) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": the spec is larger than the limit of 1 MiB (", kMaxSpecFileBytes,
                       " bytes)"));
    }
    return contents.status();
  }
  return Parse(*contents, overrides, path + ":");  // refuses invalid UTF-8, naming the path
}

std::string JobSpecToYaml(const proto::JobSpec& spec) {
  YAML::Emitter out;
  EmitMessage(out, spec);
  return absl::StrCat(out.c_str(), "\n");
}

}  // namespace sheaf
