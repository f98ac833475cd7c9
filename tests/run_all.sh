#!/bin/sh
# moptd test runner: runs every suite, each of which prints TAP ("ok N - name" / "not ok N - name"
# at the start of a line), and ends with one summary line "N passed, N failed".
#   tests/run_all.sh [--only unit|lint|http|e2e|onnx_node|fuzz]
# Suites:
#   unit       build/tests/unit/<module>/<file>   C programs (cmocka, CMOCKA_MESSAGE_OUTPUT=TAP)
#   lint       tests/lint/*.sh                   openapi lint, route table vs openapi.yaml
#   http       tests/http/test_*.py              black-box: a real build/moptd on 127.0.0.1
#   e2e        tests/e2e/test_*.py               outputs run in ONNX Runtime (node)
#   onnx_node  tests/onnx_node/test_*.py         ONNX backend test data
#   fuzz       tests/fuzz/run.sh FUZZ_SECONDS    libFuzzer on the loader and the upload validator
#                                                (default 20 s each; FUZZ_SECONDS=0 skips)
# A suite that exits non-zero without reporting a failing test counts as one failure.
# MOPT_BUILD selects the build dir (build-asan for `make asan`).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export MOPT_BUILD="${MOPT_BUILD:-build}"
export MOPT_ROOT="$here"
only=""
[ "${1:-}" = "--only" ] && only="${2:-}"
PY=/usr/bin/python3
logdir=$(mktemp -d /tmp/moptd-tests.XXXXXX)
passed=0; failed=0; failed_names=""

run_suite() { # name, command...
  name=$1; shift
  log="$logdir/$(echo "$name" | tr '/ ' '__').log"
  echo "== $name"
  "$@" >"$log" 2>&1
  rc=$?
  p=$(grep -c '^ok ' "$log")
  f=$(grep -c '^not ok ' "$log")
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; echo "not ok - $name exited with status $rc" >>"$log"; fi
  grep -E '^(not ok|ok) ' "$log" | sed 's/^/   /'
  if [ "$f" != 0 ]; then
    echo "---- $name output (tail):"; tail -n 60 "$log" | sed 's/^/   | /'
    failed_names="$failed_names $name"
  fi
  passed=$((passed + p)); failed=$((failed + f))
}

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

if want unit; then
  for t in $(find "$MOPT_BUILD/tests/unit" -type f -perm -u+x 2>/dev/null | sort); do
    run_suite "unit/${t#"$MOPT_BUILD"/tests/unit/}" env CMOCKA_MESSAGE_OUTPUT=TAP "$t"
  done
fi
if want lint; then
  for t in tests/lint/*.sh; do [ -f "$t" ] && run_suite "lint/$(basename "$t" .sh)" sh "$t"; done
fi
for kind in http e2e onnx_node; do
  want "$kind" || continue
  for t in tests/$kind/test_*.py; do
    [ -f "$t" ] && run_suite "$kind/$(basename "$t" .py)" "$PY" "$t"
  done
done

if want fuzz && [ "${FUZZ_SECONDS:-20}" != 0 ] && [ "$MOPT_BUILD" = build ]; then
  run_suite "fuzz/libfuzzer" sh tests/fuzz/run.sh "${FUZZ_SECONDS:-20}"
fi

[ -n "$failed_names" ] && echo "failed suites:$failed_names"
echo "logs in $logdir"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
