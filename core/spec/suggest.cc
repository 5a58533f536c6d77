#include "core/spec/suggest.h"

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

namespace sheaf {
namespace {

std::string Normalize(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '_' || c == '-') continue;
    out.push_back(
        static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

int MaxEdits(size_t length) {
  if (length <= 4) return 1;
  if (length <= 8) return 2;
  return 3;
}

}  // namespace

int EditDistance(const std::string& a, const std::string& b) {
  // One row of the classic dynamic programme: row[j] = distance between the
  // first i bytes of a and the first j bytes of b.
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diagonal = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                         diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string ClosestMatch(const std::string& word,
                         const std::vector<std::string>& candidates) {
  const std::string w = Normalize(word);
  if (w.empty()) return "";
  std::string best;
  int best_score = 1 << 30;
  for (const std::string& candidate : candidates) {
    const std::string c = Normalize(candidate);
    if (c.empty()) continue;
    int score = EditDistance(w, c);
    if (score > MaxEdits(std::max(w.size(), c.size()))) {
      // A prefix of at least three letters still counts, ranked after every
      // close spelling.
      const bool prefix =
          std::min(w.size(), c.size()) >= 3 &&
          (c.compare(0, w.size(), w) == 0 || w.compare(0, c.size(), c) == 0);
      if (!prefix) continue;
      score = 100 + score;
    }
    if (score < best_score) {
      best_score = score;
      best = candidate;
    }
  }
  return best;
}

}  // namespace sheaf
