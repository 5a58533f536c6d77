#include "jobs/metrics.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/json.h"
#include "base/file.h"
#include "core/status.h"

namespace sheaf::jobs {
namespace {

// The precision each known metric has always been written with (the lines
// the trainer used to format by hand), so that logs read the same.
enum class Style { kShortest, kInteger, kFixed1, kFixed4, kFixed6, kSignificant6 };

Style StyleOf(std::string_view key) {
  if (key == "step" || key == "steps" || key == "skipped_steps" || key == "skipped" ||
      key == "phase" || key.ends_with("_bytes")) {
    return Style::kInteger;
  }
  if (key == "loss" || key.ends_with("val_loss") || key == "grad_norm" ||
      key == "final_train_loss") {
    return Style::kFixed6;
  }
  if (key.ends_with("val_ppl")) return Style::kFixed4;
  if (key == "tokens_per_s") return Style::kFixed1;
  if (key == "lr") return Style::kSignificant6;
  return Style::kShortest;
}

void AppendNumber(std::string_view key, double v, std::string* out) {
  if (!std::isfinite(v)) {
    out->append("null");
    return;
  }
  switch (StyleOf(key)) {
    case Style::kInteger:
      if (v == std::floor(v) && std::fabs(v) < 9.0e15) {
        absl::StrAppend(out, static_cast<int64_t>(v));
        return;
      }
      break;
    case Style::kFixed1:
      absl::StrAppendFormat(out, "%.1f", v);
      return;
    case Style::kFixed4:
      absl::StrAppendFormat(out, "%.4f", v);
      return;
    case Style::kFixed6:
      absl::StrAppendFormat(out, "%.6f", v);
      return;
    case Style::kSignificant6:
      absl::StrAppendFormat(out, "%.6g", v);
      return;
    case Style::kShortest:
      break;
  }
  out->append(Json(v).Dump());
}

void AppendMember(std::string_view key, std::string* out, bool* first) {
  if (!*first) out->append(", ");
  *first = false;
  out->append(Json(key).Dump());
  out->append(": ");
}

}  // namespace

std::string FormatMetrics(const MetricValues& values, const MetricStrings& strings) {
  std::string out = "{";
  bool first = true;
  for (const char* lead : {"step", "steps"}) {
    if (auto it = values.find(lead); it != values.end()) {
      AppendMember(it->first, &out, &first);
      AppendNumber(it->first, it->second, &out);
    }
  }
  for (const auto& [key, v] : values) {
    if (key == "step" || key == "steps") continue;
    AppendMember(key, &out, &first);
    AppendNumber(key, v, &out);
  }
  for (const auto& [key, s] : strings) {
    AppendMember(key, &out, &first);
    out.append(Json(s).Dump());
  }
  out.push_back('}');
  return out;
}

MetricsSink::MetricsSink(std::string output_dir, bool writes)
    : output_dir_(std::move(output_dir)),
      metrics_path_(output_dir_ + "/metrics.jsonl"),
      writes_(writes) {}

absl::Status MetricsSink::Append(const MetricValues& values) {
  if (!writes_) return absl::OkStatus();
  std::ofstream f(metrics_path_, std::ios::app);
  f << FormatMetrics(values) << "\n";
  f.flush();
  if (!f) return absl::InternalError(absl::StrCat("cannot append to ", metrics_path_));
  return absl::OkStatus();
}

absl::Status MetricsSink::TruncateAfter(int64_t step) {
  if (!writes_) return absl::OkStatus();
  std::vector<std::string> kept;
  {
    std::ifstream in(metrics_path_);
    for (std::string line; std::getline(in, line);) {
      absl::StatusOr<Json> j = Json::Parse(line);
      if (j.ok() && j->Find("step") && j->Find("step")->is_int64() &&
          j->Find("step")->as_int64() <= step && step > 0) {
        kept.push_back(line);
      }
    }
  }
  std::string text;
  for (const std::string& l : kept) absl::StrAppend(&text, l, "\n");
  return WriteFileAtomically(metrics_path_, text);
}

absl::Status MetricsSink::WriteSummary(const MetricValues& values, const MetricStrings& strings) {
  if (!writes_) return absl::OkStatus();
  return WriteFileAtomically(output_dir_ + "/summary.json", FormatMetrics(values, strings) + "\n");
}

}  // namespace sheaf::jobs
