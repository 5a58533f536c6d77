// `sheaf arith`: model arithmetic over model dirs and adapters
// (core/arith/arith.h).
//
//   sheaf arith --base DIR --out DIR [--ref DIR]
//               [--model LAMBDA:DIR[:REF]]... [--adapter LAMBDA:DIR]...
//
// OUT = BASE + Σ λ_i · (MODEL_i − REF_i) + Σ λ_j · ΔW(ADAPTER_j); REF_i is
// the term's own :REF, else --ref, else BASE.
#ifndef SHEAF_CLI_ARITH_CMD_H_
#define SHEAF_CLI_ARITH_CMD_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/arith/arith.h"

namespace sheaf::cli {

inline constexpr const char* kArithUsage =
    "  arith --base DIR --out DIR [--ref DIR] [--model L:DIR[:REF]]... [--adapter L:DIR]...\n"
    "                          OUT = BASE + sum L*(MODEL - REF) + sum L*dW(ADAPTER),\n"
    "                          streamed tensor by tensor, in BASE's dtype\n";

// Parses one --model / --adapter value ("0.5:runs/x" or "0.5:runs/x:models/r").
absl::StatusOr<ArithTerm> ParseArithTerm(const std::string& flag, const std::string& value,
                                         ArithTerm::Kind kind, const std::string& default_ref);

// Runs the command; returns the process exit code (0, 1 failed, 2 usage).
int RunArith(const std::vector<std::string>& args);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_ARITH_CMD_H_
