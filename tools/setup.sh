#!/usr/bin/env bash
# Installs the Debian packages sheaf builds and tests with. Idempotent and
# non-interactive: packages already present are not touched, and apt is only
# asked for what is missing.
set -euo pipefail

PKGS=(
  bazel-bootstrap bazel-rules-java bazel-platforms
  build-essential
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev
  libopenmpi-dev openmpi-bin
  libopenblas-dev libopenblas-openmp-dev libopenblas0-openmp
  libyaml-cpp-dev libsqlite3-dev
  python3-torch python3-numpy python3-yaml openssl
  manpages manpages-de manpages-fr manpages-nl manpages-pl manpages-ru
  libsentencepiece-dev libpcre2-dev libdnnl-dev valgrind python3-venv python3-pip
  docker.io debootstrap slurm-wlm munge
  man-db groff-base bsdextrautils
  clang-14 libclang-rt-14-dev
  libfaketime
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Per-feature steps (a Python environment, a dataset fetched at setup): one
# idempotent script each under tools/setup.d/, run in name order.
for step in "$(dirname "$0")"/setup.d/*.sh; do
  [[ -e $step ]] || continue
  bash "$step"
done
