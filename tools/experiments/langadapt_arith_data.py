#!/usr/bin/python3
"""Builds the question-answer format of the langadapt model-arithmetic
experiment (tools/experiments/langadapt_arith.sh, docs/results/langadapt.md)
from the option lists of rendered manual pages.

    tools/experiments/langadapt_arith_data.py --out data/langadapt_arith \
        [--nl-train-split data/langadapt/nl/train]

One item per documented option:

    en:     "Q: What does {TAG} do in {CMD}?\\nA: {DESCRIPTION}\\n"
    nl:     "V: Wat doet {TAG} in {CMD}?\\nA: {BESCHRIJVING}\\n"
    nl_mix: the English question line with the Dutch description.

How an item is made (every step deterministic):

  * Pages: section 1 and 8 pages, rendered as tools/prepare_data.sh renders
    them (`man -l` at MANWIDTH=80, then `col -bx`, LC_ALL=C.UTF-8).
    English: the /usr/share/man/man{1,8}/ pages shipped by the packages in
    EN_PACKAGES (dpkg -L; aliases, i.e. symlinks and ".so" stubs, skipped).
    Dutch: every /usr/share/man/nl/man{1,8}/ page (manpages-nl, dpkg, apt,
    man-db, ...), minus the pages in --nl-train-split: those were the
    Dutch adaptation text of the langadapt run, so the Dutch items come
    only from pages the adapted model never trained on.
  * Section: the options section (a line at column 0 reading OPTIONS or
    OPTIES, up to the next line at column 0); a page without one uses its
    DESCRIPTION / BESCHRIJVING section instead (coreutils documents its
    options there).
  * Entry: a line of that section indented by exactly 7 spaces whose text
    starts with "-" is an option tag. If the tag line also holds text after
    a run of 2+ spaces (groff's short-tag layout "-c     text"), that text
    starts the description. The description is the following lines
    indented by more than 7 spaces up to the first blank line (the first
    paragraph only), whitespace collapsed to single spaces. A description
    shorter than 12 characters is dropped; a longer one is cut to at most
    MAX_DESC_BYTES UTF-8 bytes: the whole sentences (ending in ".") that
    fit, or when not even the first fits, the whole words that fit. The tag's whitespace
    is collapsed too; CMD is the page name (file name before ".<section>").
  * Duplicates (same CMD and TAG) keep the first, in sorted page order.
  * Splits by command (a command never lands in two sets): every English
    command that also has a Dutch page is dropped from the English data (so
    the English skill never saw the facts the Dutch items ask about); the
    other English commands go to en_val when md5(cmd) % 5 == 0, else to
    en_train. The Dutch items are capped at MAX_EVAL items and en_val at
    MAX_EVAL, taking items in md5(cmd + tag) order.

Writes OUT/en_train/qa.txt (items separated by a blank line, for
`format: text_paragraphs`), OUT/{en_val,nl,nl_mix}.jsonl (one
{"cmd","tag","prompt","answer"} per line; the item is prompt + answer and
the answer, including its final newline, is what the loss is measured on)
and OUT/stats.json (the counts, and the Debian packages the pages came from with
their versions: the items depend on the installed man pages).
"""
import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys

EN_PACKAGES = [
    "manpages", "coreutils", "util-linux", "findutils", "grep", "sed", "tar",
    "gzip", "bzip2", "xz-utils", "diffutils", "procps", "psmisc", "man-db",
    "dpkg", "apt", "openssh-client", "less", "debianutils", "bsdextrautils",
    "bsdutils", "login", "passwd", "mount", "e2fsprogs", "iproute2", "kmod",
    "hostname", "ncurses-bin", "file", "patch", "make", "rsync", "zstd",
    "adduser", "fakeroot", "dpkg-dev", "wget", "curl", "gnupg", "gpg",
]
SECTIONS = ("1", "8")
MAX_DESC_BYTES = 160
MIN_DESC_CHARS = 12
MAX_EVAL = 400
OPTION_HEADINGS = {"OPTIONS", "OPTIES"}
DESCRIPTION_HEADINGS = {"DESCRIPTION", "BESCHRIJVING"}

ENV = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80", MANPAGER="cat",
           PAGER="cat", MAN_DISABLE_SECCOMP="1")


