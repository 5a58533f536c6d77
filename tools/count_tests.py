"""Counts test cases from Bazel's log and the test XML files.

Usage: count_tests.py BAZEL_LOG TESTLOGS_DIR
Prints `N passed, M failed[, K skipped]` and exits 1 when M > 0 or N == 0.
"""
import os
import re
import sys
import xml.etree.ElementTree as ET


def main():
    log_path, testlogs = sys.argv[1], sys.argv[2]
    log = open(log_path, errors="replace").read()
    # Lines like "//core:foo_test    PASSED in 0.1s" / FAILED / TIMEOUT /
    # FAILED TO BUILD / NO STATUS / SKIPPED.
    status = {}
    for m in re.finditer(r"^(//\S+)\s+(?:\(cached\) )?(PASSED|FAILED TO BUILD|FAILED|TIMEOUT|NO STATUS|SKIPPED|FLAKY)\b",
                         log, re.M):
        status[m.group(1)] = m.group(2)
    passed = failed = skipped = 0
    for target, st in sorted(status.items()):
        pkg, name = target[2:].split(":")
        xml_path = os.path.join(testlogs, pkg, name, "test.xml")
        cases = None
        if st in ("PASSED", "FAILED", "FLAKY") and os.path.exists(xml_path):
            try:
                cases = ET.parse(xml_path).getroot().iter("testcase")
                p = f = s = 0
                for c in cases:
                    if c.find("failure") is not None or c.find("error") is not None:
                        f += 1
                    elif c.get("result") == "skipped" or c.find("skipped") is not None \
                            or c.get("status") == "notrun":
                        s += 1
                    else:
                        p += 1
                if p + f + s == 0:
                    # Not a GoogleTest binary (e.g. a shell test): one case.
                    p, f = (1, 0) if st == "PASSED" else (0, 1)
                elif st != "PASSED" and f == 0:
                    f = 1  # crashed after writing partial XML
                passed, failed, skipped = passed + p, failed + f, skipped + s
                continue
            except ET.ParseError:
                pass
        if st == "PASSED":
            passed += 1
        elif st == "SKIPPED":
            skipped += 1
        else:
            failed += 1
            print(f"count_tests: {target} {st}", file=sys.stderr)
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line)
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
