#include "cli/generate_cmd.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/flags.h"
#include "cli/logits_cmd.h"
#include "core/data/bpe_tokenizer.h"
#include "core/lora.h"
#include "core/model.h"
#include "jobs/build.h"

namespace sheaf::cli {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sheaf: error: %s\n", std::string(s.message()).c_str());
  return ExitCodeFor(static_cast<int>(s.code()));
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "sheaf: generate: %s\nusage:\n%s", why.c_str(), kGenerateUsage);
  return 2;
}

// The next token from logits [V]: argmax at temperature 0, else a draw
// from the smallest set of most likely tokens whose probability reaches
// top_p (nucleus sampling) after dividing the logits by the temperature.
int32_t NextToken(const float* logits, int V, double temperature, double top_p, std::mt19937_64& rng) {
  if (temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<double> p(static_cast<size_t>(V));
  const double mx = *std::max_element(logits, logits + V);
  double sum = 0;
  for (int v = 0; v < V; ++v) sum += p[static_cast<size_t>(v)] = std::exp((logits[v] - mx) / temperature);
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)];
  });
  double kept = 0;
  size_t n = 0;
  while (n < order.size() && (n == 0 || kept < top_p * sum)) kept += p[static_cast<size_t>(order[n++])];
  std::uniform_real_distribution<double> u(0.0, kept);
  double x = u(rng);
  for (size_t i = 0; i < n; ++i) {
    x -= p[static_cast<size_t>(order[i])];
    if (x <= 0) return order[i];
  }
  return order[n - 1];
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(
      args, {{"adapter"}, {"prompt"}, {"prompt-ids"}, {"max-new-tokens"}, {"temperature"}, {"top-p"},
             {"seed"}, {"tokenizer"}, {"threads"}, {"print-ids", false}, {"no-kv-cache", false}});
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  if (parsed->positional.size() != 1) return Usage("takes exactly one MODEL_DIR");
  const std::string model_dir = parsed->positional[0];
  if (parsed->Has("prompt") == parsed->Has("prompt-ids")) return Usage("give --prompt or --prompt-ids");
  absl::StatusOr<int64_t> max_new = ParseIntFlag("max-new-tokens", parsed->Last("max-new-tokens", "64"), 1, 1 << 20);
  if (!max_new.ok()) return Usage(std::string(max_new.status().message()));
  double temperature = 0, top_p = 1;
  if (!absl::SimpleAtod(parsed->Last("temperature", "0"), &temperature) || temperature < 0) {
    return Usage("--temperature must be a number >= 0");
  }
  if (!absl::SimpleAtod(parsed->Last("top-p", "1"), &top_p) || !(top_p > 0 && top_p <= 1)) {
    return Usage("--top-p must be in (0, 1]");
  }
  absl::StatusOr<int64_t> seed = ParseIntFlag("seed", parsed->Last("seed", "0"), 0, INT64_MAX);
  if (!seed.ok()) return Usage(std::string(seed.status().message()));

  absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(config.status());
  std::unique_ptr<Tokenizer> tok;
  std::vector<int32_t> ids;
  int32_t eos = config->eos_token_id;
  if (parsed->Has("prompt-ids")) {
    for (absl::string_view s : absl::StrSplit(parsed->Last("prompt-ids"), ',', absl::SkipWhitespace())) {
      int32_t v = 0;
      if (!absl::SimpleAtoi(s, &v)) return Usage("--prompt-ids: not an id list");
      ids.push_back(v);
    }
    if (ids.empty()) return Usage("--prompt-ids: no ids");
  } else {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = jobs::MakeTokenizerForModel(parsed->Last("tokenizer"), model_dir);
    if (!t.ok()) return Fail(t.status());
    tok = std::move(*t);
    if ((*config).vocab_size < tok->vocab_size()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(model_dir, ": vocab_size ", config->vocab_size,
                                                          " is smaller than the tokenizer's ", tok->vocab_size())));
    }
    const auto* bpe = dynamic_cast<const BpeTokenizer*>(tok.get());
    // The byte tokenizer's documents start with BOS (as in training).
    if (bpe == nullptr || bpe->adds_bos()) ids.push_back(tok->bos_id());
    const std::vector<int32_t> text = tok->Encode(parsed->Last("prompt"));
    ids.insert(ids.end(), text.begin(), text.end());
    eos = tok->eos_id();
  }
  if (absl::Status s = CheckWeightsMatchConfig(*config, model_dir); !s.ok()) return Fail(s);
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(*config, NothingTrainable);
  if (!model.ok()) return Fail(model.status());
  if (parsed->Has("threads")) {
    absl::StatusOr<int64_t> th = ParseIntFlag("threads", parsed->Last("threads"), 1, 4096);
    if (!th.ok()) return Usage(std::string(th.status().message()));
    (*model)->backend()->SetNumThreads(static_cast<int>(*th));
  }
  if (absl::Status s = (*model)->LoadWeights(model_dir); !s.ok()) return Fail(s);
  std::unique_ptr<LoraAdapter> adapter;
  if (parsed->Has("adapter")) {
    absl::StatusOr<std::unique_ptr<LoraAdapter>> a = LoraAdapter::LoadPeft(parsed->Last("adapter"), *config);
    if (!a.ok()) return Fail(a.status());
    adapter = std::move(*a);
    if (absl::Status s = CheckAdapterBaseCopies(**model, *adapter); !s.ok()) return Fail(s);
  }
  int limit = config->max_position_embeddings;
  if (config->sliding_window > 0) limit = std::min(limit, config->sliding_window);
  std::mt19937_64 rng(static_cast<uint64_t>(*seed));
  std::vector<int32_t> generated;
  const int V = config->vocab_size;
  if (static_cast<int>(ids.size()) > limit) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", ids.size(), " tokens; the model takes at most ", limit)));
  }
  // With the KV cache (default) the prompt runs once and each new token is
  // one position against the cached keys and values; --no-kv-cache reruns
  // the whole sequence per token (O(T^2) per token; for comparison).
  const bool use_cache = !parsed->Has("no-kv-cache");
  const int cache_len = static_cast<int>(std::min<int64_t>(limit, static_cast<int64_t>(ids.size()) + *max_new));
  absl::StatusOr<Model::KvCache> cache =
      use_cache ? (*model)->NewKvCache(cache_len) : absl::StatusOr<Model::KvCache>(Model::KvCache{});
  if (!cache.ok()) return Fail(cache.status());
  size_t fed = 0;  // tokens of ids already in the cache
  for (int64_t step = 0; step < *max_new && static_cast<int>(ids.size()) < limit; ++step) {
    const int T = static_cast<int>(ids.size());
    const float* last = nullptr;
    if (use_cache) {
      const int n = static_cast<int>(ids.size() - fed);
      if (absl::Status s = (*model)->ForwardCached(ids.data() + fed, n, adapter.get(), *cache); !s.ok()) {
        return Fail(s);
      }
      fed = ids.size();
      last = (*model)->logits() + static_cast<int64_t>(n - 1) * V;
    } else {
      absl::StatusOr<LossStats> st = (*model)->Forward(ids.data(), nullptr, 1, T, adapter.get(), false);
      if (!st.ok()) return Fail(st.status());
      last = (*model)->logits() + static_cast<int64_t>(T - 1) * V;
    }
    const int32_t next = NextToken(last, V, temperature, top_p, rng);
    ids.push_back(next);
    generated.push_back(next);
    if (next == eos) break;
  }
  if (parsed->Has("print-ids") || tok == nullptr) {
    std::string line;
    for (size_t i = 0; i < generated.size(); ++i) line += absl::StrCat(i ? "," : "", generated[i]);
    std::printf("%s\n", line.c_str());
  } else {
    absl::StatusOr<std::string> text = tok->Decode(generated);
    if (!text.ok()) return Fail(text.status());
    std::printf("%s\n", text->c_str());
  }
  return 0;
}

}  // namespace sheaf::cli
