#!/usr/bin/env bash
# CPU LoRA training step, sheaf against plain PyTorch (bench/compare_torch.py),
# at 1 and 2 threads, in ONE script: every round runs each contender once in
# turn (sheaf, Debian's torch 1.13 eager, and where a PyTorch 2.x venv exists
# its eager and torch.compile), so that the load of a shared machine hits all
# of them alike; the median over rounds is reported, with the load average.
# torch.compile runs in the first round only (its compilation takes minutes
# here; the timed steps come after it). Besides tokens per wall-second the
# table has tokens per CPU-second of each process, the steadier figure on a
# shared machine (at 2 threads it also counts threads waiting).
#
#   sheaf_tokens_per_s / best torch_tokens_per_s   (the issue's target: >= 2)
#   sheaf_peak_rss_mb  / that torch's peak RSS     (target < 1)
#
# Usage: bench/compare_torch.sh [--threads "1 2"] [--steps S] [--rounds R]
#                               [--torch2 VENV_PYTHON | --no-torch2] [--no-compile]
# The PyTorch 2.x side: bench/torch2_venv.sh makes a throwaway venv from PyPI
# (default $SHEAF_TORCH2_VENV or /tmp/sheaf_torch2_venv); without one only
# torch 1.13 is measured, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
threads_list="1 2"
steps=8
rounds=3
venv=${SHEAF_TORCH2_VENV:-/tmp/sheaf_torch2_venv}
torch2="$venv/bin/python"
compile=1
while (($#)); do
  case "$1" in
    --threads) threads_list=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --torch2) torch2=$2; shift 2 ;;
    --no-torch2) torch2=""; shift ;;
    --no-compile) compile=0; shift ;;
    *) echo "usage: $0 [--threads \"1 2\"] [--steps S] [--rounds R] [--torch2 PYTHON | --no-torch2] [--no-compile]" >&2; exit 2 ;;
  esac
done
if [[ -n $torch2 && ! -x $torch2 ]]; then
  echo "# no PyTorch 2.x at $torch2 (make one with bench/torch2_venv.sh): torch 1.13 only"
  torch2=""
fi
bazel build -c opt //bench:train_step >/dev/null 2>&1 || bazel build -c opt //bench:train_step
bin="$(bazel info -c opt bazel-bin 2>/dev/null)/bench/train_step"

get() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A tok rss cpu
names=(sheaf sheaf_bf16 torch113)  # sheaf_bf16: train_step --compute bf16 (reported apart)
[[ -n $torch2 ]] && names+=(torch2_eager)
[[ -n $torch2 && $compile == 1 ]] && names+=(torch2_compile)
run() {  # name threads -> "tokens rss tokens_per_cpu_s"
  local out
  case "$1" in
    sheaf) out=$("$bin" --threads "$2" --steps "$steps" --warmup 2)
           echo "$(get sheaf_tokens_per_s "$out") $(get sheaf_peak_rss_mb "$out") $(get sheaf_tokens_per_cpu_s "$out")"; return ;;
    sheaf_bf16) out=$("$bin" --threads "$2" --steps "$steps" --warmup 2 --compute bf16)
           echo "$(get sheaf_tokens_per_s "$out") $(get sheaf_peak_rss_mb "$out") $(get sheaf_tokens_per_cpu_s "$out")"; return ;;
    torch113) out=$(/usr/bin/python3 bench/compare_torch.py --threads "$2" --steps "$steps" --warmup 2) ;;
    torch2_eager) out=$("$torch2" bench/compare_torch.py --threads "$2" --steps "$steps" --warmup 2) ;;
    torch2_compile) out=$("$torch2" bench/compare_torch.py --threads "$2" --steps "$steps" --warmup 3 --compile) ;;
  esac
  grep '^# torch' <<<"$out" | head -1 >&2
  echo "$(get torch_tokens_per_s "$out") $(get torch_peak_rss_mb "$out") $(get torch_tokens_per_cpu_s "$out")"
}

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; $rounds rounds x $steps steps"
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
for th in $threads_list; do
  for ((r = 1; r <= rounds; ++r)); do
    for n in "${names[@]}"; do
      [[ $n == torch2_compile && $r -gt 1 ]] && continue
      read -r t m c < <(run "$n" "$th")
      tok[$n,$th]+="$t "; rss[$n,$th]+="$m "; cpu[$n,$th]+="$c "
      echo "# threads $th round $r $n: $t tok/s, $c tok/cpu-s, $m MB"
    done
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-16s %7s %12s %16s %12s\n' contender threads tokens_per_s tokens_per_cpu_s peak_rss_mb
for th in $threads_list; do
  best=0 best_rss=0 best_name="" best_cpu=0 best_cpu_name=""
  for n in "${names[@]}"; do
    mt=$(tr ' ' '\n' <<<"${tok[$n,$th]}" | grep . | median)
    mr=$(tr ' ' '\n' <<<"${rss[$n,$th]}" | grep . | median)
    mc=$(tr ' ' '\n' <<<"${cpu[$n,$th]}" | grep . | median)
    printf '%-16s %7s %12s %16s %12s\n' "$n" "$th" "$mt" "$mc" "$mr"
    if [[ $n == sheaf ]]; then st=$mt sr=$mr sc=$mc; continue; fi
    if [[ $n == sheaf_bf16 ]]; then bt=$mt bc=$mc; continue; fi
    if awk -v a="$mc" -v b="$best_cpu" 'BEGIN { exit !(a > b) }'; then best_cpu=$mc best_cpu_name=$n; fi
    if awk -v a="$mt" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$mt best_rss=$mr best_name=$n; fi
  done
  awk -v a="$st" -v b="$best" -v n="$best_name" -v t="$th" \
    'BEGIN {printf "ratio_tokens_per_s_threads_%s %.3f x (sheaf / %s)\n", t, a / b, n}'
  awk -v a="$sc" -v b="$best_cpu" -v n="$best_cpu_name" -v t="$th" \
    'BEGIN {printf "ratio_tokens_per_cpu_s_threads_%s %.3f x (sheaf / %s)\n", t, a / b, n}'
  awk -v a="$sr" -v b="$best_rss" -v n="$best_name" -v t="$th" \
    'BEGIN {printf "ratio_peak_rss_threads_%s %.3f x (sheaf / %s)\n", t, a / b, n}'
  awk -v a="$bc" -v b="$best_cpu" -v n="$best_cpu_name" -v t="$th" \
    'BEGIN {printf "ratio_bf16_tokens_per_cpu_s_threads_%s %.3f x (sheaf compute bf16 / %s fp32)\n", t, a / b, n}'
done
