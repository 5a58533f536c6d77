#include "cli/remote.h"

#include <algorithm>
#include <map>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/flags.h"
#include "cli/args.h"
#include "cli/display.h"
#include "cli/fetch.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"

namespace sheaf::cli {

const char kRemoteUsage[] =
    R"(Coordinator commands (a job runs on a worker world the coordinator picks):
  submit JOB.yaml [--set key=value]... [--priority P] [--min-world N]
         [--max-world N] [--memory BYTES]
                          validate and submit a job; prints only its id
  list [--state S] [--kind K] [--all-pages | --limit N] [--page-size N]
                          your jobs, oldest first (one page unless told)
  status ID               a job's state, progress, metrics, paths, last error
  watch ID                follow a job to its end: a progress bar on a terminal,
                          plain lines otherwise; exit 0 when it SUCCEEDED,
                          1 when it FAILED or was CANCELLED
  cancel ID               cancel a job (a running one stops at its next heartbeat)
  fetch ID -o DIR [--path P]
                          download the artifacts (or the file or directory P)
                          into DIR; a partial download (FILE.part) resumes
  logs ID [-f]            the job's train.log; -f follows it until the job ends

  Connection (every coordinator command):
  --addr HOST:PORT        the coordinator (env SHEAF_ADDR; default localhost:7070)
  --token T | --token-file F
                          bearer token (env SHEAF_TOKEN / SHEAF_TOKEN_FILE)
  --ca FILE               use TLS, verifying the coordinator's certificate
                          against this PEM CA (env SHEAF_CA)
  --tls-server-name NAME  the name the certificate carries, when not the host
  --output text|json      list, status, watch: json gives one JSON object per line
)";

namespace {

struct CommandInfo {
  std::vector<FlagSpec> flags;
  // Positional arguments expected: the spec path or the job id.
  int positional = 1;
  const char* positional_name = "ID";
  bool has_output_format = false;
};

const std::map<std::string, CommandInfo>& Commands() {
  static const auto* const kCommands = new std::map<std::string, CommandInfo>{
      {"submit",
       {{{"set"}, {"priority"}, {"min-world"}, {"max-world"}, {"memory"}}, 1, "JOB.yaml"}},
      {"list",
       {{{"state"}, {"kind"}, {"all-pages", false}, {"limit"}, {"page-size"}}, 0, "", true}},
      {"status", {{}, 1, "ID", true}},
      {"watch", {{}, 1, "ID", true}},
      {"cancel", {{}, 1, "ID"}},
      {"fetch", {{{"output-dir", true, "o"}, {"path"}}, 1, "ID"}},
      {"logs", {{{"follow", false, "f"}}, 1, "ID"}},
  };
  return *kCommands;
}

const std::vector<FlagSpec>& ConnectionFlagSpecs() {
  static const auto* const kFlags =
      new std::vector<FlagSpec>{{"addr"}, {"token"}, {"token-file"}, {"ca"}, {"tls-server-name"}};
  return *kFlags;
}

// One command's run: its arguments, output and connection.
class Client {
 public:
  Client(std::string command, const RemoteIo& io) : command_(std::move(command)), io_(io) {}

  int Run(const std::vector<std::string>& args);

 private:
  int Submit();
  int List();
  int Status();
  int Watch();
  int Cancel();
  int Fetch();
  int Logs();

  // Prints "sheaf: WHY" and returns 2.
  int Usage(absl::string_view why) {
    Err(absl::StrCat(why, " (see `sheaf --help`)"));
    return kExitUsage;
  }
  // Prints the line for a failed call and returns its exit code.
  int Fail(const absl::Status& status, absl::string_view job_id = "") {
    CliError error = DescribeError(status, connection_->options(), job_id);
    Err(error.message);
    return error.exit_code;
  }
  void Err(absl::string_view line) {
    std::fprintf(io_.err, "sheaf: %.*s\n", static_cast<int>(line.size()), line.data());
    std::fflush(io_.err);
  }
  void Out(absl::string_view text) {
    std::fwrite(text.data(), 1, text.size(), io_.out);
    std::fflush(io_.out);
  }
  void OutLine(absl::string_view line) { Out(absl::StrCat(line, "\n")); }
  const std::string& id() const { return args_.positional[0]; }
  absl::StatusOr<proto::Job> GetJob(const std::string& job_id);

