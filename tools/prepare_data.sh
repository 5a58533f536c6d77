#!/usr/bin/env bash
# Turns Debian's manual pages into plain-text corpora, one UTF-8 text file per
# man page, for `sheaf data tokenize` (a folder source: one file, one
# document).
#
#   tools/prepare_data.sh [--out DIR] [--max-pages N] [--jobs J] [--force]
#                         [--split DIR [--max-train-bytes N] [--max-val-bytes N]] LANG...
#   e.g. tools/prepare_data.sh en de nl fr
#        tools/prepare_data.sh --split data/langadapt --max-train-bytes 2500000 \
#          --max-val-bytes 60000 en de fr nl pl ru
#
# English comes from the package `manpages` (/usr/share/man/man*/), any other
# language from `manpages-<lang>` (/usr/share/man/<lang>/man*/). Only the
# pages the package itself ships are used, not every page that happens to be
# installed under the same directory, so the corpus is the same on every
# machine with the same package version. A missing package is installed
# (apt-get, non-interactive; sudo when not root).
#
# Output: DIR/<lang>/<page>.<section>.txt (DIR defaults to data/manpages in
# the repository). Pages are rendered with `man -l` at 80 columns and passed
# through `col -bx`, so there are no backspace overstrikes and no tabs.
# Alias pages (symlinks and ".so" stubs) are skipped: they would duplicate
# another page's text. Pages that fail to render are skipped and counted.
# Re-running skips pages whose output exists, unless --force.
#
# --max-pages N takes the first N pages (in sorted path order) per language,
# for quick tests.
#
# --split DIR also writes a fixed train/validation split per language (used
# by models/tiny-multi and the langadapt experiments, so that every language
# has the same budget and its own held-out pages): DIR/<lang>/val/ and
# DIR/<lang>/train/ get copies of the rendered pages, ordered by the MD5 of
# their file name (a deterministic shuffle that does not depend on the
# alphabet or on the man section). Every 20th page in that order (5%) goes to
# val/, the rest to train/; each side stops taking pages once it holds
# --max-val-bytes / --max-train-bytes (0: no cap). DIR/<lang> is rebuilt
# from scratch on every run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/data/manpages"
MAX_PAGES=0
FORCE=0
JOBS="$(nproc 2>/dev/null || echo 2)"
LANGS=()
SPLIT=""
MAX_TRAIN_BYTES=0
MAX_VAL_BYTES=0

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

while (($#)); do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --max-pages) MAX_PAGES="${2:?--max-pages needs a number}"; shift 2 ;;
    --max-pages=*) MAX_PAGES="${1#--max-pages=}"; shift ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
    --jobs=*) JOBS="${1#--jobs=}"; shift ;;
    --force) FORCE=1; shift ;;
    --split) SPLIT="${2:?--split needs a directory}"; shift 2 ;;
    --split=*) SPLIT="${1#--split=}"; shift ;;
    --max-train-bytes) MAX_TRAIN_BYTES="${2:?--max-train-bytes needs a number}"; shift 2 ;;
    --max-train-bytes=*) MAX_TRAIN_BYTES="${1#--max-train-bytes=}"; shift ;;
    --max-val-bytes) MAX_VAL_BYTES="${2:?--max-val-bytes needs a number}"; shift 2 ;;
    --max-val-bytes=*) MAX_VAL_BYTES="${1#--max-val-bytes=}"; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "prepare_data: unknown option $1" >&2; usage ;;
    *) LANGS+=("$1"); shift ;;
  esac
