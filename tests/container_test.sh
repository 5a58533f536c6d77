#!/usr/bin/env bash
# The runtime image for real: tools/build_image.sh builds it from this
# build's binaries (the debootstrap base is cached between runs), then the
# coordinator and a world run as containers (non-root) on a private Docker
# network, with the shared roots in a host directory:
#   1. a job submitted from the host CLI SUCCEEDS on the containerized world
#      and its adapter is fetched;
#   2. the same job again, with SIGTERM to the world's container mid-job
#      (`docker stop`, as kubelet does): the world checkpoints, gives the job
#      back (PENDING, progress kept) and the container exits 0; a new world
#      container resumes it and the fetched adapter is byte-identical to
#      run 1's.
# Reported SKIPPED (never passed) when no Docker daemon can be reached or
# started, or when the Debian archive cannot be reached for the base.
set -euo pipefail
source "$(dirname "$0")/skip_lib.sh" 2>/dev/null || source "$TEST_SRCDIR/$TEST_WORKSPACE/tests/skip_lib.sh"
rf() { echo "$TEST_SRCDIR/$TEST_WORKSPACE/$1"; }
fail() { echo "FAIL: $*"; exit 1; }
docker=/usr/bin/docker
[[ -x $docker ]] || skip_test "no docker client (/usr/bin/docker; tools/setup.sh installs docker.io)"
if ! $docker info >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v dockerd >/dev/null; then
    (setsid dockerd > /var/tmp/sheaf-test-dockerd.log 2>&1 &)
    for _ in $(seq 1 30); do $docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  $docker info >/dev/null 2>&1 || skip_test "no Docker daemon answers and none could be started ($(tail -1 /var/tmp/sheaf-test-dockerd.log 2>/dev/null))"
fi

work=$(mktemp -d /var/tmp/sheaf-container-test.XXXXXX)
net=sheaf-test-$$
names=()
cleanup() {
  for n in "${names[@]}"; do $docker rm -f "$n" >/dev/null 2>&1 || true; done
  $docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bins="$work/bins"; mkdir -p "$bins"
cp "$(rf cli/sheaf)" "$(rf coordinator/sheaf-coordinator)" "$(rf worker/sheaf-worker)" "$(rf core/data/libsheaf_spm.so)" "$bins/"
repo=$(cd "$(dirname "$(readlink -f "$(rf tools/build_image.sh)")")/.." && pwd)
t0=$(date +%s)
if ! image=$("$repo/tools/build_image.sh" --binaries "$bins" 2> "$work/build.log"); then
  if grep -qiE "Failure trying to run|Couldn't download|Temporary failure resolving|unable to fetch" "$work/build.log"; then
    skip_test "the Debian archive cannot be reached for the image's base: $(grep -iE 'fail|couldn' "$work/build.log" | tail -1)"
  fi
  cat "$work/build.log"; fail "tools/build_image.sh"
fi
echo "image $image built in $(( $(date +%s) - t0 )) s"
# The SentencePiece shim the binaries dlopen ships beside them, with every
# library it needs (ldd says "not found" otherwise).
spm=$($docker run --rm --entrypoint /usr/bin/ldd "$image" /usr/local/bin/libsheaf_spm.so 2>&1) ||
  fail "the image has no loadable /usr/local/bin/libsheaf_spm.so: $spm"
grep -q "not found" <<<"$spm" && fail "libsheaf_spm.so in the image lacks libraries: $spm"

shared="$work/shared"
mkdir -p "$shared/models" "$shared/data/corpus" "$shared/out" "$work/etc"
cp -rL "$(dirname "$(rf models/tiny-en/config.json)")" "$shared/models/tiny-en"
for i in $(seq 1 40); do
  for j in $(seq 1 40); do printf 'Regel %d: de kat zit op de mat. ' "$((i * j))"; done > "$shared/data/corpus/d$i.txt"
done
tenant=tenant-token-0123456789
printf '%s alice\nworker-token-0123456789 @worker\n' "$tenant" > "$work/etc/tokens"
printf 'worker-token-0123456789 @worker\n' > "$work/etc/worker.token"
chown -R 1000:1000 "$shared" "$work/etc"; chmod 0440 "$work/etc/"*

$docker network create "$net" >/dev/null
names+=(sheaf-coord-$$)
$docker run -d --name sheaf-coord-$$ --network "$net" --network-alias coordinator \
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
  -p 127.0.0.1::7070 -v "$shared:/shared" -v "$work/etc:/etc/sheaf:ro" "$image" \
  sheaf-coordinator --listen 0.0.0.0:7070 --db /shared/jobs.db --tokens /etc/sheaf/tokens \
  --model-root /shared/models --data-root /shared/data --output-root /shared/out --lease-ttl 20s >/dev/null
port=
for _ in $(seq 1 50); do
  port=$($docker port sheaf-coord-$$ 7070/tcp 2>/dev/null | sed -n 's/^127.0.0.1:\([0-9]*\)$/\1/p' | head -1)
  [[ -n $port ]] && $docker logs sheaf-coord-$$ 2>&1 | grep -q "serving on" && break
  sleep 0.2
done
[[ -n $port ]] || { $docker logs sheaf-coord-$$; fail "the coordinator container did not serve"; }
export SHEAF_ADDR=127.0.0.1:$port SHEAF_TOKEN=$tenant
sheaf="$bins/sheaf"

world=0
start_world() {
  world=$((world + 1))
  names+=(sheaf-world-$$-$world)
  $docker run -d --name sheaf-world-$$-$world --network "$net" \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "$shared:/shared" -v "$work/etc:/etc/sheaf:ro" "$image" \
    sheaf-worker --coordinator coordinator:7070 --token-file /etc/sheaf/worker.token \
    --model-root /shared/models --data-root /shared/data --output-root /shared/out \
    --memory-bytes 8G --idle-exit-s 5 >/dev/null
}
state_of() { "$sheaf" status "$1" | sed -n 's/^state: *//p'; }
wait_state() {  # ID STATE SECONDS
  local s
  for _ in $(seq 1 $(($3 * 5))); do
    s=$(state_of "$1"); [[ $s == "$2" ]] && return 0
    [[ $s == FAILED || $s == CANCELLED ]] && { "$sheaf" status "$1"; return 1; }
    sleep 0.2
  done
  "$sheaf" status "$1"; return 1
}

cat > "$work/job.yaml" <<YAML
base_model: /shared/models/tiny-en
output_dir: /shared/out/alice/run
seed: 7
data: {train: [/shared/data/corpus], seq_len: 64, val_fraction: 0.1}
optimizer: {lr: 0.002}
train: {batch_size: 4, max_steps: 300, eval_every: 100, checkpoint_every: 10, threads: 1}
lora: {adapter: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj]}}
YAML