  const std::string command_;
  const RemoteIo& io_;
  ParsedArgs args_;
  bool json_ = false;
  // submit: the parsed, locally validated spec.
  proto::JobSpec spec_;
  std::unique_ptr<Connection> connection_;
};

int Client::Run(const std::vector<std::string>& args) {
  const CommandInfo& info = Commands().at(command_);
  std::vector<FlagSpec> specs = info.flags;
  specs.insert(specs.end(), ConnectionFlagSpecs().begin(), ConnectionFlagSpecs().end());
  if (info.has_output_format) specs.push_back({"output"});
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(args, specs);
  if (!parsed.ok()) return Usage(absl::StrCat(command_, ": ", parsed.status().message()));
  args_ = *std::move(parsed);
  if (static_cast<int>(args_.positional.size()) != info.positional) {
    return Usage(info.positional == 0
                     ? absl::StrCat(command_, ": unexpected argument ", args_.positional[0])
                     : absl::StrCat(command_, " takes one ", info.positional_name,
                                    args_.positional.empty() ? "" : ", got more"));
  }
  const std::string output = args_.Last("output", "text");
  if (output != "text" && output != "json") {
    return Usage(absl::StrCat(command_, ": --output must be text or json, got '", output, "'"));
  }
  json_ = output == "json";

  // A spec is judged before anything is sent (and before a token is
  // needed), with the errors `sheaf train` gives.
  if (command_ == "submit") {
    absl::StatusOr<proto::JobSpec> spec = ParseJobSpecFile(args_.positional[0], args_.All("set"));
    absl::Status valid = spec.status();
    if (spec.ok()) {
      // The coordinator gives an empty output_dir the job's own directory.
      proto::JobSpec judged = *spec;
      if (judged.output_dir().empty()) judged.set_output_dir("job");
      valid = ValidateJobSpec(judged);
    }
    if (!valid.ok()) {
      Err(absl::StrCat("error: ", valid.message()));
      return kExitUsage;
    }
    // Sent as the user wrote it: the coordinator applies the defaults.
    spec_ = *std::move(spec);
  }

  ConnectionFlags flags;
  flags.addr = args_.Last("addr");
  flags.token = args_.Last("token");
  flags.token_file = args_.Last("token-file");
  flags.ca = args_.Last("ca");
  flags.tls_server_name = args_.Last("tls-server-name");
  absl::StatusOr<ConnectionOptions> options = ResolveConnectionOptions(flags, io_.getenv);
  if (!options.ok()) return Usage(options.status().message());
  absl::StatusOr<std::unique_ptr<Connection>> connection = Connection::Create(*options);
  if (!connection.ok()) return Usage(connection.status().message());
  connection_ = *std::move(connection);

  if (command_ == "submit") return Submit();
  if (command_ == "list") return List();
  if (command_ == "status") return Status();
  if (command_ == "watch") return Watch();
  if (command_ == "cancel") return Cancel();
  if (command_ == "fetch") return Fetch();
  return Logs();
}

absl::StatusOr<proto::Job> Client::GetJob(const std::string& job_id) {
  auto context = connection_->NewContext();
  proto::GetJobRequest request;
  request.set_job_id(job_id);
  proto::Job job;
  absl::Status status = FromGrpc(connection_->stub().GetJob(context.get(), request, &job));
  if (!status.ok()) return status;
  return job;
}

int Client::Submit() {
  proto::SubmitJobRequest request;
  *request.mutable_spec() = spec_;
  if (args_.Has("priority")) {
    absl::StatusOr<int64_t> p = ParseIntFlag("priority", args_.Last("priority"), -1000, 1000);
    if (!p.ok()) return Usage(p.status().message());
    request.set_priority(static_cast<int32_t>(*p));
  }
  for (const char* flag : {"min-world", "max-world"}) {
    if (!args_.Has(flag)) continue;
    absl::StatusOr<int64_t> n = ParseIntFlag(flag, args_.Last(flag), 1, 1 << 20);
    if (!n.ok()) return Usage(n.status().message());
    if (std::string(flag) == "min-world") {
      request.mutable_resources()->set_min_world_size(static_cast<int32_t>(*n));
    } else {
      request.mutable_resources()->set_max_world_size(static_cast<int32_t>(*n));
    }
  }
  if (args_.Has("memory")) {
    absl::StatusOr<int64_t> bytes = ParseByteSize("memory", args_.Last("memory"));
    if (!bytes.ok()) return Usage(bytes.status().message());
    request.mutable_resources()->set_memory_bytes(*bytes);
  }
  auto context = connection_->NewContext();
  proto::SubmitJobResponse response;
  absl::Status status = FromGrpc(connection_->stub().SubmitJob(context.get(), request, &response));
  if (!status.ok()) return Fail(status);
  // Only the id, so that `id=$(sheaf submit job.yaml)` works; notes (no
  // registered world can run the job yet) go to stderr.
  for (const std::string& warning : response.warnings()) {
    Err(absl::StrCat("warning: job ", response.job_id(), " accepted, but ", warning));
  }
  OutLine(response.job_id());
  return kExitOk;
}

int Client::List() {
  proto::ListJobsRequest request;
  if (args_.Has("state")) {
    absl::StatusOr<proto::JobState> state = ParseJobState(args_.Last("state"));
    if (!state.ok()) return Usage(state.status().message());
    request.set_state(*state);
  }
  request.set_kind(args_.Last("kind"));
  const bool all_pages = args_.Has("all-pages");
  int64_t limit = 0;
  if (args_.Has("limit")) {
    if (all_pages) return Usage("list: --all-pages and --limit exclude each other");
    absl::StatusOr<int64_t> n = ParseIntFlag("limit", args_.Last("limit"), 1, 1 << 30);
    if (!n.ok()) return Usage(n.status().message());
    limit = *n;
  }
  int64_t page_size = 0;
  if (args_.Has("page-size")) {
    absl::StatusOr<int64_t> n = ParseIntFlag("page-size", args_.Last("page-size"), 1, 1000);
    if (!n.ok()) return Usage(n.status().message());
    page_size = *n;
  }
  int64_t shown = 0;
  bool more = false;
  while (true) {
    int64_t size = page_size;
    if (limit > 0) size = std::min<int64_t>(size > 0 ? size : 1000, limit - shown);
    request.set_page_size(static_cast<int32_t>(size));
    auto context = connection_->NewContext();
    proto::ListJobsResponse response;
    absl::Status status = FromGrpc(connection_->stub().ListJobs(context.get(), request, &response));
    if (!status.ok()) return Fail(status);
    std::string text;
    for (const proto::Job& job : response.jobs()) {
      if (limit > 0 && shown >= limit) {
        more = true;
        break;
      }
      if (!json_ && shown == 0) absl::StrAppend(&text, FormatJobTableHeader(), "\n");
      absl::StrAppend(&text, json_ ? ToJsonLine(job) : FormatJobTableRow(job, io_.zone), "\n");
      ++shown;
    }
    Out(text);
    if (response.next_page_token().empty()) break;
    if (!all_pages && (limit == 0 || shown >= limit)) {
      more = true;
      break;
    }
    request.set_page_token(response.next_page_token());
  }
  if (shown == 0 && !json_) Err("no jobs");
  if (more) Err("more jobs: add --all-pages, or --limit N");
  return kExitOk;
}

int Client::Status() {
  absl::StatusOr<proto::Job> job = GetJob(id());
  if (!job.ok()) return Fail(job.status(), id());
  Out(json_ ? ToJsonLine(*job) + "\n" : FormatJobDetails(*job, io_.zone));
  return kExitOk;
}

int Client::Watch() {
  proto::JobState state = proto::JOB_STATE_UNSPECIFIED;
  std::string reason;
  bool bar_shown = false;
  int reconnects = 0;
  absl::Duration delay = io_.reconnect_delay;
  while (!IsTerminalState(state)) {
    auto context = connection_->NewContext(/*unary=*/false);
    proto::WatchJobRequest request;
    request.set_job_id(id());
    std::unique_ptr<grpc::ClientReader<proto::JobEvent>> reader =
        connection_->stub().WatchJob(context.get(), request);
    proto::JobEvent event;
    while (reader->Read(&event)) {
      reconnects = 0;
      delay = io_.reconnect_delay;
      if (json_) OutLine(ToJsonLine(event));
      if (event.has_progress()) {
        // A heartbeat before the first step says nothing yet.
        const proto::Progress& p = event.progress();
        if (json_ || (p.step() == 0 && p.total_steps() == 0 && !p.has_val_loss())) continue;
        if (io_.out_is_tty) {
          Out(absl::StrCat("\r\033[K", FormatProgressBar(event.progress())));
          bar_shown = true;
        } else {
          OutLine(FormatProgressLine(event.progress()));
        }
      } else if (event.has_state_change()) {
        const proto::StateChange& change = event.state_change();
        // A reconnected stream starts with the current state again.
        const bool repeat = change.from() == proto::JOB_STATE_UNSPECIFIED && change.to() == state;
        state = change.to();
        if (!change.reason().empty()) reason = change.reason();
        if (json_ || repeat) continue;
        if (bar_shown) Out("\n");
        bar_shown = false;
        OutLine(FormatStateChange(id(), change));
        if (!change.waiting_reason().empty()) {
          OutLine(absl::StrCat("job ", id(), " waits: ", change.waiting_reason()));
        }
      }
    }
    absl::Status status = FromGrpc(reader->Finish());
    if (status.ok()) break;
    // A coordinator restart or a network break: carry on where it was,
    // unless the coordinator was never reached or refused the job.
    if (absl::IsUnavailable(status) && state != proto::JOB_STATE_UNSPECIFIED && reconnects < 5) {
      ++reconnects;
      if (bar_shown) Out("\n");
      bar_shown = false;
      Err(absl::StrCat("lost the coordinator (", status.message(), "); reconnecting in ",
                       absl::FormatDuration(delay)));
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(delay));
      delay *= 2;
      continue;
    }
    if (bar_shown) Out("\n");
    return Fail(status, id());
  }
  if (bar_shown) Out("\n");
  if (!IsTerminalState(state)) {
    // The stream ended without an end state (it should not): ask.
    absl::StatusOr<proto::Job> job = GetJob(id());
    if (!job.ok()) return Fail(job.status(), id());
    state = job->state();
    reason = job->last_error();
    if (!IsTerminalState(state)) {
      Err(absl::StrCat("the watch of job ", id(), " ended while it is ", StateName(state)));
      return kExitFailed;
    }
  }
  if (state == proto::JOB_STATE_SUCCEEDED) return kExitOk;
  if (reason.empty()) {
    absl::StatusOr<proto::Job> job = GetJob(id());
    if (job.ok()) reason = job->last_error();
  }
  Err(absl::StrCat("job ", id(), state == proto::JOB_STATE_CANCELLED ? " was " : " ",
                   StateName(state), reason.empty() ? "" : absl::StrCat(": ", reason)));
  return kExitFailed;
}

