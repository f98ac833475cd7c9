# moptd container image.
#
# Two stages on debian:bookworm: "build" installs the -dev packages (through the same
# deploy/install-deps.sh that `make run` uses, so the image and a bare-metal build agree on
# dependencies) and runs `make`; the runtime stage carries only the shared libraries the two
# binaries link against, curl for the health check, and the binaries. Trade-off: the runtime
# package list is maintained by hand (it must track the Makefile's pkg-config list); a missing
# library shows up at once as a failing `moptd --help` in the last build step.
#
# Run:
#   docker build -t moptd .
#   docker run -p 8080:8080 -v moptd-data:/var/lib/moptd \
#              -v /path/to/tokens:/etc/moptd/tokens:ro moptd
# The tokens file is required: without one moptd only listens on loopback (see README), and
# this image listens on 0.0.0.0. Lines are "scope[,scope] <sha256-hex-of-token> [label]".
# Extra options: append flags to the command, set MOPTD_* environment variables, or mount a
# config file (deploy/moptd.conf.example) and pass --config.

FROM debian:bookworm AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN sh deploy/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make clean && make -j"$(nproc)" all

FROM debian:bookworm-slim AS runtime
# Runtime libraries only: libmicrohttpd, jansson, libuv, SQLite, libcrypto (daemon); protobuf-c, zstd,
# libsodium, LAPACKE (+ its LAPACK/BLAS) for the compression core in both binaries.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libmicrohttpd12 libjansson4 libuv1 libsqlite3-0 libssl3 \
      libprotobuf-c1 libzstd1 libsodium23 liblapacke liblapack3 libblas3 \
      curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 moptd \
 && useradd --system --uid 10001 --gid moptd --home-dir /var/lib/moptd \
      --shell /usr/sbin/nologin moptd \
 && install -d -o moptd -g moptd -m 0750 /var/lib/moptd \
 && install -d -o root -g moptd -m 0750 /etc/moptd

# moptd finds its job worker as 'mopt' next to its own binary.
COPY --from=build /src/build/moptd /src/build/mopt /usr/local/bin/
COPY deploy/moptd.conf.example /etc/moptd/moptd.conf.example
# Fail the build here, not at run time, when a runtime library is missing.
RUN if ldd /usr/local/bin/moptd /usr/local/bin/mopt | grep 'not found'; then exit 1; fi \
 && /usr/local/bin/moptd --help >/dev/null

USER moptd:moptd
WORKDIR /var/lib/moptd
VOLUME ["/var/lib/moptd"]
EXPOSE 8080
# /healthz is public (no token needed); it answers while the process serves HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS --max-time 4 http://127.0.0.1:8080/healthz >/dev/null || exit 1
# SIGTERM (docker stop) drains requests and re-queues running jobs; give it time.
STOPSIGNAL SIGTERM
CMD ["moptd", "--listen", "0.0.0.0:8080", "--data", "/var/lib/moptd", "--tokens", "/etc/moptd/tokens"]
