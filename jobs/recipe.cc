#include "jobs/recipe.h"

#include <cstdio>

#include <cstdlib>
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace sheaf::jobs {

absl::StatusOr<TrainResult> Recipe::Run() {
  int64_t step = 0;
  if (options_.resume) {
    ASSIGN_OR_RETURN(step, LoadCheckpoint());
  }
  ASSIGN_OR_RETURN(TrainResult result, Train(step));
  if (result.steps < total_steps()) return result;
  RETURN_IF_ERROR(Export(&result));
  if (result.steps_this_run > 0) RETURN_IF_ERROR(Cleanup(result));
  return result;
}

RecipeRegistry& RecipeRegistry::Global() {
  static RecipeRegistry* registry = new RecipeRegistry();
  return *registry;
}

bool RecipeRegistry::Register(proto::JobSpec::KindCase kind, std::string name,
                              RecipeFactory factory) {
  const bool inserted =
      recipes_.emplace(static_cast<int>(kind), Entry{std::move(name), std::move(factory)}).second;
  if (!inserted) {  // a programmer error: two recipes linked for one kind
    std::fprintf(stderr, "sheaf: two recipes registered for job kind %d\n", static_cast<int>(kind));
    std::abort();
  }
  return true;
}

std::vector<std::string> RecipeRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [kind, e] : recipes_) names.push_back(e.name);
  return names;
}

absl::Status RecipeRegistry::SetUp(Recipe& recipe, const proto::JobSpec& spec,
                                   const TrainerOptions& options) {
  recipe.options_ = options;
  return recipe.Setup(spec);
}

absl::StatusOr<std::unique_ptr<Recipe>> RecipeRegistry::Create(const proto::JobSpec& spec,
                                                               const TrainerOptions& options) const {
  auto it = recipes_.find(static_cast<int>(spec.kind_case()));
  if (it == recipes_.end()) {
    const std::string known = recipes_.empty() ? "none" : absl::StrJoin(Names(), ", ");
    if (spec.kind_case() == proto::JobSpec::KIND_NOT_SET) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the job spec has no kind section (one of: ", known, ")"));
    }
    return absl::UnimplementedError(absl::StrCat(
        "no recipe for job kind #", static_cast<int>(spec.kind_case()),
        " in this build (linked recipes: ", known, ")"));
  }
  std::unique_ptr<Recipe> recipe = it->second.factory();
  RETURN_IF_ERROR(SetUp(*recipe, spec, options));
  return recipe;
}

absl::StatusOr<std::unique_ptr<Recipe>> CreateRecipe(const proto::JobSpec& spec,
                                                     const TrainerOptions& options) {
  return RecipeRegistry::Global().Create(spec, options);
}

}  // namespace sheaf::jobs