int Client::Cancel() {
  auto context = connection_->NewContext();
  proto::CancelJobRequest request;
  request.set_job_id(id());
  proto::Job job;
  absl::Status status = FromGrpc(connection_->stub().CancelJob(context.get(), request, &job));
  if (absl::IsFailedPrecondition(status)) {
    // "job X is already JOB_STATE_SUCCEEDED; nothing to cancel"
    Err(status.message());
    return kExitFailed;
  }
  if (!status.ok()) return Fail(status, id());
  if (job.state() == proto::JOB_STATE_CANCELLED) {
    OutLine(absl::StrCat(id(), ": CANCELLED"));
  } else {
    OutLine(absl::StrCat(id(), ": cancel requested; it is ", StateName(job.state()),
                         " and stops at its world's next heartbeat"));
  }
  return kExitOk;
}

int Client::Fetch() {
  FetchOptions options;
  options.job_id = id();
  options.dest_dir = args_.Last("output-dir");
  if (options.dest_dir.empty()) return Usage("fetch needs -o DIR");
  options.path = args_.Last("path");
  options.retry_delay = io_.reconnect_delay;
  const std::string dest = options.dest_dir;
  options.on_file = [this, &dest](const FetchedFile& file) {
    std::string line = absl::StrCat(dest, "/", file.path, "  ", file.size, " bytes");
    if (file.resumed_from > 0) {
      absl::StrAppend(&line, " (resumed from ", file.resumed_from, ")");
    }
    OutLine(line);
  };
  absl::StatusOr<FetchResult> result = FetchArtifacts(*connection_, options);
  if (!result.ok()) return Fail(result.status(), id());
  int64_t total = 0;
  for (const FetchedFile& file : result->files) total += file.size;
  OutLine(absl::StrCat("fetched ", result->files.size(),
                       result->files.size() == 1 ? " file, " : " files, ", total, " bytes (",
                       result->bytes_received, " received) into ", dest));
  return kExitOk;
}

