// sheaf-coordinator: keeps every job in a SQLite database and leases jobs to
// worker worlds over gRPC (DESIGN.md "The life of a job", "Service").
//
// Logs one line per job state change on stderr. SIGINT / SIGTERM stop it
// gracefully (running worlds keep their leases and carry on once a
// coordinator serves the same database again). Exit codes: 0 after a
// signal, 1 when it cannot start, 2 for bad usage.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "base/open_beneath.h"
#include "coordinator/auth.h"
#include "coordinator/clock.h"
#include "coordinator/http_server.h"
#include "coordinator/server.h"
#include "coordinator/service.h"
#include "coordinator/store.h"

namespace sheaf::coordinator {
namespace {

constexpr const char* kUsage = R"(usage: sheaf-coordinator --db FILE --tokens FILE
           --model-root DIR --data-root DIR --output-root DIR [flags]

  --listen HOST:PORT      gRPC address (default 0.0.0.0:7070)
  --db FILE               SQLite database, created when missing
  --db-sync full|normal   full (default): a commit survives power loss;
                          normal: it survives the process dying, not the machine
  --tokens FILE           lines `TOKEN TENANT` or `TOKEN @worker`; # comments
  --tls-cert FILE         PEM certificate chain; with --tls-key, serve TLS
  --tls-key FILE          PEM private key
  --model-root DIR        base_model paths resolve inside this directory
  --data-root DIR         data.train / data.val paths resolve inside this one
  --output-root DIR       output_dir resolves inside DIR/TENANT
  --lease-ttl DURATION    a lease expires this long after its last heartbeat
                          (default 30s)
  --max-attempts N        leases a job may use before a failure is final (3)
  --stall-floor DURATION  a world that heartbeats but whose progress has not
                          moved for max(this, --stall-factor x its longest
                          gap between progress so far) loses its lease: the
                          job goes to another world (default 5m; 0: off)
  --stall-factor X        (default 5)
  --setup-timeout DURATION  the same, from the lease until progress first
                          moves (set-up: loading, pruning; default 30m; 0: off)
  --metrics-port N        Prometheus text on http://ADDRESS:N/metrics
                          (default 9464; 0 turns it off)
  --metrics-address IP    address of the metrics endpoint (default 127.0.0.1:
                          per-job series name every tenant's jobs)
  --max-fetch-streams N   concurrent `sheaf fetch` streams in all (default 64;
                          more are refused RESOURCE_EXHAUSTED; 0: no cap)
  --max-fetch-streams-per-tenant N
                          the same for one tenant (default 8; 0: no cap)
  --fetch-idle-timeout DURATION
                          a fetch whose reader takes no chunk for this long is
                          cut off (default 60s; 0: never)
)";

int Usage(const std::string& why) {
  std::fprintf(stderr, "sheaf-coordinator: %s\n\n%s", why.c_str(), kUsage);
  return 2;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "sheaf-coordinator: %s\n", status.ToString().c_str());
  return 1;
}

void LogLine(absl::string_view line) {
  std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
}

int Main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {
      {"listen", "0.0.0.0:7070"}, {"db", ""},           {"db-sync", "full"},
      {"tokens", ""},             {"tls-cert", ""},     {"tls-key", ""},
      {"model-root", ""},         {"data-root", ""},    {"output-root", ""},
      {"lease-ttl", "30s"},       {"max-attempts", "3"}, {"metrics-port", "9464"},
      {"metrics-address", "127.0.0.1"},
      {"stall-floor", "5m"},      {"stall-factor", "5"}, {"setup-timeout", "30m"},
      {"max-fetch-streams", "64"}, {"max-fetch-streams-per-tenant", "8"},
      {"fetch-idle-timeout", "60s"},
  };
  ParsedFlags parsed;
  if (absl::Status st = ParseLongFlags(argc, argv, &flags, {}, &parsed); !st.ok()) {
    return Usage(std::string(st.message()));
  }
  if (parsed.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  for (const char* required :
       {"db", "tokens", "model-root", "data-root", "output-root"}) {
    if (flags[required].empty()) {
      return Usage(absl::StrCat("--", required, " is required"));
    }
  }
  ServiceOptions options;
  if (!absl::ParseDuration(flags["lease-ttl"], &options.scheduler.lease_ttl) ||
      options.scheduler.lease_ttl <= absl::ZeroDuration()) {
    return Usage("--lease-ttl: not a positive duration (e.g. 30s, 2m): " +
                 flags["lease-ttl"]);
  }
  // Below a second, heartbeats (every TTL/3) cannot keep up with a loaded
  // world; above a day, a dead world holds its job for that long (issue 9).
  if (options.scheduler.lease_ttl < absl::Seconds(1) ||
      options.scheduler.lease_ttl > absl::Hours(24)) {
    return Usage("--lease-ttl: must be in [1s, 24h], got " + flags["lease-ttl"]);
  }
  if (!absl::SimpleAtoi(flags["max-attempts"], &options.scheduler.max_attempts) ||
      options.scheduler.max_attempts < 1) {
    return Usage("--max-attempts: must be an integer >= 1");
  }
  for (const auto& [flag, field] :
       {std::pair<const char*, absl::Duration*>{"stall-floor", &options.scheduler.stall_floor},
        {"setup-timeout", &options.scheduler.setup_timeout}}) {
    if (flags[flag] == "0") {
      *field = absl::ZeroDuration();
    } else if (!absl::ParseDuration(flags[flag], field) || *field <= absl::ZeroDuration() ||
               *field > absl::Hours(24 * 7)) {
      return Usage(absl::StrCat("--", flag, ": a duration in (0, 168h] (e.g. 5m) or 0 (off), got ",
                                flags[flag]));
    }
  }
  if (!absl::SimpleAtod(flags["stall-factor"], &options.scheduler.stall_factor) ||
      !(options.scheduler.stall_factor >= 1 && options.scheduler.stall_factor <= 1000)) {
    return Usage("--stall-factor: a number in [1, 1000], got " + flags["stall-factor"]);
  }
  if (options.scheduler.stall_floor > absl::ZeroDuration() &&
      options.scheduler.stall_floor < 2 * options.scheduler.lease_ttl / 3) {
    return Usage(absl::StrCat("--stall-floor: must be at least two heartbeat intervals (2 x "
                              "--lease-ttl / 3 = ",
                              absl::FormatDuration(2 * options.scheduler.lease_ttl / 3),
                              "), or 0 (off)"));
  }
  for (const auto& [flag, field] :
       {std::pair<const char*, int*>{"max-fetch-streams", &options.fetch.max_streams},
        {"max-fetch-streams-per-tenant", &options.fetch.max_streams_per_tenant}}) {
    if (!absl::SimpleAtoi(flags[flag], field) || *field < 0 || *field > 100000) {
      return Usage(absl::StrCat("--", flag, ": an integer in [0, 100000] (0: no cap), got ",
                                flags[flag]));
    }
  }
  if (flags["fetch-idle-timeout"] == "0") {
    options.fetch.idle_timeout = absl::ZeroDuration();
  } else if (!absl::ParseDuration(flags["fetch-idle-timeout"], &options.fetch.idle_timeout) ||
             options.fetch.idle_timeout < absl::Seconds(1) ||
             options.fetch.idle_timeout > absl::Hours(24)) {
    return Usage("--fetch-idle-timeout: a duration in [1s, 24h] or 0 (never), got " +
                 flags["fetch-idle-timeout"]);
  }
  int metrics_port = 0;
  if (!absl::SimpleAtoi(flags["metrics-port"], &metrics_port) ||
      metrics_port < 0 || metrics_port > 65535) {
    return Usage("--metrics-port: must be in [0, 65535]");
  }
  StoreOptions store_options;
  store_options.path = flags["db"];
  if (flags["db-sync"] == "full") {
    store_options.sync = SyncMode::kFull;
  } else if (flags["db-sync"] == "normal") {
    store_options.sync = SyncMode::kNormal;
  } else {
    return Usage("--db-sync: full or normal");
  }
  options.roots = {flags["model-root"], flags["data-root"], flags["output-root"]};
  options.log = LogLine;

  // Every thread started from here on inherits the mask, so that the
  // signals are taken only by sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<TokenAuthenticator>> auth =
      TokenAuthenticator::FromFile(flags["tokens"]);
  if (!auth.ok()) return Fail(auth.status());
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(store_options);
  if (!store.ok()) return Fail(store.status());
  absl::StatusOr<std::unique_ptr<CoordinatorService>> service =
      CoordinatorService::Create(std::move(options), *std::move(store),
                                 Clock::Real());
  if (!service.ok()) return Fail(service.status());
  // The files the coordinator opens inside its roots (the weights' headers it
  // checks at submit, artifacts it streams) resolve beneath them, as the
  // worker's do (base/open_beneath.h): a symlink leading out is refused.
  if (absl::Status roots = SetOpenRoots({{"model root", flags["model-root"]},
                                          {"data root", flags["data-root"]},
                                          {"output root", flags["output-root"]}});
      !roots.ok()) {
    return Fail(roots);
  }

  ServerOptions server_options;
  server_options.listen = flags["listen"];
  server_options.tls_cert_path = flags["tls-cert"];
  server_options.tls_key_path = flags["tls-key"];
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Start(server_options, service->get(), auth->get());
  if (!server.ok()) return Fail(server.status());

  std::unique_ptr<MetricsHttpServer> metrics;
  if (metrics_port > 0) {
    CoordinatorService* raw = service->get();
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(flags["metrics-address"], metrics_port,
                                 [raw] { return raw->RenderMetrics(); });
    if (!started.ok()) return Fail(started.status());
    metrics = *std::move(started);
  }
  LogLine(absl::StrCat(
      "sheaf-coordinator: serving on ", flags["listen"], " (port ",
      (*server)->port(), (*server)->tls() ? ", TLS" : ", plaintext", "), db ",
      flags["db"], ", ", (*auth)->token_count(), " tokens",
      metrics ? absl::StrCat(", metrics on http://", flags["metrics-address"],
                             ":", metrics->port(), "/metrics")
              : std::string()));

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  LogLine(absl::StrCat("sheaf-coordinator: signal ", signal_number,
                       ", shutting down"));
  (*server)->Shutdown(absl::Seconds(5));
  metrics.reset();
  server->reset();
  service->reset();
  return 0;
}

}  // namespace
}  // namespace sheaf::coordinator

int main(int argc, char** argv) { return sheaf::coordinator::Main(argc, argv); }
