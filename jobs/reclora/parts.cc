#include "jobs/reclora/parts.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/rng.h"
#include "base/status.h"
#include "core/crm/atomic.h"
#include "core/crm/crm_train.h"
#include "core/safetensors.h"

namespace sheaf::reclora {
namespace {

std::string Title(const crm::CtrData& data, int32_t item, int title_chars) {
  const auto& cols = data.dataset.item_features;
  std::string t = cols.empty() ? data.dataset.item_ids[static_cast<size_t>(item)]
                               : cols[0].text[static_cast<size_t>(item)];
  if (t.empty()) t = data.dataset.item_ids[static_cast<size_t>(item)];
  if (static_cast<int>(t.size()) > title_chars) t.resize(static_cast<size_t>(title_chars));
  return t;
}

}  // namespace

absl::StatusOr<std::string> PromptText(const crm::CtrData& data, const crm::CtrSample& s, int k,
                                       int title_chars, int max_tokens) {
  std::string profile;
  for (const crm::FeatureColumn& c : data.dataset.user_features) {
    const std::string& v = c.text[static_cast<size_t>(s.user)];
    if (v.empty()) continue;
    if (!profile.empty()) profile += ' ';
    profile += v;
  }
  if (profile.empty()) profile = data.dataset.user_ids[static_cast<size_t>(s.user)];
  auto history = data.History(s, k);
  const std::string tail =
      absl::StrCat(". Likes ", Title(data, s.item, title_chars), "? yes or no:");
  for (size_t drop = 0; drop < history.size(); ++drop) {
    std::string text = absl::StrCat("User: ", profile, ". Rated: ");
    for (size_t j = drop; j < history.size(); ++j) {
      if (j > drop) text += ", ";
      absl::StrAppend(&text, Title(data, history[j].item, title_chars), ":",
                      absl::StrFormat("%g", history[j].rating));
    }
    text += tail;
    if (static_cast<int>(text.size()) + 1 <= max_tokens) return text;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "reclora.title_chars: the prompt of user ", data.dataset.user_ids[static_cast<size_t>(s.user)],
      " does not fit the model's ", max_tokens, " positions even with one history item"));
}

std::vector<crm::CtrSample> SeededSubset(const std::vector<crm::CtrSample>& samples, int64_t n,
                                         uint64_t seed) {
  if (n <= 0 || n >= static_cast<int64_t>(samples.size())) {
    if (n <= 0) return samples;
  }
  std::vector<int32_t> order = crm::EpochOrder(static_cast<int64_t>(samples.size()),
                                               seed ^ 0x5eed5eedULL, -1);
  const int64_t m = std::min<int64_t>(n, static_cast<int64_t>(samples.size()));
  std::vector<crm::CtrSample> out;
  out.reserve(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) out.push_back(samples[static_cast<size_t>(order[static_cast<size_t>(i)])]);
  return out;
}

