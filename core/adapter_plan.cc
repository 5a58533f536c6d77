// Adapter plans: builders and validation. See adapter_plan.h.
#include "core/adapter_plan.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf {
namespace {

std::string SiteName(int layer, int proj, size_t entry) {
  return layer < 0 ? absl::StrCat("lm_head entry ", entry)
                   : absl::StrCat("layer ", layer, " ", ProjName(static_cast<Proj>(proj)),
                                  " entry ", entry);
}

bool SameShape(const Tensor& a, const Tensor& b) { return a.shape == b.shape; }

absl::Status CheckEntry(const AdapterEntry& e, int in, int out, int64_t n_rows) {
  if (e.num_experts < 1 || e.lora_rank < 1) {
    return absl::InvalidArgumentError(absl::StrCat("K = ", e.num_experts, " experts of rank ",
                                                   e.lora_rank, ": both must be >= 1"));
  }
  const int64_t kr = e.kr();
  if (!e.a || e.a.shape != std::vector<int64_t>{kr, in}) {
    return absl::InvalidArgumentError(absl::StrCat("A_cat is ", e.a.ShapeString(),
                                                   ", the projection needs [", kr, ", ", in, "]"));
  }
  if (!e.b || e.b.shape != std::vector<int64_t>{out, kr}) {
    return absl::InvalidArgumentError(absl::StrCat("B_cat is ", e.b.ShapeString(),
                                                   ", the projection needs [", out, ", ", kr, "]"));
  }
  if ((e.da && !SameShape(e.da, e.a)) || (e.db && !SameShape(e.db, e.b))) {
    return absl::InvalidArgumentError("a gradient's shape differs from its value's");
  }
  if (!std::isfinite(e.scale)) return absl::InvalidArgumentError("scale is not finite");
  if (!(e.dropout >= 0.0f && e.dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("dropout ", e.dropout, " is not in [0, 1)"));
  }
  if (!e.gate) {
    if (e.dgate) return absl::InvalidArgumentError("a gate gradient without a gate");
    return absl::OkStatus();
  }
  if (e.rows_per_group < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows_per_group is ", e.rows_per_group, ", must be >= 1"));
  }
  if (e.gate.ndim() != 2 || e.gate.dim(1) != e.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("gate is ", e.gate.ShapeString(),
                                                   ", must be [groups, ", e.num_experts, "]"));
  }
  if (e.dgate && !SameShape(e.dgate, e.gate)) {
    return absl::InvalidArgumentError("the gate gradient's shape differs from the gate's");
  }
  const int64_t groups = (n_rows + e.rows_per_group - 1) / e.rows_per_group;
  if (n_rows > 0 && e.gate.dim(0) < groups) {
    return absl::InvalidArgumentError(absl::StrCat("gate has ", e.gate.dim(0), " rows; ", n_rows,
                                                   " batch rows in groups of ", e.rows_per_group,
                                                   " need ", groups));
  }
  return absl::OkStatus();
}

}  // namespace

AdapterPlan::AdapterPlan(int num_layers) : layers_(static_cast<size_t>(num_layers)) {}

absl::StatusOr<AdapterPlan> AdapterPlan::ForAdapter(LoraAdapter* adapter, int num_layers) {
  AdapterPlan plan(num_layers);
  if (adapter != nullptr) RETURN_IF_ERROR(plan.AddAdapter(*adapter));
  return plan;
}

absl::Status AdapterPlan::AddAdapter(LoraAdapter& adapter, const AdapterUse& use) {
  return AddModules(adapter, use, nullptr);
}

absl::Status AdapterPlan::AddFrozenAdapter(const LoraAdapter& adapter, float coefficient) {
  AdapterUse use;
  use.coefficient = coefficient;
  use.trainable = false;
  use.dropout = false;
  return AddModules(adapter, use, nullptr);
}

absl::Status AdapterPlan::AddBank(LoraAdapter& bank, const AdapterGate& gate,
                                  const AdapterUse& use) {
  return AddModules(bank, use, &gate);
}

