// The `sheaf` command. Local subcommands (this file): train, pretrain, eval,
// merge, data tokenize. Coordinator subcommands (cli/remote.h): submit,
// list, status, watch, cancel, fetch, logs. Exit codes: 0 success, 1 the
// work (or the watched job) failed, 2 bad usage or a bad spec, 3 the
// coordinator cannot be reached or refused the token, 4 no such job or
// artifact, 130 stopped by a signal before finishing (a checkpoint was
// written; resume with --resume).
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "base/status.h"
#include "cli/arith_cmd.h"
#include "cli/generate_cmd.h"
#include "cli/logits_cmd.h"
#include "cli/prune_cmd.h"
#include "cli/reclora_cmd.h"
#include "cli/remote.h"
#include "core/data/dataset.h"
#include "core/data/document_source.h"
#include "core/data/token_corpus.h"
#include "core/data/token_file.h"
#include "core/data/tokenizer.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/hf_export.h"
#include "core/safetensors.h"
#include "core/spec/yaml.h"
#include "dist/communicator.h"
#include "dist/mpi_communicator.h"
#include "jobs/build.h"
#include "jobs/evaluation.h"
#include "jobs/recipe.h"
#include "ops/cpu/ops.h"

namespace sheaf {
namespace {

constexpr const char* kLocalUsage = R"(usage: sheaf <command> [args]

Local commands:
  train [--set key=value]... [--quiet] JOB.yaml
                          run a job spec on this machine (lora or pretrain)
  train --resume OUTDIR   continue a run from its newest valid checkpoint
  pretrain ...            same as train, for all-weights (pretrain) specs
  eval --model DIR [--adapter DIR] --data PATH [--seq-len N] [--max-seqs N]
       [--threads N] [--tokenizer NAME]
                          mean loss and perplexity of a model (+ adapter)
  merge [--dtype bf16|f32|f16] [--max-shard-size SIZE] BASE_DIR ADAPTER_DIR OUT_DIR
                          write BASE with the PEFT adapter merged into it
                          (dtype default: the base's; tokenizer files copied;
                          shards with an index above SIZE, default 5G)
%ARITH%  data tokenize --out FILE.tok [--model DIR] [--tokenizer NAME|FILE]
                [--format text|paragraphs|jsonl] PATH...
                          tokenise a corpus once for mmap reads (the model's
                          tokenizer; bytes without --model / --tokenizer)
)";

constexpr const char* kExitCodes = R"(
Exit codes:
  0    ok
  1    failed: the work failed; `watch`: the job FAILED or was CANCELLED
  2    bad usage, a bad spec, or a request the coordinator found invalid
  3    cannot reach the coordinator, or it refused the token
  4    no such job (or not yours), or no such artifact
  130  stopped by a signal (train: checkpoint written; continue with
       `sheaf train --resume OUTDIR`)
)";

std::string UsageText() {
  return absl::StrCat(absl::StrReplaceAll(kLocalUsage, {{"%ARITH%", cli::kArithUsage}}),
                      cli::kLogitsUsage, cli::kGenerateUsage, cli::kPruneUsage, cli::kRecloraUsage, "\n",
                      cli::kRemoteUsage, kExitCodes);
}

int Fail(const absl::Status& s, int code = 1) {
  std::fprintf(stderr, "sheaf: error: %s\n", std::string(s.message()).c_str());
  return code;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "sheaf: %s\n\n%s", why.c_str(), UsageText().c_str());
  return 2;
}

jobs::Recipe* g_recipe = nullptr;
void OnSignal(int) {
  if (g_recipe) g_recipe->RequestStop();
}

