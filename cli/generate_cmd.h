// `sheaf generate`: text from a model (+ adapter), greedy or sampled.
#ifndef SHEAF_CLI_GENERATE_CMD_H_
#define SHEAF_CLI_GENERATE_CMD_H_

#include <string>
#include <vector>

namespace sheaf::cli {

inline constexpr const char* kGenerateUsage =
    "  generate MODEL_DIR [--adapter DIR] (--prompt TEXT | --prompt-ids IDS)\n"
    "           [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]\n"
    "           [--tokenizer NAME] [--threads N] [--print-ids] [--no-kv-cache]\n"
    "                          continue a prompt (greedy at temperature 0, the\n"
    "                          default; else top-p sampling); stops at EOS; a KV\n"
    "                          cache unless --no-kv-cache\n";

int RunGenerate(const std::vector<std::string>& args);

}  // namespace sheaf::cli

#endif  // SHEAF_CLI_GENERATE_CMD_H_
