#!/bin/sh
# moptd: install the Debian 12 packages that building, running or testing needs.
# Usage: deploy/install-deps.sh [build|test|bench]   (each level includes the ones before)
# Installs only what is missing and says what it installs. Needs root for apt-get.
set -eu
level=${1:-build}
build_pkgs="gcc make pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev libsqlite3-dev \
libprotobuf-c-dev protobuf-c-compiler libonnx-dev libzstd-dev libsodium-dev liblapacke-dev libssl-dev"
test_pkgs="libcmocka-dev python3 python3-onnx python3-numpy python3-sklearn libonnx-testdata \
prometheus curl zstd clang libclang-rt-14-dev nginx-light"
bench_pkgs="wrk nginx-light hyperfine bsdiff xdelta3"
pkgs=$build_pkgs
case $level in
  build) ;;
  test) pkgs="$pkgs $test_pkgs" ;;
  bench) pkgs="$pkgs $test_pkgs $bench_pkgs" ;;
  *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node.js is needed for the ONNX Runtime checks and the OpenAPI linter; any node >= 18 will do.
if [ "$level" != build ] && ! command -v node >/dev/null 2>&1; then missing="$missing nodejs npm"; fi
if [ -n "$missing" ]; then
  echo "moptd: installing Debian packages:$missing"
  if [ "$(id -u)" != 0 ]; then echo "moptd: need root to install packages (run as root or with sudo)" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  # apt lists may be absent on a fresh machine; refresh them once.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  echo "moptd: packages installed"
fi
if [ "$level" != build ]; then
  # npm packages for tests: ONNX Runtime (CPU library ships inside the package) and the OpenAPI linter.
  here=$(cd "$(dirname "$0")/.." && pwd)
  if [ ! -d "$here/tests/node_modules/onnxruntime-node" ] || [ ! -d "$here/tests/node_modules/@redocly/cli" ]; then
    echo "moptd: installing npm packages for tests (onnxruntime-node, @redocly/cli) into tests/node_modules"
    (cd "$here/tests" && npm install --ignore-scripts --no-audit --no-fund --silent >/dev/null)
  fi
fi