int Train(const std::vector<std::string>& args, bool pretrain_only) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(args, {{"set"}, {"resume"}, {"quiet", false}});
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  if (parsed->positional.size() > 1) return Usage("more than one job spec given");
  const std::vector<std::string>& overrides = parsed->All("set");
  std::string spec_path = parsed->positional.empty() ? "" : parsed->positional[0];
  const std::string resume = parsed->Last("resume");
  const bool quiet = parsed->Has("quiet");
  if (!resume.empty()) {
    if (!spec_path.empty()) return Usage("--resume takes the run's output dir; it reads OUTDIR/spec.yaml");
    spec_path = resume + "/spec.yaml";
  }
  if (spec_path.empty()) return Usage("no job spec given");
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecFile(spec_path, overrides);
  if (!spec.ok()) return Fail(spec.status(), 2);
  if (pretrain_only && !spec->has_pretrain()) {
    return Fail(absl::InvalidArgumentError(spec_path + ": `sheaf pretrain` needs a `pretrain:` job"), 2);
  }
  TrainerOptions opts;
  opts.resume = !resume.empty();
  opts.quiet = quiet;
  // Under mpirun / srun every rank runs this same command; a world of more
  // than one rank shards the frozen weights and all-reduces gradients.
  absl::StatusOr<dist::RankInfo> rank = dist::DiscoverRank();
  if (!rank.ok()) return Fail(rank.status(), 2);
  std::unique_ptr<dist::MpiCommunicator> comm;
  if (rank->world_size > 1) {
    absl::StatusOr<std::unique_ptr<dist::MpiCommunicator>> c = dist::MpiCommunicator::Create();
    if (!c.ok()) return Fail(c.status());
    comm = std::move(*c);
    opts.comm = comm.get();
  }
  absl::StatusOr<std::unique_ptr<jobs::Recipe>> recipe = jobs::CreateRecipe(*spec, opts);
  if (!recipe.ok()) {
    const bool user_error = recipe.status().code() == absl::StatusCode::kInvalidArgument ||
                            recipe.status().code() == absl::StatusCode::kNotFound ||
                            recipe.status().code() == absl::StatusCode::kAlreadyExists;
    return Fail(recipe.status(), user_error ? 2 : 1);
  }
  g_recipe = recipe->get();
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  absl::StatusOr<TrainResult> result = (*recipe)->Run();
  g_recipe = nullptr;
  if (!result.ok()) return Fail(result.status());
  if (result->steps < (*recipe)->total_steps()) return 130;
  if (rank->world_rank != 0) return 0;
  std::printf("val_loss %.4f -> %.4f (ppl %.2f -> %.2f); wrote %s\n", result->first_val_loss,
              result->final_val_loss, std::exp(result->first_val_loss),
              std::exp(result->final_val_loss), result->export_dir.c_str());
  return 0;
}

// Exit code of a failed step: 2 for what the user's input causes.
int FailInput(const absl::Status& s) { return Fail(s, cli::ExitCodeFor(static_cast<int>(s.code()))); }

