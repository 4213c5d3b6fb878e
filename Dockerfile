# tollgate container image, built from source.
#
#   docker build -t tollgate:local .
#   docker run --rm -p 8080:8080 -p 9901:9901 -v "$PWD/my-conf:/etc/tollgate:ro" tollgate:local
#
# Stages: `build` compiles the release binary with the Rust toolchain; `rootfs` collects what the
# binary needs at run time from Debian bookworm (deploy/docker/rootfs.sh: glibc, libssl3,
# libgcc_s, CA certificates, a non-root user); the image is that root on `scratch`: no shell, no
# package manager. deploy/docker/Dockerfile.runtime makes the same image from a binary built on
# the host. Everything is described in deploy/README.md.
ARG RUST_IMAGE=rust:1-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# What scripts/setup.sh asks for: cmake, pkg-config, make, gcc and the OpenSSL headers (the build
# links the system OpenSSL, .cargo/config.toml). Unpinned (DL3008): the toolchain image's own
# bookworm is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev make gcc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore keeps target/, .git and the docs out of the context.
COPY . .
# The release profile keeps line tables for backtraces (Cargo.toml: debug = 1): ~96 MB of
# binary. The image ships it stripped (~15 MB); no incremental state in a one-shot build.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_INCREMENTAL=0
RUN cargo build --release --locked --bin tollgate \
 && install -m 0755 target/release/tollgate /tollgate

FROM ${DEBIAN_IMAGE} AS rootfs
# The libraries the binary loads, at bookworm's current (security) versions, whatever the base
# image's age. Unpinned on purpose (DL3008): a rebuild must pick up those fixes, and a pinned
# version vanishes from the mirror when one lands.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libc6 libgcc-s1 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /tollgate /build/tollgate
COPY conf/tollgate.yaml deploy/docker/rootfs.sh /build/
RUN sh /build/rootfs.sh /build/tollgate /build/tollgate.yaml /out
# Lets `docker image prune --filter label=io.tollgate.image` remove this stage once built.
LABEL io.tollgate.image="rootfs-stage"

FROM scratch
COPY --from=rootfs /out/ /
# No SSL_CERT_FILE: tollgate then trusts the hashed CA directory /etc/ssl/certs, read a
# certificate at a time when a handshake needs it (Redis over TLS, TLS upstreams), instead of
# parsing the whole bundle into every TLS context (src/trust_store.rs). conf/tollgate.yaml takes
# its listeners from TOLLGATE_LISTEN and TOLLGATE_ADMIN_LISTEN (loopback by default): in a
# container, every interface of the container's network namespace.
ENV TOLLGATE_LOG=info \
    TOLLGATE_LISTEN=0.0.0.0:8080 \
    TOLLGATE_ADMIN_LISTEN=0.0.0.0:9901
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="Sidecar reverse proxy on Pingora" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tollgate.image="source"
USER 65532:65532
WORKDIR /etc/tollgate
# 8080: proxy listener; 9901: admin listener (/healthz, /readyz, /metrics).
EXPOSE 8080 9901
# SIGTERM: listeners stop accepting at once, requests in flight get up to
# server.grace_period + server.shutdown_timeout (5s + 10s by default), and the process exits as
# soon as none is left. Give the container more than that sum: `docker stop -t 20`,
# compose `stop_grace_period: 20s`, Kubernetes `terminationGracePeriodSeconds`.
STOPSIGNAL SIGTERM
# GET http://127.0.0.1:9901/readyz (exit 0 on 200). Another admin address: --admin HOST:PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["tollgate", "probe", "--timeout", "2s"]
ENTRYPOINT ["tollgate"]
CMD ["run", "-c", "/etc/tollgate/tollgate.yaml"]
