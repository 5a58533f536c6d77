#include "cli/reclora_cmd.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/flags.h"
#include "base/status.h"
#include "core/backend.h"
#include "core/crm/atomic.h"
#include "core/crm/crm_train.h"
#include "core/crm/ctr_data.h"
#include "core/crm/din.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "jobs/reclora/parts.h"

namespace sheaf::cli {

const char* const kRecloraUsage = R"(Recommendation (reclora kind):
  crm train --data DIR --dataset NAME --out DIR [--epochs N] [--max-steps N]
            [--batch-size N] [--lr X] [--history N] [--emb-dim N] [--seed N]
            [--threads N] [--min-core N] [--untrained]
                          train DIN on DIR/NAME.{inter,user,item} (RecBole atomic
                          files, time split 8:1:1); writes OUT/crm.sheafckpt,
                          OUT/crm_report.json, OUT/checkpoints/ (resumes)
  reclora export-user JOB_DIR USER_ID OUT_DIR
                          one user's mixed adapter of a finished reclora job
                          (gate_input: user_reps) as a plain PEFT adapter,
                          checked to predict what the mixture predicts

)";

namespace {

int Usage(const std::string& why) {
  std::fprintf(stderr, "sheaf: %s\n\n%s", why.c_str(), kRecloraUsage);
  return 2;
}
int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sheaf: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

absl::StatusOr<float> ParseFloatFlag(const std::string& name, const std::string& v) {
  float f = 0;
  if (!absl::SimpleAtof(v, &f)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": not a number: '", v, "'"));
  }
  return f;
}

std::string MetricsJson(const crm::BinaryMetrics& m) {
  return absl::StrCat("{\"auc\": ", m.auc, ", \"logloss\": ", m.logloss,
                      ", \"accuracy\": ", m.accuracy, ", \"count\": ", m.count,
                      ", \"positives\": ", m.positives, "}");
}