int Client::Logs() {
  constexpr char kLog[] = "train.log";
  const bool follow = args_.Has("follow");
  int64_t offset = 0;
  auto sink = [this](absl::string_view data) { Out(data); };
  while (true) {
    absl::Status status = ReadArtifactFrom(*connection_, id(), kLog, &offset, sink);
    if (absl::IsOutOfRange(status)) {
      Err(absl::StrCat(kLog, " was truncated; reading it from the start"));
      offset = 0;
      continue;
    }
    // No train.log yet (a pending job), as opposed to no such job.
    const bool not_yet = absl::IsNotFound(status) && !absl::StartsWith(status.message(), "no job");
    if (!status.ok() && !(follow && not_yet)) {
      if (not_yet) {
        Err(absl::StrCat("job ", id(), " has no ", kLog, " yet"));
        return kExitNotFound;
      }
      return Fail(status, id());
    }
    if (!follow) return kExitOk;
    absl::StatusOr<proto::Job> job = GetJob(id());
    if (!job.ok()) return Fail(job.status(), id());
    if (IsTerminalState(job->state())) {
      // What was written before the end.
      status = ReadArtifactFrom(*connection_, id(), kLog, &offset, sink);
      if (absl::IsNotFound(status) && offset == 0) {
        Err(absl::StrCat("job ", id(), " ended (", StateName(job->state()), ") without a ", kLog));
        return kExitNotFound;
      }
      if (!status.ok() && !absl::IsNotFound(status)) return Fail(status, id());
      return kExitOk;
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(io_.poll_interval));
  }
}

}  // namespace

bool IsRemoteCommand(absl::string_view command) {
  return Commands().count(std::string(command)) > 0;
}

int RunRemoteCommand(absl::string_view command, const std::vector<std::string>& args,
                     const RemoteIo& io) {
  Client client{std::string(command), io};
  return client.Run(args);
}

}  // namespace sheaf::cli
