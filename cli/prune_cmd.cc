#include "cli/prune_cmd.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/flags.h"
#include "core/prune/pruning_map.h"
#include "core/prune/recover.h"
#include "jobs/loram/prune_dir.h"

namespace sheaf::cli {
namespace {

int Fail(const absl::Status& s, int code) {
  std::fprintf(stderr, "sheaf: error: %s\n", std::string(s.message()).c_str());
  return code;
}

int UsageError(const std::string& why) {
  std::fprintf(stderr, "sheaf: %s\n\nusage:\n%s", why.c_str(), kPruneUsage);
  return 2;
}

bool IsUserError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound;
}

}  // namespace

int PruneCommand(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> p =
      ParseArgs(args, {{"ratio"}, {"method"}, {"mlp-layers"}, {"attn-layers"}, {"calibration"},
                       {"samples"}, {"seq-len"}, {"seed"}});
  if (!p.ok()) return UsageError(absl::StrCat("prune: ", p.status().message()));
  if (p->positional.size() != 2) return UsageError("prune takes BASE_DIR OUT_DIR");
  jobs::PruneDirOptions o;
  o.base_dir = p->positional[0];
  o.out_dir = p->positional[1];
  const std::string ratio = p->Last("ratio", "0.65");
  if (!absl::SimpleAtod(ratio, &o.ratio) || !(o.ratio >= 0 && o.ratio < 1)) {
    return UsageError(absl::StrCat("prune: --ratio must be a number in [0, 1), got '", ratio, "'"));
  }
  absl::StatusOr<prune::ImportanceMethod> m =
      prune::ParseImportanceMethod(p->Last("method", "stru"), "--method");
  if (!m.ok()) return UsageError(absl::StrCat("prune: ", m.status().message()));
  o.method = *m;
  absl::StatusOr<prune::LayerRange> mlp = jobs::ParseLayerRange(p->Last("mlp-layers", "1:-1"), "--mlp-layers");
  absl::StatusOr<prune::LayerRange> attn = jobs::ParseLayerRange(p->Last("attn-layers", "1:-1"), "--attn-layers");
  if (!mlp.ok()) return UsageError(absl::StrCat("prune: ", mlp.status().message()));
  if (!attn.ok()) return UsageError(absl::StrCat("prune: ", attn.status().message()));
  o.mlp_layers = *mlp;
  o.attn_layers = *attn;
  o.calibration = p->All("calibration");
  absl::StatusOr<int64_t> samples = ParseIntFlag("samples", p->Last("samples", "10"), 1, 1 << 20);
  absl::StatusOr<int64_t> seq = ParseIntFlag("seq-len", p->Last("seq-len", "64"), 2, 1 << 20);
  absl::StatusOr<int64_t> seed = ParseIntFlag("seed", p->Last("seed", "0"), 0, INT64_MAX);
  for (const absl::StatusOr<int64_t>* v : {&samples, &seq, &seed}) {
    if (!v->ok()) return UsageError(absl::StrCat("prune: ", v->status().message()));
  }
  o.samples = static_cast<int>(*samples);
  o.seq_len = static_cast<int>(*seq);
  o.seed = static_cast<uint64_t>(*seed);
  absl::StatusOr<jobs::PruneDirReport> r = jobs::PruneModelDir(o);
  if (!r.ok()) return Fail(r.status(), IsUserError(r.status()) ? 2 : 1);
  std::printf("pruned %s (%lld parameters) -> %s (%lld parameters, %.2fx smaller) with %s at p = %g "
              "in %.1f s\n",
              o.base_dir.c_str(), static_cast<long long>(r->full_params), o.out_dir.c_str(),
              static_cast<long long>(r->pruned_params),
              static_cast<double>(r->full_params) / static_cast<double>(r->pruned_params),
              prune::ImportanceMethodName(o.method), o.ratio, r->seconds);
  return 0;
}

int RecoverCommand(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> p = ParseArgs(args, {{"mode"}, {"seed"}, {"base-name"}});
  if (!p.ok()) return UsageError(absl::StrCat("recover: ", p.status().message()));
  if (p->positional.size() != 3) {
    return UsageError("recover takes PRUNED_ADAPTER_DIR PRUNING_MAP OUT_DIR");
  }
  prune::RecoverOptions ro;
  absl::StatusOr<prune::RecoverMode> mode = prune::ParseRecoverMode(p->Last("mode", "zero"), "--mode");
  if (!mode.ok()) return UsageError(absl::StrCat("recover: ", mode.status().message()));
  ro.mode = *mode;
  absl::StatusOr<int64_t> seed = ParseIntFlag("seed", p->Last("seed", "0"), 0, INT64_MAX);
  if (!seed.ok()) return UsageError(absl::StrCat("recover: ", seed.status().message()));
  ro.seed = static_cast<uint64_t>(*seed);
  absl::StatusOr<prune::PruningMap> map = prune::LoadPruningMap(p->positional[1]);
  if (!map.ok()) return Fail(map.status(), IsUserError(map.status()) ? 2 : 1);
  const std::string base_name = p->Last("base-name", "base_model");
  absl::Status s = prune::RecoverAdapterFiles(p->positional[0], *map, p->positional[2], base_name, ro);
  if (!s.ok()) return Fail(s, IsUserError(s) ? 2 : 1);
  std::printf("recovered %s for the full model -> %s\n", p->positional[0].c_str(),
              p->positional[2].c_str());
  return 0;
}

}  // namespace sheaf::cli