int CrmTrain(const std::vector<std::string>& args) {
  auto parsed = ParseArgs(args, {{"data"}, {"dataset"}, {"out"}, {"epochs"}, {"max-steps"},
                                 {"batch-size"}, {"lr"}, {"history"}, {"emb-dim"}, {"seed"},
                                 {"threads"}, {"min-core"}, {"untrained", false}});
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  if (!parsed->positional.empty()) return Usage("unexpected argument " + parsed->positional[0]);
  const std::string data_dir = parsed->Last("data"), name = parsed->Last("dataset"),
                    out = parsed->Last("out");
  if (data_dir.empty() || name.empty() || out.empty()) {
    return Usage("crm train needs --data, --dataset and --out");
  }
  crm::CrmTrainOptions o;
  crm::DinConfig dc;
  crm::CtrOptions co;
  int64_t threads = 0;
  auto int_flag = [&](const char* flag, int64_t min, int64_t max, auto& dst) -> absl::Status {
    if (!parsed->Has(flag)) return absl::OkStatus();
    ASSIGN_OR_RETURN(int64_t v, ParseIntFlag(absl::StrCat("--", flag), parsed->Last(flag), min, max));
    dst = static_cast<std::remove_reference_t<decltype(dst)>>(v);
    return absl::OkStatus();
  };
  for (absl::Status s :
       {int_flag("epochs", 1, 1000, o.epochs), int_flag("max-steps", 0, int64_t{1} << 40, o.max_steps),
        int_flag("batch-size", 1, 1 << 20, o.batch_size), int_flag("history", 1, 10000, o.history),
        int_flag("emb-dim", 1, 4096, dc.emb_dim), int_flag("seed", 0, int64_t{1} << 62, o.seed),
        int_flag("threads", 0, 4096, threads), int_flag("min-core", 0, 1000000, co.min_core)}) {
    if (!s.ok()) return Usage(std::string(s.message()));
  }
  if (parsed->Has("lr")) {
    auto lr = ParseFloatFlag("lr", parsed->Last("lr"));
    if (!lr.ok()) return Usage(std::string(lr.status().message()));
    o.lr = *lr;
  }
  co.ctr_k = std::max(co.ctr_k, o.history);
  if (threads > 0 && DefaultBackend()) DefaultBackend()->SetNumThreads(static_cast<int>(threads));

  auto ds = crm::ReadAtomicDataset(data_dir, name);
  if (!ds.ok()) return Fail(ds.status());
  auto data = crm::BuildCtrData(*std::move(ds), co);
  if (!data.ok()) return Fail(data.status());
  std::fprintf(stderr,
               "sheaf crm: %lld interactions read, %lld kept (%lld users, %lld items, %d-core); "
               "samples train %zu / val %zu / test %zu (%lld without history)\n",
               static_cast<long long>(data->raw_interactions),
               static_cast<long long>(data->kept_interactions),
               static_cast<long long>(data->kept_users), static_cast<long long>(data->kept_items),
               co.min_core, data->split(crm::Split::kSplitTrain).size(),
               data->split(crm::Split::kSplitVal).size(), data->split(crm::Split::kSplitTest).size(),
               static_cast<long long>(data->dropped_no_history));
  auto din = crm::Din::Create(dc, crm::DinInputsFrom(*data));
  if (!din.ok()) return Fail(din.status());
  (*din)->InitRandom(o.seed);
  o.checkpoint_dir = (std::filesystem::path(out) / "checkpoints").string();
  const auto t0 = std::chrono::steady_clock::now();
  crm::CrmTrainReport report;
  if (!parsed->Has("untrained")) {
    auto r = crm::TrainCrm(*data, **din, o, [](int64_t step, double loss) {
      if (step % 100 == 0) std::fprintf(stderr, "sheaf crm: step %lld loss %.4f\n", static_cast<long long>(step), loss);
    });
    if (!r.ok()) return Fail(r.status());
    report = *r;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  absl::Status s = crm::SaveCrm(**din, (std::filesystem::path(out) / "crm.sheafckpt").string());
  if (!s.ok()) return Fail(s);
  std::string json = absl::StrCat(
      "{\"dataset\": \"", name, "\", \"kept_interactions\": ", data->kept_interactions,
      ", \"users\": ", data->kept_users, ", \"items\": ", data->kept_items,
      ", \"history\": ", o.history, ", \"steps\": ", report.steps,
      ", \"train_seconds\": ", secs, ", \"trained\": ", parsed->Has("untrained") ? "false" : "true");
  for (crm::Split sp : {crm::Split::kSplitTrain, crm::Split::kSplitVal, crm::Split::kSplitTest}) {
    auto m = crm::EvaluateCrm(*data, **din, data->split(sp), o.history);
    if (!m.ok()) return Fail(m.status());
    std::fprintf(stdout, "%s: n %lld  AUC %.4f  LogLoss %.4f  acc %.4f\n", crm::SplitName(sp),
                 static_cast<long long>(m->count), m->auc, m->logloss, m->accuracy);
    absl::StrAppend(&json, ", \"", crm::SplitName(sp), "\": ", MetricsJson(*m));
  }
  absl::StrAppend(&json, "}\n");
  s = WriteFileAtomically((std::filesystem::path(out) / "crm_report.json").string(), json);
  if (!s.ok()) return Fail(s);
  return 0;
}

int ExportUser(const std::vector<std::string>& args) {
  if (args.size() != 3) return Usage("reclora export-user needs JOB_DIR USER_ID OUT_DIR");
  const std::string job = args[0], user_id = args[1], out = args[2];
  auto spec = ParseJobSpecFile(job + "/spec.yaml");
  if (!spec.ok()) return Fail(spec.status());
  if (!spec->has_reclora()) return Fail(absl::InvalidArgumentError(job + "/spec.yaml is not a reclora job"));
  ApplyDefaults(&*spec);
  auto parts = reclora::BuildParts(*spec, nullptr, 0);
  if (!parts.ok()) return Fail(parts.status());
  reclora::Parts& p = **parts;
  absl::Status s = reclora::LoadTrainedState(p, job);
  if (!s.ok()) return Fail(s);
  auto now = reclora::UserNowSample(p, user_id);
  if (!now.ok()) return Fail(now.status());
  auto adapter = reclora::ExportUserAdapter(p, now->user);
  if (!adapter.ok()) return Fail(adapter.status());
  // The check: the user's val/test samples under the mixture (gate frozen
  // at the user's reps) and under the exported adapter.
  double max_diff = 0;
  int checked = 0;
  for (crm::Split sp : {crm::Split::kSplitVal, crm::Split::kSplitTest}) {
    for (const crm::CtrSample& x : p.data.split(sp)) {
      if (x.user != now->user) continue;
      auto a = reclora::PredictWithUserGate(p, x, nullptr);
      auto b = reclora::PredictWithUserGate(p, x, adapter->get());
      if (!a.ok()) return Fail(a.status());
      if (!b.ok()) return Fail(b.status());
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(*a - *b)));
      ++checked;
    }
  }
  // fp32 logits of O(1) summed in two orders: p(yes) agrees to ~1e-6.
  constexpr double kBound = 1e-5;
  if (max_diff > kBound) {
    return Fail(absl::InternalError(absl::StrCat("the exported adapter differs from the mixture by ",
                                                 max_diff, " in p(yes) (bound ", kBound, ")")));
  }
  s = (*adapter)->SavePeft(out, spec->base_model());
  if (!s.ok()) return Fail(s);
  std::fprintf(stdout, "user %s: adapter in %s (%d samples checked, max |p_mix - p_adapter| = %.3g)\n",
               user_id.c_str(), out.c_str(), checked, max_diff);
  return 0;
}

}  // namespace

int RunRecloraCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Usage("reclora needs a subcommand (export-user)");
  if (args[0] == "export-user") return ExportUser(std::vector<std::string>(args.begin() + 1, args.end()));
  return Usage("unknown reclora subcommand " + args[0]);
}

int RunCrmCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Usage("crm needs a subcommand (train)");
  if (args[0] == "train") return CrmTrain(std::vector<std::string>(args.begin() + 1, args.end()));
  return Usage("unknown crm subcommand " + args[0]);
}

}  // namespace sheaf::cli
