#include "core/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "base/utf8.h"

namespace sheaf {
namespace {

// Debian's absl is built with its own absl::string_view (not an alias of
// std::string_view), so StrCat and the hash map need an explicit bridge.
absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Misusing an accessor is a bug in our code, not in the input, so it aborts
// (absl 20220623 has no CHECK). The message names both types to make the
// crash self-explanatory.
[[noreturn]] void TypeMismatch(const char* accessor, Json::Type want,
                               Json::Type got) {
  std::fprintf(stderr, "sheaf::Json::%s called on %s (needs %s)\n", accessor,
               Json::TypeName(got), Json::TypeName(want));
  std::abort();
}

std::string Printable(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7F) return absl::StrCat("'", std::string(1, c), "'");
  return absl::StrFormat("byte 0x%02X", u);
}

void DumpString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out->append("\\\""); ++i; continue;
      case '\\': out->append("\\\\"); ++i; continue;
      case '\b': out->append("\\b"); ++i; continue;
      case '\f': out->append("\\f"); ++i; continue;
      case '\n': out->append("\\n"); ++i; continue;
      case '\r': out->append("\\r"); ++i; continue;
      case '\t': out->append("\\t"); ++i; continue;
      default: break;
    }
    if (c < 0x20) {
      absl::StrAppendFormat(out, "\\u%04x", c);
      ++i;
      continue;
    }
    const size_t len = Utf8SequenceLength(s, i);
    if (len == 0) {
      out->append("\\ufffd");
      ++i;
      continue;
    }
    out->append(s.substr(i, len));
    i += len;
  }
  out->push_back('"');
}

// Python's repr format, which readers of our logs and configs know: the
// shortest digits that round-trip (std::to_chars), written in fixed notation
// when the decimal exponent is in [-4, 16) and as d.ddde±XX otherwise. Always
// contains '.' or 'e', so the value re-parses as a double, not an integer.
// (Plain shortest to_chars picks by length and gives "3e-04" for 0.0003.)
void DumpNumber(double d, bool from_float, std::string* out) {
  if (!std::isfinite(d)) {
    out->append("null");
    return;
  }
  char buf[64];
  const std::to_chars_result r =
      from_float ? std::to_chars(buf, buf + sizeof(buf), static_cast<float>(d),
                                 std::chars_format::scientific)
                 : std::to_chars(buf, buf + sizeof(buf), d,
                                 std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(r.ptr - buf));
  if (!sci.empty() && sci[0] == '-') {
    out->push_back('-');
    sci.remove_prefix(1);
  }
  const size_t e_pos = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e_pos)) {
    if (c != '.') digits.push_back(c);
  }
  int exponent = 0;
  std::from_chars(sci.data() + e_pos + 1 + (sci[e_pos + 1] == '+'),
                  sci.data() + sci.size(), exponent);
  if (exponent < -4 || exponent >= 16) {
    out->push_back(digits[0]);
    if (digits.size() > 1) {
      out->push_back('.');
      out->append(digits, 1);
    }
    absl::StrAppendFormat(out, "e%c%02d", exponent < 0 ? '-' : '+',
                          exponent < 0 ? -exponent : exponent);
  } else if (exponent >= 0) {
    const size_t int_digits = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= int_digits) {
      out->append(digits);
      out->append(int_digits - digits.size(), '0');
      out->append(".0");
    } else {
      out->append(digits, 0, int_digits);
      out->push_back('.');
      out->append(digits, int_digits);
    }
  } else {
    out->append("0.");
    out->append(static_cast<size_t>(-exponent - 1), '0');
    out->append(digits);
  }
}

void Newline(int indent, int depth, std::string* out) {
  out->push_back('\n');
  out->append(static_cast<size_t>(indent) * static_cast<size_t>(depth), ' ');
}

}  // namespace

