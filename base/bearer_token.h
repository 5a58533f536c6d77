// The one reader of bearer-token files (`sheaf --token-file`,
// `sheaf-worker --token-file`, $SHEAF_TOKEN_FILE).
//
// Format: the token is the first word of the first line that is neither
// blank nor a comment (first non-blank character `#`); the rest of that line
// and every later line are ignored, so a file may carry a comment saying
// what the token is for, end in CRLF, or be a line copied from the
// coordinator's tokens file (`TOKEN TENANT`).
#ifndef SHEAF_BASE_BEARER_TOKEN_H_
#define SHEAF_BASE_BEARER_TOKEN_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sheaf {

// The token in `text` (read from `origin`, named in errors); InvalidArgument
// "token file ORIGIN holds no token" when there is none.
absl::StatusOr<std::string> ParseTokenFile(absl::string_view text, const std::string& origin);

// ParseTokenFile of the file's contents; an unreadable file (missing,
// a directory, no permission) is NotFound "token file PATH: cannot be read
// (<reason>)".
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

}  // namespace sheaf

#endif  // SHEAF_BASE_BEARER_TOKEN_H_
