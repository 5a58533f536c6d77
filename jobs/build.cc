#include "jobs/build.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/data/document_source.h"
#include "core/data/bpe_tokenizer.h"
#include "core/data/chat_data.h"
#include "core/data/sentencepiece_tokenizer.h"
#include "core/data/token_file.h"
#include "core/status.h"
#include "jobs/seeds.h"

namespace sheaf::jobs {
namespace {

using TokenizerMaker = std::function<std::unique_ptr<Tokenizer>()>;

const std::vector<std::pair<std::string, TokenizerMaker>>& Tokenizers() {
  static const auto* table = new std::vector<std::pair<std::string, TokenizerMaker>>{
      {"byte", [] { return std::make_unique<ByteTokenizer>(); }},
  };
  return *table;
}

}  // namespace

std::vector<std::string> TokenizerNames() {
  std::vector<std::string> names;
  for (const auto& [name, make] : Tokenizers()) names.push_back(name);
  return names;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& name_in) {
  const std::string name = name_in.empty() ? "byte" : name_in;
  for (const auto& [known, make] : Tokenizers()) {
    if (known == name) return make();
  }
  return absl::InvalidArgumentError(absl::StrCat("data.tokenizer: \"", name,
                                                 "\" is not available yet (use ",
                                                 absl::StrJoin(TokenizerNames(), ", "), ")"));
}

absl::StatusOr<std::string> ResolveTokenizer(const std::string& name, const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string file;
  if (name.empty() || name == "auto") {
    if (model_dir.empty()) return std::string("byte");
    if (fs::is_regular_file(fs::path(model_dir) / "tokenizer.json", ec)) {
      file = model_dir + "/tokenizer.json";
    } else if (fs::is_regular_file(fs::path(model_dir) / "tokenizer.model", ec)) {
      file = model_dir + "/tokenizer.model";
    } else {
      // No tokenizer file: bytes only for a byte-vocabulary model (sheaf's
      // own), never silently for a model with another vocabulary.
      ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(model_dir));
      if (config.vocab_size == ByteTokenizer::kVocabSize) return std::string("byte");
      return absl::InvalidArgumentError(absl::StrCat(
          "data.tokenizer: auto (the default) found neither tokenizer.json nor tokenizer.model in ",
          model_dir, ", and its vocab_size ", config.vocab_size, " is not the byte vocabulary (",
          ByteTokenizer::kVocabSize, "); put the model's tokenizer file there or set data.tokenizer "
          "(--tokenizer) to a tokenizer.json / tokenizer.model path, or to byte"));
    }
  } else if (name == "tokenizer.json" || name == "tokenizer.model") {
    if (model_dir.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("data.tokenizer: \"", name,
                                                     "\" names a file of base_model, and there is none"));
    }
    file = model_dir + "/" + name;
  } else if (name.ends_with(".json") || name.ends_with(".model")) {
    file = name;
  } else {
    RETURN_IF_ERROR(MakeTokenizer(name).status());
    return name;
  }
  if (!fs::is_regular_file(file, ec)) {
    return absl::NotFoundError(absl::StrCat("data.tokenizer: ", file, " does not exist"));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizerForModel(const std::string& name,
                                                                 const std::string& model_dir) {
  ASSIGN_OR_RETURN(const std::string file, ResolveTokenizer(name, model_dir));
  if (!file.ends_with(".json") && !file.ends_with(".model")) return MakeTokenizer(file);
  if (file.ends_with(".json")) {
    ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> t, BpeTokenizer::Load(file));
    return std::unique_ptr<Tokenizer>(std::move(t));
  }
  // SentencePiece through its dlopen'ed shim (core/data/sentencepiece_dl.cc):
  // Debian's libsentencepiece carries its own protobuf, kept out of the
  // process' global scope.
  absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> sp = SentencePieceTokenizer::Load(file);
  if (!sp.ok()) {
    return absl::Status(sp.status().code(), absl::StrCat("data.tokenizer: ", sp.status().message()));
  }
  return std::unique_ptr<Tokenizer>(std::move(*sp));
}

