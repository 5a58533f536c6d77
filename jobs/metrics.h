// The metrics sink: real JSON lines from named numbers.
//
// A metrics line is a map<string, double>. It is written as one JSON object
// with `step` (or `steps`) first and the other keys in name order; keys of
// the known metrics keep the precision they have always been written with
// (loss 6 decimals, val_ppl 4, lr 6 significant digits, ...), integral
// counters (step, *_bytes, skipped_steps) are written as integers, and any
// other key as the shortest decimal that round-trips. A non-finite value
// becomes null, so a line is always valid JSON. Strings (summary.json's
// export path) are escaped by core/json.
//
// MetricsSink appends lines to output_dir/metrics.jsonl and writes
// summary.json; only the root rank writes (others are no-ops).
// Not thread-safe.
#ifndef SHEAF_JOBS_METRICS_H_
#define SHEAF_JOBS_METRICS_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"

namespace sheaf::jobs {

using MetricValues = std::map<std::string, double>;
using MetricStrings = std::map<std::string, std::string>;

// One JSON object (no newline): `{"step": 3, "loss": 5.123456, ...}`.
std::string FormatMetrics(const MetricValues& values, const MetricStrings& strings = {});

class MetricsSink {
 public:
  // writes = false (a non-root rank): every call succeeds and writes nothing.
  MetricsSink(std::string output_dir, bool writes);

  const std::string& metrics_path() const { return metrics_path_; }
  // Appends one line to metrics.jsonl.
  absl::Status Append(const MetricValues& values);
  // Keeps only the lines of steps 1..step (all lines go when step == 0), so
  // that a resumed run's log matches its restored state.
  absl::Status TruncateAfter(int64_t step);
  // Writes output_dir/summary.json (atomically).
  absl::Status WriteSummary(const MetricValues& values, const MetricStrings& strings);

 private:
  std::string output_dir_, metrics_path_;
  bool writes_;
};

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_METRICS_H_
