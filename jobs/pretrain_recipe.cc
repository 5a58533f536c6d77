// Registers the `pretrain` recipe: the language-model recipe (jobs/trainer.h)
// for JobSpec.pretrain. Linked with alwayslink so that the registration's static
// initialiser runs in every binary that depends on //jobs:pretrain_recipe.
#include "jobs/recipe.h"
#include "jobs/trainer.h"

namespace sheaf::jobs {
namespace {

[[maybe_unused]] const bool kRegistered = RecipeRegistry::Global().Register(
    proto::JobSpec::kPretrain, "pretrain", [] { return std::make_unique<Trainer>(); });

}  // namespace
}  // namespace sheaf::jobs
