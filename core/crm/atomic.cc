#include "core/crm/atomic.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status.h"

namespace sheaf::crm {
namespace {

// Splits on `sep` (std::string_view: Debian's Abseil is C++14, its
// string_view is not std's). skip_empty drops empty pieces.
std::vector<std::string_view> Split(std::string_view s, char sep, bool skip_empty = false) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t end = s.find(sep, start);
    std::string_view piece =
        s.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (!skip_empty || !piece.empty()) out.push_back(piece);
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return out;
}

struct Column {
  std::string name, type;
};

struct Table {
  std::string path;
  std::vector<Column> columns;
  std::vector<std::vector<std::string_view>> rows;  // views into `text`
  std::vector<int64_t> lines;                        // 1-based line of each row
  std::string text;
};

absl::Status LineError(const std::string& path, int64_t line, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", std::string(what)));
}

// Splits a file into header columns and rows; checks the value counts.
absl::StatusOr<Table> ReadTable(const std::string& path) {
  Table t;
  t.path = path;
  ASSIGN_OR_RETURN(t.text, ReadFileToString(path));
  std::vector<std::string_view> lines = Split(t.text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) return LineError(path, 1, "empty file (no header line)");
  auto strip_cr = [](std::string_view s) {
    if (!s.empty() && s.back() == '\r') s.remove_suffix(1);
    return s;
  };
  for (std::string_view field : Split(strip_cr(lines[0]), '\t')) {
    size_t colon = field.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
      return LineError(path, 1, absl::StrCat("header column '", std::string(field),
                                             "' is not name:type"));
    }
    Column c{std::string(field.substr(0, colon)), std::string(field.substr(colon + 1))};
    if (c.type != "token" && c.type != "token_seq" && c.type != "float" &&
        c.type != "float_seq") {
      return LineError(path, 1, absl::StrCat("column '", c.name, "' has unknown type '",
                                             c.type,
                                             "' (token, token_seq, float, float_seq)"));
    }
    t.columns.push_back(std::move(c));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = strip_cr(lines[i]);
    if (line.empty()) continue;  // a trailing blank line is harmless
    std::vector<std::string_view> values = Split(line, '\t');
    if (values.size() != t.columns.size()) {
      return LineError(path, static_cast<int64_t>(i + 1),
                       absl::StrCat(values.size(), " values, the header has ",
                                    t.columns.size(), " columns"));
    }
    t.rows.push_back(std::move(values));
    t.lines.push_back(static_cast<int64_t>(i + 1));
  }
  return t;
}

// Index of the column `name`; InvalidArgument when missing or of another type.
absl::StatusOr<int> FindColumn(const Table& t, std::string_view name, std::string_view type) {
  for (size_t i = 0; i < t.columns.size(); ++i) {
    if (t.columns[i].name == name) {
      if (t.columns[i].type != type) {
        return LineError(t.path, 1, absl::StrCat("column '", std::string(name), "' has type ",
                                                 t.columns[i].type, ", expected ",
                                                 std::string(type)));
      }
      return static_cast<int>(i);
    }
  }
  return LineError(t.path, 1, absl::StrCat("missing column ", std::string(name), ":",
                                           std::string(type)));
}

absl::StatusOr<double> ParseNumber(const Table& t, size_t row, int col) {
  std::string s(t.rows[row][static_cast<size_t>(col)]);
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) {
    return LineError(t.path, t.lines[row],
                     absl::StrCat(t.columns[static_cast<size_t>(col)].name, ": '", s,
                                  "' is not a finite number"));
  }
  return v;
}

// Reads .user or .item: ids and feature columns.
absl::Status ReadEntities(const std::string& path, const std::string& id_name,
                          std::vector<std::string>& ids,
                          absl::flat_hash_map<std::string, int32_t>& index,
                          std::vector<FeatureColumn>& features) {
  ASSIGN_OR_RETURN(Table t, ReadTable(path));
  ASSIGN_OR_RETURN(int id_col, FindColumn(t, id_name, "token"));
  std::vector<int> feature_cols;
  for (size_t c = 0; c < t.columns.size(); ++c) {
    if (static_cast<int>(c) == id_col) continue;
    const Column& col = t.columns[c];
    if (col.type != "token" && col.type != "token_seq") {
      return LineError(path, 1, absl::StrCat("column '", col.name, ":", col.type,
                                             "' is not supported (feature columns must be "
                                             "token or token_seq)"));
    }
    FeatureColumn f;
    f.name = col.name;
    f.is_seq = col.type == "token_seq";
    f.vocab.push_back("");  // 0 = absent
    features.push_back(std::move(f));
    feature_cols.push_back(static_cast<int>(c));
  }
  std::vector<absl::flat_hash_map<std::string, int32_t>> vocab_index(features.size());
  for (size_t r = 0; r < t.rows.size(); ++r) {
    std::string id(t.rows[r][static_cast<size_t>(id_col)]);
    if (id.empty()) return LineError(path, t.lines[r], absl::StrCat(id_name, " is empty"));
    auto [it, inserted] = index.emplace(id, static_cast<int32_t>(ids.size()));
    if (!inserted) {
      return LineError(path, t.lines[r], absl::StrCat("duplicate ", id_name, " '", id, "'"));
    }
    ids.push_back(id);
    for (size_t f = 0; f < features.size(); ++f) {
      std::string_view raw = t.rows[r][static_cast<size_t>(feature_cols[f])];
      std::vector<int32_t> toks;
      auto add = [&](std::string_view tok) {
        auto [vit, fresh] = vocab_index[f].emplace(
            std::string(tok), static_cast<int32_t>(features[f].vocab.size()));
        if (fresh) features[f].vocab.emplace_back(tok);
        toks.push_back(vit->second);
      };
      if (features[f].is_seq) {
        for (std::string_view tok : Split(raw, ' ', true)) add(tok);
      } else {
        add(raw);
      }
      features[f].values.push_back(std::move(toks));
      features[f].text.emplace_back(raw);
    }
  }
  return absl::OkStatus();
}

