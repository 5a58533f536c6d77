// "Did you mean ...?" hints for misspelled keys and names in job specs.
#ifndef SHEAF_CORE_SPEC_SUGGEST_H_
#define SHEAF_CORE_SPEC_SUGGEST_H_

#include <string>
#include <vector>

namespace sheaf {

// Levenshtein distance (insertions, deletions, substitutions of bytes).
int EditDistance(const std::string& a, const std::string& b);

// The candidate that `word` most likely misspells, or "" when none is close.
// Case, '_' and '-' are ignored ("batchSize" and "batch-size" both find
// "batch_size"); otherwise a candidate is close when few edits away (1 for
// short words, up to 3 for long ones) or when one of the two is a prefix of
// the other ("warmup" finds "warmup_steps"). Ties go to the earlier
// candidate.
std::string ClosestMatch(const std::string& word,
                         const std::vector<std::string>& candidates);

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_SUGGEST_H_
