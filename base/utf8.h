// UTF-8 by the book (Unicode 15, §3.9, Table 3-7): a well-formed sequence
// encodes one scalar value (U+0000..U+10FFFF minus the surrogates
// U+D800..U+DFFF) in its shortest form; overlong forms, surrogates, values
// past U+10FFFF, stray continuation bytes and sequences cut short are all
// ill-formed. Used by the JSON parser and writer and by tokenizers.
// Pure functions; safe from any thread.
#ifndef SHEAF_BASE_UTF8_H_
#define SHEAF_BASE_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sheaf {

inline constexpr uint32_t kUnicodeReplacementCharacter = 0xFFFD;

// Length (1-4) of the well-formed sequence that starts at s[i], or 0 when the
// bytes there are not one (also when i >= s.size()).
size_t Utf8SequenceLength(std::string_view s, size_t i);

// Decodes the sequence at s[*pos] and advances *pos past it; nullopt (and
// *pos unchanged) when it is ill-formed.
std::optional<uint32_t> DecodeUtf8(std::string_view s, size_t* pos);

// Appends the encoding of `code_point`; false (and nothing appended) for a
// surrogate or a value past U+10FFFF, which have none.
bool AppendUtf8(uint32_t code_point, std::string* out);

// Offset of the first byte that does not start a well-formed sequence, or
// std::string_view::npos when all of `s` is well-formed.
size_t FindInvalidUtf8(std::string_view s);
inline bool IsValidUtf8(std::string_view s) {
  return FindInvalidUtf8(s) == std::string_view::npos;
}

}  // namespace sheaf

#endif  // SHEAF_BASE_UTF8_H_