// Entities met only in .inter (no .user/.item file) get the "absent" feature.
void PadFeatures(std::vector<FeatureColumn>& features, size_t n) {
  for (FeatureColumn& f : features) {
    while (f.values.size() < n) {
      f.values.push_back({0});
      f.text.emplace_back();
    }
  }
}

}  // namespace

absl::StatusOr<AtomicDataset> ReadAtomicDataset(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  AtomicDataset ds;
  const std::string base = (fs::path(dir) / name).string();
  ds.inter_path = base + ".inter";
  std::error_code ec;
  if (!fs::exists(ds.inter_path, ec)) {
    return absl::NotFoundError(absl::StrCat(ds.inter_path, ": no such file (a ratings dataset ",
                                            "needs NAME.inter; see docs/reclora.md)"));
  }
  const bool has_user = fs::exists(base + ".user", ec);
  const bool has_item = fs::exists(base + ".item", ec);
  if (has_user) {
    RETURN_IF_ERROR(ReadEntities(base + ".user", "user_id", ds.user_ids, ds.user_index,
                                 ds.user_features));
  }
  if (has_item) {
    RETURN_IF_ERROR(ReadEntities(base + ".item", "item_id", ds.item_ids, ds.item_index,
                                 ds.item_features));
  }
  ASSIGN_OR_RETURN(Table t, ReadTable(ds.inter_path));
  ASSIGN_OR_RETURN(int uc, FindColumn(t, "user_id", "token"));
  ASSIGN_OR_RETURN(int ic, FindColumn(t, "item_id", "token"));
  ASSIGN_OR_RETURN(int rc, FindColumn(t, "rating", "float"));
  ASSIGN_OR_RETURN(int tc, FindColumn(t, "timestamp", "float"));
  for (size_t c = 0; c < t.columns.size(); ++c) {
    const int ci = static_cast<int>(c);
    if (ci != uc && ci != ic && ci != rc && ci != tc) {
      return LineError(ds.inter_path, 1,
                       absl::StrCat("column '", t.columns[c].name, ":", t.columns[c].type,
                                    "' is not supported in .inter (only user_id, item_id, "
                                    "rating, timestamp are read)"));
    }
  }
  ds.interactions.reserve(t.rows.size());
  for (size_t r = 0; r < t.rows.size(); ++r) {
    Interaction x;
    x.line = t.lines[r];
    auto lookup = [&](int col, bool exists_file, const std::string& kind,
                      std::vector<std::string>& ids,
                      absl::flat_hash_map<std::string, int32_t>& index,
                      int32_t& out) -> absl::Status {
      std::string id(t.rows[r][static_cast<size_t>(col)]);
      if (id.empty()) return LineError(ds.inter_path, x.line, absl::StrCat(kind, " is empty"));
      auto it = index.find(id);
      if (it != index.end()) {
        out = it->second;
        return absl::OkStatus();
      }
      if (exists_file) {
        return LineError(ds.inter_path, x.line,
                         absl::StrCat("unknown ", kind, " '", id, "' (not in ",
                                      base, kind == "user_id" ? ".user" : ".item", ")"));
      }
      out = static_cast<int32_t>(ids.size());
      index.emplace(id, out);
      ids.push_back(id);
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(lookup(uc, has_user, "user_id", ds.user_ids, ds.user_index, x.user));
    RETURN_IF_ERROR(lookup(ic, has_item, "item_id", ds.item_ids, ds.item_index, x.item));
    ASSIGN_OR_RETURN(double rating, ParseNumber(t, r, rc));
    ASSIGN_OR_RETURN(x.timestamp, ParseNumber(t, r, tc));
    x.rating = static_cast<float>(rating);
    ds.interactions.push_back(x);
  }
  if (ds.interactions.empty()) {
    return LineError(ds.inter_path, 2, "no interactions");
  }
  PadFeatures(ds.user_features, ds.user_ids.size());
  PadFeatures(ds.item_features, ds.item_ids.size());
  return ds;
}

}  // namespace sheaf::crm
