// Encodes and decodes texts with sheaf's tokenizer of a model directory or
// tokenizer.json, for tests/hf_reference.py to compare with the
// `tokenizers` library:
//   hf_tokenize_dump TOKENIZER TEXTS.json OUT.json
// TEXTS.json is a JSON list of strings; OUT.json gets, per text,
// {"ids": [...], "decoded": "..."} and the special ids.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/data/bpe_tokenizer.h"
#include "core/data/chat_data.h"
#include "core/data/chat_template.h"
#include "core/data/dataset.h"
#include "core/data/sentencepiece_tokenizer.h"
#include "core/json.h"

namespace {

// hf_tokenize_dump --chat FORMAT TOKENIZER.json CONVERSATIONS.json OUT.json
int Chat(char** argv) {
  using namespace sheaf;
  auto format = ParseChatFormat(argv[2]);
  auto tok = BpeTokenizer::Load(argv[3]);
  if (!format.ok() || !tok.ok()) {
    std::fprintf(stderr, "error: %s\n",
                 std::string((format.ok() ? tok.status() : format.status()).message()).c_str());
    return 2;
  }
  std::ifstream in(argv[4], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  auto convs = Json::Parse(ss.str());
  if (!convs.ok() || !convs->is_array()) return 2;
  Json rows = Json::Array();
  for (const Json& c : convs->elements()) {
    std::vector<ChatMessage> msgs;
    for (const Json& m : c.elements()) msgs.push_back({m.Find("role")->as_string(), m.Find("content")->as_string()});
    auto r = RenderChat(*format, msgs, **tok, false);
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(r.status().message()).c_str());
      return 2;
    }
    Json row = Json::Object();
    Json ids = Json::Array(), trained = Json::Array();
    for (int32_t id : r->ids) ids.Push(id);
    for (uint8_t t : r->trained) trained.Push(static_cast<int>(t));
    row.Set("ids", std::move(ids));
    row.Set("trained", std::move(trained));
    row.Set("text", r->text);
    rows.Push(std::move(row));
  }
  std::ofstream(argv[5], std::ios::binary) << rows.Dump();
  return 0;
}

// hf_tokenize_dump --chat-data TOKENIZER_DIR DATA.jsonl SEQ_LEN OUT.json
// The training rows sheaf makes of a chat JSONL (the chat template resolved
// from TOKENIZER_DIR/tokenizer_config.json as data.chat_template auto does,
// one conversation per row): {"inputs": [[...]], "targets": [[...]]} with
// -100 for targets without loss.
int ChatData(char** argv) {
  using namespace sheaf;
  const std::string dir = argv[2];
  auto tok = BpeTokenizer::Load(dir + "/tokenizer.json");
  if (!tok.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(tok.status().message()).c_str());
    return 2;
  }
  auto format = ResolveChatTemplate("auto", dir + "/tokenizer_config.json");
  if (!format.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(format.status().message()).c_str());
    return 2;
  }
  const int64_t seq_len = std::stoll(argv[4]);
  auto corpus = LoadChatCorpus({std::string(argv[3])}, *format, **tok, seq_len + 1, "data.train");
  if (!corpus.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(corpus.status().message()).c_str());
    return 2;
  }
  std::shared_ptr<const TokenCorpus> c = std::move(*corpus);
  DatasetOptions o;
  o.seq_len = seq_len;
  o.one_per_row = true;
  auto ds = Dataset::Create(o, c, c);
  if (!ds.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(ds.status().message()).c_str());
    return 2;
  }
  const int64_t n = (*ds)->num_validation_sequences();
  std::vector<int32_t> in(static_cast<size_t>(n * seq_len)), tg(in.size());
  auto rows = (*ds)->GetValidationBatch(0, n, absl::MakeSpan(in), absl::MakeSpan(tg));
  if (!rows.ok()) return 2;
  Json out = Json::Object(), inputs = Json::Array(), targets = Json::Array();
  for (int64_t r = 0; r < n; ++r) {
    Json a = Json::Array(), b = Json::Array();
    for (int64_t t = 0; t < seq_len; ++t) {
      a.Push(in[static_cast<size_t>(r * seq_len + t)]);
      b.Push(tg[static_cast<size_t>(r * seq_len + t)]);
    }
    inputs.Push(std::move(a));
    targets.Push(std::move(b));
  }
  out.Set("inputs", std::move(inputs));
  out.Set("targets", std::move(targets));
  out.Set("format", *format == ChatFormat::kChatFormatLlama3 ? "llama3" : "chatml");
  std::ofstream(argv[5], std::ios::binary) << out.Dump();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sheaf;
  if (argc == 6 && std::string(argv[1]) == "--chat") return Chat(argv);
  if (argc == 6 && std::string(argv[1]) == "--chat-data") return ChatData(argv);
  if (argc != 4) {
    std::fprintf(stderr, "usage: hf_tokenize_dump TOKENIZER.json TEXTS.json OUT.json\n");
    return 2;
  }
  std::unique_ptr<Tokenizer> tokp;
  bool adds_bos = false;
  const std::string path = argv[1];
  if (path.size() > 6 && path.substr(path.size() - 6) == ".model") {
    auto sp = SentencePieceTokenizer::Load(path);
    if (!sp.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(sp.status().message()).c_str());
      return 2;
    }
    adds_bos = (*sp)->adds_bos();
    tokp = std::move(*sp);
  } else {
    auto bpe = BpeTokenizer::Load(path);
    if (!bpe.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(bpe.status().message()).c_str());
      return 2;
    }
    adds_bos = (*bpe)->adds_bos();
    tokp = std::move(*bpe);
  }
  const std::unique_ptr<Tokenizer>* tok = &tokp;
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  auto texts = Json::Parse(ss.str());
  if (!texts.ok() || !texts->is_array()) {
    std::fprintf(stderr, "error: %s is not a JSON list\n", argv[2]);
    return 2;
  }
  Json out = Json::Object();
  Json rows = Json::Array();
  for (const Json& t : texts->elements()) {
    std::vector<int32_t> ids = (*tok)->Encode(t.as_string());
    Json row = Json::Object();
    Json arr = Json::Array();
    for (int32_t id : ids) arr.Push(id);
    row.Set("ids", std::move(arr));
    auto dec = (*tok)->Decode(ids);
    row.Set("decoded", dec.ok() ? Json(*dec) : Json(nullptr));
    rows.Push(std::move(row));
  }
  out.Set("rows", std::move(rows));
  out.Set("bos_id", (*tok)->bos_id());
  out.Set("eos_id", (*tok)->eos_id());
  out.Set("adds_bos", adds_bos);
  out.Set("vocab_size", (*tok)->vocab_size());
  std::ofstream(argv[3], std::ios::binary) << out.Dump();
  return 0;
}