# 1. Uninterrupted.
id1=$("$sheaf" submit "$work/job.yaml" --set output_dir=/shared/out/alice/one)
start_world
wait_state "$id1" SUCCEEDED 300 || { $docker logs sheaf-world-$$-$world; fail "job 1 did not succeed"; }
"$sheaf" fetch "$id1" -o "$work/fetch1" >/dev/null
a1=$(find "$work/fetch1" -name adapter_model.safetensors | head -1)
[[ -s $a1 ]] || fail "job 1: no adapter fetched"
echo "1. job $id1 SUCCEEDED in a container world; adapter $(sha256sum < "$a1" | cut -c1-12)"

# 2. SIGTERM mid-job, then a new world resumes it.
$docker wait sheaf-world-$$-$world >/dev/null  # the idle world exits
id2=$("$sheaf" submit "$work/job.yaml" --set output_dir=/shared/out/alice/two)
start_world
for _ in $(seq 1 600); do
  step=$("$sheaf" status "$id2" | sed -n 's/^progress: *step \([0-9]*\).*/\1/p')
  [[ -n $step ]] && ((step >= 40)) && break
  sleep 0.1
done
[[ -n $step ]] && ((step >= 40)) || { "$sheaf" status "$id2"; fail "job 2 did not reach step 40"; }
t0=$(date +%s%N)
$docker stop --time 120 sheaf-world-$$-$world >/dev/null
stop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
rc=$($docker inspect -f '{{.State.ExitCode}}' sheaf-world-$$-$world)
$docker logs sheaf-world-$$-$world > "$work/world2.log" 2>&1
((rc == 0)) || { cat "$work/world2.log"; fail "SIGTERM: the world exited $rc, want 0"; }
s=$(state_of "$id2")
[[ $s == PENDING ]] || { "$sheaf" status "$id2"; cat "$work/world2.log"; fail "after SIGTERM the job is $s, want PENDING"; }
held=$("$sheaf" status "$id2" | sed -n 's/^progress: *step \([0-9]*\).*/\1/p')
echo "2. SIGTERM at step $step: the world stopped in $stop_ms ms (exit 0), job PENDING at step ${held:-?}"
start_world
wait_state "$id2" SUCCEEDED 300 || { $docker logs sheaf-world-$$-$world; fail "job 2 did not succeed after resuming"; }
"$sheaf" fetch "$id2" -o "$work/fetch2" >/dev/null
a2=$(find "$work/fetch2" -name adapter_model.safetensors | head -1)
cmp -s "$a1" "$a2" || fail "the resumed job's adapter differs from the uninterrupted one"
echo "   resumed in a new world container: adapter byte-identical to job 1's"
