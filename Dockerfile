# syntax=docker/dockerfile:1.7
# portcullis: a pull-through OCI registry proxy that verifies on fetch.
#
#   docker build -t portcullis .
#   docker run -p 127.0.0.1:5000:5000 -v portcullis-data:/var/lib/portcullis portcullis
#
# Both bases are pinned by their multi-arch index digest; the tag stays for readers. No registry
# could be reached from where this was written, so the digests come from public sources:
#   rust:1.95-bookworm    what the tag has resolved to since late May 2026 (Rust 1.95.0); pinned
#                         with this tag in public Dockerfiles into Aug 2026 and seen in a BuildKit
#                         log resolving the tag (earlier 1.95 digests are in repo-info mirrors).
#   debian:bookworm-slim  = bookworm-20261005-slim, pushed 2026-10-06; a public project recorded it
#                         as the OCI index after checking the registry on 2026-10-08.
# To refresh: `docker buildx imagetools inspect rust:1.95-bookworm` (and debian:bookworm-slim),
# then copy the top-level Digest (the index), not a per-platform manifest digest.

FROM docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librocksdb-dev=7.8.3-2 libsnappy-dev=1.1.9-3 \
      libclang-dev=1:14.0-55.7~deb12u1 clang=1:14.0-55.7~deb12u1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY cache cache
COPY policy policy
COPY proxy proxy
COPY config config
COPY tests tests
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis \
 && install -D target/release/portcullis /out/portcullis

# The binary links Debian's RocksDB 7.8 (docs/decisions/0002-build-speed.md), so the runtime is
# the same Debian release, slim, with only that library added.
FROM docker.io/library/debian:bookworm-slim@sha256:7c7b2c966bc9ee8cedfeef67e0e279108992c77681fa595db4a9d65c06ccc587
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librocksdb7.8=7.8.3-2 libsnappy1v5=1.1.9-3 ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/portcullis portcullis \
 && install -d -o portcullis /var/lib/portcullis /etc/portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
COPY config/portcullis.toml /etc/portcullis/portcullis.toml
USER 10001
WORKDIR /var/lib/portcullis
VOLUME ["/var/lib/portcullis", "/etc/portcullis"]
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
