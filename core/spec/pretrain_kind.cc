// `pretrain`: every weight of a model, from scratch (pretrain.model's
// shape) or continued from base_model (proto PretrainJob).
#include "core/spec/job_kind.h"
#include "core/spec/sections.h"

namespace sheaf {
namespace {

void ApplyPretrainDefaults(proto::JobSpec* spec) {
  if (!spec->optimizer().has_lr()) spec->mutable_optimizer()->set_lr(1e-3);
  // A model continued from base_model takes its shape from config.json.
  if (spec->base_model().empty()) {
    ApplyModelShapeDefaults(spec->mutable_pretrain()->mutable_model(),
                            spec->data().seq_len());
  }
}

void ValidatePretrain(const proto::JobSpec& spec, const proto::JobSpec& given,
                      Problems& problems) {
  if (!spec.base_model().empty()) {
    if (given.pretrain().has_model()) {
      problems.Add("pretrain.model",
                   "must not be given when base_model is set (the shape "
                   "comes from base_model's config.json)");
    }
  } else if (!given.pretrain().has_model()) {
    problems.Add("pretrain.model",
                 "must be given to train from scratch (or set base_model "
                 "to continue training a model)");
  } else {
    CheckModelShape(spec.pretrain().model(), given.pretrain().model(),
                    spec.data(), "pretrain.model", problems);
  }
}

SHEAF_REGISTER_JOB_KIND(pretrain, {.name = "pretrain",
                                   .uses_data = true,
                                   .apply_defaults = ApplyPretrainDefaults,
                                   .validate = ValidatePretrain});

}  // namespace
}  // namespace sheaf
