#!/bin/sh
# sources.sh — checks team rules on the C sources that the compiler cannot, as TAP:
#   1. every .c/.h under core/ storage/ api/ server/ cli/ opens with a comment (what + trade-off);
#   2. no function of ours is named onnx_* / onnx__* (protobuf-c's generated names use them);
#   3. no source includes a header of a module it must not depend on (core sees only itself;
#      storage sees core; api sees core and storage) — quoted includes only.
# Trade-off: grep-level checks, so they are shallow, but they run in milliseconds and name the
# offending file and line.
set -u
root=${MOPT_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$root" || exit 1
echo "1..3"
fail=0

files=$(git ls-files 'core/*.[ch]' 'storage/*.[ch]' 'api/*.[ch]' 'server/*.[ch]' 'cli/*.[ch]' 2>/dev/null)
[ -n "$files" ] || files=$(ls core/*.[ch] storage/*.[ch] api/*.[ch] server/*.[ch] cli/*.[ch] 2>/dev/null)

bad=""
for f in $files; do
  [ -f "$f" ] || continue
  head -c 2 "$f" | grep -q '/\*' || bad="$bad $f"
done
if [ -z "$bad" ]; then echo "ok 1 - every C file opens with a comment"
else echo "# files without an opening comment:$bad"; echo "not ok 1 - every C file opens with a comment"; fail=1; fi

hits=$(for f in $files; do [ -f "$f" ] && grep -nHE '^[A-Za-z][A-Za-z0-9_ *]*[ *]onnx_[A-Za-z0-9_]*[[:space:]]*\(' "$f"; done)
if [ -z "$hits" ]; then echo "ok 2 - no function of ours named onnx_*"
else printf '%s\n' "$hits" | sed 's/^/# /'; echo "not ok 2 - no function of ours named onnx_*"; fail=1; fi

# module -> headers it may not include (by the header's own directory)
deps=""
for f in $files; do
  [ -f "$f" ] || continue
  mod=${f%%/*}
  case $mod in
    core) forbid="storage api server cli" ;;
    storage) forbid="api server cli" ;;
    api) forbid="server cli" ;;
    *) continue ;;
  esac
  for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
    for m in $forbid; do
      [ -f "$m/$(basename "$inc")" ] && [ ! -f "$mod/$(basename "$inc")" ] && deps="$deps $f:$inc"
    done
  done
done
if [ -z "$deps" ]; then echo "ok 3 - includes follow the module dependency direction"
else echo "# wrong-direction includes:$deps"; echo "not ok 3 - includes follow the module dependency direction"; fail=1; fi
exit $fail
