// Document sources: where training text comes from. A source is a path plus a
// format; reading it yields documents, the unit the dataset splits into train
// and validation (so that no document is seen by both).
//
// Formats:
//   text    one file, one document (or one per paragraph, see
//           split_blank_lines).
//   folder  every regular file below the folder, recursively, in byte-wise
//           sorted path order so that document indices (and therefore the
//           train/validation split) do not depend on directory iteration
//           order. Entries whose name starts with '.' are skipped (editor
//           swap files, .git).
//   jsonl   one JSON object per line with a string field "text"; blank lines
//           are skipped.
//
// Documents that are empty or whitespace-only are dropped; a source that
// yields no other document is an error, since it almost always means a wrong
// path or format.
#ifndef SHEAF_CORE_DATA_DOCUMENT_SOURCE_H_
#define SHEAF_CORE_DATA_DOCUMENT_SOURCE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sheaf {

enum class SourceFormat {
  kSourceFormatAuto,  // folder if a directory, jsonl if "*.jsonl", else text
  kSourceFormatText,
  kSourceFormatFolder,
  kSourceFormatJsonl,
};

// Parses "auto", "text", "folder" or "jsonl" (the CLI spelling).
// Returns InvalidArgument for anything else.
absl::StatusOr<SourceFormat> ParseSourceFormat(std::string_view name);

struct DocumentSource {
  std::string path;
  SourceFormat format = SourceFormat::kSourceFormatAuto;
  // Splits every document at blank (empty or whitespace-only) lines, so that
  // e.g. one big text file of paragraphs becomes many documents and can be
  // split into train and validation at all.
  bool split_blank_lines = false;
};

struct Document {
  std::string text;
  // Where the text came from, for messages: "path", or "path:line" for jsonl
  // records and paragraphs (line of the first line, 1-based).
  std::string origin;
};

// Calls `visit` for each non-empty document of `source`, in order, and stops
// at the first error `visit` returns (which is then returned).
// Errors: NotFound (missing path), InvalidArgument (empty folder, no
// non-empty document, a jsonl line that is not an object with a string
// "text": the message names path:line), or the errno-derived code of a failed
// read.
absl::Status ForEachDocument(const DocumentSource& source,
                             absl::FunctionRef<absl::Status(Document)> visit);

// Reads every document of every source into memory, sources in order.
// Errors: as ForEachDocument.
absl::StatusOr<std::vector<Document>> LoadDocuments(
    absl::Span<const DocumentSource> sources);

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_DOCUMENT_SOURCE_H_
