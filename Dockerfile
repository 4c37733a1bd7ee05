# The Woodpecker plugin image: the launcher plus what it runs locally (ssh client, rsync,
# CA certificates for the Hetzner API and registries). Multi-stage: no toolchain in the result.
#
#   docker build -t zot.example.com/images/buildkit-launcher:0.1.0 .
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -m 0755 target/release/buildkit-launcher /buildkit-launcher

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client rsync ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /buildkit-launcher /usr/local/bin/buildkit-launcher
# Exec form, so SIGTERM from Woodpecker's cancel reaches the launcher itself (not a shell),
# which then deletes the runner within seconds.
ENTRYPOINT ["/usr/local/bin/buildkit-launcher"]
