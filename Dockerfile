# reactor: a small non-root image that runs `reactor run` (default) or `reactor migrate`.
#   docker build -t reactor .
#   docker run --rm -e DATABASE_URL=... reactor migrate
#   docker run -d -p 8080:8080 -e DATABASE_URL=... -e REPLICATE_API_TOKEN=... reactor
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# Not built, but Cargo.toml declares the benchmark, and cargo refuses a
# manifest whose targets are missing (.ci/image-build proves this stage).
COPY benches ./benches
COPY sql ./sql
COPY triggers ./triggers
RUN cargo build --release --locked --bin reactor

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/reactor --create-home reactor
COPY --from=build /src/target/release/reactor /usr/local/bin/reactor
USER reactor
WORKDIR /var/lib/reactor
# Made by the user, so a volume mounted here (compose.yaml) starts out theirs.
RUN mkdir storage
ENV REACTOR_HTTP_ADDR=0.0.0.0:8080 \
    REACTOR_STORAGE_URL=/var/lib/reactor/storage \
    REACTOR_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["reactor", "healthcheck", "--http-addr", "127.0.0.1:8080"]
ENTRYPOINT ["reactor"]
CMD ["run"]
