// The files beside a Hugging Face model's weights that make a directory
// usable by AutoTokenizer and generate(): copied next to a merged model.
#ifndef SHEAF_CORE_HF_EXPORT_H_
#define SHEAF_CORE_HF_EXPORT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sheaf {

// tokenizer.json, tokenizer_config.json, special_tokens_map.json,
// tokenizer.model, vocab.json, merges.txt, added_tokens.json and
// generation_config.json (when src has one; Model::Save writes its own from
// the config otherwise; src's wins, as it may hold sampling defaults).
const std::vector<std::string>& HfSideFileNames();

// Copies those of HfSideFileNames() that exist in src_dir into dst_dir
// (replacing them); returns the names copied. Internal error naming the
// file when a copy fails.
absl::StatusOr<std::vector<std::string>> CopyHfSideFiles(const std::string& src_dir,
                                                         const std::string& dst_dir);

}  // namespace sheaf

#endif  // SHEAF_CORE_HF_EXPORT_H_
