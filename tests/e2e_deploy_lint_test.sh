#!/usr/bin/env bash
# The deployment files cannot run here (no Slurm, no Kubernetes), so check
# what can be checked: the sbatch script is valid bash and, run with a fake
# `srun`, hands sheaf-worker a command line the real binary accepts (it
# starts, finds no coordinator, and exits when idle); the Kubernetes
# manifests are valid YAML whose sheaf-coordinator / sheaf-worker flags all
# exist in the binaries' --help, whose volumes name existing claims, and
# whose coordinator can never run twice on one database.
set -euo pipefail
source "$(dirname "$0")/../dist/mpi_test_lib.sh" 2>/dev/null || source "$(find_runfile dist/mpi_test_lib.sh)"
worker=$(find_runfile worker/sheaf-worker)
coordinator=$(find_runfile coordinator/sheaf-coordinator)
sbatch=$(find_runfile deploy/slurm/sheaf-world.sbatch)
k8s_dir=$(dirname "$(find_runfile deploy/k8s/coordinator.yaml)")
work="${TEST_TMPDIR:-$(mktemp -d)}/deploy_lint"
rm -rf "$work"; mkdir -p "$work/bin" "$work/root/models" "$work/root/data" "$work/root/out"

bash -n "$sbatch"

# A fake srun: record the command line, then run the program it names (the
# real sheaf-worker, as a world of one) with a short idle exit appended.
cat > "$work/bin/srun" <<SH
#!/usr/bin/env bash
printf '%s\n' "\$@" > "$work/srun.args"
while [[ "\$1" == --* ]]; do shift; done
prog="\$1"; shift
[[ "\$prog" == sheaf-worker ]] || { echo "srun runs \$prog, not sheaf-worker"; exit 3; }
exec "$worker" "\$@" --idle-exit-s 1 --acquire-wait-s 1
SH
chmod +x "$work/bin/srun"
echo "worker-token-0123456789abcdef" > "$work/token"
set +e
env PATH="$work/bin:$PATH" SHEAF_ADDR=127.0.0.1:1 SHEAF_ROOT="$work/root" \
  SHEAF_TOKEN_FILE="$work/token" SLURM_MEM_PER_NODE=64000 SLURM_NTASKS_PER_NODE=2 \
  SLURM_CPUS_PER_TASK=4 timeout 60 bash "$sbatch" > "$work/sbatch.out" 2>&1
rc=$?
set -e
if ((rc != 0)); then echo "the sbatch script's world did not exit cleanly (rc $rc):"; cat "$work/sbatch.out"; exit 1; fi
grep -q -- "--mpi=pmix" "$work/srun.args" || { echo "srun without --mpi=pmix"; cat "$work/srun.args"; exit 1; }
grep -qx -- "32000M" "$work/srun.args" || { echo "memory per rank not passed"; cat "$work/srun.args"; exit 1; }
grep -q "no job for 1s: the world exits" "$work/sbatch.out" || { cat "$work/sbatch.out"; exit 1; }
echo "sbatch: srun $(tr '\n' ' ' < "$work/srun.args")"

"$worker" --help > "$work/worker.help"
"$coordinator" --help > "$work/coordinator.help"
/usr/bin/python3 - "$k8s_dir" "$work/worker.help" "$work/coordinator.help" <<'PY'
import glob, os, re, sys
import yaml

k8s_dir, worker_help, coordinator_help = sys.argv[1:]
known = {
    "sheaf-worker": set(re.findall(r"--[a-z][a-z-]*", open(worker_help).read())),
    "sheaf-coordinator": set(re.findall(r"--[a-z][a-z-]*", open(coordinator_help).read())),
}
docs = []
for path in sorted(glob.glob(os.path.join(k8s_dir, "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if doc:
            docs.append((os.path.basename(path), doc))
assert docs, "no manifests"
claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}

def pod_specs(doc):
    spec = doc.get("spec", {})
    if "template" in spec:
        yield doc["metadata"]["name"], spec["template"]["spec"]
    for role, replica in spec.get("mpiReplicaSpecs", {}).items():
        yield f"{doc['metadata']['name']}/{role}", replica["template"]["spec"]

checked = 0
for path, doc in docs:
    for name, pod in pod_specs(doc):
        for volume in pod.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            assert claim is None or claim in claims, f"{path}: {name} mounts unknown claim {claim}"
        for c in pod["containers"]:
            line = list(c.get("command", [])) + [str(a) for a in c.get("args", [])]
            for i, word in enumerate(line):
                if word in known:
                    for arg in line[i + 1:]:
                        if arg.startswith("--"):
                            flag = arg.split("=", 1)[0]
                            assert flag in known[word], f"{path}: {name}: {word} has no flag {flag}"
                            checked += 1
    if doc["kind"] == "Deployment" and "coordinator" in doc["metadata"]["name"]:
        assert doc["spec"]["replicas"] == 1, "one coordinator per database"
        assert doc["spec"]["strategy"]["type"] == "Recreate", "no rolling overlap on one database"
print(f"k8s: {len(docs)} objects parse; {checked} sheaf flags exist in the binaries' --help")
assert checked >= 15, checked
PY
