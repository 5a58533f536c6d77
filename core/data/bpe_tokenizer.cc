#include "core/data/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/json.h"
#include "core/status.h"

namespace sheaf {

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

namespace {

// GPT-2's pre-tokenizer (the ByteLevel pre-tokenizer's use_regex).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

absl::Status Bad(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", std::string(what)));
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence at s[i] (1-4), or 0 when invalid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
int Utf8Len(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  int n = 0;
  uint32_t cp = 0;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; }
  else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; }
  else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; }
  else return 0;
  if (i + static_cast<size_t>(n) > s.size()) return 0;
  for (int k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
    if ((d & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3F);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

uint32_t DecodeCp(std::string_view s, size_t i, int n) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3F);
  return cp;
}

absl::StatusOr<Json> ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<Json> j = Json::Parse(ss.str());
  if (!j.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", j.status().message()));
  if (!j->is_object()) return Bad(path, "not a JSON object");
  return j;
}

// tokenizer_config.json's bos_token etc.: a string, an AddedToken object
// {"content": ...}, or null.
std::string TokenContent(const Json* v) {
  if (v == nullptr || v->is_null()) return "";
  if (v->is_string()) return v->as_string();
  if (v->is_object()) {
    if (const Json* c = v->Find("content"); c != nullptr && c->is_string()) return c->as_string();
  }
  return "";
}

}  // namespace

BpeTokenizer::~BpeTokenizer() = default;