// Recursive-descent parser over a string_view. Errors carry the byte offset
// where they were detected; line:column is computed only on failure.
class Json::Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  absl::StatusOr<Json> ParseDocument() {
    Json value;
    SkipWhitespace();
    RETURN_IF_ERROR(ParseValue(&value, 0));
    SkipWhitespace();
    if (pos_ != text_.size()) {
      return Error(absl::StrCat("expected end of input after the JSON value, "
                                "got ", Printable(text_[pos_])));
    }
    return value;
  }

 private:
  absl::Status Error(std::string_view what) const { return ErrorAt(pos_, what); }

  absl::Status ErrorAt(size_t at, std::string_view what) const {
    int line = 1;
    int column = 1;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("JSON parse error at line ", line, ", column ", column,
                     ": ", ToAbsl(what)));
  }

  std::string Got() const {
    return pos_ < text_.size() ? Printable(text_[pos_]) : "end of input";
  }

  void SkipWhitespace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  absl::Status ParseValue(Json* out, int depth) {
    if (pos_ >= text_.size()) return Error("expected a value, got end of input");
    switch (text_[pos_]) {
      case '{': return ParseObject(out, depth + 1);
      case '[': return ParseArray(out, depth + 1);
      case '"':
        out->type_ = Json::Type::kTypeString;
        return ParseString(&out->string_);
      case 't': return ParseLiteral("true", Json(true), out);
      case 'f': return ParseLiteral("false", Json(false), out);
      case 'n': return ParseLiteral("null", Json(), out);
      default: break;
    }
    const char c = text_[pos_];
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
    return Error(absl::StrCat("expected a value, got ", Got()));
  }

  absl::Status ParseLiteral(std::string_view word, Json value, Json* out) {
    if (text_.substr(pos_, word.size()) != word) {
      return Error(absl::StrCat("invalid literal, expected '", ToAbsl(word), "'"));
    }
    pos_ += word.size();
    *out = std::move(value);
    return absl::OkStatus();
  }

  absl::Status CheckDepth(int depth) const {
    if (depth > Json::kMaxDepth) {
      return Error(absl::StrCat("nesting deeper than ", Json::kMaxDepth,
                                " levels"));
    }
    return absl::OkStatus();
  }

  absl::Status ParseArray(Json* out, int depth) {
    RETURN_IF_ERROR(CheckDepth(depth));
    ++pos_;  // '['
    *out = Json::Array();
    SkipWhitespace();
    if (Consume(']')) return absl::OkStatus();
    while (true) {
      SkipWhitespace();
      out->array_.emplace_back();
      RETURN_IF_ERROR(ParseValue(&out->array_.back(), depth));
      SkipWhitespace();
      if (Consume(']')) return absl::OkStatus();
      if (!Consume(',')) {
        return Error(absl::StrCat("expected ',' or ']' in array, got ", Got()));
      }
    }
  }

  absl::Status ParseObject(Json* out, int depth) {
    RETURN_IF_ERROR(CheckDepth(depth));
    ++pos_;  // '{'
    *out = Json::Object();
    SkipWhitespace();
    if (Consume('}')) return absl::OkStatus();
    while (true) {
      SkipWhitespace();
      if (pos_ >= text_.size() || text_[pos_] != '"') {
        return Error(absl::StrCat("expected a string key in object, got ",
                                  Got()));
      }
      const size_t key_pos = pos_;
      std::string key;
      RETURN_IF_ERROR(ParseString(&key));
      if (out->index_.contains(key)) {
        return ErrorAt(key_pos, absl::StrCat("duplicate key \"", key,
                                             "\" in object"));
      }
      SkipWhitespace();
      if (!Consume(':')) {
        return Error(absl::StrCat("expected ':' after object key, got ",
                                  Got()));
      }
      SkipWhitespace();
      Json value;
      RETURN_IF_ERROR(ParseValue(&value, depth));
      out->index_.emplace(key, out->object_.size());
      out->object_.emplace_back(std::move(key), std::move(value));
      SkipWhitespace();
      if (Consume('}')) return absl::OkStatus();
      if (!Consume(',')) {
        return Error(absl::StrCat("expected ',' or '}' in object, got ",
                                  Got()));
      }
    }
  }

  // Reads 4 hex digits at pos_ into *cp.
  absl::Status ParseHex4(uint32_t* cp) {
    if (text_.size() - pos_ < 4) {
      return Error("expected 4 hex digits after \\u, got end of input");
    }
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text_[pos_];
      uint32_t digit;
      if (c >= '0' && c <= '9') {
        digit = static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        digit = static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        digit = static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return Error(absl::StrCat("expected 4 hex digits after \\u, got ",
                                  Printable(c)));
      }
      v = v * 16 + digit;
      ++pos_;
    }
    *cp = v;
    return absl::OkStatus();
  }

  absl::Status ParseString(std::string* out) {
    const size_t start = pos_;
    ++pos_;  // opening quote
    out->clear();
    while (true) {
      if (pos_ >= text_.size()) {
        return ErrorAt(start, "unterminated string");
      }
      const auto c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (c < 0x20) {
        return Error(absl::StrFormat(
            "control character U+%04X in string must be escaped", c));
      }
      if (c == '\\') {
        RETURN_IF_ERROR(ParseEscape(out));
        continue;
      }
      const size_t len = Utf8SequenceLength(text_, pos_);
      if (len == 0) return Error("invalid UTF-8 in string");
      out->append(text_.substr(pos_, len));
      pos_ += len;
    }
  }

  absl::Status ParseEscape(std::string* out) {
    const size_t escape_pos = pos_;
    ++pos_;  // backslash
    if (pos_ >= text_.size()) return ErrorAt(escape_pos, "unterminated string");
    const char e = text_[pos_++];
    switch (e) {
      case '"': out->push_back('"'); return absl::OkStatus();
      case '\\': out->push_back('\\'); return absl::OkStatus();
      case '/': out->push_back('/'); return absl::OkStatus();
      case 'b': out->push_back('\b'); return absl::OkStatus();
      case 'f': out->push_back('\f'); return absl::OkStatus();
      case 'n': out->push_back('\n'); return absl::OkStatus();
      case 'r': out->push_back('\r'); return absl::OkStatus();
      case 't': out->push_back('\t'); return absl::OkStatus();
      case 'u': break;
      default:
        return ErrorAt(escape_pos,
                       absl::StrCat("invalid escape '\\", std::string(1, e),
                                    "' in string"));
    }
    uint32_t cp;
    RETURN_IF_ERROR(ParseHex4(&cp));
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
      return ErrorAt(escape_pos,
                     absl::StrFormat("unpaired low surrogate \\u%04X", cp));
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      // A high surrogate must be followed at once by an escaped low one.
      if (text_.substr(pos_, 2) != "\\u") {
        return ErrorAt(escape_pos, absl::StrFormat(
            "unpaired high surrogate \\u%04X (expected a \\uDC00-\\uDFFF "
            "escape next)", cp));
      }
      pos_ += 2;
      uint32_t low;
      RETURN_IF_ERROR(ParseHex4(&low));
      if (low < 0xDC00 || low > 0xDFFF) {
        return ErrorAt(escape_pos, absl::StrFormat(
            "unpaired high surrogate \\u%04X (followed by \\u%04X, not a low "
            "surrogate)", cp, low));
      }
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    AppendUtf8(cp, out);
    return absl::OkStatus();
  }

  absl::Status ParseNumber(Json* out) {
    const size_t start = pos_;
    const auto digit = [&] {
      return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9';
    };
    Consume('-');
    if (!digit()) {
      return Error(absl::StrCat("expected a digit in number, got ", Got()));
    }
    if (text_[pos_] == '0') {
      ++pos_;
      if (digit()) return Error("leading zeros are not allowed in numbers");
    } else {
      while (digit()) ++pos_;
    }
    bool integral = true;
    if (Consume('.')) {
      integral = false;
      if (!digit()) {
        return Error(absl::StrCat("expected a digit after '.' in number, got ",
                                  Got()));
      }
      while (digit()) ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (!Consume('+')) Consume('-');
      if (!digit()) {
        return Error(absl::StrCat("expected a digit in exponent, got ", Got()));
      }
      while (digit()) ++pos_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    *out = Json();
    out->type_ = Json::Type::kTypeNumber;
    if (integral) {
      int64_t v;
      const auto r = std::from_chars(first, last, v);
      if (r.ec == std::errc() && r.ptr == last) {
        out->SetInt(v);
        return absl::OkStatus();
      }
      // Too big for int64: fall through and keep it as a double.
    }
    double d;
    const auto r = std::from_chars(first, last, d);
    // from_chars reports out_of_range for both overflow and underflow and
    // leaves `d` untouched. Underflow rounds to a signed zero (what strtod and
    // Python do); overflow has no honest double, so it is an error.
    if (r.ec == std::errc::result_out_of_range) {
      const std::string_view literal = text_.substr(start, pos_ - start);
      if (LiteralMagnitudeIsPositive(literal)) {
        return ErrorAt(start, absl::StrCat("number ", ToAbsl(literal),
                                           " is out of double range"));
      }
      d = *first == '-' ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != last) {
      return ErrorAt(start, "invalid number");
    }
    out->double_ = d;
    return absl::OkStatus();
  }

  // For a syntactically valid, non-zero literal: whether |value| >= 1, from
  // its decimal exponent alone. Only called for out-of-range literals, which
  // are far from 1 either way, so this cleanly tells overflow from underflow.
  // (strtod would also tell, but it obeys the C locale's decimal point.)
  static bool LiteralMagnitudeIsPositive(std::string_view lit) {
    size_t i = 0;
    if (lit[i] == '-') ++i;
    int64_t int_digits = 0;      // significant digits before the '.'
    while (i < lit.size() && lit[i] == '0') ++i;
    while (i < lit.size() && lit[i] >= '0' && lit[i] <= '9') {
      ++int_digits;
      ++i;
    }
    int64_t frac_zeros = 0;      // zeros after '.' before the first non-zero
    if (i < lit.size() && lit[i] == '.') {
      ++i;
      while (i < lit.size() && lit[i] == '0') {
        ++frac_zeros;
        ++i;
      }
      while (i < lit.size() && lit[i] >= '0' && lit[i] <= '9') ++i;
    }
    int64_t exponent = 0;
    if (i < lit.size() && (lit[i] == 'e' || lit[i] == 'E')) {
      ++i;
      bool negative = false;
      if (lit[i] == '+' || lit[i] == '-') negative = lit[i++] == '-';
      for (; i < lit.size(); ++i) {
        // Saturate: any exponent past 1e9 is out of range in either direction.
        if (exponent < 1000000000) exponent = exponent * 10 + (lit[i] - '0');
      }
      if (negative) exponent = -exponent;
    }
    const int64_t magnitude =
        int_digits > 0 ? int_digits + exponent : exponent - frac_zeros;
    return magnitude > 0;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

absl::StatusOr<Json> Json::Parse(std::string_view text) {
  return Parser(text).ParseDocument();
}

const char* Json::TypeName(Type type) {
  switch (type) {
    case Type::kTypeNull: return "null";
    case Type::kTypeBool: return "bool";
    case Type::kTypeNumber: return "number";
    case Type::kTypeString: return "string";
    case Type::kTypeArray: return "array";
    case Type::kTypeObject: return "object";
  }
  return "unknown";
}

bool Json::is_int64() const {
  if (type_ != Type::kTypeNumber) return false;
  if (is_int_) return true;
  // [-2^63, 2^63): both bounds are exact doubles.
  return std::isfinite(double_) && std::trunc(double_) == double_ &&
         double_ >= -9223372036854775808.0 && double_ < 9223372036854775808.0;
}

bool Json::as_bool() const {
  if (type_ != Type::kTypeBool) TypeMismatch("as_bool", Type::kTypeBool, type_);
  return bool_;
}

double Json::as_double() const {
  if (type_ != Type::kTypeNumber) {
    TypeMismatch("as_double", Type::kTypeNumber, type_);
  }
  return double_;
}

int64_t Json::as_int64() const {
  if (!is_int64()) {
    if (type_ == Type::kTypeNumber) {
      std::fprintf(stderr, "sheaf::Json::as_int64 called on %.17g\n", double_);
      std::abort();
    }
    TypeMismatch("as_int64", Type::kTypeNumber, type_);
  }
  return is_int_ ? int_ : static_cast<int64_t>(double_);
}

const std::string& Json::as_string() const {
  if (type_ != Type::kTypeString) {
    TypeMismatch("as_string", Type::kTypeString, type_);
  }
  return string_;
}

size_t Json::size() const {
  if (type_ == Type::kTypeArray) return array_.size();
  if (type_ == Type::kTypeObject) return object_.size();
  return 0;
}

const Json& Json::operator[](size_t i) const {
  if (type_ != Type::kTypeArray) TypeMismatch("operator[]", Type::kTypeArray, type_);
  if (i >= array_.size()) {
    std::fprintf(stderr, "sheaf::Json::operator[]: index %zu >= size %zu\n", i,
                 array_.size());
    std::abort();
  }
  return array_[i];
}

Json& Json::operator[](size_t i) {
  return const_cast<Json&>(std::as_const(*this)[i]);
}

const std::vector<Json>& Json::elements() const {
  if (type_ != Type::kTypeArray) TypeMismatch("elements", Type::kTypeArray, type_);
  return array_;
}

const std::vector<Json::Member>& Json::items() const {
  if (type_ != Type::kTypeObject) TypeMismatch("items", Type::kTypeObject, type_);
  return object_;
}

const Json* Json::Find(std::string_view key) const {
  if (type_ != Type::kTypeObject) return nullptr;
  const auto it = index_.find(ToAbsl(key));
  return it == index_.end() ? nullptr : &object_[it->second].second;
}

Json* Json::Find(std::string_view key) {
  return const_cast<Json*>(std::as_const(*this).Find(key));
}

absl::StatusOr<const Json*> Json::Get(std::string_view key) const {
  if (type_ != Type::kTypeObject) {
    return absl::InvalidArgumentError(absl::StrCat(
        "looking up field '", ToAbsl(key), "': expected an object, got ",
        TypeName(type_)));
  }
  const Json* v = Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat("missing field '", ToAbsl(key), "'"));
  }
  return v;
}