namespace {

// The directory of the tokenizer file MakeTokenizerForModel reads for
// `name` (its tokenizer_config.json is beside it).
std::string TokenizerDir(const std::string& name, const std::string& model_dir) {
  if (name.empty() || name == "auto" || name == "tokenizer.json" || name == "tokenizer.model") {
    return model_dir;
  }
  return std::filesystem::path(name).parent_path().string();
}

absl::StatusOr<std::shared_ptr<const TokenCorpus>> LoadChatData(
    const google::protobuf::RepeatedPtrField<std::string>& paths, const proto::JobSpec& spec,
    const Tokenizer& tokenizer, const char* key) {
  const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer);
  if (bpe == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.format: chat needs a byte-level BPE tokenizer.json (the built-in chat templates' "
        "special tokens); data.tokenizer ", spec.data().tokenizer(), " is not one"));
  }
  std::string dir = TokenizerDir(spec.data().tokenizer(), spec.base_model());
  if (dir.empty()) dir = ".";
  ASSIGN_OR_RETURN(const ChatFormat format,
                   ResolveChatTemplate(spec.data().chat_template(), dir + "/tokenizer_config.json"));
  // The Llama-3 template writes bos_token first; ours writes
  // <|begin_of_text|>: the same only when that is the tokenizer's BOS.
  if (format == ChatFormat::kChatFormatLlama3 && bpe->TokenId("<|begin_of_text|>") >= 0 &&
      bpe->bos_id() != bpe->TokenId("<|begin_of_text|>")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.chat_template: llama3 starts with bos_token, and the BOS of ", dir,
        "/tokenizer_config.json is not <|begin_of_text|>"));
  }
  std::vector<std::string> files(paths.begin(), paths.end());
  ASSIGN_OR_RETURN(std::unique_ptr<InMemoryCorpus> c,
                   LoadChatCorpus(files, format, *bpe, spec.data().seq_len() + 1, key));
  return std::shared_ptr<const TokenCorpus>(std::move(c));
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TokenCorpus>> LoadCorpus(
    const google::protobuf::RepeatedPtrField<std::string>& paths, proto::DataSpec::Format format,
    const Tokenizer& tokenizer, const char* key) {
  if (format == proto::DataSpec::FORMAT_CHAT) {
    // Chat needs the template and a loss mask: BuildData reads it.
    return absl::InvalidArgumentError(absl::StrCat(
        key, ": data.format chat is not read here (only a job's own data section takes it)"));
  }
  if (format == proto::DataSpec::FORMAT_TOKENS) {
    if (paths.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": format tokens takes exactly one .tok file, got ", paths.size()));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<TokenFile> f, TokenFile::Open(paths[0]));
    if (f->vocab_size() != tokenizer.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(key, ": ", paths[0], " has vocab ",
                                                     f->vocab_size(), ", the tokenizer ",
                                                     tokenizer.vocab_size()));
    }
    return std::shared_ptr<const TokenCorpus>(std::move(f));
  }
  std::vector<DocumentSource> sources;
  for (const std::string& p : paths) {
    DocumentSource s;
    s.path = p;
    s.split_blank_lines = format == proto::DataSpec::FORMAT_TEXT_PARAGRAPHS;
    if (format == proto::DataSpec::FORMAT_JSONL) s.format = SourceFormat::kSourceFormatJsonl;
    sources.push_back(std::move(s));
  }
  ASSIGN_OR_RETURN(std::vector<Document> docs, LoadDocuments(sources));
  ASSIGN_OR_RETURN(std::unique_ptr<InMemoryCorpus> c, InMemoryCorpus::FromDocuments(docs, tokenizer));
  return std::shared_ptr<const TokenCorpus>(std::move(c));
}

absl::StatusOr<ModelConfig> ConfigFromShape(const proto::ModelShape& s) {
  ModelConfig c;
  c.hidden_size = s.hidden_size();
  c.num_layers = s.num_hidden_layers();
  c.vocab_size = s.vocab_size();
  const int heads = s.num_attention_heads();
  const int kv = s.has_num_key_value_heads() ? s.num_key_value_heads() : heads;
  c.head_dim = s.has_head_dim() ? s.head_dim() : (heads > 0 ? c.hidden_size / heads : 0);
  c.max_position_embeddings = s.has_max_position_embeddings() ? s.max_position_embeddings() : 2048;
  c.rope_theta = s.has_rope_theta() ? static_cast<float>(s.rope_theta()) : 10000.0f;
  c.rms_norm_eps = s.has_rms_norm_eps() ? static_cast<float>(s.rms_norm_eps()) : 1e-5f;
  c.tie_word_embeddings = s.has_tie_word_embeddings() ? s.tie_word_embeddings() : false;
  c.layers.assign(static_cast<size_t>(std::max(c.num_layers, 0)),
                  LayerShape{heads, kv, s.intermediate_size()});
  absl::Status st = c.Validate();
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("pretrain.model: ", st.message()));
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfigForSpec(const proto::JobSpec& spec) {
  ModelConfig config;
  if (!spec.base_model().empty()) {
    ASSIGN_OR_RETURN(config, LoadModelConfig(spec.base_model()));
  } else {
    ASSIGN_OR_RETURN(config, ConfigFromShape(spec.pretrain().model()));
    // The exported config.json names the special ids of the byte tokenizer
    // it is trained with (transformers would assume 1 and 2 otherwise).
    const std::string& tok = spec.data().tokenizer();
    if ((tok.empty() || tok == "byte" || tok == "auto") && config.vocab_size > ByteTokenizer::kEosId) {
      config.bos_token_id = ByteTokenizer::kBosId;
      config.eos_token_id = ByteTokenizer::kEosId;
    }
  }
  const int T = spec.data().seq_len();
  if (T > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("data.seq_len: ", T,
                                                   " exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  if (config.sliding_window > 0 && T > config.sliding_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.seq_len: ", T, " exceeds the model's sliding_window ", config.sliding_window,
        " (sliding-window attention is not implemented; use seq_len <= ", config.sliding_window,
        ")"));
  }
  return config;
}