int Eval(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(
      args, {{"model"}, {"adapter"}, {"data"}, {"seq-len"}, {"max-seqs"}, {"threads"}, {"tokenizer"}});
  if (!parsed.ok()) return Usage(absl::StrCat("eval: ", parsed.status().message()));
  if (!parsed->positional.empty()) return Usage("eval: unexpected argument " + parsed->positional[0]);
  const std::string model_dir = parsed->Last("model");
  const std::string adapter_dir = parsed->Last("adapter");
  const std::vector<std::string>& data = parsed->All("data");
  absl::StatusOr<int64_t> seq_len_flag =
      ParseIntFlag("seq-len", parsed->Last("seq-len", "256"), 2, 1 << 20);
  if (!seq_len_flag.ok()) return Usage(absl::StrCat("eval: ", seq_len_flag.status().message()));
  const int seq_len = static_cast<int>(*seq_len_flag);
  // 0: every validation sequence.
  absl::StatusOr<int64_t> max_seqs_flag =
      ParseIntFlag("max-seqs", parsed->Last("max-seqs", "0"), 0, INT64_MAX);
  if (!max_seqs_flag.ok()) return Usage(absl::StrCat("eval: ", max_seqs_flag.status().message()));
  const int64_t max_seqs = *max_seqs_flag;
  int threads = 0;
  if (parsed->Has("threads")) {
    absl::StatusOr<int64_t> th = ParseIntFlag("threads", parsed->Last("threads"), 1, 4096);
    if (!th.ok()) return Usage(absl::StrCat("eval: ", th.status().message()));
    threads = static_cast<int>(*th);
  }
  if (model_dir.empty() || data.empty()) return Usage("eval needs --model and --data");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(config.status(), 2);
  if (seq_len > config->max_position_embeddings) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "eval: --seq-len ", seq_len, " (default 256) exceeds the model's "
                    "max_position_embeddings ", config->max_position_embeddings, " (",
                    model_dir, "/config.json); pass --seq-len ", config->max_position_embeddings,
                    " or less")),
                2);
  }
  if (config->sliding_window > 0 && seq_len > config->sliding_window) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "eval: --seq-len ", seq_len, " exceeds the model's sliding_window ",
                    config->sliding_window, " (sliding-window attention is not implemented; "
                    "pass --seq-len ", config->sliding_window, " or less)")),
                2);
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      jobs::MakeTokenizerForModel(parsed->Last("tokenizer"), model_dir);
  if (!tok.ok()) return Fail(tok.status(), 2);
  if (config->vocab_size < (*tok)->vocab_size()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "eval: ", model_dir, ": vocab_size ", config->vocab_size,
                    " is smaller than the tokenizer's ", (*tok)->vocab_size())),
                2);
  }
  if (absl::Status s = CheckWeightsMatchConfig(*config, model_dir); !s.ok()) return FailInput(s);
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(*config, NothingTrainable);
  if (!model.ok()) return FailInput(model.status());
  if (threads > 0) (*model)->backend()->SetNumThreads(threads);
  if (absl::Status s = (*model)->LoadWeights(model_dir); !s.ok()) return FailInput(s);
  std::unique_ptr<LoraAdapter> adapter;
  if (!adapter_dir.empty()) {
    absl::StatusOr<std::unique_ptr<LoraAdapter>> a = LoraAdapter::LoadPeft(adapter_dir, *config);
    if (!a.ok()) return Fail(a.status(), 2);
    adapter = std::move(*a);
    if (absl::Status cs = CheckAdapterBaseCopies(**model, *adapter); !cs.ok()) return Fail(cs, 2);
  }
  std::vector<DocumentSource> sources;
  for (const std::string& d : data) sources.push_back(DocumentSource{d});
  absl::StatusOr<std::vector<Document>> docs = LoadDocuments(sources);
  if (!docs.ok()) return Fail(docs.status(), 2);
  absl::StatusOr<std::unique_ptr<InMemoryCorpus>> corpus = InMemoryCorpus::FromDocuments(*docs, **tok);
  if (!corpus.ok()) return Fail(corpus.status(), 2);
  std::shared_ptr<const TokenCorpus> c(std::move(*corpus));
  DatasetOptions dopt;
  dopt.seq_len = seq_len;
  absl::StatusOr<std::unique_ptr<Dataset>> ds = Dataset::Create(dopt, c, c);
  if (!ds.ok()) return Fail(ds.status(), 2);
  // The evaluation the recipes run (jobs/evaluation.h), on a world of one.
  jobs::EvalOptions eo;
  eo.batch_size = 8;
  eo.max_sequences = max_seqs;
  jobs::WorldSync one(nullptr);
  absl::StatusOr<LossStats> s = jobs::EvaluateLoss(**model, adapter.get(), **ds, eo, one);
  if (!s.ok()) return FailInput(s.status());
  const LossStats total = *s;
  std::printf("loss %.6f ppl %.6f tokens %lld\n", total.mean(), std::exp(total.mean()),
              static_cast<long long>(total.tokens));
  return 0;
}

// The dtype of a model directory's weights (its embedding's), as a
// safetensors dtype; F32 when it cannot tell.
SafetensorsDtype BaseDtype(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> st = SafetensorsModel::Open(dir);
  if (!st.ok()) return SafetensorsDtype::kDtypeF32;
  const TensorInfo* t = (*st)->Find("model.embed_tokens.weight");
  if (t == nullptr) return SafetensorsDtype::kDtypeF32;
  return t->dtype;
}

