#!/usr/bin/env bash
# Validates the Kubernetes manifests as a cluster would see them:
#  - every object against Kubernetes' own OpenAPI schemas, strictly (unknown
#    fields are errors), for the three newest minor versions that the pinned
#    kubernetes-validate knows;
#  - every MPIJob against the Kubeflow MPI Operator v0.8.2 CRD schema
#    (third_party/mpi_operator), strictly as well;
#  - the deployment rules the README promises: non-root with a restricted
#    securityContext, no service-account token, a pinned image tag (the one
#    tools/build_image.sh builds), Secrets readable through fsGroup, gRPC
#    probes on the coordinator, a preStop that stops an MPI rank gracefully
#    with a grace period above it, a NetworkPolicy for each component, GPUs
#    requested in the GPU variant, a storage class on the RWX claim.
# Needs .venvs/deploy from tools/setup.sh (tools/setup.d/30-deploy-python.sh);
# without it the test fails and says so.
set -euo pipefail
manifest=$(readlink -f "$TEST_SRCDIR/$TEST_WORKSPACE/deploy/k8s/coordinator.yaml")
root=$(cd "$(dirname "$manifest")/../.." && pwd)
venv="$root/.venvs/deploy"
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
  echo "FAIL: $venv is missing: run tools/setup.sh (tools/setup.d/30-deploy-python.sh)"
  exit 1
fi
k8s="$root/deploy/k8s"
schemas=$("$venv/bin/python" -c 'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
versions=$(ls "$schemas" | sed -n 's/^v\([0-9]*\.[0-9]*\)\.[0-9]*-local-strict$/\1/p' | sort -uV | tail -3)
[[ $(wc -w <<<"$versions") == 3 ]] || { echo "FAIL: fewer than 3 Kubernetes versions in $schemas"; exit 1; }
for v in $versions; do
  out=$("$venv/bin/kubernetes-validate" --strict -k "$v.0" "$k8s"/*.yaml 2>&1) || { echo "$out"; echo "FAIL: Kubernetes $v"; exit 1; }
  # MPIJob is not a built-in kind: kubernetes-validate only warns about it.
  if grep -v "Couldn't find schema for kind MPIJob" <<<"$out" | grep -qE "^(WARN|ERROR)"; then
    echo "$out"; echo "FAIL: Kubernetes $v"; exit 1
  fi
  echo "kubernetes $v --strict: $(grep -c '^INFO.*passed' <<<"$out") objects pass"
done

# The validator must reject what is wrong, or its pass means nothing.
bad="${TEST_TMPDIR:-/tmp}/bad.yaml"
sed 's/terminationGracePeriodSeconds: 30$/terminationGracePeriodSecond: 30/' "$k8s/coordinator.yaml" > "$bad"
cmp -s "$bad" "$k8s/coordinator.yaml" && { echo "FAIL: the negative control did not change the file"; exit 1; }
if "$venv/bin/kubernetes-validate" --strict -k "$(tail -1 <<<"$versions").0" "$bad" >/dev/null 2>&1; then
  echo "FAIL: a misspelt field passed strict validation"; exit 1
fi

"$venv/bin/python" - "$root" <<'PY'
import copy, glob, json, os, sys
import jsonschema, yaml

root = sys.argv[1]
version = open(os.path.join(root, "deploy/docker/VERSION")).read().strip()
crd = json.load(open(os.path.join(root, "third_party/mpi_operator/mpijob_v2beta1.schema.json")))

def strict(schema):
    """A CRD's structural schema prunes unknown fields silently; make them errors."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and \
           not out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema

validator = jsonschema.Draft7Validator(strict(crd))
docs = []
for path in sorted(glob.glob(os.path.join(root, "deploy/k8s/*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if doc:
            docs.append((os.path.basename(path), doc))

problems = []
def need(cond, what):
    if not cond:
        problems.append(what)

mpijobs = [(p, d) for p, d in docs if d["kind"] == "MPIJob"]
need(len(mpijobs) >= 2, "an MPIJob in worker.yaml and in worker-gpu.yaml")
for path, doc in mpijobs:
    for e in validator.iter_errors(doc):
        problems.append(f"{path}: MPIJob {doc['metadata']['name']}: {'/'.join(map(str, e.path))}: {e.message}")
    spec = doc["spec"]
    need(spec.get("sshAuthMountPath") == "/home/sheaf/.ssh", f"{path}: sshAuthMountPath of the non-root user")
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    c = worker["containers"][0]
    need("2222" in " ".join(c["command"]) or any(p.get("containerPort") == 2222 for p in c.get("ports", [])),
         f"{path}: sshd on port 2222")
    stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    need(stop[:1] == ["sheaf-stop-rank"], f"{path}: worker preStop runs sheaf-stop-rank")
    if stop[:1] == ["sheaf-stop-rank"]:
        need(int(stop[1]) < worker["terminationGracePeriodSeconds"],
             f"{path}: preStop wait below the grace period")

# A negative control for the CRD check: an unknown field must be an error.
probe = copy.deepcopy(mpijobs[0][1])
probe["spec"]["slotPerWorker"] = 1
need(any(True for _ in validator.iter_errors(probe)), "the CRD check rejects an unknown field")

def pods(doc):
    spec = doc.get("spec", {})
    if "template" in spec:
        yield doc["metadata"]["name"], spec["template"]["spec"]
    for role, r in spec.get("mpiReplicaSpecs", {}).items():
        yield f"{doc['metadata']['name']}/{role}", r["template"]["spec"]

npods = 0
for path, doc in docs:
    for name, pod in pods(doc):
        npods += 1
        where = f"{path}: {name}"
        sc = pod.get("securityContext", {})
        need(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, f"{where}: runs as non-root")
        need(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
        need(pod.get("automountServiceAccountToken") is False, f"{where}: no service-account token")
        for v in pod.get("volumes", []):
            if "secret" in v:
                mode = v["secret"].get("defaultMode")
                need(mode == 0o440 and sc.get("fsGroup") == sc.get("runAsGroup"),
                     f"{where}: Secret {v['name']} mode 0440 with fsGroup = the user's group")
        for c in pod["containers"]:
            image = c["image"]
            need(image.split(":")[-1] in (version, version + "-cuda"),
                 f"{where}: image {image} is tagged {version} (deploy/docker/VERSION)")
            csc = c.get("securityContext", {})
            need(csc.get("allowPrivilegeEscalation") is False, f"{where}: no privilege escalation")
            need(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drops all capabilities")
            if "-cuda" in image and not name.endswith("/Launcher"):
                need("nvidia.com/gpu" in c["resources"].get("limits", {}), f"{where}: requests GPUs")
    if doc["kind"] == "Deployment":
        c = doc["spec"]["template"]["spec"]["containers"][0]
        for probe_kind in ("readinessProbe", "livenessProbe"):
            need("grpc" in c.get(probe_kind, {}), f"{path}: coordinator {probe_kind} uses gRPC health")
    if doc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in doc["spec"]["accessModes"]:
        need(bool(doc["spec"].get("storageClassName")), f"{path}: RWX claim names its storage class")

policies = [d for _, d in docs if d["kind"] == "NetworkPolicy"]
for component in ("coordinator", "world"):
    need(any(p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == component
             for p in policies), f"a NetworkPolicy for the {component} pods")

if problems:
    print("\n".join("FAIL: " + p for p in problems))
    sys.exit(1)
print(f"{len(docs)} objects, {npods} pod templates, {len(mpijobs)} MPIJobs valid against the MPI Operator v0.8.2 CRD; all rules hold")
PY
