# The operator image, for linux/arm64 and linux/amd64:
#   docker buildx build --platform linux/arm64,linux/amd64 -f docker/operator.Dockerfile -t ghcr.io/pleiades-db/pleiades-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p pleiades-operator --bin pleiades-operator \
    && install -D -m 0755 target/release/pleiades-operator /out/pleiades-operator

# glibc and nothing else: no shell, no package manager; runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pleiades-operator /usr/local/bin/pleiades-operator
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/pleiades-operator"]
CMD ["run"]