def md5(s):
    return hashlib.md5(s.encode("utf-8")).hexdigest()


def is_alias(path):
    if os.path.islink(path):
        return True
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(200).lstrip()
    except OSError:
        return True
    return head.startswith(b".so ")


def page_name(path):
    """/usr/share/man/man1/ls.1.gz -> ("ls", "1")."""
    base = os.path.basename(path)
    if base.endswith(".gz"):
        base = base[:-3]
    name, _, section = base.rpartition(".")
    return name, section


def render(path):
    man = subprocess.run(["man", "-l", path], env=ENV, capture_output=True)
    if man.returncode != 0:
        return None
    col = subprocess.run(["col", "-bx"], input=man.stdout, env=ENV, capture_output=True)
    return col.stdout.decode("utf-8", errors="replace")


def sections(text):
    """{HEADING: [lines]} of a rendered page (first occurrence of each)."""
    out, cur = {}, None
    for line in text.split("\n"):
        if line and not line[0].isspace():
            cur = line.strip()
            if cur in out:
                cur = None
            else:
                out[cur] = []
            continue
        if cur is not None:
            out[cur].append(line)
    return out


def cut(desc):
    """At most MAX_DESC_BYTES: whole sentences if at least one fits, else
    whole words."""
    if len(desc.encode("utf-8")) <= MAX_DESC_BYTES:
        return desc
    words, out, sentences = desc.split(" "), "", ""
    for w in words:
        nxt = (out + " " + w) if out else w
        if len(nxt.encode("utf-8")) > MAX_DESC_BYTES:
            break
        out = nxt
        if out.endswith("."):
            sentences = out
    return sentences or out


def entries(text):
    """[(tag, description)] of a rendered page, as the module doc says."""
    secs = sections(text)
    body = None
    for h in OPTION_HEADINGS:
        if h in secs:
            body = secs[h]
    if body is None:
        for h in DESCRIPTION_HEADINGS:
            if h in secs:
                body = secs[h]
    if body is None:
        return []
    out, i = [], 0
    while i < len(body):
        line = body[i]
        indent = len(line) - len(line.lstrip(" "))
        if indent == 7 and line[7:8] == "-":
            rest = line[7:].rstrip()
            m = re.search(r"\S {2,}(\S)", rest)
            if m:
                tag, desc = rest[:m.start() + 1], [rest[m.start(1):]]
            else:
                tag, desc = rest, []
            j = i + 1
            while j < len(body):
                nxt = body[j]
                if not nxt.strip():
                    break
                if len(nxt) - len(nxt.lstrip(" ")) <= 7:
                    break
                desc.append(nxt.strip())
                j += 1
            d = " ".join(" ".join(desc).split())
            tag = " ".join(tag.split())
            if len(d) >= MIN_DESC_CHARS and len(tag) <= 60:
                out.append((tag, cut(d)))
            i = j
        else:
            i += 1
    return out


def en_pages():
    pages, used = [], []
    for pkg in EN_PACKAGES:
        r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
        if r.returncode != 0:
            continue
        got = 0
        for p in r.stdout.split("\n"):
            if re.fullmatch(r"/usr/share/man/man[18]/[^/]+", p) and os.path.isfile(p) and not is_alias(p):
                pages.append(p)
                got += 1
        if got:
            used.append(pkg)
    return sorted(set(pages)), used


def nl_pages():
    out = []
    for s in SECTIONS:
        d = f"/usr/share/man/nl/man{s}"
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                p = os.path.join(d, f)
                if os.path.isfile(p) and not is_alias(p):
                    out.append(p)
    return out


def collect(paths):
    """{cmd: [(tag, desc)]} over pages in sorted order, deduplicated."""
    items, seen = {}, set()
    for p in sorted(paths):
        text = render(p)
        if text is None:
            continue
        cmd, _ = page_name(p)
        for tag, desc in entries(text):
            if (cmd, tag) in seen:
                continue
            seen.add((cmd, tag))
            items.setdefault(cmd, []).append((tag, desc))
    return items


def en_prompt(cmd, tag):
    return f"Q: What does {tag} do in {cmd}?\nA: "


def nl_prompt(cmd, tag):
    return f"V: Wat doet {tag} in {cmd}?\nA: "


