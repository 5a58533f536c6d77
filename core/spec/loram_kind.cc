// `loram`: LoRAM's train-small-infer-large pipeline (proto LoramJob;
// jobs/loram_recipe.cc runs it, docs/loram.md describes it).
#include "absl/strings/str_cat.h"
#include "core/spec/job_kind.h"
#include "core/spec/sections.h"

namespace sheaf {
namespace {

void ApplyLoramDefaults(proto::JobSpec* spec) {
  if (!spec->optimizer().has_lr()) spec->mutable_optimizer()->set_lr(2e-4);
  proto::LoramJob* l = spec->mutable_loram();
  ApplyAdapterDefaults(l->mutable_adapter());
  if (l->quantize().empty()) l->set_quantize("none");
  if (l->recover().empty()) l->set_recover("zero");
  if (!l->pruned_model().empty()) return;  // a publisher's model: nothing to prune
  proto::LoramPrune* p = l->mutable_prune();
  if (!p->has_ratio()) p->set_ratio(0.65);
  if (p->method().empty()) p->set_method("stru");
  if (p->mlp_layers().empty()) {
    p->add_mlp_layers(1);
    p->add_mlp_layers(-1);
  }
  if (p->attn_layers().empty()) {
    p->add_attn_layers(1);
    p->add_attn_layers(-1);
  }
  proto::LoramCalibration* c = p->mutable_calibration();
  if (!c->has_samples()) c->set_samples(10);
  if (!c->has_seq_len()) c->set_seq_len(64);
  if (l->align().steps() > 0) {
    proto::LoramAlign* a = l->mutable_align();
    if (!a->has_lr()) a->set_lr(5e-5);
  }
}

void ValidateLoram(const proto::JobSpec& spec, const proto::JobSpec& given, Problems& problems) {
  const proto::LoramJob& l = spec.loram();
  if (spec.base_model().empty()) {
    problems.Add("base_model",
                 "must be set for a loram job (the full model the recovered adapter is for)");
  }
  CheckAdapter(l.adapter(), "loram.adapter", problems);
  // nf4 (QLoRAM): the train phase's frozen projections are NF4
  // (jobs/loram_recipe.cc), on one rank or sharded over a world.
  if (l.quantize() != "none" && l.quantize() != "nf4") {
    problems.Add("loram.quantize", absl::StrCat("\"", l.quantize(), "\" is not none or nf4"));
  }
  if (l.quantize() == "nf4" && spec.train().compute() == "bf16") {
    problems.Add("train.compute",
                 "bf16 is not supported with loram.quantize: nf4 (NF4 projections compute in fp32)");
  }
  if (l.recover() != "zero" && l.recover() != "norm") {
    problems.Add("loram.recover", absl::StrCat("\"", l.recover(), "\" is not zero or norm"));
  }
  if (!l.pruned_model().empty()) {
    if (given.loram().has_prune()) {
      problems.Add("loram.prune", "must be absent with loram.pruned_model (already pruned)");
    }
    if (given.loram().has_align()) {
      problems.Add("loram.align", "must be absent with loram.pruned_model (already aligned)");
    }
    return;
  }
  const proto::LoramPrune& p = l.prune();
  problems.Fraction("loram.prune.ratio", p.ratio(), /*one_allowed=*/false);
  if (p.method() != "stru" && p.method() != "rand" && p.method() != "l1" && p.method() != "l2") {
    problems.Add("loram.prune.method",
                 absl::StrCat("\"", p.method(), "\" is not one of stru, rand, l1, l2"));
  }
  if (p.mlp_layers_size() != 2) {
    problems.Add("loram.prune.mlp_layers", "must be [begin, end) (two integers)");
  }
  if (p.attn_layers_size() != 2) {
    problems.Add("loram.prune.attn_layers", "must be [begin, end) (two integers)");
  }
  problems.AtLeast("loram.prune.calibration.samples", p.calibration().samples(), 1);
  problems.AtLeast("loram.prune.calibration.seq_len", p.calibration().seq_len(), 2);
  const proto::LoramAlign& a = l.align();
  problems.AtLeast("loram.align.steps", a.steps(), 0);
  if (a.steps() > 0) {
    if (a.data().empty()) problems.Add("loram.align.data", "must be given when align.steps > 0");
    problems.Positive("loram.align.lr", a.lr());
    problems.AtLeast("loram.align.warmup_steps", a.warmup_steps(), 0);
    if (a.has_batch_size()) problems.AtLeast("loram.align.batch_size", a.batch_size(), 1);
  } else if (given.loram().align().data_size() > 0) {
    problems.Add("loram.align.steps", "must be > 0 when align.data is given");
  }
  problems.AtLeast("loram.eval.max_sequences", l.eval().max_sequences(), 0);
}

SHEAF_REGISTER_JOB_KIND(loram, {.name = "loram",
                                .uses_data = true,
                                .apply_defaults = ApplyLoramDefaults,
                                .validate = ValidateLoram});

}  // namespace
}  // namespace sheaf
