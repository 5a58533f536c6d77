#include "core/hf_export.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace sheaf {

const std::vector<std::string>& HfSideFileNames() {
  static const auto* names = new std::vector<std::string>{
      "tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json",
      "tokenizer.model", "vocab.json",            "merges.txt",
      "added_tokens.json", "generation_config.json"};
  return *names;
}

absl::StatusOr<std::vector<std::string>> CopyHfSideFiles(const std::string& src_dir,
                                                         const std::string& dst_dir) {
  std::vector<std::string> copied;
  for (const std::string& name : HfSideFileNames()) {
    const std::filesystem::path src = std::filesystem::path(src_dir) / name;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(src, ec)) continue;
    const std::filesystem::path dst = std::filesystem::path(dst_dir) / name;
    const std::filesystem::path tmp = dst.string() + ".tmp";
    std::filesystem::copy_file(src, tmp, std::filesystem::copy_options::overwrite_existing, ec);
    if (!ec) std::filesystem::rename(tmp, dst, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot copy ", src.string(), " to ", dst.string(),
                                              ": ", ec.message()));
    }
    copied.push_back(name);
  }
  return copied;
}

}  // namespace sheaf
