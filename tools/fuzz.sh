#!/usr/bin/env bash
# libFuzzer targets for sheaf's file readers (issue 9, "Fuzzing").
#
#   tools/fuzz.sh list                 the targets
#   tools/fuzz.sh build [TARGET...]    compile (all when none given)
#   tools/fuzz.sh TARGET SECONDS       fuzz one target for SECONDS (wall)
#   tools/fuzz.sh all SECONDS          each target in turn, SECONDS each
#   tools/fuzz.sh smoke                every target once over its seed corpus
#                                      (what tests/fuzz_smoke_test.sh runs)
#
# Bazel here is 4.2.3 with gcc as its toolchain, so the targets are not Bazel
# rules: each is compiled by clang++ -fsanitize=fuzzer,address,undefined
# straight from the sources it needs (the lists below are what
# `bazel query "kind('source file', deps(//core:safetensors))"` etc. print;
# `tools/fuzz.sh sources` prints those queries' answers to compare). The
# job-spec protos are generated with the system protoc, as
# third_party/system/proto.bzl does. Objects are cached per source (with
# clang's -MMD header lists) under $SHEAF_FUZZ_OUT (default
# ~/.cache/sheaf-fuzz).
#
# A run fuzzes with fuzz/corpus/TARGET as seeds, keeps what it finds in
# $SHEAF_FUZZ_OUT/corpus/TARGET, writes crashes, leaks, timeouts and
# out-of-memory inputs to $SHEAF_FUZZ_OUT/artifacts/TARGET/, and appends one
# line to $SHEAF_FUZZ_OUT/runs.tsv: date, target, wall seconds, CPU seconds
# (user + sys of the fuzzer), executions, and the exit status (0: nothing
# found). Extra libFuzzer flags can be given in $SHEAF_FUZZ_FLAGS.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
OUT=${SHEAF_FUZZ_OUT:-${HOME:-/tmp}/.cache/sheaf-fuzz}
CXX=${SHEAF_FUZZ_CXX:-}
if [[ -z $CXX ]]; then
  for c in clang++-14 clang++; do
    if command -v "$c" >/dev/null; then CXX=$c; break; fi
  done
fi

# Sources per target, beyond fuzz/TARGET_fuzz.cc. Keep in step with the
# libraries' BUILD deps (`tools/fuzz.sh sources`).
BASE_FILE="base/file.cc base/open_beneath.cc"
declare -A SRCS=(
  [spec]="core/spec/yaml.cc core/spec/validate.cc core/spec/suggest.cc core/spec/sections.cc
          core/spec/job_kind.cc core/spec/lora_kind.cc core/spec/loram_kind.cc
          core/spec/langadapt_kind.cc core/spec/reclora_kind.cc core/spec/pretrain_kind.cc
          base/utf8.cc base/path_policy.cc $BASE_FILE
          GEN/proto/job_spec.pb.cc GEN/proto/path_options.pb.cc"
  [safetensors]="core/safetensors.cc core/json.cc base/utf8.cc $BASE_FILE"
  [model_config]="core/model_config.cc core/hf_fields.cc core/json.cc base/utf8.cc $BASE_FILE"
  [peft_config]="core/lora.cc core/tensor.cc core/safetensors.cc core/model_config.cc
                 core/hf_fields.cc core/json.cc base/utf8.cc $BASE_FILE"
  [bpe_tokenizer]="core/data/bpe_tokenizer.cc core/data/tokenizer.cc core/json.cc base/utf8.cc"
  [token_file]="core/data/token_file.cc core/data/token_corpus.cc core/data/document_source.cc
                core/data/tokenizer.cc core/json.cc base/utf8.cc $BASE_FILE"
  [checkpoint]="core/checkpoint.cc $BASE_FILE"
  [atomic]="core/crm/atomic.cc $BASE_FILE"
)
# The Bazel library each target stands for (for `sources`).
declare -A LIBS=(
  [spec]=//core/spec:spec [safetensors]=//core:safetensors [model_config]=//core:model_config
  [peft_config]=//core:lora [bpe_tokenizer]=//core/data:bpe_tokenizer
  [token_file]=//core/data:token_file [checkpoint]=//core:checkpoint [atomic]=//core/crm:atomic
)
declare -A LIBS_EXTRA=(
  [spec]="-lprotobuf -lyaml-cpp" [bpe_tokenizer]="-licuuc -lpcre2-8"
)
TARGETS=(spec safetensors model_config peft_config bpe_tokenizer token_file checkpoint atomic)

