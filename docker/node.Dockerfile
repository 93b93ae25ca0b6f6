# The data-plane node image (`pleiades node`), for linux/arm64 and linux/amd64:
#   docker buildx build --platform linux/arm64,linux/amd64 -f docker/node.Dockerfile -t ghcr.io/pleiades-db/pleiades:0.1.0 .
# Each platform compiles natively (under QEMU when foreign): RocksDB's C++ and bindgen make
# cross-compiling fragile, and the cache mounts keep rebuilds incremental.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p pleiades --bin pleiades \
    && install -D -m 0755 target/release/pleiades /out/pleiades

FROM debian:bookworm-slim
# libstdc++ for RocksDB; ca-certificates for nothing else than operators' convenience tools.
COPY --from=build /out/pleiades /usr/local/bin/pleiades
# Real time (optional, per Constellation): the binary may raise CAP_SYS_NICE — permitted, not
# effective, so it starts where the pod does not grant it — and the pod allows the escalation
# that makes file capabilities count. No setuid or setgid file is left that could escalate too.
RUN apt-get update && apt-get install -y --no-install-recommends libstdc++6 ca-certificates libcap2-bin \
    && setcap cap_sys_nice=p /usr/local/bin/pleiades \
    && apt-get purge -y libcap2-bin && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && find / -xdev -perm /6000 -type f -exec chmod a-s {} + \
    && groupadd --gid 10001 pleiades && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pleiades \
    && install -d -o 10001 -g 10001 /var/lib/pleiades
USER 10001:10001
VOLUME /var/lib/pleiades
# 7400/udp: QUIC (clients and peers); 7480/tcp: /metrics, /healthz, /readyz.
EXPOSE 7400/udp 7480/tcp
ENTRYPOINT ["/usr/local/bin/pleiades"]
CMD ["node", "--data-dir", "/var/lib/pleiades", "--listen", "0.0.0.0:7400", "--http", "0.0.0.0:7480"]
