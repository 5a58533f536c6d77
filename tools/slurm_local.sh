#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for tests and trying the sbatch
# script: munged, slurmctld and slurmd from Debian's slurm-wlm and munge,
# all state under DIR, on free ports, nothing system-wide touched.
#
#   tools/slurm_local.sh start DIR [CPUS]   # prints `export SLURM_CONF=...`
#   tools/slurm_local.sh stop DIR
#
# Needs root (slurmd runs jobs as their submitting user). Exits 3 with the
# reason on stderr when a daemon cannot start here.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?DIR}
cpus=${3:-2}
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)

stop() {
  for p in slurmd slurmctld munged; do
    if [[ -s $dir/$p.pid ]]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
  done
  sleep 0.5
  for p in slurmd slurmctld munged; do
    if [[ -s $dir/$p.pid ]]; then kill -9 "$(cat "$dir/$p.pid")" 2>/dev/null || true; rm -f "$dir/$p.pid"; fi
  done
}
if [[ $cmd == stop ]]; then stop; exit 0; fi
[[ $cmd == start ]] || { echo "usage: $0 start|stop DIR [CPUS]" >&2; exit 2; }
for b in munged mungekey slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null || { echo "slurm_local: $b is not installed (tools/setup.sh installs slurm-wlm and munge)" >&2; exit 3; }
done
[[ $(id -u) == 0 ]] || { echo "slurm_local: needs root" >&2; exit 3; }

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
host=$(hostname -s)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p "$dir/state" "$dir/spool" "$dir/log"

rm -f "$dir/munge.key"
mungekey --create --keyfile="$dir/munge.key" 2>/dev/null || dd if=/dev/urandom of="$dir/munge.key" bs=1 count=1024 status=none
chmod 0400 "$dir/munge.key"
munged --force --key-file="$dir/munge.key" --socket="$dir/munge.sock" --pid-file="$dir/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed" \
  || { echo "slurm_local: munged did not start: $(tail -2 "$dir/log/munged.log" 2>/dev/null)" >&2; exit 3; }

cat > "$dir/slurm.conf" <<CONF
ClusterName=sheaflocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -i -f "$dir/slurm.conf" || { echo "slurm_local: slurmctld did not start: $(tail -3 "$dir/log/slurmctld.log" 2>/dev/null)" >&2; stop; exit 3; }
slurmd -f "$dir/slurm.conf" || { echo "slurm_local: slurmd did not start: $(tail -3 "$dir/log/slurmd.log" 2>/dev/null)" >&2; stop; exit 3; }
for _ in $(seq 1 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
  [[ $state == idle ]] && { echo "export SLURM_CONF=$dir/slurm.conf"; exit 0; }
  sleep 0.5
done
echo "slurm_local: the node did not come up (state '${state:-?}'): $(tail -3 "$dir/log/slurmd.log" 2>/dev/null)" >&2
stop; exit 3
