// `sheaf logits`: runs a model (+ adapter) on given token rows and writes
// the logits and per-token losses to a safetensors file, for comparisons
// with Hugging Face transformers / PEFT and for users' own checks.
#ifndef SHEAF_CLI_LOGITS_CMD_H_
#define SHEAF_CLI_LOGITS_CMD_H_

#include <string>
#include <vector>

namespace sheaf::cli {

inline constexpr const char* kLogitsUsage =
    "  logits --model DIR [--adapter DIR] --tokens ROWS --out FILE.safetensors [--threads N]\n"
    "         [--grads]        dump logits [B,T,V] and per-token losses [B,T-1] (f32);\n"
    "                          ROWS: ids, comma-separated, rows split by ';'; --grads\n"
    "                          (with --adapter) adds the adapter's gradients of the\n"
    "                          mean next-token loss, MODULE.lora_A.weight.grad ...\n";

// Returns the process exit code (0, 1 work failed, 2 bad usage or input).
int RunLogits(const std::vector<std::string>& args);

// Exit code of a failed step: 2 for errors the user's input causes
// (InvalidArgument, NotFound, FailedPrecondition, OutOfRange), else 1.
int ExitCodeFor(int status_code);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_LOGITS_CMD_H_
