#include "core/data/document_source.h"

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/open_beneath.h"
#include "base/status.h"
#include "core/json.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

bool IsBlank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return absl::ascii_isspace(static_cast<unsigned char>(c));
  });
}

// Emits `text` as one document, or as one per blank-line-separated paragraph.
// A paragraph keeps its bytes verbatim, newlines included, so that
// concatenating the paragraphs gives back the text minus the blank lines.
// With `number_paragraphs`, a paragraph's origin gets ":<line>" appended.
absl::Status EmitText(std::string_view text, const std::string& origin,
                      bool split_blank_lines, bool number_paragraphs,
                      int64_t* emitted,
                      absl::FunctionRef<absl::Status(Document)> visit) {
  auto emit = [&](std::string_view doc, std::string doc_origin) {
    if (IsBlank(doc)) return absl::OkStatus();
    ++*emitted;
    return visit(Document{std::string(doc), std::move(doc_origin)});
  };
  if (!split_blank_lines) return emit(text, origin);
  auto paragraph_origin = [&](int64_t line) {
    return number_paragraphs ? absl::StrCat(origin, ":", line) : origin;
  };
  size_t paragraph_begin = std::string_view::npos;
  int64_t paragraph_line = 0;
  int64_t line = 1;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string_view::npos ? text.size() : end + 1;
    if (IsBlank(text.substr(pos, end - pos))) {
      if (paragraph_begin != std::string_view::npos) {
        RETURN_IF_ERROR(
            emit(text.substr(paragraph_begin, pos - paragraph_begin),
                 paragraph_origin(paragraph_line)));
        paragraph_begin = std::string_view::npos;
      }
    } else if (paragraph_begin == std::string_view::npos) {
      paragraph_begin = pos;
      paragraph_line = line;
    }
    pos = end;
    ++line;
  }
  if (paragraph_begin != std::string_view::npos) {
    RETURN_IF_ERROR(
        emit(text.substr(paragraph_begin), paragraph_origin(paragraph_line)));
  }
  return absl::OkStatus();
}

// Returns the "text" field of one JSONL record, or an error naming path:line.
absl::StatusOr<std::string> JsonlText(std::string_view line,
                                      const std::string& where) {
  absl::StatusOr<Json> record = Json::Parse(line);
  if (!record.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not valid JSON: ", record.status().message()));
  }
  if (!record->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected a JSON object with a \"text\" field"));
  }
  const Json* text = record->Find("text");
  if (text == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": record has no \"text\" field"));
  }
  if (!text->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"text\" field is not a string"));
  }
  return std::string(text->as_string());
}

absl::Status VisitJsonl(const std::string& path, bool split_blank_lines,
                        int64_t* emitted,
                        absl::FunctionRef<absl::Status(Document)> visit) {
  ASSIGN_OR_RETURN(const std::string data, ReadFileToString(path));
  std::string_view rest = data;
  int64_t line_number = 0;
  while (!rest.empty()) {
    ++line_number;
    size_t end = rest.find('\n');
    std::string_view line = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view()
                                         : rest.substr(end + 1);
    if (IsBlank(line)) continue;
    const std::string where = absl::StrCat(path, ":", line_number);
    ASSIGN_OR_RETURN(const std::string text, JsonlText(line, where));
    // A record's paragraphs all carry the record's line: a line number
    // inside the JSON string would mean nothing to a reader of the file.
    RETURN_IF_ERROR(EmitText(text, where, split_blank_lines,
                             /*number_paragraphs=*/false, emitted, visit));
  }
  return absl::OkStatus();
}

absl::Status VisitFolder(const std::string& path, bool split_blank_lines,
                         int64_t* emitted,
                         absl::FunctionRef<absl::Status(Document)> visit) {
  // Listed through descriptors opened beneath the roots
  // (base/open_beneath.h): a folder swapped for a symlink out is refused,
  // not listed. Directory symlinks are not followed (a link cycle would
  // never end, and a corpus folder should hold its files, not point at
  // other trees); names starting with "." are skipped.
  ASSIGN_OR_RETURN(const std::vector<std::string> files, ListFilesInsideRoots(path));
  if (files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("folder ", path, " contains no files"));
  }
  for (const std::string& file : files) {
    ASSIGN_OR_RETURN(const std::string text, ReadFileToString(file));
    RETURN_IF_ERROR(EmitText(text, file, split_blank_lines,
                             /*number_paragraphs=*/true, emitted, visit));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SourceFormat> ParseSourceFormat(std::string_view name) {
  if (name == "auto") return SourceFormat::kSourceFormatAuto;
  if (name == "text") return SourceFormat::kSourceFormatText;
  if (name == "folder") return SourceFormat::kSourceFormatFolder;
  if (name == "jsonl") return SourceFormat::kSourceFormatJsonl;
  // std::string: Debian's absl::string_view is its own type, not
  // std::string_view, so StrCat does not take the latter.
  return absl::InvalidArgumentError(
      absl::StrCat("unknown source format \"", std::string(name),
                   "\" (expected auto, text, folder or jsonl)"));
}

absl::Status ForEachDocument(const DocumentSource& source,
                             absl::FunctionRef<absl::Status(Document)> visit) {
  const std::string& path = source.path;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (path.empty() || !fs::exists(status)) {
    return absl::NotFoundError(
        absl::StrCat("document source not found: \"", path, "\""));
  }
  const bool is_dir = fs::is_directory(status);
  SourceFormat format = source.format;
  if (format == SourceFormat::kSourceFormatAuto) {
    format = is_dir ? SourceFormat::kSourceFormatFolder
             : absl::EndsWith(path, ".jsonl") ? SourceFormat::kSourceFormatJsonl
                                              : SourceFormat::kSourceFormatText;
  }
  if (is_dir != (format == SourceFormat::kSourceFormatFolder)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, is_dir ? " is a folder but the source format is not folder"
                     : " is not a folder but the source format is folder"));
  }

  int64_t emitted = 0;
  switch (format) {
    case SourceFormat::kSourceFormatFolder:
      RETURN_IF_ERROR(
          VisitFolder(path, source.split_blank_lines, &emitted, visit));
      break;
    case SourceFormat::kSourceFormatJsonl:
      RETURN_IF_ERROR(
          VisitJsonl(path, source.split_blank_lines, &emitted, visit));
      break;
    case SourceFormat::kSourceFormatText:
    case SourceFormat::kSourceFormatAuto: {
      ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
      RETURN_IF_ERROR(EmitText(text, path, source.split_blank_lines,
                               /*number_paragraphs=*/true, &emitted, visit));
      break;
    }
  }
  if (emitted == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("document source ", path, " has no non-empty document"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Document>> LoadDocuments(
    absl::Span<const DocumentSource> sources) {
  std::vector<Document> documents;
  for (const DocumentSource& source : sources) {
    RETURN_IF_ERROR(ForEachDocument(source, [&](Document doc) {
      documents.push_back(std::move(doc));
      return absl::OkStatus();
    }));
  }
  return documents;
}

}  // namespace sheaf