absl::StatusOr<std::unique_ptr<Parts>> BuildParts(const proto::JobSpec& spec,
                                                  dist::Communicator* comm,
                                                  int64_t gather_budget_bytes) {
  auto parts = std::make_unique<Parts>();
  parts->spec = spec;
  const proto::RecLoraJob& r = spec.reclora();
  auto ds = crm::ReadAtomicDataset(r.data_dir(), r.dataset());
  if (!ds.ok()) {
    return absl::Status(ds.status().code(),
                        absl::StrCat("reclora.data_dir: ", ds.status().message()));
  }
  crm::CtrOptions co;
  co.label_threshold = static_cast<float>(r.label_threshold());
  co.min_core = r.min_core();
  co.ctr_k = r.ctr_k();
  co.k = r.k();
  ASSIGN_OR_RETURN(parts->data, crm::BuildCtrData(*std::move(ds), co));
  crm::DinConfig dc;
  dc.emb_dim = r.crm().emb_dim();
  ASSIGN_OR_RETURN(parts->crm, crm::Din::Create(dc, crm::DinInputsFrom(parts->data)));
  parts->crm->InitRandom(spec.seed() ^ 0xc7a11ULL);

  ASSIGN_OR_RETURN(parts->config, jobs::ModelConfigForSpec(spec));
  if (parts->config.vocab_size < 258) {
    return absl::InvalidArgumentError(absl::StrCat(
        "base_model: vocab_size ", parts->config.vocab_size,
        " < 258; the reclora prompt is byte-tokenised (256 BOS, 257 EOS)"));
  }
  jobs::ModelBuildOptions mbo;
  mbo.comm = comm;
  mbo.gather_budget_bytes = gather_budget_bytes;
  ASSIGN_OR_RETURN(parts->llm, jobs::BuildModel(spec, parts->config, mbo));

  LoraOptions lo = jobs::LoraOptionsFromSpec(r.adapter(), spec.seed());
  lo.num_experts = r.plain_lora() ? 1 : r.num_experts();
  RETURN_IF_ERROR(lo.Validate(parts->config));
  ASSIGN_OR_RETURN(parts->bank, LoraAdapter::Create(parts->config, lo));
  parts->mixing = r.mixing() == "outputs" ? AdapterMixing::kAdapterMixingOutputs
                                          : AdapterMixing::kAdapterMixingWeights;
  parts->user_reps = r.gate_input() == "user_reps";
  parts->gate_in_dim = parts->user_reps ? parts->crm->user_reps_dim() : parts->crm->final_dim();
  if (!r.plain_lora()) {
    crm::GateOptions go;
    go.in_dim = parts->gate_in_dim;
    go.hidden = r.gate_hidden();
    go.num_experts = r.num_experts();
    go.temperature = static_cast<float>(r.temperature());
    go.dropout = static_cast<float>(r.gate_dropout());
    ASSIGN_OR_RETURN(parts->gates, crm::GateBank::Create(
                                       go, static_cast<int>(parts->bank->all_modules().size())));
    parts->gates->InitRandom(spec.seed() ^ 0x9a7e5ULL);
  }
  parts->subset = SeededSubset(parts->data.split(crm::Split::kSplitTrain), r.train_subset(),
                               spec.seed());
  return parts;
}

absl::StatusOr<std::vector<float>> GateInput(Parts& parts,
                                             std::span<const crm::CtrSample> samples) {
  crm::DinBatch batch = crm::MakeDinBatch(parts.data, samples,
                                          parts.spec.reclora().crm().history());
  RETURN_IF_ERROR(parts.crm->Forward(batch).status());
  if (parts.user_reps) return parts.crm->UserReps();
  auto h = parts.crm->final_hidden();
  return std::vector<float>(h.begin(), h.end());
}

namespace {

struct Tokens {
  std::vector<int32_t> ids;  // (B, T)
  int T = 0;
  std::vector<int32_t> rows, targets;
};

absl::StatusOr<Tokens> BuildTokens(Parts& parts, std::span<const crm::CtrSample> samples) {
  const proto::RecLoraJob& r = parts.spec.reclora();
  const int B = static_cast<int>(samples.size());
  const int max_pos = parts.config.max_position_embeddings;
  std::vector<std::string> texts;
  Tokens t;
  for (const crm::CtrSample& s : samples) {
    ASSIGN_OR_RETURN(std::string text, PromptText(parts.data, s, r.k(), r.title_chars(), max_pos));
    t.T = std::max(t.T, static_cast<int>(text.size()) + 1);
    texts.push_back(std::move(text));
  }
  t.ids.assign(static_cast<size_t>(B) * t.T, kPad);
  for (int b = 0; b < B; ++b) {
    int32_t* row = &t.ids[static_cast<size_t>(b) * t.T];
    row[0] = kBos;
    for (size_t i = 0; i < texts[b].size(); ++i) row[i + 1] = static_cast<unsigned char>(texts[b][i]);
    t.rows.push_back(b * t.T + static_cast<int>(texts[b].size()));
    t.targets.push_back(samples[static_cast<size_t>(b)].label > 0.5f ? 1 : 0);
  }
  return t;
}

}  // namespace

