#include "core/crm/din.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/rng.h"
#include "base/status.h"

namespace sheaf::crm {
namespace {

float Uniform01(uint64_t& state) {
  return static_cast<float>((SplitMix64Next(state) >> 40) * (1.0 / 16777216.0));
}
float Normal(uint64_t& state) {
  // Box-Muller; u1 in (0, 1].
  const double u1 = 1.0 - (SplitMix64Next(state) >> 11) * (1.0 / 9007199254740992.0);
  const double u2 = (SplitMix64Next(state) >> 11) * (1.0 / 9007199254740992.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace

absl::Status DinConfig::Validate() const {
  if (emb_dim < 1) return absl::InvalidArgumentError("emb_dim: must be >= 1");
  if (att_hidden < 1) return absl::InvalidArgumentError("att_hidden: must be >= 1");
  if (mlp1 < 1) return absl::InvalidArgumentError("mlp1: must be >= 1");
  if (mlp2 < 1) return absl::InvalidArgumentError("mlp2: must be >= 1");
  if (!(init_std > 0) || !std::isfinite(init_std)) {
    return absl::InvalidArgumentError("init_std: must be > 0");
  }
  return absl::OkStatus();
}

std::string DinConfig::ToString() const {
  return absl::StrCat("din emb_dim=", emb_dim, " att_hidden=", att_hidden, " mlp1=", mlp1,
                      " mlp2=", mlp2);
}

DinInputs DinInputsFrom(const CtrData& data) {
  DinInputs in;
  in.num_users = static_cast<int>(data.dataset.user_ids.size());
  in.num_items = static_cast<int>(data.dataset.item_ids.size());
  in.num_ratings = static_cast<int>(data.rating_values.size());
  for (int side = 0; side < 2; ++side) {
    const auto& cols = side == 0 ? data.dataset.user_features : data.dataset.item_features;
    for (const FeatureColumn& c : cols) {
      DinField f;
      f.name = c.name;
      f.of_user = side == 0;
      f.vocab = static_cast<int>(c.vocab.size());
      f.bags = c.values;
      in.fields.push_back(std::move(f));
    }
  }
  return in;
}

DinBatch MakeDinBatch(const CtrData& data, std::span<const CtrSample> samples, int history) {
  DinBatch b;
  b.B = static_cast<int>(samples.size());
  for (const CtrSample& s : samples) b.L = std::max(b.L, std::min(history, s.hist_len));
  b.user.resize(b.B);
  b.item.resize(b.B);
  b.label.resize(b.B);
  b.hist_len.resize(b.B);
  b.hist_item.assign(static_cast<size_t>(b.B) * b.L, 0);
  b.hist_rating.assign(static_cast<size_t>(b.B) * b.L, 0);
  for (int i = 0; i < b.B; ++i) {
    const CtrSample& s = samples[static_cast<size_t>(i)];
    b.user[i] = s.user;
    b.item[i] = s.item;
    b.label[i] = s.label;
    auto h = data.History(s, history);
    b.hist_len[i] = static_cast<int32_t>(h.size());
    for (size_t j = 0; j < h.size(); ++j) {
      b.hist_item[static_cast<size_t>(i) * b.L + j] = h[j].item;
      b.hist_rating[static_cast<size_t>(i) * b.L + j] = h[j].rating_id;
    }
  }
  return b;
}

absl::StatusOr<std::unique_ptr<Din>> Din::Create(const DinConfig& config, DinInputs inputs,
                                                 Backend* backend) {
  RETURN_IF_ERROR(config.Validate());
  if (backend == nullptr) backend = DefaultBackend();
  if (backend == nullptr) return absl::FailedPreconditionError("no backend registered");
  if (inputs.num_users < 1 || inputs.num_items < 1 || inputs.num_ratings < 1) {
    return absl::InvalidArgumentError("DIN needs at least one user, item and rating value");
  }
  for (const DinField& f : inputs.fields) {
    const size_t n = static_cast<size_t>(f.of_user ? inputs.num_users : inputs.num_items);
    if (f.bags.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat("field ", f.name, ": ", f.bags.size(),
                                                     " bags for ", n, " entities"));
    }
    for (const auto& bag : f.bags) {
      for (int32_t t : bag) {
        if (t < 0 || t >= f.vocab) {
          return absl::InvalidArgumentError(
              absl::StrCat("field ", f.name, ": token ", t, " outside [0, ", f.vocab, ")"));
        }
      }
    }
  }
  std::unique_ptr<Din> d(new Din(config, std::move(inputs), backend));
  const int64_t e = config.emb_dim, H = config.att_hidden;
  const int64_t F = 2 + static_cast<int64_t>(d->inputs_.fields.size());
  const int64_t D = (F + 1) * e;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool decay) {
    const int s = d->params_.Add(name, shape);
    d->grads_.Add(name, shape);
    d->decay_.push_back(decay);
    return s;
  };
  d->user_emb_ = add("emb.user_id", {d->inputs_.num_users, e}, false);
  d->item_emb_ = add("emb.item_id", {d->inputs_.num_items, e}, false);
  d->rating_emb_ = add("emb.rating", {d->inputs_.num_ratings, e}, false);
  for (const DinField& f : d->inputs_.fields) {
    d->field_emb_.push_back(add("emb." + f.name, {f.vocab, e}, false));
  }
  d->wh_ = add("hist.weight", {e, 2 * e}, true);
  d->bh_ = add("hist.bias", {e}, false);
  d->wa1_ = add("att1.weight", {H, 4 * e}, true);
  d->ba1_ = add("att1.bias", {H}, false);
  d->wa2_ = add("att2.weight", {1, H}, true);
  d->ba2_ = add("att2.bias", {1}, false);
  d->w1_ = add("mlp1.weight", {config.mlp1, D}, true);
  d->b1_ = add("mlp1.bias", {config.mlp1}, false);
  d->w2_ = add("mlp2.weight", {config.mlp2, config.mlp1}, true);
  d->b2_ = add("mlp2.bias", {config.mlp2}, false);
  d->w3_ = add("mlp3.weight", {1, config.mlp2}, true);
  d->b3_ = add("mlp3.bias", {1}, false);
  d->params_.set_allocator(backend);
  d->grads_.set_allocator(backend);
  d->params_.Allocate();
  d->grads_.Allocate();
  return d;
}

void Din::InitRandom(uint64_t seed) {
  for (int s = 0; s < params_.num_slots(); ++s) {
    Tensor t = P(s);
    uint64_t state = SplitMix64(seed ^ (0x1000003ULL * static_cast<uint64_t>(s + 1)));
    const bool is_emb = params_.name(s).rfind("emb.", 0) == 0;
    if (is_emb) {
      for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = config_.init_std * Normal(state);
      continue;
    }
    // Linear: weight [out, in] (bias: fan-in of its weight, the slot before).
    const int64_t fan_in = t.ndim() == 2 ? t.dim(1) : P(s - 1).dim(1);
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = bound * (2 * Uniform01(state) - 1);
  }
}

std::vector<ParamRef> Din::ParamRefs() {
  std::vector<ParamRef> refs;
  for (int s = 0; s < params_.num_slots(); ++s) {
    refs.push_back({params_.name(s), P(s).data, G(s).data, P(s).numel(), decay_[s]});
  }
  return refs;
}

std::vector<std::string> Din::ParamNames() const {
  std::vector<std::string> n;
  for (int s = 0; s < params_.num_slots(); ++s) n.push_back(params_.name(s));
  return n;
}

std::string Din::Layout() const {
  std::string out = config_.ToString() + "\n";
  for (int s = 0; s < params_.num_slots(); ++s) {
    absl::StrAppend(&out, params_.name(s), " ", P(s).ShapeString(), "\n");
  }
  return out;
}

std::span<const float> Din::final_hidden() const { return z2_; }

std::vector<float> Din::UserReps() const {
  const int e = config_.emb_dim, B = batch_.B, L = batch_.L;
  std::vector<float> r(static_cast<size_t>(B) * 2 * e, 0.0f);
  const float* ue = P(user_emb_).data;
  for (int b = 0; b < B; ++b) {
    float* o = &r[static_cast<size_t>(b) * 2 * e];
    std::copy_n(ue + static_cast<int64_t>(batch_.user[b]) * e, e, o);
    const int len = batch_.hist_len[b];
    for (int j = 0; j < len; ++j) {
      const float* h = &h_[(static_cast<size_t>(b) * L + j) * e];
      for (int c = 0; c < e; ++c) o[e + c] += h[c];
    }
    for (int c = 0; c < e; ++c) o[e + c] /= static_cast<float>(len);
  }
  return r;
}

absl::StatusOr<double> Din::Forward(const DinBatch& batch) {
  const int e = config_.emb_dim, H = config_.att_hidden;
  const int B = batch.B, L = batch.L;
  const int F = 2 + static_cast<int>(inputs_.fields.size());
  const int D = (F + 1) * e;
  for (int b = 0; b < B; ++b) {
    if (batch.user[b] < 0 || batch.user[b] >= inputs_.num_users || batch.item[b] < 0 ||
        batch.item[b] >= inputs_.num_items || batch.hist_len[b] < 1 || batch.hist_len[b] > L) {
      return absl::InvalidArgumentError(absl::StrCat("DIN batch row ", b,
                                                     ": user, item or history length out of range"));
    }
    for (int j = 0; j < batch.hist_len[b]; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      if (batch.hist_item[k] < 0 || batch.hist_item[k] >= inputs_.num_items ||
          batch.hist_rating[k] < 0 || batch.hist_rating[k] >= inputs_.num_ratings) {
        return absl::InvalidArgumentError(
            absl::StrCat("DIN batch row ", b, " history ", j, ": id out of range"));
      }
    }
  }
  batch_ = batch;
  const size_t BL = static_cast<size_t>(B) * L;
  x0_.assign(static_cast<size_t>(B) * D, 0.0f);
  // Fields.
  const float* ue = P(user_emb_).data;
  const float* ie = P(item_emb_).data;
  const float* re = P(rating_emb_).data;
  for (int b = 0; b < B; ++b) {
    float* x = &x0_[static_cast<size_t>(b) * D];
    std::copy_n(ue + static_cast<int64_t>(batch.user[b]) * e, e, x);
    std::copy_n(ie + static_cast<int64_t>(batch.item[b]) * e, e, x + e);
    for (size_t f = 0; f < inputs_.fields.size(); ++f) {
      const DinField& fl = inputs_.fields[f];
      const auto& bag = fl.bags[static_cast<size_t>(fl.of_user ? batch.user[b] : batch.item[b])];
      if (bag.empty()) continue;
      const float* tab = P(field_emb_[f]).data;
      float* o = x + (2 + f) * e;
      for (int32_t t : bag) {
        for (int c = 0; c < e; ++c) o[c] += tab[static_cast<int64_t>(t) * e + c];
      }
      const float inv = 1.0f / static_cast<float>(bag.size());
      for (int c = 0; c < e; ++c) o[c] *= inv;
    }
  }
  // History projection.
  hin_.assign(BL * 2 * e, 0.0f);
  for (int b = 0; b < B; ++b) {
    for (int j = 0; j < batch.hist_len[b]; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      std::copy_n(ie + static_cast<int64_t>(batch.hist_item[k]) * e, e, &hin_[k * 2 * e]);
      std::copy_n(re + static_cast<int64_t>(batch.hist_rating[k]) * e, e, &hin_[k * 2 * e + e]);
    }
  }
  hpre_.assign(BL * e, 0.0f);
  h_.assign(BL * e, 0.0f);
  if (BL > 0) backend_->LinearForward(hpre_.data(), hin_.data(), P(wh_), P(bh_).data, static_cast<int>(BL));
  for (size_t i = 0; i < h_.size(); ++i) h_[i] = hpre_[i] > 0 ? hpre_[i] : 0.0f;
  // Attention.
  ain_.assign(BL * 4 * e, 0.0f);
  for (int b = 0; b < B; ++b) {
    const float* t = &x0_[static_cast<size_t>(b) * D + e];
    for (int j = 0; j < L; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      const float* h = &h_[k * e];
      float* a = &ain_[k * 4 * e];
      for (int c = 0; c < e; ++c) {
        a[c] = t[c];
        a[e + c] = h[c];
        a[2 * e + c] = t[c] - h[c];
        a[3 * e + c] = t[c] * h[c];
      }
    }
  }
  apre_.assign(BL * H, 0.0f);
  ahid_.assign(BL * H, 0.0f);
  a_.assign(BL, 0.0f);
  if (BL > 0) {
    backend_->LinearForward(apre_.data(), ain_.data(), P(wa1_), P(ba1_).data, static_cast<int>(BL));
    for (size_t i = 0; i < ahid_.size(); ++i) ahid_[i] = apre_[i] > 0 ? apre_[i] : 0.0f;
    backend_->LinearForward(a_.data(), ahid_.data(), P(wa2_), P(ba2_).data, static_cast<int>(BL));
  }
  for (int b = 0; b < B; ++b) {
    for (int j = batch.hist_len[b]; j < L; ++j) a_[static_cast<size_t>(b) * L + j] = 0.0f;
  }
  // Pooling into the last field slot.
  for (int b = 0; b < B; ++b) {
    float* u = &x0_[static_cast<size_t>(b) * D + F * e];
    for (int j = 0; j < batch.hist_len[b]; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      for (int c = 0; c < e; ++c) u[c] += a_[k] * h_[k * e + c];
    }
  }
  // MLP.
  const int m1 = config_.mlp1, m2 = config_.mlp2;
  z1pre_.assign(static_cast<size_t>(B) * m1, 0.0f);
  z1_.assign(z1pre_.size(), 0.0f);
  z2pre_.assign(static_cast<size_t>(B) * m2, 0.0f);
  z2_.assign(z2pre_.size(), 0.0f);
  logit_.assign(B, 0.0f);
  double loss = 0;
  if (B == 0) return loss;
  backend_->LinearForward(z1pre_.data(), x0_.data(), P(w1_), P(b1_).data, B);
  for (size_t i = 0; i < z1_.size(); ++i) z1_[i] = z1pre_[i] > 0 ? z1pre_[i] : 0.0f;
  backend_->LinearForward(z2pre_.data(), z1_.data(), P(w2_), P(b2_).data, B);
  for (size_t i = 0; i < z2_.size(); ++i) z2_[i] = z2pre_[i] > 0 ? z2pre_[i] : 0.0f;
  backend_->LinearForward(logit_.data(), z2_.data(), P(w3_), P(b3_).data, B);
  for (int b = 0; b < B; ++b) {
    const double z = logit_[b];
    // softplus(z) − y z, computed stably.
    const double sp = z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
    loss += sp - batch.label[b] * z;
  }
  return loss;
}

void Din::Backward(float gs) {
  const int e = config_.emb_dim, H = config_.att_hidden;
  const int B = batch_.B, L = batch_.L;
  if (B == 0) return;
  const int F = 2 + static_cast<int>(inputs_.fields.size());
  const int D = (F + 1) * e;
  const int m1 = config_.mlp1, m2 = config_.mlp2;
  const size_t BL = static_cast<size_t>(B) * L;
  // dlogit = gs (σ(z) − y).
  std::vector<float> dlogit(B);
  for (int b = 0; b < B; ++b) {
    const double z = logit_[b];
    const double p = 1.0 / (1.0 + std::exp(-z));
    dlogit[b] = static_cast<float>(gs * (p - batch_.label[b]));
  }
  // logit = w3 z2 + b3;  z2 = relu(z2pre).
  std::vector<float> dz2(static_cast<size_t>(B) * m2, 0.0f);
  backend_->LinearBackward(dz2.data(), G(w3_).data, G(b3_).data, dlogit.data(), z2_.data(), P(w3_), B);
  for (size_t i = 0; i < dz2.size(); ++i) dz2[i] = z2pre_[i] > 0 ? dz2[i] : 0.0f;
  // z2pre = W2 z1 + b2;  z1 = relu(z1pre).
  std::vector<float> dz1(static_cast<size_t>(B) * m1, 0.0f);
  backend_->LinearBackward(dz1.data(), G(w2_).data, G(b2_).data, dz2.data(), z1_.data(), P(w2_), B);
  for (size_t i = 0; i < dz1.size(); ++i) dz1[i] = z1pre_[i] > 0 ? dz1[i] : 0.0f;
  // z1pre = W1 x0 + b1.
  std::vector<float> dx0(static_cast<size_t>(B) * D, 0.0f);
  backend_->LinearBackward(dx0.data(), G(w1_).data, G(b1_).data, dz1.data(), x0_.data(), P(w1_), B);
  // u = Σ_j a_j h_j:  da_j = du · h_j,  dh_j = a_j du  (valid j only).
  std::vector<float> da(BL, 0.0f), dh(BL * e, 0.0f);
  for (int b = 0; b < B; ++b) {
    const float* du = &dx0[static_cast<size_t>(b) * D + F * e];
    for (int j = 0; j < batch_.hist_len[b]; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      float acc = 0;
      for (int c = 0; c < e; ++c) {
        acc += du[c] * h_[k * e + c];
        dh[k * e + c] = a_[k] * du[c];
      }
      da[k] = acc;  // masked slots keep 0: a_j = mask_j · raw_j
    }
  }
  // a = w_a2 ahid + b_a2;  ahid = relu(apre);  apre = W_a1 ain + b_a1.
  std::vector<float> dahid(BL * H, 0.0f), dain(BL * 4 * e, 0.0f);
  backend_->LinearBackward(dahid.data(), G(wa2_).data, G(ba2_).data, da.data(), ahid_.data(), P(wa2_), static_cast<int>(BL));
  for (size_t i = 0; i < dahid.size(); ++i) dahid[i] = apre_[i] > 0 ? dahid[i] : 0.0f;
  backend_->LinearBackward(dain.data(), G(wa1_).data, G(ba1_).data, dahid.data(), ain_.data(), P(wa1_), static_cast<int>(BL));
  // ain = [t, h, t − h, t ⊙ h].
  for (int b = 0; b < B; ++b) {
    const float* t = &x0_[static_cast<size_t>(b) * D + e];
    float* dt = &dx0[static_cast<size_t>(b) * D + e];
    for (int j = 0; j < batch_.hist_len[b]; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      const float* g = &dain[k * 4 * e];
      const float* h = &h_[k * e];
      for (int c = 0; c < e; ++c) {
        dt[c] += g[c] + g[2 * e + c] + h[c] * g[3 * e + c];
        dh[k * e + c] += g[e + c] - g[2 * e + c] + t[c] * g[3 * e + c];
      }
    }
  }
  // h = relu(hpre);  hpre = W_h hin + b_h.
  for (size_t i = 0; i < dh.size(); ++i) dh[i] = hpre_[i] > 0 ? dh[i] : 0.0f;
  std::vector<float> dhin(BL * 2 * e, 0.0f);
  // Padded rows have dh = 0 but a bias: the bias gradient sums only dh, so
  // they contribute nothing.
  backend_->LinearBackward(dhin.data(), G(wh_).data, G(bh_).data, dh.data(), hin_.data(), P(wh_), static_cast<int>(BL));
  float* gie = G(item_emb_).data;
  float* gre = G(rating_emb_).data;
  for (int b = 0; b < B; ++b) {
    for (int j = 0; j < batch_.hist_len[b]; ++j) {
      const size_t k = static_cast<size_t>(b) * L + j;
      float* gi = gie + static_cast<int64_t>(batch_.hist_item[k]) * e;
      float* gr = gre + static_cast<int64_t>(batch_.hist_rating[k]) * e;
      for (int c = 0; c < e; ++c) {
        gi[c] += dhin[k * 2 * e + c];
        gr[c] += dhin[k * 2 * e + e + c];
      }
    }
  }
  // Fields (mean over bags).
  float* gue = G(user_emb_).data;
  for (int b = 0; b < B; ++b) {
    const float* dx = &dx0[static_cast<size_t>(b) * D];
    float* gu = gue + static_cast<int64_t>(batch_.user[b]) * e;
    float* gi = gie + static_cast<int64_t>(batch_.item[b]) * e;
    for (int c = 0; c < e; ++c) {
      gu[c] += dx[c];
      gi[c] += dx[e + c];
    }
    for (size_t f = 0; f < inputs_.fields.size(); ++f) {
      const DinField& fl = inputs_.fields[f];
      const auto& bag = fl.bags[static_cast<size_t>(fl.of_user ? batch_.user[b] : batch_.item[b])];
      if (bag.empty()) continue;
      const float inv = 1.0f / static_cast<float>(bag.size());
      float* tab = G(field_emb_[f]).data;
      for (int32_t t : bag) {
        for (int c = 0; c < e; ++c) tab[static_cast<int64_t>(t) * e + c] += inv * dx[(2 + f) * e + c];
      }
    }
  }
}

}  // namespace sheaf::crm
