#!/usr/bin/env bash
# deploy/slurm/sheaf-world.sbatch on a live one-node Slurm (tools/
# slurm_local.sh: munged, slurmctld, slurmd on 127.0.0.1, 2 CPUs, PMIx),
# against a real coordinator:
#   1. a job SUCCEEDS on a 2-rank world; the world then idles out, exits 0
#      and the Slurm job ends COMPLETED without a requeue;
#   2. the time-limit signal (what `--signal=B:USR1@300` delivers, sent here
#      with `scancel --batch --signal=USR1` so that the test does not wait
#      for a time limit) mid-job: the world checkpoints, gives the job back,
#      the script requeues itself, the requeued allocation resumes the job,
#      and the adapter is byte-identical to job 1's;
#   3. plain `scancel` mid-job: the world hands the job back (PENDING with
#      its progress) within KillWait.
# Reported SKIPPED (never passed) when the daemons cannot start here.
set -euo pipefail
source "$TEST_SRCDIR/$TEST_WORKSPACE/tests/skip_lib.sh"
rf() { echo "$TEST_SRCDIR/$TEST_WORKSPACE/$1"; }
fail() { echo "FAIL: $*"; exit 1; }
sheaf=$(rf cli/sheaf); coordinator=$(rf coordinator/sheaf-coordinator); worker=$(rf worker/sheaf-worker)
sbatch_script=$(rf deploy/slurm/sheaf-world.sbatch)
slurm_local=$(rf tools/slurm_local.sh)

work=$(mktemp -d /var/tmp/sheaf-slurm-test.XXXXXX)
coordinator_pid=
cleanup() {
  if [[ -n ${SLURM_CONF:-} ]]; then scancel --full --quiet -u root 2>/dev/null || true; sleep 1; fi
  "$slurm_local" stop "$work/slurm" >/dev/null 2>&1 || true
  [[ -n $coordinator_pid ]] && kill "$coordinator_pid" 2>/dev/null || true
  pkill -f "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
set +e; out=$("$slurm_local" start "$work/slurm" 2 2>&1); rc=$?; set -e
if ((rc == 3)); then skip_test "a one-node Slurm cannot run here: $out"; fi
((rc == 0)) || fail "tools/slurm_local.sh: $out"
export SLURM_CONF=$work/slurm/slurm.conf

root="$work/root"
mkdir -p "$root/models" "$root/data/corpus" "$root/out"
cp -rL "$(dirname "$(rf models/tiny-en/config.json)")" "$root/models/tiny-en"
for i in $(seq 1 40); do
  for j in $(seq 1 40); do printf 'Regel %d: de kat zit op de mat. ' "$((i * j))"; done > "$root/data/corpus/d$i.txt"
done
tenant=tenant-token-0123456789
printf '%s alice\nworker-token-0123456789 @worker\n' "$tenant" > "$work/tokens"
printf 'worker-token-0123456789 @worker\n' > "$work/worker.token"; chmod 0600 "$work/worker.token"
: > "$work/coordinator.log"
"$coordinator" --listen 127.0.0.1:0 --metrics-port 0 --db "$work/jobs.db" --tokens "$work/tokens" \
  --model-root "$root/models" --data-root "$root/data" --output-root "$root/out" --lease-ttl 20s \
  2> "$work/coordinator.log" &
coordinator_pid=$!
port=
for _ in $(seq 1 50); do
  port=$(sed -n 's/.*serving on .*(port \([0-9]*\).*/\1/p' "$work/coordinator.log")
  [[ -n $port ]] && break; sleep 0.1
done
[[ -n $port ]] || { cat "$work/coordinator.log"; fail "the coordinator did not start"; }
export SHEAF_ADDR=127.0.0.1:$port SHEAF_TOKEN=$tenant

submit_world() {  # extra sbatch flags...; prints the Slurm job id
  env SHEAF_WORKER="$worker" SHEAF_ROOT="$root" SHEAF_TOKEN_FILE="$work/worker.token" SHEAF_IDLE_EXIT_S=2 \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --mem-per-cpu=1000 \
    --output="$work/world-%j.log" "$@" "$sbatch_script"
}
slurm_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
state_of() { "$sheaf" status "$1" | sed -n 's/^state: *//p'; }
step_of() { "$sheaf" status "$1" | sed -n 's/^progress: *step \([0-9]*\).*/\1/p'; }
wait_until() {  # SECONDS CMD...: poll until CMD succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do (( $(date +%s) < deadline )) || return 1; sleep 0.3; done
}
sheaf_state_is() {  # a job that FAILED is not waited for
  local s; s=$(state_of "$1")
  [[ $s == FAILED && $2 != FAILED ]] && { "$sheaf" status "$1"; fail "job $1 FAILED"; }
  [[ $s == "$2" ]]
}
slurm_state_is() { [[ $(slurm_field "$1" JobState) == "$2" ]]; }
step_at_least() { local s; s=$(step_of "$1"); [[ -n $s ]] && ((s >= $2)); }

cat > "$work/job.yaml" <<YAML
base_model: $root/models/tiny-en
output_dir: $root/out/alice/run
seed: 7
data: {train: [$root/data/corpus], seq_len: 64, val_fraction: 0.1}
optimizer: {lr: 0.002}
train: {batch_size: 4, max_steps: 1200, eval_every: 100, checkpoint_every: 25, threads: 1}
lora: {adapter: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj]}}
YAML