absl::StatusOr<BatchResult> RunBatch(Parts& parts, std::span<const crm::CtrSample> samples,
                                     bool training, uint64_t dropout_seed, bool backward,
                                     float grad_scale) {
  const int B = static_cast<int>(samples.size());
  if (B == 0) return absl::InvalidArgumentError("empty reclora batch");
  ASSIGN_OR_RETURN(Tokens tk, BuildTokens(parts, samples));
  const int T = tk.T;
  const std::vector<int32_t>& tokens = tk.ids;
  const LossHead head = LossHead::SelectedRows(tk.rows, {kAnswerNo, kAnswerYes}, tk.targets);
  AdapterPlan plan(parts.config.num_layers);
  parts.bank->set_dropout_seed(dropout_seed);
  if (parts.gates) {
    ASSIGN_OR_RETURN(std::vector<float> x, GateInput(parts, samples));
    RETURN_IF_ERROR(parts.gates->Forward(x.data(), B, training, dropout_seed));
    AdapterUse use;
    use.trainable = backward;
    RETURN_IF_ERROR(parts.gates->Attach(plan, *parts.bank, T, parts.mixing, use, backward));
  } else {
    AdapterUse use;
    use.trainable = backward;
    RETURN_IF_ERROR(plan.AddAdapter(*parts.bank, use));
  }
  BatchResult out;
  ASSIGN_OR_RETURN(out.stats, parts.llm.model->Forward(tokens.data(), nullptr, B, T, plan,
                                                       training, head));
  const float* lg = parts.llm.model->selected_logits();
  for (int b = 0; b < B; ++b) {
    const double no = lg[2 * b], yes = lg[2 * b + 1];
    out.p_yes.push_back(static_cast<float>(1.0 / (1.0 + std::exp(no - yes))));
  }
  if (backward) {
    RETURN_IF_ERROR(parts.llm.model->Backward(grad_scale));
    if (parts.gates) parts.gates->Backward();
  }
  return out;
}

absl::StatusOr<crm::BinaryMetrics> EvaluateLlm(Parts& parts,
                                               std::span<const crm::CtrSample> samples,
                                               int batch_size, std::vector<float>* p_yes) {
  std::vector<float> probs, labels;
  for (size_t lo = 0; lo < samples.size(); lo += static_cast<size_t>(batch_size)) {
    const size_t hi = std::min(samples.size(), lo + static_cast<size_t>(batch_size));
    ASSIGN_OR_RETURN(BatchResult br, RunBatch(parts, samples.subspan(lo, hi - lo), false, 0,
                                              false, 0.0f));
    probs.insert(probs.end(), br.p_yes.begin(), br.p_yes.end());
  }
  for (const crm::CtrSample& s : samples) labels.push_back(s.label);
  if (p_yes != nullptr) *p_yes = probs;
  return crm::ComputeMetrics(probs, labels);
}

absl::Status LoadTrainedState(Parts& parts, const std::string& output_dir) {
  if (!parts.gates) {
    return absl::UnimplementedError("a plain_lora job exports adapter/ (PEFT); nothing to mix");
  }
  RETURN_IF_ERROR(crm::LoadCrm(*parts.crm, output_dir + "/crm.sheafckpt"));
  ASSIGN_OR_RETURN(auto bank, SafetensorsFile::Open(output_dir + "/reclora/bank.safetensors"));
  for (int l = 0; l < parts.bank->num_layers(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      LoraModule* m = parts.bank->module(l, static_cast<Proj>(p));
      if (m == nullptr) continue;
      RETURN_IF_ERROR(bank->ReadF32(m->name + ".lora_A_cat", m->a.shape, m->a.data));
      RETURN_IF_ERROR(bank->ReadF32(m->name + ".lora_B_cat", m->b.shape, m->b.data));
    }
  }
  ASSIGN_OR_RETURN(auto gates, SafetensorsFile::Open(output_dir + "/reclora/gates.safetensors"));
  Arena& ga = parts.gates->params();
  for (int s = 0; s < ga.num_slots(); ++s) {
    RETURN_IF_ERROR(gates->ReadF32(ga.name(s), ga.view(s).shape, ga.view(s).data));
  }
  return absl::OkStatus();
}

