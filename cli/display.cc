#include "cli/display.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace sheaf::cli {
namespace {

constexpr absl::string_view kTimeFormat = "%Y-%m-%d %H:%M:%S";

std::string FormatTime(int64_t unix_ms, absl::TimeZone zone) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime(kTimeFormat, absl::FromUnixMillis(unix_ms), zone);
}

// "120/150" or "120" while the total is unknown.
std::string Steps(const proto::Progress& p) {
  return p.total_steps() > 0 ? absl::StrCat(p.step(), "/", p.total_steps())
                             : absl::StrCat(p.step());
}

std::string Resources(const proto::ResourceRequest& r) {
  const int min = std::max(1, r.min_world_size());
  std::string world = r.max_world_size() == 0 ? absl::StrCat(min, " or more ranks")
                      : r.max_world_size() == min
                          ? absl::StrCat(min, min == 1 ? " rank" : " ranks")
                          : absl::StrCat(min, " to ", r.max_world_size(), " ranks");
  if (r.memory_bytes() > 0) {
    absl::StrAppend(&world, ", ", absl::StrFormat("%.1f", r.memory_bytes() / double(1 << 30)),
                    " GiB per rank");
  }
  return world;
}

}  // namespace

std::string StateName(proto::JobState state) {
  if (!proto::JobState_IsValid(state)) return absl::StrCat("UNKNOWN(", state, ")");
  const std::string& name = proto::JobState_Name(state);
  return name.substr(std::string("JOB_STATE_").size());
}

bool IsTerminalState(proto::JobState state) {
  return state == proto::JOB_STATE_SUCCEEDED || state == proto::JOB_STATE_FAILED ||
         state == proto::JOB_STATE_CANCELLED;
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatProgressLine(const proto::Progress& p) {
  std::string line = absl::StrFormat("step %s loss %.4f", Steps(p), p.loss());
  if (!p.phase().empty() && p.phase() != "train") line = absl::StrCat(p.phase(), ": ", line);
  if (p.has_val_loss()) absl::StrAppendFormat(&line, " val_loss %.4f", p.val_loss());
  absl::StrAppendFormat(&line, " tokens/s %.0f", p.tokens_per_s());
  if (p.eta_s() > 0) absl::StrAppend(&line, " eta ", FormatDuration(p.eta_s()));
  return line;
}

std::string FormatProgressBar(const proto::Progress& p, int width) {
  width = std::max(width, 4);
  std::string bar(static_cast<size_t>(width), ' ');
  int percent = -1;
  if (p.total_steps() > 0) {
    const double done = std::clamp(static_cast<double>(p.step()) / p.total_steps(), 0.0, 1.0);
    percent = static_cast<int>(done * 100);
    const int filled = static_cast<int>(done * width);
    std::fill(bar.begin(), bar.begin() + filled, '#');
    if (filled < width) bar[filled] = '>';
  }
  std::string line = absl::StrCat("[", bar, "] ", Steps(p));
  if (percent >= 0) absl::StrAppend(&line, "  ", percent, "%");
  absl::StrAppendFormat(&line, "  loss %.4f", p.loss());
  if (p.has_val_loss()) absl::StrAppendFormat(&line, "  val %.4f", p.val_loss());
  absl::StrAppendFormat(&line, "  %.0f tok/s", p.tokens_per_s());
  if (p.eta_s() > 0) absl::StrAppend(&line, "  ETA ", FormatDuration(p.eta_s()));
  return line;
}

std::string FormatStateChange(absl::string_view job_id, const proto::StateChange& change) {
  std::string line = absl::StrCat(job_id, ": ");
  if (change.from() != proto::JOB_STATE_UNSPECIFIED) {
    absl::StrAppend(&line, StateName(change.from()), " -> ");
  }
  absl::StrAppend(&line, StateName(change.to()));
  std::vector<std::string> details;
  if (change.attempt() > 0) details.push_back(absl::StrCat("attempt ", change.attempt()));
  if (!change.world_id().empty()) details.push_back(absl::StrCat("world ", change.world_id()));
  if (!details.empty()) absl::StrAppend(&line, " (", absl::StrJoin(details, ", "), ")");
  if (!change.reason().empty()) absl::StrAppend(&line, ": ", change.reason());
  return line;
}

std::string FormatJobTableHeader() {
  return absl::StrFormat("%-21s  %-9s  %-9s  %4s  %-19s  %-24s  %s", "ID", "STATE", "KIND", "PRI",
                         "CREATED", "PROGRESS", "NAME");
}

std::string FormatJobTableRow(const proto::Job& job, absl::TimeZone zone) {
  std::string progress = "-";
  if (job.has_progress() && job.progress().step() > 0) {
    progress = absl::StrFormat("%s loss %.3f", Steps(job.progress()), job.progress().loss());
  }
  return absl::StrFormat("%-21s  %-9s  %-9s  %4d  %-19s  %-24s  %s", job.id(),
                         StateName(job.state()), job.kind(), job.priority(),
                         FormatTime(job.created_unix_ms(), zone), progress, job.spec().name());
}

std::string FormatJobDetails(const proto::Job& job, absl::TimeZone zone) {
  std::vector<std::pair<std::string, std::string>> rows;
  auto add = [&rows](absl::string_view key, std::string value) {
    if (!value.empty()) rows.emplace_back(std::string(key), std::move(value));
  };
  add("id", job.id());
  add("state",
      StateName(job.state()) +
          (job.cancel_requested() && !IsTerminalState(job.state()) ? " (cancel requested)" : ""));
  add("name", job.spec().name());
  add("kind", job.kind());
  add("tenant", job.tenant());
  add("priority", absl::StrCat(job.priority()));
  add("resources", Resources(job.resources()));
  if (job.created_unix_ms() > 0) add("created", FormatTime(job.created_unix_ms(), zone));
  if (job.updated_unix_ms() > 0) add("updated", FormatTime(job.updated_unix_ms(), zone));
  if (job.attempts() > 0) add("attempts", absl::StrCat(job.attempts()));
  add("world", job.world_id());
  if (job.has_progress()) add("progress", FormatProgressLine(job.progress()));
  if (!job.metrics().empty()) {
    // Sorted, so that the output does not depend on map order.
    std::vector<std::pair<std::string, double>> metrics(job.metrics().begin(), job.metrics().end());
    std::sort(metrics.begin(), metrics.end());
    std::vector<std::string> parts;
    for (const auto& [name, value] : metrics) {
      parts.push_back(absl::StrFormat("%s=%.6g", name, value));
    }
    add("metrics", absl::StrJoin(parts, " "));
  }
  add("base_model", job.spec().base_model());
  add("output_dir", job.output_dir());
  if (job.artifact_dir() != job.output_dir()) add("artifact_dir", job.artifact_dir());
  add("last_error", job.last_error());
  add("waiting", job.waiting_reason());
  std::string out;
  for (const auto& [key, value] : rows) {
    absl::StrAppendFormat(&out, "%-12s %s\n", key + ":", value);
  }
  return out;
}

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    // Only invalid UTF-8 in a string field can get here; say so in JSON.
    return R"({"error":"message could not be converted to JSON"})";
  }
  return json;
}

}  // namespace sheaf::cli
