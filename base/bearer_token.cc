#include "base/bearer_token.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/file.h"

namespace sheaf {

absl::StatusOr<std::string> ParseTokenFile(absl::string_view text, const std::string& origin) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    return std::string(words[0]);
  }
  return absl::InvalidArgumentError(absl::StrCat("token file ", origin, " holds no token"));
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  // A token file is a few lines: cap it (a /dev/zero aborted the CLI).
  absl::StatusOr<std::string> text = ReadFileToString(path, 64 << 10);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("token file ", path, ": cannot be read (",
                                            text.status().message(), ")"));
  }
  return ParseTokenFile(*text, path);
}

}  // namespace sheaf