namespace {

absl::Status WrongType(std::string_view key, std::string_view want,
                       const Json& got) {
  return absl::InvalidArgumentError(absl::StrCat(
      "field '", ToAbsl(key), "': expected ", ToAbsl(want), ", got ", Json::TypeName(got.type())));
}

}  // namespace

absl::StatusOr<std::string> Json::GetString(std::string_view key) const {
  ASSIGN_OR_RETURN(const Json* v, Get(key));
  if (!v->is_string()) return WrongType(key, "string", *v);
  return v->string_;
}

absl::StatusOr<int64_t> Json::GetInt64(std::string_view key) const {
  ASSIGN_OR_RETURN(const Json* v, Get(key));
  if (!v->is_int64()) {
    if (v->is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "field '", ToAbsl(key), "': expected an integer, got ", v->Dump()));
    }
    return WrongType(key, "integer", *v);
  }
  return v->as_int64();
}

absl::StatusOr<double> Json::GetDouble(std::string_view key) const {
  ASSIGN_OR_RETURN(const Json* v, Get(key));
  if (!v->is_number()) return WrongType(key, "number", *v);
  return v->double_;
}

absl::StatusOr<bool> Json::GetBool(std::string_view key) const {
  ASSIGN_OR_RETURN(const Json* v, Get(key));
  if (!v->is_bool()) return WrongType(key, "bool", *v);
  return v->bool_;
}