# 1. Uninterrupted, then idle: no requeue.
id1=$("$sheaf" submit "$work/job.yaml" --min-world 2 --set output_dir="$root/out/alice/one")
j1=$(submit_world)
wait_until 300 sheaf_state_is "$id1" SUCCEEDED || { cat "$work"/world-*.log; "$sheaf" status "$id1"; fail "job 1 did not succeed"; }
wait_until 60 slurm_state_is "$j1" COMPLETED || fail "the idle world's Slurm job is $(slurm_field "$j1" JobState), want COMPLETED"
[[ $(slurm_field "$j1" Restarts) == 0 ]] || fail "the idle world requeued itself"
grep -q "registered world .* (2 ranks" "$work/world-$j1.log" || fail "not a 2-rank world: $(head -5 "$work/world-$j1.log")"
grep -q "1000 MiB per rank" "$work/world-$j1.log" || fail "--mem-per-cpu=1000 not reported: $(grep registered "$work/world-$j1.log")"
a1="$root/out/alice/one/adapter/adapter_model.safetensors"
[[ -s $a1 ]] || fail "job 1 wrote no adapter"
echo "1. job SUCCEEDED on a 2-rank Slurm world (1000 MiB per rank from --mem-per-cpu); idle world exited, COMPLETED, not requeued"

# 2. The time-limit signal mid-job: hand back, requeue, resume.
id2=$("$sheaf" submit "$work/job.yaml" --min-world 2 --set output_dir="$root/out/alice/two")
j2=$(submit_world)
wait_until 300 step_at_least "$id2" 60 || { cat "$work/world-$j2.log"; fail "job 2 did not reach step 60"; }
t0=$(date +%s%N)
scancel --batch --signal=USR1 "$j2"
wait_until 120 sheaf_state_is "$id2" PENDING || { cat "$work/world-$j2.log"; fail "job 2 was not given back"; }
handback_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
held=$(step_of "$id2")
restarted() { [[ $(slurm_field "$j2" Restarts) == 1 ]]; }
wait_until 60 restarted || { cat "$work/world-$j2.log"; fail "the world did not requeue itself"; }
requeue_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q "requeueing Slurm job $j2" "$work/world-$j2.log" || fail "the script did not say it requeued"
# Slurm holds a requeued job for a fixed ~120 s (EligibleTime); skip that
# wait, but only once the first allocation's step is gone (KillWait, 10 s in
# tools/slurm_local.sh): a requeued job started while its old step is still
# terminating fails to launch its new one.
requeued_at=$(date +%s)
started_again() {
  if [[ $(slurm_field "$j2" JobState) == PENDING && $(slurm_field "$j2" Reason) == BeginTime ]] &&
     (( $(date +%s) > requeued_at + 12 )) && [[ $(sinfo -h -N -o %T | head -1) == idle ]]; then
    scontrol update JobId="$j2" StartTime=now
  fi
  [[ $(slurm_field "$j2" JobState) == RUNNING || $(slurm_field "$j2" JobState) == COMPLETED ]]
}
wait_until 200 started_again || { scontrol show job "$j2"; sinfo; fail "the requeued world did not start"; }
wait_until 300 sheaf_state_is "$id2" SUCCEEDED || { cat "$work/world-$j2.log"; "$sheaf" status "$id2"; scontrol show job "$j2"; fail "job 2 did not finish after the requeue"; }
cmp -s "$a1" "$root/out/alice/two/adapter/adapter_model.safetensors" ||
  fail "the requeued job's adapter differs from the uninterrupted one"
echo "2. USR1 at step >= 60: given back at step $held after $handback_ms ms, requeued after $requeue_ms ms; resumed; adapter byte-identical"

wait_until 60 slurm_state_is "$j2" COMPLETED || fail "job 2's world did not exit when idle"

# 3. Plain scancel mid-job: hand back within KillWait.
id3=$("$sheaf" submit "$work/job.yaml" --min-world 2 --set output_dir="$root/out/alice/three")
j3=$(submit_world)
wait_until 300 step_at_least "$id3" 30 || {
  tail -5 "$work"/world-*.log; "$sheaf" status "$id3"; scontrol show job "$j3"; fail "job 3 did not reach step 30"; }
t0=$(date +%s%N)
scancel "$j3"
wait_until 60 sheaf_state_is "$id3" PENDING || { cat "$work/world-$j3.log"; "$sheaf" status "$id3"; fail "scancel: job 3 was not given back"; }
cancel_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
step_at_least "$id3" 1 || fail "job 3 lost its progress"
"$sheaf" cancel "$id3" >/dev/null
echo "3. scancel at step >= 30: job given back (PENDING at step $(step_of "$id3")) after $cancel_ms ms"
