#!/usr/bin/env bash
# Builds the sheaf runtime image (deploy/docker/) from this checkout, on a
# machine that reaches only the Debian archive:
#   1. bazel builds sheaf, sheaf-coordinator and sheaf-worker;
#   2. the Debian packages they need at run time are read off their shared
#      libraries (ldd + dpkg -S), plus OpenMPI's launcher, sshd, tini and
#      procps; debootstrap makes a minimal bookworm root with them, imported
#      into Docker as sheaf-base:<hash of the package list>. The root file
#      system is cached (SHEAF_IMAGE_CACHE, default /var/tmp/sheaf-image-cache), so
#      a rebuild with the same packages does not run debootstrap again;
#   3. docker build adds the binaries, the user `sheaf` and sshd's config.
# The image is tagged sheaf:$(cat deploy/docker/VERSION) and sheaf:dev.
#
#   tools/build_image.sh                  # build (starts nothing; needs dockerd)
#   tools/build_image.sh --binaries DIR   # use DIR/{sheaf,sheaf-coordinator,
#                                         # sheaf-worker,libsheaf_spm.so}
#                                         # instead of bazel's
# libsheaf_spm.so is the SentencePiece shim the binaries dlopen (core/data/
# sentencepiece_dl.cc): it goes beside them, and its libraries count too.
#   SHEAF_DEBIAN_MIRROR=http://... tools/build_image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(cat deploy/docker/VERSION)
mirror=${SHEAF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${SHEAF_IMAGE_CACHE:-/var/tmp/sheaf-image-cache}
docker=${DOCKER:-/usr/bin/docker}
mkdir -p "$cache"

"$docker" info >/dev/null 2>&1 || { echo "build_image: no Docker daemon answers (start dockerd)" >&2; exit 1; }

if [[ ${1:-} == --binaries ]]; then
  binaries=("$2/sheaf" "$2/sheaf-coordinator" "$2/sheaf-worker")
  shim="$2/libsheaf_spm.so"
else
  bazel build //cli:sheaf //coordinator:sheaf-coordinator //worker:sheaf-worker \
    //core/data:libsheaf_spm.so >&2
  bin=$(bazel info bazel-bin 2>/dev/null)
  binaries=("$bin/cli/sheaf" "$bin/coordinator/sheaf-coordinator" "$bin/worker/sheaf-worker")
  shim="$bin/core/data/libsheaf_spm.so"
fi
for b in "${binaries[@]}"; do [[ -x $b ]] || { echo "build_image: no executable $b" >&2; exit 1; }; done
[[ -f $shim ]] || { echo "build_image: no $shim (the SentencePiece shim)" >&2; exit 1; }

# Runtime packages: whatever package ships each shared library.
pkgs=$(for b in "${binaries[@]}" "$shim"; do ldd "$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib"; done |
  cut -d: -f1 | sed 's/,.*//' | sort -u)
pkgs=$(printf '%s\n' $pkgs openmpi-bin openssh-server openssh-client tini procps ca-certificates | sort -u)
hash=$(printf '%s\n' $pkgs "$mirror" | sha256sum | cut -c1-12)
base="sheaf-base:$hash"

if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
  tarball="$cache/rootfs-$hash.tar"
  if [[ ! -s $tarball ]]; then
    echo "build_image: debootstrap bookworm with: $(echo $pkgs)" >&2
    root=$(mktemp -d "$cache/root.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include="$(echo $pkgs | tr ' ' ,)" bookworm "$root" "$mirror" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"; trap - EXIT
  fi
  "$docker" import "$tarball" "$base" >&2
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin"
cp "${binaries[@]}" "$shim" deploy/docker/sheaf-stop-rank deploy/docker/sheaf-mpirun "$ctx/bin/"
chmod 0755 "$ctx/bin/"*
cp deploy/docker/Dockerfile deploy/docker/sshd_config "$ctx/"
"$docker" build -q --build-arg SHEAF_BASE="$base" -t "sheaf:$version" -t sheaf:dev "$ctx" >&2
echo "sheaf:$version"
