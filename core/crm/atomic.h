// RecBole's atomic files: the ratings a `reclora` job (and `sheaf crm train`)
// reads. docs/reclora.md documents the format for users who bring their own.
//
// A dataset NAME in a directory DIR is up to three tab-separated text files:
//   DIR/NAME.inter  one interaction per line (required)
//   DIR/NAME.user   one user per line (optional)
//   DIR/NAME.item   one item per line (optional)
// The first line of each is a header of `name:type` columns, type one of
// token, token_seq (space-separated tokens), float, float_seq. Every later
// line has exactly as many tab-separated values as the header. Required
// columns: .inter user_id:token item_id:token rating:float timestamp:float
// (other .inter columns are refused by name: nothing would read them);
// .user user_id:token, .item item_id:token, other columns of those two must be
// token or token_seq (they become the recommender's categorical fields; float
// feature columns are refused by name until something uses them).
//
// Errors (InvalidArgument) name the file and the 1-based line: a missing or
// mistyped column, a wrong number of values, a number that does not parse or
// is not finite, a duplicate user or item line, an interaction whose user or
// item is absent from a .user / .item file that exists.
#ifndef SHEAF_CORE_CRM_ATOMIC_H_
#define SHEAF_CORE_CRM_ATOMIC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace sheaf::crm {

// One categorical feature column of .user or .item.
struct FeatureColumn {
  std::string name;   // header name without the type, e.g. "occupation"
  bool is_seq = false;  // token_seq: a bag of tokens
  // Vocabulary of the column: index 0 is reserved for "absent" (an entity
  // without a line in the file); tokens get 1, 2, ... in first-seen order.
  std::vector<std::string> vocab;
  // Per entity (dense index of user or item): its token ids (one for token,
  // zero or more for token_seq; {0} for an entity without a line).
  std::vector<std::vector<int32_t>> values;
  // The raw text of the column per entity ("" when absent), for prompts.
  std::vector<std::string> text;
};

struct Interaction {
  int32_t user = 0;  // dense index into AtomicDataset::user_ids
  int32_t item = 0;  // dense index into AtomicDataset::item_ids
  float rating = 0;
  double timestamp = 0;
  int64_t line = 0;  // 1-based line in the .inter file (ties keep file order)
};

struct AtomicDataset {
  std::string inter_path;
  // Dense index -> the file's token, for users and items (those of .user /
  // .item first, in file order, then any new ones met in .inter when that
  // file is absent).
  std::vector<std::string> user_ids, item_ids;
  absl::flat_hash_map<std::string, int32_t> user_index, item_index;
  std::vector<FeatureColumn> user_features, item_features;  // without the id
  std::vector<Interaction> interactions;                    // file order
};

// Reads DIR/NAME.{inter,user,item}. NotFound when DIR/NAME.inter is missing.
absl::StatusOr<AtomicDataset> ReadAtomicDataset(const std::string& dir,
                                                const std::string& name);

}  // namespace sheaf::crm

#endif  // SHEAF_CORE_CRM_ATOMIC_H_
