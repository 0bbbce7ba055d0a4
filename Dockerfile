# syntax=docker/dockerfile:1
# One image with both binaries: streamjob-operator and streamjob-worker.
#   docker build -t ghcr.io/streamjob/streamjob:0.1.0 .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p streamjob-operator -p streamjob-worker \
 && install -D -m 0755 target/release/streamjob-operator /out/streamjob-operator \
 && install -D -m 0755 target/release/streamjob-worker /out/streamjob-worker

# distroless/cc has glibc, libgcc and CA certificates; librdkafka links OpenSSL 3
# dynamically, so its two libraries come from the (same Debian 12) build stage.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/lib/x86_64-linux-gnu/libssl.so.3 /usr/lib/x86_64-linux-gnu/libcrypto.so.3 /usr/lib/x86_64-linux-gnu/
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/streamjob-worker"]
