# RUNE in a container: `docker build -t rune .` (the compose stack builds it too: docs/deployment.md).
# Needs BuildKit (the default builder since Docker 23): the build caches crates and target/ between builds.

# ---- build ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -m 0755 target/release/rune /usr/local/bin/rune

# ---- run ----
FROM debian:bookworm-slim
# bash and coreutils: plugins run through bash (the local transport runs them here; over SSH RUNE only sends
# them); ca-certificates: TLS to NATS with the system roots. Not pinned: bookworm's security updates apply.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bash coreutils ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rune \
 && useradd --system --uid 10001 --gid rune --home-dir /var/lib/rune --create-home --shell /usr/sbin/nologin rune \
 && mkdir -p /var/lib/rune/ssh /var/lib/rune/audit \
 && chown rune:rune /var/lib/rune/ssh /var/lib/rune/audit \
 && chmod 700 /var/lib/rune/audit

COPY --from=build /usr/local/bin/rune /usr/local/bin/rune
COPY --chmod=0755 deploy/rune-healthcheck.sh /usr/local/bin/rune-healthcheck
# Everything deploy/rune.yaml names by a relative path, laid out as it expects around /etc/rune/rune.yaml.
# The compose stack mounts its own rune.yaml, inventory.yaml and secrets/ over these (read-only).
COPY plugins/ /etc/rune/plugins/
COPY rules/ /etc/rune/rules/
COPY deploy/rune.yaml deploy/inventory.yaml /etc/rune/

USER 10001:10001
WORKDIR /var/lib/rune
EXPOSE 9300
# /healthz on the webhook listener (deploy/rune.yaml: 0.0.0.0:9300); bash's /dev/tcp, no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["rune-healthcheck"]
ENTRYPOINT ["rune"]
CMD ["serve", "--config", "/etc/rune/rune.yaml"]