absl::StatusOr<crm::CtrSample> UserNowSample(const Parts& parts, int32_t user) {
  if (user < 0 || user >= static_cast<int32_t>(parts.data.sequences.size())) {
    return absl::InvalidArgumentError(absl::StrCat("user index ", user, " out of range"));
  }
  const auto& seq = parts.data.sequences[static_cast<size_t>(user)];
  if (seq.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "user ", parts.data.dataset.user_ids[static_cast<size_t>(user)],
        " has no history (no interaction left after filtering)"));
  }
  crm::CtrSample s;
  s.user = user;
  s.item = seq.back().item;
  s.timestamp = seq.back().timestamp;
  s.seq_pos = static_cast<int32_t>(seq.size());
  s.hist_len = static_cast<int32_t>(seq.size());
  return s;
}

absl::StatusOr<crm::CtrSample> UserNowSample(const Parts& parts, const std::string& user_id) {
  auto it = parts.data.dataset.user_index.find(user_id);
  if (it == parts.data.dataset.user_index.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown user_id '", user_id, "' (not in ",
                                                   parts.data.dataset.inter_path, ")"));
  }
  return UserNowSample(parts, it->second);
}

absl::StatusOr<std::vector<std::vector<float>>> UserGateRows(Parts& parts, int32_t user) {
  if (!parts.gates) return absl::FailedPreconditionError("a plain_lora job has no gates");
  if (!parts.user_reps) {
    return absl::FailedPreconditionError(
        "reclora.gate_input is crm_final: the gate depends on the target item, so there is no "
        "per-user adapter (train with gate_input: user_reps to export one)");
  }
  ASSIGN_OR_RETURN(crm::CtrSample now, UserNowSample(parts, user));
  ASSIGN_OR_RETURN(std::vector<float> x, GateInput(parts, std::span<const crm::CtrSample>(&now, 1)));
  RETURN_IF_ERROR(parts.gates->Forward(x.data(), 1, false, 0));
  std::vector<std::vector<float>> rows;
  for (int g = 0; g < parts.gates->num_gates(); ++g) {
    Tensor w = parts.gates->weights(g);
    rows.emplace_back(w.data, w.data + w.numel());
  }
  return rows;
}

absl::StatusOr<std::unique_ptr<LoraAdapter>> ExportUserAdapter(Parts& parts, int32_t user) {
  ASSIGN_OR_RETURN(auto rows, UserGateRows(parts, user));
  return crm::MixBank(parts.config, *parts.bank, rows);
}

absl::StatusOr<float> PredictWithUserGate(Parts& parts, const crm::CtrSample& s,
                                          const LoraAdapter* user_adapter) {
  ASSIGN_OR_RETURN(Tokens tk, BuildTokens(parts, std::span<const crm::CtrSample>(&s, 1)));
  AdapterPlan plan(parts.config.num_layers);
  if (user_adapter != nullptr) {
    RETURN_IF_ERROR(plan.AddFrozenAdapter(*user_adapter));
  } else {
    // Gate weights = the user's rows (UserGateRows leaves them in the gates).
    RETURN_IF_ERROR(UserGateRows(parts, s.user).status());
    AdapterUse use;
    use.trainable = false;
    RETURN_IF_ERROR(parts.gates->Attach(plan, *parts.bank, tk.T, parts.mixing, use, false));
  }
  const LossHead head = LossHead::SelectedRows(tk.rows, {kAnswerNo, kAnswerYes}, tk.targets);
  RETURN_IF_ERROR(parts.llm.model->Forward(tk.ids.data(), nullptr, 1, tk.T, plan, false, head).status());
  const float* lg = parts.llm.model->selected_logits();
  return static_cast<float>(1.0 / (1.0 + std::exp(static_cast<double>(lg[0]) - lg[1])));
}

}  // namespace sheaf::reclora
