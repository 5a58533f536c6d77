// Registers the `lora` recipe: the language-model recipe (jobs/trainer.h)
// for JobSpec.lora. Linked with alwayslink so that the registration's static
// initialiser runs in every binary that depends on //jobs:lora_recipe.
#include "jobs/recipe.h"
#include "jobs/trainer.h"

namespace sheaf::jobs {
namespace {

[[maybe_unused]] const bool kRegistered = RecipeRegistry::Global().Register(
    proto::JobSpec::kLora, "lora", [] { return std::make_unique<Trainer>(); });

}  // namespace
}  // namespace sheaf::jobs
