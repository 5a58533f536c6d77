# Sourced by shell tests. `skip_test REASON` reports the test as SKIPPED
# (never as passed): it writes a one-case JUnit XML with <skipped/> where
# Bazel collects it ($XML_OUTPUT_FILE), which tools/count_tests.py counts as
# skipped, prints the reason and exits 0.
skip_test() {
  local reason=$1
  echo "SKIPPED: $reason"
  if [[ -n ${XML_OUTPUT_FILE:-} ]]; then
    local esc=${reason//&/&amp;}; esc=${esc//</&lt;}; esc=${esc//>/&gt;}; esc=${esc//\"/&quot;}
    cat > "$XML_OUTPUT_FILE" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="1" failures="0" skipped="1">
  <testsuite name="${TEST_TARGET:-shell}" tests="1" failures="0" skipped="1">
    <testcase name="${TEST_TARGET:-shell}" status="notrun" result="skipped">
      <skipped message="$esc"/>
    </testcase>
  </testsuite>
</testsuites>
XML
  fi
  exit 0
}
