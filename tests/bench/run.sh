#!/bin/sh
# moptd benchmarks (`make bench`). Each prints its figure and the ratio to a baseline measured
# in the same run; medians of repeated runs where noise matters. Never gates CI.
#   tests/bench/run.sh [http|core|all]
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
export MOPT_BUILD="${MOPT_BUILD:-build}"
what=${1:-all}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
rc=0
if [ "$what" = all ] || [ "$what" = http ]; then
  /usr/bin/python3 tests/bench/bench_http.py || rc=1
fi
if [ "$what" = all ] || [ "$what" = core ]; then
  /usr/bin/python3 tests/bench/bench_core.py || rc=1
fi
exit $rc