absl::StatusOr<DataParts> BuildData(const proto::JobSpec& spec, const ModelConfig& config) {
  DataParts parts;
  ASSIGN_OR_RETURN(parts.tokenizer, MakeTokenizerForModel(spec.data().tokenizer(), spec.base_model()));
  if (config.vocab_size < parts.tokenizer->vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "base_model: vocab_size ", config.vocab_size, " is smaller than the ",
        spec.data().tokenizer().empty() || spec.data().tokenizer() == "auto" ? "model's"
                                                                             : spec.data().tokenizer(),
        " tokenizer's ",
        parts.tokenizer->vocab_size()));
  }
  const bool chat = spec.data().format() == proto::DataSpec::FORMAT_CHAT;
  if (chat) {
    ASSIGN_OR_RETURN(parts.train, LoadChatData(spec.data().train(), spec, *parts.tokenizer, "data.train"));
    if (spec.data().val_size() > 0) {
      ASSIGN_OR_RETURN(parts.val, LoadChatData(spec.data().val(), spec, *parts.tokenizer, "data.val"));
    }
  } else {
    ASSIGN_OR_RETURN(parts.train, LoadCorpus(spec.data().train(), spec.data().format(),
                                             *parts.tokenizer, "data.train"));
    if (spec.data().val_size() > 0) {
      ASSIGN_OR_RETURN(parts.val, LoadCorpus(spec.data().val(), spec.data().format(),
                                             *parts.tokenizer, "data.val"));
    }
  }
  DatasetOptions dopt;
  dopt.one_per_row = chat;
  dopt.seq_len = spec.data().seq_len();
  dopt.seed = spec.seed();
  dopt.val_fraction = spec.data().val_size() > 0 ? 0.0 : spec.data().val_fraction();
  ASSIGN_OR_RETURN(parts.dataset, Dataset::Create(dopt, parts.train, parts.val));
  return parts;
}

LoraOptions LoraOptionsFromSpec(const proto::AdapterSpec& a, uint64_t seed) {
  LoraOptions lo;
  lo.rank = a.rank();
  lo.alpha = static_cast<float>(a.alpha());
  lo.dropout = static_cast<float>(a.dropout());
  lo.rslora = a.rslora();
  lo.targets.assign(a.targets().begin(), a.targets().end());
  lo.layers.assign(a.layers().begin(), a.layers().end());
  lo.seed = AdapterInitSeed(seed);
  return lo;
}

absl::StatusOr<ModelParts> BuildModel(const proto::JobSpec& spec, const ModelConfig& config,
                                      const ModelBuildOptions& options) {
  ModelParts parts;
  const int world_size = options.comm != nullptr ? options.comm->world_size() : 1;
  const bool all_weights = spec.has_pretrain();
  ModelOptions mopt;
  mopt.external_frozen = !all_weights && world_size > 1;
  mopt.frozen_dtype = options.frozen_dtype;
  if (spec.train().compute() == "bf16") mopt.compute = DType::kDTypeBF16;  // train.compute
  // The file's headers against the config before anything is allocated
  // (a vocab_size of 2^24 in a bad config.json must not allocate first).
  if (!spec.base_model().empty()) RETURN_IF_ERROR(CheckWeightsMatchConfig(config, spec.base_model()));
  ASSIGN_OR_RETURN(parts.model,
                   Model::Create(config,
                                 all_weights ? TrainablePredicate(EverythingTrainable)
                                             : TrainablePredicate(NothingTrainable),
                                 mopt));
  if (mopt.external_frozen) {
    dist::ShardedWeights::Options so;
    so.gather_budget_bytes = options.gather_budget_bytes;
    ASSIGN_OR_RETURN(parts.sharded, dist::ShardedWeights::Create(parts.model.get(), options.comm,
                                                                 spec.base_model(), so));
  } else if (!spec.base_model().empty()) {
    RETURN_IF_ERROR(parts.model->LoadWeights(spec.base_model()));
  } else {
    const proto::ModelShape& s = spec.pretrain().model();
    parts.model->InitRandom(spec.seed(), s.has_init_std() ? static_cast<float>(s.init_std()) : 0.02f);
  }
  if (spec.has_lora()) {
    ASSIGN_OR_RETURN(parts.adapter,
                     LoraAdapter::Create(config, LoraOptionsFromSpec(spec.lora().adapter(), spec.seed())));
  }
  return parts;
}

}  // namespace sheaf::jobs