int32_t BpeTokenizer::TokenId(std::string_view token) const {
  for (const Added& a : added_) {
    if (a.content == token) return a.id;
  }
  auto it = vocab_.find(std::string(token));
  return it == vocab_.end() ? -1 : it->second;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Load(const std::string& path) {
  ASSIGN_OR_RETURN(Json j, ReadJson(path));
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->path_ = path;

  auto compile = [&](const std::string& pattern, absl::string_view where)
      -> absl::StatusOr<std::unique_ptr<Regex>> {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return Bad(path, absl::StrCat(std::string(where), ": regex does not compile at offset ", off,
                                    ": ", reinterpret_cast<const char*>(msg)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
    auto r = std::make_unique<Regex>();
    r->code = code;
    return r;
  };

  // Top-level components.
  for (const Json::Member& m : j.items()) {
    const std::string& k = m.first;
    if (k == "version" || k == "added_tokens" || k == "normalizer" || k == "pre_tokenizer" ||
        k == "post_processor" || k == "decoder" || k == "model") {
      continue;
    }
    if ((k == "truncation" || k == "padding") && m.second.is_null()) continue;
    if (k == "truncation" || k == "padding") {
      return Bad(path, absl::StrCat(k, ": must be null (sheaf's data pipeline cuts and packs sequences itself)"));
    }
    return Bad(path, absl::StrCat(k, ": unknown component"));
  }

  // The model.
  const Json* model = j.Find("model");
  if (model == nullptr || !model->is_object()) return Bad(path, "model: missing");
  const Json* type = model->Find("type");
  if (type == nullptr || !type->is_string() || type->as_string() != "BPE") {
    return Bad(path, absl::StrCat("model.type: ", type ? type->Dump() : "missing",
                                  " is not supported (only BPE)"));
  }
  for (const Json::Member& m : model->items()) {
    const std::string& k = m.first;
    const Json& v = m.second;
    if (k == "type" || k == "vocab" || k == "merges" || k == "unk_token" || k == "fuse_unk") continue;
    if (k == "ignore_merges") {
      if (!v.is_bool()) return Bad(path, "model.ignore_merges: must be true or false");
      t->ignore_merges_ = v.as_bool();
    } else if (k == "dropout") {
      if (!v.is_null() && !(v.is_number() && v.as_double() == 0.0)) {
        return Bad(path, "model.dropout: BPE dropout is not supported");
      }
    } else if (k == "continuing_subword_prefix" || k == "end_of_word_suffix") {
      if (!v.is_null() && !(v.is_string() && v.as_string().empty())) {
        return Bad(path, absl::StrCat("model.", k, ": is not supported (byte-level BPE has none)"));
      }
    } else if (k == "byte_fallback") {
      if (!(v.is_bool() && !v.as_bool())) {
        return Bad(path, "model.byte_fallback: is not supported (SentencePiece-style BPE; byte-level only)");
      }
    } else {
      return Bad(path, absl::StrCat("model.", k, ": unknown field"));
    }
  }
  const Json* vocab = model->Find("vocab");
  if (vocab == nullptr || !vocab->is_object()) return Bad(path, "model.vocab: missing or not an object");
  int64_t max_id = -1;
  for (const Json::Member& m : vocab->items()) {
    if (!m.second.is_int64() || m.second.as_int64() < 0 || m.second.as_int64() >= (int64_t{1} << 24)) {
      return Bad(path, absl::StrCat("model.vocab[\"", m.first, "\"]: id must be an integer in [0, 2^24)"));
    }
    t->vocab_[m.first] = static_cast<int32_t>(m.second.as_int64());
    max_id = std::max(max_id, m.second.as_int64());
  }
  // Added tokens.
  const Json* added = j.Find("added_tokens");
  std::vector<Added> added_list;
  if (added != nullptr && !added->is_null()) {
    if (!added->is_array()) return Bad(path, "added_tokens: must be a list");
    for (size_t i = 0; i < added->size(); ++i) {
      const Json& a = (*added)[i];
      const std::string where = absl::StrCat("added_tokens[", i, "]");
      const Json* id = a.Find("id");
      const Json* content = a.Find("content");
      if (id == nullptr || !id->is_int64() || id->as_int64() < 0 || id->as_int64() >= (int64_t{1} << 24) ||
          content == nullptr || !content->is_string() || content->as_string().empty()) {
        return Bad(path, absl::StrCat(where, ": needs an id in [0, 2^24) and a non-empty content"));
      }
      for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
        if (const Json* f = a.Find(flag); f != nullptr && f->is_bool() && f->as_bool()) {
          return Bad(path, absl::StrCat(where, ".", flag, ": true is not supported"));
        }
      }
      added_list.push_back({content->as_string(), static_cast<int32_t>(id->as_int64())});
      max_id = std::max(max_id, id->as_int64());
    }
  }
  t->vocab_size_ = static_cast<int32_t>(max_id + 1);
  t->id_to_token_.assign(static_cast<size_t>(t->vocab_size_), "");
  t->is_added_.assign(static_cast<size_t>(t->vocab_size_), false);
  for (const auto& [tok, id] : t->vocab_) t->id_to_token_[static_cast<size_t>(id)] = tok;
  for (const Added& a : added_list) {
    t->id_to_token_[static_cast<size_t>(a.id)] = a.content;
    t->is_added_[static_cast<size_t>(a.id)] = true;
  }
  std::stable_sort(added_list.begin(), added_list.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });
  t->added_ = std::move(added_list);
  if (const Json* unk = model->Find("unk_token"); unk != nullptr && unk->is_string()) {
    t->unk_id_ = t->TokenId(unk->as_string());
  }
  // Merges: "a b" strings or ["a", "b"] pairs, rank = position.
  const Json* merges = model->Find("merges");
  if (merges == nullptr || !merges->is_array()) return Bad(path, "model.merges: missing or not a list");
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& m = (*merges)[i];
    std::string a, b;
    if (m.is_string()) {
      const size_t sp = m.as_string().find(' ');
      if (sp == std::string::npos) return Bad(path, absl::StrCat("model.merges[", i, "]: not \"a b\""));
      a = m.as_string().substr(0, sp);
      b = m.as_string().substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].as_string();
      b = m[1].as_string();
    } else {
      return Bad(path, absl::StrCat("model.merges[", i, "]: not \"a b\" or [a, b]"));
    }
    auto ia = t->vocab_.find(a), ib = t->vocab_.find(b), iab = t->vocab_.find(a + b);
    if (ia == t->vocab_.end() || ib == t->vocab_.end() || iab == t->vocab_.end()) {
      return Bad(path, absl::StrCat("model.merges[", i, "]: \"", a, "\" + \"", b,
                                    "\" uses or makes a token that is not in the vocab"));
    }
    const uint64_t key = (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint32_t>(ib->second);
    t->merges_.emplace(key, std::make_pair(static_cast<int32_t>(i), iab->second));
  }

  // Normalizer: null, NFC, or a Sequence of those.
  std::function<absl::Status(const Json&, const std::string&)> normalizer =
      [&](const Json& n, const std::string& where) -> absl::Status {
    if (n.is_null()) return absl::OkStatus();
    const Json* nt = n.Find("type");
    const std::string ty = nt && nt->is_string() ? nt->as_string() : "";
    if (ty == "NFC") {
      t->nfc_ = true;
      return absl::OkStatus();
    }
    if (ty == "Sequence") {
      const Json* list = n.Find("normalizers");
      if (list == nullptr || !list->is_array()) return Bad(path, absl::StrCat(where, ".normalizers: missing"));
      for (size_t i = 0; i < list->size(); ++i) {
        RETURN_IF_ERROR(normalizer((*list)[i], absl::StrCat(where, ".normalizers[", i, "]")));
      }
      return absl::OkStatus();
    }
    return Bad(path, absl::StrCat(where, ": normalizer \"", ty,
                                  "\" is not supported (only NFC, as Qwen2 uses, or none)"));
  };
  if (const Json* n = j.Find("normalizer"); n != nullptr) RETURN_IF_ERROR(normalizer(*n, "normalizer"));

  // Pre-tokenizers: Split(s), then ByteLevel (required, last).
  bool byte_level = false;
  std::function<absl::Status(const Json&, const std::string&)> pre =
      [&](const Json& p, const std::string& where) -> absl::Status {
    const Json* pt = p.Find("type");
    const std::string ty = pt && pt->is_string() ? pt->as_string() : "";
    if (ty == "Sequence") {
      const Json* list = p.Find("pretokenizers");
      if (list == nullptr || !list->is_array()) return Bad(path, absl::StrCat(where, ".pretokenizers: missing"));
      for (size_t i = 0; i < list->size(); ++i) {
        RETURN_IF_ERROR(pre((*list)[i], absl::StrCat(where, ".pretokenizers[", i, "]")));
      }
      return absl::OkStatus();
    }
    if (byte_level) return Bad(path, absl::StrCat(where, ": a pre-tokenizer after ByteLevel is not supported"));
    if (ty == "Split") {
      const Json* pattern = p.Find("pattern");
      const Json* regex = pattern && pattern->is_object() ? pattern->Find("Regex") : nullptr;
      const Json* literal = pattern && pattern->is_object() ? pattern->Find("String") : nullptr;
      const Json* behavior = p.Find("behavior");
      const Json* invert = p.Find("invert");
      if (behavior == nullptr || !behavior->is_string() || behavior->as_string() != "Isolated") {
        return Bad(path, absl::StrCat(where, ".behavior: only \"Isolated\" is supported"));
      }
      if (invert != nullptr && !(invert->is_bool() && !invert->as_bool())) {
        return Bad(path, absl::StrCat(where, ".invert: only false is supported"));
      }
      std::string pat;
      if (regex != nullptr && regex->is_string()) {
        pat = regex->as_string();
      } else if (literal != nullptr && literal->is_string()) {
        for (char c : literal->as_string()) {
          if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) pat.push_back('\\');
          pat.push_back(c);
        }
      } else {
        return Bad(path, absl::StrCat(where, ".pattern: needs Regex or String"));
      }
      ASSIGN_OR_RETURN(std::unique_ptr<Regex> r, compile(pat, where));
      t->splits_.push_back(std::move(r));
      return absl::OkStatus();
    }
    if (ty == "ByteLevel") {
      byte_level = true;
      if (const Json* aps = p.Find("add_prefix_space"); aps != nullptr && aps->is_bool()) {
        t->add_prefix_space_ = aps->as_bool();
      }
      const Json* use = p.Find("use_regex");
      if (use == nullptr || (use->is_bool() && use->as_bool())) {
        ASSIGN_OR_RETURN(t->byte_level_regex_, compile(kGpt2Pattern, where));
      }
      return absl::OkStatus();
    }
    return Bad(path, absl::StrCat(where, ": pre-tokenizer \"", ty,
                                  "\" is not supported (byte-level BPE: Split and ByteLevel)"));
  };
  const Json* p = j.Find("pre_tokenizer");
  if (p == nullptr || p->is_null()) return Bad(path, "pre_tokenizer: missing (not a byte-level BPE tokenizer)");
  RETURN_IF_ERROR(pre(*p, "pre_tokenizer"));
  if (!byte_level) return Bad(path, "pre_tokenizer: has no ByteLevel step (not a byte-level BPE tokenizer)");
  // Decoder: ByteLevel (alone or in a Sequence).
  const Json* d = j.Find("decoder");
  const Json* dt = d && d->is_object() ? d->Find("type") : nullptr;
  if (dt == nullptr || !dt->is_string() || dt->as_string() != "ByteLevel") {
    return Bad(path, absl::StrCat("decoder: ", d ? d->Dump() : "missing", " is not supported (only ByteLevel)"));
  }

  // bytes_to_unicode: printable bytes stand for themselves, the others for
  // U+0100 onwards, in byte order.
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + next++);
    AppendUtf8(cp, &t->byte_to_unicode_[b]);
    t->unicode_to_byte_[cp] = static_cast<uint8_t>(b);
  }

  // Special tokens: tokenizer_config.json, else the model's config files.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const std::string tc_path = (dir.empty() ? std::string(".") : dir) + "/tokenizer_config.json";
  std::error_code ec;
  bool add_bos_known = false;
  if (std::filesystem::is_regular_file(tc_path, ec)) {
    ASSIGN_OR_RETURN(Json tc, ReadJson(tc_path));
    auto special = [&](const char* key, int32_t* id) -> absl::Status {
      const std::string content = TokenContent(tc.Find(key));
      if (content.empty()) return absl::OkStatus();
      *id = t->TokenId(content);
      if (*id < 0) return Bad(tc_path, absl::StrCat(key, ": \"", content, "\" is not a token of ", path));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(special("bos_token", &t->bos_id_));
    RETURN_IF_ERROR(special("eos_token", &t->eos_id_));
    RETURN_IF_ERROR(special("pad_token", &t->pad_id_));
    if (const Json* ab = tc.Find("add_bos_token"); ab != nullptr && ab->is_bool()) {
      t->add_bos_ = ab->as_bool();
      add_bos_known = true;
    }
  }
  for (const char* file : {"generation_config.json", "config.json"}) {
    const std::string fp = (dir.empty() ? std::string(".") : dir) + "/" + file;
    if (!std::filesystem::is_regular_file(fp, ec)) continue;
    absl::StatusOr<Json> c = ReadJson(fp);
    if (!c.ok()) continue;  // config.json errors are reported by its own reader
    auto id_of = [&](const char* key, int32_t* id) {
      if (*id >= 0) return;
      const Json* v = c->Find(key);
      if (v != nullptr && v->is_array() && v->size() > 0) v = &(*v)[0];
      if (v != nullptr && v->is_int64() && v->as_int64() >= 0 && v->as_int64() < t->vocab_size_) {
        *id = static_cast<int32_t>(v->as_int64());
      }
    };
    id_of("bos_token_id", &t->bos_id_);
    id_of("eos_token_id", &t->eos_id_);
    id_of("pad_token_id", &t->pad_id_);
  }
  if (!add_bos_known) {
    // The post-processor's template says whether a BOS is added.
    const Json* pp = j.Find("post_processor");
    const Json* ppt = pp && pp->is_object() ? pp->Find("type") : nullptr;
    if (ppt && ppt->is_string() && ppt->as_string() == "TemplateProcessing") {
      const Json* single = pp->Find("single");
      t->add_bos_ = single && single->is_array() && single->size() > 0 && (*single)[0].Find("SpecialToken") != nullptr;
    } else {
      t->add_bos_ = false;
    }
  }
  if (t->eos_id_ < 0) {
    return Bad(path, "no EOS token: tokenizer_config.json eos_token, generation_config.json or "
                     "config.json eos_token_id must name one");
  }
  return t;
}

