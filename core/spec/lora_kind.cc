// `lora`: LoRA adapters on a frozen base model (proto LoraJob).
#include "core/spec/job_kind.h"
#include "core/spec/sections.h"

namespace sheaf {
namespace {

void ApplyLoraDefaults(proto::JobSpec* spec) {
  // Adapters start at zero and tolerate a smaller step than a fresh model.
  if (!spec->optimizer().has_lr()) spec->mutable_optimizer()->set_lr(2e-4);
  ApplyAdapterDefaults(spec->mutable_lora()->mutable_adapter());
}

void ValidateLora(const proto::JobSpec& spec, const proto::JobSpec& given,
                  Problems& problems) {
  if (spec.base_model().empty()) {
    problems.Add("base_model",
                 "must be set for a lora job (the model the adapter trains "
                 "on)");
  }
  CheckAdapter(spec.lora().adapter(), "lora.adapter", problems);
}

SHEAF_REGISTER_JOB_KIND(lora, {.name = "lora",
                               .uses_data = true,
                               .apply_defaults = ApplyLoraDefaults,
                               .validate = ValidateLora});

}  // namespace
}  // namespace sheaf