ABSL_LIBS="-labsl_status -labsl_statusor -labsl_cord -labsl_cord_internal -labsl_cordz_functions
  -labsl_cordz_handle -labsl_cordz_info -labsl_cordz_sample_token -labsl_str_format_internal
  -labsl_strings -labsl_strings_internal -labsl_synchronization -labsl_graphcycles_internal
  -labsl_time -labsl_time_zone -labsl_civil_time -labsl_stacktrace -labsl_symbolize
  -labsl_debugging_internal -labsl_demangle_internal -labsl_malloc_internal -labsl_raw_hash_set
  -labsl_hash -labsl_city -labsl_low_level_hash -labsl_hashtablez_sampler -labsl_exponential_biased
  -labsl_bad_optional_access -labsl_bad_variant_access -labsl_throw_delegate -labsl_strerror
  -labsl_int128 -labsl_base -labsl_spinlock_wait -labsl_raw_logging_internal -labsl_log_severity"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CXXFLAGS="-std=c++20 -O1 -g -fno-omit-frame-pointer -march=x86-64-v2 $SAN
  -Wall -Wno-unused-parameter -Wno-unknown-pragmas -Wno-deprecated-declarations
  -I$ROOT -I$OUT/gen"

die() { echo "fuzz.sh: $*" >&2; exit 2; }
need_clang() {
  [[ -n $CXX ]] || die "no clang++ (install clang-14 and libclang-rt-14-dev: tools/setup.sh)"
}
is_target() { [[ -n ${SRCS[$1]+x} ]]; }

gen_protos() {
  mkdir -p "$OUT/gen"
  local p
  for p in proto/path_options.proto proto/job_spec.proto; do
    local cc=$OUT/gen/${p%.proto}.pb.cc
    if [[ ! -f $cc || $ROOT/$p -nt $cc ]]; then
      (cd "$ROOT" && protoc -I. --cpp_out="$OUT/gen" "$p")
    fi
  done
}