void BpeTokenizer::EncodePiece(std::string_view mapped, std::vector<int32_t>* out) const {
  if (mapped.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(absl::string_view(mapped.data(), mapped.size())); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  {
    absl::MutexLock lock(&cache_mu_);
    auto it = cache_.find(absl::string_view(mapped.data(), mapped.size()));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  // Symbols: one per character.
  std::vector<int32_t> sym;
  for (size_t i = 0; i < mapped.size();) {
    int n = Utf8Len(mapped, i);
    if (n == 0) n = 1;
    auto it = vocab_.find(absl::string_view(mapped.data() + i, static_cast<size_t>(n)));
    if (it != vocab_.end()) {
      sym.push_back(it->second);
    } else if (unk_id_ >= 0) {
      sym.push_back(unk_id_);
    }  // else: dropped, as the library does without an unk token
    i += static_cast<size_t>(n);
  }
  while (sym.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max(), merged = -1;
    size_t best = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(sym[i]) << 32) | static_cast<uint32_t>(sym[i + 1]);
      auto it = merges_.find(key);
      if (it != merges_.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        merged = it->second.second;
        best = i;
      }
    }
    if (merged < 0) break;
    sym[best] = merged;
    sym.erase(sym.begin() + static_cast<long>(best) + 1);
  }
  out->insert(out->end(), sym.begin(), sym.end());
  absl::MutexLock lock(&cache_mu_);
  if (cache_.size() >= kCacheEntries) cache_.clear();
  cache_.emplace(std::string(mapped), std::move(sym));
}

