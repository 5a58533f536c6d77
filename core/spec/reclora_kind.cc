// `reclora`: RecLoRA's meta-LoRA bank with recommender-fed gates on a
// yes/no CTR prompt (proto RecLoraJob; the recipe is jobs/reclora_recipe.cc,
// the format and the method docs/reclora.md).
#include "absl/strings/str_cat.h"
#include "core/spec/job_kind.h"
#include "core/spec/sections.h"

namespace sheaf {
namespace {

void ApplyRecloraDefaults(proto::JobSpec* spec) {
  if (!spec->optimizer().has_lr()) spec->mutable_optimizer()->set_lr(1e-3);
  proto::RecLoraJob* r = spec->mutable_reclora();
  proto::AdapterSpec* a = r->mutable_adapter();
  // RecLoRA personalises attention's q and v (the reference's targets).
  if (a->targets().empty()) {
    a->add_targets("q_proj");
    a->add_targets("v_proj");
  }
  ApplyAdapterDefaults(a);
  if (!r->has_label_threshold()) r->set_label_threshold(4);
  if (!r->has_min_core()) r->set_min_core(5);
  if (!r->has_k()) r->set_k(10);
  if (!r->has_ctr_k()) r->set_ctr_k(60);
  if (!r->plain_lora()) {  // a plain LoRA has no bank and no gates
    if (!r->has_num_experts()) r->set_num_experts(8);
    if (!r->has_temperature()) r->set_temperature(5);
    if (r->mixing().empty()) r->set_mixing("weights");
    if (r->gate_input().empty()) r->set_gate_input("crm_final");
    if (!r->has_gate_hidden()) r->set_gate_hidden(60);
    if (!r->has_gate_dropout()) r->set_gate_dropout(0.1);
  }
  if (!r->has_title_chars()) r->set_title_chars(16);
  proto::CrmSpec* c = r->mutable_crm();
  if (!c->has_epochs()) c->set_epochs(1);
  if (!c->has_batch_size()) c->set_batch_size(256);
  if (!c->has_lr()) c->set_lr(1e-3);
  if (!c->has_emb_dim()) c->set_emb_dim(16);
  if (!c->has_history()) c->set_history(r->ctr_k());
}

void ValidateReclora(const proto::JobSpec& spec, const proto::JobSpec& given,
                     Problems& problems) {
  const proto::RecLoraJob& r = spec.reclora();
  if (spec.base_model().empty()) {
    problems.Add("base_model", "must be set for a reclora job (the LLM the bank adapts)");
  }
  if (r.data_dir().empty()) problems.Add("reclora.data_dir", "must be set (RecBole atomic files)");
  if (r.dataset().empty()) {
    problems.Add("reclora.dataset", "must be set (the files' name, e.g. ml-100k)");
  }
  CheckAdapter(r.adapter(), "reclora.adapter", problems);
  if (r.min_core() < 0) problems.Add("reclora.min_core", "must be >= 0");
  if (r.k() < 1) problems.Add("reclora.k", "must be >= 1");
  if (r.ctr_k() < 1) problems.Add("reclora.ctr_k", "must be >= 1");
  if (!r.plain_lora()) {
    if (r.num_experts() < 1) problems.Add("reclora.num_experts", "must be >= 1");
    if (!(r.temperature() > 0)) problems.Add("reclora.temperature", "must be > 0");
    if (r.mixing() != "weights" && r.mixing() != "outputs") {
      problems.Add("reclora.mixing", absl::StrCat("must be weights or outputs, got '", r.mixing(), "'"));
    }
    if (r.gate_input() != "crm_final" && r.gate_input() != "user_reps") {
      problems.Add("reclora.gate_input",
                   absl::StrCat("must be crm_final or user_reps, got '", r.gate_input(), "'"));
    }
    if (r.gate_hidden() < 1) problems.Add("reclora.gate_hidden", "must be >= 1");
    if (!(r.gate_dropout() >= 0 && r.gate_dropout() < 1)) {
      problems.Add("reclora.gate_dropout", "must be in [0, 1)");
    }
  }
  if (r.train_subset() < 0) problems.Add("reclora.train_subset", "must be >= 0 (0 = all)");
  if (r.eval_samples() < 0) problems.Add("reclora.eval_samples", "must be >= 0 (0 = all)");
  if (r.title_chars() < 1) problems.Add("reclora.title_chars", "must be >= 1");
  const proto::CrmSpec& c = r.crm();
  if (c.epochs() < 1) problems.Add("reclora.crm.epochs", "must be >= 1");
  if (c.batch_size() < 1) problems.Add("reclora.crm.batch_size", "must be >= 1");
  if (!(c.lr() > 0)) problems.Add("reclora.crm.lr", "must be > 0");
  if (c.emb_dim() < 1) problems.Add("reclora.crm.emb_dim", "must be >= 1");
  if (c.history() < 1) problems.Add("reclora.crm.history", "must be >= 1");
  if (c.history() > r.ctr_k()) {
    problems.Add("reclora.crm.history", "must be <= reclora.ctr_k (the long history kept)");
  }
  if (!c.file().empty() && c.untrained()) {
    problems.Add("reclora.crm.untrained", "cannot be set together with reclora.crm.file");
  }
  if (spec.train().grad_accum() != 1) {
    problems.Add("train.grad_accum", "must be 1 for reclora (not implemented yet)");
  }
  // A plain LoRA has no bank and no gates: their fields would be silently
  // ignored, so giving one with plain_lora is an error.
  const proto::RecLoraJob& g = given.reclora();
  if (r.plain_lora()) {
    const std::pair<bool, const char*> bank_fields[] = {
        {g.has_num_experts(), "num_experts"}, {g.has_temperature(), "temperature"},
        {!g.mixing().empty(), "mixing"},      {!g.gate_input().empty(), "gate_input"},
        {g.has_gate_hidden(), "gate_hidden"}, {g.has_gate_dropout(), "gate_dropout"}};
    for (const auto& [set, name] : bank_fields) {
      if (set) {
        problems.Add(absl::StrCat("reclora.", name),
                     "has no effect with reclora.plain_lora (a plain LoRA has no bank or "
                     "gates): remove it");
      }
    }
  }
}

SHEAF_REGISTER_JOB_KIND(reclora, {.name = "reclora",
                                  .uses_data = false,
                                  .apply_defaults = ApplyRecloraDefaults,
                                  .validate = ValidateReclora});

}  // namespace
}  // namespace sheaf
