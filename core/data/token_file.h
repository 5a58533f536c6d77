// Pre-tokenised corpus file (".tok"): a corpus is tokenised once
// (`sheaf data tokenize`) and every training run memory-maps the result, so
// start-up costs neither tokenisation nor a copy of the corpus per process.
//
// Layout (all integers little-endian; offsets in bytes from the file start):
//
//   offset  size  field
//   0       8     magic           "SHEAFTOK"
//   8       4     version         u32, currently 1
//   12      4     bytes_per_token u32: 2 (u16 tokens) when vocab_size <= 65536,
//                                 else 4 (u32 tokens)
//   16      4     vocab_size      u32, every token id is < vocab_size
//   20      4     bos_id          u32, the tokenizer's BOS (< vocab_size)
//   24      4     eos_id          u32, the tokenizer's EOS (< vocab_size)
//   28      4     reserved        0
//   32      8     num_docs        u64
//   40      8     num_tokens      u64, total over all documents
//   48      8     tokens_offset   u64, always 64
//   56      8     offsets_offset  u64, tokens_offset + num_tokens *
//                                 bytes_per_token rounded up to a multiple of 8
//   64      ...   tokens          num_tokens ids of bytes_per_token each, the
//                                 documents back to back, without BOS/EOS
//   ...           zero padding    to offsets_offset
//   offsets_offset (num_docs + 1) * 8
//                 doc offsets     u64 each: document d is tokens
//                                 [offsets[d], offsets[d + 1]); offsets[0] = 0,
//                                 offsets[num_docs] = num_tokens, strictly
//                                 increasing (no empty documents)
//   file size = offsets_offset + (num_docs + 1) * 8 exactly.
//
// The offsets table follows the tokens (rather than preceding them) so that
// the writer can stream tokens to disk without knowing the number of
// documents in advance; the header, written last, says where the table is.
//
// Files are written to "<path>.tmp.<pid>", fsync'd and renamed over <path>,
// so a reader never sees a half-written file under the final name.
// Open() checks every field above and every token id, so a truncated or
// corrupt file is an error naming the file, not an out-of-bounds read later.
#ifndef SHEAF_CORE_DATA_TOKEN_FILE_H_
#define SHEAF_CORE_DATA_TOKEN_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/file.h"
#include "core/data/document_source.h"
#include "core/data/token_corpus.h"
#include "core/data/tokenizer.h"

namespace sheaf {

inline constexpr char kTokenFileMagic[8] = {'S', 'H', 'E', 'A',
                                            'F', 'T', 'O', 'K'};
inline constexpr uint32_t kTokenFileVersion = 1;
inline constexpr int64_t kTokenFileHeaderBytes = 64;

// Streams documents into a new .tok file.
// Lifecycle: Create -> AddDocument* -> Finish. Destroying a writer before
// Finish() succeeds removes the temporary file and leaves any existing file
// at the path untouched. Not thread-safe.
class TokenFileWriter {
 public:
  // Returns InvalidArgument for a bad vocab_size or special id, or the
  // errno-derived code when the temporary file cannot be created.
  static absl::StatusOr<std::unique_ptr<TokenFileWriter>> Create(
      const std::string& path, int32_t vocab_size, int32_t bos_id,
      int32_t eos_id);
  ~TokenFileWriter();

  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  // Returns InvalidArgument for an empty document or an id outside
  // [0, vocab_size); errno-derived codes for write failures.
  absl::Status AddDocument(absl::Span<const int32_t> tokens);

  // Writes offsets and header, fsyncs and renames into place.
  // Returns FailedPrecondition when called twice or with no documents.
  absl::Status Finish();

  int64_t num_docs() const {
    return static_cast<int64_t>(doc_offsets_.size()) - 1;
  }
  int64_t num_tokens() const { return doc_offsets_.back(); }

 private:
  TokenFileWriter(std::string path, std::unique_ptr<AtomicFileWriter> file,
                  int32_t vocab_size, int32_t bos_id, int32_t eos_id);
  absl::Status WriteBytes(const void* data, size_t size);
  absl::Status FlushBuffer();

  const std::string path_;
  std::unique_ptr<AtomicFileWriter> file_;  // PATH.tmp.<pid> until Finish
  const int32_t vocab_size_;
  const int32_t bos_id_;
  const int32_t eos_id_;
  const int bytes_per_token_;
  std::vector<char> buffer_;           // pending bytes, flushed at ~1 MiB
  std::vector<uint64_t> doc_offsets_;  // (num_docs + 1)
  bool finished_ = false;
};

struct TokenizeStats {
  int64_t num_docs = 0;
  int64_t num_tokens = 0;
  int64_t file_bytes = 0;
};

// Tokenises every document of `sources` (in order) into a .tok file at
// `out_path`; what `sheaf data tokenize` runs. Errors: those of
// ForEachDocument and TokenFileWriter.
absl::StatusOr<TokenizeStats> TokenizeToFile(
    absl::Span<const DocumentSource> sources, const Tokenizer& tokenizer,
    const std::string& out_path);

// A memory-mapped, validated .tok file. Immutable; safe to share between
// threads. (As with any mmap, truncating the file while it is open raises
// SIGBUS on access; .tok files are replaced by rename, never rewritten in
// place, so that does not happen through this code.)
class TokenFile final : public TokenCorpus {
 public:
  // Returns NotFound / the errno-derived code when the file cannot be opened
  // and DataLoss when its contents violate the layout above; both name the
  // file.
  static absl::StatusOr<std::unique_ptr<TokenFile>> Open(
      const std::string& path);
  ~TokenFile() override;

  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t num_docs() const override { return num_docs_; }
  int64_t num_tokens() const override { return num_tokens_; }
  int64_t doc_size(int64_t doc) const override {
    return static_cast<int64_t>(offsets_[doc + 1] - offsets_[doc]);
  }
  void CopyTokens(int64_t doc, int64_t begin, int64_t count,
                  int32_t* out) const override;

  int32_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

  int bytes_per_token() const { return bytes_per_token_; }
  const std::string& path() const { return path_; }

 private:
  TokenFile() = default;

  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;  // (num_tokens * bytes_per_token)
  const uint64_t* offsets_ = nullptr;      // (num_docs + 1)
  int64_t num_docs_ = 0;
  int64_t num_tokens_ = 0;
  int32_t vocab_size_ = 0;
  int32_t bos_id_ = 0;
  int32_t eos_id_ = 0;
  int bytes_per_token_ = 0;
};

}  // namespace sheaf

#endif  // SHEAF_CORE_DATA_TOKEN_FILE_H_