namespace {

// Splits each piece by `re` into matches and the gaps between them
// ("Isolated").
std::vector<std::string> SplitIsolated(pcre2_code* re, const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
  for (const std::string& s : pieces) {
    size_t pos = 0, last = 0;
    while (pos <= s.size()) {
      const int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                 PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: step one character
        if (b >= s.size()) break;
        pos = b + static_cast<size_t>(std::max(1, Utf8Len(s, b)));
        continue;
      }
      if (b > last) out.push_back(s.substr(last, b - last));
      out.push_back(s.substr(b, e - b));
      last = pos = e;
    }
    if (last < s.size()) out.push_back(s.substr(last));
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace

void BpeTokenizer::EncodeValidUtf8(std::string_view text, std::vector<int32_t>* out) const {
  std::string normalized;
  if (nfc_) {
    UErrorCode st = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(st);
    if (U_SUCCESS(st)) {
      icu::StringByteSink<std::string> sink(&normalized);
      n->normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), sink,
                       nullptr, st);
    }
    if (U_FAILURE(st)) normalized.assign(text);
  } else {
    normalized.assign(text);
  }
  std::vector<std::string> pieces = {normalized};
  for (const auto& r : splits_) pieces = SplitIsolated(r->code, pieces);
  if (add_prefix_space_) {
    for (std::string& p : pieces) {
      if (!p.empty() && p[0] != ' ') p.insert(p.begin(), ' ');
    }
  }
  if (byte_level_regex_) pieces = SplitIsolated(byte_level_regex_->code, pieces);
  std::string mapped;
  for (const std::string& p : pieces) {
    mapped.clear();
    for (unsigned char c : p) mapped += byte_to_unicode_[c];
    EncodePiece(mapped, out);
  }
}