done
((${#LANGS[@]})) || { echo "prepare_data: no language given" >&2; usage; }
[[ "$MAX_PAGES" =~ ^[0-9]+$ ]] || { echo "prepare_data: --max-pages must be a number" >&2; exit 2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "prepare_data: --jobs must be a positive number" >&2; exit 2; }
[[ "$MAX_TRAIN_BYTES" =~ ^[0-9]+$ ]] || { echo "prepare_data: --max-train-bytes must be a number" >&2; exit 2; }
[[ "$MAX_VAL_BYTES" =~ ^[0-9]+$ ]] || { echo "prepare_data: --max-val-bytes must be a number" >&2; exit 2; }
for lang in "${LANGS[@]}"; do
  # The language ends up in a package name and a path.
  [[ "$lang" =~ ^[a-z]{2,3}([_-][A-Za-z]+)?$ ]] || { echo "prepare_data: bad language '$lang'" >&2; exit 2; }
done

# UTF-8 output regardless of the caller's locale; MAN_DISABLE_SECCOMP because
# man-db's seccomp filter breaks inside some containers ("Bad system call").
export LC_ALL=C.UTF-8 MANWIDTH=80 MANPAGER=cat PAGER=cat MAN_DISABLE_SECCOMP=1
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
APT_UPDATED=0

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

apt_install() {
  echo "prepare_data: installing $*" >&2
  if ((APT_UPDATED == 0)); then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# man (man-db), nroff/groff (groff-base), col (bsdextrautils).
need=()
command -v man >/dev/null || need+=(man-db)
command -v nroff >/dev/null || need+=(groff-base)
command -v col >/dev/null || need+=(bsdextrautils)
((${#need[@]} == 0)) || apt_install "${need[@]}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Prints the man page files (one per line, sorted) that package $1 ships for
# language $2, read from under root $3 ("" = the installed system).
list_pages() {
  local pkg="$1" lang="$2" root="$3" dir
  if [[ "$lang" == en ]]; then dir="/usr/share/man/man[^/]*"; else dir="/usr/share/man/$lang/man[^/]*"; fi
  dpkg -L "$pkg" | grep -E "^${dir}/[^/]+$" | sort | while IFS= read -r path; do
    # -L first: symlinks are aliases of another page.
    if [[ ! -L "$root$path" && -f "$root$path" ]]; then echo "$root$path"; fi
  done
}

# True when page $1 is only a ".so other-page" include (an alias).
is_alias_stub() {
  local first
  first="$(zcat -f -- "$1" 2>/dev/null | grep -m1 -vE "^([.']\\\\\"|[[:space:]]*$)" || true)"
  [[ "$first" == .so\ * ]]
}

# Renders page $1 to text file $2, atomically; logs $1 to $3 on failure.
render_page() {
  local src="$1" dst="$2" failed_log="$3" tmp="$2.tmp.$BASHPID"
  if man -E UTF-8 -l -- "$src" 2>/dev/null | col -bx >"$tmp" 2>/dev/null && [[ -s "$tmp" ]]; then
    mv -f -- "$tmp" "$dst"
  else
    rm -f -- "$tmp"
    echo "$src" >>"$failed_log"
  fi
}

# Writes SPLIT/<lang>/{train,val}/ from the rendered pages in $1 (see
# --split above) and prints one summary line.
split_language() {
  local src="$1" lang="$2" dest="$SPLIT/$2" i=0 side size cap
  local -A bytes=([train]=0 [val]=0) pages=([train]=0 [val]=0)
  rm -rf -- "$dest"
  mkdir -p "$dest/train" "$dest/val"
  while IFS= read -r name; do
    if ((i % 20 == 19)); then side=val; cap=$MAX_VAL_BYTES; else side=train; cap=$MAX_TRAIN_BYTES; fi
    i=$((i + 1))
    ((cap == 0 || bytes[$side] < cap)) || continue
    size=$(stat -c %s -- "$src/$name")
    cp -- "$src/$name" "$dest/$side/$name"
    bytes[$side]=$((bytes[$side] + size))
    pages[$side]=$((pages[$side] + 1))
  done < <(find "$src" -maxdepth 1 -name '*.txt' -type f -printf '%f\n' \
             | while IFS= read -r n; do printf '%s %s\n' "$(printf '%s' "$n" | md5sum | cut -c1-32)" "$n"; done \
             | sort | cut -d' ' -f2-)
  printf '%s split: train %d pages, %d bytes; val %d pages, %d bytes in %s\n' \
    "$lang" "${pages[train]}" "${bytes[train]}" "${pages[val]}" "${bytes[val]}" "$dest"
}

total_pages=0
total_bytes=0
for lang in "${LANGS[@]}"; do
  start=$SECONDS
  if [[ "$lang" == en ]]; then pkg=manpages; else pkg="manpages-$lang"; fi
  if ! installed "$pkg"; then
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
      echo "prepare_data: $lang: no Debian package $pkg; skipping" >&2
      continue
    fi
    apt_install "$pkg"
  fi

  root=""
  list_pages "$pkg" "$lang" "" >"$WORK/pages"
  if [[ ! -s "$WORK/pages" ]]; then
    # Installed, but its files are not on disk: slim Docker images tell dpkg
    # to path-exclude /usr/share/man. Unpack the package's .deb instead.
    echo "prepare_data: $lang: $pkg is installed without its man pages" \
         "(dpkg path-exclude?); unpacking the .deb" >&2
    root="$WORK/deb-$lang"
    mkdir -p "$root"
    (cd "$WORK" && apt-get download -qq "$pkg" >/dev/null 2>&1) \
      || { echo "prepare_data: $lang: cannot download $pkg" >&2; exit 1; }
    dpkg-deb -x "$WORK/${pkg}_"*.deb "$root"
    list_pages "$pkg" "$lang" "$root" >"$WORK/pages"
  fi

  dest="$OUT/$lang"
  mkdir -p "$dest"
  failed_log="$WORK/failed-$lang"
  : >"$failed_log"
  selected=0 aliases=0 existing=0 rendered=0
  while IFS= read -r page; do
    ((MAX_PAGES == 0 || selected < MAX_PAGES)) || break
    if is_alias_stub "$page"; then aliases=$((aliases + 1)); continue; fi
    selected=$((selected + 1))
    name="$(basename -- "$page")"
    dst="$dest/${name%.gz}.txt"
    if ((FORCE == 0)) && [[ -s "$dst" ]]; then existing=$((existing + 1)); continue; fi
    # At most JOBS renders at a time.
    while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
    render_page "$page" "$dst" "$failed_log" &
    rendered=$((rendered + 1))
  done <"$WORK/pages"
  wait
  failed=$(wc -l <"$failed_log")
  if ((failed > 0)); then
    echo "prepare_data: $lang: $failed page(s) failed to render, skipped:" >&2
    sed 's/^/  /' "$failed_log" | head -20 >&2
  fi

  pages=$(find "$dest" -maxdepth 1 -name '*.txt' -type f | wc -l)
  bytes=$(find "$dest" -maxdepth 1 -name '*.txt' -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  total_pages=$((total_pages + pages))
  total_bytes=$((total_bytes + bytes))
  printf '%s: %d pages, %d bytes in %s (package %s; %d rendered, %d already there, %d failed, %d aliases skipped; %ds)\n' \
    "$lang" "$pages" "$bytes" "$dest" "$pkg" $((rendered - failed)) "$existing" "$failed" "$aliases" $((SECONDS - start))
  [[ -z "$SPLIT" ]] || split_language "$dest" "$lang"
done
printf 'total: %d pages, %d bytes\n' "$total_pages" "$total_bytes"
