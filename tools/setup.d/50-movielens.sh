#!/usr/bin/env bash
# MovieLens-100K in RecBole's atomic-file format, for the reclora job kind.
#
# MovieLens' terms forbid redistribution, so the files are never committed:
# this step downloads the PyPI wheel recbole==1.2.1 (which ships
# recbole/dataset_example/ml-100k/) into a cache and extracts the dataset into
# data/ml-100k/ (git-ignored). Idempotent: nothing is fetched when the three
# files are already there. Fails loudly when PyPI cannot be reached.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/data/ml-100k"
cache="${SHEAF_CACHE:-$HOME/.cache/sheaf}/wheels"
wheel_glob="recbole-1.2.1-*.whl"

if [[ -s $dest/ml-100k.inter && -s $dest/ml-100k.user && -s $dest/ml-100k.item ]]; then
  exit 0
fi

mkdir -p "$cache" "$dest"
if ! compgen -G "$cache/$wheel_glob" >/dev/null; then
  pip=(python3 -m pip)
  if ! "${pip[@]}" --version >/dev/null 2>&1; then
    echo "50-movielens: no pip (python3 -m pip) to download recbole==1.2.1" >&2
    exit 1
  fi
  if ! "${pip[@]}" download --no-deps --only-binary=:all: --dest "$cache" \
        "recbole==1.2.1" >&2; then
    echo "50-movielens: cannot download recbole==1.2.1 from PyPI (is the registry reachable?);" \
         "MovieLens-100K is not installed" >&2
    exit 1
  fi
fi
wheel="$(compgen -G "$cache/$wheel_glob" | head -n 1)"

python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "recbole/dataset_example/ml-100k/"
found = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        # Only the atomic files sheaf reads (the wheel also has .kg/.link).
        if name.startswith(prefix) and base in ("ml-100k.inter", "ml-100k.user", "ml-100k.item"):
            tmp = os.path.join(dest, base + ".part")
            with z.open(name) as src, open(tmp, "wb") as out:
                out.write(src.read())
            os.replace(tmp, os.path.join(dest, base))
            found += 1
if found == 0:
    sys.exit(f"50-movielens: {wheel} has no {prefix}")
PY
for f in ml-100k.inter ml-100k.user ml-100k.item; do
  if [[ ! -s $dest/$f ]]; then
    echo "50-movielens: $dest/$f missing after extraction" >&2
    exit 1
  fi
done
echo "50-movielens: MovieLens-100K in $dest ($(wc -l < "$dest/ml-100k.inter") lines in ml-100k.inter)" >&2
