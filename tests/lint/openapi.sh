#!/bin/sh
# openapi.sh — lints openapi.yaml with Redocly (recommended rules, see redocly.yaml) and prints
# TAP. Warnings count as failures: the contract file must lint clean, not merely parse.
set -u
root=${MOPT_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$root" || exit 1
bin=tests/node_modules/.bin/redocly
echo "1..1"
if [ ! -x "$bin" ]; then
  echo "not ok 1 - openapi.yaml lints clean # redocly not installed (make deps-test)"
  exit 1
fi
out=$(timeout 300 "$bin" lint --config redocly.yaml openapi.yaml 2>&1)
rc=$?
if [ "$rc" = 0 ] && ! printf '%s\n' "$out" | grep -qiE 'you have [0-9]+ warning|error'; then
  echo "ok 1 - openapi.yaml lints clean"
  exit 0
fi
printf '%s\n' "$out" | sed 's/^/# /'
echo "not ok 1 - openapi.yaml lints clean"
exit 1