int Merge(const std::vector<std::string>& args_in) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(args_in, {{"dtype"}, {"max-shard-size"}});
  if (!parsed.ok()) return Usage(absl::StrCat("merge: ", parsed.status().message()));
  const std::vector<std::string>& args = parsed->positional;
  if (args.size() != 3) return Usage("merge takes BASE_DIR ADAPTER_DIR OUT_DIR");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(args[0]);
  if (!config.ok()) return Fail(config.status(), 2);
  SafetensorsDtype out_dtype = BaseDtype(args[0]);
  if (parsed->Has("dtype")) {
    const std::string d = parsed->Last("dtype");
    if (d == "bf16") out_dtype = SafetensorsDtype::kDtypeBF16;
    else if (d == "f32") out_dtype = SafetensorsDtype::kDtypeF32;
    else if (d == "f16") out_dtype = SafetensorsDtype::kDtypeF16;
    else return Usage("merge: --dtype must be bf16, f32 or f16");
  } else if (out_dtype != SafetensorsDtype::kDtypeBF16 && out_dtype != SafetensorsDtype::kDtypeF16) {
    out_dtype = SafetensorsDtype::kDtypeF32;
  }
  // transformers' save_pretrained default (max_shard_size "5GB").
  int64_t max_shard = int64_t{5} * 1000 * 1000 * 1000;
  if (parsed->Has("max-shard-size")) {
    absl::StatusOr<int64_t> b = ParseByteSize("max-shard-size", parsed->Last("max-shard-size"));
    if (!b.ok()) return Usage(std::string(b.status().message()));
    if (*b < 1) return Usage("merge: --max-shard-size must be > 0");
    max_shard = *b;
  }
  if (absl::Status s = CheckWeightsMatchConfig(*config, args[0]); !s.ok()) return FailInput(s);
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(*config, NothingTrainable);
  if (!model.ok()) return FailInput(model.status());
  if (absl::Status s = (*model)->LoadWeights(args[0]); !s.ok()) return FailInput(s);
  absl::StatusOr<std::unique_ptr<LoraAdapter>> a = LoraAdapter::LoadPeft(args[1], *config);
  if (!a.ok()) return Fail(a.status(), 2);
  if (absl::Status s = CheckAdapterBaseCopies(**model, **a); !s.ok()) return Fail(s, 2);
  if (absl::Status s = (*model)->MergeAdapter(**a); !s.ok()) return Fail(s, 2);
  if (absl::Status s = (*model)->Save(args[2], out_dtype, max_shard); !s.ok()) return Fail(s);
  // The tokenizer and generation files beside the merged model, so that
  // AutoTokenizer / generate work on it as on the base.
  absl::StatusOr<std::vector<std::string>> copied = CopyHfSideFiles(args[0], args[2]);
  if (!copied.ok()) return Fail(copied.status());
  std::printf("merged %s into %s -> %s (%s; copied %zu tokenizer/generation files)\n",
              args[1].c_str(), args[0].c_str(), args[2].c_str(), SafetensorsDtypeName(out_dtype),
              copied->size());
  return 0;
}

int Tokenize(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(args, {{"out"}, {"format"}, {"model"}, {"tokenizer"}});
  if (!parsed.ok()) return Usage(absl::StrCat("data tokenize: ", parsed.status().message()));
  const std::string out = parsed->Last("out");
  const std::string format = parsed->Last("format", "text");
  const std::vector<std::string>& paths = parsed->positional;
  if (out.empty() || paths.empty()) return Usage("data tokenize needs --out FILE and at least one PATH");
  std::vector<DocumentSource> sources;
  for (const std::string& p : paths) {
    DocumentSource s{p};
    if (format == "paragraphs") s.split_blank_lines = true;
    else if (format == "jsonl") s.format = SourceFormat::kSourceFormatJsonl;
    else if (format != "text") return Usage("data tokenize: --format must be text, paragraphs or jsonl");
    sources.push_back(s);
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      jobs::MakeTokenizerForModel(parsed->Last("tokenizer"), parsed->Last("model"));
  if (!tok.ok()) return Fail(tok.status(), 2);
  absl::StatusOr<TokenizeStats> st = TokenizeToFile(sources, **tok, out);
  if (!st.ok()) return Fail(st.status(), 2);
  std::printf("wrote %s: %lld documents, %lld tokens, %lld bytes\n", out.c_str(),
              static_cast<long long>(st->num_docs), static_cast<long long>(st->num_tokens),
              static_cast<long long>(st->file_bytes));
  return 0;
}

}  // namespace
}  // namespace sheaf

int main(int argc, char** argv) {
  using namespace sheaf;
  ops::UsePassiveOmpWaitPolicy(argv);
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(UsageText().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "train") return Train(args, false);
  if (cmd == "pretrain") return Train(args, true);
  if (cmd == "eval") return Eval(args);
  if (cmd == "merge") return Merge(args);
  if (cmd == "logits") return cli::RunLogits(args);
  if (cmd == "generate") return cli::RunGenerate(args);
  if (cmd == "prune") return cli::PruneCommand(args);
  if (cmd == "recover") return cli::RecoverCommand(args);
  if (cmd == "arith") return cli::RunArith(args);
  if (cmd == "crm") return cli::RunCrmCommand(args);
  if (cmd == "reclora") return cli::RunRecloraCommand(args);
  if (cli::IsRemoteCommand(cmd)) {
    cli::RemoteIo io;
    io.out_is_tty = isatty(STDOUT_FILENO) == 1;
    io.getenv = [](const char* name) -> std::optional<std::string> {
      const char* value = std::getenv(name);
      if (value == nullptr) return std::nullopt;
      return std::string(value);
    };
    io.zone = absl::LocalTimeZone();
    return cli::RunRemoteCommand(cmd, args, io);
  }
  if (cmd == "data" && !args.empty() && args[0] == "tokenize") {
    return Tokenize(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  return Usage("unknown command " + cmd);
}
