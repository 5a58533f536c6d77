// `langadapt`: languages added one after another to a base model (proto
// LangAdaptJob; docs/langadapt.md). The layer selection is resolved against
// the model's depth by the recipe (jobs/langadapt_layers.h), which needs
// config.json; here everything is checked that needs no file.
#include <cmath>
#include <cstdint>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/spec/job_kind.h"
#include "core/spec/sections.h"

namespace sheaf {
namespace {

using proto::LangAdaptJob;

bool IsLoraMethod(LangAdaptJob::Method m) {
  return m == LangAdaptJob::METHOD_LAYRA || m == LangAdaptJob::METHOD_LORA;
}

// Steps of one language: steps_per_language, or the token budget over the
// tokens of one optimizer step. 0 when neither is usable.
int64_t StepsPerLanguage(const proto::JobSpec& spec) {
  const LangAdaptJob& la = spec.langadapt();
  if (la.steps_per_language() > 0) return la.steps_per_language();
  const int64_t per_step = static_cast<int64_t>(spec.train().batch_size()) *
                           spec.train().grad_accum() * la.seq_len();
  if (la.tokens_per_language() <= 0 || per_step <= 0) return 0;
  return (la.tokens_per_language() + per_step - 1) / per_step;
}

void ApplyLangAdaptDefaults(proto::JobSpec* spec) {
  LangAdaptJob* la = spec->mutable_langadapt();
  if (la->method() == LangAdaptJob::METHOD_UNSPECIFIED) la->set_method(LangAdaptJob::METHOD_LAYRA);
  if (la->between() == LangAdaptJob::BETWEEN_UNSPECIFIED) la->set_between(LangAdaptJob::BETWEEN_MERGE);
  if (!la->has_seq_len()) la->set_seq_len(256);
  if (la->method() == LangAdaptJob::METHOD_LAYER_CPT && !la->has_layer_fraction()) {
    la->set_layer_fraction(0.5);
  }
  if (IsLoraMethod(la->method())) {
    // Adapters start at zero and tolerate a smaller step than full weights.
    if (!spec->optimizer().has_lr()) spec->mutable_optimizer()->set_lr(2e-4);
    ApplyAdapterDefaults(la->mutable_adapter());
  } else if (!spec->optimizer().has_lr()) {
    spec->mutable_optimizer()->set_lr(1e-4);
  }
  if (la->has_instruction_residual()) {
    proto::InstructionResidual* r = la->mutable_instruction_residual();
    if (r->base().empty()) r->set_base(spec->base_model());
    if (!r->has_lambda()) r->set_lambda(1.0);
  }
  // The shared train section counts the whole job's steps; train's own
  // defaults (batch_size 8, grad_accum 1) run after this, so the token
  // budget is converted with them.
  if (spec->train().max_steps() == 0) {
    proto::JobSpec resolved = *spec;
    if (!resolved.train().has_batch_size()) resolved.mutable_train()->set_batch_size(8);
    if (!resolved.train().has_grad_accum()) resolved.mutable_train()->set_grad_accum(1);
    spec->mutable_train()->set_max_steps(StepsPerLanguage(resolved) * la->languages_size());
  }
}

bool ValidName(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void CheckLanguages(const LangAdaptJob& la, Problems& problems) {
  if (la.languages_size() == 0) {
    problems.Add("langadapt.languages", "must list at least one language to add");
  }
  std::set<std::string> names;
  auto check = [&](const proto::LangAdaptLanguage& l, const std::string& path, bool added) {
    if (!ValidName(l.name())) {
      problems.Add(path + ".name",
                   absl::StrCat("must be a non-empty label of [A-Za-z0-9_-], got \"", l.name(), "\""));
    } else if (!names.insert(l.name()).second) {
      problems.Add(path + ".name", absl::StrCat("language ", l.name(), " is listed twice"));
    }
    if (l.val_size() == 0) problems.Add(path + ".val", "must name the held-out text of the language");
    if (added && l.train_size() == 0) {
      problems.Add(path + ".train", "must name the training text of the language");
    }
    if (!added && l.train_size() > 0) {
      problems.Add(path + ".train",
                   "a supported language is only evaluated (move it to langadapt.languages to "
                   "train on it)");
    }
    for (int i = 0; i < l.train_size(); ++i) {
      if (l.train(i).empty()) problems.Add(absl::StrCat(path, ".train[", i, "]"), "must not be empty");
    }
    for (int i = 0; i < l.val_size(); ++i) {
      if (l.val(i).empty()) problems.Add(absl::StrCat(path, ".val[", i, "]"), "must not be empty");
    }
  };
  for (int i = 0; i < la.languages_size(); ++i) {
    check(la.languages(i), absl::StrCat("langadapt.languages[", i, "]"), true);
  }
  for (int i = 0; i < la.supported_size(); ++i) {
    check(la.supported(i), absl::StrCat("langadapt.supported[", i, "]"), false);
  }
}

void CheckSelection(const LangAdaptJob& la, Problems& problems) {
  const LangAdaptJob::Method m = la.method();
  const bool selective = m == LangAdaptJob::METHOD_LAYRA || m == LangAdaptJob::METHOD_LAYER_CPT;
  const bool counts = la.has_first_layers() || la.has_last_layers();
  if (!selective) {
    const char* name = m == LangAdaptJob::METHOD_LORA ? "lora" : "cpt";
    if (counts || la.layers_size() > 0) {
      problems.Add(la.layers_size() > 0 ? "langadapt.layers"
                                        : (la.has_first_layers() ? "langadapt.first_layers"
                                                                 : "langadapt.last_layers"),
                   absl::StrCat("method ", name, " trains every layer; a layer selection is for "
                                "layra and layer_cpt"));
    }
    if (la.has_layer_fraction()) {
      problems.Add("langadapt.layer_fraction", "is for method layer_cpt only");
    }
    return;
  }
  if (la.layers_size() > 0 && counts) {
    problems.Add("langadapt.layers",
                 "give either an explicit list or first_layers / last_layers, not both");
  }
  if (la.has_first_layers()) problems.AtLeast("langadapt.first_layers", la.first_layers(), 0);
  if (la.has_last_layers()) problems.AtLeast("langadapt.last_layers", la.last_layers(), 0);
  if (la.has_first_layers() && la.has_last_layers() && la.first_layers() == 0 &&
      la.last_layers() == 0) {
    problems.Add("langadapt.first_layers", "first_layers and last_layers are both 0: nothing trains");
  }
  std::set<int32_t> seen;
  for (int i = 0; i < la.layers_size(); ++i) {
    const std::string path = absl::StrCat("langadapt.layers[", i, "]");
    if (la.layers(i) < 0) {
      problems.Add(path, absl::StrCat("must be >= 0, got ", la.layers(i)));
    } else if (!seen.insert(la.layers(i)).second) {
      problems.Add(path, absl::StrCat("layer ", la.layers(i), " is listed twice"));
    }
  }
  if (m == LangAdaptJob::METHOD_LAYER_CPT) {
    const double f = la.layer_fraction();
    if (!(f > 0 && f <= 1)) {
      problems.Add("langadapt.layer_fraction", absl::StrCat("must be in (0, 1], got ", f));
    }
  } else if (la.has_layer_fraction()) {
    problems.Add("langadapt.layer_fraction", "is for method layer_cpt only");
  }
}

void ValidateLangAdapt(const proto::JobSpec& spec, const proto::JobSpec& given, Problems& problems) {
  const LangAdaptJob& la = spec.langadapt();
  if (spec.base_model().empty()) {
    problems.Add("base_model", "must be set for a langadapt job (the model languages are added to)");
  }
  CheckLanguages(la, problems);
  CheckSelection(la, problems);
  const bool lora = IsLoraMethod(la.method());
  if (lora) {
    CheckAdapter(la.adapter(), "langadapt.adapter", problems);
    if (la.adapter().layers_size() > 0) {
      problems.Add("langadapt.adapter.layers",
                   "must stay empty: the layers come from the method (layra: first_layers / "
                   "last_layers / layers; lora: all)");
    }
  } else {
    if (given.langadapt().has_adapter()) {
      problems.Add("langadapt.adapter", "is for methods layra and lora (cpt and layer_cpt train "
                                        "the weights themselves)");
    }
    if (given.langadapt().between() == LangAdaptJob::BETWEEN_STACK) {
      problems.Add("langadapt.between",
                   "stack keeps adapters; methods cpt and layer_cpt have none (they continue with "
                   "the trained weights)");
    }
  }
  const int64_t steps = la.steps_per_language(), tokens = la.tokens_per_language();
  problems.AtLeast("langadapt.steps_per_language", steps, 0);
  problems.AtLeast("langadapt.tokens_per_language", tokens, 0);
  if ((steps > 0) == (tokens > 0)) {
    problems.Add("langadapt.steps_per_language",
                 "exactly one of steps_per_language and tokens_per_language must be > 0");
  }
  problems.AtLeast("langadapt.seq_len", la.seq_len(), 2);
  problems.AtLeast("langadapt.eval_sequences", la.eval_sequences(), 0);
  const int64_t per_language = StepsPerLanguage(spec);
  const int64_t expected = per_language * la.languages_size();
  if (spec.train().max_steps() != expected && per_language > 0) {
    problems.Add("train.max_steps",
                 absl::StrCat("is the whole langadapt job's step count: leave it unset or set it to ",
                              la.languages_size(), " languages x ", per_language,
                              " steps = ", expected, ", got ", spec.train().max_steps(),
                              " (set langadapt.steps_per_language instead)"));
  }
  if (spec.train().epochs() != 0) {
    problems.Add("train.epochs", "a langadapt job's budget is langadapt.steps_per_language or "
                                 "tokens_per_language");
  }
  if (per_language > 0 && spec.schedule().warmup_steps() > per_language) {
    problems.Add("schedule.warmup_steps",
                 absl::StrCat("must be <= the steps of one language (", per_language,
                              "): each language runs its own warmup and cosine decay, got ",
                              spec.schedule().warmup_steps()));
  }
  if (la.has_instruction_residual()) {
    const proto::InstructionResidual& r = la.instruction_residual();
    if (r.instruct().empty()) {
      problems.Add("langadapt.instruction_residual.instruct", "must name the instruction-tuned model");
    }
    if (!std::isfinite(r.lambda())) {
      problems.Add("langadapt.instruction_residual.lambda",
                   absl::StrCat("must be finite, got ", r.lambda()));
    }
  }
}

SHEAF_REGISTER_JOB_KIND(langadapt, {.name = "langadapt",
                                    .uses_data = false,
                                    .apply_defaults = ApplyLangAdaptDefaults,
                                    .validate = ValidateLangAdapt});

}  // namespace
}  // namespace sheaf
