#include "cli/logits_cmd.h"

#include <cmath>
#include <cstdio>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/flags.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/safetensors.h"

namespace sheaf::cli {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sheaf: error: %s\n", std::string(s.message()).c_str());
  return ExitCodeFor(static_cast<int>(s.code()));
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "sheaf: logits: %s\nusage:\n%s", why.c_str(), kLogitsUsage);
  return 2;
}

}  // namespace

int ExitCodeFor(int code) {
  switch (static_cast<absl::StatusCode>(code)) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnimplemented:
      return 2;
    default:
      return 1;
  }
}

int RunLogits(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> parsed =
      ParseArgs(args, {{"model"}, {"adapter"}, {"tokens"}, {"out"}, {"threads"}, {"grads", false}});
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  if (!parsed->positional.empty()) return Usage("unexpected argument " + parsed->positional[0]);
  const std::string model_dir = parsed->Last("model"), adapter_dir = parsed->Last("adapter");
  const std::string rows_text = parsed->Last("tokens"), out = parsed->Last("out");
  if (model_dir.empty() || rows_text.empty() || out.empty()) {
    return Usage("needs --model, --tokens and --out");
  }
  std::vector<int32_t> tokens;
  int B = 0, T = -1;
  for (absl::string_view row : absl::StrSplit(rows_text, ';', absl::SkipWhitespace())) {
    int n = 0;
    for (absl::string_view id : absl::StrSplit(row, ',', absl::SkipWhitespace())) {
      int32_t v = 0;
      if (!absl::SimpleAtoi(id, &v)) return Usage(absl::StrCat("--tokens: \"", std::string(id), "\" is not an id"));
      tokens.push_back(v);
      ++n;
    }
    if (T >= 0 && n != T) return Usage("--tokens: every row must have the same length");
    T = n;
    ++B;
  }
  if (B == 0 || T <= 0) return Usage("--tokens: no ids");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(config.status());
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
  if (!adapter_dir.empty()) {
    absl::StatusOr<std::unique_ptr<LoraAdapter>> a = LoraAdapter::LoadPeft(adapter_dir, *config);
    if (!a.ok()) return Fail(a.status());
    adapter = std::move(*a);
    if (absl::Status s = CheckAdapterBaseCopies(**model, *adapter); !s.ok()) return Fail(s);
  }
  // --grads: the mean next-token loss (transformers' labels = input_ids)
  // and its gradient with respect to the adapter, for reference checks.
  const bool grads = parsed->Has("grads");
  std::vector<int32_t> targets;
  if (grads) {
    if (adapter == nullptr) return Usage("--grads needs --adapter");
    if (T < 2) return Usage("--grads needs rows of at least 2 tokens");
    if (adapter->options().dropout > 0) {
      return Usage("--grads needs an adapter without dropout (lora_dropout 0): dropout makes "
                   "the gradient random");
    }
    targets.assign(tokens.size(), kIgnoreIndex);
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t + 1 < T; ++t) {
        targets[static_cast<size_t>(b) * T + t] = tokens[static_cast<size_t>(b) * T + t + 1];
      }
    }
  }
  absl::StatusOr<LossStats> st = (*model)->Forward(
      tokens.data(), grads ? targets.data() : nullptr, B, T, adapter.get(), /*training=*/grads);
  if (!st.ok()) return Fail(st.status());
  const int V = config->vocab_size;
  // Backward reuses activation memory: keep the logits it may overwrite.
  std::vector<float> logits_copy;
  const float* logits = (*model)->logits();
  if (grads) {
    logits_copy.assign(logits, logits + static_cast<int64_t>(B) * T * V);
    logits = logits_copy.data();
    adapter->grads().Zero();
    if (absl::Status s = (*model)->Backward(1.0f / static_cast<float>(st->tokens)); !s.ok()) {
      return Fail(s);
    }
  }
  // Per-token loss of predicting token t+1 at position t (log-softmax in
  // double: the dump is a reference for others).
  std::vector<float> loss(static_cast<size_t>(B) * static_cast<size_t>(std::max(T - 1, 1)), 0.0f);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t + 1 < T; ++t) {
      const float* row = logits + (static_cast<int64_t>(b) * T + t) * V;
      double mx = row[0];
      for (int v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
      const int32_t target = tokens[static_cast<size_t>(b) * T + t + 1];
      loss[static_cast<size_t>(b) * (T - 1) + t] =
          static_cast<float>(std::log(sum) + mx - static_cast<double>(row[target]));
    }
  }
  SafetensorsWriter w;
  const std::vector<int64_t> lshape = {B, T, V}, pshape = {B, std::max(T - 1, 1)};
  std::vector<float> ids(tokens.begin(), tokens.end());
  const std::vector<int64_t> tshape = {B, T};
  w.Add("logits", lshape, logits);
  w.Add("per_token_loss", pshape, loss.data());
  w.Add("tokens", tshape, ids.data());
  if (grads) {
    for (LoraModule* m : adapter->all_modules()) {
      const std::vector<int64_t> ashape = {m->da.dim(0), m->da.dim(1)};
      const std::vector<int64_t> bshape = {m->db.dim(0), m->db.dim(1)};
      w.Add(m->name + ".lora_A.weight.grad", ashape, m->da.data);
      w.Add(m->name + ".lora_B.weight.grad", bshape, m->db.data);
    }
  }
  if (absl::Status s = w.Write(out, {{"format", "pt"}, {"model", model_dir}}); !s.ok()) return Fail(s);
  std::printf("wrote %s: logits [%d, %d, %d], mean loss %.6f\n", out.c_str(), B, T, V,
              [&] {
                double s = 0;
                for (float x : loss) s += x;
                return T > 1 ? s / static_cast<double>(loss.size()) : 0.0;
              }());
  return 0;
}

}  // namespace sheaf::cli