absl::Status AdapterPlan::AddModules(const LoraAdapter& adapter, const AdapterUse& use,
                                     const AdapterGate* gate) {
  if (adapter.num_layers() != num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("adapter has ", adapter.num_layers(),
                                                   " layers, the plan ", num_layers()));
  }
  const int K = adapter.num_experts();
  if (gate == nullptr && K != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a bank of ", K, " experts needs a gate (AddBank)"));
  }
  if (gate != nullptr) {
    if (!gate->gate || gate->gate.ndim() != 2 || gate->gate.dim(1) != K) {
      return absl::InvalidArgumentError(absl::StrCat("gate is ", gate->gate.ShapeString(),
                                                     ", must be [groups, ", K, "]"));
    }
    if (gate->dgate && !SameShape(gate->dgate, gate->gate)) {
      return absl::InvalidArgumentError("the gate gradient's shape differs from the gate's");
    }
    if (gate->rows_per_group < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows_per_group is ", gate->rows_per_group, ", must be >= 1"));
    }
  }
  if (!dropout_set_) set_dropout(adapter.dropout_seed(), adapter.dropout_row_offset());
  const int stream_base = next_stream_;
  int modules = 0;
  auto entry = [&](const LoraModule& m) {
    AdapterEntry e;
    e.a = m.a;
    e.b = m.b;
    if (use.trainable) {
      e.da = m.da;
      e.db = m.db;
    }
    e.num_experts = m.num_experts;
    e.lora_rank = m.lora_rank;
    e.scale = m.scale * use.coefficient;  // exact for coefficient 1
    if (gate != nullptr) {
      e.gate = gate->gate;
      e.dgate = gate->dgate;
      e.rows_per_group = gate->rows_per_group;
      e.mixing = gate->mixing;
    }
    e.dropout = use.dropout ? adapter.options().dropout : 0.0f;
    e.dropout_stream = stream_base + m.id;
    ++modules;
    return e;
  };
  for (int l = 0; l < num_layers(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const LoraModule* m = adapter.module(l, static_cast<Proj>(p));
      if (m != nullptr) layers_[static_cast<size_t>(l)][p].push_back(entry(*m));
    }
  }
  if (adapter.lm_head() != nullptr) lm_head_.push_back(entry(*adapter.lm_head()));
  next_stream_ = stream_base + modules;
  return absl::OkStatus();
}

absl::Status AdapterPlan::Validate(const ModelConfig& config, int64_t n_rows) const {
  if (num_layers() != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("adapter plan has ", num_layers(),
                                                   " layers, the model ", config.num_layers));
  }
  for (int l = 0; l < num_layers(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const std::vector<AdapterEntry>& es = layers_[static_cast<size_t>(l)][p];
      for (size_t i = 0; i < es.size(); ++i) {
        absl::Status s = CheckEntry(es[i], ProjIn(config, l, static_cast<Proj>(p)),
                                    ProjOut(config, l, static_cast<Proj>(p)), n_rows);
        if (!s.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(SiteName(l, p, i), ": ", s.message()));
        }
      }
    }
  }
  for (size_t i = 0; i < lm_head_.size(); ++i) {
    absl::Status s = CheckEntry(lm_head_[i], config.hidden_size, config.vocab_size, n_rows);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(SiteName(-1, 0, i), ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

bool AdapterPlan::empty() const { return num_entries() == 0; }

int AdapterPlan::num_entries() const {
  size_t n = lm_head_.size();
  for (const auto& layer : layers_) {
    for (const auto& es : layer) n += es.size();
  }
  return static_cast<int>(n);
}

std::vector<int32_t> AdapterPlan::Layout() const {
  std::vector<int32_t> out;
  auto site = [&](const std::vector<AdapterEntry>& es) {
    out.push_back(static_cast<int32_t>(es.size()));
    for (const AdapterEntry& e : es) {
      out.push_back(e.num_experts);
      out.push_back(e.lora_rank);
      out.push_back(e.dropout > 0.0f ? 1 : 0);
      out.push_back(e.gated() ? 1 + static_cast<int32_t>(e.mixing) : 0);
    }
  };
  out.push_back(num_layers());
  for (const auto& layer : layers_) {
    for (const auto& es : layer) site(es);
  }
  site(lm_head_);
  return out;
}

}  // namespace sheaf