void BpeTokenizer::EncodeSegment(std::string_view text, std::vector<int32_t>* out) const {
  // Valid UTF-8 runs through the pipeline; each invalid byte on its own.
  size_t i = 0, run = 0;
  while (i < text.size()) {
    const int n = Utf8Len(text, i);
    if (n > 0) {
      i += static_cast<size_t>(n);
      continue;
    }
    if (i > run) EncodeValidUtf8(text.substr(run, i - run), out);
    EncodePiece(byte_to_unicode_[static_cast<unsigned char>(text[i])], out);
    run = ++i;
  }
  if (run < text.size()) EncodeValidUtf8(text.substr(run), out);
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> out;
  size_t seg = 0;
  for (size_t i = 0; i < text.size();) {
    const Added* hit = nullptr;
    for (const Added& a : added_) {  // longest first
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    if (i > seg) EncodeSegment(text.substr(seg, i - seg), &out);
    out.push_back(hit->id);
    i += hit->content.size();
    seg = i;
  }
  if (seg < text.size()) EncodeSegment(text.substr(seg), &out);
  return out;
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> tokens) const {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": Decode: token ", i, " has id ", id,
                                                     ", outside [0, ", vocab_size_, ")"));
    }
    if (id == bos_id_ || id == eos_id_) continue;
    const std::string& tok = id_to_token_[static_cast<size_t>(id)];
    // The ByteLevel decoder: every character back to its byte, or the
    // token as it is when one character is not a stand-in.
    std::string bytes;
    bool all = true;
    for (size_t k = 0; k < tok.size();) {
      int n = Utf8Len(tok, k);
      if (n == 0) { all = false; break; }
      auto it = unicode_to_byte_.find(DecodeCp(tok, k, n));
      if (it == unicode_to_byte_.end()) { all = false; break; }
      bytes.push_back(static_cast<char>(it->second));
      k += static_cast<size_t>(n);
    }
    out += all ? bytes : tok;
  }
  return out;
}

}  // namespace sheaf
