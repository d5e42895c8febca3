# streamscore container image (see docs/deployment.md).
#
#   docker build -t streamscore .                        the service (runtime, the last stage)
#   docker run --rm -p 9464:9464 \
#     -e STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS=broker:9092 streamscore
#
#   docker build --target train -t streamscore-train .   retrain the shipped model into ./models:
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/models:/out" streamscore-train
#
# Stages: ort (ONNX Runtime shared library from the pinned PyPI wheel), build (cargo),
# train (optional, python), runtime (debian slim, non-root).

# ONNX Runtime version: must equal the `onnxruntime==` pin in python/requirements.txt (the ort
# stage fails the build otherwise; tests/deploy_files.rs checks it and ORT_DYLIB_PATH below).
ARG ORT_VERSION=1.31.1

# ---------------------------------------------------------------------------------------------
# ort: libonnxruntime.so.<version> out of the onnxruntime wheel. streamscore dlopens it at run
# time (ort crate, load-dynamic); Python itself is not part of the runtime image.
# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS ort
ARG ORT_VERSION
COPY python/requirements.txt /tmp/requirements.txt
RUN grep -qx "onnxruntime==${ORT_VERSION}" /tmp/requirements.txt \
      || { echo "ORT_VERSION=${ORT_VERSION} differs from the onnxruntime pin in python/requirements.txt" >&2; exit 1; } \
 && pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --no-deps --only-binary=:all: --target /tmp/ort "onnxruntime==${ORT_VERSION}" \
 && mkdir -p /opt/onnxruntime \
 && cp /tmp/ort/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION} \
       /tmp/ort/onnxruntime/capi/libonnxruntime_providers_shared.so \
       /opt/onnxruntime/ \
 && rm -rf /tmp/ort

# ---------------------------------------------------------------------------------------------
# build: the release binary. rdkafka (ssl, zstd) builds librdkafka with make against the
# system OpenSSL and zlib; cmake is not needed.
# ---------------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      pkg-config libssl-dev zlib1g-dev make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, with placeholder sources: this layer is rebuilt only when
# Cargo.toml/Cargo.lock change. (benches/hot_path.rs must exist: Cargo.toml declares the bench.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && cargo build --release --locked --bin streamscore \
 && rm -rf src benches \
      target/release/streamscore target/release/streamscore.d \
      target/release/.fingerprint/streamscore-* \
      target/release/deps/streamscore-* target/release/deps/libstreamscore-*

# The crate itself. schemas/ is compiled in (include_str! of the .avsc files); build.rs compiles
# src/source/message_headers.c against the librdkafka tree rdkafka-sys built in the layer above.
COPY build.rs ./
COPY src ./src
COPY benches ./benches
COPY schemas ./schemas
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin streamscore \
 && install -m 0755 target/release/streamscore /usr/local/bin/streamscore

# ---------------------------------------------------------------------------------------------
# train: `docker build --target train`. Regenerates model.onnx + manifest.json into /out
# (mount a host directory there). Not part of the runtime image.
# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS train
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /src
# requirements-train.txt includes requirements.txt (`-r`), so both are needed side by side.
COPY python/requirements.txt python/requirements-train.txt ./python/
RUN pip install --root-user-action=ignore -r python/requirements-train.txt
COPY python ./python
COPY models/train.py ./models/train.py
CMD ["python", "models/train.py", "--out", "/out/fraud_mlp/1"]

# ---------------------------------------------------------------------------------------------
# runtime: the service. Last stage, so a plain `docker build` produces it.
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# libssl3 and zlib1g: librdkafka; libstdc++6: libonnxruntime; ca-certificates: TLS to brokers
# and the schema registry.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 streamscore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin streamscore

COPY --from=ort /opt/onnxruntime/ /opt/onnxruntime/
COPY --from=build /usr/local/bin/streamscore /usr/local/bin/streamscore

WORKDIR /app
# Read-only inputs (owned by root; the service never writes under /app). Relative paths in
# /app/config/streamscore.toml resolve against /app (the config/ directory's parent).
COPY schemas/ /app/schemas/
COPY models/fraud_mlp/ /app/models/fraud_mlp/
COPY config/streamscore.toml /app/config/streamscore.toml

ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1
USER 10001:10001

# /metrics, /healthz, /readyz (telemetry.http_bind; the shipped config binds 0.0.0.0:9464).
EXPOSE 9464
# No HEALTHCHECK: the slim image has no curl/wget. Orchestrators probe GET /healthz (liveness)
# and GET /readyz (readiness) over HTTP themselves.

ENTRYPOINT ["streamscore"]
CMD ["run", "--config", "/app/config/streamscore.toml"]
