#include "jobs/evaluation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace sheaf::jobs {

absl::StatusOr<LossStats> EvaluateLoss(Model& model, LoraAdapter* adapter, const Dataset& data,
                                       const EvalOptions& options, WorldSync& world) {
  const int64_t B_global = options.batch_size, T = data.seq_len();
  if (B_global <= 0 || B_global % world.world_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation batch of ", B_global,
                                                   " sequences cannot be split over ",
                                                   world.world_size(), " ranks"));
  }
  const int64_t B = B_global / world.world_size();
  const int64_t n_seq = data.num_validation_sequences();
  int64_t max_seq = n_seq;
  if (options.max_sequences > 0) max_seq = std::min(n_seq, options.max_sequences);
  std::vector<int32_t> in(static_cast<size_t>(B * T)), tg(in.size());
  double sums[2] = {0, 0};  // loss, tokens
  for (int64_t first = 0; first < max_seq; first += B_global) {
    const int64_t mine = first + world.world_rank() * B;
    if (mine < n_seq) {
      ASSIGN_OR_RETURN(int64_t rows,
                       data.GetValidationBatch(mine, B, absl::MakeSpan(in), absl::MakeSpan(tg)));
      // Rows past max_seq (a max_sequences cut) do not count.
      for (int64_t r = std::max<int64_t>(0, std::min(rows, max_seq - mine)); r < B; ++r) {
        std::fill(tg.begin() + r * T, tg.begin() + (r + 1) * T, kIgnoreIndex);
      }
    } else {
      std::fill(in.begin(), in.end(), 0);
      std::fill(tg.begin(), tg.end(), kIgnoreIndex);
    }
    ASSIGN_OR_RETURN(LossStats s, model.Forward(in.data(), tg.data(), static_cast<int>(B),
                                                static_cast<int>(T), adapter, false));
    sums[0] += s.loss_sum;
    sums[1] += static_cast<double>(s.tokens);
  }
  RETURN_IF_ERROR(world.Sum(absl::MakeSpan(sums)));
  LossStats total;
  total.loss_sum = sums[0];
  total.tokens = static_cast<int64_t>(sums[1]);
  return total;
}

absl::StatusOr<std::map<std::string, double>> EvaluateSets(Model& model, LoraAdapter* adapter,
                                                           const std::vector<EvalSet>& sets,
                                                           const EvalOptions& options,
                                                           WorldSync& world) {
  std::map<std::string, double> losses;
  for (const EvalSet& set : sets) {
    ASSIGN_OR_RETURN(LossStats s, EvaluateLoss(model, adapter, *set.dataset, options, world));
    if (s.tokens == 0) {
      return absl::FailedPreconditionError(
          set.name.empty() ? std::string("validation split is empty")
                           : absl::StrCat("validation set ", set.name, " is empty"));
    }
    losses[set.name] = s.loss_sum / static_cast<double>(s.tokens);
  }
  return losses;
}

}  // namespace sheaf::jobs