Json& Json::Set(std::string_view key, Json value) {
  if (type_ == Type::kTypeNull) type_ = Type::kTypeObject;
  if (type_ != Type::kTypeObject) TypeMismatch("Set", Type::kTypeObject, type_);
  const auto it = index_.find(ToAbsl(key));
  if (it != index_.end()) {
    object_[it->second].second = std::move(value);
  } else {
    index_.emplace(std::string(key), object_.size());
    object_.emplace_back(std::string(key), std::move(value));
  }
  return *this;
}

Json& Json::Push(Json value) {
  if (type_ == Type::kTypeNull) type_ = Type::kTypeArray;
  if (type_ != Type::kTypeArray) TypeMismatch("Push", Type::kTypeArray, type_);
  array_.push_back(std::move(value));
  return *this;
}

std::string Json::Dump(int indent) const {
  std::string out;
  DumpTo(&out, indent, 0);
  return out;
}

void Json::DumpTo(std::string* out, int indent, int depth) const {
  switch (type_) {
    case Type::kTypeNull:
      out->append("null");
      return;
    case Type::kTypeBool:
      out->append(bool_ ? "true" : "false");
      return;
    case Type::kTypeNumber:
      if (is_int_) {
        absl::StrAppend(out, int_);
      } else {
        DumpNumber(double_, from_float_, out);
      }
      return;
    case Type::kTypeString:
      DumpString(string_, out);
      return;
    case Type::kTypeArray:
      out->push_back('[');
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i > 0) out->push_back(',');
        if (indent >= 0) Newline(indent, depth + 1, out);
        array_[i].DumpTo(out, indent, depth + 1);
      }
      if (indent >= 0 && !array_.empty()) Newline(indent, depth, out);
      out->push_back(']');
      return;
    case Type::kTypeObject:
      out->push_back('{');
      for (size_t i = 0; i < object_.size(); ++i) {
        if (i > 0) out->push_back(',');
        if (indent >= 0) Newline(indent, depth + 1, out);
        DumpString(object_[i].first, out);
        out->append(indent >= 0 ? ": " : ":");
        object_[i].second.DumpTo(out, indent, depth + 1);
      }
      if (indent >= 0 && !object_.empty()) Newline(indent, depth, out);
      out->push_back('}');
      return;
  }
}

bool operator==(const Json& a, const Json& b) {
  if (a.type_ != b.type_) return false;
  switch (a.type_) {
    case Json::Type::kTypeNull: return true;
    case Json::Type::kTypeBool: return a.bool_ == b.bool_;
    case Json::Type::kTypeNumber:
      // Two exact ints compare exactly (doubles would merge 2^63-1 and 2^63-2).
      if (a.is_int_ && b.is_int_) return a.int_ == b.int_;
      return a.double_ == b.double_;
    case Json::Type::kTypeString: return a.string_ == b.string_;
    case Json::Type::kTypeArray: return a.array_ == b.array_;
    case Json::Type::kTypeObject:
      if (a.object_.size() != b.object_.size()) return false;
      for (const auto& [key, value] : a.object_) {
        const Json* other = b.Find(key);
        if (other == nullptr || !(*other == value)) return false;
      }
      return true;
  }
  return false;
}

}  // namespace sheaf