def capped(items, n):
    flat = [(cmd, tag, desc) for cmd, es in items.items() for tag, desc in es]
    flat.sort(key=lambda x: md5(x[0] + "\0" + x[1]))
    return flat[:n]


def write_jsonl(path, rows, prompt):
    with open(path, "w", encoding="utf-8") as f:
        for cmd, tag, desc in rows:
            f.write(json.dumps({"cmd": cmd, "tag": tag, "prompt": prompt(cmd, tag),
                                "answer": desc + "\n"}, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/langadapt_arith")
    ap.add_argument("--nl-train-split", default="data/langadapt/nl/train",
                    help="rendered pages of the Dutch adaptation text (excluded)")
    a = ap.parse_args()
    if not os.path.isdir(a.nl_train_split):
        sys.exit(f"langadapt_arith_data: {a.nl_train_split} is missing "
                 "(run tools/prepare_data.sh --split data/langadapt ... nl first)")
    adapted = set(os.listdir(a.nl_train_split))  # "<page>.<section>.txt"

    nl_all = nl_pages()
    nl_cmds_all = {page_name(p)[0] for p in nl_all}
    nl_use = [p for p in nl_all if "%s.%s.txt" % page_name(p) not in adapted]
    nl_items = collect(nl_use)

    en_paths, en_used = en_pages()
    en_items = collect(p for p in en_paths if page_name(p)[0] not in nl_cmds_all)
    en_train = {c: e for c, e in en_items.items() if int(md5(c), 16) % 5 != 0}
    en_val = {c: e for c, e in en_items.items() if int(md5(c), 16) % 5 == 0}

    os.makedirs(os.path.join(a.out, "en_train"), exist_ok=True)
    train_rows = [(c, t, d) for c in sorted(en_train) for t, d in en_train[c]]
    with open(os.path.join(a.out, "en_train", "qa.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(en_prompt(c, t) + d + "\n" for c, t, d in train_rows))
    val_rows = capped(en_val, MAX_EVAL)
    nl_rows = capped(nl_items, MAX_EVAL)
    write_jsonl(os.path.join(a.out, "en_val.jsonl"), val_rows, en_prompt)
    write_jsonl(os.path.join(a.out, "nl.jsonl"), nl_rows, nl_prompt)
    write_jsonl(os.path.join(a.out, "nl_mix.jsonl"), nl_rows, en_prompt)

    def nbytes(rows, prompt):
        return sum(len((prompt(c, t) + d + "\n").encode("utf-8")) for c, t, d in rows)

    def owners(paths):
        """Debian packages (with versions) that ship the given pages."""
        pk = set()
        for p in paths:
            r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
            if r.returncode == 0:
                pk.add(r.stdout.split(":", 1)[0].strip())
        return versions(sorted(pk))

    def versions(pkgs):
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n"] + list(pkgs),
                           capture_output=True, text=True)
        return sorted(l for l in r.stdout.split("\n") if l.strip())

    stats = {
        "en_packages_used": en_used,
        "en_package_versions": versions(en_used),
        "nl_packages_used": owners(nl_use),
        "en_pages": len(en_paths),
        "en_commands_dropped_as_dutch": sorted({page_name(p)[0] for p in en_paths} & nl_cmds_all),
        "en_train": {"commands": len(en_train), "items": len(train_rows),
                     "bytes": nbytes(train_rows, en_prompt)},
        "en_val": {"commands": len({r[0] for r in val_rows}), "items": len(val_rows),
                   "items_before_cap": sum(len(e) for e in en_val.values())},
        "nl_pages": len(nl_all), "nl_pages_in_adaptation_text": len(nl_all) - len(nl_use),
        "nl": {"pages_used": len(nl_use), "commands": len({r[0] for r in nl_rows}),
               "items": len(nl_rows), "items_before_cap": sum(len(e) for e in nl_items.values()),
               "commands_list": sorted({r[0] for r in nl_rows})},
    }
    with open(os.path.join(a.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    brief = {k: v for k, v in stats.items()
             if k not in ("en_commands_dropped_as_dutch", "en_package_versions", "nl_packages_used")}
    brief["nl"] = {k: v for k, v in stats["nl"].items() if k != "commands_list"}
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
