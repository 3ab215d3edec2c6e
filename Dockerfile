# syntax=docker/dockerfile:1
# CRM Suite image: the `crm` binary on a distroless glibc runtime, running as uid/gid 10001.
#
#   docker build -t ghcr.io/crm-suite/crm:$(git describe --tags --always) .
#   docker run --rm -p 50051:50051 -p 9090:9090 -e DATABASE_URL=... -e REDIS_URL=... \
#     -e CRM__AUTH__JWT_SECRET=... ghcr.io/crm-suite/crm:TAG serve all
#
# Layers: cargo-chef compiles the dependency graph from a recipe (Cargo.toml + Cargo.lock only),
# so editing the workspace's own code reuses that layer and rebuilds only the workspace crates.
# No protoc (protos compile through protox) and no database are needed: the services use no
# compile-time-checked query macros (SQLX_OFFLINE=true keeps it that way if one is added).

ARG RUST_VERSION=1.95
# Pin by digest in CI (e.g. gcr.io/distroless/cc-debian12:nonroot@sha256:...) for reproducible images.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: cached until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --package crm --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --package crm \
 && install -D -m 0755 target/release/crm /out/crm

# distroless/cc: glibc, libgcc, CA certificates and tzdata; no shell, no package manager (bookworm
# on both sides, so the glibc the binary was linked against is the one it runs with).
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="crm" \
      org.opencontainers.image.description="CRM Suite gRPC services (customer, sales, support, marketing, inference)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder --chown=0:0 /out/crm /usr/local/bin/crm
# Inside a container the servers must listen on all interfaces (the binary's defaults are loopback).
ENV CRM__SERVER__LISTEN_ADDR=0.0.0.0:50051 \
    CRM__TELEMETRY__METRICS_ADDR=0.0.0.0:9090 \
    CRM__TELEMETRY__LOG_FORMAT=json
# The uid/gid the chart and manifests run as (runAsUser/runAsGroup 10001); no home dir needed.
USER 10001:10001
EXPOSE 50051 9090
# No shell or probe binary in the image: orchestrators probe grpc.health.v1 on :50051 themselves
# (Kubernetes native gRPC probes; `grpcurl -plaintext HOST:50051 grpc.health.v1.Health/Check`).
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/crm"]
CMD ["serve", "all"]
