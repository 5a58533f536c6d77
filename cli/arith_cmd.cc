#include "cli/arith_cmd.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/flags.h"

namespace sheaf::cli {

absl::StatusOr<ArithTerm> ParseArithTerm(const std::string& flag, const std::string& value,
                                         ArithTerm::Kind kind, const std::string& default_ref) {
  const size_t colon = value.find(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", value, ": expected LAMBDA:DIR (e.g. 0.5:runs/x/model)"));
  }
  ArithTerm t;
  t.kind = kind;
  const std::string lambda = value.substr(0, colon);
  if (!absl::SimpleAtod(lambda, &t.lambda) || !std::isfinite(t.lambda)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", value, ": lambda '", lambda, "' is not a finite number"));
  }
  std::string rest = value.substr(colon + 1);
  const size_t second = rest.find(':');
  if (second != std::string::npos) {
    if (kind == ArithTerm::Kind::kArithTermAdapter) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " ", value, ": an adapter term has no reference (LAMBDA:DIR)"));
    }
    t.ref = rest.substr(second + 1);
    rest = rest.substr(0, second);
  } else if (kind == ArithTerm::Kind::kArithTermModel) {
    t.ref = default_ref;
  }
  if (rest.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", value, ": no DIR"));
  t.path = rest;
  return t;
}

int RunArith(const std::vector<std::string>& args) {
  auto usage = [](const std::string& why) {
    std::fprintf(stderr, "sheaf: arith: %s\nusage:\n%s", why.c_str(), kArithUsage);
    return 2;
  };
  absl::StatusOr<ParsedArgs> parsed =
      ParseArgs(args, {{"base"}, {"out"}, {"ref"}, {"model"}, {"adapter"}});
  if (!parsed.ok()) return usage(std::string(parsed.status().message()));
  if (!parsed->positional.empty()) return usage("unexpected argument " + parsed->positional[0]);
  const std::string base = parsed->Last("base"), out = parsed->Last("out"), ref = parsed->Last("ref");
  if (base.empty() || out.empty()) return usage("--base and --out are required");
  std::vector<ArithTerm> terms;
  for (const std::string& v : parsed->All("model")) {
    absl::StatusOr<ArithTerm> t = ParseArithTerm("model", v, ArithTerm::Kind::kArithTermModel, ref);
    if (!t.ok()) return usage(std::string(t.status().message()));
    terms.push_back(*t);
  }
  for (const std::string& v : parsed->All("adapter")) {
    absl::StatusOr<ArithTerm> t = ParseArithTerm("adapter", v, ArithTerm::Kind::kArithTermAdapter, "");
    if (!t.ok()) return usage(std::string(t.status().message()));
    terms.push_back(*t);
  }
  if (terms.empty()) return usage("give at least one --model or --adapter term");
  ArithStats stats;
  absl::Status s = ModelArithmetic(base, terms, out, &stats);
  if (!s.ok()) {
    std::fprintf(stderr, "sheaf: error: %s\n", std::string(s.message()).c_str());
    const bool user = s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound;
    return user ? 2 : 1;
  }
  std::printf("wrote %s/model.safetensors: %lld tensors, %lld elements, %zu terms (%lld adapter modules)\n",
              out.c_str(), static_cast<long long>(stats.tensors), static_cast<long long>(stats.elements),
              terms.size(), static_cast<long long>(stats.adapted_modules));
  return 0;
}

}  // namespace sheaf::cli
