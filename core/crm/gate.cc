#include "core/crm/gate.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/rng.h"
#include "base/status.h"

namespace sheaf::crm {
namespace {

constexpr float kLnEps = 1e-5f;
constexpr int kSlotsPerGate = 6;  // ln.weight ln.bias fc1.weight fc1.bias fc2.weight fc2.bias

}  // namespace

absl::Status GateOptions::Validate() const {
  if (in_dim < 1) return absl::InvalidArgumentError("gate input width must be >= 1");
  if (hidden < 1) return absl::InvalidArgumentError("gate_hidden: must be >= 1");
  if (num_experts < 1) return absl::InvalidArgumentError("num_experts: must be >= 1");
  if (!(temperature > 0) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError("temperature: must be > 0");
  }
  if (!(dropout >= 0 && dropout < 1)) {
    return absl::InvalidArgumentError("gate_dropout: must be in [0, 1)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GateBank>> GateBank::Create(const GateOptions& options,
                                                           int num_gates, Backend* backend) {
  RETURN_IF_ERROR(options.Validate());
  if (num_gates < 1) return absl::InvalidArgumentError("a gate bank needs >= 1 gate");
  if (backend == nullptr) backend = DefaultBackend();
  if (backend == nullptr) return absl::FailedPreconditionError("no backend registered");
  std::unique_ptr<GateBank> g(new GateBank(options, num_gates, backend));
  const int64_t d = options.in_dim, M = options.hidden, N = options.num_experts;
  for (int i = 0; i < num_gates; ++i) {
    const std::string p = absl::StrCat("gate.", i, ".");
    const std::vector<std::pair<std::string, std::vector<int64_t>>> slots = {
        {"ln.weight", {d}}, {"ln.bias", {d}},     {"fc1.weight", {M, d}},
        {"fc1.bias", {M}},  {"fc2.weight", {N, M}}, {"fc2.bias", {N}}};
    for (const auto& [name, shape] : slots) {
      g->params_.Add(p + name, shape);
      g->grads_.Add(p + name, shape);
      g->decay_.push_back(name == "fc1.weight" || name == "fc2.weight");
    }
  }
  g->params_.set_allocator(backend);
  g->grads_.set_allocator(backend);
  g->params_.Allocate();
  g->grads_.Allocate();
  const size_t n = static_cast<size_t>(num_gates);
  g->y_.resize(n);
  g->h1_.resize(n);
  g->hd_.resize(n);
  g->w_.resize(n);
  g->dw_.resize(n);
  g->mask_.resize(n);
  return g;
}

void GateBank::InitRandom(uint64_t seed) {
  for (int s = 0; s < params_.num_slots(); ++s) {
    Tensor t = params_.view(s);
    const int kind = s % kSlotsPerGate;
    if (kind == 0) {
      std::fill_n(t.data, t.numel(), 1.0f);
      continue;
    }
    if (kind == 1) continue;  // zeros
    const int64_t fan_in = (kind == 2 || kind == 4) ? t.dim(1) : params_.view(s - 1).dim(1);
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    uint64_t state = SplitMix64(seed ^ (0x2545F4914F6CDD1DULL * static_cast<uint64_t>(s + 1)));
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float u = static_cast<float>((SplitMix64Next(state) >> 40) * (1.0 / 16777216.0));
      t.data[i] = bound * (2 * u - 1);
    }
  }
}

std::vector<ParamRef> GateBank::ParamRefs() {
  std::vector<ParamRef> refs;
  for (int s = 0; s < params_.num_slots(); ++s) {
    refs.push_back({params_.name(s), params_.view(s).data, grads_.view(s).data,
                    params_.view(s).numel(), decay_[static_cast<size_t>(s)]});
  }
  return refs;
}

std::string GateBank::Layout() const {
  return absl::StrCat("gates n=", num_gates_, " in=", options_.in_dim, " hidden=",
                      options_.hidden, " experts=", options_.num_experts, " params=",
                      params_.size(), "\n");
}

absl::Status GateBank::Forward(const float* x, int B, bool training, uint64_t dropout_seed) {
  if (B < 1) return absl::InvalidArgumentError("gate batch must have >= 1 row");
  const int d = options_.in_dim, M = options_.hidden, N = options_.num_experts;
  B_ = B;
  training_ = training;
  x_.assign(x, x + static_cast<size_t>(B) * d);
  xhat_.resize(x_.size());
  rstd_.resize(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) {
    const float* xr = &x_[static_cast<size_t>(b) * d];
    double mean = 0, var = 0;
    for (int c = 0; c < d; ++c) mean += xr[c];
    mean /= d;
    for (int c = 0; c < d; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= d;
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + kLnEps));
    rstd_[static_cast<size_t>(b)] = rstd;
    for (int c = 0; c < d; ++c) {
      xhat_[static_cast<size_t>(b) * d + c] = (xr[c] - static_cast<float>(mean)) * rstd;
    }
  }
  const float p = options_.dropout;
  const float keep_scale = 1.0f / (1.0f - p);
  for (int g = 0; g < num_gates_; ++g) {
    const size_t gi = static_cast<size_t>(g);
    const float* gamma = params_.view(g * kSlotsPerGate).data;
    const float* beta = params_.view(g * kSlotsPerGate + 1).data;
    auto& y = y_[gi];
    y.resize(x_.size());
    for (int b = 0; b < B; ++b) {
      for (int c = 0; c < d; ++c) {
        const size_t k = static_cast<size_t>(b) * d + c;
        y[k] = xhat_[k] * gamma[c] + beta[c];
      }
    }
    auto& h1 = h1_[gi];
    h1.assign(static_cast<size_t>(B) * M, 0.0f);
    backend_->LinearForward(h1.data(), y.data(), params_.view(g * kSlotsPerGate + 2),
                            params_.view(g * kSlotsPerGate + 3).data, B);
    auto& hd = hd_[gi];
    auto& mask = mask_[gi];
    hd.resize(h1.size());
    mask.assign(training && p > 0 ? h1.size() : 0, 0.0f);
    for (size_t i = 0; i < h1.size(); ++i) {
      float v = h1[i] > 0 ? h1[i] : 0.0f;
      if (!mask.empty()) {
        // Counter-based draw per (seed, gate, element): independent of
        // threads and of the order gates are evaluated in.
        const uint64_t r = SplitMix64(dropout_seed ^ SplitMix64(static_cast<uint64_t>(g) * 0x100000001B3ULL + i));
        const float u = static_cast<float>((r >> 40) * (1.0 / 16777216.0));
        mask[i] = u >= p ? keep_scale : 0.0f;
        v *= mask[i];
      }
      hd[i] = v;
    }
    std::vector<float> z(static_cast<size_t>(B) * N, 0.0f);
    backend_->LinearForward(z.data(), hd.data(), params_.view(g * kSlotsPerGate + 4),
                            params_.view(g * kSlotsPerGate + 5).data, B);
    auto& w = w_[gi];
    w.resize(z.size());
    for (int b = 0; b < B; ++b) {
      const float* zr = &z[static_cast<size_t>(b) * N];
      float* wr = &w[static_cast<size_t>(b) * N];
      float mx = zr[0];
      for (int k = 1; k < N; ++k) mx = std::max(mx, zr[k]);
      double sum = 0;
      for (int k = 0; k < N; ++k) {
        wr[k] = std::exp((zr[k] - mx) / options_.temperature);
        sum += wr[k];
      }
      for (int k = 0; k < N; ++k) wr[k] = static_cast<float>(wr[k] / sum);
    }
    dw_[gi].assign(w.size(), 0.0f);
  }
  return absl::OkStatus();
}

void GateBank::Backward() {
  const int d = options_.in_dim, M = options_.hidden, N = options_.num_experts, B = B_;
  const float invT = 1.0f / options_.temperature;
  for (int g = 0; g < num_gates_; ++g) {
    const size_t gi = static_cast<size_t>(g);
    const auto& w = w_[gi];
    const auto& dw = dw_[gi];
    // w = softmax(z/T): dz = w ⊙ (dw − ⟨w, dw⟩) / T.
    std::vector<float> dz(w.size());
    for (int b = 0; b < B; ++b) {
      const size_t o = static_cast<size_t>(b) * N;
      double dot = 0;
      for (int k = 0; k < N; ++k) dot += static_cast<double>(w[o + k]) * dw[o + k];
      for (int k = 0; k < N; ++k) {
        dz[o + k] = static_cast<float>(w[o + k] * (dw[o + k] - dot) * invT);
      }
    }
    // z = W2 h' + b2.
    std::vector<float> dhd(static_cast<size_t>(B) * M, 0.0f);
    backend_->LinearBackward(dhd.data(), grads_.view(g * kSlotsPerGate + 4).data,
                             grads_.view(g * kSlotsPerGate + 5).data, dz.data(), hd_[gi].data(),
                             params_.view(g * kSlotsPerGate + 4), B);
    // h' = drop(relu(h1)).
    const auto& mask = mask_[gi];
    const auto& h1 = h1_[gi];
    for (size_t i = 0; i < dhd.size(); ++i) {
      float v = h1[i] > 0 ? dhd[i] : 0.0f;
      if (!mask.empty()) v *= mask[i];
      dhd[i] = v;
    }
    // h1 = W1 y + b1.
    std::vector<float> dy(static_cast<size_t>(B) * d, 0.0f);
    backend_->LinearBackward(dy.data(), grads_.view(g * kSlotsPerGate + 2).data,
                             grads_.view(g * kSlotsPerGate + 3).data, dhd.data(), y_[gi].data(),
                             params_.view(g * kSlotsPerGate + 2), B);
    // y = xhat ⊙ γ + β.
    float* dgamma = grads_.view(g * kSlotsPerGate).data;
    float* dbeta = grads_.view(g * kSlotsPerGate + 1).data;
    for (int b = 0; b < B; ++b) {
      for (int c = 0; c < d; ++c) {
        const size_t k = static_cast<size_t>(b) * d + c;
        dgamma[c] += dy[k] * xhat_[k];
        dbeta[c] += dy[k];
      }
    }
  }
}

absl::Status GateBank::Attach(AdapterPlan& plan, LoraAdapter& bank, int rows_per_group,
                              AdapterMixing mixing, const AdapterUse& use,
                              bool trainable_gates) {
  const std::vector<LoraModule*> modules = bank.all_modules();
  if (static_cast<int>(modules.size()) != num_gates_) {
    return absl::InvalidArgumentError(absl::StrCat("the bank has ", modules.size(),
                                                   " modules, the gate bank ", num_gates_,
                                                   " gates"));
  }
  if (bank.num_experts() != options_.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("the bank has ", bank.num_experts(),
                                                   " experts, the gates ", options_.num_experts));
  }
  if (B_ < 1) return absl::FailedPreconditionError("GateBank::Attach before Forward");
  AdapterGate gate;
  gate.gate = weights(0);
  gate.dgate = trainable_gates ? dweights(0) : Tensor{};
  gate.rows_per_group = rows_per_group;
  gate.mixing = mixing;
  // How many entries each site had before: the bank's entry is the next one.
  std::vector<std::array<size_t, kNumProj>> before(static_cast<size_t>(plan.num_layers()));
  for (int l = 0; l < plan.num_layers(); ++l) {
    for (int p = 0; p < kNumProj; ++p) before[l][p] = plan.entries(l, static_cast<Proj>(p)).size();
  }
  const size_t head_before = plan.lm_head().size();
  RETURN_IF_ERROR(plan.AddBank(bank, gate, use));
  // AddBank gave every module gate 0; point module g at gate g, in the
  // plan's order (layer-major, Proj order, lm_head last).
  int g = 0;
  for (int l = 0; l < plan.num_layers(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      if (bank.module(l, static_cast<Proj>(p)) == nullptr) continue;
      AdapterEntry& e = plan.entries(l, static_cast<Proj>(p))[before[l][p]];
      e.gate = weights(g);
      e.dgate = trainable_gates ? dweights(g) : Tensor{};
      ++g;
    }
  }
  if (bank.lm_head() != nullptr) {
    AdapterEntry& e = plan.lm_head()[head_before];
    e.gate = weights(g);
    e.dgate = trainable_gates ? dweights(g) : Tensor{};
    ++g;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LoraAdapter>> MixBank(
    const ModelConfig& config, const LoraAdapter& bank,
    const std::vector<std::vector<float>>& gate_row) {
  LoraOptions o = bank.options();
  const int N = o.num_experts;
  o.num_experts = 1;
  ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> out, LoraAdapter::Create(config, o));
  // Both in the plan's order (layer-major, Proj order, lm_head last), the
  // order gates are numbered in.
  std::vector<LoraModule*> dst;
  std::vector<const LoraModule*> src;
  for (int l = 0; l < bank.num_layers(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      if (const LoraModule* m = bank.module(l, static_cast<Proj>(p))) {
        src.push_back(m);
        dst.push_back(out->module(l, static_cast<Proj>(p)));
      }
    }
  }
  if (bank.lm_head() != nullptr) {
    src.push_back(bank.lm_head());
    dst.push_back(out->lm_head());
  }
  if (src.size() != dst.size() || gate_row.size() != src.size()) {
    return absl::InvalidArgumentError(absl::StrCat("bank of ", src.size(), " modules, ",
                                                   gate_row.size(), " gate rows"));
  }
  for (size_t m = 0; m < src.size(); ++m) {
    const LoraModule& s = *src[m];
    if (dst[m] == nullptr) return absl::InternalError("mixed adapter lacks a module of the bank");
    LoraModule& d = *dst[m];
    const int R = s.lora_rank;
    if (static_cast<int>(gate_row[m].size()) != N || d.lora_rank != R) {
      return absl::InvalidArgumentError(absl::StrCat("module ", s.name, ": gate row of ",
                                                     gate_row[m].size(), " for ", N, " experts"));
    }
    const std::vector<float>& w = gate_row[m];
    // A_u [R, in] = Σ_k w_k A_k (A_cat rows [kR, (k+1)R)).
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < s.in; ++c) {
        double acc = 0;
        for (int k = 0; k < N; ++k) acc += static_cast<double>(w[k]) * s.a.data[static_cast<int64_t>(k * R + r) * s.in + c];
        d.a.data[static_cast<int64_t>(r) * s.in + c] = static_cast<float>(acc);
      }
    }
    // B_u [out, R] = Σ_k w_k B_k (B_cat columns [kR, (k+1)R)).
    for (int o2 = 0; o2 < s.out; ++o2) {
      for (int r = 0; r < R; ++r) {
        double acc = 0;
        for (int k = 0; k < N; ++k) acc += static_cast<double>(w[k]) * s.b.data[static_cast<int64_t>(o2) * N * R + k * R + r];
        d.b.data[static_cast<int64_t>(o2) * R + r] = static_cast<float>(acc);
      }
    }
    if (d.scale != s.scale) {
      return absl::InternalError(absl::StrCat("module ", s.name, ": mixed scale differs"));
    }
  }
  return out;
}

}  // namespace sheaf::crm