# Prints the object of source $1 (relative to ROOT, or GEN/...), compiling it
# when it or a header it includes changed.
object_for() {
  local src=$1 path
  if [[ $src == GEN/* ]]; then path=$OUT/gen/${src#GEN/}; else path=$ROOT/$src; fi
  local obj=$OUT/obj/${src%.cc}.o dep=$OUT/obj/${src%.cc}.d
  mkdir -p "$(dirname "$obj")"
  local stale=0
  if [[ ! -f $obj || ! -f $dep || $path -nt $obj ]]; then
    stale=1
  else
    local f
    for f in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$dep"); do
      if [[ ! -e $f || $f -nt $obj ]]; then stale=1; break; fi
    done
  fi
  if ((stale)); then
    echo "  compile $src" >&2
    # shellcheck disable=SC2086
    "$CXX" $CXXFLAGS -fsanitize=fuzzer-no-link -MMD -MF "$dep" -c "$path" -o "$obj"
  fi
  echo "$obj"
}

build_target() {
  local t=$1
  is_target "$t" || die "unknown target $t (tools/fuzz.sh list)"
  need_clang
  [[ $t == spec ]] && gen_protos
  echo "build $t" >&2
  local objs=() s o
  for s in ${SRCS[$t]} fuzz/${t}_fuzz.cc; do
    o=$(object_for "$s") || die "compiling $s failed"
    objs+=("$o")
  done
  mkdir -p "$OUT/bin"
  local bin=$OUT/bin/${t}_fuzz newest=0
  for o in "${objs[@]}"; do [[ -f $bin && $o -nt $bin ]] && newest=1; done
  if [[ ! -f $bin ]] || ((newest)); then
    # shellcheck disable=SC2086
    "$CXX" $SAN -fsanitize=fuzzer "${objs[@]}" -o "$bin" ${LIBS_EXTRA[$t]:-} $ABSL_LIBS -pthread
  fi
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Fuzzes target $1 for $2 wall seconds.
run_target() {
  local t=$1 secs=$2
  build_target "$t"
  local corpus=$OUT/corpus/$t arts=$OUT/artifacts/$t work=$OUT/work/$t
  mkdir -p "$corpus" "$arts" "$work"
  local log=$OUT/logs/$t.$(date -u +%Y%m%dT%H%M%S).log
  mkdir -p "$OUT/logs"
  echo "fuzz $t for ${secs}s (log $log)" >&2
  local rc=0
  # -rss_limit_mb / -malloc_limit_mb: a reader that allocates what a header
  # claims (GBs) before checking it against the file is a finding.
  # shellcheck disable=SC2086
  TMPDIR=$work /usr/bin/time -f 'cpu %U %S' -o "$work/time" \
    "$OUT/bin/${t}_fuzz" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$arts/" ${SHEAF_FUZZ_FLAGS:-} "$corpus" "$ROOT/fuzz/corpus/$t" \
    >"$log" 2>&1 || rc=$?
  local cpu execs
  cpu=$(awk '/^cpu/ {printf "%.1f", $2 + $3}' "$work/time" 2>/dev/null || echo "?")
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "$cpu" "${execs:-?}" "$rc" \
    >>"$OUT/runs.tsv"
  echo "$t: rc $rc, cpu ${cpu}s, execs ${execs:-?}" >&2
  if ((rc != 0)); then
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -5 >&2 || true
    ls "$arts" >&2
  fi
  return "$rc"
}

# Runs every seed of every target once; fails on the first finding.
smoke() {
  local t fail=0
  for t in "${TARGETS[@]}"; do build_target "$t"; done
  for t in "${TARGETS[@]}"; do
    local dir=$ROOT/fuzz/corpus/$t
    local n
    n=$(find "$dir" -type f | wc -l)
    ((n > 0)) || { echo "no seeds in $dir" >&2; fail=1; continue; }
    mkdir -p "$OUT/work/$t"
    # -runs=0 over a directory: each file once, no mutation.
    if TMPDIR=$OUT/work/$t "$OUT/bin/${t}_fuzz" -runs=0 -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 "$dir" >"$OUT/work/$t/smoke.log" 2>&1; then
      echo "smoke $t: $n seeds ok"
    else
      echo "smoke $t: FAILED" >&2
      tail -30 "$OUT/work/$t/smoke.log" >&2
      fail=1
    fi
  done
  return "$fail"
}

cmd=${1:-}
case $cmd in
  list) printf '%s\n' "${TARGETS[@]}" ;;
  build)
    shift
    if (($#)); then for t in "$@"; do build_target "$t"; done
    else for t in "${TARGETS[@]}"; do build_target "$t"; done; fi ;;
  sources)
    for t in "${TARGETS[@]}"; do
      echo "$t (${LIBS[$t]}):"
      (cd "$ROOT" && bazel query "kind('source file', deps(${LIBS[$t]})) except deps(//third_party/...)" 2>/dev/null |
        grep -E '\.(cc|proto)$' | sed -e 's|^//||' -e 's|:|/|' -e 's|^/||' | sort | tr '\n' ' ')
      echo
    done ;;
  smoke) smoke ;;
  all)
    [[ ${2:-} =~ ^[0-9]+$ ]] || die "usage: tools/fuzz.sh all SECONDS"
    rc=0
    for t in "${TARGETS[@]}"; do run_target "$t" "$2" || rc=1; done
    exit "$rc" ;;
  ""|-h|--help) sed -n '2,26p' "$0" ;;
  *)
    is_target "$cmd" || die "unknown target $cmd (tools/fuzz.sh list)"
    [[ ${2:-} =~ ^[0-9]+$ ]] || die "usage: tools/fuzz.sh TARGET SECONDS"
    run_target "$cmd" "$2" ;;
esac
